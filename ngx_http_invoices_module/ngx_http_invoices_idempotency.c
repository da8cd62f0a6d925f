
/*
 * A write that goes to Stripe under an Idempotency-Key: the create
 * (ngx_http_invoices_create.c) and the actions (ngx_http_invoices_action.c).
 *
 * The caller's key (or a random one) is a row in PostgreSQL that records
 * the outcome (invoices_idempotency_claim, migration 0004), held by a lease
 * while the request runs.  Each Stripe call carries a key derived from
 * the caller's and the request's fingerprint, so the same request under
 * the same key always maps to the same Stripe keys (a retry after a
 * timeout replays Stripe's answers instead of doing anything twice), and
 * a key released unused can serve a corrected request.
 *
 * The lease is renewed before every Stripe call, and every write to the
 * key names the fence the claim got: a request that stalled past its
 * lease (a stopped process, a cut network) and was taken over finds its
 * writes refused, and answers with the taker's result instead.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "ngx_http_invoices_module.h"
#include "ngx_http_invoices_idempotency.h"
#include "ngx_http_invoices_json.h"
#include "ngx_http_invoices_pg.h"
#include "ngx_http_invoices_request.h"


static ngx_int_t ngx_http_invoices_idem_renew(ngx_http_invoices_job_t *job,
    ngx_http_invoices_idem_t *idem);
static void ngx_http_invoices_idem_taken(ngx_http_invoices_job_t *job,
    ngx_http_invoices_idem_t *idem);
static void ngx_http_invoices_idem_stripe_error(ngx_http_invoices_job_t *job,
    ngx_http_invoices_idem_t *idem, ngx_http_invoices_stripe_res_t *sr,
    const char *step);
static void ngx_http_invoices_idem_replay(ngx_http_invoices_job_t *job,
    ngx_http_invoices_idem_t *idem, PGresult *res, int col);
static void ngx_http_invoices_idem_conflict(ngx_http_invoices_job_t *job,
    const char *code, const char *message);


/*
 * Event loop: the caller's Idempotency-Key, or a new random one; the
 * lease; Stripe's settings.  NGX_DECLINED for a key that is not
 * acceptable (the caller answers 400), NGX_ERROR.
 */

ngx_int_t
ngx_http_invoices_idem_init(ngx_http_request_t *r,
    ngx_http_invoices_loc_conf_t *ilcf, ngx_http_invoices_idem_t *idem,
    const char *what)
{
    u_char      *p;
    ngx_str_t   *key;
    ngx_msec_t   lease;
    ngx_uint_t   i, n;
    u_char       rnd[16];

    idem->what = what;

    key = ngx_http_invoices_header(r, "Idempotency-Key", &n);

    if (key == NULL) {
        if (RAND_bytes(rnd, sizeof(rnd)) != 1) {
            return NGX_ERROR;
        }

        p = ngx_cpymem(idem->key, "auto-", 5);
        p = ngx_hex_dump(p, rnd, sizeof(rnd));
        *p = '\0';

    } else {
        if (n > 1 || key->len == 0 || key->len > 255) {
            return NGX_DECLINED;
        }

        for (i = 0; i < key->len; i++) {
            if (key->data[i] < 0x20 || key->data[i] > 0x7e) {
                return NGX_DECLINED;
            }
        }

        *ngx_cpymem(idem->key, key->data, key->len) = '\0';
        idem->own = 1;
    }

    lease = ilcf->idempotency_lease;
    if (lease == 0) {
        /* the longest Stripe call and 10 s (ngx_http_invoices_module.c) */
        lease = ilcf->stripe_timeout * (ilcf->stripe_max_retries + 1)
                + 5000 * ilcf->stripe_max_retries + 10000;
    }

    (void) ngx_http_invoices_sprint(idem->lease, "%M", lease);
    ngx_http_invoices_stripe_conf(&idem->stripe, ilcf);

    return NGX_OK;
}


/* pool thread from here on */

/*
 * The request's fingerprint and the stem of the keys sent to Stripe: the
 * same request under the same key always maps to the same Stripe keys (a
 * key of 255 characters still fits).
 */

ngx_int_t
ngx_http_invoices_idem_prepare(ngx_http_invoices_job_t *job,
    ngx_http_invoices_idem_t *idem, const void *request, size_t len)
{
    u_char  *p;
    u_char   digest[32], seed[256 + 1 + 64];

    if (EVP_Digest(request, len, digest, NULL, EVP_sha256(), NULL) != 1) {
        goto failed;
    }

    *ngx_hex_dump((u_char *) idem->hash, digest, sizeof(digest)) = '\0';

    p = ngx_cpymem(seed, idem->key, ngx_strlen(idem->key));
    *p++ = ':';
    p = ngx_cpymem(p, idem->hash, 64);

    if (EVP_Digest(seed, p - seed, digest, NULL, EVP_sha256(), NULL) != 1) {
        goto failed;
    }

    p = ngx_cpymem(idem->stripe_key, "ngxinv-", 7);
    p = ngx_hex_dump(p, digest, 24);
    *p = '\0';

    return NGX_OK;

failed:

    ngx_http_invoices_job_fail(job, NGX_HTTP_INTERNAL_SERVER_ERROR,
                               "api_error", "internal_error",
                               "internal error");
    return NGX_ERROR;
}


/*
 * Takes the caller's key (invoices_idempotency_claim, migration 0004):
 * NGX_OK with the lease held (idem->invoice_id: the invoice an earlier
 * attempt recorded, if any), or NGX_DONE with the answer set (a replay, a
 * conflict, a database failure).
 */

ngx_int_t
ngx_http_invoices_idem_claim(ngx_http_invoices_job_t *job,
    ngx_http_invoices_idem_t *idem)
{
    PGresult    *res;
    const char  *values[3], *outcome;

    values[0] = idem->key;
    values[1] = idem->hash;
    values[2] = idem->lease;

    res = ngx_http_invoices_pg_query(job,
              "SELECT outcome, fence, response_status, response_body, "
              "stripe_invoice_id FROM invoices_idempotency_claim($1, $2, $3)",
              3, values);
    if (res == NULL) {
        return NGX_DONE;
    }

    outcome = PQgetvalue(res, 0, 0);

    if (ngx_strcmp(outcome, "claimed") == 0) {
        idem->held = 1;
        ngx_cpystrn((u_char *) idem->fence, (u_char *) PQgetvalue(res, 0, 1),
                    sizeof(idem->fence));

        /* an earlier attempt stopped half-way: its invoice */

        if (!PQgetisnull(res, 0, 4)) {
            ngx_cpystrn((u_char *) idem->invoice_id,
                        (u_char *) PQgetvalue(res, 0, 4),
                        sizeof(idem->invoice_id));
        }

        PQclear(res);
        return NGX_OK;
    }

    if (ngx_strcmp(outcome, "done") == 0) {
        ngx_http_invoices_idem_replay(job, idem, res, 2);
        PQclear(res);
        return NGX_DONE;
    }

    if (ngx_strcmp(outcome, "reused") == 0) {
        ngx_http_invoices_idem_conflict(job, "idempotency_key_reused",
            "this Idempotency-Key was used with a different request "
            "(another body, action or invoice)");

    } else {
        ngx_http_invoices_idem_conflict(job, "idempotency_key_in_use",
            "a request with this Idempotency-Key is still in progress; "
            "retry later");
    }

    PQclear(res);

    return NGX_DONE;
}


/*
 * The Stripe invoice the request works on, kept with the key at once,
 * under its fence: a retry goes on with it.  NGX_ERROR with the answer set
 * (the database failed, or the key was taken over).
 */

ngx_int_t
ngx_http_invoices_idem_invoice(ngx_http_invoices_job_t *job,
    ngx_http_invoices_idem_t *idem, const char *invoice_id)
{
    PGresult    *res;
    const char  *values[3];

    ngx_cpystrn((u_char *) idem->invoice_id, (u_char *) invoice_id,
                sizeof(idem->invoice_id));

    values[0] = idem->key;
    values[1] = idem->invoice_id;
    values[2] = idem->fence;

    res = ngx_http_invoices_pg_query(job,
              "UPDATE idempotency_keys SET stripe_invoice_id = $2, "
              "updated_at = now() "
              "WHERE key = $1 AND fence = $3 AND state = 'running'",
              3, values);
    if (res == NULL) {
        return NGX_ERROR;
    }

    if (ngx_strcmp(PQcmdTuples(res), "1") != 0) {
        PQclear(res);
        ngx_http_invoices_idem_taken(job, idem);
        return NGX_ERROR;
    }

    PQclear(res);

    return NGX_OK;
}


/*
 * One Stripe step, with the lease renewed first: the parsed object of a
 * 2xx answer (sr keeps the bytes), or NULL with the job's answer set
 * (Stripe's refusal mapped by ngx_http_invoices_stripe_error).
 */

json_t *
ngx_http_invoices_idem_call(ngx_http_invoices_job_t *job,
    ngx_http_invoices_idem_t *idem, const char *method, const char *path,
    ngx_http_invoices_form_t *form, const char *key, const char *step,
    ngx_http_invoices_stripe_res_t *sr)
{
    json_t  *json;

    if (ngx_http_invoices_idem_renew(job, idem) != NGX_OK) {
        ngx_memzero(sr, sizeof(ngx_http_invoices_stripe_res_t));
        return NULL;
    }

    ngx_http_invoices_stripe_request(&idem->stripe, method, path, form, key,
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
        ngx_http_invoices_job_fail(job, NGX_HTTP_BAD_GATEWAY, "api_error",
                                   "stripe_bad_response",
                                   "Stripe's answer could not be read");
        return NULL;
    }

    ngx_http_invoices_idem_stripe_error(job, idem, sr, step);
    ngx_http_invoices_stripe_res_free(sr);

    return NULL;
}


/*
 * Before each Stripe call: the lease runs for another invoices_idempotency_
 * lease.  NGX_ERROR with the answer set when the database failed, or when
 * another request took the key over (then its answer, if it has one).
 */

static ngx_int_t
ngx_http_invoices_idem_renew(ngx_http_invoices_job_t *job,
    ngx_http_invoices_idem_t *idem)
{
    PGresult    *res;
    const char  *values[3];

    values[0] = idem->key;
    values[1] = idem->fence;
    values[2] = idem->lease;

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
    ngx_http_invoices_idem_taken(job, idem);

    return NGX_ERROR;
}


/*
 * Our lease ran out and another request holds the key now: answer with
 * its result if it has finished, else 409; write nothing more.
 */

static void
ngx_http_invoices_idem_taken(ngx_http_invoices_job_t *job,
    ngx_http_invoices_idem_t *idem)
{
    u_char      *p;
    PGresult    *res;
    const char  *values[1];

    idem->held = 0;

    values[0] = idem->key;

    res = ngx_http_invoices_pg_query(job,
              "SELECT state, response_status, response_body, "
              "stripe_invoice_id FROM idempotency_keys WHERE key = $1",
              1, values);
    if (res == NULL) {
        return;
    }

    if (PQntuples(res) == 1 && ngx_strcmp(PQgetvalue(res, 0, 0), "done") == 0)
    {
        ngx_http_invoices_idem_replay(job, idem, res, 1);

    } else {
        ngx_http_invoices_idem_conflict(job, "idempotency_key_in_use",
            "another request with this Idempotency-Key took it over while "
            "this one was stalled; retry later");
    }

    PQclear(res);

    p = ngx_snprintf((u_char *) job->log, sizeof(job->log) - 1,
                     "%s stalled past its Idempotency-Key lease; another "
                     "request took the key over, so this one stopped and "
                     "answered %ui", idem->what, job->status);
    *p = '\0';
    job->log_level = NGX_LOG_WARN;
}


static void
ngx_http_invoices_idem_stripe_error(ngx_http_invoices_job_t *job,
    ngx_http_invoices_idem_t *idem, ngx_http_invoices_stripe_res_t *sr,
    const char *step)
{
    char        *body;
    size_t       len;
    ngx_uint_t   status, final;

    status = ngx_http_invoices_stripe_error(sr, step,
                                            idem->drafts ? idem->invoice_id
                                                         : NULL,
                                            &body, &len, &final, job);

    if (final) {
        ngx_http_invoices_idem_done(job, idem, status, body, len);
        return;
    }

    /*
     * A 400 that is not final failed Stripe's validation, and Stripe kept
     * nothing under its key: neither do we (ngx_http_invoices_stripe_error)
     */

    if (status == NGX_HTTP_BAD_REQUEST) {
        idem->forget = 1;
    }

    free(job->body);
    job->status = status;
    job->body = body;
    job->len = len;
}


/*
 * A final answer: kept with the caller's key for replays, under our fence
 * only; if another request took the key over meanwhile, its answer is
 * ours.  The answer stands even if keeping it fails: the invoice row is
 * stored already, and a retry finds the invoice's state in Stripe.
 */

void
ngx_http_invoices_idem_done(ngx_http_invoices_job_t *job,
    ngx_http_invoices_idem_t *idem, ngx_uint_t status, char *body,
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

    values[0] = idem->key;
    values[1] = code;
    values[2] = body;
    values[3] = idem->fence;

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
        idem->held = 0;

    } else {
        ngx_http_invoices_idem_taken(job, idem);
    }

    PQclear(res);
}


/*
 * The request ends unfinished (a failure a retry may mend): the key is
 * free at once.  Where nothing was done in Stripe under it ("forget"),
 * the key is dropped, so that it may be used again with another request.
 */

void
ngx_http_invoices_idem_release(ngx_http_invoices_job_t *job,
    ngx_http_invoices_idem_t *idem)
{
    PGresult    *res;
    const char  *values[2];

    values[0] = idem->key;
    values[1] = idem->fence;

    idem->held = 0;

    /*
     * A key that made a draft is kept: a retry with it finishes the draft.
     * An action's invoice is not the key's doing: a refusal Stripe kept
     * nothing of (a 400 of its validation) leaves nothing to finish, and
     * nobody can retry with a key the caller did not give.
     */

    if ((idem->forget || (!idem->drafts && !idem->own))
        && !(idem->drafts && idem->invoice_id[0] != '\0'))
    {
        res = ngx_http_invoices_pg_try(job,
                  idem->drafts
                  ? "DELETE FROM idempotency_keys WHERE key = $1 "
                    "AND fence = $2 AND state = 'running' "
                    "AND stripe_invoice_id IS NULL"
                  : "DELETE FROM idempotency_keys WHERE key = $1 "
                    "AND fence = $2 AND state = 'running'",
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


/* a kept answer: the status, body and invoice id in columns col.. col+2 */

static void
ngx_http_invoices_idem_replay(ngx_http_invoices_job_t *job,
    ngx_http_invoices_idem_t *idem, PGresult *res, int col)
{
    free(job->body);

    idem->replayed = 1;
    job->status = ngx_atoi((u_char *) PQgetvalue(res, 0, col),
                           ngx_strlen(PQgetvalue(res, 0, col)));
    job->len = PQgetlength(res, 0, col + 1);
    job->body = malloc(job->len + 1);

    if (job->body) {
        ngx_memcpy(job->body, PQgetvalue(res, 0, col + 1), job->len + 1);
    }

    if (!PQgetisnull(res, 0, col + 2)) {
        ngx_cpystrn((u_char *) idem->invoice_id,
                    (u_char *) PQgetvalue(res, 0, col + 2),
                    sizeof(idem->invoice_id));
    }
}


static void
ngx_http_invoices_idem_conflict(ngx_http_invoices_job_t *job,
    const char *code, const char *message)
{
    ngx_http_invoices_job_fail(job, NGX_HTTP_CONFLICT,
                               "invalid_request_error", code, message);
}
