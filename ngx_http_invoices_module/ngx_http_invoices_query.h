
/*
 * The list's filters as SQL (see ngx_http_invoices_query.c).
 */


#ifndef _NGX_HTTP_INVOICES_QUERY_H_INCLUDED_
#define _NGX_HTTP_INVOICES_QUERY_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>

#include "ngx_http_invoices_parse.h"


/* the statuses a filter may name (ngx_http_invoices_statuses) */
#define NGX_HTTP_INVOICES_STATUSES       5

/*
 * the most statement parameters the filters take: the statuses as one
 * array and each on its own (a page's branches), team, customer,
 * currency, q and the ranges' bounds
 */
#define NGX_HTTP_INVOICES_FILTER_PARAMS                                       \
    (1 + NGX_HTTP_INVOICES_STATUSES + 4 + 2 * NGX_HTTP_INVOICES_RANGES)

/* what ngx_http_invoices_query_filter() is asked for */
#define NGX_HTTP_INVOICES_FILTER_ROWS    0    /* conditions only */
#define NGX_HTTP_INVOICES_FILTER_PAGE    1    /* and the page's branches */


/*
 * One walk of an index for a page of equalities only: its own condition
 * (" AND i.status >= $5 AND i.status <= $5", or ""), and the columns it
 * leads with, which go first in its ORDER BY ("i.team_id DESC, i.status
 * DESC, ") and in the cursor's row comparison ("i.team_id, i.status, "
 * against "$3::bpchar, $5, ").
 */
typedef struct {
    u_char        cond[96];
    u_char        order[64];
    u_char        columns[48];
    u_char        values[48];
} ngx_http_invoices_branch_t;


/*
 * The filters of a query as " AND ..." conditions on "invoices i", with
 * their parameters numbered from "first" on; and, when they are only
 * equalities (status, team, customer, currency), the same conditions on
 * the kept counts "g" (invoices_group_count, or invoices_team_count when
 * no customer is named: migration 0006); for a range and no other
 * filter, the kept count's expression, and for a page of a narrow amount
 * or dueDate range alone, the buckets it walks.  For a page of equalities only,
 * its branches: one walk of one index, or one per status named, merged
 * (ngx_http_invoices_query.c says which); none when the planner chooses.
 */
typedef struct {
    ngx_str_t     where;                 /* NUL-ended; "" when none */
    ngx_str_t     groups;                /* NUL-ended; empty: count rows */
    u_char        kept[192];             /* a range alone: its kept
                                            count (migration 0012); ""
                                            otherwise */
    const char   *values[NGX_HTTP_INVOICES_FILTER_PARAMS];
    ngx_uint_t    nvalues;
    ngx_uint_t    collect;               /* a page of an amount or dueDate
                                            range: walk or collect, by the
                                            count (_read.c) */
    const char   *bucket;                /* a page of a narrow amount or
                                            dueDate range alone: walked per
                                            bucket, the bucket's expression
                                            (NULL otherwise) */
    u_char        series[320];           /* ... and its buckets: the
                                            generate_series() of them */
    ngx_uint_t    search;                /* q and no other filter: q's $k,
                                            its matches read alone (0
                                            otherwise) */
    ngx_uint_t    nbranches;
    ngx_http_invoices_branch_t  branches[NGX_HTTP_INVOICES_STATUSES];
} ngx_http_invoices_filter_t;


ngx_int_t ngx_http_invoices_query_filter(ngx_pool_t *pool,
    ngx_http_invoices_list_query_t *query, ngx_uint_t first,
    ngx_uint_t what, ngx_http_invoices_filter_t *filter);
ngx_uint_t ngx_http_invoices_query_equalities(
    ngx_http_invoices_list_query_t *query);
ngx_int_t ngx_http_invoices_query_one_range(
    ngx_http_invoices_list_query_t *query);
ngx_uint_t ngx_http_invoices_query_collects(
    ngx_http_invoices_list_query_t *query);
ngx_int_t ngx_http_invoices_query_key(ngx_pool_t *pool, const char *prefix,
    ngx_http_invoices_list_query_t *query, ngx_str_t *key);


#endif /* _NGX_HTTP_INVOICES_QUERY_H_INCLUDED_ */
