
/*
 * POST /admin/api/invoices: create and finalize a Stripe invoice.
 *
 * The event loop checks the headers and reads the body; one job in the
 * Stripe thread pool then does everything else: validates the body, takes
 * the caller's Idempotency-Key (a row in PostgreSQL that records the
 * outcome, held by a lease while the request runs: migration 0004),
 * resolves the team, and runs the Stripe sequence: create the invoice as a
 * draft that Stripe will not advance by itself, add each line, finalize
 * (only then may Stripe collect).  Each Stripe call carries an
 * Idempotency-Key derived from the caller's, so a retry after a timeout
 * replays Stripe's answers instead of creating anything twice; the Stripe
 * invoice id is recorded as soon as Stripe returns it, so a retry
 * completes that invoice rather than starting another, and each line
 * carries its index in its metadata, so a retry adds exactly the lines
 * that are missing.
 *
 * The lease is renewed before every Stripe call and every write to the
 * key names the fence the claim got: a request that stalled past its
 * lease (a stopped process, a cut network) and was taken over finds its
 * writes refused, and answers with the taker's result instead.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "ngx_http_invoices_module.h"
#include "ngx_http_invoices_json.h"
#include "ngx_http_invoices_pg.h"
#include "ngx_http_invoices_cache.h"
#include "ngx_http_invoices_stripe.h"
#include "ngx_http_invoices_create.h"
#include "ngx_http_invoices_request.h"
#include "ngx_http_invoices_parse.h"
#include "ngx_http_invoices_history.h"


/* the metadata key of a line: its index in the request's items */
#define NGX_HTTP_INVOICES_LINE_KEY    "ngx_invoices_line"

/* 250 items at most, 100 lines a page: more pages is not our invoice */
#define NGX_HTTP_INVOICES_LINE_PAGES  8


typedef struct {
    /* in */
    u_char                           *body;
    size_t                            body_len;
    char                              key[256];
    ngx_uint_t                        own_key;   /* "key" is the caller's */
    ngx_http_invoices_audit_t         audit;
    const char                       *currency;
    char                              lease[NGX_INT_T_LEN + 1];  /* ms */
    ngx_http_invoices_stripe_conf_t   stripe;

    /* work, in the thread */
    json_t                           *req;
    const char                       *customer;
    char                              team[32];
    char                              hash[65];
    char                              fence[24];
    char                              stripe_key[64];
    ngx_uint_t                        held;      /* the lease is ours */
    ngx_uint_t                        forget;    /* release: drop the key */
    ngx_uint_t                        resumed;   /* a retry's draft */
    ngx_uint_t                        attempted; /* went to Stripe */

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
static ngx_int_t ngx_http_invoices_create_team(ngx_http_invoices_job_t *job,
    ngx_http_invoices_create_t *cr);
static ngx_int_t ngx_http_invoices_create_renew(ngx_http_invoices_job_t *job,
    ngx_http_invoices_create_t *cr);
static void ngx_http_invoices_create_taken(ngx_http_invoices_job_t *job,
    ngx_http_invoices_create_t *cr);
static void ngx_http_invoices_create_release(ngx_http_invoices_job_t *job,
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
static void ngx_http_invoices_create_replay(ngx_http_invoices_job_t *job,
    ngx_http_invoices_create_t *cr, PGresult *res, int col);
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
    ngx_msec_t                   lease;
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

    if (ngx_http_invoices_audit_init(r, &cr->audit) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    cr->currency = (const char *) ilcf->currency.data;

    lease = ilcf->idempotency_lease;
    if (lease == 0) {
        /* the longest Stripe call and 10 s (ngx_http_invoices_module.c) */
        lease = ilcf->stripe_timeout * (ilcf->stripe_max_retries + 1)
                + 5000 * ilcf->stripe_max_retries + 10000;
    }

    (void) ngx_http_invoices_sprint(cr->lease, "%M", lease);
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
    cr->own_key = 1;

    return NGX_OK;
}


/* pool thread from here on */

static void
ngx_http_invoices_create_run(ngx_http_invoices_job_t *job)
{
    u_char                      *p;
    u_char                       digest[32], seed[256 + 1 + 64];
    ngx_http_invoices_create_t  *cr = job->data;

    if (ngx_http_invoices_create_validate(job, cr) != NGX_OK) {
        goto done;
    }

    /*
     * The keys sent to Stripe come from the caller's key and the request's
     * fingerprint: the same request under the same key always maps to the
     * same Stripe keys (a key of 255 characters still fits), and a key
     * that was released unused (a 400 Stripe may have kept under its own
     * key anyway) can serve a corrected body without Stripe's
     * idempotency_error.
     */

    ngx_http_invoices_sha256_hex(cr->body, cr->body_len, cr->hash);

    p = ngx_cpymem(seed, cr->key, ngx_strlen(cr->key));
    *p++ = ':';
    p = ngx_cpymem(p, cr->hash, 64);

    if (EVP_Digest(seed, p - seed, digest, NULL, EVP_sha256(), NULL) != 1) {
        goto done;
    }

    p = ngx_cpymem(cr->stripe_key, "ngxinv-", 7);
    p = ngx_hex_dump(p, digest, 24);
    *p = '\0';

    if (ngx_http_invoices_create_claim(job, cr) == NGX_OK
        && ngx_http_invoices_create_team(job, cr) == NGX_OK)
    {
        cr->attempted = 1;
        ngx_http_invoices_create_sequence(job, cr);
    }

    /* not finished: a retry may go on at once, not after the lease */

    if (cr->held) {
        ngx_http_invoices_create_release(job, cr);
    }

done:

    /* an invoice was stored (finalized, or a draft left by a failure) */
    if (!cr->replayed && cr->invoice_id[0]) {
        job->defer = ngx_http_invoices_cache_bump_for;
    }

    /*
     * recorded: a create that went to Stripe, and a replay of one; bad
     * input (a body, a customer, a key in use) changes nothing
     */

    if (cr->attempted || cr->replayed) {
        ngx_http_invoices_audit_record(job, &cr->audit, "create",
                                       cr->invoice_id[0] ? cr->invoice_id
                                                         : NULL,
                                       cr->own_key ? cr->key : NULL,
                                       cr->replayed, job->status);
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
 * Takes the caller's key (invoices_idempotency_claim, migration 0004):
 * NGX_OK with the lease held, or NGX_DONE with the answer set (a replay,
 * a conflict, a database failure).
 */

static ngx_int_t
ngx_http_invoices_create_claim(ngx_http_invoices_job_t *job,
    ngx_http_invoices_create_t *cr)
{
    PGresult    *res;
    const char  *values[3], *outcome;

    values[0] = cr->key;
    values[1] = cr->hash;
    values[2] = cr->lease;

    res = ngx_http_invoices_pg_query(job,
              "SELECT outcome, fence, response_status, response_body, "
              "stripe_invoice_id FROM invoices_idempotency_claim($1, $2, $3)",
              3, values);
    if (res == NULL) {
        return NGX_DONE;
    }

    outcome = PQgetvalue(res, 0, 0);

    if (ngx_strcmp(outcome, "claimed") == 0) {
        cr->held = 1;
        ngx_cpystrn((u_char *) cr->fence, (u_char *) PQgetvalue(res, 0, 1),
                    sizeof(cr->fence));

        /* an earlier attempt stopped half-way: finish its invoice */

        if (!PQgetisnull(res, 0, 4)) {
            ngx_cpystrn((u_char *) cr->invoice_id,
                        (u_char *) PQgetvalue(res, 0, 4),
                        sizeof(cr->invoice_id));
        }

        PQclear(res);
        return NGX_OK;
    }

    if (ngx_strcmp(outcome, "done") == 0) {
        ngx_http_invoices_create_replay(job, cr, res, 2);
        PQclear(res);
        return NGX_DONE;
    }

    if (ngx_strcmp(outcome, "reused") == 0) {
        ngx_http_invoices_create_error(job, NGX_HTTP_CONFLICT,
            "idempotency_key_reused",
            "this Idempotency-Key was used with a different request "
            "body", NULL);

    } else {
        ngx_http_invoices_create_error(job, NGX_HTTP_CONFLICT,
            "idempotency_key_in_use",
            "a request with this Idempotency-Key is still in progress; "
            "retry later", NULL);
    }

    PQclear(res);

    return NGX_DONE;
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
        cr->forget = 1;

        ngx_http_invoices_create_error(job, NGX_HTTP_NOT_FOUND,
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
 * Before each Stripe call: the lease runs for another invoices_idempotency_
 * lease.  NGX_ERROR with the answer set when the database failed, or when
 * another request took the key over (then its answer, if it has one).
 */

static ngx_int_t
ngx_http_invoices_create_renew(ngx_http_invoices_job_t *job,
    ngx_http_invoices_create_t *cr)
{
    PGresult    *res;
    const char  *values[3];

    values[0] = cr->key;
    values[1] = cr->fence;
    values[2] = cr->lease;

    res = ngx_http_invoices_pg_query(job,
              "UPDATE idempotency_keys SET lease_until = clock_timestamp() "
              "+ $3::float8 * interval '1 millisecond', updated_at = now() "
              "WHERE key = $1 AND fence = $2 AND state = 'running'",
              3, values);
    if (res == NULL) {
        return NGX_ERROR;
    }

    if (ngx_strcmp(PQcmdTuples(res), "1") == 0) {
        PQclear(res);
        return NGX_OK;
    }

    PQclear(res);
    ngx_http_invoices_create_taken(job, cr);

    return NGX_ERROR;
}


/*
 * Our lease ran out and another request holds the key now: answer with
 * its result if it has finished, else 409; write nothing more.
 */

static void
ngx_http_invoices_create_taken(ngx_http_invoices_job_t *job,
    ngx_http_invoices_create_t *cr)
{
    u_char      *p;
    PGresult    *res;
    const char  *values[1];

    cr->held = 0;

    values[0] = cr->key;

    res = ngx_http_invoices_pg_query(job,
              "SELECT state, response_status, response_body, "
              "stripe_invoice_id FROM idempotency_keys WHERE key = $1",
              1, values);
    if (res == NULL) {
        return;
    }

    if (PQntuples(res) == 1 && ngx_strcmp(PQgetvalue(res, 0, 0), "done") == 0)
    {
        ngx_http_invoices_create_replay(job, cr, res, 1);

    } else {
        ngx_http_invoices_create_error(job, NGX_HTTP_CONFLICT,
            "idempotency_key_in_use",
            "another request with this Idempotency-Key took it over while "
            "this one was stalled; retry later", NULL);
    }

    PQclear(res);

    p = ngx_snprintf((u_char *) job->log, sizeof(job->log) - 1,
                     "creating an invoice stalled past its Idempotency-Key "
                     "lease; another request took the key over, so this one "
                     "stopped and answered %ui", job->status);
    *p = '\0';
    job->log_level = NGX_LOG_WARN;
}


/*
 * The request ends unfinished (a failure a retry may mend): the key is
 * free at once.  Where nothing was done in Stripe under it ("forget"),
 * the key is dropped, so that it may be used again with another body.
 */

static void
ngx_http_invoices_create_release(ngx_http_invoices_job_t *job,
    ngx_http_invoices_create_t *cr)
{
    PGresult    *res;
    const char  *values[2];

    values[0] = cr->key;
    values[1] = cr->fence;

    cr->held = 0;

    if (cr->forget && cr->invoice_id[0] == '\0') {
        res = ngx_http_invoices_pg_try(job,
                  "DELETE FROM idempotency_keys WHERE key = $1 AND fence = $2 "
                  "AND state = 'running' AND stripe_invoice_id IS NULL",
                  2, values);

        if (res != NULL && ngx_strcmp(PQcmdTuples(res), "1") == 0) {
            PQclear(res);
            return;
        }

        PQclear(res);
    }

    res = ngx_http_invoices_pg_try(job,
              "UPDATE idempotency_keys SET lease_until = NULL, "
              "updated_at = now() "
              "WHERE key = $1 AND fence = $2 AND state = 'running'",
              2, values);
    PQclear(res);
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

    if (cr->invoice_id[0] == '\0') {
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

    ngx_http_invoices_create_done(job, cr, NGX_HTTP_CREATED, body, len);
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
    PGresult                 *res;
    const char               *values[3], *s;
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

    (void) ngx_http_invoices_sprint(key, "%s:create", cr->stripe_key);

    invoice = ngx_http_invoices_create_call(job, cr, "POST", "/v1/invoices",
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

    ngx_cpystrn((u_char *) cr->invoice_id, (u_char *) s,
                sizeof(cr->invoice_id));

    values[0] = cr->key;
    values[1] = cr->invoice_id;
    values[2] = cr->fence;

    res = ngx_http_invoices_pg_query(job,
              "UPDATE idempotency_keys SET stripe_invoice_id = $2, "
              "updated_at = now() "
              "WHERE key = $1 AND fence = $3 AND state = 'running'",
              3, values);

    if (res != NULL && ngx_strcmp(PQcmdTuples(res), "1") != 0) {
        ngx_http_invoices_create_taken(job, cr);
        PQclear(res);
        res = NULL;
    }

    if (res == NULL || ngx_http_invoices_create_store(job, invoice) != NGX_OK)
    {
        /* the database failed after Stripe answered (503), or the key was
         * taken over */
        PQclear(res);
        ngx_http_invoices_stripe_res_free(sr);
        json_decref(invoice);
        return NULL;
    }

    PQclear(res);

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

    (void) ngx_http_invoices_sprint(path, "/v1/invoices/%s", cr->invoice_id);

    invoice = ngx_http_invoices_create_call(job, cr, "GET", path, NULL, NULL,
                                            "reading the invoice", sr);
    if (invoice == NULL) {
        return NULL;
    }

    if (ngx_http_invoices_create_store(job, invoice) != NGX_OK) {
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
        ngx_http_invoices_create_error(job, NGX_HTTP_INTERNAL_SERVER_ERROR,
                                       "internal_error", "out of memory",
                                       NULL);
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
        ngx_http_invoices_form_add(&form, "invoice", cr->invoice_id);
        ngx_http_invoices_form_add(&form, "amount", amount);
        ngx_http_invoices_form_add(&form, "currency", currency);
        ngx_http_invoices_form_add(&form, "description",
                                   ngx_http_invoices_json_str(item, "name"));
        ngx_http_invoices_form_add(&form,
                                   "metadata[" NGX_HTTP_INVOICES_LINE_KEY "]",
                                   index);

        (void) ngx_http_invoices_sprint(key, "%s:item:%uz", cr->stripe_key, i);

        v = ngx_http_invoices_create_call(job, cr, "POST", "/v1/invoiceitems",
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
                                    cr->invoice_id);
    (void) ngx_http_invoices_sprint(key, "%s:finalize", cr->stripe_key);

    invoice = ngx_http_invoices_create_call(job, cr, "POST", path, &form, key,
                                            "finalizing the invoice", sr);
    ngx_http_invoices_form_free(&form);

    if (invoice == NULL) {
        return NULL;
    }

    /* Step 4: the finalized invoice stored */

    if (ngx_http_invoices_create_store(job, invoice) != NGX_OK) {
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
    ngx_http_invoices_create_error(job, NGX_HTTP_BAD_GATEWAY,
                                   "stripe_bad_response",
                                   "Stripe's answer could not be read", NULL);
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
                                        cr->invoice_id,
                                        after[0] ? "&starting_after=" : "",
                                        after);

        list = ngx_http_invoices_create_call(job, cr, "GET", path, NULL, NULL,
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

    ngx_http_invoices_create_error(job, NGX_HTTP_BAD_GATEWAY,
                                   "stripe_bad_response",
                                   "Stripe's list of the invoice's lines "
                                   "could not be read", NULL);
    return NGX_ERROR;
}


/*
 * One Stripe step, with the lease renewed first: the parsed object of a
 * 2xx answer (sr keeps the bytes), or NULL with the job's answer set.
 */

static json_t *
ngx_http_invoices_create_call(ngx_http_invoices_job_t *job,
    ngx_http_invoices_create_t *cr, const char *method, const char *path,
    ngx_http_invoices_form_t *form, const char *key, const char *step,
    ngx_http_invoices_stripe_res_t *sr)
{
    json_t  *json;

    if (ngx_http_invoices_create_renew(job, cr) != NGX_OK) {
        ngx_memzero(sr, sizeof(ngx_http_invoices_stripe_res_t));
        return NULL;
    }

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
                                            &len, &final, job);

    if (final) {
        ngx_http_invoices_create_done(job, cr, status, body, len);
        return;
    }

    /*
     * A 400 that is not final failed Stripe's validation, and Stripe kept
     * nothing under its key: neither do we (ngx_http_invoices_stripe_error)
     */

    if (status == NGX_HTTP_BAD_REQUEST) {
        cr->forget = 1;
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
 * A final answer: kept with the caller's key for replays, under our fence
 * only; if another request took the key over meanwhile, its answer is
 * ours.  The answer stands even if keeping it fails: the invoice row is
 * stored already, and a retry finds the finished invoice in Stripe.
 */

static void
ngx_http_invoices_create_done(ngx_http_invoices_job_t *job,
    ngx_http_invoices_create_t *cr, ngx_uint_t status, char *body,
    size_t len)
{
    PGresult    *res;
    const char  *values[4];
    char         code[8];

    free(job->body);
    job->status = status;
    job->body = body;
    job->len = len;

    if (body == NULL) {
        return;
    }

    (void) ngx_http_invoices_sprint(code, "%ui", status);

    values[0] = cr->key;
    values[1] = code;
    values[2] = body;
    values[3] = cr->fence;

    res = ngx_http_invoices_pg_try(job,
              "UPDATE idempotency_keys SET state = 'done', "
              "response_status = $2, response_body = $3, lease_until = NULL, "
              "updated_at = now() "
              "WHERE key = $1 AND fence = $4 AND state = 'running'",
              4, values);
    if (res == NULL) {
        return;
    }

    if (ngx_strcmp(PQcmdTuples(res), "1") == 0) {
        cr->held = 0;

    } else {
        ngx_http_invoices_create_taken(job, cr);
    }

    PQclear(res);
}


/* a kept answer: the status, body and invoice id in columns col.. col+2 */

static void
ngx_http_invoices_create_replay(ngx_http_invoices_job_t *job,
    ngx_http_invoices_create_t *cr, PGresult *res, int col)
{
    free(job->body);

    cr->replayed = 1;
    job->status = ngx_atoi((u_char *) PQgetvalue(res, 0, col),
                           ngx_strlen(PQgetvalue(res, 0, col)));
    job->len = PQgetlength(res, 0, col + 1);
    job->body = malloc(job->len + 1);

    if (job->body) {
        ngx_memcpy(job->body, PQgetvalue(res, 0, col + 1), job->len + 1);
    }

    if (!PQgetisnull(res, 0, col + 2)) {
        ngx_cpystrn((u_char *) cr->invoice_id,
                    (u_char *) PQgetvalue(res, 0, col + 2),
                    sizeof(cr->invoice_id));
    }
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


