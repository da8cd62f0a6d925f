
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
 * lost connection is reopened with backoff.  A heartbeat every 200 ms
 * finds a hung Redis even when nothing else is sent; it reads a key
 * (ngx_http_invoices_redis_probe), so that a change nobody announced is
 * seen too.  A worker held off its event loop runs neither, so the link
 * is also bypassed while the newest answer is older than the heartbeat
 * can explain.  Nothing here ever waits.
 */


#include "ngx_http_invoices_module.h"
#include "ngx_http_invoices_redis.h"
#include "ngx_http_invoices_metrics.h"


typedef struct {
    ngx_http_request_t          *r;       /* NULL: a call for nobody */
    ngx_uint_t                   waiting; /* the handler is still due */
    ngx_http_invoices_redis_pt   handler;
    void                        *data;
    ngx_http_cleanup_t          *cln;
    ngx_msec_t                   sent;
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
    ngx_event_t                      ping;              /* main: heartbeat */
    const char                      *probe_key;         /* main: GET it */
    void                           (*probed)(redisReply *reply);
    const char                      *channel;           /* sub: SUBSCRIBE */
    void                           (*message)(ngx_str_t *payload);
    void                           (*state)(ngx_uint_t subscribed);
    const char                      *name;              /* for the log */
    ngx_msec_t                       stalled_at;
    ngx_msec_t                       answered;  /* its command's send time */
    ngx_msec_t                       logged;
    ngx_uint_t                       suppressed;
    unsigned                         ready:1;
    unsigned                         stalled:1;
    unsigned                         exiting:1;
    unsigned                         subscribed:1;
    unsigned                         pinging:1;
} ngx_http_invoices_redis_t;


static void ngx_http_invoices_redis_link_init(ngx_http_invoices_redis_t *rd,
    ngx_cycle_t *cycle, ngx_http_invoices_redis_conf_t *conf,
    const char *name);
static void ngx_http_invoices_redis_link_exit(ngx_http_invoices_redis_t *rd);
static void ngx_http_invoices_redis_connect(ngx_http_invoices_redis_t *rd);
static void ngx_http_invoices_redis_retry(ngx_event_t *ev);
static void ngx_http_invoices_redis_schedule(ngx_http_invoices_redis_t *rd);
static void ngx_http_invoices_redis_ping(ngx_event_t *ev);
static void ngx_http_invoices_redis_pong(ngx_http_request_t *r, void *data,
    redisReply *reply);
static void ngx_http_invoices_redis_subscribed(redisAsyncContext *ac,
    void *r, void *data);
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
static void ngx_http_invoices_redis_error(ngx_http_invoices_redis_t *rd,
    const char *what, const char *detail);


/* the link for commands, and the one that only listens (SUBSCRIBE) */
static ngx_http_invoices_redis_t  ngx_http_invoices_redis;
static ngx_http_invoices_redis_t  ngx_http_invoices_redis_sub;


/*
 * A heartbeat every 200 ms keeps "stalled" true to Redis even when the
 * worker serves everything from its own copy and sends nothing else: a
 * hung Redis turns the copies off within 200 ms plus
 * invoices_redis_timeout.  It reads the probe key when there is one (the
 * generation: a change made by hand is seen within the same 200 ms), or
 * it is a PING.
 */
#define NGX_HTTP_INVOICES_REDIS_PING  200

/*
 * The link is trusted only while Redis answered a command sent within two
 * heartbeats plus invoices_redis_timeout (one heartbeat of slack for a
 * worker that runs its timers late).  A worker that did not run for
 * longer, as a busy machine can do to it, has sent no heartbeat and run
 * no timer meanwhile: without this it would take a Redis that hung
 * during that time for a healthy one, and serve its copies, until its
 * next heartbeat timed out.
 */
#define ngx_http_invoices_redis_fresh(rd)                                     \
    (ngx_current_msec - (rd)->answered                                        \
     <= 2 * NGX_HTTP_INVOICES_REDIS_PING + (rd)->conf->timeout)

/*
 * A link stalled this long is closed and opened again: a Redis host that
 * vanished without closing the connection would otherwise hold it for as
 * long as the kernel keeps retransmitting.
 */
#define NGX_HTTP_INVOICES_REDIS_GIVE_UP  5000


/* init_process: start connecting */

ngx_int_t
ngx_http_invoices_redis_init(ngx_cycle_t *cycle,
    ngx_http_invoices_redis_conf_t *conf, void (*connected)(void))
{
    ngx_http_invoices_redis_t  *rd = &ngx_http_invoices_redis;

    ngx_http_invoices_redis_link_init(rd, cycle, conf, "");

    rd->connected = connected;

    rd->ping.handler = ngx_http_invoices_redis_ping;
    rd->ping.log = cycle->log;
    rd->ping.data = rd;
    rd->ping.cancelable = 1;

    ngx_http_invoices_redis_connect(rd);

    ngx_add_timer(&rd->ping, NGX_HTTP_INVOICES_REDIS_PING);

    return NGX_OK;
}


/*
 * init_process, after redis_init: a second link that subscribes to
 * "channel".  state(1) once the subscription stands, state(0) when it is
 * lost (messages may have been missed); message() for each message, with
 * what was published.
 */

ngx_int_t
ngx_http_invoices_redis_subscribe(ngx_cycle_t *cycle, const char *channel,
    void (*message)(ngx_str_t *payload),
    void (*state)(ngx_uint_t subscribed))
{
    ngx_http_invoices_redis_t  *rd = &ngx_http_invoices_redis_sub;

    ngx_http_invoices_redis_link_init(rd, cycle,
                                      ngx_http_invoices_redis.conf,
                                      " subscription");

    rd->channel = channel;
    rd->message = message;
    rd->state = state;

    ngx_http_invoices_redis_connect(rd);

    return NGX_OK;
}


/*
 * init_process, after redis_init: the heartbeat sends "GET key" instead of
 * PING, and hands each answer (a string or nil) to probed(); errors and
 * timeouts count as for the PING (the link logs them, a timeout stalls it).
 */

void
ngx_http_invoices_redis_probe(const char *key,
    void (*probed)(redisReply *reply))
{
    ngx_http_invoices_redis.probe_key = key;
    ngx_http_invoices_redis.probed = probed;
}


static void
ngx_http_invoices_redis_link_init(ngx_http_invoices_redis_t *rd,
    ngx_cycle_t *cycle, ngx_http_invoices_redis_conf_t *conf,
    const char *name)
{
    ngx_memzero(rd, sizeof(ngx_http_invoices_redis_t));

    rd->conf = conf;
    rd->log = cycle->log;
    rd->name = name;

    rd->reconnect.handler = ngx_http_invoices_redis_retry;
    rd->reconnect.log = cycle->log;
    rd->reconnect.data = rd;
    rd->reconnect.cancelable = 1;
}


/* exit_process: close the links; pending calls get no answer */

void
ngx_http_invoices_redis_exit(void)
{
    ngx_http_invoices_redis_link_exit(&ngx_http_invoices_redis_sub);
    ngx_http_invoices_redis_link_exit(&ngx_http_invoices_redis);
}


static void
ngx_http_invoices_redis_link_exit(ngx_http_invoices_redis_t *rd)
{
    rd->exiting = 1;

    if (rd->reconnect.timer_set) {
        ngx_del_timer(&rd->reconnect);
    }

    if (rd->ping.timer_set) {
        ngx_del_timer(&rd->ping);
    }

    if (rd->ac) {
        redisAsyncFree(rd->ac);
        rd->ac = NULL;
    }
}


/*
 * For the lookups and the worker's copies.  ngx_http_invoices_redis_call
 * does not ask for a fresh link, so the heartbeat still goes out on a
 * stale one, and its answer makes the link fresh again.
 */

ngx_uint_t
ngx_http_invoices_redis_ready(void)
{
    ngx_http_invoices_redis_t  *rd = &ngx_http_invoices_redis;

    return rd->ready && !rd->stalled && ngx_http_invoices_redis_fresh(rd);
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
    call->sent = ngx_current_msec;

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
     * bump) is sent now.  Alive when the command was sent, at least: an
     * answer read late vouches for no later time.
     */

    if (reply) {
        rd->backoff = 0;

        if ((ngx_msec_int_t) (call->sent - rd->answered) > 0) {
            rd->answered = call->sent;
        }

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
        ngx_http_invoices_redis_error(rd, "command failed", reply->str);
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

    if (!ngx_http_invoices_redis.stalled) {
        ngx_http_invoices_redis.stalled = 1;
        ngx_http_invoices_redis.stalled_at = ngx_current_msec;
    }

    ngx_http_invoices_redis_error(&ngx_http_invoices_redis,
                                  "command timed out", NULL);

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
ngx_http_invoices_redis_connect(ngx_http_invoices_redis_t *rd)
{
    ngx_connection_t   *c;
    redisAsyncContext  *ac;

    if (rd->conf->unix_path.len) {
        ac = redisAsyncConnectUnix((char *) rd->conf->unix_path.data);

    } else {
        ac = redisAsyncConnect((char *) rd->conf->host.data, rd->conf->port);
    }

    if (ac == NULL || ac->err) {
        ngx_http_invoices_redis_error(rd, "connect failed",
                                      ac ? ac->errstr : "out of memory");
        if (ac) {
            redisAsyncFree(ac);
        }

        ngx_http_invoices_redis_schedule(rd);
        return;
    }

    c = ngx_get_connection(ac->c.fd, rd->log);
    if (c == NULL) {
        redisAsyncFree(ac);
        ngx_http_invoices_redis_schedule(rd);
        return;
    }

    c->data = ac;
    c->log = rd->log;
    c->read->log = rd->log;
    c->write->log = rd->log;
    c->read->handler = ngx_http_invoices_redis_read;
    c->write->handler = ngx_http_invoices_redis_write;

    ac->data = rd;
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
    ngx_http_invoices_redis_t  *rd = ac->data;

    if (status != REDIS_OK) {
        /* hiredis frees the context after this; the cleanup hook runs */
        ngx_http_invoices_redis_error(rd, "connect failed", ac->errstr);
        rd->ac = NULL;
        ngx_http_invoices_redis_schedule(rd);
        return;
    }

    /* the backoff starts over only once Redis answers (see the reply) */

    rd->ready = 1;
    rd->stalled = 0;

    /* as fresh as an answer: its first heartbeat tells (see redis_ready) */

    rd->answered = ngx_current_msec;

    ngx_log_error(NGX_LOG_INFO, rd->log, 0,
                  "invoices: redis%s connected to %V", rd->name,
                  &rd->conf->addr);

    if (rd->channel) {
        if (redisAsyncCommand(rd->ac, ngx_http_invoices_redis_subscribed, rd,
                              "SUBSCRIBE %s", rd->channel)
            != REDIS_OK)
        {
            ngx_http_invoices_redis_error(rd, "subscribe failed", NULL);
        }

        return;
    }

    if (rd->connected) {
        rd->connected();
    }
}


static void
ngx_http_invoices_redis_on_disconnect(const redisAsyncContext *ac,
    int status)
{
    ngx_http_invoices_redis_t  *rd = ac->data;

    rd->ready = 0;
    rd->ac = NULL;

    if (rd->subscribed) {
        rd->subscribed = 0;

        if (!rd->exiting) {
            rd->state(0);
        }
    }

    if (rd->exiting) {
        return;
    }

    ngx_http_invoices_redis_error(rd, "connection lost",
                                  status == REDIS_OK ? NULL : ac->errstr);
    ngx_http_invoices_redis_schedule(rd);
}


/*
 * The subscription's replies: its confirmation, then every message; NULL
 * when the link goes (the disconnect hook tells the loss).
 */

static void
ngx_http_invoices_redis_subscribed(redisAsyncContext *ac, void *r,
    void *data)
{
    ngx_str_t                   payload;
    redisReply                 *reply = r;
    ngx_http_invoices_redis_t  *rd = data;

    if (reply == NULL || rd->exiting || reply->type != REDIS_REPLY_ARRAY
        || reply->elements < 3
        || reply->element[0]->type != REDIS_REPLY_STRING)
    {
        return;
    }

    if (ngx_strcmp(reply->element[0]->str, "message") == 0) {
        payload.len = 0;
        payload.data = NULL;

        if (reply->element[2]->type == REDIS_REPLY_STRING) {
            payload.len = reply->element[2]->len;
            payload.data = (u_char *) reply->element[2]->str;
        }

        rd->message(&payload);
        return;
    }

    if (ngx_strcmp(reply->element[0]->str, "subscribe") == 0
        && !rd->subscribed)
    {
        rd->backoff = 0;
        rd->subscribed = 1;
        rd->state(1);
    }
}


ngx_uint_t
ngx_http_invoices_redis_subscription(void)
{
    return ngx_http_invoices_redis_sub.subscribed;
}


/*
 * The heartbeat: with no other command a hung Redis would never time out
 * and the link would count as healthy; the timeout marks it stalled.
 */

static void
ngx_http_invoices_redis_ping(ngx_event_t *ev)
{
    int                         argc;
    const char                 *argv[2];
    size_t                      argvlen[2];
    ngx_http_invoices_redis_t  *rd = ev->data;

    if (rd->exiting || ngx_exiting || ngx_quit || ngx_terminate) {
        return;
    }

    if (rd->stalled && rd->ac
        && ngx_current_msec - rd->stalled_at >= NGX_HTTP_INVOICES_REDIS_GIVE_UP)
    {
        ngx_http_invoices_redis_error(rd, "no answer for 5 s", "reconnecting");

        /* pending calls get NULL, the disconnect hook schedules the retry */
        redisAsyncFree(rd->ac);
    }

    if (!rd->pinging) {
        if (rd->probe_key) {
            argc = 2;
            argv[0] = "GET";
            argvlen[0] = 3;
            argv[1] = rd->probe_key;
            argvlen[1] = ngx_strlen(rd->probe_key);

        } else {
            argc = 1;
            argv[0] = "PING";
            argvlen[0] = 4;
        }

        if (ngx_http_invoices_redis_call(NULL, ngx_http_invoices_redis_pong,
                                         rd, argc, argv, argvlen)
            == NGX_OK)
        {
            rd->pinging = 1;
        }
    }

    ngx_add_timer(&rd->ping, NGX_HTTP_INVOICES_REDIS_PING);
}


static void
ngx_http_invoices_redis_pong(ngx_http_request_t *r, void *data,
    redisReply *reply)
{
    ngx_http_invoices_redis_t  *rd = data;

    rd->pinging = 0;

    /* an error answer was logged by the link, like a failed PING */

    if (reply && rd->probed
        && (reply->type == REDIS_REPLY_STRING
            || reply->type == REDIS_REPLY_NIL))
    {
        rd->probed(reply);
    }
}


/* 100 ms, doubling up to 5 s */

static void
ngx_http_invoices_redis_schedule(ngx_http_invoices_redis_t *rd)
{
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
    ngx_http_invoices_redis_t  *rd = ev->data;

    if (rd->ac == NULL) {
        ngx_http_invoices_redis_connect(rd);
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

    if (ngx_http_invoices_redis_sub.c == c) {
        ngx_http_invoices_redis_sub.c = NULL;
    }
}


/*
 * At most one line a second per worker while Redis is down or slow, for
 * both links together.
 */

static void
ngx_http_invoices_redis_error(ngx_http_invoices_redis_t *link,
    const char *what, const char *detail)
{
    ngx_http_invoices_redis_t  *rd = &ngx_http_invoices_redis;

    ngx_http_invoices_metrics_redis_error();

    if (rd->logged && ngx_current_msec - rd->logged < 1000) {
        rd->suppressed++;
        return;
    }

    rd->logged = ngx_current_msec ? ngx_current_msec : 1;

    ngx_log_error(NGX_LOG_ERR, rd->log, 0,
                  "invoices: redis%s %V: %s%s%s (%ui more like it before)",
                  link->name, &rd->conf->addr, what, detail ? ": " : "",
                  detail ? detail : "", rd->suppressed);

    rd->suppressed = 0;
}
