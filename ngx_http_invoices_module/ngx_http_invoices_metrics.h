
/*
 * Counters in shared memory, served in Prometheus' text format.
 */


#ifndef _NGX_HTTP_INVOICES_METRICS_H_INCLUDED_
#define _NGX_HTTP_INVOICES_METRICS_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>


/* the endpoint a request was routed to, kept in the request ctx */
#define NGX_HTTP_INVOICES_EP_OTHER      0
#define NGX_HTTP_INVOICES_EP_LIST       1
#define NGX_HTTP_INVOICES_EP_GET        2
#define NGX_HTTP_INVOICES_EP_CREATE     3
#define NGX_HTTP_INVOICES_EP_SYNC       4
#define NGX_HTTP_INVOICES_EP_WEBHOOK    5
#define NGX_HTTP_INVOICES_EP_SUMMARY    6
#define NGX_HTTP_INVOICES_EP_EXPORT     7
#define NGX_HTTP_INVOICES_EP_EVENTS     8
#define NGX_HTTP_INVOICES_EP_ACTION     9
#define NGX_HTTP_INVOICES_EP_N          10

#define NGX_HTTP_INVOICES_CACHE_HIT_LOCAL  0
#define NGX_HTTP_INVOICES_CACHE_HIT_REDIS  1
#define NGX_HTTP_INVOICES_CACHE_MISS       2
#define NGX_HTTP_INVOICES_CACHE_BYPASS     3
#define NGX_HTTP_INVOICES_CACHE_N          4

/* the webhook's results: what invoices_webhook_event() returns, then ours */
#define NGX_HTTP_INVOICES_WEBHOOK_REJECTED  6
#define NGX_HTTP_INVOICES_WEBHOOK_N         7


/* the tables the pruning empties (ngx_http_invoices_housekeeping.c) */
#define NGX_HTTP_INVOICES_PRUNED_N          3


/* what a job's thread saw, added to the counters on the event loop */
typedef struct {
    ngx_uint_t   pg_error;
    ngx_uint_t   stripe_calls;
    ngx_uint_t   stripe_errors;
    uint64_t     stripe_usec;
} ngx_http_invoices_metrics_job_t;


/* configuration time */
ngx_int_t ngx_http_invoices_metrics_add_zone(ngx_conf_t *cf);
ngx_int_t ngx_http_invoices_metrics_init(ngx_conf_t *cf);
char *ngx_http_invoices_metrics(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);

/* event loop only */
void ngx_http_invoices_metrics_endpoint(ngx_http_request_t *r,
    ngx_uint_t endpoint);
void ngx_http_invoices_metrics_cache(ngx_uint_t result);
void ngx_http_invoices_metrics_webhook(ngx_uint_t result);
void ngx_http_invoices_metrics_queue_full(void);
void ngx_http_invoices_metrics_job_posted(void);
void ngx_http_invoices_metrics_job_done(ngx_http_invoices_metrics_job_t *m);
void ngx_http_invoices_metrics_redis_error(void);
void ngx_http_invoices_metrics_housekeeping(ngx_uint_t pulled,
    ngx_uint_t applied, ngx_uint_t *pruned);

/* pool threads (and anywhere: no shared state) */
ngx_uint_t ngx_http_invoices_metrics_webhook_result(const char *result);
void ngx_http_invoices_metrics_thread_job(ngx_http_invoices_metrics_job_t *m);
uint64_t ngx_http_invoices_metrics_usec(void);
void ngx_http_invoices_metrics_stripe_call(ngx_uint_t ok, uint64_t start);


#endif /* _NGX_HTTP_INVOICES_METRICS_H_INCLUDED_ */
