
/*
 * Acting on an invoice: POST .../{id}/finalize, pay, send, void,
 * mark_uncollectible, and DELETE .../{id} (a draft).
 *
 * The event loop checks the headers (a body, if any, is JSON; the
 * Idempotency-Key) and reads the body; one job in the Stripe thread pool
 * does the rest, in this order:
 *
 *   1. the body (empty, or an object: pay's paymentMethod, no other key):
 *      bad input, answered before anything is written;
 *   2. the Idempotency-Key claimed (ngx_http_invoices_idempotency.c): a
 *      retry of a finished action replays its answer, whatever became of
 *      the invoice since; then the invoice's row (404, the key dropped);
 *   3. the row's status checked against Stripe's state graph: 409
 *      invoice_status_conflict and no Stripe call (the key is dropped: it
 *      may serve another request);
 *   4. the invoice kept with the key, Stripe's call under a key derived
 *      from the caller's, and Stripe's answer stored through the one
 *      forward-only write (invoices_apply, under the invoice's lock, as
 *      the webhook writes it), or for a DELETE the tombstone and the row
 *      gone (invoices_delete, migration 0010); the caches bumped before
 *      the answer;
 *   5. the audit record (ngx_http_invoices_history.c).
 *
 * The row's status is read before Stripe is called, so the check can be
 * overtaken by a webhook in between (Stripe collected the invoice a
 * moment ago): Stripe then refuses by its own graph, and its refusal is
 * passed on as for the create.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include <jansson.h>

#include "ngx_http_invoices_module.h"
#include "ngx_http_invoices_action.h"
#include "ngx_http_invoices_cache.h"
#include "ngx_http_invoices_history.h"
#include "ngx_http_invoices_idempotency.h"
#include "ngx_http_invoices_json.h"
#include "ngx_http_invoices_parse.h"
#include "ngx_http_invoices_pg.h"
#include "ngx_http_invoices_request.h"
#include "ngx_http_invoices_stripe.h"


typedef struct {
    const char   *name;          /* the route's, the audit's */
    const char   *method;        /* Stripe's */
    const char   *path;          /* Stripe's, after /v1/invoices/{id} */
    const char   *needs;         /* the statuses it starts from, " a b " */
    const char   *says;          /* for the 409 */
    const char   *step;          /* for Stripe's errors */
} ngx_http_invoices_action_def_t;


/* Stripe's state graph (docs/stripe.md, "What the actions do in Stripe") */
static ngx_http_invoices_action_def_t  ngx_http_invoices_actions[] = {
    { "finalize", "POST", "/finalize", " draft ", "a draft",
      "finalizing the invoice" },
    { "pay", "POST", "/pay", " open uncollectible ", "open or uncollectible",
      "paying the invoice" },
    { "send", "POST", "/send", " open ", "open", "sending the invoice" },
    { "void", "POST", "/void", " open uncollectible ",
      "open or uncollectible", "voiding the invoice" },
    { "mark_uncollectible", "POST", "/mark_uncollectible", " open ", "open",
      "marking the invoice uncollectible" },
    { "delete", "DELETE", "", " draft ", "a draft", "deleting the invoice" },
    { NULL, NULL, NULL, NULL, NULL, NULL }
};


typedef struct {
    /* in */
    ngx_http_invoices_action_def_t   *def;
    char                              id[256];        /* as given */
    ngx_uint_t                        by_stripe_id;
    u_char                           *body;
    size_t                            body_len;
    ngx_http_invoices_idem_t          idem;
    ngx_http_invoices_audit_t         audit;

    /* in the thread */
    char                              invoice[256];   /* Stripe's id */
    char                              status[16];     /* the row's */
    char                              payment_method[256];
    ngx_uint_t                        attempted;      /* went to Stripe */
    ngx_uint_t                        changed;        /* Stripe did it */
} ngx_http_invoices_action_t;


static void ngx_http_invoices_action_body(ngx_http_request_t *r);
static void ngx_http_invoices_action_run(ngx_http_invoices_job_t *job);
static ngx_int_t ngx_http_invoices_action_row(ngx_http_invoices_job_t *job,
    ngx_http_invoices_action_t *ac);
static void ngx_http_invoices_action_stripe(ngx_http_invoices_job_t *job,
    ngx_http_invoices_action_t *ac);
static ngx_int_t ngx_http_invoices_action_finish(ngx_http_request_t *r,
    ngx_http_invoices_job_t *job);


ngx_int_t
ngx_http_invoices_action_find(ngx_str_t *name)
{
    ngx_int_t  i;

    for (i = 0; ngx_http_invoices_actions[i].name; i++) {
        if (i != NGX_HTTP_INVOICES_ACTION_DELETE
            && name->len == ngx_strlen(ngx_http_invoices_actions[i].name)
            && ngx_strncmp(name->data, ngx_http_invoices_actions[i].name,
                           name->len)
               == 0)
        {
            return i;
        }
    }

    return -1;
}


/* event loop: the checks that need no body, then the body */

ngx_int_t
ngx_http_invoices_action(ngx_http_request_t *r,
    ngx_http_invoices_loc_conf_t *ilcf, ngx_str_t *id, ngx_int_t action)
{
    ngx_int_t                    rc, status;
    const char                  *code, *message, *param;
    ngx_http_invoices_ctx_t     *ctx;
    ngx_http_invoices_action_t  *ac;

    ac = ngx_pcalloc(r->pool, sizeof(ngx_http_invoices_action_t));
    ctx = ngx_http_invoices_ctx(r);

    if (ac == NULL || ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ac->def = &ngx_http_invoices_actions[action];

    code = NULL;
    message = NULL;
    param = NULL;
    rc = NGX_HTTP_BAD_REQUEST;

    if (ngx_http_invoices_stripe_id(id->data, id->len, "in_")) {
        ac->by_stripe_id = 1;

    } else if (!ngx_http_invoices_object_id(id->data, id->len)) {
        code = "parameter_invalid";
        message = "id must be an invoice _id (24 lowercase hex digits) or a "
                  "Stripe invoice id (in_...)";
        param = "id";
    }

    /* a body, if there is one, is JSON; no body needs no Content-Type */

    if (code == NULL
        && (r->headers_in.content_length_n > 0 || r->headers_in.chunked)
        && ngx_http_invoices_content_type_json(r) != NGX_OK)
    {
        rc = NGX_HTTP_UNSUPPORTED_MEDIA_TYPE;
        code = "content_type_unsupported";
        message = "a body must be JSON: Content-Type: application/json";
    }

    if (code == NULL) {
        switch (ngx_http_invoices_idem_init(r, ilcf, &ac->idem,
                                            ac->def->step))
        {
        case NGX_OK:
            break;

        case NGX_DECLINED:
            code = "parameter_invalid";
            message = NGX_HTTP_INVOICES_IDEM_INVALID;
            param = "Idempotency-Key";
            break;

        default:
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    if (code != NULL) {
        ngx_log_debug2(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                       "invoices action \"%s\": refused: %s",
                       ac->def->name, code);

        status = rc;

        rc = ngx_http_discard_request_body(r);
        if (rc != NGX_OK) {
            return rc;
        }

        return ngx_http_invoices_send_error(r, status,
                                            "invalid_request_error", code,
                                            message, param);
    }

    if (ngx_http_invoices_audit_init(r, &ac->audit) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    *ngx_cpymem(ac->id, id->data, id->len) = '\0';    /* checked above */

    ctx->data = ac;

    r->request_body_in_single_buf = 1;

    rc = ngx_http_read_client_request_body(r, ngx_http_invoices_action_body);

    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        return rc;
    }

    return NGX_DONE;
}


static void
ngx_http_invoices_action_body(ngx_http_request_t *r)
{
    ngx_str_t                      body;
    ngx_http_invoices_job_t       *job;
    ngx_http_invoices_ctx_t       *ctx;
    ngx_http_invoices_action_t    *ac;
    ngx_http_invoices_loc_conf_t  *ilcf;

    ilcf = ngx_http_get_module_loc_conf(r, ngx_http_invoices_module);
    ctx = ngx_http_get_module_ctx(r, ngx_http_invoices_module);
    ac = ctx->data;

    if (ngx_http_invoices_request_body(r, &body) != NGX_OK) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    ac->body = body.data;
    ac->body_len = body.len;

    job = ngx_http_invoices_job_create(r, ilcf);
    if (job == NULL) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    job->thread_pool = ilcf->stripe_thread_pool;
    job->run = ngx_http_invoices_action_run;
    job->finish = ngx_http_invoices_action_finish;
    job->data = ac;

    ngx_http_finalize_request(r, ngx_http_invoices_job_run(r, job));
}


/* pool thread from here on */

static void
ngx_http_invoices_action_run(ngx_http_invoices_job_t *job)
{
    u_char                          *fingerprint, *p;
    size_t                           len;
    ngx_int_t                        rc;
    ngx_http_invoices_invalid_t      invalid;
    ngx_http_invoices_action_t      *ac = job->data;

    /* 1. bad input changes nothing */

    if (ngx_http_invoices_parse_action(ac->body, ac->body_len,
                                       ngx_strcmp(ac->def->name, "pay") == 0,
                                       ac->payment_method,
                                       sizeof(ac->payment_method), &invalid)
        != NGX_OK)
    {
        ngx_http_invoices_job_refuse(job, NGX_HTTP_BAD_REQUEST,
                                       invalid.code, invalid.message,
                                       invalid.has_param ? invalid.param
                                                         : NULL);
        return;
    }

    /*
     * 2. the key: the request is the action, the invoice as named and the
     * body, so the same key may not void one invoice and then another; a
     * retry of a finished action replays its answer, even when the
     * invoice is gone since (a DELETE)
     */

    len = ngx_strlen(ac->def->name) + 1 + ngx_strlen(ac->id) + 1
          + ac->body_len;

    fingerprint = malloc(len);
    if (fingerprint == NULL) {
        ngx_http_invoices_job_fail(job, NGX_HTTP_INTERNAL_SERVER_ERROR,
                                   "api_error", "internal_error",
                                   "out of memory");
        return;
    }

    p = ngx_snprintf(fingerprint, len, "%s %s\n", ac->def->name, ac->id);

    if (ac->body_len) {
        ngx_memcpy(p, ac->body, ac->body_len);
    }

    rc = ngx_http_invoices_idem_prepare(job, &ac->idem, fingerprint, len);
    free(fingerprint);

    if (rc != NGX_OK
        || ngx_http_invoices_idem_claim(job, &ac->idem) != NGX_OK)
    {
        goto done;
    }

    /* the row: unknown is bad input, and the key is not used up */


    if (ngx_http_invoices_action_row(job, ac) != NGX_OK) {
        ac->idem.forget = 1;
        goto release;
    }

    /* 3. Stripe's state graph, on the row as it is now */

    p = (u_char *) ngx_strstr(ac->def->needs, ac->status);

    if (p == NULL || p[-1] != ' ' || p[ngx_strlen(ac->status)] != ' ') {
        u_char  message[192];

        *ngx_snprintf(message, sizeof(message) - 1,
                      "this invoice is %s; %s needs %s", ac->status,
                      ac->def->name, ac->def->says) = '\0';

        ngx_http_invoices_job_refuse(job, NGX_HTTP_CONFLICT,
                                       "invoice_status_conflict",
                                       (char *) message, NULL);

        /* nothing was asked of Stripe: the key is not used up */
        ac->idem.forget = 1;

    } else if (ngx_http_invoices_idem_invoice(job, &ac->idem, ac->invoice)
               == NGX_OK)
    {
        /* the invoice kept with the key: a replay's record names it */
        ac->attempted = 1;
        ngx_http_invoices_action_stripe(job, ac);
    }

release:

    /* not finished: a retry may go on at once, not after the lease */

    if (ac->idem.held) {
        ngx_http_invoices_idem_release(job, &ac->idem);
    }

done:

    if (ac->changed) {
        job->defer = ngx_http_invoices_cache_bump_for;
    }

    /* 5. an action that went to Stripe, and a replay of one */

    if (ac->attempted || ac->idem.replayed) {
        ngx_http_invoices_audit_record(job, &ac->audit, ac->def->name,
                                       ac->idem.invoice_id[0]
                                       ? ac->idem.invoice_id : NULL,
                                       ac->idem.own ? ac->idem.key : NULL,
                                       ac->idem.replayed, job->status);
    }
}


/* the invoice's Stripe id and status, or NGX_ERROR with a 404 (or 503) */

static ngx_int_t
ngx_http_invoices_action_row(ngx_http_invoices_job_t *job,
    ngx_http_invoices_action_t *ac)
{
    PGresult    *res;
    const char  *values[1];

    values[0] = ac->id;

    res = ngx_http_invoices_pg_query(job,
              ac->by_stripe_id
              ? "SELECT stripe_invoice_id, status FROM invoices "
                "WHERE stripe_invoice_id = $1"
              : "SELECT stripe_invoice_id, status FROM invoices "
                "WHERE id = $1",
              1, values);
    if (res == NULL) {
        return NGX_ERROR;
    }

    if (PQntuples(res) == 0) {
        PQclear(res);
        ngx_http_invoices_job_refuse(job, NGX_HTTP_NOT_FOUND,
                                       "resource_missing", "no such invoice",
                                       "id");
        return NGX_ERROR;
    }

    ngx_cpystrn((u_char *) ac->invoice, (u_char *) PQgetvalue(res, 0, 0),
                sizeof(ac->invoice));
    ngx_cpystrn((u_char *) ac->status, (u_char *) PQgetvalue(res, 0, 1),
                sizeof(ac->status));
    PQclear(res);

    return NGX_OK;
}


/* 4. Stripe's call, and its answer stored */

static void
ngx_http_invoices_action_stripe(ngx_http_invoices_job_t *job,
    ngx_http_invoices_action_t *ac)
{
    char                            *body;
    size_t                           len;
    json_t                          *answer, *deleted;
    PGresult                        *res;
    const char                      *values[1];
    char                             path[320], key[96];
    ngx_http_invoices_form_t         form, *f;
    ngx_http_invoices_stripe_res_t   sr;

    (void) ngx_http_invoices_sprint(path, "/v1/invoices/%s%s", ac->invoice,
                                    ac->def->path);
    (void) ngx_http_invoices_sprint(key, "%s:%s", ac->idem.stripe_key,
                                    ac->def->name);

    ngx_memzero(&form, sizeof(form));
    f = NULL;

    if (ac->payment_method[0]) {
        ngx_http_invoices_form_add(&form, "payment_method",
                                   ac->payment_method);
        f = &form;
    }

    answer = ngx_http_invoices_idem_call(job, &ac->idem, ac->def->method,
                                         path, f, key, ac->def->step, &sr);
    ngx_http_invoices_form_free(&form);

    if (answer == NULL) {
        return;
    }

    ac->changed = 1;

    if (ngx_strcmp(ac->def->method, "DELETE") != 0) {
        if (ngx_http_invoices_stripe_store_object(job, answer) != NGX_OK) {
            goto free;
        }

        /* Stripe's bytes, as Stripe sent them */

        json_decref(answer);
        body = sr.body;
        len = sr.len;
        sr.body = NULL;

        ngx_http_invoices_idem_done(job, &ac->idem, NGX_HTTP_OK, body, len);
        return;
    }

    /* a DELETE: Stripe answers {"id", "object", "deleted": true} */

    if (!json_is_true(json_object_get(answer, "deleted"))) {
        ngx_http_invoices_job_fail(job, NGX_HTTP_BAD_GATEWAY, "api_error",
                                   "stripe_bad_response",
                                   "Stripe's answer could not be read");
        goto free;
    }

    values[0] = ac->invoice;

    res = ngx_http_invoices_pg_query(job, "SELECT invoices_delete($1)", 1,
                                     values);
    if (res == NULL) {
        goto free;
    }

    PQclear(res);

    deleted = json_pack("{s:b,s:s}", "deleted", 1, "invoiceId", ac->invoice);
    body = ngx_http_invoices_json_dump(deleted, &len);
    json_decref(deleted);

    ngx_http_invoices_idem_done(job, &ac->idem, NGX_HTTP_OK, body, len);

    if (body == NULL) {
        ngx_http_invoices_job_fail(job, NGX_HTTP_INTERNAL_SERVER_ERROR,
                                   "api_error", "internal_error",
                                   "out of memory");
    }

free:

    json_decref(answer);
    ngx_http_invoices_stripe_res_free(&sr);
}


/* event loop: the answer, marked when it is a replay */

static ngx_int_t
ngx_http_invoices_action_finish(ngx_http_request_t *r,
    ngx_http_invoices_job_t *job)
{
    ngx_http_invoices_action_t  *ac = job->data;

    static ngx_str_t  replayed = ngx_string("Idempotent-Replayed");
    static ngx_str_t  yes = ngx_string("true");

    if (ac->idem.replayed
        && ngx_http_invoices_set_header(r, &replayed, &yes) != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_invoices_job_send(r, job);
}

