
/*
 * The one thread-pool job runner (see ngx_http_invoices_job.c).
 */


#ifndef _NGX_HTTP_INVOICES_JOB_H_INCLUDED_
#define _NGX_HTTP_INVOICES_JOB_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_invoices_module.h"
#include "ngx_http_invoices_metrics.h"


/* runs in a pool thread: plain C in, plain C out, no nginx state */
typedef void (*ngx_http_invoices_job_run_pt)(ngx_http_invoices_job_t *job);

/* runs on the event loop once the job is done; returns a handler rc */
typedef ngx_int_t (*ngx_http_invoices_job_finish_pt)(ngx_http_request_t *r,
    ngx_http_invoices_job_t *job);

/*
 * Event loop, before finish: NGX_OK when it will call then(r, data) later,
 * anything else to answer at once (ngx_http_invoices_cache_bump_for).
 */
typedef ngx_int_t (*ngx_http_invoices_job_defer_pt)(ngx_http_request_t *r,
    void (*then)(ngx_http_request_t *r, void *data), void *data);


/* a job without a request: called on the event loop when it is done */
typedef void (*ngx_http_invoices_job_done_pt)(ngx_http_invoices_job_t *job);


struct ngx_http_invoices_job_s {
    /* in: set on the event loop before posting, read-only in the thread */
    const char                       *conninfo;
    ngx_http_invoices_job_run_pt      run;
    ngx_http_invoices_job_finish_pt   finish;
    ngx_http_invoices_job_done_pt     done;        /* no request: instead */
    void                             *data;        /* the endpoint's */

    /* out: set in the thread, read on the event loop */
    ngx_uint_t                        status;
    char                             *body;        /* malloc()ed JSON */
    size_t                            len;
    char                              log[256];    /* error for the log */
    ngx_uint_t                        log_level;   /* 0: NGX_LOG_ERR */
    ngx_http_invoices_job_defer_pt    defer;       /* NULL: answer at once */
    ngx_http_invoices_metrics_job_t   metrics;

    ngx_thread_task_t                *task;
    ngx_thread_pool_t                *thread_pool;
    ngx_event_t                       hold;        /* see job_run */
};


/* a pool thread's long-lived handle, closed at worker exit */
typedef struct ngx_http_invoices_thread_handle_s
    ngx_http_invoices_thread_handle_t;

struct ngx_http_invoices_thread_handle_s {
    ngx_http_invoices_thread_handle_t  *all;       /* every thread's */
    void  (*close)(ngx_http_invoices_thread_handle_t *h);
};


/* event loop */
ngx_http_invoices_job_t *ngx_http_invoices_job_create(ngx_http_request_t *r,
    ngx_http_invoices_loc_conf_t *ilcf);
ngx_int_t ngx_http_invoices_job_run(ngx_http_request_t *r,
    ngx_http_invoices_job_t *job);
ngx_int_t ngx_http_invoices_job_post(ngx_http_request_t *r,
    ngx_http_invoices_job_t *job);
ngx_int_t ngx_http_invoices_job_send(ngx_http_request_t *r,
    ngx_http_invoices_job_t *job);

/* event loop, jobs without a request (ngx_http_invoices_housekeeping.c) */
ngx_http_invoices_job_t *ngx_http_invoices_job_background(ngx_pool_t *pool,
    ngx_log_t *log);
ngx_int_t ngx_http_invoices_job_post_background(ngx_http_invoices_job_t *job);

/* pool threads */
void ngx_http_invoices_job_fail(ngx_http_invoices_job_t *job,
    ngx_uint_t status, const char *type, const char *code,
    const char *message);
void ngx_http_invoices_job_refuse(ngx_http_invoices_job_t *job,
    ngx_uint_t status, const char *code, const char *message,
    const char *param);
void ngx_http_invoices_thread_handle_keep(
    ngx_http_invoices_thread_handle_t *h);

/* worker exit, after the pool threads have stopped */
void ngx_http_invoices_thread_handles_close(void);


#endif /* _NGX_HTTP_INVOICES_JOB_H_INCLUDED_ */
