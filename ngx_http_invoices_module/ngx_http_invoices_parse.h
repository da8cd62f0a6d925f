
/*
 * The parsers of untrusted input, on plain buffers: no request, no pool,
 * no nginx state, so that t/fuzz/ can drive them directly.
 */


#ifndef _NGX_HTTP_INVOICES_PARSE_H_INCLUDED_
#define _NGX_HTTP_INVOICES_PARSE_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <jansson.h>


#define NGX_HTTP_INVOICES_PAGE_MAX     2147483647
#define NGX_HTTP_INVOICES_LIMIT_MAX    100
#define NGX_HTTP_INVOICES_LIMIT_DEF    10

#define NGX_HTTP_INVOICES_ITEMS_MAX    250
#define NGX_HTTP_INVOICES_AMOUNT_MAX   99999999
#define NGX_HTTP_INVOICES_TEXT_MAX     500

#define NGX_HTTP_INVOICES_V1_MAX       8

/* a Stripe object id: a prefix, then [A-Za-z0-9_], 255 bytes at most */
#define NGX_HTTP_INVOICES_ID_MAX       255

/* 9999-12-31T23:59:59Z: the last second PostgreSQL's timestamps keep */
#define NGX_HTTP_INVOICES_TIME_MAX     253402300799LL


/* why an input is refused, as a 400 names it */
typedef struct {
    const char  *code;                   /* "parameter_invalid", ... */
    const char  *message;
    char         param[64];
    ngx_uint_t   has_param;              /* an unknown key may be "" */
} ngx_http_invoices_invalid_t;


typedef struct {
    char        *data;                   /* malloc()ed, NUL-ended */
    size_t       len;
    size_t       size;
    ngx_uint_t   failed;
} ngx_http_invoices_form_t;


ngx_int_t ngx_http_invoices_parse_list_args(ngx_str_t *args,
    ngx_int_t *page, ngx_int_t *limit, ngx_http_invoices_invalid_t *invalid);

json_t *ngx_http_invoices_parse_create(u_char *body, size_t len,
    ngx_http_invoices_invalid_t *invalid);

const char *ngx_http_invoices_parse_signature(ngx_str_t *header,
    ngx_str_t *body, ngx_str_t *secrets, ngx_uint_t nsecrets, time_t now,
    time_t tolerance);
ngx_int_t ngx_http_invoices_hmac_hex(ngx_str_t *secret, ngx_str_t *t,
    ngx_str_t *body, u_char *hex);

ngx_uint_t ngx_http_invoices_stripe_id(const u_char *id, size_t len,
    const char *prefix);
ngx_uint_t ngx_http_invoices_stripe_time(int64_t t);

void ngx_http_invoices_form_add(ngx_http_invoices_form_t *form,
    const char *key, const char *value);
void ngx_http_invoices_form_free(ngx_http_invoices_form_t *form);


#endif /* _NGX_HTTP_INVOICES_PARSE_H_INCLUDED_ */
