
/*
 * An invoice's history: the audit record of admin creates and actions,
 * and GET .../{id}/events (see ngx_http_invoices_history.c).
 */


#ifndef _NGX_HTTP_INVOICES_HISTORY_H_INCLUDED_
#define _NGX_HTTP_INVOICES_HISTORY_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_invoices_module.h"
#include "ngx_http_invoices_job.h"


/*
 * What an audit record needs, taken on the event loop: the key's name
 * (never the key) and when the request came.
 */
typedef struct {
    char          key_name[65];
    char          at[NGX_INT_T_LEN + 1];    /* ms since the epoch */
} ngx_http_invoices_audit_t;


/* event loop */
ngx_int_t ngx_http_invoices_audit_init(ngx_http_request_t *r,
    ngx_http_invoices_audit_t *audit);
ngx_int_t ngx_http_invoices_history(ngx_http_request_t *r,
    ngx_http_invoices_loc_conf_t *ilcf, ngx_str_t *id);

/* pool threads */
void ngx_http_invoices_audit_record(ngx_http_invoices_job_t *job,
    ngx_http_invoices_audit_t *audit, const char *action,
    const char *stripe_invoice_id, const char *idempotency_key,
    ngx_uint_t replayed, ngx_uint_t status);


#endif /* _NGX_HTTP_INVOICES_HISTORY_H_INCLUDED_ */
