
/*
 * An invoice's history (migration 0010).
 *
 * The audit record: every admin create and action that went to Stripe,
 * and every replay of one, is written in the pool thread that ran it once
 * its answer is known: the name of the key that asked (never the key),
 * the action, the Stripe invoice, the caller's Idempotency-Key, whether
 * the answer was a replay, the HTTP status, and when the request came.
 * Bad input (a body, a customer, a key in use, a status the action
 * cannot start from) is answered before and changes nothing, so it is not
 * recorded.  It is its own statement after the work: if
 * PostgreSQL fails just then, the answer still goes out and the lost
 * record is logged at "error" (the invoice itself is in Stripe and in our
 * row either way).
 *
 * GET .../{id}/events: the webhook events seen for the invoice and its
 * audit records, merged oldest first (by when we received or were asked),
 * at most NGX_HTTP_INVOICES_HISTORY_MAX, "has_more" when there are more.
 * By Stripe id it answers for an invoice deleted since (its history
 * outlives the row); an invoice we never heard of is a 404.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include <jansson.h>

#include "ngx_http_invoices_module.h"
#include "ngx_http_invoices_history.h"
#include "ngx_http_invoices_json.h"
#include "ngx_http_invoices_pg.h"
#include "ngx_http_invoices_row.h"
#include "ngx_http_invoices_request.h"
#include "ngx_http_invoices_parse.h"


#define NGX_HTTP_INVOICES_HISTORY_MAX  1000


typedef struct {
    char          id[256];
    ngx_uint_t    by_stripe_id;
} ngx_http_invoices_history_t;


static void ngx_http_invoices_history_run(ngx_http_invoices_job_t *job);
static json_t *ngx_http_invoices_history_entry(PGresult *res, int row);


/*
 * %s: the Stripe invoice id, given or found by _id.  Columns: the id, its
 * row exists, then per entry: 0 a Stripe event or 1 an admin record,
 * when, its id, type or action, Stripe's created, changed, key name,
 * status, Idempotency-Key, replayed.
 */
#define NGX_HTTP_INVOICES_HISTORY_SQL(invoice)                                \
    "WITH s AS (SELECT " invoice " AS id) "                                   \
    "SELECT s.id, EXISTS (SELECT 1 FROM invoices i"                           \
    " WHERE i.stripe_invoice_id = s.id) AS known, h.src, "                    \
    NGX_HTTP_INVOICES_TIME("h.at") ", h.ref, h.what, "                        \
    NGX_HTTP_INVOICES_TIME("h.created") ", h.changed, h.key_name, h.status, " \
    "h.idem, h.replayed "                                                     \
    "FROM s LEFT JOIN LATERAL ("                                              \
    "SELECT * FROM ("                                                         \
    "SELECT 0 AS src, e.received_at AS at, 0::bigint AS tie, e.id AS ref,"    \
    " e.type AS what, e.stripe_created_at AS created, e.changed,"             \
    " NULL::text AS key_name, NULL::integer AS status, NULL::text AS idem,"   \
    " NULL::boolean AS replayed "                                             \
    "FROM webhook_events e WHERE e.stripe_invoice_id = s.id "                 \
    "UNION ALL "                                                              \
    "SELECT 1, a.at, a.id, a.id::text, a.action, NULL, NULL, a.key_name,"     \
    " a.status, a.idempotency_key, a.replayed "                               \
    "FROM invoice_actions a WHERE a.stripe_invoice_id = s.id"                 \
    ") u ORDER BY u.at, u.src, u.tie, u.ref LIMIT 1001) h ON true "           \
    "ORDER BY h.at, h.src, h.tie, h.ref"

static const char  ngx_http_invoices_history_sql[] =
    NGX_HTTP_INVOICES_HISTORY_SQL(
        "(SELECT stripe_invoice_id FROM invoices WHERE id = $1)");

static const char  ngx_http_invoices_history_stripe_sql[] =
    NGX_HTTP_INVOICES_HISTORY_SQL("$1::text");


/* event loop: what the record needs from the request */

ngx_int_t
ngx_http_invoices_audit_init(ngx_http_request_t *r,
    ngx_http_invoices_audit_t *audit)
{
    ngx_http_invoices_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_invoices_module);

    if (ctx == NULL || ctx->key == NULL
        || ctx->key->name.len >= sizeof(audit->key_name))
    {
        return NGX_ERROR;
    }

    *ngx_cpymem(audit->key_name, ctx->key->name.data, ctx->key->name.len)
        = '\0';

    (void) ngx_http_invoices_sprint(audit->at, "%T%03M", r->start_sec,
                                    r->start_msec);

    return NGX_OK;
}


/* pool thread */

void
ngx_http_invoices_audit_record(ngx_http_invoices_job_t *job,
    ngx_http_invoices_audit_t *audit, const char *action,
    const char *stripe_invoice_id, const char *idempotency_key,
    ngx_uint_t replayed, ngx_uint_t status)
{
    u_char      *p;
    PGresult    *res;
    const char  *values[7];
    char         code[NGX_INT_T_LEN + 1];
    char         cause[sizeof(job->log)];

    (void) ngx_http_invoices_sprint(code, "%ui", status);

    values[0] = audit->at;
    values[1] = audit->key_name;
    values[2] = action;
    values[3] = stripe_invoice_id;
    values[4] = idempotency_key;
    values[5] = replayed ? "true" : "false";
    values[6] = code;

    res = ngx_http_invoices_pg_try(job,
              "INSERT INTO invoice_actions (at, key_name, action,"
              " stripe_invoice_id, idempotency_key, replayed, status) "
              "VALUES (to_timestamp($1::bigint / 1000.0), $2, $3, $4, $5,"
              " $6, $7)",
              7, values);

    if (res != NULL) {
        PQclear(res);
        return;
    }

    /*
     * The statement's own error is in job->log (ngx_http_invoices_pg_note):
     * say what it cost, then the error, at the error level (a Stripe
     * warning before it gives way), and count it as a failed statement
     */

    ngx_cpystrn((u_char *) cause, (u_char *) job->log, sizeof(cause));

    p = ngx_snprintf((u_char *) job->log, sizeof(job->log) - 1,
                     "the audit record of a %s by \"%s\" (status %ui) was"
                     " not written: %s", action, audit->key_name, status,
                     cause);
    *p = '\0';

    job->log_level = 0;
    job->metrics.pg_error = 1;
}


/* event loop: GET .../{id}/events */

ngx_int_t
ngx_http_invoices_history(ngx_http_request_t *r,
    ngx_http_invoices_loc_conf_t *ilcf, ngx_str_t *id)
{
    ngx_http_invoices_job_t      *job;
    ngx_http_invoices_history_t  *hs;

    hs = ngx_pcalloc(r->pool, sizeof(ngx_http_invoices_history_t));
    if (hs == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (ngx_http_invoices_stripe_id(id->data, id->len, "in_")) {
        hs->by_stripe_id = 1;

    } else if (!ngx_http_invoices_object_id(id->data, id->len)) {
        return ngx_http_invoices_send_error(r, NGX_HTTP_BAD_REQUEST,
                   "invalid_request_error", "parameter_invalid",
                   "id must be an invoice _id (24 lowercase hex digits) "
                   "or a Stripe invoice id (in_...)", "id");
    }

    if (id->len >= sizeof(hs->id)) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;    /* checked above */
    }

    *ngx_cpymem(hs->id, id->data, id->len) = '\0';

    job = ngx_http_invoices_job_create(r, ilcf);
    if (job == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    job->run = ngx_http_invoices_history_run;
    job->data = hs;

    return ngx_http_invoices_job_run(r, job);
}


/* pool thread */

static void
ngx_http_invoices_history_run(ngx_http_invoices_job_t *job)
{
    int                           row, rows;
    char                         *body;
    size_t                        len;
    json_t                       *events, *e, *json;
    PGresult                     *res;
    const char                   *values[1];
    ngx_http_invoices_history_t  *hs = job->data;

    values[0] = hs->id;

    res = ngx_http_invoices_pg_query(job,
                                     hs->by_stripe_id
                                     ? ngx_http_invoices_history_stripe_sql
                                     : ngx_http_invoices_history_sql,
                                     1, values);
    if (res == NULL) {
        return;
    }

    rows = PQntuples(res);

    /* no such row by _id; by Stripe id, no row and nothing ever seen */

    if (rows == 0 || PQgetisnull(res, 0, 0)
        || (PQgetvalue(res, 0, 1)[0] != 't' && PQgetisnull(res, 0, 2)))
    {
        PQclear(res);
        ngx_http_invoices_job_refuse(job, NGX_HTTP_NOT_FOUND,
                                     "resource_missing", "no such invoice",
                                     "id");
        return;
    }

    events = json_array();

    for (row = 0;
         events != NULL && row < rows && row < NGX_HTTP_INVOICES_HISTORY_MAX
         && !PQgetisnull(res, row, 2);
         row++)
    {
        e = ngx_http_invoices_history_entry(res, row);

        if (json_array_append_new(events, e) != 0) {
            json_decref(events);
            events = NULL;
        }
    }

    json = json_pack("{s:s,s:o,s:b}",
                     "invoiceId", PQgetvalue(res, 0, 0),
                     "events", events,
                     "has_more", rows > NGX_HTTP_INVOICES_HISTORY_MAX);
    PQclear(res);

    body = ngx_http_invoices_json_dump(json, &len);
    json_decref(json);

    if (body == NULL) {
        ngx_http_invoices_job_fail(job, NGX_HTTP_INTERNAL_SERVER_ERROR,
                                   "api_error", "internal_error",
                                   "internal error");
        return;
    }

    free(job->body);
    job->status = NGX_HTTP_OK;
    job->body = body;
    job->len = len;
}


/* one entry; NULL (which fails the whole answer) when out of memory */

static json_t *
ngx_http_invoices_history_entry(PGresult *res, int row)
{
    if (PQgetvalue(res, row, 2)[0] == '0') {
        return json_pack("{s:s,s:s,s:s,s:s,s:s?,s:b}",
                         "source", "stripe",
                         "at", PQgetvalue(res, row, 3),
                         "id", PQgetvalue(res, row, 4),
                         "type", PQgetvalue(res, row, 5),
                         "created", PQgetisnull(res, row, 6)
                                    ? NULL : PQgetvalue(res, row, 6),
                         "changed", PQgetvalue(res, row, 7)[0] == 't');
    }

    return json_pack("{s:s,s:s,s:s,s:s,s:I,s:s?,s:b}",
                     "source", "admin",
                     "at", PQgetvalue(res, row, 3),
                     "action", PQgetvalue(res, row, 5),
                     "keyName", PQgetvalue(res, row, 8),
                     "status", (json_int_t) atoi(PQgetvalue(res, row, 9)),
                     "idempotencyKey", PQgetisnull(res, row, 10)
                                       ? NULL : PQgetvalue(res, row, 10),
                     "replayed", PQgetvalue(res, row, 11)[0] == 't');
}
