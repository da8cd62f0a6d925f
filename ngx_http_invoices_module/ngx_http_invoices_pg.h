
/*
 * PostgreSQL from the pool threads: a job's statements.
 */


#ifndef _NGX_HTTP_INVOICES_PG_H_INCLUDED_
#define _NGX_HTTP_INVOICES_PG_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include <libpq-fe.h>

#include "ngx_http_invoices_module.h"
#include "ngx_http_invoices_job.h"


/* pool threads only */
PGresult *ngx_http_invoices_pg_query(ngx_http_invoices_job_t *job,
    const char *sql, int nparams, const char *const *values);
PGresult *ngx_http_invoices_pg_query_built(ngx_http_invoices_job_t *job,
    const char *sql, int nparams, const char *const *values);
PGresult *ngx_http_invoices_pg_query_shaped(ngx_http_invoices_job_t *job,
    const char *sql, int nparams, const char *const *values);
PGconn *ngx_http_invoices_pg_open(ngx_http_invoices_job_t *job);
PGresult *ngx_http_invoices_pg_query_on(ngx_http_invoices_job_t *job,
    PGconn *conn, const char *sql, int nparams, const char *const *values);
void ngx_http_invoices_pg_close_now(PGconn *conn);
PGresult *ngx_http_invoices_pg_try(ngx_http_invoices_job_t *job,
    const char *sql, int nparams, const char *const *values);


#endif /* _NGX_HTTP_INVOICES_PG_H_INCLUDED_ */
