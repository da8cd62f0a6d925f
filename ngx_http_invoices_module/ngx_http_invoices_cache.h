
/*
 * The list page cache in Redis, keyed by a generation that writes bump.
 */


#ifndef _NGX_HTTP_INVOICES_CACHE_H_INCLUDED_
#define _NGX_HTTP_INVOICES_CACHE_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_invoices_module.h"


/*
 * outcome: NGX_OK a hit ("value" is the page as stored), NGX_DECLINED a
 * miss ("gen" is the generation to store the page under), NGX_ERROR no
 * answer from Redis (serve without the cache).  "left": how long a hit's
 * page has to live in Redis (0: no expiry), so no copy of it outlives it.
 */
typedef void (*ngx_http_invoices_cache_pt)(ngx_http_request_t *r,
    void *data, ngx_int_t outcome, ngx_str_t *gen, ngx_str_t *value,
    ngx_msec_t left);


/* configuration: invoices_redis, invoices_cache_local, the defaults */
char *ngx_http_invoices_cache_redis_directive(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
char *ngx_http_invoices_cache_local_directive(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
void ngx_http_invoices_cache_conf_create(ngx_http_invoices_redis_conf_t *rc);
ngx_int_t ngx_http_invoices_cache_conf_init(ngx_conf_t *cf,
    ngx_http_invoices_redis_conf_t *rc);

ngx_int_t ngx_http_invoices_cache_init(ngx_cycle_t *cycle);
ngx_uint_t ngx_http_invoices_cache_enabled(void);
ngx_int_t ngx_http_invoices_cache_lookup(ngx_http_request_t *r,
    ngx_str_t *page, ngx_http_invoices_cache_pt handler, void *data);
void ngx_http_invoices_cache_store(ngx_http_request_t *r, ngx_str_t *gen,
    ngx_str_t *page, ngx_str_t *value);
void ngx_http_invoices_cache_bump(void);
ngx_int_t ngx_http_invoices_cache_bump_for(ngx_http_request_t *r,
    void (*then)(ngx_http_request_t *r, void *data), void *data);


#endif /* _NGX_HTTP_INVOICES_CACHE_H_INCLUDED_ */
