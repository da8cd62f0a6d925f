
/*
 * The one Stripe request function, for pool threads only.
 *
 * Each pool thread reuses its own libcurl easy handle, so connections to
 * Stripe stay alive between calls.  Retries follow Stripe's rules: a
 * Stripe-Should-Retry header decides when present; otherwise connection
 * errors, timeouts, 409, 429 and 5xx are retried, with exponential backoff
 * and the SAME Idempotency-Key, at most max_retries times.  Handles are
 * cleaned up by the worker's exit_process (see ngx_http_invoices_job.c for
 * why not by a thread destructor).
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <curl/curl.h>

#include "ngx_http_invoices_module.h"
#include "ngx_http_invoices_json.h"
#include "ngx_http_invoices_pg.h"
#include "ngx_http_invoices_stripe.h"
#include "ngx_http_invoices_metrics.h"


#define NGX_HTTP_INVOICES_STRIPE_MAX_BODY  (8 * 1024 * 1024)


typedef struct ngx_http_invoices_curl_s  ngx_http_invoices_curl_t;

struct ngx_http_invoices_curl_s {
    ngx_http_invoices_thread_handle_t  handle;  /* first: see curl_close */
    CURL                              *curl;
};


typedef struct {
    ngx_http_invoices_stripe_res_t  *res;
    int                              should_retry;  /* -1 unset, 0, 1 */
} ngx_http_invoices_stripe_call_t;


static CURL *ngx_http_invoices_curl(void);
static void ngx_http_invoices_curl_close(ngx_http_invoices_thread_handle_t *h);
static size_t ngx_http_invoices_stripe_body(char *ptr, size_t size,
    size_t nmemb, void *data);
static size_t ngx_http_invoices_stripe_header(char *ptr, size_t size,
    size_t nmemb, void *data);
static ngx_int_t ngx_http_invoices_stripe_text(json_t *obj, const char *key,
    size_t max, ngx_uint_t https, const char **text);
static ngx_int_t ngx_http_invoices_stripe_integer(json_t *obj,
    const char *key, ngx_uint_t is_time, char *buf, size_t size);
static void ngx_http_invoices_stripe_note(ngx_http_invoices_stripe_res_t *res,
    const char *what, const char *detail);


static __thread CURL              *ngx_http_invoices_curl_mine;
static __thread unsigned int       ngx_http_invoices_curl_seed;


/* what a pool thread needs of the location's Stripe settings */

void
ngx_http_invoices_stripe_conf(ngx_http_invoices_stripe_conf_t *conf,
    ngx_http_invoices_loc_conf_t *ilcf)
{
    conf->api_base = (const char *) ilcf->stripe_api_base.data;
    conf->secret_key = (const char *) ilcf->stripe_secret_key.data;
    conf->version = (const char *) ilcf->stripe_version.data;
    conf->connect_timeout = ilcf->stripe_connect_timeout;
    conf->timeout = ilcf->stripe_timeout;
    conf->max_retries = ilcf->stripe_max_retries;
}


/* once, in the master, before any thread exists */

ngx_int_t
ngx_http_invoices_stripe_init(void)
{
    return curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK ? NGX_OK
                                                             : NGX_ERROR;
}


void
ngx_http_invoices_stripe_request(ngx_http_invoices_stripe_conf_t *conf,
    const char *method, const char *path, ngx_http_invoices_form_t *form,
    const char *idempotency_key, ngx_http_invoices_stripe_res_t *res)
{
    CURL                             *curl;
    long                              delay;
    char                              url[1024], auth[512], version[128],
                                      key[320], errbuf[CURL_ERROR_SIZE];
    CURLcode                          rc;
    uint64_t                          start;
    ngx_uint_t                        retry;
    struct curl_slist                *headers, *h;
    ngx_http_invoices_stripe_call_t   call;

    ngx_memzero(res, sizeof(ngx_http_invoices_stripe_res_t));

    curl = ngx_http_invoices_curl();

    if (curl == NULL || (form && form->failed)) {
        res->outcome = NGX_HTTP_INVOICES_STRIPE_FAILED;
        ngx_http_invoices_stripe_note(res, "out of memory", NULL);
        return;
    }

    if (ngx_http_invoices_sprint(url, "%s%s", conf->api_base, path)
        != NGX_OK
        || ngx_http_invoices_sprint(auth, "Authorization: Bearer %s",
                                    conf->secret_key)
           != NGX_OK
        || ngx_http_invoices_sprint(version, "Stripe-Version: %s",
                                    conf->version)
           != NGX_OK
        || (idempotency_key
            && (ngx_strlen(idempotency_key) > 255
                || ngx_http_invoices_sprint(key, "Idempotency-Key: %s",
                                            idempotency_key)
                   != NGX_OK)))
    {
        ngx_explicit_memzero(auth, sizeof(auth));
        res->outcome = NGX_HTTP_INVOICES_STRIPE_FAILED;
        ngx_http_invoices_stripe_note(res, "request too long", NULL);
        return;
    }

    headers = NULL;
    h = curl_slist_append(NULL, auth);
    ngx_explicit_memzero(auth, sizeof(auth));

    if (h == NULL) {
        goto nomem;
    }

    headers = h;

#define append(s)                                                            \
    h = curl_slist_append(headers, s);                                       \
    if (h == NULL) {                                                         \
        goto nomem;                                                          \
    }                                                                        \
    headers = h

    append(version);
    append("User-Agent: ngx_http_invoices_module/0.1");
    append("Accept: application/json");
    append("Expect:");

    if (form) {
        append("Content-Type: application/x-www-form-urlencoded");
    }

    if (idempotency_key) {
        append(key);
    }

#undef append

    for (res->attempts = 1; /* void */ ; res->attempts++) {

        free(res->body);
        res->body = NULL;
        res->len = 0;
        res->status = 0;
        res->retry_after = 0;
        res->request_id[0] = '\0';

        call.res = res;
        call.should_retry = -1;
        errbuf[0] = '\0';

        curl_easy_reset(curl);

        (void) curl_easy_setopt(curl, CURLOPT_URL, url);
        (void) curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
        (void) curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
        (void) curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS,
                                conf->connect_timeout);
        (void) curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, conf->timeout);
        (void) curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
        (void) curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, errbuf);
        (void) curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION,
                                ngx_http_invoices_stripe_body);
        (void) curl_easy_setopt(curl, CURLOPT_WRITEDATA, &call);
        (void) curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION,
                                ngx_http_invoices_stripe_header);
        (void) curl_easy_setopt(curl, CURLOPT_HEADERDATA, &call);

        if (form) {
            (void) curl_easy_setopt(curl, CURLOPT_POSTFIELDS, form->data);
            (void) curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE,
                                    (long) form->len);
        }

        if (ngx_strcmp(method, "GET") != 0
            && ngx_strcmp(method, "POST") != 0)
        {
            (void) curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, method);

        } else if (form == NULL && ngx_strcmp(method, "POST") == 0) {
            (void) curl_easy_setopt(curl, CURLOPT_POSTFIELDS, "");
            (void) curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE, 0L);
        }

        start = ngx_http_invoices_metrics_usec();
        rc = curl_easy_perform(curl);

        if (rc == CURLE_OK) {
            (void) curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE,
                                     &res->status);
            res->outcome = NGX_HTTP_INVOICES_STRIPE_ANSWERED;

            if (call.should_retry != -1) {
                retry = call.should_retry;

            } else {
                retry = (res->status == 409 || res->status == 429
                         || res->status >= 500);
            }

        } else {
            switch (rc) {

            case CURLE_OPERATION_TIMEDOUT:
                res->outcome = NGX_HTTP_INVOICES_STRIPE_TIMEOUT;
                retry = 1;
                break;

            case CURLE_OUT_OF_MEMORY:
            case CURLE_URL_MALFORMAT:
            case CURLE_UNSUPPORTED_PROTOCOL:
            case CURLE_WRITE_ERROR:     /* our body limit */
                res->outcome = NGX_HTTP_INVOICES_STRIPE_FAILED;
                retry = 0;
                break;

            default:
                res->outcome = NGX_HTTP_INVOICES_STRIPE_UNREACHABLE;
                retry = 1;
            }

            ngx_http_invoices_stripe_note(res, curl_easy_strerror(rc),
                                          errbuf[0] ? errbuf : NULL);
        }

        ngx_http_invoices_metrics_stripe_call(res->status / 100 == 2, start);

        if (!retry || res->attempts > conf->max_retries) {
            break;
        }

        /* 0.5 s, 1 s, 2 s, ... up to 5 s, less up to a quarter of jitter */

        delay = 500L << ngx_min(res->attempts - 1, 4);
        delay = ngx_min(delay, 5000);

        if (res->retry_after > 0 && res->retry_after <= 5) {
            delay = ngx_max(delay, res->retry_after * 1000);
        }

        delay -= rand_r(&ngx_http_invoices_curl_seed) % (delay / 4 + 1);

        ngx_msleep(delay);
    }

    curl_slist_free_all(headers);
    return;

nomem:

    curl_slist_free_all(headers);
    res->outcome = NGX_HTTP_INVOICES_STRIPE_FAILED;
    ngx_http_invoices_stripe_note(res, "out of memory", NULL);
}


void
ngx_http_invoices_stripe_res_free(ngx_http_invoices_stripe_res_t *res)
{
    free(res->body);
    res->body = NULL;
}


static CURL *
ngx_http_invoices_curl(void)
{
    ngx_http_invoices_curl_t  *c;

    if (ngx_http_invoices_curl_mine != NULL) {
        return ngx_http_invoices_curl_mine;
    }

    c = calloc(1, sizeof(ngx_http_invoices_curl_t));
    if (c == NULL) {
        return NULL;
    }

    c->curl = curl_easy_init();
    if (c->curl == NULL) {
        free(c);
        return NULL;
    }

    ngx_http_invoices_curl_seed = (unsigned int) (uintptr_t) c
                                  ^ (unsigned int) time(NULL);

    c->handle.close = ngx_http_invoices_curl_close;
    ngx_http_invoices_thread_handle_keep(&c->handle);

    ngx_http_invoices_curl_mine = c->curl;

    return c->curl;
}


/* worker exit (ngx_http_invoices_thread_handles_close) */

static void
ngx_http_invoices_curl_close(ngx_http_invoices_thread_handle_t *h)
{
    ngx_http_invoices_curl_t  *c = (ngx_http_invoices_curl_t *) h;

    curl_easy_cleanup(c->curl);
    free(c);
}


static size_t
ngx_http_invoices_stripe_body(char *ptr, size_t size, size_t nmemb,
    void *data)
{
    ngx_http_invoices_stripe_call_t  *call = data;

    char                            *p;
    size_t                           n;
    ngx_http_invoices_stripe_res_t  *res;

    res = call->res;
    n = size * nmemb;

    if (res->len + n > NGX_HTTP_INVOICES_STRIPE_MAX_BODY) {
        return 0;
    }

    p = realloc(res->body, res->len + n + 1);
    if (p == NULL) {
        return 0;
    }

    ngx_memcpy(p + res->len, ptr, n);
    res->body = p;
    res->len += n;
    res->body[res->len] = '\0';

    return n;
}


static size_t
ngx_http_invoices_stripe_header(char *ptr, size_t size, size_t nmemb,
    void *data)
{
    ngx_http_invoices_stripe_call_t  *call = data;

    u_char  *p, *end, *v;
    size_t   n, len;

    n = size * nmemb;
    p = (u_char *) ptr;
    end = p + n;

    while (end > p && (end[-1] == '\r' || end[-1] == '\n')) {
        end--;
    }

    v = ngx_strlchr(p, end, ':');
    if (v == NULL) {
        return n;
    }

    len = v - p;

    for (v++; v < end && *v == ' '; v++) { /* void */ }

    if (len == sizeof("Stripe-Should-Retry") - 1
        && ngx_strncasecmp(p, (u_char *) "Stripe-Should-Retry", len) == 0)
    {
        call->should_retry = (end - v == 4 && ngx_strncmp(v, "true", 4) == 0);

    } else if (len == sizeof("Retry-After") - 1
               && ngx_strncasecmp(p, (u_char *) "Retry-After", len) == 0)
    {
        call->res->retry_after = ngx_atoi(v, end - v);
        if (call->res->retry_after < 0) {
            call->res->retry_after = 0;
        }

    } else if (len == sizeof("Request-Id") - 1
               && ngx_strncasecmp(p, (u_char *) "Request-Id", len) == 0)
    {
        len = ngx_min((size_t) (end - v), sizeof(call->res->request_id) - 1);
        *ngx_cpymem(call->res->request_id, v, len) = '\0';
    }

    return n;
}


static void
ngx_http_invoices_stripe_note(ngx_http_invoices_stripe_res_t *res,
    const char *what, const char *detail)
{
    u_char  *p;

    p = ngx_snprintf((u_char *) res->error, sizeof(res->error) - 1,
                     "%s%s%s", what, detail ? ": " : "",
                     detail ? detail : "");
    *p = '\0';
}


/*
 * The fields of an invoice object that PostgreSQL keeps: NGX_ERROR when
 * one is missing or not what Stripe documents.
 */

ngx_int_t
ngx_http_invoices_stripe_invoice(json_t *invoice,
    ngx_http_invoices_stripe_invoice_t *inv)
{
    size_t       n;
    json_t      *v, *t;
    json_int_t   latest;
    const char  *key;

    ngx_memzero(inv, sizeof(ngx_http_invoices_stripe_invoice_t));

    inv->id = json_string_value(json_object_get(invoice, "id"));
    inv->status = json_string_value(json_object_get(invoice, "status"));
    inv->currency = json_string_value(json_object_get(invoice, "currency"));

    /*
     * The PDF and the hosted page: https URLs or null, nothing else (the
     * dashboard shows them as links).  The texts: strings of a sane
     * length, or null.  Lengths in bytes, above Stripe's own limits.
     */
    if (ngx_http_invoices_stripe_text(invoice, "invoice_pdf", 2048, 1,
                                      &inv->invoice_pdf)
        != NGX_OK
        || ngx_http_invoices_stripe_text(invoice, "hosted_invoice_url", 2048,
                                         1, &inv->hosted_invoice_url)
           != NGX_OK
        || ngx_http_invoices_stripe_text(invoice, "number", 255, 0,
                                         &inv->number)
           != NGX_OK
        || ngx_http_invoices_stripe_text(invoice, "customer_email", 512, 0,
                                         &inv->customer_email)
           != NGX_OK
        || ngx_http_invoices_stripe_text(invoice, "customer_name", 1024, 0,
                                         &inv->customer_name)
           != NGX_OK
        || ngx_http_invoices_stripe_integer(invoice, "amount_due", 0,
                                            inv->amount_due,
                                            sizeof(inv->amount_due))
           != NGX_OK
        || ngx_http_invoices_stripe_integer(invoice, "amount_paid", 0,
                                            inv->amount_paid,
                                            sizeof(inv->amount_paid))
           != NGX_OK
        || ngx_http_invoices_stripe_integer(invoice, "amount_remaining", 0,
                                            inv->amount_remaining,
                                            sizeof(inv->amount_remaining))
           != NGX_OK
        || ngx_http_invoices_stripe_integer(invoice, "due_date", 1,
                                            inv->due_date,
                                            sizeof(inv->due_date))
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    /* the customer may come expanded */
    v = json_object_get(invoice, "customer");
    inv->customer = json_is_object(v)
                    ? json_string_value(json_object_get(v, "id"))
                    : json_string_value(v);

    if (inv->id == NULL || inv->customer == NULL
        || !ngx_http_invoices_stripe_id((u_char *) inv->id,
                                        ngx_strlen(inv->id), "in_")
        || !ngx_http_invoices_stripe_id((u_char *) inv->customer,
                                        ngx_strlen(inv->customer), "cus_")
        || inv->currency == NULL || ngx_strlen(inv->currency) != 3
        || inv->status == NULL
        || (ngx_strcmp(inv->status, "draft") != 0
            && ngx_strcmp(inv->status, "open") != 0
            && ngx_strcmp(inv->status, "paid") != 0
            && ngx_strcmp(inv->status, "uncollectible") != 0
            && ngx_strcmp(inv->status, "void") != 0))
    {
        return NGX_ERROR;
    }

    v = json_object_get(invoice, "total");
    t = json_object_get(invoice, "created");

    if (!json_is_integer(v) || !json_is_integer(t)
        || !ngx_http_invoices_stripe_time(json_integer_value(t)))
    {
        return NGX_ERROR;
    }

    for (n = 0; n < 3; n++) {
        if (inv->currency[n] < 'a' || inv->currency[n] > 'z') {
            return NGX_ERROR;
        }
    }

    (void) ngx_http_invoices_sprint(inv->amount,
                                    "%L", (int64_t) json_integer_value(v));
    (void) ngx_http_invoices_sprint(inv->created,
                                    "%L", (int64_t) json_integer_value(t));

    /* {"finalized_at": 1700000000, "paid_at": null, ...} */

    v = json_object_get(invoice, "status_transitions");
    if (!json_is_object(v)) {
        return NGX_ERROR;
    }

    latest = 0;

    json_object_foreach(v, key, t) {
        if (!json_is_null(t)
            && !(json_is_integer(t)
                 && ngx_http_invoices_stripe_time(json_integer_value(t))))
        {
            return NGX_ERROR;
        }

        if (json_is_integer(t) && json_integer_value(t) > latest) {
            latest = json_integer_value(t);
        }
    }

    (void) ngx_http_invoices_sprint(inv->transition_at,
                                    "%L", (int64_t) latest);

    if (ngx_http_invoices_stripe_integer(v, "finalized_at", 1,
                                         inv->finalized_at,
                                         sizeof(inv->finalized_at))
        != NGX_OK
        || ngx_http_invoices_stripe_integer(v, "paid_at", 1, inv->paid_at,
                                            sizeof(inv->paid_at))
           != NGX_OK
        || ngx_http_invoices_stripe_integer(v, "voided_at", 1, inv->voided_at,
                                            sizeof(inv->voided_at))
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    return NGX_OK;
}


/*
 * obj[key] as a NUL-ended string of at most max bytes (https: an https
 * URL), or NULL when absent or null; NGX_ERROR for anything else.
 */

static ngx_int_t
ngx_http_invoices_stripe_text(json_t *obj, const char *key, size_t max,
    ngx_uint_t https, const char **text)
{
    json_t  *v;

    *text = NULL;

    v = json_object_get(obj, key);

    if (v == NULL || json_is_null(v)) {
        return NGX_OK;
    }

    if (!json_is_string(v) || json_string_length(v) > max
        || ngx_strlen(json_string_value(v)) != json_string_length(v)
        || (https
            && ngx_strncmp(json_string_value(v), "https://", 8) != 0))
    {
        return NGX_ERROR;
    }

    *text = json_string_value(v);

    return NGX_OK;
}


/*
 * obj[key] as decimal text in buf (is_time: Unix seconds within
 * ngx_http_invoices_stripe_time), or "" when absent or null.
 */

static ngx_int_t
ngx_http_invoices_stripe_integer(json_t *obj, const char *key,
    ngx_uint_t is_time, char *buf, size_t size)
{
    json_t  *v;

    buf[0] = '\0';

    v = json_object_get(obj, key);

    if (v == NULL || json_is_null(v)) {
        return NGX_OK;
    }

    if (!json_is_integer(v)
        || (is_time && !ngx_http_invoices_stripe_time(json_integer_value(v))))
    {
        return NGX_ERROR;
    }

    return ngx_http_invoices_print(buf, size, "%L",
                                   (int64_t) json_integer_value(v));
}


/* the details as statement parameters, NGX_HTTP_INVOICES_STRIPE_DETAILS */

void
ngx_http_invoices_stripe_details(ngx_http_invoices_stripe_invoice_t *inv,
    const char **values)
{
#define integer(f)  (inv->f[0] ? inv->f : NULL)

    values[0] = inv->number;
    values[1] = inv->customer_email;
    values[2] = inv->customer_name;
    values[3] = integer(amount_due);
    values[4] = integer(amount_paid);
    values[5] = integer(amount_remaining);
    values[6] = inv->hosted_invoice_url;
    values[7] = integer(due_date);
    values[8] = integer(finalized_at);
    values[9] = integer(paid_at);
    values[10] = integer(voided_at);

#undef integer
}


/*
 * An invoice object as Stripe just answered it (a create's step, an
 * action), read and stored; NGX_ERROR with the job failed (502 when it
 * cannot be read).
 */

ngx_int_t
ngx_http_invoices_stripe_store_object(ngx_http_invoices_job_t *job,
    json_t *invoice)
{
    char                                 result[16];
    ngx_http_invoices_stripe_invoice_t   inv;

    if (ngx_http_invoices_stripe_invoice(invoice, &inv) != NGX_OK) {
        ngx_http_invoices_job_fail(job, NGX_HTTP_BAD_GATEWAY, "api_error",
                                   "stripe_bad_response",
                                   "Stripe's invoice could not be read");
        return NGX_ERROR;
    }

    return ngx_http_invoices_stripe_store(job, &inv, result, sizeof(result));
}


/*
 * Stripe refused or failed (docs/stripe.md): the caller's mistakes keep
 * Stripe's status and error ("final": Stripe's verdict, fit to replay, except a
 * failed parameter validation, which Stripe does not keep either); our
 * key's problems, Stripe's outages and timeouts are 502/503/504.  When an
 * invoice exists already, the answer names it.  Returns the status; the
 * body is malloc()ed; the job's log gets a line for the operator, or "".
 */

ngx_uint_t
ngx_http_invoices_stripe_error(ngx_http_invoices_stripe_res_t *sr,
    const char *step, const char *invoice_id, char **body, size_t *len,
    ngx_uint_t *final, ngx_http_invoices_job_t *job)
{
    char        message[512];
    json_t      *root, *stripe, *err;
    u_char      *p;
    ngx_uint_t   status, forward, store;
    const char  *code, *what;

    stripe = NULL;
    forward = 0;
    store = 0;

    switch (sr->outcome) {

    case NGX_HTTP_INVOICES_STRIPE_TIMEOUT:
        status = NGX_HTTP_GATEWAY_TIME_OUT;
        code = "stripe_timeout";
        what = "Stripe did not answer in time";
        break;

    case NGX_HTTP_INVOICES_STRIPE_UNREACHABLE:
        status = NGX_HTTP_GATEWAY_TIME_OUT;
        code = "stripe_unreachable";
        what = "Stripe could not be reached";
        break;

    case NGX_HTTP_INVOICES_STRIPE_FAILED:
        status = NGX_HTTP_INTERNAL_SERVER_ERROR;
        code = "internal_error";
        what = "the request to Stripe could not be made";
        break;

    default: /* NGX_HTTP_INVOICES_STRIPE_ANSWERED */

        switch (sr->status) {

        case 400:
        case 402:
        case 404:
            /* the caller's data: Stripe's verdict is final, replay it */
            status = sr->status;
            code = "stripe_request_refused";
            what = "Stripe refused the request";
            forward = 1;
            store = 1;
            break;

        case 401:
        case 403:
            /* ours: never forward Stripe's text, it quotes our key */
            status = NGX_HTTP_BAD_GATEWAY;
            code = "stripe_authentication_failed";
            what = "Stripe refused this server's credentials";
            break;

        case 409:
            status = NGX_HTTP_CONFLICT;
            code = "stripe_conflict";
            what = "Stripe is still processing the same request";
            break;

        case 429:
            status = NGX_HTTP_SERVICE_UNAVAILABLE;
            code = "stripe_rate_limited";
            what = "Stripe is rate limiting this account";
            break;

        default:
            status = NGX_HTTP_BAD_GATEWAY;
            code = "stripe_unavailable";
            what = "Stripe failed";
        }
    }

    if (forward && sr->body) {
        root = json_loadb(sr->body, sr->len, 0, NULL);
        err = json_object_get(root, "error");

        if (json_is_object(err)) {
            /* the fields Stripe gave, and only those */
            stripe = json_pack("{s:s*,s:s*,s:s*,s:s*,s:s*}",
                               "type", ngx_http_invoices_json_str(err, "type"),
                               "code", ngx_http_invoices_json_str(err, "code"),
                               "decline_code",
                               ngx_http_invoices_json_str(err, "decline_code"),
                               "message",
                               ngx_http_invoices_json_str(err, "message"),
                               "param",
                               ngx_http_invoices_json_str(err, "param"));
        }

        json_decref(root);

        /*
         * Stripe keeps no result under its Idempotency-Key for a request
         * that failed its parameter validation (a 400 of type
         * invalid_request_error): a retry runs anew there, so it must here
         * too.  Card errors (402) and the rest are kept, as Stripe does.
         */

        if (sr->status == 400 && stripe
            && ngx_strcmp(ngx_http_invoices_json_str(stripe, "type") ?
                          ngx_http_invoices_json_str(stripe, "type") : "",
                          "invalid_request_error") == 0)
        {
            store = 0;
        }
    }

    p = ngx_snprintf((u_char *) message, sizeof(message) - 1, "%s while %s",
                     what, step);

    if (stripe && ngx_http_invoices_json_str(stripe, "message")) {
        p = ngx_snprintf(p, message + sizeof(message) - 1 - (char *) p,
                         ": %s", ngx_http_invoices_json_str(stripe, "message"));
    }

    if (invoice_id && invoice_id[0]) {
        p = ngx_snprintf(p, message + sizeof(message) - 1 - (char *) p,
                         "; Stripe invoice %s exists as a draft%s",
                         invoice_id,
                         store ? "" : ", retry with the same Idempotency-Key "
                                      "to complete it");
    }

    *p = '\0';

    job->log[0] = '\0';

    if (!forward) {
        p = ngx_snprintf((u_char *) job->log, sizeof(job->log) - 1,
                         "Stripe: %s while %s (HTTP %l, %ui attempts%s%s%s%s)",
                         what, step, sr->status, sr->attempts,
                         sr->request_id[0] ? ", " : "", sr->request_id,
                         sr->error[0] ? ", " : "", sr->error);
        *p = '\0';

    } else if (!store) {
        p = ngx_snprintf((u_char *) job->log, sizeof(job->log) - 1,
                         "Stripe refused a parameter while %s (HTTP 400, "
                         "request %s): not kept under the Idempotency-Key, "
                         "a retry with it runs again",
                         step, sr->request_id[0] ? sr->request_id : "-");
        *p = '\0';
        job->log_level = NGX_LOG_WARN;
    }

    root = ngx_http_invoices_json_error_new("stripe_error", code, message,
                                            NULL);
    err = json_object_get(root, "error");

    if (stripe) {
        json_object_set_new(err, "stripe", stripe);
    }

    if (invoice_id && invoice_id[0]) {
        json_object_set_new(err, "invoiceId", json_string(invoice_id));
    }

    *body = ngx_http_invoices_json_dump(root, len);
    json_decref(root);

    *final = store;

    return status;
}


/*
 * An invoice as an API answer just described it, through the one
 * forward-only write (an API read is as new as now).  The result
 * ("inserted", "updated", "unchanged", "deleted") goes to "result";
 * NGX_ERROR with the job failed when the database did.
 */

ngx_int_t
ngx_http_invoices_stripe_store(ngx_http_invoices_job_t *job,
    ngx_http_invoices_stripe_invoice_t *inv, char *result, size_t size)
{
    char         now[24];
    PGresult    *res;
    const char  *values[9 + NGX_HTTP_INVOICES_STRIPE_DETAILS];

    (void) ngx_http_invoices_sprint(now, "%T", time(NULL));

    values[0] = inv->id;
    values[1] = inv->customer;
    values[2] = inv->status;
    values[3] = inv->amount;
    values[4] = inv->currency;
    values[5] = inv->invoice_pdf;
    values[6] = inv->created;
    values[7] = now;
    values[8] = inv->transition_at;

    ngx_http_invoices_stripe_details(inv, &values[9]);

    res = ngx_http_invoices_pg_query(job,
              "SELECT invoices_apply($1, $2, $3, $4, $5, $6, $7, $8, $9, "
              "$10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20)",
              9 + NGX_HTTP_INVOICES_STRIPE_DETAILS, values);
    if (res == NULL) {
        return NGX_ERROR;
    }

    ngx_cpystrn((u_char *) result, (u_char *) PQgetvalue(res, 0, 0), size);
    PQclear(res);

    return NGX_OK;
}
