
/*
 * The read endpoints: GET /admin/api/invoices (page, limit, the filters,
 * the cursors) and GET .../{id}.
 *
 * The event loop validates the input and posts a job; the pool thread runs
 * one parameterised statement and writes the whole JSON body
 * (ngx_http_invoices_row.c; the summary's with jansson), plus its ETag, so
 * the event loop only sends bytes.  The plain list runs
 * one prepared statement; a list with filters or a cursor runs a statement
 * built for it (ngx_http_invoices_query.c gives the conditions).
 */


#include "ngx_http_invoices_module.h"
#include "ngx_http_invoices_json.h"
#include "ngx_http_invoices_pg.h"
#include "ngx_http_invoices_read.h"
#include "ngx_http_invoices_cache.h"
#include "ngx_http_invoices_local.h"
#include "ngx_http_invoices_parse.h"
#include "ngx_http_invoices_query.h"
#include "ngx_http_invoices_row.h"
#include "ngx_http_invoices_metrics.h"


/* the list statement's parameters: limit + 1, offset, the filters, cursor */
#define NGX_HTTP_INVOICES_LIST_PARAMS  (3 + NGX_HTTP_INVOICES_FILTER_PARAMS)

typedef struct {
    ngx_http_invoices_list_query_t   query;
    const char  *sql;                /* the list's statement */
    ngx_uint_t   built;              /* sql was built for this request */
#define NGX_HTTP_INVOICES_READ_BUILT   1  /* ... its plan for its values */
#define NGX_HTTP_INVOICES_READ_SHAPED  2  /* ... its plan kept: see below */
    ngx_uint_t   summary;            /* the summary, not the list */
    ngx_uint_t   col;                /* its first invoice column */
    const char  *values[NGX_HTTP_INVOICES_LIST_PARAMS];
    int          nvalues;
    ngx_uint_t   by_stripe_id;
    char        *id;                 /* NUL-ended, validated */
    ngx_str_t    page_key;           /* ":<page>:<limit>", for the cache */
    ngx_str_t    gen;                /* a miss: store under this */
    ngx_atomic_uint_t  local;        /* the worker's copy: its version */
    ngx_str_t   *x_cache;
    u_char       etag[20];           /* "16 hex digits", from the thread */
    size_t       etag_len;
    char         offset_text[NGX_INT64_LEN + 1];
    char         limit_text[NGX_INT_T_LEN + 1];
} ngx_http_invoices_read_t;


static ngx_int_t ngx_http_invoices_list_query(ngx_http_request_t *r,
    ngx_http_invoices_read_t *rd);
static ngx_int_t ngx_http_invoices_read_many(ngx_http_request_t *r,
    ngx_uint_t summary);
static ngx_int_t ngx_http_invoices_list_statement(ngx_http_request_t *r,
    ngx_http_invoices_read_t *rd);
static ngx_int_t ngx_http_invoices_summary_statement(ngx_http_request_t *r,
    ngx_http_invoices_read_t *rd);
static void ngx_http_invoices_summary_run(ngx_http_invoices_job_t *job);
static PGresult *ngx_http_invoices_read_statement(
    ngx_http_invoices_job_t *job);
static void ngx_http_invoices_list_cached(ngx_http_request_t *r, void *data,
    ngx_int_t outcome, ngx_str_t *gen, ngx_str_t *value, ngx_msec_t left);
static ngx_int_t ngx_http_invoices_read_send(ngx_http_request_t *r,
    ngx_http_invoices_job_t *job, ngx_str_t *etag, u_char *body, size_t len);
static void ngx_http_invoices_list_run(ngx_http_invoices_job_t *job);
static void ngx_http_invoices_get_run(ngx_http_invoices_job_t *job);
static void ngx_http_invoices_read_done(ngx_http_invoices_job_t *job,
    json_t *json);
static void ngx_http_invoices_read_body(ngx_http_invoices_job_t *job,
    u_char *body, u_char *last);
static ngx_int_t ngx_http_invoices_read_finish(ngx_http_request_t *r,
    ngx_http_invoices_job_t *job);


static ngx_str_t  ngx_http_invoices_hit = ngx_string("HIT");
static ngx_str_t  ngx_http_invoices_miss = ngx_string("MISS");
static ngx_str_t  ngx_http_invoices_bypass = ngx_string("BYPASS");


/*
 * count and page in one statement, one snapshot; count comes even for an
 * empty page.  The count is kept by triggers (migration 0003) in 16 slots:
 * counting the table would scan all of it on every request.  $1 is one
 * more than the page holds: the extra row tells whether there are more.
 */
#define NGX_HTTP_INVOICES_KEPT_COUNT                                          \
    "SELECT coalesce(sum(n), 0) AS n FROM invoices_count"

static const char  ngx_http_invoices_list_sql[] =
    "WITH c AS (" NGX_HTTP_INVOICES_KEPT_COUNT ") "
    "SELECT c.n, p.* FROM c LEFT JOIN LATERAL ("
    "SELECT " NGX_HTTP_INVOICES_COLUMNS ", i.stripe_created_at AS sort_at "
    NGX_HTTP_INVOICES_FROM
    "ORDER BY i.stripe_created_at DESC, i.id DESC "
    "LIMIT $1 OFFSET $2) p ON true "
    "ORDER BY p.sort_at DESC, p.id DESC";

/*
 * The same built per request: %s the cursor's CTE, the count, its "found"
 * column, and the page: one walk of an index (below), several merged, or
 * a walk or a collection chosen by the count.  The cursor's position is
 * two scalars, so that the row comparison with the walk's columns (the
 * lead's first when there is one: ngx_http_invoices_query.c) and
 * (stripe_created_at, id) can walk the index.
 *
 * Page 1 of equalities only (and of no filter; of a createdAt range
 * alone: the list's own index, whatever the bounds; of an amount or
 * dueDate range: walked per bucket when narrow and alone, else walked or
 * collected by the count) has its LIMIT written in
 * and runs prepared, once per text and connection (a "shaped" statement,
 * ngx_http_invoices_pg.c): its text depends only on which filters are
 * given, and its plan not on their values.  With "LIMIT $1" PostgreSQL
 * would plan it on every run (a parameter in LIMIT makes it assume 10% of
 * the rows are wanted, so the plan it would keep never looks cheaper than
 * a fresh one), and the planning costs more than the run
 * (docs/benchmarks.md).  Other pages, createdAt with other filters and q
 * keep "LIMIT $1 OFFSET $2" and a plan made for their values, but for q
 * alone: its page comes from invoices_search_page() (migration 0015),
 * whose estimate is the same for every value, so its statement (one text
 * per cursor's kind and direction) runs prepared too, planned once.
 */
static const char  ngx_http_invoices_list_built_sql[] =
    "WITH %sc AS (%s) "
    "SELECT c.n%s, p.* FROM c LEFT JOIN LATERAL (%s) p ON true "
    "ORDER BY p.sort_at DESC, p.id DESC";

/*
 * A walk: the columns, the conditions, the branch's, the cursor's, the
 * order (the branch's columns first) and the LIMIT
 */
static const char  ngx_http_invoices_list_walk_sql[] =
    "SELECT %s WHERE true%V%s%s "
    "ORDER BY %s i.stripe_created_at %s, i.id %s %s";

#define NGX_HTTP_INVOICES_WALK_ROWS                                           \
    NGX_HTTP_INVOICES_COLUMNS ", i.stripe_created_at AS sort_at "             \
    NGX_HTTP_INVOICES_FROM

/* when merged, a walk takes only what orders it, from its index alone */
#define NGX_HTTP_INVOICES_WALK_KEYS                                           \
    "i.stripe_created_at AS sort_at, i.id FROM invoices i"

/*
 * A range of amount or dueDate with other filters, or open at an end, or
 * broad (else see the bucket walks below): the list's own index is
 * walked, filtering, when many invoices match (the count,
 * c.n, is known first: over a twentieth of all), else the matches are
 * collected from the range's own index (it holds createdAt and _id:
 * migration 0009's on the due date, 0012's by the amount's thousands) and
 * sorted, and only the page's rows read in full.
 * Walking finds a page of many matches fast when they spread over time,
 * but reads everything newer than the first match when they do not (due
 * dates follow creation dates); collecting costs in proportion to the
 * count, which the count has read already.  The ORDER BY of an
 * expression keeps the planner from walking the list's index there.
 */
#define NGX_HTTP_INVOICES_MANY                                                \
    "c.n * 20 > (" NGX_HTTP_INVOICES_KEPT_COUNT ")"

/*
 * A narrow range of amount or dueDate alone (ngx_http_invoices_query.c):
 * one walk per bucket of the range, each of its own index's entries only
 * (migration 0012; the bucket's expression first in the ORDER BY, so that
 * only that index gives the order), merged like the walks below; %s the
 * buckets' series and the bucket's expression.
 */
static const char  ngx_http_invoices_list_bucket_sql[] =
    "SELECT w.* FROM %s s (b) CROSS JOIN LATERAL ("
    "SELECT i.stripe_created_at AS sort_at, i.id FROM invoices i "
    "WHERE %s = s.b%V%s "
    "ORDER BY %s %s, i.stripe_created_at %s, i.id %s %s) w";

/*
 * A page with q: the matches are read once (finding them costs the most,
 * docs/benchmarks.md), into "m", for the count and the page.  For q alone,
 * "m" is what invoices_search_page() gives (migration 0015): the invoices
 * that may be on the page (offset and LIMIT, after the cursor, in the
 * direction read: the two %s) and the count, in a row with no _id.
 */
static const char  ngx_http_invoices_list_matches_sql[] =
    "m AS MATERIALIZED (SELECT i.stripe_created_at AS sort_at, i.id"
    " FROM invoices i WHERE true%V), ";

static const char  ngx_http_invoices_list_search_sql[] =
    "m AS MATERIALIZED (SELECT s.sort_at, s.id, s.n"
    " FROM invoices_search_page($%ui, $1::bigint + $2::bigint, %s, %s) s), ";

static const char  ngx_http_invoices_list_once_sql[] =
    "SELECT " NGX_HTTP_INVOICES_COLUMNS ", i.stripe_created_at AS sort_at "
    "FROM (SELECT m.sort_at, m.id FROM m WHERE m.id IS NOT NULL%s "
    "ORDER BY m.sort_at %s, m.id %s %s) k "
    "JOIN invoices i ON i.id = k.id LEFT JOIN teams t ON t.id = i.team_id";

static const char  ngx_http_invoices_list_collect_sql[] =
    "SELECT " NGX_HTTP_INVOICES_COLUMNS ", i.stripe_created_at AS sort_at "
    "FROM (SELECT i.stripe_created_at AS sort_at, i.id FROM invoices i "
    "WHERE true%V%s AND NOT " NGX_HTTP_INVOICES_MANY " "
    "ORDER BY i.stripe_created_at + interval '0 s' %s, i.id %s %s) k "
    "JOIN invoices i ON i.id = k.id LEFT JOIN teams t ON t.id = i.team_id";

/*
 * Walks merged (one per status: ngx_http_invoices_query.c): each takes
 * as many rows as the page could need from it, the page the first of all
 * of them, and only those are read in full; %s the walks joined by
 * " UNION ALL ", the order, the LIMIT
 */
static const char  ngx_http_invoices_list_merge_sql[] =
    "SELECT " NGX_HTTP_INVOICES_COLUMNS ", i.stripe_created_at AS sort_at "
    "FROM (SELECT * FROM (%s) w ORDER BY w.sort_at %s, w.id %s %s) k "
    "JOIN invoices i ON i.id = k.id LEFT JOIN teams t ON t.id = i.team_id";

static const char  ngx_http_invoices_get_sql[] =
    "SELECT " NGX_HTTP_INVOICES_COLUMNS NGX_HTTP_INVOICES_FROM
    "WHERE i.id = $1";

static const char  ngx_http_invoices_get_stripe_sql[] =
    "SELECT " NGX_HTTP_INVOICES_COLUMNS NGX_HTTP_INVOICES_FROM
    "WHERE i.stripe_invoice_id = $1";


ngx_int_t
ngx_http_invoices_list(ngx_http_request_t *r,
    ngx_http_invoices_loc_conf_t *ilcf)
{
    return ngx_http_invoices_read_many(r, 0);
}


ngx_int_t
ngx_http_invoices_summary(ngx_http_request_t *r,
    ngx_http_invoices_loc_conf_t *ilcf)
{
    return ngx_http_invoices_read_many(r, 1);
}


/*
 * The list and the summary: the same filters, the same caches (the
 * summary's key starts with ":summary"), each its own statement.
 */

static ngx_int_t
ngx_http_invoices_read_many(ngx_http_request_t *r, ngx_uint_t summary)
{
    ngx_str_t                     etag, body;
    ngx_http_invoices_read_t     *rd;
    ngx_http_invoices_invalid_t   invalid;

    rd = ngx_pcalloc(r->pool, sizeof(ngx_http_invoices_read_t));
    if (rd == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rd->summary = summary;

    if (ngx_http_invoices_parse_list_query(&r->args,
                                           summary
                                           ? 0 : NGX_HTTP_INVOICES_ARGS_PAGING,
                                           &rd->query, &invalid)
        != NGX_OK)
    {
        ngx_log_debug2(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                       "invoices list: refused \"%s\": %s",
                       invalid.param, invalid.message);

        return ngx_http_invoices_send_error(r, NGX_HTTP_BAD_REQUEST,
                   "invalid_request_error", invalid.code, invalid.message,
                   invalid.has_param ? invalid.param : NULL);
    }

    rd->x_cache = &ngx_http_invoices_bypass;

    if (ngx_http_invoices_cache_enabled()) {
        if (ngx_http_invoices_query_key(r->pool, summary ? ":summary" : "",
                                        &rd->query, &rd->page_key)
            != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        /* the worker's own copy first: no round trip at all */

        rd->local = ngx_http_invoices_local_version();

        if (rd->local
            && ngx_http_invoices_local_get(r, &rd->page_key, &etag, &body)
               == NGX_OK)
        {
            ngx_http_invoices_metrics_cache(NGX_HTTP_INVOICES_CACHE_HIT_LOCAL);
            return ngx_http_invoices_read_send(r, NULL, &etag, body.data,
                                               body.len);
        }

        if (ngx_http_invoices_cache_lookup(r, &rd->page_key,
                                           ngx_http_invoices_list_cached, rd)
            == NGX_OK)
        {
            r->main->count++;
            return NGX_DONE;
        }
    }

    return ngx_http_invoices_list_query(r, rd);
}


/*
 * The list's statement and its parameters: the prepared one for the plain
 * list's later pages, or one built for this page (see above).
 */

static ngx_int_t
ngx_http_invoices_list_statement(ngx_http_request_t *r,
    ngx_http_invoices_read_t *rd)
{
    u_char                          *sql, *last, *walks, *merged, *p, *a,
                                    *ctes;
    size_t                           size;
    ngx_uint_t                       i, n, filtered, cursor, shaped, once;
    const char                      *count;
    u_char                           cte[128], after[256];
    u_char                           limit[NGX_INT_T_LEN + 8];
    const char                      *dir, *each;
    ngx_http_invoices_filter_t       filter;
    ngx_http_invoices_branch_t      *b, none;
    ngx_http_invoices_list_query_t  *q;

    q = &rd->query;

    rd->values[0] = rd->limit_text;
    rd->values[1] = rd->offset_text;
    rd->nvalues = 2;

    filtered = ngx_http_invoices_list_filtered(q);
    cursor = (q->cursor[0] != '\0');
    shaped = (q->page == 1
              && (ngx_http_invoices_query_equalities(q)
                  || ngx_http_invoices_query_one_range(q) >= 0
                  || ngx_http_invoices_query_collects(q)));

    if (!filtered && !cursor && !shaped) {
        ngx_log_debug0(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                       "invoices list: plain, the prepared statement");

        rd->sql = ngx_http_invoices_list_sql;
        rd->col = 1;
        return NGX_OK;
    }

    if (shaped) {
        /* the LIMIT in the text, no OFFSET: the parameters start at $1 */
        rd->nvalues = 0;
        last = ngx_slprintf(limit, limit + sizeof(limit) - 1, "LIMIT %i",
                            q->limit + 1);

    } else {
        last = ngx_cpymem(limit, "LIMIT $1 OFFSET $2",
                          sizeof("LIMIT $1 OFFSET $2") - 1);
    }

    *last = '\0';

    if (ngx_http_invoices_query_filter(r->pool, q, rd->nvalues + 1,
                                       NGX_HTTP_INVOICES_FILTER_PAGE, &filter)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    for (i = 0; i < filter.nvalues; i++) {
        rd->values[rd->nvalues++] = filter.values[i];
    }

    /* the count of the filters (not of the cursor); the kept one if none */

    size = sizeof(ngx_http_invoices_list_built_sql)
           + sizeof(ngx_http_invoices_list_merge_sql)
           + sizeof(ngx_http_invoices_list_collect_sql) + 2 * filter.where.len
           + sizeof(ngx_http_invoices_list_bucket_sql) + sizeof(filter.series)
           + sizeof(ngx_http_invoices_list_once_sql)
           + NGX_HTTP_INVOICES_STATUSES
             * (sizeof(ngx_http_invoices_list_walk_sql)
                + sizeof(NGX_HTTP_INVOICES_WALK_ROWS) + filter.where.len
                + sizeof(ngx_http_invoices_branch_t) + 256)
           + 2 * filter.where.len + 1024;

    if (filtered) {
        count = ngx_pnalloc(r->pool, filter.where.len + 256);
        if (count == NULL) {
            return NGX_ERROR;
        }

        if (filter.kept[0]) {
            /* a range alone: its kept counts (migration 0012) */
            last = ngx_cpymem((u_char *) count, filter.kept,
                              ngx_strlen(filter.kept));

        } else if (filter.groups.len) {
            /*
             * equalities only: the kept counts (migration 0006), per
             * customer's group when a customer is named, else per team
             */
            last = ngx_slprintf((u_char *) count,
                                (u_char *) count + filter.where.len + 255,
                                "SELECT coalesce(sum(g.n), 0) AS n"
                                " FROM %s g WHERE true%V",
                                q->customer[0] ? "invoices_group_count"
                                               : "invoices_team_count",
                                &filter.groups);

        } else {
            last = ngx_slprintf((u_char *) count,
                                (u_char *) count + filter.where.len + 255,
                                "SELECT count(*) AS n FROM invoices i"
                                " WHERE true%V", &filter.where);
        }

        *last = '\0';

    } else {
        count = NGX_HTTP_INVOICES_KEPT_COUNT;
    }

    once = (q->q[0] != '\0');

    if (once) {
        count = filter.search ? "SELECT m.n FROM m WHERE m.id IS NULL"
                              : "SELECT count(*) AS n FROM m";
    }

    /*
     * The cursor: its invoice's position, found by _id or Stripe id; the
     * page lies after it in the direction read (ending_before reads
     * upwards, and the outer ORDER BY turns the page the right way).
     */

    cte[0] = '\0';

    if (cursor) {
        rd->values[rd->nvalues++] = q->cursor;

        last = ngx_slprintf(cte, cte + sizeof(cte) - 1,
                            "cur AS (SELECT stripe_created_at AS at, id"
                            " FROM invoices WHERE %s = $%i), ",
                            ngx_http_invoices_object_id((u_char *) q->cursor,
                                                        ngx_strlen(q->cursor))
                            ? "id" : "stripe_invoice_id",
                            rd->nvalues);
        *last = '\0';
    }

    n = sizeof(ngx_http_invoices_list_matches_sql) + filter.where.len
        + sizeof(ngx_http_invoices_list_search_sql) + 64
        + sizeof(cte);

    ctes = ngx_pnalloc(r->pool, n);
    if (ctes == NULL) {
        return NGX_ERROR;
    }

    last = ngx_slprintf(ctes, ctes + n - 1, "%s", cte);

    if (once && filter.search) {
        last = ngx_slprintf(last, ctes + n - 1,
                            ngx_http_invoices_list_search_sql,
                            filter.search,
                            cursor ? "(SELECT at FROM cur), (SELECT id FROM cur)"
                                   : "NULL, NULL",
                            q->before ? "true" : "false");

    } else if (once) {
        last = ngx_slprintf(last, ctes + n - 1,
                            ngx_http_invoices_list_matches_sql,
                            &filter.where);
    }

    *last = '\0';

    dir = q->before ? "ASC" : "DESC";
    ngx_memzero(&none, sizeof(ngx_http_invoices_branch_t));

    /* each of several walks may give the whole page, offset included */
    each = ((filter.nbranches > 1 || filter.bucket) && !shaped)
           ? "LIMIT $1::bigint + $2::bigint" : (const char *) limit;

    walks = ngx_pnalloc(r->pool, size);
    if (walks == NULL) {
        return NGX_ERROR;
    }

    p = walks;
    last = walks + size - 1;
    n = ngx_max(filter.nbranches, 1);

    for (i = 0; i < n; i++) {
        b = filter.nbranches ? &filter.branches[i] : &none;

        after[0] = '\0';

        if (cursor) {
            a = ngx_slprintf(after, after + sizeof(after) - 1,
                             " AND (%s i.stripe_created_at, i.id) %s"
                             " (%s (SELECT at FROM cur),"
                             " (SELECT id FROM cur))",
                             b->columns, q->before ? ">" : "<", b->values);
            *a = '\0';
        }

        if (n > 1) {
            p = ngx_slprintf(p, last, "%s(", i ? " UNION ALL " : "");
        }

        if (once) {
            a = after;

            if (cursor) {
                a = ngx_slprintf(after, after + sizeof(after) - 1,
                                 " AND (m.sort_at, m.id) %s"
                                 " ((SELECT at FROM cur),"
                                 " (SELECT id FROM cur))",
                                 q->before ? ">" : "<");
            }

            *a = '\0';

            p = ngx_slprintf(p, last, ngx_http_invoices_list_once_sql,
                             after, dir, dir, each);
            continue;
        }

        if (filter.bucket) {
            p = ngx_slprintf(p, last, ngx_http_invoices_list_bucket_sql,
                             filter.series, filter.bucket, &filter.where,
                             after, filter.bucket, dir, dir, dir, each);
            continue;
        }

        if (filter.collect) {
            p = ngx_slprintf(p, last, "(");
        }

        p = ngx_slprintf(p, last, ngx_http_invoices_list_walk_sql,
                         n > 1 ? NGX_HTTP_INVOICES_WALK_KEYS
                               : NGX_HTTP_INVOICES_WALK_ROWS,
                         &filter.where,
                         filter.collect ? " AND " NGX_HTTP_INVOICES_MANY
                                        : (char *) b->cond,
                         after, b->order, dir, dir, each);

        if (filter.collect) {
            p = ngx_slprintf(p, last, ") UNION ALL (");
            p = ngx_slprintf(p, last, ngx_http_invoices_list_collect_sql,
                             &filter.where, after, dir, dir, each);
        }

        if (n > 1 || filter.collect) {
            p = ngx_slprintf(p, last, ")");
        }
    }

    if (p == last) {
        return NGX_ERROR;                /* cannot happen: sized for it */
    }

    *p = '\0';

    sql = ngx_pnalloc(r->pool, size);
    if (sql == NULL) {
        return NGX_ERROR;
    }

    if (n > 1 || filter.bucket) {
        merged = ngx_pnalloc(r->pool, size);
        if (merged == NULL) {
            return NGX_ERROR;
        }

        last = ngx_slprintf(merged, merged + size - 1,
                            ngx_http_invoices_list_merge_sql,
                            walks, dir, dir, limit);
        *last = '\0';
        walks = merged;
    }

    last = ngx_slprintf(sql, sql + size - 1, ngx_http_invoices_list_built_sql,
                        ctes, count,
                        cursor ? ", (SELECT count(*) FROM cur) AS found" : "",
                        walks);

    if (last == sql + size - 1) {
        return NGX_ERROR;                /* cannot happen: sized for it */
    }

    *last = '\0';

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "invoices list: %s, %i parameters: %s",
                   (shaped || filter.search) ? "shaped" : "built",
                   rd->nvalues, sql);

    rd->sql = (const char *) sql;
    rd->built = (shaped || filter.search) ? NGX_HTTP_INVOICES_READ_SHAPED
                                          : NGX_HTTP_INVOICES_READ_BUILT;
    rd->col = cursor ? 2 : 1;

    return NGX_OK;
}


/*
 * The summary: count and sums per currency and status (never summed
 * across currencies), in one statement.  Rows stored before migration
 * 0005 have no amounts due, paid or remaining: they add 0 to those sums.
 */
#define NGX_HTTP_INVOICES_SUMMARY_COLUMNS                                     \
    "SELECT i.currency, i.status, count(*), coalesce(sum(i.amount), 0), "     \
    "coalesce(sum(i.amount_due), 0), coalesce(sum(i.amount_paid), 0), "       \
    "coalesce(sum(i.amount_remaining), 0) FROM invoices i"

#define NGX_HTTP_INVOICES_SUMMARY_ORDER                                       \
    " GROUP BY i.currency, i.status"                                          \
    " ORDER BY i.currency, invoices_status_rank(i.status), i.status"

static const char  ngx_http_invoices_summary_sql[] =
    NGX_HTTP_INVOICES_SUMMARY_COLUMNS NGX_HTTP_INVOICES_SUMMARY_ORDER;


static ngx_int_t
ngx_http_invoices_summary_statement(ngx_http_request_t *r,
    ngx_http_invoices_read_t *rd)
{
    u_char                      *sql, *last;
    size_t                       size;
    ngx_uint_t                   i;
    ngx_http_invoices_filter_t   filter;

    rd->nvalues = 0;
    rd->col = 0;

    if (!ngx_http_invoices_list_filtered(&rd->query)) {
        rd->sql = ngx_http_invoices_summary_sql;
        return NGX_OK;
    }

    if (ngx_http_invoices_query_filter(r->pool, &rd->query, 1,
                                       NGX_HTTP_INVOICES_FILTER_ROWS, &filter)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    for (i = 0; i < filter.nvalues; i++) {
        rd->values[rd->nvalues++] = filter.values[i];
    }

    size = sizeof(ngx_http_invoices_summary_sql) + filter.where.len + 128;

    sql = ngx_pnalloc(r->pool, size);
    if (sql == NULL) {
        return NGX_ERROR;
    }

    last = ngx_slprintf(sql, sql + size - 1,
                        NGX_HTTP_INVOICES_SUMMARY_COLUMNS " WHERE true%V"
                        NGX_HTTP_INVOICES_SUMMARY_ORDER,
                        &filter.where);
    *last = '\0';

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "invoices summary: %i parameters: %s", rd->nvalues, sql);

    rd->sql = (const char *) sql;
    rd->built = NGX_HTTP_INVOICES_READ_BUILT;

    return NGX_OK;
}


static ngx_int_t
ngx_http_invoices_list_query(ngx_http_request_t *r,
    ngx_http_invoices_read_t *rd)
{
    ngx_int_t                      rc;
    ngx_http_invoices_job_t       *job;
    ngx_http_invoices_loc_conf_t  *ilcf;

    /* the statement only now: an answer from a cache needs none */

    (void) ngx_http_invoices_sprint(rd->limit_text, "%i",
                                    rd->query.limit + 1);
    (void) ngx_http_invoices_sprint(rd->offset_text, "%L",
                                    (int64_t) (rd->query.page - 1)
                                    * rd->query.limit);

    rc = rd->summary ? ngx_http_invoices_summary_statement(r, rd)
                     : ngx_http_invoices_list_statement(r, rd);

    if (rc != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ilcf = ngx_http_get_module_loc_conf(r, ngx_http_invoices_module);

    job = ngx_http_invoices_job_create(r, ilcf);
    if (job == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    job->run = rd->summary ? ngx_http_invoices_summary_run
                           : ngx_http_invoices_list_run;
    job->finish = ngx_http_invoices_read_finish;
    job->data = rd;

    return ngx_http_invoices_job_run(r, job);
}


/* Redis answered (or not): the cached page, or PostgreSQL */

static void
ngx_http_invoices_list_cached(ngx_http_request_t *r, void *data,
    ngx_int_t outcome, ngx_str_t *gen, ngx_str_t *value, ngx_msec_t left)
{
    u_char                    *nl;
    ngx_int_t                  rc;
    ngx_str_t                  etag;
    ngx_connection_t          *c;
    ngx_http_invoices_read_t  *rd = data;

    c = r->connection;
    ngx_http_set_log_request(c->log, r);

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, c->log, 0,
                   "invoices list: Redis %s for page \"%V\"",
                   outcome == NGX_OK ? "hit"
                   : outcome == NGX_DECLINED ? "miss" : "unavailable",
                   &rd->page_key);

    nl = (outcome == NGX_OK) ? ngx_strlchr(value->data,
                                           value->data + value->len, '\n')
                             : NULL;

    if (nl) {
        /* stored as "<etag>\n<body>" */
        etag.data = value->data;
        etag.len = nl - value->data;
        rd->x_cache = &ngx_http_invoices_hit;
        ngx_http_invoices_metrics_cache(NGX_HTTP_INVOICES_CACHE_HIT_REDIS);

        ngx_http_invoices_local_put(&rd->page_key, rd->local, &etag, nl + 1,
                                    value->data + value->len - nl - 1, left);

        rc = ngx_http_invoices_read_send(r, NULL, &etag, nl + 1,
                                         value->data + value->len - nl - 1);

    } else {
        if (outcome == NGX_DECLINED) {
            rd->gen = *gen;
            rd->x_cache = &ngx_http_invoices_miss;
        }

        rc = ngx_http_invoices_list_query(r, rd);
    }

    ngx_http_finalize_request(r, rc);
    ngx_http_run_posted_requests(c);
}


ngx_int_t
ngx_http_invoices_get(ngx_http_request_t *r,
    ngx_http_invoices_loc_conf_t *ilcf, ngx_str_t *id)
{
    ngx_str_t                  etag, body;
    ngx_uint_t                 ok;
    ngx_http_invoices_job_t   *job;
    ngx_http_invoices_read_t  *rd;

    rd = ngx_pcalloc(r->pool, sizeof(ngx_http_invoices_read_t));
    if (rd == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rd->x_cache = &ngx_http_invoices_bypass;

    if (ngx_http_invoices_object_id(id->data, id->len)) {
        ok = 1;

    } else if (ngx_http_invoices_stripe_id(id->data, id->len, "in_")) {
        ok = 1;
        rd->by_stripe_id = 1;

    } else {
        ok = 0;
    }

    if (!ok) {
        return ngx_http_invoices_send_error(r, NGX_HTTP_BAD_REQUEST,
                   "invalid_request_error", "parameter_invalid",
                   "id must be an invoice _id (24 lowercase hex digits) "
                   "or a Stripe invoice id (in_...)", "id");
    }

    rd->id = ngx_pnalloc(r->pool, id->len + 1);
    if (rd->id == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    *ngx_cpymem(rd->id, id->data, id->len) = '\0';

    /* single invoices are kept only in the worker's copy, not in Redis */

    rd->local = ngx_http_invoices_local_version();

    if (rd->local) {
        rd->page_key.len = sizeof("id:") - 1 + id->len;
        rd->page_key.data = ngx_pnalloc(r->pool, rd->page_key.len);
        if (rd->page_key.data == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        ngx_memcpy(ngx_cpymem(rd->page_key.data, "id:", 3), id->data,
                   id->len);

        if (ngx_http_invoices_local_get(r, &rd->page_key, &etag, &body)
            == NGX_OK)
        {
            ngx_http_invoices_metrics_cache(NGX_HTTP_INVOICES_CACHE_HIT_LOCAL);
            return ngx_http_invoices_read_send(r, NULL, &etag, body.data,
                                               body.len);
        }

        rd->x_cache = &ngx_http_invoices_miss;
    }

    job = ngx_http_invoices_job_create(r, ilcf);
    if (job == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    job->run = ngx_http_invoices_get_run;
    job->finish = ngx_http_invoices_read_finish;
    job->data = rd;

    return ngx_http_invoices_job_run(r, job);
}


/* the list's or the summary's statement: prepared, or built for this one */

static PGresult *
ngx_http_invoices_read_statement(ngx_http_invoices_job_t *job)
{
    ngx_http_invoices_read_t  *rd = job->data;

    if (rd->built == NGX_HTTP_INVOICES_READ_SHAPED) {
        return ngx_http_invoices_pg_query_shaped(job, rd->sql, rd->nvalues,
                                                 rd->values);
    }

    if (rd->built) {
        return ngx_http_invoices_pg_query_built(job, rd->sql, rd->nvalues,
                                                rd->values);
    }

    return ngx_http_invoices_pg_query(job, rd->sql, rd->nvalues, rd->values);
}


static void
ngx_http_invoices_list_run(ngx_http_invoices_job_t *job)
{
    int                        row, rows, first, last, col;
    u_char                    *body, *p;
    size_t                     size;
    PGresult                  *res;
    ngx_http_invoices_read_t  *rd = job->data;

    res = ngx_http_invoices_read_statement(job);
    if (res == NULL) {
        return;
    }

    col = rd->col;
    rows = PQntuples(res);

    if (col == 2 && rows && strtoll(PQgetvalue(res, 0, 1), NULL, 10) == 0) {
        PQclear(res);
        ngx_http_invoices_job_refuse(job, NGX_HTTP_BAD_REQUEST,
                        "resource_missing",
                        rd->query.before ? "no such invoice: ending_before"
                                         : "no such invoice: starting_after",
                        rd->query.before ? "ending_before" : "starting_after");
        return;
    }

    /* the LEFT JOIN gives one row of NULLs for an empty page */

    if (rows == 1 && PQgetisnull(res, 0, col)) {
        rows = 0;
    }

    /*
     * One row more than the page holds: there are more.  It is the row
     * farthest from where the reading starts: the last one, or the first
     * for ending_before, which reads upwards.
     */

    first = 0;
    last = rows;

    if (rows > rd->query.limit) {
        if (rd->query.before) {
            first = 1;

        } else {
            last = rows - 1;
        }
    }

    /*
     * {"invoices":[...],"count":N,"has_more":B}, written in one pass into
     * one buffer: the count is a bigint as PostgreSQL writes it
     */

    size = sizeof("{\"invoices\":[],\"count\":,\"has_more\":false}")
           + NGX_INT64_LEN;

    for (row = first; row < last; row++) {
        size += ngx_http_invoices_row_size(res, row, col) + 1;
    }

    body = malloc(size);
    p = body;

    if (p != NULL) {
        p = ngx_cpymem(p, "{\"invoices\":[", sizeof("{\"invoices\":[") - 1);
    }

    for (row = first; p != NULL && row < last; row++) {
        if (row > first) {
            *p++ = ',';
        }

        p = ngx_http_invoices_row_write(p, res, row, col);
    }

    if (p != NULL) {
        p = ngx_cpymem(p, "],\"count\":", sizeof("],\"count\":") - 1);

        if (PQntuples(res)) {
            p = ngx_cpymem(p, PQgetvalue(res, 0, 0),
                           ngx_min((size_t) PQgetlength(res, 0, 0),
                                   NGX_INT64_LEN));
        } else {
            *p++ = '0';
        }

        p = (rows > rd->query.limit)
            ? ngx_cpymem(p, ",\"has_more\":true}",
                         sizeof(",\"has_more\":true}") - 1)
            : ngx_cpymem(p, ",\"has_more\":false}",
                         sizeof(",\"has_more\":false}") - 1);
    }

    PQclear(res);
    ngx_http_invoices_read_body(job, body, p);
}


/*
 * {"totals": [{"currency", "status", "count", "amount", "amountDue",
 * "amountPaid", "amountRemaining"}], "count"}.  A sum past 64 bits is an
 * error, never a wrong number.
 */

static void
ngx_http_invoices_summary_run(ngx_http_invoices_job_t *job)
{
    int         row, rows, col;
    json_t     *totals, *t;
    PGresult   *res;
    long long   v[5], count;

    res = ngx_http_invoices_read_statement(job);
    if (res == NULL) {
        return;
    }

    rows = PQntuples(res);
    totals = json_array();
    count = 0;

    for (row = 0; totals != NULL && row < rows; row++) {

        for (col = 0; col < 5; col++) {
            errno = 0;
            v[col] = strtoll(PQgetvalue(res, row, 2 + col), NULL, 10);

            if (errno == ERANGE) {
                PQclear(res);
                json_decref(totals);
                ngx_http_invoices_job_fail(job,
                    NGX_HTTP_INTERNAL_SERVER_ERROR, "api_error",
                    "internal_error", "a total does not fit in 64 bits");
                return;
            }
        }

        count += v[0];

        t = json_pack("{s:s,s:s,s:I,s:I,s:I,s:I,s:I}",
                      "currency", PQgetvalue(res, row, 0),
                      "status", PQgetvalue(res, row, 1),
                      "count", (json_int_t) v[0],
                      "amount", (json_int_t) v[1],
                      "amountDue", (json_int_t) v[2],
                      "amountPaid", (json_int_t) v[3],
                      "amountRemaining", (json_int_t) v[4]);

        if (json_array_append_new(totals, t) != 0) {
            json_decref(totals);
            totals = NULL;
        }
    }

    PQclear(res);

    ngx_http_invoices_read_done(job, json_pack("{s:o,s:I}", "totals", totals,
                                               "count", (json_int_t) count));
}


static void
ngx_http_invoices_get_run(ngx_http_invoices_job_t *job)
{
    u_char                    *body, *p;
    PGresult                  *res;
    const char                *values[1];
    ngx_http_invoices_read_t  *rd = job->data;

    values[0] = rd->id;

    res = ngx_http_invoices_pg_query(job,
                                     rd->by_stripe_id
                                     ? ngx_http_invoices_get_stripe_sql
                                     : ngx_http_invoices_get_sql,
                                     1, values);
    if (res == NULL) {
        return;
    }

    if (PQntuples(res) == 0) {
        PQclear(res);
        ngx_http_invoices_job_refuse(job, NGX_HTTP_NOT_FOUND,
                                     "resource_missing", "no such invoice",
                                     "id");
        return;
    }

    body = malloc(ngx_http_invoices_row_size(res, 0, 0));
    p = body ? ngx_http_invoices_row_write(body, res, 0, 0) : NULL;
    PQclear(res);
    ngx_http_invoices_read_body(job, body, p);
}


/* a 200 body of jansson's (the summary) */

static void
ngx_http_invoices_read_done(ngx_http_invoices_job_t *job, json_t *json)
{
    char    *s;
    size_t   len;

    s = ngx_http_invoices_json_dump(json, &len);
    json_decref(json);

    ngx_http_invoices_read_body(job, (u_char *) s,
                                s ? (u_char *) s + len : NULL);
}


/*
 * A 200 body written from "body" (malloc'ed) to "last", and its ETag:
 * FNV-1a over the bytes sent.  "body" or "last" NULL: no memory, or the
 * writing failed (a text not UTF-8), and the answer is an internal error.
 */

static void
ngx_http_invoices_read_body(ngx_http_invoices_job_t *job, u_char *body,
    u_char *last)
{
    size_t                     i;
    uint64_t                   h;
    u_char                    *p;
    ngx_http_invoices_read_t  *rd = job->data;

    if (body == NULL || last == NULL) {
        free(body);
        ngx_http_invoices_job_fail(job, NGX_HTTP_INTERNAL_SERVER_ERROR,
                                   "api_error", "internal_error",
                                   "the invoice could not be written as JSON");
        return;
    }

    free(job->body);
    job->body = (char *) body;
    job->len = last - body;

    h = 0xcbf29ce484222325ULL;

    for (i = 0; i < job->len; i++) {
        h ^= (u_char) job->body[i];
        h *= 0x100000001b3ULL;
    }

    p = ngx_snprintf(rd->etag, sizeof(rd->etag), "\"%016uxL\"", h);
    rd->etag_len = p - rd->etag;
    job->status = NGX_HTTP_OK;
}


static ngx_int_t
ngx_http_invoices_read_finish(ngx_http_request_t *r,
    ngx_http_invoices_job_t *job)
{
    u_char                    *p;
    ngx_str_t                  etag, value;
    ngx_http_invoices_read_t  *rd = job->data;

    if (job->status != NGX_HTTP_OK) {
        return ngx_http_invoices_job_send(r, job);
    }

    etag.data = rd->etag;
    etag.len = rd->etag_len;

    if (rd->local) {
        ngx_http_invoices_local_put(&rd->page_key, rd->local, &etag,
                                    (u_char *) job->body, job->len, 0);
    }

    if (rd->gen.len) {
        /* a miss: the page for later readers, as "<etag>\n<body>" */

        value.len = etag.len + 1 + job->len;
        value.data = ngx_pnalloc(r->pool, value.len);

        if (value.data) {
            p = ngx_cpymem(value.data, etag.data, etag.len);
            *p++ = '\n';
            ngx_memcpy(p, job->body, job->len);

            ngx_http_invoices_cache_store(r, &rd->gen, &rd->page_key, &value);
        }
    }

    return ngx_http_invoices_read_send(r, job, &etag, NULL, 0);
}


/*
 * A 200 with its ETag and X-Cache: the job's body, or (job == NULL) bytes
 * of the request's pool.  nginx's not-modified filter turns it into a 304
 * when If-None-Match matches the ETag.
 */

static ngx_int_t
ngx_http_invoices_read_send(ngx_http_request_t *r,
    ngx_http_invoices_job_t *job, ngx_str_t *etag, u_char *body, size_t len)
{
    ngx_table_elt_t           *h;
    ngx_http_invoices_read_t  *rd;

    static ngx_str_t  x_cache = ngx_string("X-Cache");

    rd = job ? job->data : NULL;

    if (rd) {
        ngx_http_invoices_metrics_cache(rd->x_cache == &ngx_http_invoices_miss
                                        ? NGX_HTTP_INVOICES_CACHE_MISS
                                        : NGX_HTTP_INVOICES_CACHE_BYPASS);
    }

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    h->hash = 1;
    ngx_str_set(&h->key, "ETag");
    h->value = *etag;
    r->headers_out.etag = h;

    if (ngx_http_invoices_set_header(r, &x_cache,
                                     rd ? rd->x_cache : &ngx_http_invoices_hit)
        != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (job) {
        job->status = NGX_HTTP_OK;
        return ngx_http_invoices_job_send(r, job);
    }

    return ngx_http_invoices_send_bytes(r, NGX_HTTP_OK, body, len);
}
