
/*
 * invoices_metrics: counters of every worker, in Prometheus' text format.
 *
 * The counters live in one shared memory zone, so that a scrape sees the
 * sums of all workers, and a reload keeps them (the zone is reused with
 * its data).  They are moved with ngx_atomic_fetch_add() on the event
 * loop only: a pool thread leaves what it saw (Stripe calls, a failed
 * statement) in its job, and the job's completion on the event loop adds
 * it.  Every request answered in an "invoices_admin" or
 * "invoices_stripe_webhook" location is counted once, in the log phase,
 * by endpoint and final status; the scrapes themselves are not.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <time.h>

#include "ngx_http_invoices_module.h"
#include "ngx_http_invoices_json.h"
#include "ngx_http_invoices_metrics.h"


#define NGX_HTTP_INVOICES_STATUS_N     17     /* the last one: "other" */
#define NGX_HTTP_INVOICES_METRICS_MAX  16384


typedef struct {
    size_t         size;      /* of this struct: a new layout starts afresh */
    ngx_atomic_t   requests[NGX_HTTP_INVOICES_EP_N]
                           [NGX_HTTP_INVOICES_STATUS_N];
    ngx_atomic_t   cache[NGX_HTTP_INVOICES_CACHE_N];
    ngx_atomic_t   webhook[NGX_HTTP_INVOICES_WEBHOOK_N];
    ngx_atomic_t   stripe_ok;
    ngx_atomic_t   stripe_error;
    ngx_atomic_t   stripe_usec;
    ngx_atomic_t   queue_full;
    ngx_atomic_t   jobs_in_flight;
    ngx_atomic_t   pg_errors;
    ngx_atomic_t   redis_errors;
    ngx_atomic_t   reconcile[2];        /* pulled, applied */
    ngx_atomic_t   pruned[NGX_HTTP_INVOICES_PRUNED_N];
} ngx_http_invoices_metrics_shm_t;


static ngx_int_t ngx_http_invoices_metrics_init_zone(ngx_shm_zone_t *shm_zone,
    void *data);
static ngx_int_t ngx_http_invoices_metrics_log(ngx_http_request_t *r);
static ngx_int_t ngx_http_invoices_metrics_handler(ngx_http_request_t *r);
static u_char *ngx_http_invoices_metrics_text(u_char *p, u_char *last);


static ngx_http_invoices_metrics_shm_t  *ngx_http_invoices_metrics_shm;

static const char  *ngx_http_invoices_metrics_pruned_tables[] = {
    "webhook_events", "invoices_deleted", "idempotency_keys"
};

static __thread ngx_http_invoices_metrics_job_t *ngx_http_invoices_metrics_mine;


/* the fixed label values: no label is ever made from a request */

static ngx_uint_t  ngx_http_invoices_metrics_statuses[] = {
    200, 201, 304, 400, 401, 403, 404, 405, 409, 413, 415, 429, 500, 502,
    503, 504
};

static const char  *ngx_http_invoices_metrics_endpoints[] = {
    "other", "list", "get", "create", "sync", "webhook", "summary",
    "export", "events", "action"
};

static const char  *ngx_http_invoices_metrics_caches[] = {
    "hit_local", "hit_redis", "miss", "bypass"
};

/* in this order: the indexes below REJECTED are invoices_webhook_event()'s */
static const char  *ngx_http_invoices_metrics_webhooks[] = {
    "inserted", "updated", "unchanged", "duplicate", "deleted", "ignored",
    "rejected"
};


/* configuration time, whenever the module is configured */

ngx_int_t
ngx_http_invoices_metrics_add_zone(ngx_conf_t *cf)
{
    ngx_shm_zone_t  *shm_zone;

    static ngx_str_t  name = ngx_string("ngx_http_invoices_metrics");

    shm_zone = ngx_shared_memory_add(cf, &name, 8 * ngx_pagesize,
                                     &ngx_http_invoices_module);
    if (shm_zone == NULL) {
        return NGX_ERROR;
    }

    shm_zone->init = ngx_http_invoices_metrics_init_zone;

    return NGX_OK;
}


static ngx_int_t
ngx_http_invoices_metrics_init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_slab_pool_t                  *shpool;
    ngx_http_invoices_metrics_shm_t  *shm = data;

    /* a reload: the counters go on, unless their layout changed */

    if (shm && shm->size == sizeof(ngx_http_invoices_metrics_shm_t)) {
        shm_zone->data = shm;
        ngx_http_invoices_metrics_shm = shm;
        return NGX_OK;
    }

    shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

    shm = ngx_slab_calloc(shpool, sizeof(ngx_http_invoices_metrics_shm_t));
    if (shm == NULL) {
        return NGX_ERROR;
    }

    shm->size = sizeof(ngx_http_invoices_metrics_shm_t);

    shm_zone->data = shm;
    ngx_http_invoices_metrics_shm = shm;

    return NGX_OK;
}


/* postconfiguration: every request of our locations, once, when logged */

ngx_int_t
ngx_http_invoices_metrics_init(ngx_conf_t *cf)
{
    ngx_http_handler_pt        *h;
    ngx_http_core_main_conf_t  *cmcf;

    cmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module);

    h = ngx_array_push(&cmcf->phases[NGX_HTTP_LOG_PHASE].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    *h = ngx_http_invoices_metrics_log;

    return NGX_OK;
}


/* invoices_metrics: this location answers with the counters */

char *
ngx_http_invoices_metrics(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_invoices_loc_conf_t *ilcf = conf;

    ngx_http_core_loc_conf_t  *clcf;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);

    if (clcf->handler == ngx_http_invoices_metrics_handler) {
        return "is duplicate";
    }

    if (ilcf->admin != NGX_CONF_UNSET || ilcf->webhook != NGX_CONF_UNSET) {
        return "cannot share a location with \"invoices_admin\" or "
               "\"invoices_stripe_webhook\"";
    }

    /* neither: either of them after this one is refused as a duplicate */

    ilcf->admin = 0;
    ilcf->webhook = 0;

    clcf->handler = ngx_http_invoices_metrics_handler;

    return NGX_CONF_OK;
}


void
ngx_http_invoices_metrics_endpoint(ngx_http_request_t *r, ngx_uint_t endpoint)
{
    ngx_http_invoices_ctx_t  *ctx;

    ctx = ngx_http_invoices_ctx(r);

    if (ctx != NULL) {
        ctx->endpoint = endpoint;
    }
}


static ngx_int_t
ngx_http_invoices_metrics_log(ngx_http_request_t *r)
{
    ngx_uint_t                     i, endpoint, status;
    ngx_http_invoices_ctx_t       *ctx;
    ngx_http_invoices_loc_conf_t  *ilcf;

    ilcf = ngx_http_get_module_loc_conf(r, ngx_http_invoices_module);

    if (ngx_http_invoices_metrics_shm == NULL
        || !(ilcf->admin == 1 || ilcf->webhook == 1))
    {
        return NGX_OK;
    }

    if (ilcf->webhook == 1) {
        endpoint = NGX_HTTP_INVOICES_EP_WEBHOOK;

    } else {
        ctx = ngx_http_get_module_ctx(r, ngx_http_invoices_module);
        endpoint = ctx ? ctx->endpoint : NGX_HTTP_INVOICES_EP_OTHER;
    }

    /* as $status of the log module */
    status = r->err_status ? r->err_status : r->headers_out.status;

    for (i = 0; i < NGX_HTTP_INVOICES_STATUS_N - 1; i++) {
        if (ngx_http_invoices_metrics_statuses[i] == status) {
            break;
        }
    }

    (void) ngx_atomic_fetch_add(
                        &ngx_http_invoices_metrics_shm->requests[endpoint][i],
                        1);

    return NGX_OK;
}


void
ngx_http_invoices_metrics_cache(ngx_uint_t result)
{
    if (ngx_http_invoices_metrics_shm) {
        (void) ngx_atomic_fetch_add(
                           &ngx_http_invoices_metrics_shm->cache[result], 1);
    }
}


void
ngx_http_invoices_metrics_webhook(ngx_uint_t result)
{
    if (ngx_http_invoices_metrics_shm && result < NGX_HTTP_INVOICES_WEBHOOK_N)
    {
        (void) ngx_atomic_fetch_add(
                         &ngx_http_invoices_metrics_shm->webhook[result], 1);
    }
}


/* what invoices_webhook_event() returned; NGX_HTTP_INVOICES_WEBHOOK_N: ? */

ngx_uint_t
ngx_http_invoices_metrics_webhook_result(const char *result)
{
    ngx_uint_t  i;

    for (i = 0; i < NGX_HTTP_INVOICES_WEBHOOK_REJECTED; i++) {
        if (ngx_strcmp(result, ngx_http_invoices_metrics_webhooks[i]) == 0) {
            return i;
        }
    }

    return NGX_HTTP_INVOICES_WEBHOOK_N;
}


void
ngx_http_invoices_metrics_queue_full(void)
{
    if (ngx_http_invoices_metrics_shm) {
        (void) ngx_atomic_fetch_add(
                             &ngx_http_invoices_metrics_shm->queue_full, 1);
    }
}


void
ngx_http_invoices_metrics_job_posted(void)
{
    if (ngx_http_invoices_metrics_shm) {
        (void) ngx_atomic_fetch_add(
                         &ngx_http_invoices_metrics_shm->jobs_in_flight, 1);
    }
}


void
ngx_http_invoices_metrics_job_done(ngx_http_invoices_metrics_job_t *m)
{
    ngx_http_invoices_metrics_shm_t  *shm;

    shm = ngx_http_invoices_metrics_shm;

    if (shm == NULL) {
        return;
    }

    (void) ngx_atomic_fetch_add(&shm->jobs_in_flight, (ngx_atomic_int_t) -1);

    if (m->pg_error) {
        (void) ngx_atomic_fetch_add(&shm->pg_errors, 1);
    }

    if (m->stripe_calls) {
        (void) ngx_atomic_fetch_add(&shm->stripe_ok,
                                    m->stripe_calls - m->stripe_errors);
        (void) ngx_atomic_fetch_add(&shm->stripe_error, m->stripe_errors);
        (void) ngx_atomic_fetch_add(&shm->stripe_usec, m->stripe_usec);
    }
}


/* a pass of the background work (ngx_http_invoices_housekeeping.c) */

void
ngx_http_invoices_metrics_housekeeping(ngx_uint_t pulled, ngx_uint_t applied,
    ngx_uint_t *pruned)
{
    ngx_uint_t                        i;
    ngx_http_invoices_metrics_shm_t  *shm;

    shm = ngx_http_invoices_metrics_shm;

    if (shm == NULL) {
        return;
    }

    (void) ngx_atomic_fetch_add(&shm->reconcile[0], pulled);
    (void) ngx_atomic_fetch_add(&shm->reconcile[1], applied);

    for (i = 0; i < NGX_HTTP_INVOICES_PRUNED_N; i++) {
        (void) ngx_atomic_fetch_add(&shm->pruned[i], pruned[i]);
    }
}


void
ngx_http_invoices_metrics_redis_error(void)
{
    if (ngx_http_invoices_metrics_shm) {
        (void) ngx_atomic_fetch_add(
                           &ngx_http_invoices_metrics_shm->redis_errors, 1);
    }
}


/*
 * Pool threads: the job a thread runs, so that the Stripe request function
 * (which knows no job) can leave its counts in it; NULL when it is done.
 */

void
ngx_http_invoices_metrics_thread_job(ngx_http_invoices_metrics_job_t *m)
{
    ngx_http_invoices_metrics_mine = m;
}


uint64_t
ngx_http_invoices_metrics_usec(void)
{
    struct timespec  ts;

    (void) clock_gettime(CLOCK_MONOTONIC, &ts);

    return (uint64_t) ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}


/* one HTTP exchange with Stripe (each retry is one), started at "start" */

void
ngx_http_invoices_metrics_stripe_call(ngx_uint_t ok, uint64_t start)
{
    ngx_http_invoices_metrics_job_t  *m;

    m = ngx_http_invoices_metrics_mine;

    if (m == NULL) {
        return;
    }

    m->stripe_calls++;
    m->stripe_errors += ok ? 0 : 1;
    m->stripe_usec += ngx_http_invoices_metrics_usec() - start;
}


static ngx_int_t
ngx_http_invoices_metrics_handler(ngx_http_request_t *r)
{
    ngx_int_t     rc;
    ngx_buf_t    *b;
    ngx_chain_t   out;

    static ngx_str_t  allow = ngx_string("Allow");
    static ngx_str_t  get_head = ngx_string("GET, HEAD");
    static ngx_str_t  type =
                       ngx_string("text/plain; version=0.0.4; charset=utf-8");

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        if (ngx_http_invoices_set_header(r, &allow, &get_head) != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        return ngx_http_invoices_send_error(r, NGX_HTTP_NOT_ALLOWED,
                   "invalid_request_error", "method_not_allowed",
                   "the metrics are read with GET", NULL);
    }

    if (ngx_http_invoices_metrics_shm == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    b = ngx_create_temp_buf(r->pool, NGX_HTTP_INVOICES_METRICS_MAX);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    b->last = ngx_http_invoices_metrics_text(b->pos, b->end);
    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    r->headers_out.status = NGX_HTTP_OK;
    r->headers_out.content_type = type;
    r->headers_out.content_type_len = type.len;
    r->headers_out.content_type_lowcase = NULL;
    r->headers_out.content_length_n = b->last - b->pos;

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}


/* the exposition text; counters read one by one, each atomically */

static u_char *
ngx_http_invoices_metrics_text(u_char *p, u_char *last)
{
    ngx_uint_t                        e, s;
    ngx_atomic_uint_t                 n;
    ngx_http_invoices_metrics_shm_t  *shm;

    shm = ngx_http_invoices_metrics_shm;

    p = ngx_slprintf(p, last,
            "# HELP invoices_requests_total Requests answered by the "
            "invoices locations, by endpoint and final status.\n"
            "# TYPE invoices_requests_total counter\n");

    /* only the pairs seen: 6 endpoints by 17 statuses would be mostly 0 */

    for (e = 0; e < NGX_HTTP_INVOICES_EP_N; e++) {
        for (s = 0; s < NGX_HTTP_INVOICES_STATUS_N; s++) {
            n = shm->requests[e][s];

            if (n == 0) {
                continue;
            }

            if (s < NGX_HTTP_INVOICES_STATUS_N - 1) {
                p = ngx_slprintf(p, last, "invoices_requests_total"
                                 "{endpoint=\"%s\",status=\"%ui\"} %uA\n",
                                 ngx_http_invoices_metrics_endpoints[e],
                                 ngx_http_invoices_metrics_statuses[s], n);

            } else {
                p = ngx_slprintf(p, last, "invoices_requests_total"
                                 "{endpoint=\"%s\",status=\"other\"} %uA\n",
                                 ngx_http_invoices_metrics_endpoints[e], n);
            }
        }
    }

    p = ngx_slprintf(p, last,
            "# HELP invoices_cache_total List and single reads by where "
            "the answer came from (X-Cache HIT is hit_local or "
            "hit_redis).\n"
            "# TYPE invoices_cache_total counter\n");

    for (s = 0; s < NGX_HTTP_INVOICES_CACHE_N; s++) {
        p = ngx_slprintf(p, last, "invoices_cache_total{result=\"%s\"} %uA\n",
                         ngx_http_invoices_metrics_caches[s], shm->cache[s]);
    }

    p = ngx_slprintf(p, last,
            "# HELP invoices_stripe_calls_total HTTP calls to Stripe "
            "(each retry counts); ok: a 2xx answer.\n"
            "# TYPE invoices_stripe_calls_total counter\n"
            "invoices_stripe_calls_total{outcome=\"ok\"} %uA\n"
            "invoices_stripe_calls_total{outcome=\"error\"} %uA\n",
            shm->stripe_ok, shm->stripe_error);

    n = shm->stripe_usec;

    p = ngx_slprintf(p, last,
            "# HELP invoices_stripe_call_seconds Time spent in HTTP calls "
            "to Stripe.\n"
            "# TYPE invoices_stripe_call_seconds summary\n"
            "invoices_stripe_call_seconds_sum %uA.%06uA\n"
            "invoices_stripe_call_seconds_count %uA\n",
            n / 1000000, n % 1000000, shm->stripe_ok + shm->stripe_error);

    p = ngx_slprintf(p, last,
            "# HELP invoices_webhook_events_total Stripe events received, "
            "by result (rejected: bad signature or not an event).\n"
            "# TYPE invoices_webhook_events_total counter\n");

    for (s = 0; s < NGX_HTTP_INVOICES_WEBHOOK_N; s++) {
        p = ngx_slprintf(p, last,
                         "invoices_webhook_events_total{result=\"%s\"} %uA\n",
                         ngx_http_invoices_metrics_webhooks[s],
                         shm->webhook[s]);
    }

    p = ngx_slprintf(p, last,
            "# HELP invoices_thread_pool_queue_full_total Requests answered "
            "503 because a thread pool's queue was full.\n"
            "# TYPE invoices_thread_pool_queue_full_total counter\n"
            "invoices_thread_pool_queue_full_total %uA\n"
            "# HELP invoices_jobs_in_flight Jobs posted to the thread pools "
            "and not done yet.\n"
            "# TYPE invoices_jobs_in_flight gauge\n"
            "invoices_jobs_in_flight %A\n"
            "# HELP invoices_postgresql_errors_total Jobs that failed "
            "because of PostgreSQL (unavailable, busy, statement error).\n"
            "# TYPE invoices_postgresql_errors_total counter\n"
            "invoices_postgresql_errors_total %uA\n"
            "# HELP invoices_redis_errors_total Redis errors: timeouts, "
            "failed connects, lost connections, failed commands.\n"
            "# TYPE invoices_redis_errors_total counter\n"
            "invoices_redis_errors_total %uA\n",
            shm->queue_full, (ngx_atomic_int_t) shm->jobs_in_flight,
            shm->pg_errors, shm->redis_errors);

    p = ngx_slprintf(p, last,
            "# HELP invoices_reconcile_events_total Stripe invoice events "
            "the reconciler pulled, and those it applied (not seen before).\n"
            "# TYPE invoices_reconcile_events_total counter\n"
            "invoices_reconcile_events_total{result=\"pulled\"} %uA\n"
            "invoices_reconcile_events_total{result=\"applied\"} %uA\n"
            "# HELP invoices_pruned_rows_total Old bookkeeping rows pruned, "
            "by table.\n"
            "# TYPE invoices_pruned_rows_total counter\n",
            shm->reconcile[0], shm->reconcile[1]);

    for (s = 0; s < NGX_HTTP_INVOICES_PRUNED_N; s++) {
        p = ngx_slprintf(p, last,
                         "invoices_pruned_rows_total{table=\"%s\"} %uA\n",
                         ngx_http_invoices_metrics_pruned_tables[s],
                         shm->pruned[s]);
    }

    return p;
}
