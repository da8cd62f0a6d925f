
/*
 * POST /admin/api/invoices: create and finalize a Stripe invoice.
 *
 * The event loop checks the headers and reads the body; one job in the
 * Stripe thread pool then does everything else: validates the body, takes
 * the caller's Idempotency-Key (ngx_http_invoices_idempotency.c: a row
 * that records the outcome, held by a lease, every Stripe call under a key
 * derived from it), resolves the team, and runs the Stripe sequence:
 * create the invoice as a draft that Stripe will not advance by itself,
 * add each line, finalize (only then may Stripe collect).  The Stripe
 * invoice id is recorded with the key as soon as Stripe returns it, so a
 * retry completes that invoice rather than starting another, and each
 * line carries its index in its metadata, so a retry adds exactly the
 * lines that are missing.
 */


#include <ngx_config.h>
#include <ngx_core.h>

#include "ngx_http_invoices_module.h"
#include "ngx_http_invoices_json.h"
#include "ngx_http_invoices_pg.h"
#include "ngx_http_invoices_cache.h"
#include "ngx_http_invoices_stripe.h"
#include "ngx_http_invoices_create.h"
#include "ngx_http_invoices_request.h"
#include "ngx_http_invoices_parse.h"
#include "ngx_http_invoices_history.h"
#include "ngx_http_invoices_idempotency.h"


/* the metadata key of a line: its index in the request's items */
#define NGX_HTTP_INVOICES_LINE_KEY    "ngx_invoices_line"

/* 250 items at most, 100 lines a page: more pages is not our invoice */
#define NGX_HTTP_INVOICES_LINE_PAGES  8


typedef struct {
    /* in */
    u_char                           *body;
    size_t                            body_len;
    ngx_http_invoices_idem_t          idem;
    ngx_http_invoices_audit_t         audit;
    const char                       *currency;

    /* work, in the thread */
    json_t                           *req;
    const char                       *customer;
    char                              team[32];
    ngx_uint_t                        resumed;   /* a retry's draft */
    ngx_uint_t                        attempted; /* went to Stripe */
} ngx_http_invoices_create_t;


static void ngx_http_invoices_create_body(ngx_http_request_t *r);
static void ngx_http_invoices_create_run(ngx_http_invoices_job_t *job);
static ngx_int_t ngx_http_invoices_create_validate(
    ngx_http_invoices_job_t *job, ngx_http_invoices_create_t *cr);
static ngx_int_t ngx_http_invoices_create_team(ngx_http_invoices_job_t *job,
    ngx_http_invoices_create_t *cr);
static void ngx_http_invoices_create_sequence(ngx_http_invoices_job_t *job,
    ngx_http_invoices_create_t *cr);
static json_t *ngx_http_invoices_create_draft(ngx_http_invoices_job_t *job,
    ngx_http_invoices_create_t *cr, const char *currency,
    ngx_http_invoices_stripe_res_t *sr);
static json_t *ngx_http_invoices_create_resume(ngx_http_invoices_job_t *job,
    ngx_http_invoices_create_t *cr, ngx_http_invoices_stripe_res_t *sr,
    ngx_uint_t *finalized);
static ngx_int_t ngx_http_invoices_create_lines(ngx_http_invoices_job_t *job,
    ngx_http_invoices_create_t *cr, const char *currency);
static json_t *ngx_http_invoices_create_finalize(
    ngx_http_invoices_job_t *job, ngx_http_invoices_create_t *cr,
    ngx_http_invoices_stripe_res_t *sr);
static json_t *ngx_http_invoices_create_unreadable(
    ngx_http_invoices_job_t *job, json_t *invoice,
    ngx_http_invoices_stripe_res_t *sr);
static ngx_int_t ngx_http_invoices_create_attached(
    ngx_http_invoices_job_t *job, ngx_http_invoices_create_t *cr,
    u_char *attached, size_t n);
static ngx_int_t ngx_http_invoices_create_finish(ngx_http_request_t *r,
    ngx_http_invoices_job_t *job);


/* event loop: the checks that need no body, then the body */

ngx_int_t
ngx_http_invoices_create(ngx_http_request_t *r,
    ngx_http_invoices_loc_conf_t *ilcf)
{
    ngx_int_t                    rc;
    ngx_http_invoices_ctx_t     *ctx;
    ngx_http_invoices_create_t  *cr;

    if (ngx_http_invoices_content_type_json(r) != NGX_OK) {
        rc = ngx_http_discard_request_body(r);
        if (rc != NGX_OK) {
            return rc;
        }

        return ngx_http_invoices_send_error(r,
                   NGX_HTTP_UNSUPPORTED_MEDIA_TYPE, "invalid_request_error",
                   "content_type_unsupported",
                   "the body must be JSON: Content-Type: application/json",
                   NULL);
    }

    cr = ngx_pcalloc(r->pool, sizeof(ngx_http_invoices_create_t));
    ctx = ngx_http_invoices_ctx(r);

    if (cr == NULL || ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_invoices_idem_init(r, ilcf, &cr->idem,
                                     "creating an invoice");
    cr->idem.drafts = 1;

    if (rc == NGX_DECLINED) {
        rc = ngx_http_discard_request_body(r);
        if (rc != NGX_OK) {
            return rc;
        }

        return ngx_http_invoices_send_error(r, NGX_HTTP_BAD_REQUEST,
                   "invalid_request_error", "parameter_invalid",
                   NGX_HTTP_INVOICES_IDEM_INVALID, "Idempotency-Key");
    }

    if (rc != NGX_OK
        || ngx_http_invoices_audit_init(r, &cr->audit) != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    cr->currency = (const char *) ilcf->currency.data;

    ctx->data = cr;

    r->request_body_in_single_buf = 1;

    rc = ngx_http_read_client_request_body(r,
                                           ngx_http_invoices_create_body);

    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        return rc;
    }

    return NGX_DONE;
}


static void
ngx_http_invoices_create_body(ngx_http_request_t *r)
{
    ngx_str_t                      body;
    ngx_http_invoices_job_t       *job;
    ngx_http_invoices_ctx_t       *ctx;
    ngx_http_invoices_create_t    *cr;
    ngx_http_invoices_loc_conf_t  *ilcf;

    ilcf = ngx_http_get_module_loc_conf(r, ngx_http_invoices_module);
    ctx = ngx_http_get_module_ctx(r, ngx_http_invoices_module);
    cr = ctx->data;

    if (ngx_http_invoices_request_body(r, &body) != NGX_OK) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    cr->body = body.data;
    cr->body_len = body.len;

    job = ngx_http_invoices_job_create(r, ilcf);
    if (job == NULL) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    job->thread_pool = ilcf->stripe_thread_pool;
    job->run = ngx_http_invoices_create_run;
    job->finish = ngx_http_invoices_create_finish;
    job->data = cr;

    ngx_http_finalize_request(r, ngx_http_invoices_job_run(r, job));
}


/* pool thread from here on */

static void
ngx_http_invoices_create_run(ngx_http_invoices_job_t *job)
{
    ngx_http_invoices_create_t  *cr = job->data;

    /*
     * The request's fingerprint is its body: a key released unused (a 400
     * Stripe may have kept under its own key anyway) can serve a corrected
     * body without Stripe's idempotency_error.
     */

    if (ngx_http_invoices_create_validate(job, cr) != NGX_OK
        || ngx_http_invoices_idem_prepare(job, &cr->idem, cr->body,
                                          cr->body_len)
           != NGX_OK)
    {
        goto done;
    }

    if (ngx_http_invoices_idem_claim(job, &cr->idem) == NGX_OK
        && ngx_http_invoices_create_team(job, cr) == NGX_OK)
    {
        cr->attempted = 1;
        ngx_http_invoices_create_sequence(job, cr);
    }

    /* not finished: a retry may go on at once, not after the lease */

    if (cr->idem.held) {
        ngx_http_invoices_idem_release(job, &cr->idem);
    }

done:

    /* an invoice was stored (finalized, or a draft left by a failure) */
    if (!cr->idem.replayed && cr->idem.invoice_id[0]) {
        job->defer = ngx_http_invoices_cache_bump_for;
    }

    /*
     * recorded: a create that went to Stripe, and a replay of one; bad
     * input (a body, a customer, a key in use) changes nothing
     */

    if (cr->attempted || cr->idem.replayed) {
        ngx_http_invoices_audit_record(job, &cr->audit, "create",
                                       cr->idem.invoice_id[0]
                                       ? cr->idem.invoice_id : NULL,
                                       cr->idem.own ? cr->idem.key : NULL,
                                       cr->idem.replayed, job->status);
    }

    json_decref(cr->req);
    cr->req = NULL;
}


/*
 * Every rule of docs/openapi.yaml (ngx_http_invoices_parse_create); the
 * first failure answers 400 naming the parameter as Stripe would
 * ("items[2][amount]").
 */

static ngx_int_t
ngx_http_invoices_create_validate(ngx_http_invoices_job_t *job,
    ngx_http_invoices_create_t *cr)
{
    ngx_http_invoices_invalid_t  invalid;

    cr->req = ngx_http_invoices_parse_create(cr->body, cr->body_len,
                                             &invalid);

    if (cr->req == NULL) {
        ngx_http_invoices_job_refuse(job, NGX_HTTP_BAD_REQUEST,
                                     invalid.code, invalid.message,
                                     invalid.has_param ? invalid.param
                                                       : NULL);
        return NGX_ERROR;
    }

    cr->customer = json_string_value(json_object_get(cr->req, "customer"));

    return NGX_OK;
}


static ngx_int_t
ngx_http_invoices_create_team(ngx_http_invoices_job_t *job,
    ngx_http_invoices_create_t *cr)
{
    PGresult    *res;
    const char  *values[1];

    values[0] = cr->customer;

    res = ngx_http_invoices_pg_query(job,
              "SELECT id FROM teams WHERE stripe_customer_id = $1",
              1, values);
    if (res == NULL) {
        return NGX_DONE;
    }

    if (PQntuples(res) == 0) {
        PQclear(res);

        /* nothing was asked of Stripe: the key is not used up */
        cr->idem.forget = 1;

        ngx_http_invoices_job_refuse(job, NGX_HTTP_NOT_FOUND,
            "resource_missing", "no team is linked to this customer",
            "customer");
        return NGX_DONE;
    }

    ngx_cpystrn((u_char *) cr->team, (u_char *) PQgetvalue(res, 0, 0),
                sizeof(cr->team));
    PQclear(res);

    return NGX_OK;
}


/*
 * The create, one Stripe step after the other: a new draft, or where an
 * earlier attempt stopped; the lines it lacks; the finalize.  Each step
 * leaves the job's error when it fails; a step that returns the invoice
 * leaves Stripe's answer in *sr.
 */

static void
ngx_http_invoices_create_sequence(ngx_http_invoices_job_t *job,
    ngx_http_invoices_create_t *cr)
{
    char                            *body;
    size_t                           len;
    json_t                          *invoice;
    ngx_int_t                        rc;
    ngx_uint_t                       finalized;
    const char                      *currency;
    ngx_http_invoices_stripe_res_t   sr;

    currency = json_string_value(json_object_get(cr->req, "currency"));
    if (currency == NULL) {
        currency = cr->currency;
    }

    finalized = 0;

    if (cr->idem.invoice_id[0] == '\0') {
        invoice = ngx_http_invoices_create_draft(job, cr, currency, &sr);

    } else {
        invoice = ngx_http_invoices_create_resume(job, cr, &sr, &finalized);
    }

    if (invoice == NULL) {
        return;
    }

    if (!finalized) {
        json_decref(invoice);
        ngx_http_invoices_stripe_res_free(&sr);

        rc = ngx_http_invoices_create_lines(job, cr, currency);

        if (rc != NGX_OK) {
            return;
        }

        invoice = ngx_http_invoices_create_finalize(job, cr, &sr);

        if (invoice == NULL) {
            return;
        }
    }

    json_decref(invoice);

    /* Stripe's bytes, as Stripe sent them */

    body = sr.body;
    len = sr.len;
    sr.body = NULL;

    ngx_http_invoices_idem_done(job, &cr->idem, NGX_HTTP_CREATED, body, len);
}


/*
 * Step 1, a first attempt: the draft.  auto_advance=false: should a later
 * step fail, or this process die, Stripe must not finalize and charge the
 * draft by itself an hour later; the finalize turns it on.  Its id is
 * kept with the Idempotency-Key at once, under the key's fence.
 */

static json_t *
ngx_http_invoices_create_draft(ngx_http_invoices_job_t *job,
    ngx_http_invoices_create_t *cr, const char *currency,
    ngx_http_invoices_stripe_res_t *sr)
{
    char                      key[96];
    json_t                   *invoice;
    const char               *s;
    ngx_http_invoices_form_t  form;

    ngx_memzero(&form, sizeof(form));
    ngx_http_invoices_form_add(&form, "customer", cr->customer);
    ngx_http_invoices_form_add(&form, "collection_method",
                               "charge_automatically");
    ngx_http_invoices_form_add(&form, "auto_advance", "false");
    ngx_http_invoices_form_add(&form, "pending_invoice_items_behavior",
                               "exclude");
    ngx_http_invoices_form_add(&form, "currency", currency);

    s = json_string_value(json_object_get(cr->req, "paymentMethod"));
    if (s) {
        ngx_http_invoices_form_add(&form, "default_payment_method", s);
    }

    s = json_string_value(json_object_get(cr->req, "description"));
    if (s) {
        ngx_http_invoices_form_add(&form, "description", s);
    }

    ngx_http_invoices_form_add(&form, "metadata[source]",
                               "ngx_http_invoices_module");
    ngx_http_invoices_form_add(&form, "metadata[team_id]", cr->team);

    (void) ngx_http_invoices_sprint(key, "%s:create", cr->idem.stripe_key);

    invoice = ngx_http_invoices_idem_call(job, &cr->idem, "POST", "/v1/invoices",
                                            &form, key,
                                            "creating the invoice", sr);
    ngx_http_invoices_form_free(&form);

    if (invoice == NULL) {
        return NULL;
    }

    s = ngx_http_invoices_json_str(invoice, "id");
    if (s == NULL) {
        return ngx_http_invoices_create_unreadable(job, invoice, sr);
    }

    if (ngx_http_invoices_idem_invoice(job, &cr->idem, s) != NGX_OK
        || ngx_http_invoices_stripe_store_object(job, invoice) != NGX_OK)
    {
        /* the database failed after Stripe answered, or the key was taken */
        ngx_http_invoices_stripe_res_free(sr);
        json_decref(invoice);
        return NULL;
    }

    return invoice;
}


/*
 * Step 1, a retry: where did the earlier attempt stop?  A draft goes on
 * with its lines; anything else was finalized already, and is the answer.
 */

static json_t *
ngx_http_invoices_create_resume(ngx_http_invoices_job_t *job,
    ngx_http_invoices_create_t *cr, ngx_http_invoices_stripe_res_t *sr,
    ngx_uint_t *finalized)
{
    char        path[320];
    json_t     *invoice;
    const char *s;

    (void) ngx_http_invoices_sprint(path, "/v1/invoices/%s", cr->idem.invoice_id);

    invoice = ngx_http_invoices_idem_call(job, &cr->idem, "GET", path, NULL, NULL,
                                            "reading the invoice", sr);
    if (invoice == NULL) {
        return NULL;
    }

    if (ngx_http_invoices_stripe_store_object(job, invoice) != NGX_OK) {
        ngx_http_invoices_stripe_res_free(sr);
        json_decref(invoice);
        return NULL;
    }

    s = ngx_http_invoices_json_str(invoice, "status");

    if (s == NULL) {
        return ngx_http_invoices_create_unreadable(job, invoice, sr);
    }

    *finalized = ngx_strcmp(s, "draft") != 0;
    cr->resumed = 1;

    return invoice;
}


/*
 * Step 2: the lines.  Each names its index in its metadata, and its Stripe
 * key names it too, so a retry adds none twice and leaves none out.
 */

static ngx_int_t
ngx_http_invoices_create_lines(ngx_http_invoices_job_t *job,
    ngx_http_invoices_create_t *cr, const char *currency)
{
    char                            key[96], amount[32],
                                    index[NGX_INT_T_LEN + 1];
    size_t                          i, n;
    json_t                         *items, *item, *v;
    u_char                         *attached;
    ngx_http_invoices_form_t        form;
    ngx_http_invoices_stripe_res_t  sr;

    items = json_object_get(cr->req, "items");
    n = json_array_size(items);

    attached = calloc(n ? n : 1, 1);
    if (attached == NULL) {
        ngx_http_invoices_job_fail(job, NGX_HTTP_INTERNAL_SERVER_ERROR,
                                   "api_error", "internal_error",
                                   "out of memory");
        return NGX_ERROR;
    }

    /* a retry: the lines the draft has already */

    if (cr->resumed
        && ngx_http_invoices_create_attached(job, cr, attached, n) != NGX_OK)
    {
        free(attached);
        return NGX_ERROR;
    }

    for (i = 0; i < n; i++) {

        if (attached[i]) {
            continue;
        }

        item = json_array_get(items, i);

        (void) ngx_http_invoices_sprint(amount, "%L", (int64_t)
            json_integer_value(json_object_get(item, "amount")));
        (void) ngx_http_invoices_sprint(index, "%uz", i);

        ngx_memzero(&form, sizeof(form));
        ngx_http_invoices_form_add(&form, "customer", cr->customer);
        ngx_http_invoices_form_add(&form, "invoice", cr->idem.invoice_id);
        ngx_http_invoices_form_add(&form, "amount", amount);
        ngx_http_invoices_form_add(&form, "currency", currency);
        ngx_http_invoices_form_add(&form, "description",
                                   ngx_http_invoices_json_str(item, "name"));
        ngx_http_invoices_form_add(&form,
                                   "metadata[" NGX_HTTP_INVOICES_LINE_KEY "]",
                                   index);

        (void) ngx_http_invoices_sprint(key, "%s:item:%uz", cr->idem.stripe_key, i);

        v = ngx_http_invoices_idem_call(job, &cr->idem, "POST", "/v1/invoiceitems",
                                          &form, key, "adding a line", &sr);
        ngx_http_invoices_form_free(&form);

        if (v == NULL) {
            free(attached);
            return NGX_ERROR;
        }

        json_decref(v);
        ngx_http_invoices_stripe_res_free(&sr);
    }

    free(attached);

    return NGX_OK;
}


/* Step 3: the finalize, auto_advance=true: Stripe then collects it */

static json_t *
ngx_http_invoices_create_finalize(ngx_http_invoices_job_t *job,
    ngx_http_invoices_create_t *cr, ngx_http_invoices_stripe_res_t *sr)
{
    char                      path[320], key[96];
    json_t                   *invoice;
    ngx_http_invoices_form_t  form;

    ngx_memzero(&form, sizeof(form));
    ngx_http_invoices_form_add(&form, "auto_advance", "true");

    (void) ngx_http_invoices_sprint(path, "/v1/invoices/%s/finalize",
                                    cr->idem.invoice_id);
    (void) ngx_http_invoices_sprint(key, "%s:finalize", cr->idem.stripe_key);

    invoice = ngx_http_invoices_idem_call(job, &cr->idem, "POST", path, &form, key,
                                            "finalizing the invoice", sr);
    ngx_http_invoices_form_free(&form);

    if (invoice == NULL) {
        return NULL;
    }

    /* Step 4: the finalized invoice stored */

    if (ngx_http_invoices_stripe_store_object(job, invoice) != NGX_OK) {
        ngx_http_invoices_stripe_res_free(sr);
        json_decref(invoice);
        return NULL;
    }

    return invoice;
}


/* Stripe answered 2xx with something we cannot read: 502 */

static json_t *
ngx_http_invoices_create_unreadable(ngx_http_invoices_job_t *job,
    json_t *invoice, ngx_http_invoices_stripe_res_t *sr)
{
    ngx_http_invoices_stripe_res_free(sr);
    json_decref(invoice);
    ngx_http_invoices_job_fail(job, NGX_HTTP_BAD_GATEWAY, "api_error",
                               "stripe_bad_response",
                               "Stripe's answer could not be read");
    return NULL;
}


/*
 * Which of the n lines the draft has already, by the index each line
 * carries in its metadata.  The list is read through, page by page: the
 * invoice object shows ten lines at most, and Stripe's spec makes its
 * total_count optional.  NGX_ERROR with the answer set.
 */

static ngx_int_t
ngx_http_invoices_create_attached(ngx_http_invoices_job_t *job,
    ngx_http_invoices_create_t *cr, u_char *attached, size_t n)
{
    size_t                           i, page;
    json_t                          *list, *data, *line;
    ngx_int_t                        index;
    const char                      *s, *last;
    char                             path[640], after[128];
    ngx_http_invoices_stripe_res_t   sr;

    after[0] = '\0';

    for (page = 0; page < NGX_HTTP_INVOICES_LINE_PAGES; page++) {

        (void) ngx_http_invoices_sprint(path,
                                        "/v1/invoices/%s/lines?limit=100%s%s",
                                        cr->idem.invoice_id,
                                        after[0] ? "&starting_after=" : "",
                                        after);

        list = ngx_http_invoices_idem_call(job, &cr->idem, "GET", path, NULL, NULL,
                                             "reading the invoice's lines",
                                             &sr);
        if (list == NULL) {
            return NGX_ERROR;
        }

        ngx_http_invoices_stripe_res_free(&sr);

        data = json_object_get(list, "data");
        if (!json_is_array(data)) {
            break;
        }

        last = NULL;

        json_array_foreach(data, i, line) {
            last = ngx_http_invoices_json_str(line, "id");

            s = ngx_http_invoices_json_str(json_object_get(line, "metadata"),
                                           NGX_HTTP_INVOICES_LINE_KEY);
            if (s == NULL) {
                continue;
            }

            index = ngx_atoi((u_char *) s, ngx_strlen(s));

            if (index != NGX_ERROR && (size_t) index < n) {
                attached[index] = 1;
            }
        }

        if (!json_is_true(json_object_get(list, "has_more"))) {
            json_decref(list);
            return NGX_OK;
        }

        /* the cursor goes into a URL: Stripe's ids are letters, digits, _ */

        if (last == NULL || ngx_strlen(last) >= sizeof(after)
            || last[strspn(last, "abcdefghijklmnopqrstuvwxyz"
                                 "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")]
               != '\0')
        {
            break;
        }

        ngx_cpystrn((u_char *) after, (u_char *) last, sizeof(after));
        json_decref(list);
        list = NULL;
    }

    json_decref(list);

    ngx_http_invoices_job_fail(job, NGX_HTTP_BAD_GATEWAY, "api_error",
                               "stripe_bad_response",
                               "Stripe's list of the invoice's lines could "
                               "not be read");
    return NGX_ERROR;
}



/* event loop */

static ngx_int_t
ngx_http_invoices_create_finish(ngx_http_request_t *r,
    ngx_http_invoices_job_t *job)
{
    u_char                        *p;
    ngx_str_t                      location;
    ngx_http_invoices_create_t    *cr = job->data;
    ngx_http_invoices_loc_conf_t  *ilcf;

    static ngx_str_t  replayed = ngx_string("Idempotent-Replayed");
    static ngx_str_t  yes = ngx_string("true");
    static ngx_str_t  location_name = ngx_string("Location");

    if (cr->idem.replayed
        && ngx_http_invoices_set_header(r, &replayed, &yes) != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }


    if (job->status == NGX_HTTP_CREATED && cr->idem.invoice_id[0]) {
        ilcf = ngx_http_get_module_loc_conf(r, ngx_http_invoices_module);

        location.len = ilcf->prefix.len + 1 + ngx_strlen(cr->idem.invoice_id);
        location.data = ngx_pnalloc(r->pool, location.len);
        if (location.data == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        p = ngx_cpymem(location.data, ilcf->prefix.data, ilcf->prefix.len);
        *p++ = '/';
        ngx_memcpy(p, cr->idem.invoice_id, ngx_strlen(cr->idem.invoice_id));

        if (ngx_http_invoices_set_header(r, &location_name, &location)
            != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    return ngx_http_invoices_job_send(r, job);
}


