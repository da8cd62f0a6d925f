
/*
 * GET /admin/api/invoices/export (see ngx_http_invoices_export.c).
 */


#ifndef _NGX_HTTP_INVOICES_EXPORT_H_INCLUDED_
#define _NGX_HTTP_INVOICES_EXPORT_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_invoices_module.h"


ngx_int_t ngx_http_invoices_export(ngx_http_request_t *r,
    ngx_http_invoices_loc_conf_t *ilcf);


#endif /* _NGX_HTTP_INVOICES_EXPORT_H_INCLUDED_ */
