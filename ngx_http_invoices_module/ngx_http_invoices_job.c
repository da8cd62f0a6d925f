
/*
 * The one thread-pool job runner: post a job, hold the request, complete
 * it, resume the request, answer (or, for the background work, a job
 * without a request, posted by a timer); the one way to set a job's
 * error; and
 * the pool threads' long-lived handles (PostgreSQL connections, curl
 * handles), closed at worker exit.
 *
 * A job is posted to the nginx thread pool with the request held
 * (r->main->blocked, r->aio), exactly as nginx's copy filter does for
 * threaded reads.  The thread runs job->run with plain C inputs and leaves
 * a status and a malloc()ed JSON body; the completion handler resumes the
 * request on the event loop, job->defer may hold the answer a while (the
 * cache's bump after a write), and job->finish sends it.
 *
 * The handles are closed by the worker's exit_process, after nginx has
 * stopped the pool threads: a thread-specific destructor would run in an
 * exiting thread while the worker unloads this module, and crash.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <pthread.h>

#include "ngx_http_invoices_module.h"
#include "ngx_http_invoices_json.h"
#include "ngx_http_invoices_job.h"


static void ngx_http_invoices_job_thread(void *data, ngx_log_t *log);
static void ngx_http_invoices_job_done(ngx_event_t *ev);
static void ngx_http_invoices_job_background_done(ngx_event_t *ev);
static void ngx_http_invoices_job_hold(ngx_event_t *ev);
static void ngx_http_invoices_job_resume(ngx_http_request_t *r);
static void ngx_http_invoices_job_deferred(ngx_http_request_t *r, void *data);
static void ngx_http_invoices_job_log(ngx_http_request_t *r,
    ngx_http_invoices_job_t *job);
static void ngx_http_invoices_job_cleanup(void *data);


static ngx_http_invoices_thread_handle_t  *ngx_http_invoices_handles;
static pthread_mutex_t  ngx_http_invoices_handles_lock =
    PTHREAD_MUTEX_INITIALIZER;


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
    ngx_int_t  rc;

    rc = ngx_http_invoices_job_post(r, job);

    if (rc == NGX_DECLINED) {
        return ngx_http_invoices_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                            "api_error", "thread_pool_full",
                                            "the server is busy, retry later",
                                            NULL);
    }

    return rc;
}


/*
 * The same, for a job posted again while its answer is already going out
 * (an export's next rows): NGX_DONE, or NGX_DECLINED with nothing sent
 * when the pool's queue is full, or NGX_ERROR.
 */

ngx_int_t
ngx_http_invoices_job_post(ngx_http_request_t *r, ngx_http_invoices_job_t *job)
{
    ngx_thread_task_t        *task;
    ngx_http_invoices_ctx_t  *ctx;

    /* before posting: once posted, the request must be held */

    ctx = ngx_http_invoices_ctx(r);
    if (ctx == NULL) {
        return NGX_ERROR;
    }

    task = job->task;
    task->handler = ngx_http_invoices_job_thread;
    task->event.handler = ngx_http_invoices_job_done;
    task->event.data = r;

    if (ngx_thread_task_post(job->thread_pool, task) != NGX_OK) {
        ngx_http_invoices_metrics_queue_full();
        return NGX_DECLINED;
    }

    ngx_http_invoices_metrics_job_posted();

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "invoices job: posted, status so far %ui", job->status);

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


/*
 * A job without a request (the background work): made once, posted again
 * and again; job->run runs in the thread as any job's, and job->done on
 * the event loop once it is finished, with what the thread left (freed
 * after it).
 */

ngx_http_invoices_job_t *
ngx_http_invoices_job_background(ngx_pool_t *pool, ngx_log_t *log)
{
    ngx_thread_task_t        *task;
    ngx_http_invoices_job_t  *job;

    task = ngx_thread_task_alloc(pool, sizeof(ngx_http_invoices_job_t));
    if (task == NULL) {
        return NULL;
    }

    job = task->ctx;
    job->task = task;

    task->handler = ngx_http_invoices_job_thread;
    task->event.handler = ngx_http_invoices_job_background_done;
    task->event.data = job;
    task->event.log = log;

    return job;
}


/* NGX_OK, or NGX_DECLINED when the pool's queue is full */

ngx_int_t
ngx_http_invoices_job_post_background(ngx_http_invoices_job_t *job)
{
    job->status = 0;
    job->log[0] = '\0';
    job->log_level = 0;
    ngx_memzero(&job->metrics, sizeof(ngx_http_invoices_metrics_job_t));

    if (ngx_thread_task_post(job->thread_pool, job->task) != NGX_OK) {
        return NGX_DECLINED;
    }

    ngx_http_invoices_metrics_job_posted();

    return NGX_OK;
}


static void
ngx_http_invoices_job_background_done(ngx_event_t *ev)
{
    ngx_http_invoices_job_t  *job = ev->data;

    ngx_http_invoices_metrics_job_done(&job->metrics);

    job->done(job);

    free(job->body);
    job->body = NULL;
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
     * A job that changed invoices sets defer (the cache's bump): the
     * answer waits for it, so that any list read after the answer, on any
     * node, is fresh.
     */

    if (job->defer
        && job->defer(r, ngx_http_invoices_job_deferred, job) == NGX_OK)
    {
        ngx_log_debug0(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                       "invoices job: answer deferred");
        return;
    }

    if (job->hold.timer_set) {
        ngx_del_timer(&job->hold);
    }

    ngx_http_finalize_request(r, job->finish(r, job));
}


static void
ngx_http_invoices_job_deferred(ngx_http_request_t *r, void *data)
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


/* the caller's mistake (4xx, invalid_request_error), naming "param" */

void
ngx_http_invoices_job_refuse(ngx_http_invoices_job_t *job, ngx_uint_t status,
    const char *code, const char *message, const char *param)
{
    free(job->body);

    job->status = status;
    job->body = ngx_http_invoices_json_error("invalid_request_error", code,
                                             message, param, &job->len);
}


/* a pool thread made a handle: keep it for the worker's exit */

void
ngx_http_invoices_thread_handle_keep(ngx_http_invoices_thread_handle_t *h)
{
    (void) pthread_mutex_lock(&ngx_http_invoices_handles_lock);
    h->all = ngx_http_invoices_handles;
    ngx_http_invoices_handles = h;
    (void) pthread_mutex_unlock(&ngx_http_invoices_handles_lock);
}


/*
 * The worker exits: nginx's thread pool module, whose exit_process runs
 * before ours, has already stopped every pool thread.
 */

void
ngx_http_invoices_thread_handles_close(void)
{
    ngx_http_invoices_thread_handle_t  *h, *next;

    (void) pthread_mutex_lock(&ngx_http_invoices_handles_lock);

    for (h = ngx_http_invoices_handles; h != NULL; h = next) {
        next = h->all;
        h->close(h);
    }

    ngx_http_invoices_handles = NULL;

    (void) pthread_mutex_unlock(&ngx_http_invoices_handles_lock);
}
