
/*
 * The one thread-pool job runner, and PostgreSQL from the pool threads.
 */


#ifndef _NGX_HTTP_INVOICES_PG_H_INCLUDED_
#define _NGX_HTTP_INVOICES_PG_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include <libpq-fe.h>

#include "ngx_http_invoices_module.h"
#include "ngx_http_invoices_metrics.h"


/* runs in a pool thread: plain C in, plain C out, no nginx state */
typedef void (*ngx_http_invoices_job_run_pt)(ngx_http_invoices_job_t *job);

/* runs on the event loop once the job is done; returns a handler rc */
typedef ngx_int_t (*ngx_http_invoices_job_finish_pt)(ngx_http_request_t *r,
    ngx_http_invoices_job_t *job);


struct ngx_http_invoices_job_s {
    /* in: set on the event loop before posting, read-only in the thread */
    const char                       *conninfo;
    ngx_http_invoices_job_run_pt      run;
    ngx_http_invoices_job_finish_pt   finish;
    void                             *data;

    /* out: set in the thread, read on the event loop */
    ngx_uint_t                        status;
    char                             *body;        /* malloc()ed JSON */
    size_t                            len;
    u_char                            etag[20];    /* "16 hex digits" */
    size_t                            etag_len;
    char                              log[256];    /* error for the log */
    ngx_uint_t                        log_level;   /* 0: NGX_LOG_ERR */
    ngx_uint_t                        changed;     /* invoices changed */
    ngx_http_invoices_metrics_job_t   metrics;

    ngx_thread_task_t                *task;
    ngx_thread_pool_t                *thread_pool;
    ngx_event_t                       hold;        /* see job_run */
};


ngx_http_invoices_job_t *ngx_http_invoices_job_create(ngx_http_request_t *r,
    ngx_http_invoices_loc_conf_t *ilcf);
ngx_int_t ngx_http_invoices_job_run(ngx_http_request_t *r,
    ngx_http_invoices_job_t *job);
ngx_int_t ngx_http_invoices_job_send(ngx_http_request_t *r,
    ngx_http_invoices_job_t *job);

/* worker exit, after the pool threads have stopped */
void ngx_http_invoices_pg_close_all(void);

/* pool threads only */
void ngx_http_invoices_job_fail(ngx_http_invoices_job_t *job,
    ngx_uint_t status, const char *type, const char *code,
    const char *message);
PGresult *ngx_http_invoices_pg_query(ngx_http_invoices_job_t *job,
    const char *sql, int nparams, const char *const *values);
PGresult *ngx_http_invoices_pg_try(ngx_http_invoices_job_t *job,
    const char *sql, int nparams, const char *const *values);


#endif /* _NGX_HTTP_INVOICES_PG_H_INCLUDED_ */
