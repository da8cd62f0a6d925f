
/*
 * The one thread-pool job runner, and PostgreSQL from the pool threads.
 *
 * A job is posted to the nginx thread pool with the request held
 * (r->main->blocked, r->aio), exactly as nginx's copy filter does for
 * threaded reads.  The thread runs job->run with plain C inputs and leaves
 * a status and a malloc()ed JSON body; the completion handler resumes the
 * request on the event loop and job->finish sends the answer.
 *
 * Each pool thread keeps its own PGconn per conninfo, opened lazily.  They
 * are closed by the worker's exit_process, after nginx has stopped the pool
 * threads: a thread-specific destructor would run in an exiting thread
 * while the worker unloads this module, and crash.  A connection found
 * broken is reopened and
 * the statement tried once more, so a PostgreSQL restart costs no request;
 * while PostgreSQL is down, jobs fail at once with 503.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <pthread.h>

#include "ngx_http_invoices_module.h"
#include "ngx_http_invoices_json.h"
#include "ngx_http_invoices_pg.h"
#include "ngx_http_invoices_cache.h"


/* more statements than this run unprepared */
#define NGX_HTTP_INVOICES_PREPARED  32


typedef struct ngx_http_invoices_pg_conn_s  ngx_http_invoices_pg_conn_t;

struct ngx_http_invoices_pg_conn_s {
    ngx_http_invoices_pg_conn_t  *next;         /* this thread's */
    ngx_http_invoices_pg_conn_t  *all;          /* every thread's */
    const char                   *conninfo;
    PGconn                       *conn;

    /* statements prepared on conn, by their text's address */
    const char                   *prepared[NGX_HTTP_INVOICES_PREPARED];
    ngx_uint_t                    nprepared;
};


static void ngx_http_invoices_job_thread(void *data, ngx_log_t *log);
static void ngx_http_invoices_job_done(ngx_event_t *ev);
static void ngx_http_invoices_job_hold(ngx_event_t *ev);
static void ngx_http_invoices_job_resume(ngx_http_request_t *r);
static void ngx_http_invoices_job_bumped(ngx_http_request_t *r, void *data);
static void ngx_http_invoices_job_log(ngx_http_request_t *r,
    ngx_http_invoices_job_t *job);
static void ngx_http_invoices_job_cleanup(void *data);
static PGresult *ngx_http_invoices_pg_exec(ngx_http_invoices_job_t *job,
    const char *sql, int nparams, const char *const *values, ngx_uint_t fail);
static PGresult *ngx_http_invoices_pg_run(ngx_http_invoices_pg_conn_t *pc,
    const char *sql, int nparams, const char *const *values);
static ngx_uint_t ngx_http_invoices_pg_transient(PGresult *res);
static PGconn *ngx_http_invoices_pg_connect(ngx_http_invoices_job_t *job,
    ngx_http_invoices_pg_conn_t **pc);
static void ngx_http_invoices_pg_note(ngx_http_invoices_job_t *job,
    const char *what, const char *detail);


static __thread ngx_http_invoices_pg_conn_t  *ngx_http_invoices_pg_mine;

static ngx_http_invoices_pg_conn_t  *ngx_http_invoices_pg_all;
static pthread_mutex_t  ngx_http_invoices_pg_lock = PTHREAD_MUTEX_INITIALIZER;


ngx_http_invoices_job_t *
ngx_http_invoices_job_create(ngx_http_request_t *r,
    ngx_http_invoices_loc_conf_t *ilcf)
{
    ngx_thread_task_t        *task;
    ngx_pool_cleanup_t       *cln;
    ngx_http_invoices_job_t  *job;

    task = ngx_thread_task_alloc(r->pool, sizeof(ngx_http_invoices_job_t));
    if (task == NULL) {
        return NULL;
    }

    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        return NULL;
    }

    job = task->ctx;
    job->task = task;
    job->thread_pool = ilcf->thread_pool;
    job->conninfo = (const char *) ilcf->database.data;
    job->finish = ngx_http_invoices_job_send;

    cln->handler = ngx_http_invoices_job_cleanup;
    cln->data = job;

    return job;
}


/*
 * Posts the job and holds the request until it is done.  Returns NGX_DONE,
 * or the rc of the 503 sent when the pool's queue is full.
 */

ngx_int_t
ngx_http_invoices_job_run(ngx_http_request_t *r, ngx_http_invoices_job_t *job)
{
    ngx_thread_task_t        *task;
    ngx_http_invoices_ctx_t  *ctx;

    task = job->task;
    task->handler = ngx_http_invoices_job_thread;
    task->event.handler = ngx_http_invoices_job_done;
    task->event.data = r;

    if (ngx_thread_task_post(job->thread_pool, task) != NGX_OK) {
        ngx_http_invoices_metrics_queue_full();
        return ngx_http_invoices_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                            "api_error", "thread_pool_full",
                                            "the server is busy, retry later",
                                            NULL);
    }

    ngx_http_invoices_metrics_job_posted();

    ctx = ngx_http_invoices_ctx(r);
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->job = job;

    /*
     * A graceful quit or reload lets the worker exit once no timer but
     * cancelable ones is left; nothing else holds it while a job (a Stripe
     * sequence, say) runs.  This timer does, so the answer is still sent.
     */

    job->hold.handler = ngx_http_invoices_job_hold;
    job->hold.data = job;
    job->hold.log = r->connection->log;
    ngx_add_timer(&job->hold, 60000);

    r->main->blocked++;
    r->aio = 1;
    r->main->count++;
    r->write_event_handler = ngx_http_invoices_job_resume;

    return NGX_DONE;
}


/* the default finish: send what the thread left */

ngx_int_t
ngx_http_invoices_job_send(ngx_http_request_t *r, ngx_http_invoices_job_t *job)
{
    char  *body;

    body = job->body;
    job->body = NULL;

    return ngx_http_invoices_send_json(r, job->status, body, job->len);
}


static void
ngx_http_invoices_job_thread(void *data, ngx_log_t *log)
{
    ngx_http_invoices_job_t  *job = data;

    ngx_http_invoices_metrics_thread_job(&job->metrics);
    job->run(job);
    ngx_http_invoices_metrics_thread_job(NULL);

    if (job->body == NULL && job->status == 0) {
        ngx_http_invoices_job_fail(job, NGX_HTTP_INTERNAL_SERVER_ERROR,
                                   "api_error", "internal_error",
                                   "internal error");
    }
}


static void
ngx_http_invoices_job_done(ngx_event_t *ev)
{
    ngx_connection_t         *c;
    ngx_http_request_t       *r;
    ngx_http_invoices_ctx_t  *ctx;

    r = ev->data;
    c = r->connection;

    ngx_http_set_log_request(c->log, r);

    ctx = ngx_http_get_module_ctx(r, ngx_http_invoices_module);

    if (ctx && ctx->job) {
        ngx_http_invoices_metrics_job_done(&ctx->job->metrics);
    }

    /*
     * The hold timer stays until the answer is made: the wait for the
     * cache bump that may come first has only cancelable timers, and a
     * worker told to quit gracefully would not wait for it.
     */

    r->main->blocked--;
    r->aio = 0;

    r->write_event_handler(r);
    ngx_http_run_posted_requests(c);
}


/* the job is still running: keep holding */

static void
ngx_http_invoices_job_hold(ngx_event_t *ev)
{
    ngx_add_timer(ev, 60000);
}


static void
ngx_http_invoices_job_resume(ngx_http_request_t *r)
{
    ngx_http_invoices_job_t  *job;
    ngx_http_invoices_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_invoices_module);
    job = ctx->job;

    r->write_event_handler = ngx_http_request_empty_handler;

    if (job->log[0] != '\0') {
        ngx_http_invoices_job_log(r, job);
    }

    /*
     * A job that changed invoices answers once the cache generation is
     * bumped, so that any list read after the answer, on any node, is
     * fresh.
     */

    if (job->changed
        && ngx_http_invoices_cache_bump_for(r, ngx_http_invoices_job_bumped,
                                            job)
           == NGX_OK)
    {
        return;
    }

    if (job->hold.timer_set) {
        ngx_del_timer(&job->hold);
    }

    ngx_http_finalize_request(r, job->finish(r, job));
}


static void
ngx_http_invoices_job_bumped(ngx_http_request_t *r, void *data)
{
    ngx_connection_t         *c;
    ngx_http_invoices_job_t  *job = data;

    c = r->connection;
    ngx_http_set_log_request(c->log, r);

    if (job->hold.timer_set) {
        ngx_del_timer(&job->hold);
    }

    ngx_http_finalize_request(r, job->finish(r, job));
    ngx_http_run_posted_requests(c);
}


/*
 * While PostgreSQL is down every request fails the same way: log the first
 * failure, then at most one a second with the count of those left out.
 */

static void
ngx_http_invoices_job_log(ngx_http_request_t *r, ngx_http_invoices_job_t *job)
{
    ngx_uint_t         level;

    static ngx_msec_t  last;
    static ngx_uint_t  suppressed;

    if (job->status == NGX_HTTP_SERVICE_UNAVAILABLE
        && last != 0 && ngx_current_msec - last < 1000)
    {
        suppressed++;
        return;
    }

    if (job->status == NGX_HTTP_SERVICE_UNAVAILABLE) {
        last = ngx_current_msec ? ngx_current_msec : 1;
    }

    level = job->log_level ? job->log_level : NGX_LOG_ERR;

    if (suppressed) {
        ngx_log_error(level, r->connection->log, 0,
                      "invoices: %s (and %ui more like it)",
                      job->log, suppressed);
        suppressed = 0;
        return;
    }

    ngx_log_error(level, r->connection->log, 0, "invoices: %s", job->log);
}


static void
ngx_http_invoices_job_cleanup(void *data)
{
    ngx_http_invoices_job_t  *job = data;

    if (job->hold.timer_set) {
        ngx_del_timer(&job->hold);
    }

    free(job->body);
    job->body = NULL;
}


void
ngx_http_invoices_job_fail(ngx_http_invoices_job_t *job, ngx_uint_t status,
    const char *type, const char *code, const char *message)
{
    free(job->body);

    job->status = status;
    job->body = ngx_http_invoices_json_error(type, code, message, NULL,
                                             &job->len);
}


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
    return ngx_http_invoices_pg_exec(job, sql, nparams, values, 1);
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
    int nparams, const char *const *values, ngx_uint_t fail)
{
    PGconn                       *conn;
    PGresult                     *res;
    ngx_uint_t                    attempt;
    ExecStatusType                st;
    ngx_http_invoices_pg_conn_t  *pc;

    for (attempt = 0; attempt < 2; attempt++) {

        conn = ngx_http_invoices_pg_connect(job, &pc);
        if (conn == NULL) {
            break;
        }

        res = ngx_http_invoices_pg_run(pc, sql, nparams, values);
        st = PQresultStatus(res);

        if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK) {
            return res;
        }

        if (PQstatus(conn) != CONNECTION_BAD && attempt == 0
            && pc->nprepared
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
            pc->nprepared = 0;
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
        pc->nprepared = 0;
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
 * the text.  A statement that cannot be prepared runs unprepared, which
 * gives PostgreSQL's error for it.
 */

static PGresult *
ngx_http_invoices_pg_run(ngx_http_invoices_pg_conn_t *pc, const char *sql,
    int nparams, const char *const *values)
{
    char        name[NGX_INT_T_LEN + 8];
    PGresult   *res;
    ngx_uint_t  i;

    for (i = 0; i < pc->nprepared; i++) {
        if (pc->prepared[i] == sql) {
            goto prepared;
        }
    }

    if (i == NGX_HTTP_INVOICES_PREPARED) {
        return PQexecParams(pc->conn, sql, nparams, NULL, values, NULL, NULL,
                            0);
    }

    *ngx_sprintf((u_char *) name, "ngxinv_%ui", i) = '\0';

    res = PQprepare(pc->conn, name, sql, nparams, NULL);

    if (PQresultStatus(res) != PGRES_COMMAND_OK) {
        PQclear(res);

        if (PQstatus(pc->conn) == CONNECTION_BAD) {
            return NULL;
        }

        return PQexecParams(pc->conn, sql, nparams, NULL, values, NULL, NULL,
                            0);
    }

    PQclear(res);

    pc->prepared[i] = sql;
    pc->nprepared++;

prepared:

    *ngx_sprintf((u_char *) name, "ngxinv_%ui", i) = '\0';

    return PQexecPrepared(pc->conn, name, nparams, values, NULL, NULL, 0);
}


static PGconn *
ngx_http_invoices_pg_connect(ngx_http_invoices_job_t *job,
    ngx_http_invoices_pg_conn_t **pcp)
{
    PGconn                       *conn;
    ngx_http_invoices_pg_conn_t  *pc;

    /*
     * conninfo given later overrides these: "dbname" is expanded as a
     * whole connection string.  TCP keepalive (after 30 s idle, 3 probes
     * 10 s apart) and tcp_user_timeout (60 s for data left unacknowledged):
     * a PostgreSQL host that vanishes (a cut network, a powered-off
     * machine) is noticed within about a minute, not the kernel's two
     * hours.  Unix sockets ignore both.
     */
    static const char *const  keys[] = {
        "connect_timeout", "client_encoding", "fallback_application_name",
        "keepalives", "keepalives_idle", "keepalives_interval",
        "keepalives_count", "tcp_user_timeout", "dbname", NULL
    };

    const char  *values[] = {
        "3", "UTF8", "ngx_http_invoices", "1", "30", "10", "3", "60000",
        job->conninfo, NULL
    };

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

        (void) pthread_mutex_lock(&ngx_http_invoices_pg_lock);
        pc->all = ngx_http_invoices_pg_all;
        ngx_http_invoices_pg_all = pc;
        (void) pthread_mutex_unlock(&ngx_http_invoices_pg_lock);
    }

    *pcp = pc;

    if (pc->conn != NULL && PQstatus(pc->conn) == CONNECTION_OK) {
        return pc->conn;
    }

    if (pc->conn != NULL) {
        PQfinish(pc->conn);
        pc->conn = NULL;
    }

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

    pc->conn = conn;
    pc->nprepared = 0;

    return conn;
}


/*
 * The worker exits: nginx's thread pool module, whose exit_process runs
 * before ours, has already stopped every pool thread.
 */

void
ngx_http_invoices_pg_close_all(void)
{
    ngx_http_invoices_pg_conn_t  *pc, *next;

    (void) pthread_mutex_lock(&ngx_http_invoices_pg_lock);

    for (pc = ngx_http_invoices_pg_all; pc != NULL; pc = next) {
        next = pc->all;

        if (pc->conn != NULL) {
            PQfinish(pc->conn);
        }

        free(pc);
    }

    ngx_http_invoices_pg_all = NULL;

    (void) pthread_mutex_unlock(&ngx_http_invoices_pg_lock);
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
