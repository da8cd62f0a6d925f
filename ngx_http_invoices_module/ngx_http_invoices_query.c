
/*
 * The list's filters (ngx_http_invoices_list_query_t, parsed by
 * ngx_http_invoices_parse.c) as SQL conditions with their parameters, for
 * the list, and as the text that names a filtered page in the caches.
 * Values never enter the SQL text: only parameter numbers do.
 */


#include <ngx_config.h>
#include <ngx_core.h>

#include "ngx_http_invoices_query.h"


/* the columns of the ranges, in NGX_HTTP_INVOICES_RANGE_* order */
static const char  *ngx_http_invoices_range_columns[] = {
    "i.stripe_created_at", "i.amount", "i.due_date"
};

/* the function that counts a range alone from kept counts (0012) */
static const char  *ngx_http_invoices_range_counts[] = {
    "invoices_created_count", "invoices_amount_count", "invoices_due_count"
};

/*
 * A range of amount or dueDate alone, bounded at both ends, is walked
 * bucket by bucket (migration 0012's indexes: the amount's thousands, the
 * due date's hour, then (createdAt, _id)) when it spans at most so many
 * buckets (100 thousands, a week of hours): each walk stops after a page,
 * so a page reads at most that many pages of index entries, and in the
 * two buckets at the range's ends what lies beyond it, whatever the number
 * of matches.  The buckets are the same expressions as the indexes',
 * taken of the bounds (the upper one exclusive); the series is capped
 * too, so that PostgreSQL estimates its rows (a parameter's series is a
 * thousand to it, which makes the walks look costly enough to be compiled
 * by its JIT on every run, for longer than they take).
 */
#define NGX_HTTP_INVOICES_AMOUNT_BUCKET  1000            /* as in 0012 */
#define NGX_HTTP_INVOICES_HOUR_MS        3600000

static const ngx_uint_t  ngx_http_invoices_range_max_buckets[] = {
    0, 100, 7 * 24
};

static const char  *ngx_http_invoices_range_buckets[] = {
    NULL,
    "(i.amount / 1000)",
    "date_bin(interval '1 hour', i.due_date, timestamptz 'epoch')"
};

static const char  *ngx_http_invoices_range_series[] = {
    NULL,
    "(SELECT generate_series($%ui::bigint / 1000, ($%ui::bigint - 1) / 1000)"
    " LIMIT %ui)",
    "(SELECT generate_series(date_bin(interval '1 hour', timestamptz 'epoch'"
    " + $%ui::bigint * interval '1 millisecond', timestamptz 'epoch'),"
    " date_bin(interval '1 hour', timestamptz 'epoch'"
    " + ($%ui::bigint - 1) * interval '1 millisecond', timestamptz 'epoch'),"
    " interval '1 hour') LIMIT %ui)"
};

#define NGX_HTTP_INVOICES_WHERE_MAX  2048


/* the equality whose index a page of equalities walks, if any */
typedef enum {
    NGX_HTTP_INVOICES_LEAD_NONE = 0,
    NGX_HTTP_INVOICES_LEAD_CUSTOMER,
    NGX_HTTP_INVOICES_LEAD_TEAM,
    NGX_HTTP_INVOICES_LEAD_CURRENCY
} ngx_http_invoices_lead_e;


static ngx_http_invoices_lead_e ngx_http_invoices_query_lead(
    ngx_http_invoices_list_query_t *query, ngx_uint_t *per_status);
static u_char *ngx_http_invoices_query_equal(u_char *p, u_char *last,
    const char *column, ngx_uint_t k, const char *cast, ngx_uint_t lead,
    u_char *value, size_t size);
static ngx_int_t ngx_http_invoices_query_branch(
    ngx_http_invoices_filter_t *filter, const char *column,
    const u_char *value, ngx_uint_t status, const char *dir);
static ngx_uint_t ngx_http_invoices_query_buckets(
    ngx_http_invoices_list_query_t *query, ngx_int_t range);
static const char *ngx_http_invoices_query_int64(ngx_pool_t *pool,
    int64_t v);


ngx_int_t
ngx_http_invoices_query_filter(ngx_pool_t *pool,
    ngx_http_invoices_list_query_t *query, ngx_uint_t first,
    ngx_uint_t what, ngx_http_invoices_filter_t *filter)
{
    u_char                    *p, *last, *a, *alast, *g, *glast;
    ngx_uint_t                 i, n, k, counted, per_status;
    const char                *v, *op, *column, *dir;
    ngx_http_invoices_lead_e   lead;
    u_char                     value[24], *c, *clast;
    ngx_int_t                  alone;
    ngx_uint_t                 bound[NGX_HTTP_INVOICES_RANGES][2];

    ngx_memzero(filter, sizeof(ngx_http_invoices_filter_t));

    filter->where.data = ngx_pnalloc(pool, 2 * NGX_HTTP_INVOICES_WHERE_MAX);
    if (filter->where.data == NULL) {
        return NGX_ERROR;
    }

    p = filter->where.data;
    last = p + NGX_HTTP_INVOICES_WHERE_MAX - 1;
    g = last + 1;
    glast = g + NGX_HTTP_INVOICES_WHERE_MAX - 1;
    filter->groups.data = g;
    counted = 1;
    per_status = 0;
    ngx_memzero(bound, sizeof(bound));
    column = NULL;
    value[0] = '\0';
    dir = query->before ? "ASC" : "DESC";

#define param(value)                                                          \
    (filter->values[filter->nvalues] = (value),                               \
     first + filter->nvalues++)

    lead = (what == NGX_HTTP_INVOICES_FILTER_PAGE)
           ? ngx_http_invoices_query_lead(query, &per_status)
           : NGX_HTTP_INVOICES_LEAD_NONE;

    if (query->statuses) {
        /* a PostgreSQL array literal of the statuses: "{open,paid}" */

        a = ngx_pnalloc(pool, 64);
        if (a == NULL) {
            return NGX_ERROR;
        }

        alast = a + 63;
        v = (const char *) a;
        *a++ = '{';

        for (i = 0, n = 0; ngx_http_invoices_statuses[i]; i++) {
            if (query->statuses & (1U << i)) {
                a = ngx_slprintf(a, alast, "%s%s", n++ ? "," : "",
                                 ngx_http_invoices_statuses[i]);
            }
        }

        *a++ = '}';
        *a = '\0';

        k = param(v);
        g = ngx_slprintf(g, glast, " AND g.status = ANY($%ui::text[])", k);

        if (!per_status) {
            p = ngx_slprintf(p, last, " AND i.status = ANY($%ui::text[])",
                             k);
        }
    }

    if (query->team[0]) {
        k = param(query->team);
        p = ngx_http_invoices_query_equal(p, last, "i.team_id", k,
                                          "::bpchar",
                                          lead == NGX_HTTP_INVOICES_LEAD_TEAM,
                                          value, sizeof(value));
        g = ngx_slprintf(g, glast, " AND g.team_key = $%ui::bpchar", k);
    }

    if (query->customer[0]) {
        k = param(query->customer);
        p = ngx_http_invoices_query_equal(p, last, "i.stripe_customer_id", k,
                                   "", lead == NGX_HTTP_INVOICES_LEAD_CUSTOMER,
                                   value, sizeof(value));
        g = ngx_slprintf(g, glast, " AND g.customer_key = $%ui", k);
    }

    if (query->currency[0]) {
        k = param(query->currency);
        p = ngx_http_invoices_query_equal(p, last, "i.currency", k, "",
                                   lead == NGX_HTTP_INVOICES_LEAD_CURRENCY,
                                   value, sizeof(value));
        g = ngx_slprintf(g, glast, " AND g.currency = $%ui", k);
    }

    switch (lead) {
    case NGX_HTTP_INVOICES_LEAD_CUSTOMER:
        column = "i.stripe_customer_id";
        break;
    case NGX_HTTP_INVOICES_LEAD_TEAM:
        column = "i.team_id";
        break;
    case NGX_HTTP_INVOICES_LEAD_CURRENCY:
        column = "i.currency";
        break;
    default:
        break;
    }

    if (per_status) {
        /* a branch per status, each with the status's name as its own $k */

        for (i = 0; ngx_http_invoices_statuses[i]; i++) {
            if (!(query->statuses & (1U << i))) {
                continue;
            }

            if (ngx_http_invoices_query_branch(filter, column, value,
                        param(ngx_http_invoices_statuses[i]), dir)
                != NGX_OK)
            {
                return NGX_ERROR;
            }
        }

    } else if (column) {
        if (ngx_http_invoices_query_branch(filter, column, value, 0, dir)
            != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    for (i = 0; i < NGX_HTTP_INVOICES_RANGES; i++) {

        for (n = 0; n < 2; n++) {

            if (n == 0 ? !query->has_lower[i] : !query->has_upper[i]) {
                continue;
            }

            v = ngx_http_invoices_query_int64(pool, n == 0 ? query->lower[i]
                                                           : query->upper[i]);
            if (v == NULL) {
                return NGX_ERROR;
            }

            op = (n == 0) ? ">=" : "<";
            counted = 0;
            k = param(v);
            bound[i][n] = k;

            if (i == NGX_HTTP_INVOICES_RANGE_AMOUNT) {
                /* its thousands too: the amount's index is by them (0012) */
                p = ngx_slprintf(p, last, " AND %s %s $%ui::bigint",
                                 ngx_http_invoices_range_columns[i], op, k);
                p = ngx_slprintf(p, last, n == 0
                        ? " AND (i.amount / 1000) >= $%ui::bigint / 1000"
                        : " AND (i.amount / 1000) <= ($%ui::bigint - 1) / 1000",
                        k);
                continue;
            }

            p = ngx_slprintf(p, last,
                             " AND %s %s timestamptz 'epoch'"
                             " + $%ui::bigint * interval '1 millisecond'",
                             ngx_http_invoices_range_columns[i], op, k);
        }
    }

    if (query->q[0]) {
        n = param(query->q);
        counted = 0;

        /*
         * every invoice q matches, field by field, each from its own
         * index (migration 0014); a page of q alone (no condition before
         * it) is read by _read.c from invoices_search_page() instead,
         * which counts a matching team's invoices without reading them
         */

        if (p == filter->where.data) {
            filter->search = n;          /* no other condition written */
        }

        p = ngx_slprintf(p, last,
                         " AND i.id IN (SELECT s.id"
                         " FROM invoices_search_matches($%ui) s)", n);
    }

    filter->collect = (what == NGX_HTTP_INVOICES_FILTER_PAGE
                       && ngx_http_invoices_query_collects(query));

    alone = ngx_http_invoices_query_one_range(query);

    if (alone >= 0) {
        /*
         * a range and nothing else: counted from buckets (migration
         * 0012), by a function in FROM, so that it runs once (an
         * expression in the count's SELECT list would be pulled up into
         * the page's join and run for every row of the page)
         */

        c = filter->kept;
        clast = filter->kept + sizeof(filter->kept) - 1;
        c = ngx_slprintf(c, clast, "SELECT n FROM %s(",
                         ngx_http_invoices_range_counts[alone]);

        for (n = 0; n < 2; n++) {
            if (bound[alone][n] == 0) {
                c = ngx_slprintf(c, clast, "NULL");

            } else if (alone == NGX_HTTP_INVOICES_RANGE_AMOUNT) {
                c = ngx_slprintf(c, clast, "$%ui::bigint", bound[alone][n]);

            } else {
                c = ngx_slprintf(c, clast, "timestamptz 'epoch' + $%ui::bigint"
                                 " * interval '1 millisecond'",
                                 bound[alone][n]);
            }

            c = ngx_slprintf(c, clast, n ? ") AS n" : ", ");
        }

        if (c == clast) {
            return NGX_ERROR;            /* cannot happen: sized for it */
        }

        *c = '\0';

        if (what == NGX_HTTP_INVOICES_FILTER_PAGE
            && ngx_http_invoices_query_buckets(query, alone)
               <= ngx_http_invoices_range_max_buckets[alone])
        {
            filter->bucket = ngx_http_invoices_range_buckets[alone];
            c = ngx_slprintf(filter->series,
                             filter->series + sizeof(filter->series) - 1,
                             ngx_http_invoices_range_series[alone],
                             bound[alone][0], bound[alone][1],
                             ngx_http_invoices_range_max_buckets[alone]);

            if (c == filter->series + sizeof(filter->series) - 1) {
                return NGX_ERROR;        /* cannot happen: sized for it */
            }

            *c = '\0';
            filter->collect = 0;
        }
    }

#undef param

    if (p == last || g == glast) {
        return NGX_ERROR;                /* cannot happen: 2 kB is plenty */
    }

    *p = '\0';
    filter->where.len = p - filter->where.data;

    *g = '\0';
    filter->groups.len = counted ? (size_t) (g - filter->groups.data) : 0;

    return NGX_OK;
}


/*
 * How a page of equalities only walks: the index of one equality
 * (migration 0006: the column, then (createdAt, _id), all descending),
 * stopping after limit + 1 rows.  Left to itself PostgreSQL may walk the
 * list's own index instead and filter, as it believes the matches spread
 * evenly over time; when the newest rows hold none (a month of one
 * currency) that reads every one of them.  So the lead's equality is
 * written as a closed range (>= and <= the value), which the planner does
 * not fold into a constant, and the lead goes first in the ORDER BY: only
 * its own index gives that order.  The fewest rows first: a customer's
 * (the statuses filtered on the way), else a team's, else a currency's.
 *
 * Statuses are walked one by one ("per_status"): a branch per status
 * named, each with its own LIMIT, merged by the page (no index gives one
 * order for two values).  With a team, each branch walks (team, status)
 * (migration 0007): a team whose newest invoices are all open would
 * otherwise be read through to its paid ones.  Without one, each walks
 * the status's index, the currency filtered on the way; except one
 * status with a currency: the currency leads, as few currencies mix.
 * With a range or q the planner chooses: no index of ours stops early
 * there.
 */

static ngx_http_invoices_lead_e
ngx_http_invoices_query_lead(ngx_http_invoices_list_query_t *query,
    ngx_uint_t *per_status)
{
    ngx_uint_t  several;

    *per_status = 0;

    if (!ngx_http_invoices_query_equalities(query)) {
        return NGX_HTTP_INVOICES_LEAD_NONE;
    }

    if (query->customer[0]) {
        return NGX_HTTP_INVOICES_LEAD_CUSTOMER;
    }

    if (query->team[0]) {
        *per_status = (query->statuses != 0);
        return NGX_HTTP_INVOICES_LEAD_TEAM;
    }

    several = (query->statuses & (query->statuses - 1)) != 0;

    if (query->currency[0] && !several) {
        return NGX_HTTP_INVOICES_LEAD_CURRENCY;
    }

    *per_status = (query->statuses != 0);

    return NGX_HTTP_INVOICES_LEAD_NONE;
}


/* no range and no q: the filters given, if any, are equalities */

ngx_uint_t
ngx_http_invoices_query_equalities(ngx_http_invoices_list_query_t *query)
{
    ngx_uint_t  i;

    if (query->q[0]) {
        return 0;
    }

    for (i = 0; i < NGX_HTTP_INVOICES_RANGES; i++) {
        if (query->has_lower[i] || query->has_upper[i]) {
            return 0;
        }
    }

    return 1;
}


/* the range given with no other filter (NGX_HTTP_INVOICES_RANGE_*), or -1 */

ngx_int_t
ngx_http_invoices_query_one_range(ngx_http_invoices_list_query_t *query)
{
    ngx_int_t   alone;
    ngx_uint_t  i;

    if (query->statuses || query->team[0] || query->customer[0]
        || query->currency[0] || query->q[0])
    {
        return -1;
    }

    alone = -1;

    for (i = 0; i < NGX_HTTP_INVOICES_RANGES; i++) {
        if (query->has_lower[i] || query->has_upper[i]) {
            if (alone >= 0) {
                return -1;
            }

            alone = i;
        }
    }

    return alone;
}


/*
 * The number of buckets a range of amount or dueDate spans, as the walks
 * count them (see ngx_http_invoices_range_max_buckets); NGX_MAX_INT_T_VALUE
 * when it is open at an end, or is the createdAt range (walked from the
 * list's own index); 0 when it is empty.
 */

static ngx_uint_t
ngx_http_invoices_query_buckets(ngx_http_invoices_list_query_t *query,
    ngx_int_t range)
{
    int64_t  lo, hi, w;

    if (range == NGX_HTTP_INVOICES_RANGE_CREATED
        || !query->has_lower[range] || !query->has_upper[range])
    {
        return NGX_MAX_INT_T_VALUE;
    }

    lo = query->lower[range];
    hi = query->upper[range];

    if (lo >= hi) {
        return 0;
    }

    if (range == NGX_HTTP_INVOICES_RANGE_AMOUNT) {
        /* truncated towards zero, as PostgreSQL divides a bigint */
        w = NGX_HTTP_INVOICES_AMOUNT_BUCKET;
        return (ngx_uint_t) ((hi - 1) / w - lo / w + 1);
    }

    /* from 1970 on (ngx_http_invoices_parse.c): floor is truncation */
    w = NGX_HTTP_INVOICES_HOUR_MS;
    return (ngx_uint_t) ((hi - 1) / w - lo / w + 1);
}


/*
 * a range of amount or dueDate and no q: the page is walked or collected
 * by the count (ngx_http_invoices_read.c), whatever the bounds
 */

ngx_uint_t
ngx_http_invoices_query_collects(ngx_http_invoices_list_query_t *query)
{
    ngx_uint_t  i;

    if (query->q[0]) {
        return 0;
    }

    for (i = NGX_HTTP_INVOICES_RANGE_AMOUNT; i < NGX_HTTP_INVOICES_RANGES; i++)
    {
        if (query->has_lower[i] || query->has_upper[i]) {
            return 1;
        }
    }

    return 0;
}


/* "column = $k", or for the lead the closed range and its "$k" */

static u_char *
ngx_http_invoices_query_equal(u_char *p, u_char *last, const char *column,
    ngx_uint_t k, const char *cast, ngx_uint_t lead, u_char *value,
    size_t size)
{
    u_char  *v;

    if (!lead) {
        return ngx_slprintf(p, last, " AND %s = $%ui%s", column, k, cast);
    }

    v = ngx_slprintf(value, value + size - 1, "$%ui%s", k, cast);
    *v = '\0';

    return ngx_slprintf(p, last, " AND %s >= $%ui%s AND %s <= $%ui%s",
                        column, k, cast, column, k, cast);
}


/*
 * a branch: the lead's column (or none), then the status $k (or none), in
 * the direction the page reads (ending_before reads upwards)
 */

static ngx_int_t
ngx_http_invoices_query_branch(ngx_http_invoices_filter_t *filter,
    const char *column, const u_char *value, ngx_uint_t status,
    const char *dir)
{
    u_char                      *c, *o, *l, *v;
    ngx_http_invoices_branch_t  *b;

    b = &filter->branches[filter->nbranches++];

#define end(field)  (b->field + sizeof(b->field) - 1)

    c = b->cond;
    o = b->order;
    l = b->columns;
    v = b->values;

    if (column) {
        o = ngx_slprintf(o, end(order), "%s %s, ", column, dir);
        l = ngx_slprintf(l, end(columns), "%s, ", column);
        v = ngx_slprintf(v, end(values), "%s, ", value);
    }

    if (status) {
        c = ngx_slprintf(c, end(cond),
                         " AND i.status >= $%ui AND i.status <= $%ui",
                         status, status);
        o = ngx_slprintf(o, end(order), "i.status %s, ", dir);
        l = ngx_slprintf(l, end(columns), "i.status, ");
        v = ngx_slprintf(v, end(values), "$%ui, ", status);
    }

    if (c == end(cond) || o == end(order) || l == end(columns)
        || v == end(values))
    {
        return NGX_ERROR;                /* cannot happen: sized for both */
    }

#undef end

    *c = '\0';
    *o = '\0';
    *l = '\0';
    *v = '\0';

    return NGX_OK;
}


/*
 * The text that tells one filtered page from another in the caches: the
 * prefix ("" for the list), ":<page>:<limit>" as for the plain list, then
 * each filter given.  q goes last with its length, so no value can pose
 * as another.
 */

ngx_int_t
ngx_http_invoices_query_key(ngx_pool_t *pool, const char *prefix,
    ngx_http_invoices_list_query_t *query, ngx_str_t *key)
{
    u_char      *p, *last;
    size_t       size;
    ngx_uint_t   i;

    size = 1024 + ngx_strlen(prefix) + sizeof(query->q)
           + sizeof(query->cursor);

    key->data = ngx_pnalloc(pool, size);
    if (key->data == NULL) {
        return NGX_ERROR;
    }

    p = key->data;
    last = p + size;

    p = ngx_slprintf(p, last, "%s:%i:%i", prefix, query->page, query->limit);

    if (query->statuses) {
        p = ngx_slprintf(p, last, ":s%ui", query->statuses);
    }

    if (query->team[0]) {
        p = ngx_slprintf(p, last, ":t%s", query->team);
    }

    if (query->customer[0]) {
        p = ngx_slprintf(p, last, ":c%s", query->customer);
    }

    if (query->currency[0]) {
        p = ngx_slprintf(p, last, ":u%s", query->currency);
    }

    for (i = 0; i < NGX_HTTP_INVOICES_RANGES; i++) {
        if (query->has_lower[i]) {
            p = ngx_slprintf(p, last, ":r%ui>%L", i, query->lower[i]);
        }

        if (query->has_upper[i]) {
            p = ngx_slprintf(p, last, ":r%ui<%L", i, query->upper[i]);
        }
    }

    if (query->cursor[0]) {
        p = ngx_slprintf(p, last, ":%c%s", query->before ? 'b' : 'a',
                         query->cursor);
    }

    if (query->q[0]) {
        p = ngx_slprintf(p, last, ":q%uz:%s", ngx_strlen(query->q),
                         query->q);
    }

    if (p == last) {
        return NGX_ERROR;
    }

    key->len = p - key->data;

    return NGX_OK;
}


static const char *
ngx_http_invoices_query_int64(ngx_pool_t *pool, int64_t v)
{
    u_char  *s, *p;

    s = ngx_pnalloc(pool, NGX_INT64_LEN + 1);
    if (s == NULL) {
        return NULL;
    }

    p = ngx_slprintf(s, s + NGX_INT64_LEN, "%L", v);
    *p = '\0';

    return (const char *) s;
}
