
/*
 * POST /stripe/webhook: Stripe's signed events keep PostgreSQL current.
 *
 * The signature is checked on the event loop over the exact raw body
 * (HMAC-SHA256 of "t.body" keyed with the whole whsec_ secret, every v1
 * tried against every configured secret, in constant time, |now - t|
 * within the tolerance); any failure is a 400 with nothing written and one
 * line at info saying why.  A verified event goes to the thread pool,
 * where one statement records its id and applies it (exactly once,
 * forward only: see migration 0002).  No Stripe call is made here.  If
 * the database cannot take the event the answer is 5xx, so Stripe retries.
 */


#include "ngx_http_invoices_module.h"
#include "ngx_http_invoices_json.h"
#include "ngx_http_invoices_pg.h"
#include "ngx_http_invoices_cache.h"
#include "ngx_http_invoices_request.h"
#include "ngx_http_invoices_stripe.h"
#include "ngx_http_invoices_webhook.h"
#include "ngx_http_invoices_parse.h"
#include "ngx_http_invoices_metrics.h"



typedef struct {
    u_char      *body;
    size_t       len;
    ngx_uint_t   result;            /* for the metrics, set in the thread */
} ngx_http_invoices_webhook_t;


static void ngx_http_invoices_webhook_body(ngx_http_request_t *r);
static const char *ngx_http_invoices_webhook_verify(ngx_http_request_t *r,
    ngx_http_invoices_loc_conf_t *ilcf, ngx_str_t *body);
static void ngx_http_invoices_webhook_run(ngx_http_invoices_job_t *job);
static ngx_int_t ngx_http_invoices_webhook_finish(ngx_http_request_t *r,
    ngx_http_invoices_job_t *job);


/* invoices_webhook_event()'s parameters: the event, the invoice, its details */
#define NGX_HTTP_INVOICES_EVENT_ARGS  (11 + NGX_HTTP_INVOICES_STRIPE_DETAILS)


/* the event types that describe an invoice (docs/stripe.md); others ignored */
static const char  *ngx_http_invoices_invoice_events[] = {
    "invoice.created", "invoice.finalized", "invoice.updated", "invoice.paid",
    "invoice.payment_succeeded", "invoice.payment_failed", "invoice.voided",
    "invoice.marked_uncollectible", "invoice.finalization_failed",
    "invoice.payment_action_required", "invoice.deleted", NULL
};


ngx_int_t
ngx_http_invoices_webhook_handler(ngx_http_request_t *r)
{
    ngx_int_t  rc;

    static ngx_str_t  allow = ngx_string("Allow");
    static ngx_str_t  post = ngx_string("POST");

    if (r->method != NGX_HTTP_POST) {
        rc = ngx_http_discard_request_body(r);
        if (rc != NGX_OK) {
            return rc;
        }

        if (ngx_http_invoices_set_header(r, &allow, &post) != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        return ngx_http_invoices_send_error(r, NGX_HTTP_NOT_ALLOWED,
                   "invalid_request_error", "method_not_allowed",
                   "Stripe events are POSTed here", NULL);
    }

    rc = ngx_http_read_client_request_body(r, ngx_http_invoices_webhook_body);

    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        return rc;
    }

    return NGX_DONE;
}


static void
ngx_http_invoices_webhook_body(ngx_http_request_t *r)
{
    ngx_str_t                      body;
    const char                    *why;
    ngx_http_invoices_job_t       *job;
    ngx_http_invoices_webhook_t   *wh;
    ngx_http_invoices_loc_conf_t  *ilcf;

    ilcf = ngx_http_get_module_loc_conf(r, ngx_http_invoices_module);

    if (ngx_http_invoices_request_body(r, &body) != NGX_OK) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    why = ngx_http_invoices_webhook_verify(r, ilcf, &body);

    if (why != NULL) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "invoices: webhook rejected: %s", why);

        ngx_http_invoices_metrics_webhook(NGX_HTTP_INVOICES_WEBHOOK_REJECTED);

        ngx_http_finalize_request(r,
            ngx_http_invoices_send_error(r, NGX_HTTP_BAD_REQUEST,
                                         "invalid_request_error",
                                         "signature_invalid", why, NULL));
        return;
    }

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "invoices webhook: signature valid, %uz bytes", body.len);

    wh = ngx_palloc(r->pool, sizeof(ngx_http_invoices_webhook_t));
    job = ngx_http_invoices_job_create(r, ilcf);

    if (wh == NULL || job == NULL) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    wh->body = body.data;
    wh->len = body.len;
    wh->result = NGX_HTTP_INVOICES_WEBHOOK_N;

    job->run = ngx_http_invoices_webhook_run;
    job->finish = ngx_http_invoices_webhook_finish;
    job->data = wh;

    ngx_http_finalize_request(r, ngx_http_invoices_job_run(r, job));
}


/* NULL when the event is Stripe's, else why not (for the log, no secret) */

static const char *
ngx_http_invoices_webhook_verify(ngx_http_request_t *r,
    ngx_http_invoices_loc_conf_t *ilcf, ngx_str_t *body)
{
    ngx_str_t   *header;
    ngx_uint_t   n;

    header = ngx_http_invoices_header(r, "Stripe-Signature", &n);

    if (header == NULL) {
        return "no Stripe-Signature header";
    }

    if (n > 1) {
        return "more than one Stripe-Signature header";
    }

    return ngx_http_invoices_parse_signature(header, body,
                                             ilcf->webhook_secrets->elts,
                                             ilcf->webhook_secrets->nelts,
                                             ngx_time(),
                                             ilcf->webhook_tolerance);
}


/* pool thread: the event, recorded and applied in one statement */

static void
ngx_http_invoices_webhook_run(ngx_http_invoices_job_t *job)
{
    char                          result[16];
    json_t                       *event, *answer;
    ngx_int_t                     rc;
    const char                   *invalid;
    ngx_http_invoices_webhook_t  *wh = job->data;

    /* a key given twice is ambiguous: Stripe never sends one */

    event = json_loadb((const char *) wh->body, wh->len,
                       JSON_REJECT_DUPLICATES, NULL);

    rc = ngx_http_invoices_webhook_apply(job, event, result, sizeof(result),
                                         &invalid);
    json_decref(event);

    if (rc == NGX_DECLINED) {
        wh->result = NGX_HTTP_INVOICES_WEBHOOK_REJECTED;
        ngx_http_invoices_job_refuse(job, NGX_HTTP_BAD_REQUEST,
                                     "event_invalid", invalid, NULL);
        return;
    }

    if (rc != NGX_OK) {
        return;
    }

    if (ngx_http_invoices_webhook_changed(result)) {
        /* the answer waits for the cache's bump (ngx_http_invoices_job.c) */
        job->defer = ngx_http_invoices_cache_bump_for;
    }

    wh->result = ngx_http_invoices_metrics_webhook_result(result);

    answer = json_pack("{s:b,s:s}", "received", 1, "result", result);

    free(job->body);
    job->body = ngx_http_invoices_json_dump(answer, &job->len);
    job->status = job->body ? NGX_HTTP_OK : 0;
    json_decref(answer);
}


/*
 * Pool threads: one Stripe event (the webhook's, or one the reconciler
 * pulled: ngx_http_invoices_housekeeping.c) recorded and applied in one
 * statement, exactly once by its id, forward only (migrations 0002 to
 * 0010).  NGX_OK with invoices_webhook_event()'s result; NGX_DECLINED
 * when it is not a Stripe event ("invalid" says why); NGX_ERROR with the
 * job failed when the database did.
 */

ngx_int_t
ngx_http_invoices_webhook_apply(ngx_http_invoices_job_t *job, json_t *event,
    char *result, size_t size, const char **invalid)
{
    json_t                              *object, *created;
    PGresult                            *res;
    ngx_uint_t                           i;
    char                                 stamp[24];
    const char                          *id, *type;
    const char                          *values[NGX_HTTP_INVOICES_EVENT_ARGS];
    ngx_http_invoices_stripe_invoice_t   inv;

    id = json_string_value(json_object_get(event, "id"));
    type = json_string_value(json_object_get(event, "type"));
    created = json_object_get(event, "created");

    object = json_object_get(json_object_get(event, "data"), "object");

    /*
     * every Stripe event carries its object in data.object; a "created"
     * out of range would fail in PostgreSQL as a 500, and Stripe would
     * retry it for days
     */

    if (id == NULL || type == NULL || !json_is_integer(created)
        || !ngx_http_invoices_stripe_time(json_integer_value(created))
        || !json_is_object(object)
        || !ngx_http_invoices_stripe_id((u_char *) id, ngx_strlen(id), "evt_")
        || ngx_strlen(type) > 255)
    {
        *invalid = "the body is not a Stripe event";
        return NGX_DECLINED;
    }

    (void) ngx_http_invoices_sprint(stamp,
                                    "%L",
                                    (int64_t) json_integer_value(created));

    values[0] = id;
    values[1] = type;
    values[2] = stamp;

    for (i = 3; i < NGX_HTTP_INVOICES_EVENT_ARGS; i++) {
        values[i] = NULL;
    }

    for (i = 0; ngx_http_invoices_invoice_events[i]; i++) {
        if (ngx_strcmp(type, ngx_http_invoices_invoice_events[i]) == 0) {
            break;
        }
    }

    if (ngx_http_invoices_invoice_events[i] != NULL) {

        if (ngx_http_invoices_stripe_invoice(object, &inv) != NGX_OK) {
            *invalid = "the event's invoice could not be read";
            return NGX_DECLINED;
        }

        values[3] = inv.id;
        values[4] = inv.customer;
        values[5] = inv.status;
        values[6] = inv.amount;
        values[7] = inv.currency;
        values[8] = inv.invoice_pdf;
        values[9] = inv.created;
        values[10] = inv.transition_at;

        ngx_http_invoices_stripe_details(&inv, &values[11]);
    }

    res = ngx_http_invoices_pg_query(job,
              "SELECT invoices_webhook_event($1, $2, $3, $4, $5, $6, $7, $8, "
              "$9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, "
              "$21, $22)",
              NGX_HTTP_INVOICES_EVENT_ARGS, values);

    if (res == NULL) {
        return NGX_ERROR;
    }

    ngx_cpystrn((u_char *) result, (u_char *) PQgetvalue(res, 0, 0), size);
    PQclear(res);

    return NGX_OK;
}


/* a result that changed a row: the caches must hear of it */

ngx_uint_t
ngx_http_invoices_webhook_changed(const char *result)
{
    return ngx_strcmp(result, "inserted") == 0
           || ngx_strcmp(result, "updated") == 0
           || ngx_strcmp(result, "deleted") == 0;
}


/* event loop: the thread's result counted, then the answer */

static ngx_int_t
ngx_http_invoices_webhook_finish(ngx_http_request_t *r,
    ngx_http_invoices_job_t *job)
{
    ngx_http_invoices_webhook_t  *wh = job->data;

    ngx_http_invoices_metrics_webhook(wh->result);

    return ngx_http_invoices_job_send(r, job);
}
