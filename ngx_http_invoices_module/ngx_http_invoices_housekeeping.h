
/*
 * The background work of worker 0: the reconciler and the pruning (see
 * ngx_http_invoices_housekeeping.c).
 */


#ifndef _NGX_HTTP_INVOICES_HOUSEKEEPING_H_INCLUDED_
#define _NGX_HTTP_INVOICES_HOUSEKEEPING_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>


ngx_int_t ngx_http_invoices_housekeeping_init(ngx_cycle_t *cycle);


#endif /* _NGX_HTTP_INVOICES_HOUSEKEEPING_H_INCLUDED_ */
