
/*
 * The worker's Redis link: hiredis async on nginx's event loop.
 *
 * One connection per worker, opened after fork to a numeric address or a
 * unix socket (hiredis 0.14 would resolve names with a blocking
 * getaddrinfo).  The hiredis socket is registered as an nginx connection
 * with level-triggered events (hiredis reads once per event), its hooks
 * turn nginx events on and off.  Each call has a cancelable nginx timer
 * (hiredis 0.14 has none) and a request cleanup, so a reply for a request
 * that has gone, or timed out, is dropped safely.  After a timeout the
 * link counts as stalled and is bypassed until Redis answers again; a
 * lost connection is reopened with backoff.  Nothing here ever waits.
 */


#include "ngx_http_invoices_module.h"
#include "ngx_http_invoices_redis.h"


typedef struct {
    ngx_http_request_t          *r;       /* NULL: a call for nobody */
    ngx_uint_t                   waiting; /* the handler is still due */
    ngx_http_invoices_redis_pt   handler;
    void                        *data;
    ngx_http_cleanup_t          *cln;
    ngx_event_t                  timer;
} ngx_http_invoices_redis_call_t;


typedef struct {
    ngx_http_invoices_redis_conf_t  *conf;
    ngx_log_t                       *log;
    redisAsyncContext               *ac;
    ngx_connection_t                *c;
    ngx_event_t                      reconnect;
    ngx_msec_t                       backoff;
    void                           (*connected)(void);  /* usable again */
    ngx_msec_t                       logged;
    ngx_uint_t                       suppressed;
    unsigned                         ready:1;
    unsigned                         stalled:1;
    unsigned                         exiting:1;
} ngx_http_invoices_redis_t;


static void ngx_http_invoices_redis_connect(void);
static void ngx_http_invoices_redis_retry(ngx_event_t *ev);
static void ngx_http_invoices_redis_schedule(void);
static void ngx_http_invoices_redis_on_connect(const redisAsyncContext *ac,
    int status);
static void ngx_http_invoices_redis_on_disconnect(const redisAsyncContext *ac,
    int status);
static void ngx_http_invoices_redis_read(ngx_event_t *ev);
static void ngx_http_invoices_redis_write(ngx_event_t *ev);
static void ngx_http_invoices_redis_add_read(void *data);
static void ngx_http_invoices_redis_del_read(void *data);
static void ngx_http_invoices_redis_add_write(void *data);
static void ngx_http_invoices_redis_del_write(void *data);
static void ngx_http_invoices_redis_cleanup(void *data);
static void ngx_http_invoices_redis_reply(redisAsyncContext *ac, void *r,
    void *data);
static void ngx_http_invoices_redis_timeout(ngx_event_t *ev);
static void ngx_http_invoices_redis_request_gone(void *data);
static void ngx_http_invoices_redis_error(const char *what,
    const char *detail);


static ngx_http_invoices_redis_t  ngx_http_invoices_redis;


/* init_process: start connecting */

ngx_int_t
ngx_http_invoices_redis_init(ngx_cycle_t *cycle,
    ngx_http_invoices_redis_conf_t *conf, void (*connected)(void))
{
    ngx_http_invoices_redis_t  *rd = &ngx_http_invoices_redis;

    ngx_memzero(rd, sizeof(ngx_http_invoices_redis_t));

    rd->conf = conf;
    rd->log = cycle->log;
    rd->connected = connected;

    rd->reconnect.handler = ngx_http_invoices_redis_retry;
    rd->reconnect.log = cycle->log;
    rd->reconnect.data = rd;
    rd->reconnect.cancelable = 1;

    ngx_http_invoices_redis_connect();

    return NGX_OK;
}


/* exit_process: close the link; pending calls get no answer */

void
ngx_http_invoices_redis_exit(void)
{
    ngx_http_invoices_redis_t  *rd = &ngx_http_invoices_redis;

    rd->exiting = 1;

    if (rd->reconnect.timer_set) {
        ngx_del_timer(&rd->reconnect);
    }

    if (rd->ac) {
        redisAsyncFree(rd->ac);
        rd->ac = NULL;
    }
}


ngx_uint_t
ngx_http_invoices_redis_ready(void)
{
    return ngx_http_invoices_redis.ready && !ngx_http_invoices_redis.stalled;
}


/*
 * Sends a command for a request (or for nobody, r == NULL).  NGX_OK: the
 * handler will be called exactly once, with the reply or NULL, unless the
 * request goes away first.  NGX_DECLINED: Redis is not usable now; do
 * without it.
 */

ngx_int_t
ngx_http_invoices_redis_call(ngx_http_request_t *r,
    ngx_http_invoices_redis_pt handler, void *data, int argc,
    const char **argv, const size_t *argvlen)
{
    ngx_http_cleanup_t              *cln;
    ngx_http_invoices_redis_t       *rd = &ngx_http_invoices_redis;
    ngx_http_invoices_redis_call_t  *call;

    if (!rd->ready || rd->stalled || rd->ac == NULL) {
        return NGX_DECLINED;
    }

    call = ngx_calloc(sizeof(ngx_http_invoices_redis_call_t), rd->log);
    if (call == NULL) {
        return NGX_DECLINED;
    }

    if (r) {
        cln = ngx_http_cleanup_add(r, 0);
        if (cln == NULL) {
            ngx_free(call);
            return NGX_DECLINED;
        }

        cln->handler = ngx_http_invoices_redis_request_gone;
        cln->data = call;
        call->cln = cln;
    }

    call->r = r;
    call->waiting = 1;
    call->handler = handler;
    call->data = data;

    call->timer.handler = ngx_http_invoices_redis_timeout;
    call->timer.data = call;
    call->timer.log = rd->log;
    call->timer.cancelable = 1;

    if (redisAsyncCommandArgv(rd->ac, ngx_http_invoices_redis_reply, call,
                              argc, argv, argvlen)
        != REDIS_OK)
    {
        if (call->cln) {
            call->cln->handler = NULL;
        }

        ngx_free(call);
        return NGX_DECLINED;
    }

    ngx_add_timer(&call->timer, rd->conf->timeout);

    return NGX_OK;
}


/* fire and forget */

void
ngx_http_invoices_redis_send(int argc, const char **argv,
    const size_t *argvlen)
{
    ngx_http_invoices_redis_t  *rd = &ngx_http_invoices_redis;

    if (rd->ready && rd->ac) {
        (void) redisAsyncCommandArgv(rd->ac, NULL, NULL, argc, argv,
                                     argvlen);
    }
}


static void
ngx_http_invoices_redis_reply(redisAsyncContext *ac, void *r, void *data)
{
    redisReply                      *reply = r;
    ngx_http_invoices_redis_t       *rd = &ngx_http_invoices_redis;
    ngx_http_invoices_redis_call_t  *call = data;

    if (call->timer.timer_set) {
        ngx_del_timer(&call->timer);
    }

    /*
     * Any answer means Redis is alive: the link is usable again and the
     * backoff starts over; what was put off while it was stalled (a lost
     * bump) is sent now.
     */

    if (reply) {
        rd->backoff = 0;

        if (rd->stalled) {
            rd->stalled = 0;

            if (rd->connected && !rd->exiting) {
                rd->connected();
            }
        }
    }

    /* NOSCRIPT is the cache's to handle: the script is sent again */

    if (reply && reply->type == REDIS_REPLY_ERROR
        && ngx_strncmp(reply->str, "NOSCRIPT", 8) != 0)
    {
        ngx_http_invoices_redis_error("command failed", reply->str);
    }

    if (call->waiting && !rd->exiting) {
        if (call->cln) {
            call->cln->handler = NULL;
        }

        call->handler(call->r, call->data, reply);
    }

    ngx_free(call);
}


static void
ngx_http_invoices_redis_timeout(ngx_event_t *ev)
{
    ngx_http_invoices_redis_call_t  *call = ev->data;

    ngx_http_invoices_redis.stalled = 1;
    ngx_http_invoices_redis_error("command timed out", NULL);

    /* the call itself stays until hiredis hands back its reply */

    call->waiting = 0;

    if (call->cln) {
        call->cln->handler = NULL;
    }

    call->handler(call->r, call->data, NULL);
}


static void
ngx_http_invoices_redis_request_gone(void *data)
{
    ngx_http_invoices_redis_call_t  *call = data;

    call->waiting = 0;

    if (call->timer.timer_set) {
        ngx_del_timer(&call->timer);
    }
}


static void
ngx_http_invoices_redis_connect(void)
{
    ngx_connection_t           *c;
    redisAsyncContext          *ac;
    ngx_http_invoices_redis_t  *rd = &ngx_http_invoices_redis;

    if (rd->conf->unix_path.len) {
        ac = redisAsyncConnectUnix((char *) rd->conf->unix_path.data);

    } else {
        ac = redisAsyncConnect((char *) rd->conf->host.data, rd->conf->port);
    }

    if (ac == NULL || ac->err) {
        ngx_http_invoices_redis_error("connect failed",
                                      ac ? ac->errstr : "out of memory");
        if (ac) {
            redisAsyncFree(ac);
        }

        ngx_http_invoices_redis_schedule();
        return;
    }

    c = ngx_get_connection(ac->c.fd, rd->log);
    if (c == NULL) {
        redisAsyncFree(ac);
        ngx_http_invoices_redis_schedule();
        return;
    }

    c->data = ac;
    c->log = rd->log;
    c->read->log = rd->log;
    c->write->log = rd->log;
    c->read->handler = ngx_http_invoices_redis_read;
    c->write->handler = ngx_http_invoices_redis_write;

    rd->ac = ac;
    rd->c = c;

    /* the hooks first: setting the connect callback adds the write event */

    ac->ev.data = c;
    ac->ev.addRead = ngx_http_invoices_redis_add_read;
    ac->ev.delRead = ngx_http_invoices_redis_del_read;
    ac->ev.addWrite = ngx_http_invoices_redis_add_write;
    ac->ev.delWrite = ngx_http_invoices_redis_del_write;
    ac->ev.cleanup = ngx_http_invoices_redis_cleanup;

    (void) redisAsyncSetDisconnectCallback(ac,
                                       ngx_http_invoices_redis_on_disconnect);
    (void) redisAsyncSetConnectCallback(ac,
                                        ngx_http_invoices_redis_on_connect);

    if (rd->conf->password.len) {
        (void) redisAsyncCommand(ac, NULL, NULL, "AUTH %b",
                                 rd->conf->password.data,
                                 rd->conf->password.len);
    }

    if (rd->conf->db) {
        (void) redisAsyncCommand(ac, NULL, NULL, "SELECT %d",
                                 (int) rd->conf->db);
    }
}


static void
ngx_http_invoices_redis_on_connect(const redisAsyncContext *ac, int status)
{
    ngx_http_invoices_redis_t  *rd = &ngx_http_invoices_redis;

    if (status != REDIS_OK) {
        /* hiredis frees the context after this; the cleanup hook runs */
        ngx_http_invoices_redis_error("connect failed", ac->errstr);
        rd->ac = NULL;
        ngx_http_invoices_redis_schedule();
        return;
    }

    /* the backoff starts over only once Redis answers (see the reply) */

    rd->ready = 1;
    rd->stalled = 0;

    ngx_log_error(NGX_LOG_INFO, rd->log, 0, "invoices: redis connected to %V",
                  &rd->conf->addr);

    if (rd->connected) {
        rd->connected();
    }
}


static void
ngx_http_invoices_redis_on_disconnect(const redisAsyncContext *ac,
    int status)
{
    ngx_http_invoices_redis_t  *rd = &ngx_http_invoices_redis;

    rd->ready = 0;
    rd->ac = NULL;

    if (rd->exiting) {
        return;
    }

    ngx_http_invoices_redis_error("connection lost",
                                  status == REDIS_OK ? NULL : ac->errstr);
    ngx_http_invoices_redis_schedule();
}


/* 100 ms, doubling up to 5 s */

static void
ngx_http_invoices_redis_schedule(void)
{
    ngx_http_invoices_redis_t  *rd = &ngx_http_invoices_redis;

    rd->ready = 0;

    if (rd->exiting || ngx_exiting || ngx_quit || ngx_terminate) {
        return;
    }

    rd->backoff = rd->backoff ? ngx_min(rd->backoff * 2, 5000) : 100;

    if (!rd->reconnect.timer_set) {
        ngx_add_timer(&rd->reconnect, rd->backoff);
    }
}


static void
ngx_http_invoices_redis_retry(ngx_event_t *ev)
{
    if (ngx_http_invoices_redis.ac == NULL) {
        ngx_http_invoices_redis_connect();
    }
}


static void
ngx_http_invoices_redis_read(ngx_event_t *ev)
{
    ngx_connection_t  *c = ev->data;

    redisAsyncHandleRead(c->data);
}


static void
ngx_http_invoices_redis_write(ngx_event_t *ev)
{
    ngx_connection_t  *c = ev->data;

    redisAsyncHandleWrite(c->data);
}


/* hiredis reads once per call: level-triggered events, not edge */

static void
ngx_http_invoices_redis_add_read(void *data)
{
    ngx_connection_t  *c = data;

    if (!c->read->active) {
        (void) ngx_add_event(c->read, NGX_READ_EVENT, NGX_LEVEL_EVENT);
    }
}


static void
ngx_http_invoices_redis_del_read(void *data)
{
    ngx_connection_t  *c = data;

    if (c->read->active) {
        (void) ngx_del_event(c->read, NGX_READ_EVENT, 0);
    }
}


static void
ngx_http_invoices_redis_add_write(void *data)
{
    ngx_connection_t  *c = data;

    if (!c->write->active) {
        (void) ngx_add_event(c->write, NGX_WRITE_EVENT, NGX_LEVEL_EVENT);
    }
}


static void
ngx_http_invoices_redis_del_write(void *data)
{
    ngx_connection_t  *c = data;

    if (c->write->active) {
        (void) ngx_del_event(c->write, NGX_WRITE_EVENT, 0);
    }
}


/* hiredis frees the context and will close the socket itself */

static void
ngx_http_invoices_redis_cleanup(void *data)
{
    ngx_connection_t  *c = data;

    ngx_http_invoices_redis_del_read(c);
    ngx_http_invoices_redis_del_write(c);

    if (c->read->timer_set) {
        ngx_del_timer(c->read);
    }

    if (c->write->timer_set) {
        ngx_del_timer(c->write);
    }

    if (c->read->posted) {
        ngx_delete_posted_event(c->read);
    }

    if (c->write->posted) {
        ngx_delete_posted_event(c->write);
    }

    ngx_free_connection(c);
    c->fd = (ngx_socket_t) -1;

    if (ngx_http_invoices_redis.c == c) {
        ngx_http_invoices_redis.c = NULL;
    }
}


/* at most one line a second per worker while Redis is down or slow */

static void
ngx_http_invoices_redis_error(const char *what, const char *detail)
{
    ngx_http_invoices_redis_t  *rd = &ngx_http_invoices_redis;

    if (rd->logged && ngx_current_msec - rd->logged < 1000) {
        rd->suppressed++;
        return;
    }

    rd->logged = ngx_current_msec ? ngx_current_msec : 1;

    ngx_log_error(NGX_LOG_ERR, rd->log, 0,
                  "invoices: redis %V: %s%s%s (%ui more like it before)",
                  &rd->conf->addr, what, detail ? ": " : "",
                  detail ? detail : "", rd->suppressed);

    rd->suppressed = 0;
}
