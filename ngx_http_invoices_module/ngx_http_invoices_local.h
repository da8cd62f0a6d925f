
/*
 * The worker's own copy of recent answers, in front of Redis.
 */


#ifndef _NGX_HTTP_INVOICES_LOCAL_H_INCLUDED_
#define _NGX_HTTP_INVOICES_LOCAL_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>


ngx_int_t ngx_http_invoices_local_add_zone(ngx_conf_t *cf);
void ngx_http_invoices_local_init(size_t size, ngx_msec_t ttl);
void ngx_http_invoices_local_exit(void);

ngx_atomic_uint_t ngx_http_invoices_local_version(void);
ngx_int_t ngx_http_invoices_local_get(ngx_http_request_t *r, ngx_str_t *key,
    ngx_str_t *etag, ngx_str_t *body);
void ngx_http_invoices_local_put(ngx_str_t *key, ngx_atomic_uint_t version,
    ngx_str_t *etag, u_char *body, size_t len, ngx_msec_t left);
void ngx_http_invoices_local_invalidate(void);
void ngx_http_invoices_local_gen_read(ngx_str_t *gen);
void ngx_http_invoices_local_gen_heard(ngx_str_t *gen);
void ngx_http_invoices_local_listening(ngx_uint_t on);


#endif /* _NGX_HTTP_INVOICES_LOCAL_H_INCLUDED_ */
