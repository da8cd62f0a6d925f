
/*
 * The list's filters as SQL (see ngx_http_invoices_query.c).
 */


#ifndef _NGX_HTTP_INVOICES_QUERY_H_INCLUDED_
#define _NGX_HTTP_INVOICES_QUERY_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>

#include "ngx_http_invoices_parse.h"


/* the most statement parameters the filters take */
#define NGX_HTTP_INVOICES_FILTER_PARAMS  (5 + 2 * NGX_HTTP_INVOICES_RANGES)

/* what ngx_http_invoices_query_filter() is asked for */
#define NGX_HTTP_INVOICES_FILTER_ROWS    0    /* conditions only */
#define NGX_HTTP_INVOICES_FILTER_PAGE    1    /* and a lead for the page */


/*
 * The filters of a query as " AND ..." conditions on "invoices i", with
 * their parameters numbered from "first" on; and, when they are only
 * equalities (status, team, customer, currency), the same conditions on
 * the kept counts "g" (invoices_group_count, or invoices_team_count when
 * no customer is named: migration 0006).  For a page of equalities only,
 * the lead: the column whose index the page walks, and its value, to put
 * first in the ORDER BY and in the cursor's row comparison.
 */
typedef struct {
    ngx_str_t     where;                 /* NUL-ended; "" when none */
    ngx_str_t     groups;                /* NUL-ended; empty: count rows */
    const char   *values[NGX_HTTP_INVOICES_FILTER_PARAMS];
    ngx_uint_t    nvalues;
    const char   *lead;                  /* "i.currency", or NULL */
    u_char        lead_value[32];        /* "$3", "$4::bpchar" */
} ngx_http_invoices_filter_t;


ngx_int_t ngx_http_invoices_query_filter(ngx_pool_t *pool,
    ngx_http_invoices_list_query_t *query, ngx_uint_t first,
    ngx_uint_t what, ngx_http_invoices_filter_t *filter);
ngx_uint_t ngx_http_invoices_query_equalities(
    ngx_http_invoices_list_query_t *query);
ngx_int_t ngx_http_invoices_query_key(ngx_pool_t *pool, const char *prefix,
    ngx_http_invoices_list_query_t *query, ngx_str_t *key);


#endif /* _NGX_HTTP_INVOICES_QUERY_H_INCLUDED_ */
