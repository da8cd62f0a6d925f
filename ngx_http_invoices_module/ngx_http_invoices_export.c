
/*
 * GET /admin/api/invoices/export?format=csv|ndjson and the list's filters:
 * every matching invoice in the list's order, streamed.
 *
 * One snapshot: the first job opens a connection of the export's own,
 * begins a REPEATABLE READ READ ONLY transaction and declares a cursor;
 * each job then fetches the next NGX_HTTP_INVOICES_EXPORT_ROWS rows and
 * formats them (in the pool thread).  Constant memory and flow control:
 * the next job is posted only when the previous rows have been written
 * to the client, so a slow client holds one chunk, not the result.  A
 * client that goes away (or an error after the header went out) closes
 * the connection, which ends the transaction and its cursor at once.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_invoices_module.h"
#include "ngx_http_invoices_json.h"
#include "ngx_http_invoices_job.h"
#include "ngx_http_invoices_pg.h"
#include "ngx_http_invoices_parse.h"
#include "ngx_http_invoices_query.h"
#include "ngx_http_invoices_row.h"
#include "ngx_http_invoices_export.h"


/* rows a job fetches and formats */
#define NGX_HTTP_INVOICES_EXPORT_ROWS  2000


typedef struct {
    ngx_http_invoices_list_query_t   query;
    char                            *declare;    /* the cursor's statement */
    const char                      *values[NGX_HTTP_INVOICES_FILTER_PARAMS];
    int                              nvalues;
    ngx_http_invoices_job_t         *job;

    /* the thread's while a job runs, the event loop's between jobs */
    PGconn                          *conn;
    char                            *chunk;      /* malloc()ed rows */
    size_t                           len;
    size_t                           size;
    ngx_uint_t                       rows;       /* sent so far */
    ngx_uint_t                       fetched;    /* by the last job */
    unsigned                         done:1;     /* no rows left */
    unsigned                         started:1;  /* the header went out */

    ngx_buf_t                       *buf;
    ngx_chain_t                      out;
} ngx_http_invoices_export_t;


static ngx_int_t ngx_http_invoices_export_header(ngx_http_request_t *r,
    ngx_http_invoices_export_t *ex);
static void ngx_http_invoices_export_run(ngx_http_invoices_job_t *job);
static ngx_int_t ngx_http_invoices_export_rows(ngx_http_invoices_export_t *ex,
    PGresult *res);
static ngx_int_t ngx_http_invoices_export_csv_row(
    ngx_http_invoices_export_t *ex, PGresult *res, int row);
static ngx_int_t ngx_http_invoices_export_append(
    ngx_http_invoices_export_t *ex, const char *s, size_t len);
static ngx_int_t ngx_http_invoices_export_room(ngx_http_invoices_export_t *ex,
    size_t len);
static ngx_int_t ngx_http_invoices_export_finish(ngx_http_request_t *r,
    ngx_http_invoices_job_t *job);
static ngx_int_t ngx_http_invoices_export_send(ngx_http_request_t *r,
    ngx_http_invoices_export_t *ex);
static void ngx_http_invoices_export_write(ngx_http_request_t *r);
static ngx_int_t ngx_http_invoices_export_next(ngx_http_request_t *r,
    ngx_http_invoices_export_t *ex);
static void ngx_http_invoices_export_cleanup(void *data);


/* the CSV header: the invoice fields, user as userId and userName */
static const char  ngx_http_invoices_export_csv_header[] =
    "_id,invoiceId,userId,userName,status,amount,currency,invoicePdf,"
    "createdAt,updatedAt,number,customer,customerEmail,customerName,"
    "amountDue,amountPaid,amountRemaining,hostedInvoiceUrl,dueDate,paidAt,"
    "finalizedAt,voidedAt\r\n";

/* the integer columns of NGX_HTTP_INVOICES_COLUMNS: never formula-guarded */
#define ngx_http_invoices_export_integer(col)                                 \
    ((col) == 5 || (col) == 14 || (col) == 15 || (col) == 16)


ngx_int_t
ngx_http_invoices_export(ngx_http_request_t *r,
    ngx_http_invoices_loc_conf_t *ilcf)
{
    u_char                       *p, *last;
    size_t                        size;
    ngx_uint_t                    i;
    ngx_pool_cleanup_t           *cln;
    ngx_http_invoices_job_t      *job;
    ngx_http_invoices_filter_t    filter;
    ngx_http_invoices_export_t   *ex;
    ngx_http_invoices_invalid_t   invalid;

    ex = ngx_pcalloc(r->pool, sizeof(ngx_http_invoices_export_t));
    if (ex == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (ngx_http_invoices_parse_list_query(&r->args,
                                           NGX_HTTP_INVOICES_ARGS_FORMAT,
                                           &ex->query, &invalid)
        != NGX_OK)
    {
        ngx_log_debug2(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                       "invoices export: refused \"%s\": %s",
                       invalid.param, invalid.message);

        return ngx_http_invoices_send_error(r, NGX_HTTP_BAD_REQUEST,
                   "invalid_request_error", invalid.code, invalid.message,
                   invalid.has_param ? invalid.param : NULL);
    }

    if (r->method == NGX_HTTP_HEAD) {
        /* the header alone: no snapshot is taken for it */
        return ngx_http_invoices_export_header(r, ex);
    }

    if (ngx_http_invoices_query_filter(r->pool, &ex->query, 1,
                                       NGX_HTTP_INVOICES_FILTER_ROWS, &filter)
        != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    for (i = 0; i < filter.nvalues; i++) {
        ex->values[ex->nvalues++] = filter.values[i];
    }

    size = ngx_strlen(ngx_http_invoices_row_select) + filter.where.len + 256;

    ex->declare = ngx_pnalloc(r->pool, size);
    if (ex->declare == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = (u_char *) ex->declare;
    last = ngx_slprintf(p, p + size - 1,
                        "DECLARE ngx_invoices_export NO SCROLL CURSOR FOR "
                        "%sWHERE true%V "
                        "ORDER BY i.stripe_created_at DESC, i.id DESC",
                        ngx_http_invoices_row_select, &filter.where);
    *last = '\0';

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "invoices export: %i parameters: %s", ex->nvalues,
                   ex->declare);

    ex->buf = ngx_calloc_buf(r->pool);
    if (ex->buf == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ex->out.buf = ex->buf;
    ex->out.next = NULL;

    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    cln->handler = ngx_http_invoices_export_cleanup;
    cln->data = ex;

    job = ngx_http_invoices_job_create(r, ilcf);
    if (job == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    job->run = ngx_http_invoices_export_run;
    job->finish = ngx_http_invoices_export_finish;
    job->data = ex;
    ex->job = job;

    /* a client that closes its side is noticed while the export waits */
    r->read_event_handler = ngx_http_test_reading;

    return ngx_http_invoices_job_run(r, job);
}


/* 200, the type, a download's file name with today's date, chunked */

static ngx_int_t
ngx_http_invoices_export_header(ngx_http_request_t *r,
    ngx_http_invoices_export_t *ex)
{
    ngx_tm_t          tm;
    ngx_str_t         value;
    ngx_uint_t        csv;
    ngx_table_elt_t  *h;

    csv = (ex->query.format == NGX_HTTP_INVOICES_FORMAT_CSV);

    r->headers_out.status = NGX_HTTP_OK;
    r->headers_out.content_length_n = -1;

    if (csv) {
        ngx_str_set(&r->headers_out.content_type, "text/csv; charset=utf-8");

    } else {
        ngx_str_set(&r->headers_out.content_type, "application/x-ndjson");
    }

    r->headers_out.content_type_len = r->headers_out.content_type.len;

    ngx_gmtime(ngx_time(), &tm);

    value.data = ngx_pnalloc(r->pool, 64);
    if (value.data == NULL) {
        return NGX_ERROR;
    }

    value.len = ngx_slprintf(value.data, value.data + 64,
                             "attachment; filename=\"invoices-%04d%02d%02d.%s\"",
                             tm.ngx_tm_year, tm.ngx_tm_mon, tm.ngx_tm_mday,
                             csv ? "csv" : "ndjson")
                - value.data;

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h->hash = 1;
    ngx_str_set(&h->key, "Content-Disposition");
    h->value = value;

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h->hash = 1;
    ngx_str_set(&h->key, "Cache-Control");
    ngx_str_set(&h->value, "no-store");

    ex->started = 1;

    return ngx_http_send_header(r);
}


/*
 * In a pool thread: the first time, the connection, the snapshot and the
 * cursor; every time, the next rows, formatted.  The last job (no rows
 * left) commits and closes.
 */

static void
ngx_http_invoices_export_run(ngx_http_invoices_job_t *job)
{
    PGresult                    *res;
    ngx_http_invoices_export_t  *ex = job->data;

    ex->len = 0;
    ex->fetched = 0;

    if (ex->conn == NULL) {
        ex->conn = ngx_http_invoices_pg_open(job);
        if (ex->conn == NULL) {
            return;
        }

        /*
         * cursor_tuple_fraction 1: plan for reading every row, not the
         * first tenth (PostgreSQL's default for cursors)
         */

        res = ngx_http_invoices_pg_query_on(job, ex->conn,
                  "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY", 0, NULL);
        if (res == NULL) {
            return;
        }

        PQclear(res);

        res = ngx_http_invoices_pg_query_on(job, ex->conn,
                  "SET LOCAL cursor_tuple_fraction = 1", 0, NULL);
        if (res == NULL) {
            return;
        }

        PQclear(res);

        res = ngx_http_invoices_pg_query_on(job, ex->conn, ex->declare,
                                            ex->nvalues, ex->values);
        if (res == NULL) {
            return;
        }

        PQclear(res);

        if (ex->query.format == NGX_HTTP_INVOICES_FORMAT_CSV
            && ngx_http_invoices_export_append(ex,
                   ngx_http_invoices_export_csv_header,
                   sizeof(ngx_http_invoices_export_csv_header) - 1)
               != NGX_OK)
        {
            goto nomem;
        }
    }

    res = ngx_http_invoices_pg_query_on(job, ex->conn,
              "FETCH " ngx_value(NGX_HTTP_INVOICES_EXPORT_ROWS)
              " FROM ngx_invoices_export", 0, NULL);
    if (res == NULL) {
        return;
    }

    ex->fetched = PQntuples(res);

    if (ngx_http_invoices_export_rows(ex, res) != NGX_OK) {
        PQclear(res);
        goto nomem;
    }

    PQclear(res);

    if (ex->fetched < NGX_HTTP_INVOICES_EXPORT_ROWS) {
        res = ngx_http_invoices_pg_query_on(job, ex->conn, "COMMIT", 0, NULL);
        if (res == NULL) {
            return;
        }

        PQclear(res);
        PQfinish(ex->conn);
        ex->conn = NULL;
        ex->done = 1;
    }

    job->status = NGX_HTTP_OK;
    return;

nomem:

    ngx_http_invoices_job_fail(job, NGX_HTTP_INTERNAL_SERVER_ERROR,
                               "api_error", "internal_error",
                               "out of memory");
}


/* the rows of one FETCH, as CSV lines or NDJSON lines */

static ngx_int_t
ngx_http_invoices_export_rows(ngx_http_invoices_export_t *ex, PGresult *res)
{
    int      row, rows;
    u_char  *p;

    rows = PQntuples(res);

    for (row = 0; row < rows; row++) {

        if (ex->query.format == NGX_HTTP_INVOICES_FORMAT_CSV) {
            if (ngx_http_invoices_export_csv_row(ex, res, row) != NGX_OK) {
                return NGX_ERROR;
            }

            continue;
        }

        if (ngx_http_invoices_export_room(ex,
                                          ngx_http_invoices_row_size(res, row,
                                                                     0) + 1)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        p = ngx_http_invoices_row_write((u_char *) ex->chunk + ex->len, res,
                                        row, 0);
        if (p == NULL) {
            return NGX_ERROR;
        }

        *p++ = '\n';
        ex->len = p - (u_char *) ex->chunk;
    }

    return NGX_OK;
}


/*
 * One CSV line (RFC 4180): a cell with a comma, a quote, CR or LF is
 * quoted, its quotes doubled; a text cell that a spreadsheet would take
 * for a formula (it starts with =, +, -, @, tab or CR) gets a ' first.
 * The integer columns are numbers, never formulas, and stay as they are.
 */

static ngx_int_t
ngx_http_invoices_export_csv_row(ngx_http_invoices_export_t *ex,
    PGresult *res, int row)
{
    int          col;
    char        *v;
    size_t       len, i;
    ngx_uint_t   quote;

    for (col = 0; col < NGX_HTTP_INVOICES_NCOLUMNS; col++) {

        if (col && ngx_http_invoices_export_append(ex, ",", 1) != NGX_OK) {
            return NGX_ERROR;
        }

        if (PQgetisnull(res, row, col)) {
            continue;
        }

        v = PQgetvalue(res, row, col);
        len = PQgetlength(res, row, col);

        quote = 0;

        for (i = 0; i < len; i++) {
            if (v[i] == ',' || v[i] == '"' || v[i] == '\r' || v[i] == '\n') {
                quote = 1;
                break;
            }
        }

        if (quote && ngx_http_invoices_export_append(ex, "\"", 1) != NGX_OK) {
            return NGX_ERROR;
        }

        if (len && !ngx_http_invoices_export_integer(col)
            && (v[0] == '=' || v[0] == '+' || v[0] == '-' || v[0] == '@'
                || v[0] == '\t' || v[0] == '\r')
            && ngx_http_invoices_export_append(ex, "'", 1) != NGX_OK)
        {
            return NGX_ERROR;
        }

        for (i = 0; i < len; i++) {
            if (ngx_http_invoices_export_append(ex, &v[i], 1) != NGX_OK
                || (v[i] == '"'
                    && ngx_http_invoices_export_append(ex, "\"", 1) != NGX_OK))
            {
                return NGX_ERROR;
            }
        }

        if (quote && ngx_http_invoices_export_append(ex, "\"", 1) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    return ngx_http_invoices_export_append(ex, "\r\n", 2);
}


static ngx_int_t
ngx_http_invoices_export_append(ngx_http_invoices_export_t *ex,
    const char *s, size_t len)
{
    if (ngx_http_invoices_export_room(ex, len) != NGX_OK) {
        return NGX_ERROR;
    }

    if (len == 1) {
        ex->chunk[ex->len++] = *s;
        return NGX_OK;
    }

    ngx_memcpy(ex->chunk + ex->len, s, len);
    ex->len += len;

    return NGX_OK;
}


/* room for len more bytes in the chunk */

static ngx_int_t
ngx_http_invoices_export_room(ngx_http_invoices_export_t *ex, size_t len)
{
    char    *p;
    size_t   size;

    if (ex->len + len <= ex->size) {
        return NGX_OK;
    }

    size = ngx_max(2 * ex->size, ex->len + len);
    size = ngx_max(size, 256 * 1024);

    p = realloc(ex->chunk, size);
    if (p == NULL) {
        return NGX_ERROR;
    }

    ex->chunk = p;
    ex->size = size;

    return NGX_OK;
}


/* the event loop, after a job: the header the first time, then the rows */

static ngx_int_t
ngx_http_invoices_export_finish(ngx_http_request_t *r,
    ngx_http_invoices_job_t *job)
{
    ngx_int_t                    rc;
    ngx_http_invoices_export_t  *ex = job->data;

    if (job->status != NGX_HTTP_OK) {

        if (ex->conn) {
            ngx_http_invoices_pg_close_now(ex->conn);
            ex->conn = NULL;
        }

        if (!ex->started) {
            /* nothing went out yet: a JSON error (logged by the runner) */
            return ngx_http_invoices_job_send(r, job);
        }

        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "invoices export: stopped after %ui rows; the client "
                      "gets an incomplete answer", ex->rows);

        return NGX_ERROR;
    }

    if (!ex->started) {
        rc = ngx_http_invoices_export_header(r, ex);

        if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
            return rc;
        }
    }

    return ngx_http_invoices_export_send(r, ex);
}


/*
 * Hands the rows to nginx's output: when they are all written, the next
 * job is posted; when some wait for the client, the export waits with
 * them (ngx_http_invoices_export_write).
 */

static ngx_int_t
ngx_http_invoices_export_send(ngx_http_request_t *r,
    ngx_http_invoices_export_t *ex)
{
    ngx_int_t                  rc;
    ngx_event_t               *wev;
    ngx_http_core_loc_conf_t  *clcf;

    ex->buf->pos = (u_char *) ex->chunk;
    ex->buf->last = (u_char *) ex->chunk + ex->len;
    ex->buf->memory = (ex->len != 0);
    ex->buf->flush = 1;
    ex->buf->last_buf = ex->done;
    ex->buf->last_in_chain = 1;

    ex->rows += ex->fetched;

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "invoices export: %uz bytes, %ui rows so far",
                   ex->len, ex->rows);

    rc = ngx_http_output_filter(r, &ex->out);

    if (rc == NGX_ERROR || ex->done) {
        /* the last rows: nginx's own writer sends what is left */
        return rc;
    }

    if (rc == NGX_OK) {
        return ngx_http_invoices_export_next(r, ex);
    }

    /* the client is slower than PostgreSQL: wait for it */

    clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);
    wev = r->connection->write;

    if (!wev->delayed) {
        ngx_add_timer(wev, clcf->send_timeout);
    }

    if (ngx_handle_write_event(wev, clcf->send_lowat) != NGX_OK) {
        return NGX_ERROR;
    }

    r->write_event_handler = ngx_http_invoices_export_write;
    r->main->count++;

    return NGX_DONE;
}


static void
ngx_http_invoices_export_write(ngx_http_request_t *r)
{
    ngx_int_t                    rc;
    ngx_event_t                 *wev;
    ngx_connection_t            *c;
    ngx_http_core_loc_conf_t    *clcf;
    ngx_http_invoices_export_t  *ex;

    c = r->connection;
    wev = c->write;
    ex = ngx_http_invoices_ctx(r)->job->data;

    if (wev->timedout) {
        ngx_log_error(NGX_LOG_INFO, c->log, NGX_ETIMEDOUT,
                      "invoices export: client timed out after %ui rows",
                      ex->rows);
        c->timedout = 1;
        ngx_http_finalize_request(r, NGX_HTTP_REQUEST_TIME_OUT);
        return;
    }

    rc = ngx_http_output_filter(r, NULL);

    if (rc == NGX_ERROR) {
        ngx_http_finalize_request(r, rc);
        return;
    }

    clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);

    if (rc == NGX_AGAIN) {
        if (!wev->delayed) {
            ngx_add_timer(wev, clcf->send_timeout);
        }

        if (ngx_handle_write_event(wev, clcf->send_lowat) != NGX_OK) {
            ngx_http_finalize_request(r, NGX_ERROR);
        }

        return;
    }

    if (wev->timer_set) {
        ngx_del_timer(wev);
    }

    r->write_event_handler = ngx_http_request_empty_handler;

    ngx_http_finalize_request(r, ngx_http_invoices_export_next(r, ex));
}


/* everything written: the next rows (NGX_DONE), or NGX_ERROR */

static ngx_int_t
ngx_http_invoices_export_next(ngx_http_request_t *r,
    ngx_http_invoices_export_t *ex)
{
    ngx_int_t                 rc;
    ngx_http_invoices_job_t  *job = ex->job;

    if (r->connection->error) {
        return NGX_ERROR;
    }

    job->status = 0;
    job->log[0] = '\0';

    rc = ngx_http_invoices_job_post(r, job);

    if (rc == NGX_DECLINED) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "invoices export: the thread pool's queue is full, "
                      "stopped after %ui rows", ex->rows);
        return NGX_ERROR;
    }

    return rc;
}


/* the request ends: a connection still open is closed at once */

static void
ngx_http_invoices_export_cleanup(void *data)
{
    ngx_http_invoices_export_t  *ex = data;

    if (ex->conn) {
        ngx_http_invoices_pg_close_now(ex->conn);
        ex->conn = NULL;
    }

    free(ex->chunk);
    ex->chunk = NULL;
}
