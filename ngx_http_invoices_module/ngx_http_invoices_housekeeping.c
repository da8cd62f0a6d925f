
/*
 * The background work: worker 0 of each node ticks a timer, and each tick
 * posts one pass to a thread pool, never blocking the event loop.  A pass
 * does each task whose lease this node holds (migration 0011: taken when
 * free or run out, renewed by every pass, so a node that dies hands over
 * within three ticks):
 *
 * The pruning (every node may hold it, one at a time): webhook event ids
 * and tombstones older than invoices_event_retention, finished
 * Idempotency-Keys older than invoices_idempotency_retention, deleted a
 * small batch a statement (each its own short transaction: no long lock),
 * at most NGX_HTTP_INVOICES_PRUNE_BATCHES batches a table a pass.  Under
 * the same lease, the trigrams of q's fields are sampled again when their
 * sample is over an hour old or the table has doubled or halved since
 * (migrations 0013, 0014).
 *
 * The reconciler (invoices_reconcile <interval>): Stripe's invoice events
 * since the watermark, less an overlap (an event may show in Stripe's list
 * a little after a later one), page by page (newest first, starting_after),
 * each one not seen yet applied through the webhook's own statement
 * (ngx_http_invoices_webhook_apply: exactly once by its id, forward only).
 * A sweep longer than NGX_HTTP_INVOICES_RECONCILE_PAGES pages goes on at
 * the next pass from where it stopped; the watermark moves on only when a
 * sweep is complete.  The first sweep looks back
 * NGX_HTTP_INVOICES_RECONCILE_FIRST (Stripe retries a delivery for three
 * days).
 *
 * What a pass saw is counted and logged back on the event loop: events
 * pulled and applied, rows pruned, a lease taken over, a failure; a pass
 * that changed rows bumps the caches.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include <jansson.h>

#include "ngx_http_invoices_module.h"
#include "ngx_http_invoices_housekeeping.h"
#include "ngx_http_invoices_cache.h"
#include "ngx_http_invoices_job.h"
#include "ngx_http_invoices_json.h"
#include "ngx_http_invoices_metrics.h"
#include "ngx_http_invoices_parse.h"
#include "ngx_http_invoices_pg.h"
#include "ngx_http_invoices_stripe.h"
#include "ngx_http_invoices_webhook.h"


#define NGX_HTTP_INVOICES_HOUSEKEEPING_TICK   60000   /* ms, at most */
#define NGX_HTTP_INVOICES_PRUNE_BATCH         "1000"
#define NGX_HTTP_INVOICES_PRUNE_BATCHES       20
#define NGX_HTTP_INVOICES_RECONCILE_PAGES     100     /* of 100 events */
#define NGX_HTTP_INVOICES_RECONCILE_OVERLAP   600     /* s */
#define NGX_HTTP_INVOICES_RECONCILE_FIRST     (3 * 86400)


typedef struct {
    ngx_http_invoices_loc_conf_t     *conf;
    ngx_msec_t                        tick;
    ngx_http_invoices_job_t          *job;         /* posted every tick */
    ngx_event_t                       timer;
    char                              holder[128];
    char                              lease[NGX_INT_T_LEN + 1];  /* ms */
    ngx_http_invoices_stripe_conf_t   stripe;

    /* a pass: set in the thread, read on the event loop when it is done */
    ngx_uint_t                        pulled;
    ngx_uint_t                        applied;
    ngx_uint_t                        changed;
    ngx_uint_t                        pruned[NGX_HTTP_INVOICES_PRUNED_N];
    ngx_uint_t                        took;        /* the reconciler's lease
                                                      is new to this node */
    char                              previous[128];
    char                              error[256];
} ngx_http_invoices_housekeeping_t;


static void ngx_http_invoices_housekeeping_tick(ngx_event_t *ev);
static void ngx_http_invoices_housekeeping_run(ngx_http_invoices_job_t *job);
static void ngx_http_invoices_housekeeping_done(ngx_http_invoices_job_t *job);
static ngx_int_t ngx_http_invoices_housekeeping_lease(
    ngx_http_invoices_housekeeping_t *hk, const char *task, PGresult **res);
static void ngx_http_invoices_housekeeping_prune(
    ngx_http_invoices_housekeeping_t *hk);
static void ngx_http_invoices_housekeeping_reconcile(
    ngx_http_invoices_housekeeping_t *hk);
static ngx_int_t ngx_http_invoices_housekeeping_page(
    ngx_http_invoices_housekeeping_t *hk, json_t *data, int64_t *newest);
static void ngx_http_invoices_housekeeping_fail(
    ngx_http_invoices_housekeeping_t *hk, const char *what);


/* the statements of the pruning: $1 the retention in seconds */
static const char  *ngx_http_invoices_prune_sql[NGX_HTTP_INVOICES_PRUNED_N] = {

    "DELETE FROM webhook_events WHERE id IN (SELECT id FROM webhook_events"
    " WHERE received_at < now() - $1::bigint * interval '1 second'"
    " LIMIT " NGX_HTTP_INVOICES_PRUNE_BATCH ")",

    "DELETE FROM invoices_deleted WHERE stripe_invoice_id IN"
    " (SELECT stripe_invoice_id FROM invoices_deleted"
    " WHERE deleted_at < now() - $1::bigint * interval '1 second'"
    " ORDER BY deleted_at LIMIT " NGX_HTTP_INVOICES_PRUNE_BATCH ")",

    "DELETE FROM idempotency_keys WHERE key IN (SELECT key"
    " FROM idempotency_keys WHERE state = 'done'"
    " AND updated_at < now() - $1::bigint * interval '1 second'"
    " ORDER BY updated_at LIMIT " NGX_HTTP_INVOICES_PRUNE_BATCH ")"
};


/* worker 0 of a node with an invoices_admin location starts ticking */

ngx_int_t
ngx_http_invoices_housekeeping_init(ngx_cycle_t *cycle)
{
    ngx_http_invoices_main_conf_t     *imcf;
    ngx_http_invoices_loc_conf_t      *conf;
    ngx_http_invoices_housekeeping_t  *hk;

    if ((ngx_process != NGX_PROCESS_WORKER
         && ngx_process != NGX_PROCESS_SINGLE)
        || ngx_worker != 0)
    {
        return NGX_OK;
    }

    imcf = ngx_http_cycle_get_module_main_conf(cycle,
                                               ngx_http_invoices_module);

    if (imcf == NULL || imcf->housekeeping == NULL) {
        return NGX_OK;
    }

    conf = imcf->housekeeping;

    hk = ngx_pcalloc(cycle->pool, sizeof(ngx_http_invoices_housekeeping_t));
    if (hk == NULL) {
        return NGX_ERROR;
    }

    hk->job = ngx_http_invoices_job_background(cycle->pool, cycle->log);
    if (hk->job == NULL) {
        return NGX_ERROR;
    }

    hk->conf = conf;
    hk->job->conninfo = (const char *) conf->database.data;
    hk->job->run = ngx_http_invoices_housekeeping_run;
    hk->job->done = ngx_http_invoices_housekeeping_done;
    hk->job->data = hk;

    hk->tick = NGX_HTTP_INVOICES_HOUSEKEEPING_TICK;

    if (conf->reconcile) {
        hk->tick = ngx_min(conf->reconcile, hk->tick);
        hk->job->thread_pool = conf->stripe_thread_pool;
        ngx_http_invoices_stripe_conf(&hk->stripe, conf);

    } else {
        hk->job->thread_pool = conf->thread_pool;
    }

    (void) ngx_http_invoices_sprint(hk->lease, "%M", 3 * hk->tick);
    (void) ngx_http_invoices_sprint(hk->holder, "%V %P", &cycle->hostname,
                                    ngx_pid);

    hk->timer.handler = ngx_http_invoices_housekeeping_tick;
    hk->timer.data = hk;
    hk->timer.log = cycle->log;
    hk->timer.cancelable = 1;

    /* nodes started together do not all tick at once */
    ngx_add_timer(&hk->timer, 1000 + ngx_random() % hk->tick);

    return NGX_OK;
}


static void
ngx_http_invoices_housekeeping_tick(ngx_event_t *ev)
{
    ngx_http_invoices_housekeeping_t  *hk = ev->data;

    if (ngx_exiting || ngx_terminate || ngx_quit) {
        return;
    }

    hk->pulled = 0;
    hk->applied = 0;
    hk->changed = 0;
    ngx_memzero(hk->pruned, sizeof(hk->pruned));
    hk->took = 0;
    hk->previous[0] = '\0';
    hk->error[0] = '\0';

    if (ngx_http_invoices_job_post_background(hk->job) != NGX_OK) {
        /* the pool's queue is full: the next tick tries again */
        ngx_add_timer(&hk->timer, hk->tick);
    }
}


/* pool thread */

static void
ngx_http_invoices_housekeeping_run(ngx_http_invoices_job_t *job)
{
    ngx_http_invoices_housekeeping_t  *hk = job->data;

    ngx_http_invoices_housekeeping_prune(hk);

    if (hk->conf->reconcile) {
        ngx_http_invoices_housekeeping_reconcile(hk);
    }

    job->status = NGX_HTTP_OK;         /* the pass ran (what failed: error) */
}


/* event loop: what the pass saw, counted and logged; the next tick */

static void
ngx_http_invoices_housekeeping_done(ngx_http_invoices_job_t *job)
{
    ngx_log_t                         *log;
    ngx_http_invoices_housekeeping_t  *hk = job->data;

    log = hk->timer.log;

    ngx_http_invoices_metrics_housekeeping(hk->pulled, hk->applied,
                                           hk->pruned);

    if (hk->took) {
        ngx_log_error(NGX_LOG_WARN, log, 0,
                      "invoices: the reconciler runs on this node now "
                      "(\"%s\"; before: \"%s\")", hk->holder,
                      hk->previous[0] ? hk->previous : "none");
    }

    if (hk->error[0]) {
        ngx_log_error(NGX_LOG_ERR, log, 0,
                      "invoices: the background work failed: %s", hk->error);
    }

    if (hk->applied || hk->pruned[0] || hk->pruned[1] || hk->pruned[2]) {
        ngx_log_error(NGX_LOG_INFO, log, 0,
                      "invoices: background work: %ui Stripe events pulled, "
                      "%ui applied; pruned %ui event ids, %ui tombstones, "
                      "%ui idempotency keys", hk->pulled, hk->applied,
                      hk->pruned[0], hk->pruned[1], hk->pruned[2]);
    }

    if (hk->changed) {
        ngx_http_invoices_cache_bump();
    }

    if (!ngx_exiting && !ngx_terminate && !ngx_quit) {
        ngx_add_timer(&hk->timer, hk->tick);
    }
}


/*
 * The lease of a task for three ticks more: NGX_OK with its row (the
 * holder before, the reconciler's state) in *res, NGX_DECLINED when
 * another node holds it, NGX_ERROR when the database failed.
 */

static ngx_int_t
ngx_http_invoices_housekeeping_lease(ngx_http_invoices_housekeeping_t *hk,
    const char *task, PGresult **res)
{
    const char  *values[3];

    values[0] = task;
    values[1] = hk->holder;
    values[2] = hk->lease;

    *res = ngx_http_invoices_pg_query(hk->job,
               "SELECT previous, watermark, resume_after, resume_newest "
               "FROM invoices_lease_take($1, $2, $3)", 3, values);

    if (*res == NULL) {
        ngx_http_invoices_housekeeping_fail(hk, "taking a lease");
        return NGX_ERROR;
    }

    if (PQntuples(*res) == 0) {
        PQclear(*res);
        *res = NULL;
        return NGX_DECLINED;
    }

    return NGX_OK;
}


static void
ngx_http_invoices_housekeeping_prune(ngx_http_invoices_housekeeping_t *hk)
{
    PGresult    *res;
    ngx_int_t    n;
    ngx_uint_t   t, batch;
    const char  *values[1];
    char         events[NGX_INT_T_LEN + 1], keys[NGX_INT_T_LEN + 1];

    if (ngx_http_invoices_housekeeping_lease(hk, "prune", &res) != NGX_OK) {
        return;
    }

    PQclear(res);

    (void) ngx_http_invoices_sprint(events, "%T", hk->conf->event_retention);
    (void) ngx_http_invoices_sprint(keys, "%T",
                                    hk->conf->idempotency_retention);

    for (t = 0; t < NGX_HTTP_INVOICES_PRUNED_N; t++) {

        values[0] = (t == NGX_HTTP_INVOICES_PRUNED_N - 1) ? keys : events;

        for (batch = 0; batch < NGX_HTTP_INVOICES_PRUNE_BATCHES; batch++) {
            res = ngx_http_invoices_pg_query(hk->job,
                                             ngx_http_invoices_prune_sql[t],
                                             1, values);
            if (res == NULL) {
                ngx_http_invoices_housekeeping_fail(hk, "pruning");
                return;
            }

            n = ngx_atoi((u_char *) PQcmdTuples(res),
                         ngx_strlen(PQcmdTuples(res)));
            PQclear(res);

            if (n <= 0) {
                break;
            }

            hk->pruned[t] += n;

            if (n < ngx_atoi((u_char *) NGX_HTTP_INVOICES_PRUNE_BATCH,
                             sizeof(NGX_HTTP_INVOICES_PRUNE_BATCH) - 1))
            {
                break;
            }
        }
    }

    res = ngx_http_invoices_pg_query(hk->job,
                                     "SELECT invoices_search_refresh()",
                                     0, NULL);
    if (res == NULL) {
        ngx_http_invoices_housekeeping_fail(hk, "sampling q's trigrams");
        return;
    }

    PQclear(res);
}


static void
ngx_http_invoices_housekeeping_reconcile(ngx_http_invoices_housekeeping_t *hk)
{
    json_t                          *list, *data, *last;
    int64_t                          from, newest;
    PGresult                        *res;
    ngx_uint_t                       page, complete;
    const char                      *s, *values[4], *message;
    char                             after[256], path[512],
                                     mark[NGX_INT_T_LEN + 1],
                                     newest_text[NGX_INT_T_LEN + 1];
    ngx_http_invoices_stripe_res_t   sr;

    if (ngx_http_invoices_housekeeping_lease(hk, "reconcile", &res)
        != NGX_OK)
    {
        return;
    }

    if (PQgetisnull(res, 0, 0)
        || ngx_strcmp(PQgetvalue(res, 0, 0), hk->holder) != 0)
    {
        hk->took = 1;
        ngx_cpystrn((u_char *) hk->previous, (u_char *) PQgetvalue(res, 0, 0),
                    sizeof(hk->previous));
    }

    from = PQgetisnull(res, 0, 1)
           ? (int64_t) time(NULL) - NGX_HTTP_INVOICES_RECONCILE_FIRST
           : strtoll(PQgetvalue(res, 0, 1), NULL, 10)
             - NGX_HTTP_INVOICES_RECONCILE_OVERLAP;

    /* a sweep that did not finish in its pass goes on where it stopped */

    after[0] = '\0';
    newest = 0;

    if (!PQgetisnull(res, 0, 2)) {
        ngx_cpystrn((u_char *) after, (u_char *) PQgetvalue(res, 0, 2),
                    sizeof(after));
        newest = strtoll(PQgetvalue(res, 0, 3), NULL, 10);
    }

    PQclear(res);

    complete = 0;

    for (page = 0; page < NGX_HTTP_INVOICES_RECONCILE_PAGES; page++) {

        (void) ngx_http_invoices_sprint(path,
                   "/v1/events?type=invoice.%%2A&limit=100"
                   "&created%%5Bgte%%5D=%L%s%s", from,
                   after[0] ? "&starting_after=" : "", after);

        ngx_http_invoices_stripe_request(&hk->stripe, "GET", path, NULL, NULL,
                                         &sr);

        if (sr.outcome != NGX_HTTP_INVOICES_STRIPE_ANSWERED
            || sr.status < 200 || sr.status > 299)
        {
            /*
             * Stripe's own message says what is wrong (a parameter, the
             * account), but for 401 and 403: those quote our key.
             */

            list = NULL;
            message = NULL;

            if (sr.outcome == NGX_HTTP_INVOICES_STRIPE_ANSWERED
                && sr.status != 401 && sr.status != 403 && sr.body)
            {
                list = json_loadb(sr.body, sr.len, 0, NULL);
                message = ngx_http_invoices_json_str(
                              json_object_get(list, "error"), "message");
            }

            (void) ngx_http_invoices_sprint(hk->error,
                       "GET /v1/events of Stripe failed (HTTP %l%s%s%s%s)%s%s",
                       sr.status,
                       sr.request_id[0] ? ", request " : "", sr.request_id,
                       sr.error[0] ? ", " : "", sr.error,
                       message ? ": " : "", message ? message : "");

            json_decref(list);
            ngx_http_invoices_stripe_res_free(&sr);
            return;
        }

        list = json_loadb(sr.body ? sr.body : "", sr.len, 0, NULL);
        ngx_http_invoices_stripe_res_free(&sr);

        data = json_object_get(list, "data");

        if (!json_is_array(data)) {
            json_decref(list);
            (void) ngx_http_invoices_sprint(hk->error,
                       "Stripe's list of events could not be read");
            return;
        }

        if (ngx_http_invoices_housekeeping_page(hk, data, &newest) != NGX_OK)
        {
            json_decref(list);
            return;
        }

        last = json_array_get(data, json_array_size(data) - 1);
        s = json_string_value(json_object_get(last, "id"));

        if (!json_is_true(json_object_get(list, "has_more")) || s == NULL) {
            json_decref(list);
            complete = 1;
            break;
        }

        /* the cursor goes into the URL: an event id only */

        if (!ngx_http_invoices_stripe_id((u_char *) s, ngx_strlen(s), "evt_"))
        {
            json_decref(list);
            (void) ngx_http_invoices_sprint(hk->error,
                       "Stripe's list of events could not be read");
            return;
        }

        ngx_cpystrn((u_char *) after, (u_char *) s, sizeof(after));
        json_decref(list);
    }

    /*
     * A complete sweep moves the watermark on (never back); an unfinished
     * one keeps where it stopped, for the next pass.
     */

    (void) ngx_http_invoices_sprint(newest_text, "%L", newest);
    (void) ngx_http_invoices_sprint(mark, "%s", complete ? "" : after);

    values[0] = hk->holder;
    values[1] = complete ? "t" : "f";
    values[2] = newest_text;
    values[3] = mark;

    res = ngx_http_invoices_pg_query(hk->job,
              "UPDATE invoices_leases SET "
              "watermark = CASE WHEN $2::boolean AND $3::bigint > 0 "
              "THEN greatest(coalesce(watermark, 0), $3::bigint) "
              "ELSE watermark END, "
              "resume_after = CASE WHEN $2::boolean THEN NULL ELSE $4 END, "
              "resume_newest = CASE WHEN $2::boolean THEN NULL "
              "ELSE $3::bigint END "
              "WHERE task = 'reconcile' AND holder = $1",
              4, values);

    if (res == NULL) {
        ngx_http_invoices_housekeeping_fail(hk, "keeping the watermark");
        return;
    }

    PQclear(res);
}


/*
 * One page of Stripe's events (newest first): the ones never seen are
 * applied, oldest first.  NGX_ERROR when the database failed.
 */

static ngx_int_t
ngx_http_invoices_housekeeping_page(ngx_http_invoices_housekeeping_t *hk,
    json_t *data, int64_t *newest)
{
    int         i, j, n;
    json_t     *event, *created;
    size_t      k, size;
    u_char     *ids, *p, *last;
    PGresult   *res;
    ngx_int_t   rc;
    const char *id, *values[1], *invalid;
    char        result[16];

    n = (int) json_array_size(data);
    hk->pulled += n;

    if (n == 0) {
        return NGX_OK;
    }

    /* the ids as an array literal: Stripe's ids are letters, digits, _ */

    size = 3 + (size_t) n * 257;

    ids = malloc(size);
    if (ids == NULL) {
        ngx_http_invoices_housekeeping_fail(hk, "out of memory");
        return NGX_ERROR;
    }

    p = ids;
    last = ids + size - 1;
    *p++ = '{';

    json_array_foreach(data, k, event) {
        id = json_string_value(json_object_get(event, "id"));

        if (id && ngx_http_invoices_stripe_id((u_char *) id, ngx_strlen(id),
                                              "evt_"))
        {
            p = ngx_slprintf(p, last, "%s%s", p == ids + 1 ? "" : ",", id);
        }

        created = json_object_get(event, "created");

        if (json_is_integer(created) && json_integer_value(created) > *newest)
        {
            *newest = json_integer_value(created);
        }
    }

    *p++ = '}';
    *p = '\0';

    values[0] = (char *) ids;

    res = ngx_http_invoices_pg_query(hk->job,
              "SELECT x FROM unnest($1::text[]) x "
              "WHERE NOT EXISTS (SELECT 1 FROM webhook_events e "
              "WHERE e.id = x)", 1, values);
    free(ids);

    if (res == NULL) {
        ngx_http_invoices_housekeeping_fail(hk, "reading the events seen");
        return NGX_ERROR;
    }

    for (i = n - 1; i >= 0; i--) {
        event = json_array_get(data, i);
        id = json_string_value(json_object_get(event, "id"));

        for (j = 0; id && j < PQntuples(res); j++) {
            if (ngx_strcmp(PQgetvalue(res, j, 0), id) == 0) {
                break;
            }
        }

        if (id == NULL || j == PQntuples(res)) {
            continue;                       /* seen, or not an event */
        }

        rc = ngx_http_invoices_webhook_apply(hk->job, event, result,
                                             sizeof(result), &invalid);

        if (rc == NGX_ERROR) {
            PQclear(res);
            ngx_http_invoices_housekeeping_fail(hk, "applying an event");
            return NGX_ERROR;
        }

        if (rc == NGX_DECLINED) {
            (void) ngx_http_invoices_sprint(hk->error,
                       "Stripe's event %s was not applied: %s", id, invalid);
            continue;
        }

        /* a webhook may have brought it meanwhile */

        if (ngx_strcmp(result, "duplicate") != 0) {
            hk->applied++;
        }

        hk->changed |= ngx_http_invoices_webhook_changed(result);
    }

    PQclear(res);

    return NGX_OK;
}


/* the pass stops: what failed, and PostgreSQL's own words when it was */

static void
ngx_http_invoices_housekeeping_fail(ngx_http_invoices_housekeeping_t *hk,
    const char *what)
{
    (void) ngx_http_invoices_sprint(hk->error, "%s: %s", what,
                                    hk->job->log[0] ? hk->job->log
                                                   : "no detail");
}
