
/*
 * The worker's Redis link: hiredis async on nginx's event loop.
 */


#ifndef _NGX_HTTP_INVOICES_REDIS_H_INCLUDED_
#define _NGX_HTTP_INVOICES_REDIS_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include <hiredis/hiredis.h>
#include <hiredis/async.h>


typedef struct {
    ngx_str_t     addr;             /* as given, for the log */
    ngx_str_t     host;             /* numeric, NUL-ended; or */
    ngx_str_t     unix_path;        /* NUL-ended */
    int           port;
    ngx_str_t     password;         /* the secret itself, or empty */
    ngx_int_t     db;
    ngx_msec_t    timeout;
    time_t        ttl;
    size_t        local;            /* the worker's copy; 0: none */
} ngx_http_invoices_redis_conf_t;


/* reply is NULL when Redis gave no usable answer (down, timeout, error) */
typedef void (*ngx_http_invoices_redis_pt)(ngx_http_request_t *r,
    void *data, redisReply *reply);


ngx_int_t ngx_http_invoices_redis_init(ngx_cycle_t *cycle,
    ngx_http_invoices_redis_conf_t *conf, void (*connected)(void));
ngx_int_t ngx_http_invoices_redis_subscribe(ngx_cycle_t *cycle,
    const char *channel, void (*message)(ngx_str_t *payload),
    void (*state)(ngx_uint_t subscribed));
void ngx_http_invoices_redis_probe(const char *key,
    void (*probed)(redisReply *reply));
ngx_uint_t ngx_http_invoices_redis_subscription(void);
void ngx_http_invoices_redis_exit(void);

ngx_int_t ngx_http_invoices_redis_call(ngx_http_request_t *r,
    ngx_http_invoices_redis_pt handler, void *data, int argc,
    const char **argv, const size_t *argvlen);
void ngx_http_invoices_redis_send(int argc, const char **argv,
    const size_t *argvlen);
ngx_uint_t ngx_http_invoices_redis_ready(void);


#endif /* _NGX_HTTP_INVOICES_REDIS_H_INCLUDED_ */
