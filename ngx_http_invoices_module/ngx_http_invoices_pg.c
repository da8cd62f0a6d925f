
/*
 * PostgreSQL from the pool threads: the statements of a job
 * (ngx_http_invoices_job.c runs the jobs).
 *
 * Each pool thread keeps its own PGconn per conninfo, opened lazily and
 * closed at worker exit (ngx_http_invoices_thread_handles_close).  A
 * connection found broken is reopened and the statement tried once more,
 * so a PostgreSQL restart costs no request; while PostgreSQL is down, jobs
 * fail at once with 503.
 */


#include <ngx_config.h>
#include <ngx_core.h>

#include "ngx_http_invoices_module.h"
#include "ngx_http_invoices_pg.h"


/* more statements than this run unprepared, per connection */
#define NGX_HTTP_INVOICES_PREPARED  32
#define NGX_HTTP_INVOICES_SHAPED    32

/* ngx_http_invoices_pg_exec's flags */
#define NGX_HTTP_INVOICES_PG_FAIL   1     /* a failure fails the job */
#define NGX_HTTP_INVOICES_PG_BUILT  2     /* text built per request */
#define NGX_HTTP_INVOICES_PG_SHAPED 4     /* ... from a few shapes */


typedef struct ngx_http_invoices_pg_conn_s  ngx_http_invoices_pg_conn_t;

struct ngx_http_invoices_pg_conn_s {
    ngx_http_invoices_thread_handle_t  handle;  /* first: see conn_close */
    ngx_http_invoices_pg_conn_t  *next;         /* this thread's */
    const char                   *conninfo;
    PGconn                       *conn;

    /* statements prepared on conn, by their text's address */
    const char                   *prepared[NGX_HTTP_INVOICES_PREPARED];
    ngx_uint_t                    nprepared;

    /* and texts built per request, by their text (copies, malloc'ed) */
    char                         *shaped[NGX_HTTP_INVOICES_SHAPED];
    ngx_uint_t                    nshaped;

    /* plan_cache_mode is force_generic_plan on conn: see pg_run */
    ngx_uint_t                    generic;
};


static PGresult *ngx_http_invoices_pg_exec(ngx_http_invoices_job_t *job,
    const char *sql, int nparams, const char *const *values,
    ngx_uint_t flags);
static PGresult *ngx_http_invoices_pg_run(ngx_http_invoices_pg_conn_t *pc,
    const char *sql, int nparams, const char *const *values,
    ngx_uint_t flags);
static PGresult *ngx_http_invoices_pg_run_shaped(
    ngx_http_invoices_pg_conn_t *pc, const char *sql, int nparams,
    const char *const *values);
static ngx_int_t ngx_http_invoices_pg_prepare(
    ngx_http_invoices_pg_conn_t *pc, const char *name, const char *sql,
    int nparams);
static void ngx_http_invoices_pg_forget(ngx_http_invoices_pg_conn_t *pc);
static ngx_uint_t ngx_http_invoices_pg_transient(PGresult *res);
static PGconn *ngx_http_invoices_pg_connect(ngx_http_invoices_job_t *job,
    ngx_http_invoices_pg_conn_t **pc);
static void ngx_http_invoices_pg_conn_close(
    ngx_http_invoices_thread_handle_t *h);
static void ngx_http_invoices_pg_note(ngx_http_invoices_job_t *job,
    const char *what, const char *detail);


static __thread ngx_http_invoices_pg_conn_t  *ngx_http_invoices_pg_mine;


/*
 * Runs one parameterised statement on this thread's connection.  On any
 * failure the job is failed (503 when PostgreSQL cannot be reached, 500
 * otherwise) and NULL is returned.  The statement is repeated once on a
 * new connection when the old one turns out to be broken, so it must be
 * safe to repeat.
 */

PGresult *
ngx_http_invoices_pg_query(ngx_http_invoices_job_t *job, const char *sql,
    int nparams, const char *const *values)
{
    return ngx_http_invoices_pg_exec(job, sql, nparams, values,
                                     NGX_HTTP_INVOICES_PG_FAIL);
}


/*
 * The same for a statement whose text was built for this request (a list
 * with filters): never prepared, because the text's address does not name
 * it for long, and each run gets a plan made for its own values.
 */

PGresult *
ngx_http_invoices_pg_query_built(ngx_http_invoices_job_t *job,
    const char *sql, int nparams, const char *const *values)
{
    return ngx_http_invoices_pg_exec(job, sql, nparams, values,
                                     NGX_HTTP_INVOICES_PG_FAIL
                                     |NGX_HTTP_INVOICES_PG_BUILT);
}


/*
 * The same for a text built per request from a few shapes, where the
 * values are all parameters and the plan does not depend on them (a list
 * page of equalities only, with its LIMIT written in): prepared once per
 * connection and text, so PostgreSQL keeps one plan for it.
 */

PGresult *
ngx_http_invoices_pg_query_shaped(ngx_http_invoices_job_t *job,
    const char *sql, int nparams, const char *const *values)
{
    return ngx_http_invoices_pg_exec(job, sql, nparams, values,
                                     NGX_HTTP_INVOICES_PG_FAIL
                                     |NGX_HTTP_INVOICES_PG_SHAPED);
}


/* the same, but a failure is only noted for the log: for cleanups */

PGresult *
ngx_http_invoices_pg_try(ngx_http_invoices_job_t *job, const char *sql,
    int nparams, const char *const *values)
{
    return ngx_http_invoices_pg_exec(job, sql, nparams, values, 0);
}


static PGresult *
ngx_http_invoices_pg_exec(ngx_http_invoices_job_t *job, const char *sql,
    int nparams, const char *const *values, ngx_uint_t flags)
{
    PGconn                       *conn;
    PGresult                     *res;
    ngx_uint_t                    attempt, fail;
    ExecStatusType                st;
    ngx_http_invoices_pg_conn_t  *pc;

    fail = (flags & NGX_HTTP_INVOICES_PG_FAIL) ? 1 : 0;

    for (attempt = 0; attempt < 2; attempt++) {

        conn = ngx_http_invoices_pg_connect(job, &pc);
        if (conn == NULL) {
            break;
        }

        res = ngx_http_invoices_pg_run(pc, sql, nparams, values, flags);
        st = PQresultStatus(res);

        if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK) {
            return res;
        }

        if (PQstatus(conn) != CONNECTION_BAD && attempt == 0
            && (pc->nprepared || pc->nshaped)
            && ngx_strcmp(PQresultErrorField(res, PG_DIAG_SQLSTATE) ?
                          PQresultErrorField(res, PG_DIAG_SQLSTATE) : "",
                          "0A000")
               == 0)
        {
            /*
             * "cached plan must not change result type": a migration
             * changed a table under a prepared statement; prepare again
             */
            PQclear(res);
            PQclear(PQexec(conn, "DEALLOCATE ALL"));
            ngx_http_invoices_pg_forget(pc);
            continue;
        }

        if (PQstatus(conn) != CONNECTION_BAD) {
            ngx_http_invoices_pg_note(job, "statement failed",
                                      PQresultErrorMessage(res));

            job->metrics.pg_error |= fail;

            if (fail && ngx_http_invoices_pg_transient(res)) {
                PQclear(res);
                ngx_http_invoices_job_fail(job, NGX_HTTP_SERVICE_UNAVAILABLE,
                                           "api_error", "database_busy",
                                           "the database is busy, "
                                           "retry later");
                return NULL;
            }

            PQclear(res);

            if (fail) {
                ngx_http_invoices_job_fail(job,
                                           NGX_HTTP_INTERNAL_SERVER_ERROR,
                                           "api_error", "internal_error",
                                           "internal error");
            }

            return NULL;
        }

        ngx_http_invoices_pg_note(job, "connection lost", PQerrorMessage(conn));
        PQclear(res);
        PQfinish(conn);
        pc->conn = NULL;
        ngx_http_invoices_pg_forget(pc);
    }

    if (fail) {
        job->metrics.pg_error = 1;
        ngx_http_invoices_job_fail(job, NGX_HTTP_SERVICE_UNAVAILABLE,
                                   "api_error", "database_unavailable",
                                   "the database is unavailable, retry later");
    }

    return NULL;
}


/*
 * Failures that a retry a moment later may not meet: a statement_timeout
 * or lock_timeout set in the conninfo's options, a deadlock, a
 * serialization failure, a server out of connections or shutting down.
 */

static ngx_uint_t
ngx_http_invoices_pg_transient(PGresult *res)
{
    char  *state;

    state = PQresultErrorField(res, PG_DIAG_SQLSTATE);

    if (state == NULL) {
        return 0;
    }

    return ngx_strcmp(state, "57014") == 0        /* query_canceled */
           || ngx_strcmp(state, "55P03") == 0     /* lock_not_available */
           || ngx_strcmp(state, "40001") == 0     /* serialization_failure */
           || ngx_strcmp(state, "40P01") == 0     /* deadlock_detected */
           || ngx_strncmp(state, "53", 2) == 0    /* insufficient resources */
           || ngx_strncmp(state, "57P", 3) == 0;  /* shutting down */
}


/*
 * Every statement is prepared once per connection, the first time it runs:
 * later runs skip parsing and planning (0.55 ms of a 1.6 ms list page when
 * measured).  The statements are string constants, so the address names
 * the text; a text built per request (NGX_HTTP_INVOICES_PG_BUILT) runs
 * unprepared.  A statement that cannot be prepared runs unprepared, which
 * gives PostgreSQL's error for it.
 */

static PGresult *
ngx_http_invoices_pg_run(ngx_http_invoices_pg_conn_t *pc, const char *sql,
    int nparams, const char *const *values, ngx_uint_t flags)
{
    char        name[NGX_INT_T_LEN + 8];
    PGresult   *res;
    ngx_uint_t  i, generic;

    /*
     * A shaped statement runs with the plan PostgreSQL keeps for it (the
     * "generic" plan), whatever its cost estimate says: left to choose,
     * PostgreSQL planned a page led by a closed range (>= and <= one
     * value: ngx_http_invoices_query.c) on every run, as the estimate of
     * such a range makes the kept plan look dearer than a fresh one,
     * though both walk the same index (docs/benchmarks.md).  Every other
     * statement keeps the default, so that a built one gets a plan for
     * its values; the setting is changed only when the kind changes.
     */

    generic = (flags & NGX_HTTP_INVOICES_PG_SHAPED) ? 1 : 0;

    if (pc->generic != generic) {
        res = PQexec(pc->conn, generic
                               ? "SET plan_cache_mode = force_generic_plan"
                               : "RESET plan_cache_mode");

        if (PQresultStatus(res) != PGRES_COMMAND_OK) {
            return res;
        }

        PQclear(res);
        pc->generic = generic;
    }

    if (flags & NGX_HTTP_INVOICES_PG_BUILT) {
        return PQexecParams(pc->conn, sql, nparams, NULL, values, NULL, NULL,
                            0);
    }

    if (flags & NGX_HTTP_INVOICES_PG_SHAPED) {
        return ngx_http_invoices_pg_run_shaped(pc, sql, nparams, values);
    }

    for (i = 0; i < pc->nprepared; i++) {
        if (pc->prepared[i] == sql) {
            goto prepared;
        }
    }

    if (i == NGX_HTTP_INVOICES_PREPARED) {
        return PQexecParams(pc->conn, sql, nparams, NULL, values, NULL, NULL,
                            0);
    }

    (void) ngx_http_invoices_sprint(name, "ngxinv_%ui", i);

    if (ngx_http_invoices_pg_prepare(pc, name, sql, nparams) != NGX_OK) {
        return (PQstatus(pc->conn) == CONNECTION_BAD) ? NULL
               : PQexecParams(pc->conn, sql, nparams, NULL, values, NULL,
                              NULL, 0);
    }

    pc->prepared[i] = sql;
    pc->nprepared++;

prepared:

    (void) ngx_http_invoices_sprint(name, "ngxinv_%ui", i);

    return PQexecPrepared(pc->conn, name, nparams, values, NULL, NULL, 0);
}


/*
 * A shaped text: found among this connection's by comparing texts (a few
 * dozen at most, told apart within their first kilobyte or two), else
 * prepared under a name of its own, with a copy of the text kept.
 */

static PGresult *
ngx_http_invoices_pg_run_shaped(ngx_http_invoices_pg_conn_t *pc,
    const char *sql, int nparams, const char *const *values)
{
    char        name[NGX_INT_T_LEN + 8], *copy;
    size_t      len;
    ngx_uint_t  i;

    for (i = 0; i < pc->nshaped; i++) {
        if (ngx_strcmp(pc->shaped[i], sql) == 0) {
            goto prepared;
        }
    }

    if (i == NGX_HTTP_INVOICES_SHAPED) {
        return PQexecParams(pc->conn, sql, nparams, NULL, values, NULL, NULL,
                            0);
    }

    len = ngx_strlen(sql) + 1;

    copy = malloc(len);
    if (copy == NULL) {
        return PQexecParams(pc->conn, sql, nparams, NULL, values, NULL, NULL,
                            0);
    }

    ngx_memcpy(copy, sql, len);

    (void) ngx_http_invoices_sprint(name, "ngxinvs_%ui", i);

    if (ngx_http_invoices_pg_prepare(pc, name, sql, nparams) != NGX_OK) {
        free(copy);

        return (PQstatus(pc->conn) == CONNECTION_BAD) ? NULL
               : PQexecParams(pc->conn, sql, nparams, NULL, values, NULL,
                              NULL, 0);
    }

    pc->shaped[i] = copy;
    pc->nshaped++;

prepared:

    (void) ngx_http_invoices_sprint(name, "ngxinvs_%ui", i);

    return PQexecPrepared(pc->conn, name, nparams, values, NULL, NULL, 0);
}


/*
 * PREPARE: NGX_ERROR when PostgreSQL refuses it (the caller runs the
 * statement unprepared, which gives PostgreSQL's error for it) or the
 * connection broke
 */

static ngx_int_t
ngx_http_invoices_pg_prepare(ngx_http_invoices_pg_conn_t *pc,
    const char *name, const char *sql, int nparams)
{
    PGresult   *res;
    ngx_int_t   rc;

    res = PQprepare(pc->conn, name, sql, nparams, NULL);
    rc = (PQresultStatus(res) == PGRES_COMMAND_OK) ? NGX_OK : NGX_ERROR;
    PQclear(res);

    return rc;
}


/* the connection's prepared statements are gone (or going with it) */

static void
ngx_http_invoices_pg_forget(ngx_http_invoices_pg_conn_t *pc)
{
    ngx_uint_t  i;

    for (i = 0; i < pc->nshaped; i++) {
        free(pc->shaped[i]);
    }

    pc->nshaped = 0;
    pc->nprepared = 0;
}


/*
 * A new connection to the job's database (NULL: noted for the log).  The
 * thread's own connections are opened here, and an export's.
 */

static PGconn *
ngx_http_invoices_pg_new(ngx_http_invoices_job_t *job)
{
    PGconn  *conn;

    /*
     * conninfo given later overrides these: "dbname" is expanded as a
     * whole connection string.  TCP keepalive (after 30 s idle, 3 probes
     * 10 s apart) and tcp_user_timeout (60 s for data left unacknowledged):
     * a PostgreSQL host that vanishes (a cut network, a powered-off
     * machine) is noticed within about a minute, not the kernel's two
     * hours.  Unix sockets ignore both.
     *
     * gssencmode: libpq's default, "prefer", asks Kerberos for credentials
     * on every TCP connection, which leaves Kerberos data attached to the
     * pool thread.  At worker exit nginx lets the worker go on as soon as
     * each pool thread has taken its exit task, while the thread may still
     * be freeing that data; the worker's exit tears Kerberos down under it
     * and the worker aborts (signal 6).  Off unless conninfo asks for it;
     * docs/configuration.md says so.
     */
    static const char *const  keys[] = {
        "connect_timeout", "client_encoding", "fallback_application_name",
        "keepalives", "keepalives_idle", "keepalives_interval",
        "keepalives_count", "tcp_user_timeout", "gssencmode", "dbname", NULL
    };

    const char  *values[] = {
        "3", "UTF8", "ngx_http_invoices", "1", "30", "10", "3", "60000",
        "disable", job->conninfo, NULL
    };

    conn = PQconnectdbParams(keys, values, 1);

    if (conn == NULL) {
        ngx_http_invoices_pg_note(job, "connect failed", "out of memory");
        return NULL;
    }

    if (PQstatus(conn) != CONNECTION_OK) {
        ngx_http_invoices_pg_note(job, "connect failed", PQerrorMessage(conn));
        PQfinish(conn);
        return NULL;
    }

    return conn;
}


static PGconn *
ngx_http_invoices_pg_connect(ngx_http_invoices_job_t *job,
    ngx_http_invoices_pg_conn_t **pcp)
{
    PGconn                       *conn;
    ngx_http_invoices_pg_conn_t  *pc;

    for (pc = ngx_http_invoices_pg_mine; pc != NULL; pc = pc->next) {
        /* conninfo strings live in the configuration: compare pointers */
        if (pc->conninfo == job->conninfo) {
            break;
        }
    }

    if (pc == NULL) {
        pc = calloc(1, sizeof(ngx_http_invoices_pg_conn_t));
        if (pc == NULL) {
            ngx_http_invoices_pg_note(job, "out of memory", NULL);
            return NULL;
        }

        pc->conninfo = job->conninfo;
        pc->next = ngx_http_invoices_pg_mine;
        ngx_http_invoices_pg_mine = pc;

        pc->handle.close = ngx_http_invoices_pg_conn_close;
        ngx_http_invoices_thread_handle_keep(&pc->handle);
    }

    *pcp = pc;

    if (pc->conn != NULL && PQstatus(pc->conn) == CONNECTION_OK) {
        return pc->conn;
    }

    if (pc->conn != NULL) {
        PQfinish(pc->conn);
        pc->conn = NULL;
    }

    conn = ngx_http_invoices_pg_new(job);
    if (conn == NULL) {
        return NULL;
    }

    pc->conn = conn;
    pc->generic = 0;                     /* a new session: the default */
    ngx_http_invoices_pg_forget(pc);

    return conn;
}


/*
 * A connection of the job's own, not the thread's (an export holds one for
 * its transaction from job to job): NULL with the job failed (503).
 */

PGconn *
ngx_http_invoices_pg_open(ngx_http_invoices_job_t *job)
{
    PGconn  *conn;

    conn = ngx_http_invoices_pg_new(job);

    if (conn == NULL) {
        job->metrics.pg_error = 1;
        ngx_http_invoices_job_fail(job, NGX_HTTP_SERVICE_UNAVAILABLE,
                                   "api_error", "database_unavailable",
                                   "the database is unavailable, retry later");
    }

    return conn;
}


/*
 * One statement on such a connection, unprepared and never repeated (it
 * runs inside a transaction): NULL with the job failed, 503 when the
 * connection is lost or PostgreSQL is busy, else 500.
 */

PGresult *
ngx_http_invoices_pg_query_on(ngx_http_invoices_job_t *job, PGconn *conn,
    const char *sql, int nparams, const char *const *values)
{
    PGresult        *res;
    ExecStatusType   st;

    res = PQexecParams(conn, sql, nparams, NULL, values, NULL, NULL, 0);
    st = PQresultStatus(res);

    if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK) {
        return res;
    }

    job->metrics.pg_error = 1;

    if (PQstatus(conn) == CONNECTION_BAD) {
        ngx_http_invoices_pg_note(job, "connection lost", PQerrorMessage(conn));
        PQclear(res);
        ngx_http_invoices_job_fail(job, NGX_HTTP_SERVICE_UNAVAILABLE,
                                   "api_error", "database_unavailable",
                                   "the database is unavailable, retry later");
        return NULL;
    }

    ngx_http_invoices_pg_note(job, "statement failed",
                              PQresultErrorMessage(res));

    if (ngx_http_invoices_pg_transient(res)) {
        PQclear(res);
        ngx_http_invoices_job_fail(job, NGX_HTTP_SERVICE_UNAVAILABLE,
                                   "api_error", "database_busy",
                                   "the database is busy, retry later");
        return NULL;
    }

    PQclear(res);
    ngx_http_invoices_job_fail(job, NGX_HTTP_INTERNAL_SERVER_ERROR,
                               "api_error", "internal_error",
                               "internal error");
    return NULL;
}


/*
 * Closes a connection on the event loop without waiting: libpq's goodbye
 * is sent only if the socket takes it at once.  PostgreSQL ends the
 * session, its transaction and its cursor when the socket closes.
 */

void
ngx_http_invoices_pg_close_now(PGconn *conn)
{
    (void) PQsetnonblocking(conn, 1);
    PQfinish(conn);
}


/* worker exit (ngx_http_invoices_thread_handles_close) */

static void
ngx_http_invoices_pg_conn_close(ngx_http_invoices_thread_handle_t *h)
{
    ngx_http_invoices_pg_conn_t  *pc = (ngx_http_invoices_pg_conn_t *) h;

    if (pc->conn != NULL) {
        PQfinish(pc->conn);
    }

    ngx_http_invoices_pg_forget(pc);
    free(pc);
}


/* keeps a one-line reason for the log; libpq's messages end in newlines */

static void
ngx_http_invoices_pg_note(ngx_http_invoices_job_t *job, const char *what,
    const char *detail)
{
    u_char  *p, *last;

    last = (u_char *) job->log + sizeof(job->log) - 1;

    p = ngx_snprintf((u_char *) job->log, sizeof(job->log) - 1,
                     "PostgreSQL %s%s%s", what, detail ? ": " : "",
                     detail ? detail : "");
    *p = '\0';

    for (p = (u_char *) job->log; p < last && *p; p++) {
        if (*p == '\n' || *p == '\r') {
            *p = ' ';
        }
    }
}
