
/*
 * Secrets at configuration time (see ngx_http_invoices_secret.c).
 */


#ifndef _NGX_HTTP_INVOICES_SECRET_H_INCLUDED_
#define _NGX_HTTP_INVOICES_SECRET_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>


/* "file:/path" or "env:NAME": one trimmed line, NUL-ended */
ngx_int_t ngx_http_invoices_secret_load(ngx_conf_t *cf, ngx_str_t *spec,
    ngx_str_t *secret);

/* a whole secret file (at most 64 KiB, not readable by others) */
ngx_int_t ngx_http_invoices_secret_read(ngx_conf_t *cf, ngx_str_t *path,
    ngx_str_t *content);


#endif /* _NGX_HTTP_INVOICES_SECRET_H_INCLUDED_ */
