
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


/* q: 1 to 100 characters of UTF-8, so at most 400 bytes */
#define NGX_HTTP_INVOICES_Q_MAX        100

/* what a route of the list takes besides the filters */
#define NGX_HTTP_INVOICES_ARGS_PAGING  0x01   /* page, limit, the cursors */
#define NGX_HTTP_INVOICES_ARGS_FORMAT  0x02   /* format (the export) */

/* the range filters: created and dueDate in ms, amount in its unit */
#define NGX_HTTP_INVOICES_RANGE_CREATED  0
#define NGX_HTTP_INVOICES_RANGE_AMOUNT   1
#define NGX_HTTP_INVOICES_RANGE_DUE      2
#define NGX_HTTP_INVOICES_RANGES         3

/* the export's formats */
#define NGX_HTTP_INVOICES_FORMAT_CSV     0
#define NGX_HTTP_INVOICES_FORMAT_NDJSON  1


/*
 * A list query, checked and decoded (docs/openapi.yaml, "Finding
 * invoices").  Strings are NUL-ended, "" when not given.  A range keeps
 * an inclusive lower and an exclusive upper bound: gt/gte/lt/lte are
 * turned into those, and two bounds on one side keep the tighter.
 */
typedef struct {
    ngx_int_t    page;
    ngx_int_t    limit;
    ngx_uint_t   statuses;               /* bit i: statuses[i]; 0: any */
    char         team[24 + 1];
    char         customer[NGX_HTTP_INVOICES_ID_MAX + 1];
    char         currency[3 + 1];
    char         q[4 * NGX_HTTP_INVOICES_Q_MAX + 1];
    char         cursor[NGX_HTTP_INVOICES_ID_MAX + 1];
    ngx_uint_t   before;                 /* cursor is ending_before */
    ngx_uint_t   format;                 /* NGX_HTTP_INVOICES_FORMAT_* */
    ngx_uint_t   has_lower[NGX_HTTP_INVOICES_RANGES];
    ngx_uint_t   has_upper[NGX_HTTP_INVOICES_RANGES];
    int64_t      lower[NGX_HTTP_INVOICES_RANGES];   /* >= */
    int64_t      upper[NGX_HTTP_INVOICES_RANGES];   /* <  */
} ngx_http_invoices_list_query_t;


/* Stripe's invoice statuses, in the order of the statuses bits */
extern const char  *ngx_http_invoices_statuses[];


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


ngx_int_t ngx_http_invoices_parse_list_query(ngx_str_t *args,
    ngx_uint_t takes, ngx_http_invoices_list_query_t *query,
    ngx_http_invoices_invalid_t *invalid);
ngx_uint_t ngx_http_invoices_list_filtered(
    ngx_http_invoices_list_query_t *query);
ngx_uint_t ngx_http_invoices_object_id(const u_char *id, size_t len);

json_t *ngx_http_invoices_parse_create(u_char *body, size_t len,
    ngx_http_invoices_invalid_t *invalid);
ngx_int_t ngx_http_invoices_parse_action(u_char *body, size_t len,
    ngx_uint_t pay, char *payment_method, size_t size,
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
