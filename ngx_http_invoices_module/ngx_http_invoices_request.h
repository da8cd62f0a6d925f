
/*
 * What the endpoints read of a request: headers and body.
 */


#ifndef _NGX_HTTP_INVOICES_REQUEST_H_INCLUDED_
#define _NGX_HTTP_INVOICES_REQUEST_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>


ngx_str_t *ngx_http_invoices_header(ngx_http_request_t *r,
    const char *name, ngx_uint_t *count);
ngx_int_t ngx_http_invoices_request_body(ngx_http_request_t *r,
    ngx_str_t *body);
ngx_int_t ngx_http_invoices_content_type_json(ngx_http_request_t *r);


#endif /* _NGX_HTTP_INVOICES_REQUEST_H_INCLUDED_ */
