
/*
 * ngx_http_invoices_module: an invoice admin API served inside nginx.
 * Shared types of the module's files.
 */


#ifndef _NGX_HTTP_INVOICES_MODULE_H_INCLUDED_
#define _NGX_HTTP_INVOICES_MODULE_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>


/* the release; scripts/deb names the Debian package after it */
#define NGX_HTTP_INVOICES_VERSION  "0.1.0"


#if !(NGX_THREADS)
#error ngx_http_invoices_module needs nginx built --with-threads
#endif

/*
 * Formats into a char array (ngx_vslprintf, bounded by its size) and
 * NUL-ends it; NGX_ERROR when the text did not fit, so that nothing is
 * sent truncated.  ngx_http_invoices_sprint(array, fmt, ...) takes the
 * size from the array itself, and does not compile for a pointer.
 */

static ngx_inline ngx_int_t
ngx_http_invoices_print(char *buf, size_t size, const char *fmt, ...)
{
    u_char   *p;
    va_list   args;

    va_start(args, fmt);
    p = ngx_vslprintf((u_char *) buf, (u_char *) buf + size - 1, fmt, args);
    va_end(args);

    *p = '\0';

    return (size_t) (p - (u_char *) buf) < size - 1 ? NGX_OK : NGX_ERROR;
}

#define ngx_http_invoices_is_array(a)                                         \
    (0 * sizeof(struct { int array:1 - 2 * __builtin_types_compatible_p(     \
         __typeof__(a), __typeof__(&(a)[0])); }))

#define ngx_http_invoices_sprint(buf, ...)                                    \
    ngx_http_invoices_print(buf, sizeof(buf) + ngx_http_invoices_is_array(buf), \
                            __VA_ARGS__)



/* an admin key, from the keys file (ngx_http_invoices_module.c) */
typedef struct {
    ngx_str_t                  name;          /* for logs and the audit */
    ngx_str_t                  key;
    ngx_uint_t                 write;         /* else GET and HEAD only */
} ngx_http_invoices_api_key_t;


typedef struct {
    ngx_flag_t                 admin;
    ngx_flag_t                 webhook;
    ngx_array_t               *webhook_secrets;  /* of ngx_str_t */
    time_t                     webhook_tolerance;
    ngx_str_t                  database;        /* libpq conninfo, NUL-ended */
    ngx_str_t                  thread_pool_name;
    ngx_thread_pool_t         *thread_pool;
    ngx_array_t               *api_keys;  /* of ngx_http_invoices_api_key_t */
    ngx_str_t                  api_keys_file;

    ngx_str_t                  currency;
    ngx_str_t                  stripe_api_base;
    ngx_str_t                  stripe_secret_key;   /* the key itself */
    ngx_str_t                  stripe_version;
    ngx_str_t                  stripe_thread_pool_name;
    ngx_thread_pool_t         *stripe_thread_pool;
    ngx_msec_t                 stripe_connect_timeout;
    ngx_msec_t                 stripe_timeout;
    ngx_uint_t                 stripe_max_retries;
    ngx_msec_t                 idempotency_lease;

    /* the background work (ngx_http_invoices_housekeeping.c) */
    ngx_msec_t                 reconcile;       /* 0: off */
    time_t                     event_retention;
    time_t                     idempotency_retention;

    /* set by "invoices_admin": the location it was given in */
    ngx_str_t                  prefix;
    ngx_http_core_loc_conf_t  *clcf;
} ngx_http_invoices_loc_conf_t;


#include "ngx_http_invoices_redis.h"


typedef struct {
    ngx_http_invoices_redis_conf_t  redis;   /* addr.len == 0: no cache */

    /*
     * the location whose database (and Stripe) the background work uses:
     * the one with invoices_reconcile, else the first invoices_admin
     */
    ngx_http_invoices_loc_conf_t   *housekeeping;
} ngx_http_invoices_main_conf_t;


typedef struct ngx_http_invoices_job_s  ngx_http_invoices_job_t;

/* per request */
typedef struct {
    ngx_http_invoices_job_t   *job;
    void                      *data;         /* the endpoint's, till the job */
    ngx_chain_t               *error_body;   /* replaces nginx's HTML page */
    ngx_uint_t                 endpoint;     /* for the metrics */
    ngx_http_invoices_api_key_t  *key;       /* the caller's admin key */
} ngx_http_invoices_ctx_t;


ngx_http_invoices_ctx_t *ngx_http_invoices_ctx(ngx_http_request_t *r);


extern ngx_module_t  ngx_http_invoices_module;


#endif /* _NGX_HTTP_INVOICES_MODULE_H_INCLUDED_ */
