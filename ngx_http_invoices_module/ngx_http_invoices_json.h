
/*
 * JSON bodies: the one error writer and the one response sender.
 */


#ifndef _NGX_HTTP_INVOICES_JSON_H_INCLUDED_
#define _NGX_HTTP_INVOICES_JSON_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include <jansson.h>


/* safe in pool threads: plain malloc()ed results, no nginx state */
char *ngx_http_invoices_json_dump(json_t *json, size_t *len);
char *ngx_http_invoices_json_error(const char *type, const char *code,
    const char *message, const char *param, size_t *len);
const char *ngx_http_invoices_json_str(json_t *o, const char *key);
json_t *ngx_http_invoices_json_error_new(const char *type, const char *code,
    const char *message, const char *param);

/* event loop only */
ngx_int_t ngx_http_invoices_send_json(ngx_http_request_t *r,
    ngx_uint_t status, char *body, size_t len);
ngx_int_t ngx_http_invoices_send_bytes(ngx_http_request_t *r,
    ngx_uint_t status, u_char *body, size_t len);
ngx_int_t ngx_http_invoices_send_error(ngx_http_request_t *r,
    ngx_uint_t status, const char *type, const char *code,
    const char *message, const char *param);
void ngx_http_invoices_set_json_type(ngx_http_request_t *r);
ngx_int_t ngx_http_invoices_set_header(ngx_http_request_t *r,
    ngx_str_t *name, ngx_str_t *value);


#endif /* _NGX_HTTP_INVOICES_JSON_H_INCLUDED_ */
