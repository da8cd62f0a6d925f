
/*
 * The read endpoints: GET /admin/api/invoices and GET .../{id}.
 */


#ifndef _NGX_HTTP_INVOICES_READ_H_INCLUDED_
#define _NGX_HTTP_INVOICES_READ_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_invoices_module.h"


ngx_int_t ngx_http_invoices_summary(ngx_http_request_t *r,
    ngx_http_invoices_loc_conf_t *ilcf);
ngx_int_t ngx_http_invoices_list(ngx_http_request_t *r,
    ngx_http_invoices_loc_conf_t *ilcf);
ngx_int_t ngx_http_invoices_get(ngx_http_request_t *r,
    ngx_http_invoices_loc_conf_t *ilcf, ngx_str_t *id);


#endif /* _NGX_HTTP_INVOICES_READ_H_INCLUDED_ */
