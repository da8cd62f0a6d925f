
/*
 * POST /admin/api/invoices: create and finalize a Stripe invoice.
 *
 * The event loop checks the headers and reads the body; one job in the
 * Stripe thread pool then does everything else: validates the body, takes
 * the caller's Idempotency-Key (a PostgreSQL advisory lock while it runs,
 * a row that records the outcome), resolves the team, and runs the Stripe
 * sequence: create the invoice, add each line, finalize.  Each Stripe call
 * carries an Idempotency-Key derived from the caller's, so a retry after a
 * timeout replays Stripe's answers instead of creating anything twice, and
 * the Stripe invoice id is recorded as soon as Stripe returns it, so a
 * retry completes that invoice rather than starting another.
 */


#include <openssl/evp.h>
#include <openssl/rand.h>

#include "ngx_http_invoices_module.h"
#include "ngx_http_invoices_json.h"
#include "ngx_http_invoices_pg.h"
#include "ngx_http_invoices_stripe.h"
#include "ngx_http_invoices_create.h"
#include "ngx_http_invoices_handler.h"
#include "ngx_http_invoices_parse.h"


typedef struct {
    /* in */
    u_char                           *body;
    size_t                            body_len;
    char                              key[256];
    const char                       *currency;
    ngx_http_invoices_stripe_conf_t   stripe;

    /* work, in the thread */
    json_t                           *req;
    const char                       *customer;
    char                              team[32];
    char                              hash[65];
    char                              lock[24];
    char                              stripe_key[64];
    ngx_uint_t                        locked;

    /* out */
    ngx_uint_t                        replayed;
    char                              invoice_id[256];
} ngx_http_invoices_create_t;


static void ngx_http_invoices_create_body(ngx_http_request_t *r);
static void ngx_http_invoices_create_run(ngx_http_invoices_job_t *job);
static ngx_int_t ngx_http_invoices_create_validate(
    ngx_http_invoices_job_t *job, ngx_http_invoices_create_t *cr);
static ngx_int_t ngx_http_invoices_create_claim(ngx_http_invoices_job_t *job,
    ngx_http_invoices_create_t *cr);
static void ngx_http_invoices_create_sequence(ngx_http_invoices_job_t *job,
    ngx_http_invoices_create_t *cr);
static json_t *ngx_http_invoices_create_call(ngx_http_invoices_job_t *job,
    ngx_http_invoices_create_t *cr, const char *method, const char *path,
    ngx_http_invoices_form_t *form, const char *key, const char *step,
    ngx_http_invoices_stripe_res_t *sr);
static void ngx_http_invoices_create_stripe_error(
    ngx_http_invoices_job_t *job, ngx_http_invoices_create_t *cr,
    ngx_http_invoices_stripe_res_t *sr, const char *step);
static ngx_int_t ngx_http_invoices_create_store(ngx_http_invoices_job_t *job,
    json_t *invoice);
static void ngx_http_invoices_create_done(ngx_http_invoices_job_t *job,
    ngx_http_invoices_create_t *cr, ngx_uint_t status, char *body,
    size_t len);
static void ngx_http_invoices_create_error(ngx_http_invoices_job_t *job,
    ngx_uint_t status, const char *code, const char *message,
    const char *param);
static ngx_int_t ngx_http_invoices_create_finish(ngx_http_request_t *r,
    ngx_http_invoices_job_t *job);
static ngx_int_t ngx_http_invoices_content_type_json(ngx_http_request_t *r);
static ngx_int_t ngx_http_invoices_idempotency_key(ngx_http_request_t *r,
    ngx_http_invoices_create_t *cr);
static void ngx_http_invoices_sha256_hex(const void *data, size_t len,
    char *hex);


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

    rc = ngx_http_invoices_idempotency_key(r, cr);

    if (rc == NGX_DECLINED) {
        rc = ngx_http_discard_request_body(r);
        if (rc != NGX_OK) {
            return rc;
        }

        return ngx_http_invoices_send_error(r, NGX_HTTP_BAD_REQUEST,
                   "invalid_request_error", "parameter_invalid",
                   "Idempotency-Key must be given once, with 1 to 255 "
                   "printable ASCII characters", "Idempotency-Key");
    }

    if (rc != NGX_OK) {
        return rc;
    }

    cr->currency = (const char *) ilcf->currency.data;
    ngx_http_invoices_stripe_conf(&cr->stripe, ilcf);

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


/*
 * "application/json", any case, with parameters; a charset must be UTF-8.
 * Exactly one Content-Type: nginx 1.22 keeps the first of several, and a
 * body announced as two types at once is not taken as JSON.
 */

static ngx_int_t
ngx_http_invoices_content_type_json(ngx_http_request_t *r)
{
    u_char           *p, *end;
    ngx_uint_t        n;
    ngx_table_elt_t  *h;

    h = r->headers_in.content_type;
    if (h == NULL) {
        return NGX_DECLINED;
    }

    (void) ngx_http_invoices_header(r, "Content-Type", &n);
    if (n != 1) {
        return NGX_DECLINED;
    }

    p = h->value.data;
    end = p + h->value.len;

    if (h->value.len < sizeof("application/json") - 1
        || ngx_strncasecmp(p, (u_char *) "application/json",
                           sizeof("application/json") - 1) != 0)
    {
        return NGX_DECLINED;
    }

    p += sizeof("application/json") - 1;

    while (p < end && (*p == ' ' || *p == '\t')) {
        p++;
    }

    if (p == end) {
        return NGX_OK;
    }

    if (*p != ';') {
        return NGX_DECLINED;
    }

    /* only a charset parameter, and only UTF-8, is understood */

    for (p++; p < end && (*p == ' ' || *p == '\t'); p++) { /* void */ }

    if (end - p >= 8 && ngx_strncasecmp(p, (u_char *) "charset=", 8) == 0) {
        p += 8;

        if (p < end && *p == '"' && end - p >= 2 && end[-1] == '"') {
            p++;
            end--;
        }

        if ((end - p == 5 && ngx_strncasecmp(p, (u_char *) "utf-8", 5) == 0)
            || (end - p == 4 && ngx_strncasecmp(p, (u_char *) "utf8", 4) == 0))
        {
            return NGX_OK;
        }
    }

    return NGX_DECLINED;
}


/*
 * The caller's Idempotency-Key, or a new random one: NGX_OK, NGX_DECLINED
 * for a key that is not acceptable, or an HTTP error status.
 */

static ngx_int_t
ngx_http_invoices_idempotency_key(ngx_http_request_t *r,
    ngx_http_invoices_create_t *cr)
{
    u_char      *p;
    ngx_str_t   *key;
    ngx_uint_t   i, n;
    u_char       rnd[16];

    key = ngx_http_invoices_header(r, "Idempotency-Key", &n);

    if (key == NULL) {
        if (RAND_bytes(rnd, sizeof(rnd)) != 1) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        p = ngx_cpymem(cr->key, "auto-", 5);
        p = ngx_hex_dump(p, rnd, sizeof(rnd));
        *p = '\0';

        return NGX_OK;
    }

    if (n > 1 || key->len == 0 || key->len > 255) {
        return NGX_DECLINED;
    }

    for (i = 0; i < key->len; i++) {
        if (key->data[i] < 0x20 || key->data[i] > 0x7e) {
            return NGX_DECLINED;
        }
    }

    *ngx_cpymem(cr->key, key->data, key->len) = '\0';

    return NGX_OK;
}


/* pool thread from here on */

static void
ngx_http_invoices_create_run(ngx_http_invoices_job_t *job)
{
    u_char                      *p;
    u_char                       digest[32];
    ngx_http_invoices_create_t  *cr = job->data;

    if (ngx_http_invoices_create_validate(job, cr) != NGX_OK) {
        goto done;
    }

    /*
     * The request's fingerprint, the advisory lock id and the keys sent to
     * Stripe all come from the caller's key: the same key always maps to
     * the same Stripe keys, and a key of 255 characters still fits.
     */

    ngx_http_invoices_sha256_hex(cr->body, cr->body_len, cr->hash);

    if (EVP_Digest(cr->key, ngx_strlen(cr->key), digest, NULL, EVP_sha256(),
                   NULL) != 1)
    {
        goto done;
    }

    *ngx_sprintf((u_char *) cr->lock, "%L",
                 (int64_t) (((uint64_t) digest[0] << 56)
                            | ((uint64_t) digest[1] << 48)
                            | ((uint64_t) digest[2] << 40)
                            | ((uint64_t) digest[3] << 32)
                            | ((uint64_t) digest[4] << 24)
                            | ((uint64_t) digest[5] << 16)
                            | ((uint64_t) digest[6] << 8)
                            | (uint64_t) digest[7])) = '\0';

    p = ngx_cpymem(cr->stripe_key, "ngxinv-", 7);
    p = ngx_hex_dump(p, digest, 24);
    *p = '\0';

    if (ngx_http_invoices_create_claim(job, cr) == NGX_OK) {
        ngx_http_invoices_create_sequence(job, cr);
    }

    /*
     * Only the session that took the lock releases it: unlocking a key
     * held by another request's session makes PostgreSQL send a WARNING,
     * which libpq writes to nginx's stderr, on every 409 in_use.
     */

    if (cr->locked) {
        const char  *values[1] = { cr->lock };
        PGresult    *res;

        res = ngx_http_invoices_pg_try(job, "SELECT pg_advisory_unlock($1)",
                                       1, values);
        PQclear(res);
    }

done:

    /* an invoice was stored (finalized, or a draft left by a failure) */
    job->changed = !cr->replayed && cr->invoice_id[0];

    json_decref(cr->req);
    cr->req = NULL;
}


/*
 * Every rule of API.md (ngx_http_invoices_parse_create); the first failure
 * answers 400 naming the parameter as Stripe would ("items[2][amount]").
 */

static ngx_int_t
ngx_http_invoices_create_validate(ngx_http_invoices_job_t *job,
    ngx_http_invoices_create_t *cr)
{
    ngx_http_invoices_invalid_t  invalid;

    cr->req = ngx_http_invoices_parse_create(cr->body, cr->body_len,
                                             &invalid);

    if (cr->req == NULL) {
        ngx_http_invoices_create_error(job, NGX_HTTP_BAD_REQUEST,
                                       invalid.code, invalid.message,
                                       invalid.has_param ? invalid.param
                                                         : NULL);
        return NGX_ERROR;
    }

    cr->customer = json_string_value(json_object_get(cr->req, "customer"));

    return NGX_OK;
}


/*
 * Takes the caller's key: NGX_OK to go on with the Stripe sequence, or
 * NGX_DONE with the answer set (a replay, a conflict, an unknown team,
 * a database failure).
 */

static ngx_int_t
ngx_http_invoices_create_claim(ngx_http_invoices_job_t *job,
    ngx_http_invoices_create_t *cr)
{
    PGresult    *res;
    const char  *values[2];

    values[0] = cr->lock;

    res = ngx_http_invoices_pg_query(job,
                                     "SELECT pg_try_advisory_lock($1)",
                                     1, values);
    if (res == NULL) {
        return NGX_DONE;
    }

    if (PQgetvalue(res, 0, 0)[0] != 't') {
        PQclear(res);
        ngx_http_invoices_create_error(job, NGX_HTTP_CONFLICT,
            "idempotency_key_in_use",
            "a request with this Idempotency-Key is still in progress; "
            "retry later", NULL);
        return NGX_DONE;
    }

    PQclear(res);
    cr->locked = 1;

    values[0] = cr->key;

    res = ngx_http_invoices_pg_query(job,
              "SELECT request_hash, state, response_status, response_body, "
              "stripe_invoice_id FROM idempotency_keys WHERE key = $1",
              1, values);
    if (res == NULL) {
        return NGX_DONE;
    }

    if (PQntuples(res) == 1) {

        if (ngx_strcmp(PQgetvalue(res, 0, 0), cr->hash) != 0) {
            PQclear(res);
            ngx_http_invoices_create_error(job, NGX_HTTP_CONFLICT,
                "idempotency_key_reused",
                "this Idempotency-Key was used with a different request "
                "body", NULL);
            return NGX_DONE;
        }

        if (ngx_strcmp(PQgetvalue(res, 0, 1), "done") == 0) {
            cr->replayed = 1;
            job->status = ngx_atoi((u_char *) PQgetvalue(res, 0, 2),
                                   ngx_strlen(PQgetvalue(res, 0, 2)));
            job->len = PQgetlength(res, 0, 3);
            job->body = malloc(job->len + 1);

            if (job->body) {
                ngx_memcpy(job->body, PQgetvalue(res, 0, 3), job->len + 1);
            }

            if (!PQgetisnull(res, 0, 4)) {
                ngx_cpystrn((u_char *) cr->invoice_id,
                            (u_char *) PQgetvalue(res, 0, 4),
                            sizeof(cr->invoice_id));
            }

            PQclear(res);
            return NGX_DONE;
        }

        /* an earlier attempt stopped half-way: finish its invoice */

        if (!PQgetisnull(res, 0, 4)) {
            ngx_cpystrn((u_char *) cr->invoice_id,
                        (u_char *) PQgetvalue(res, 0, 4),
                        sizeof(cr->invoice_id));
        }
    }

    PQclear(res);

    values[0] = cr->customer;

    res = ngx_http_invoices_pg_query(job,
              "SELECT id FROM teams WHERE stripe_customer_id = $1",
              1, values);
    if (res == NULL) {
        return NGX_DONE;
    }

    if (PQntuples(res) == 0) {
        PQclear(res);
        ngx_http_invoices_create_error(job, NGX_HTTP_NOT_FOUND,
            "resource_missing", "no team is linked to this customer",
            "customer");
        return NGX_DONE;
    }

    ngx_cpystrn((u_char *) cr->team, (u_char *) PQgetvalue(res, 0, 0),
                sizeof(cr->team));
    PQclear(res);

    values[0] = cr->key;
    values[1] = cr->hash;

    res = ngx_http_invoices_pg_query(job,
              "INSERT INTO idempotency_keys (key, request_hash) "
              "VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
              2, values);
    if (res == NULL) {
        return NGX_DONE;
    }

    PQclear(res);

    return NGX_OK;
}


static void
ngx_http_invoices_create_sequence(ngx_http_invoices_job_t *job,
    ngx_http_invoices_create_t *cr)
{
    char                            *body;
    size_t                           i, n, done_lines, len;
    json_t                          *invoice, *items, *item, *v;
    PGresult                        *res;
    const char                      *values[2], *currency, *s;
    char                             path[320], key[96], amount[32];
    ngx_http_invoices_form_t         form;
    ngx_http_invoices_stripe_res_t   sr;

    items = json_object_get(cr->req, "items");
    n = json_array_size(items);

    currency = json_string_value(json_object_get(cr->req, "currency"));
    if (currency == NULL) {
        currency = cr->currency;
    }

    invoice = NULL;
    done_lines = 0;

    if (cr->invoice_id[0] == '\0') {

        ngx_memzero(&form, sizeof(form));
        ngx_http_invoices_form_add(&form, "customer", cr->customer);
        ngx_http_invoices_form_add(&form, "collection_method",
                                   "charge_automatically");
        ngx_http_invoices_form_add(&form, "auto_advance", "true");
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

        *ngx_sprintf((u_char *) key, "%s:create", cr->stripe_key) = '\0';

        invoice = ngx_http_invoices_create_call(job, cr, "POST",
                                                "/v1/invoices", &form, key,
                                                "creating the invoice", &sr);
        ngx_http_invoices_form_free(&form);

        if (invoice == NULL) {
            return;
        }

        s = ngx_http_invoices_json_str(invoice, "id");
        if (s == NULL) {
            goto bad_answer;
        }

        ngx_cpystrn((u_char *) cr->invoice_id, (u_char *) s,
                    sizeof(cr->invoice_id));

        values[0] = cr->key;
        values[1] = cr->invoice_id;

        res = ngx_http_invoices_pg_query(job,
                  "UPDATE idempotency_keys SET stripe_invoice_id = $2, "
                  "updated_at = now() WHERE key = $1", 2, values);

        if (res == NULL
            || ngx_http_invoices_create_store(job, invoice) != NGX_OK)
        {
            PQclear(res);
            goto failed;
        }

        PQclear(res);
        ngx_http_invoices_stripe_res_free(&sr);

    } else {
        /* a retry: where did the earlier attempt stop? */

        *ngx_sprintf((u_char *) path, "/v1/invoices/%s",
                     cr->invoice_id) = '\0';

        invoice = ngx_http_invoices_create_call(job, cr, "GET", path, NULL,
                                                NULL, "reading the invoice",
                                                &sr);
        if (invoice == NULL) {
            return;
        }

        if (ngx_http_invoices_create_store(job, invoice) != NGX_OK) {
            goto failed;
        }

        s = ngx_http_invoices_json_str(invoice, "status");

        if (s == NULL) {
            goto bad_answer;
        }

        if (ngx_strcmp(s, "draft") != 0) {
            /* finalized already: that is the answer */
            goto answer;
        }

        v = json_object_get(json_object_get(invoice, "lines"), "total_count");
        done_lines = json_is_integer(v) ? (size_t) json_integer_value(v) : 0;
        ngx_http_invoices_stripe_res_free(&sr);
    }

    /* the lines: the Stripe keys name the line, so a retry adds none twice */

    for (i = done_lines; i < n; i++) {
        item = json_array_get(items, i);

        *ngx_sprintf((u_char *) amount, "%L",
                     (int64_t) json_integer_value(
                         json_object_get(item, "amount"))) = '\0';

        ngx_memzero(&form, sizeof(form));
        ngx_http_invoices_form_add(&form, "customer", cr->customer);
        ngx_http_invoices_form_add(&form, "invoice", cr->invoice_id);
        ngx_http_invoices_form_add(&form, "amount", amount);
        ngx_http_invoices_form_add(&form, "currency", currency);
        ngx_http_invoices_form_add(&form, "description",
                                   ngx_http_invoices_json_str(item, "name"));

        *ngx_sprintf((u_char *) key, "%s:item:%uz", cr->stripe_key, i) = '\0';

        v = ngx_http_invoices_create_call(job, cr, "POST", "/v1/invoiceitems",
                                          &form, key, "adding a line", &sr);
        ngx_http_invoices_form_free(&form);

        if (v == NULL) {
            json_decref(invoice);
            return;
        }

        json_decref(v);
        ngx_http_invoices_stripe_res_free(&sr);
    }

    json_decref(invoice);

    ngx_memzero(&form, sizeof(form));
    ngx_http_invoices_form_add(&form, "auto_advance", "true");

    *ngx_sprintf((u_char *) path, "/v1/invoices/%s/finalize",
                 cr->invoice_id) = '\0';
    *ngx_sprintf((u_char *) key, "%s:finalize", cr->stripe_key) = '\0';

    invoice = ngx_http_invoices_create_call(job, cr, "POST", path, &form, key,
                                            "finalizing the invoice", &sr);
    ngx_http_invoices_form_free(&form);

    if (invoice == NULL) {
        return;
    }

    if (ngx_http_invoices_create_store(job, invoice) != NGX_OK) {
        goto failed;
    }

answer:

    json_decref(invoice);

    /* Stripe's bytes, as Stripe sent them */

    body = sr.body;
    len = sr.len;
    sr.body = NULL;

    ngx_http_invoices_create_done(job, cr, NGX_HTTP_CREATED, body, len);
    return;

bad_answer:

    ngx_http_invoices_stripe_res_free(&sr);
    json_decref(invoice);
    ngx_http_invoices_create_error(job, NGX_HTTP_BAD_GATEWAY,
                                   "stripe_bad_response",
                                   "Stripe's answer could not be read", NULL);
    return;

failed:

    /* the database failed after Stripe answered; the job says 503 */

    ngx_http_invoices_stripe_res_free(&sr);
    json_decref(invoice);
}


/*
 * One Stripe step: the parsed object of a 2xx answer (sr keeps the bytes),
 * or NULL with the job's answer set.
 */

static json_t *
ngx_http_invoices_create_call(ngx_http_invoices_job_t *job,
    ngx_http_invoices_create_t *cr, const char *method, const char *path,
    ngx_http_invoices_form_t *form, const char *key, const char *step,
    ngx_http_invoices_stripe_res_t *sr)
{
    json_t  *json;

    ngx_http_invoices_stripe_request(&cr->stripe, method, path, form, key,
                                     sr);

    if (sr->outcome == NGX_HTTP_INVOICES_STRIPE_ANSWERED
        && sr->status >= 200 && sr->status < 300)
    {
        json = json_loadb(sr->body ? sr->body : "", sr->len, 0, NULL);

        if (json_is_object(json)) {
            return json;
        }

        json_decref(json);
        ngx_http_invoices_stripe_res_free(sr);
        ngx_http_invoices_create_error(job, NGX_HTTP_BAD_GATEWAY,
                                       "stripe_bad_response",
                                       "Stripe's answer could not be read",
                                       NULL);
        return NULL;
    }

    ngx_http_invoices_create_stripe_error(job, cr, sr, step);
    ngx_http_invoices_stripe_res_free(sr);

    return NULL;
}


static void
ngx_http_invoices_create_stripe_error(ngx_http_invoices_job_t *job,
    ngx_http_invoices_create_t *cr, ngx_http_invoices_stripe_res_t *sr,
    const char *step)
{
    char        *body;
    size_t       len;
    ngx_uint_t   status, final;

    status = ngx_http_invoices_stripe_error(sr, step, cr->invoice_id, &body,
                                            &len, &final, job->log,
                                            sizeof(job->log));

    if (final) {
        ngx_http_invoices_create_done(job, cr, status, body, len);
        return;
    }

    free(job->body);
    job->status = status;
    job->body = body;
    job->len = len;
}


/*
 * The invoice as Stripe just described it, through the one forward-only
 * write; an API answer is as new as now.
 */

static ngx_int_t
ngx_http_invoices_create_store(ngx_http_invoices_job_t *job, json_t *invoice)
{
    char                                 result[16];
    ngx_http_invoices_stripe_invoice_t   inv;

    if (ngx_http_invoices_stripe_invoice(invoice, &inv) != NGX_OK) {
        ngx_http_invoices_create_error(job, NGX_HTTP_BAD_GATEWAY,
                                       "stripe_bad_response",
                                       "Stripe's invoice could not be read",
                                       NULL);
        return NGX_ERROR;
    }

    return ngx_http_invoices_stripe_store(job, &inv, result, sizeof(result));
}


/*
 * A final answer: kept with the caller's key for replays.  The answer
 * stands even if keeping it fails: the invoice row is stored already, and
 * a retry finds the finished invoice in Stripe.
 */

static void
ngx_http_invoices_create_done(ngx_http_invoices_job_t *job,
    ngx_http_invoices_create_t *cr, ngx_uint_t status, char *body,
    size_t len)
{
    PGresult    *res;
    const char  *values[3];
    char         code[8];

    free(job->body);
    job->status = status;
    job->body = body;
    job->len = len;

    if (body == NULL) {
        return;
    }

    *ngx_sprintf((u_char *) code, "%ui", status) = '\0';

    values[0] = cr->key;
    values[1] = code;
    values[2] = body;

    res = ngx_http_invoices_pg_try(job,
              "UPDATE idempotency_keys SET state = 'done', "
              "response_status = $2, response_body = $3, updated_at = now() "
              "WHERE key = $1", 3, values);
    PQclear(res);
}


static void
ngx_http_invoices_create_error(ngx_http_invoices_job_t *job,
    ngx_uint_t status, const char *code, const char *message,
    const char *param)
{
    free(job->body);

    job->status = status;
    job->body = ngx_http_invoices_json_error(
                    status >= NGX_HTTP_INTERNAL_SERVER_ERROR
                    ? "api_error" : "invalid_request_error",
                    code, message, param, &job->len);
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

    if (cr->replayed
        && ngx_http_invoices_set_header(r, &replayed, &yes) != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }


    if (job->status == NGX_HTTP_CREATED && cr->invoice_id[0]) {
        ilcf = ngx_http_get_module_loc_conf(r, ngx_http_invoices_module);

        location.len = ilcf->prefix.len + 1 + ngx_strlen(cr->invoice_id);
        location.data = ngx_pnalloc(r->pool, location.len);
        if (location.data == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        p = ngx_cpymem(location.data, ilcf->prefix.data, ilcf->prefix.len);
        *p++ = '/';
        ngx_memcpy(p, cr->invoice_id, ngx_strlen(cr->invoice_id));

        if (ngx_http_invoices_set_header(r, &location_name, &location)
            != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    return ngx_http_invoices_job_send(r, job);
}


static void
ngx_http_invoices_sha256_hex(const void *data, size_t len, char *hex)
{
    u_char  digest[32];

    if (EVP_Digest(data, len, digest, NULL, EVP_sha256(), NULL) != 1) {
        ngx_memzero(digest, sizeof(digest));
    }

    *ngx_hex_dump((u_char *) hex, digest, sizeof(digest)) = '\0';
}


