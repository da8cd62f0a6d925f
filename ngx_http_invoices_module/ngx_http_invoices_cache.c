
/*
 * The list page cache in Redis.
 *
 * A finished list body is kept under "invoices:list:<gen>:<page>", where
 * <gen> is the value of "invoices:gen" that every write increments.  The
 * generation and the page are read in ONE round trip by a Lua script
 * (EVALSHA; on NOSCRIPT the script is sent again with EVAL, which loads
 * it).  A miss stores the page under the generation read BEFORE the
 * database was asked, so a write that lands meanwhile moves readers to a
 * new generation and the page stored late is never seen.  A bump that
 * could not reach Redis is sent again as soon as the link is back, before
 * any lookup of this worker.
 *
 * Every bump is also published on a channel, for the workers' own copies
 * in front of Redis (_local.c): those are dropped as soon as any node
 * writes, and at once on the node that wrote.  A change nobody announced
 * (redis-cli INCR invoices:gen, FLUSHALL, a Redis restarted empty) is
 * found by the heartbeat, which reads the generation every 200 ms; so is
 * any generation a lookup or a bump reads on the way.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <openssl/evp.h>

#include "ngx_http_invoices_module.h"
#include "ngx_http_invoices_redis.h"
#include "ngx_http_invoices_cache.h"
#include "ngx_http_invoices_local.h"
#include "ngx_http_invoices_secret.h"


#define NGX_HTTP_INVOICES_GEN_KEY   "invoices:gen"
#define NGX_HTTP_INVOICES_PAGE_KEY  "invoices:list:"
#define NGX_HTTP_INVOICES_CHANNEL   "invoices:changed"


typedef struct {
    ngx_http_invoices_cache_pt   handler;
    void                        *data;
    ngx_str_t                    page;
    ngx_uint_t                   evaled;
} ngx_http_invoices_lookup_t;


static ngx_int_t ngx_http_invoices_cache_send(ngx_http_request_t *r,
    ngx_http_invoices_lookup_t *lk, ngx_uint_t eval);
static void ngx_http_invoices_cache_reply(ngx_http_request_t *r, void *data,
    redisReply *reply);
static void ngx_http_invoices_cache_connected(void);
static void ngx_http_invoices_cache_probed(redisReply *reply);
static void ngx_http_invoices_cache_message(ngx_str_t *payload);
static void ngx_http_invoices_cache_listening(ngx_uint_t on);
static void ngx_http_invoices_cache_bumped(ngx_http_request_t *r, void *data,
    redisReply *reply);
static void ngx_http_invoices_cache_bumped_for(ngx_http_request_t *r,
    void *data, redisReply *reply);
static ngx_int_t ngx_http_invoices_cache_incr(ngx_http_request_t *r,
    ngx_http_invoices_redis_pt handler, void *data);


typedef struct {
    void   (*then)(ngx_http_request_t *r, void *data);
    void    *data;
} ngx_http_invoices_bump_t;


/* KEYS[1] the generation; ARGV[1] the page key's prefix, ARGV[2] its end.
 * A hit also says how many milliseconds the page has left. */
static const char  ngx_http_invoices_cache_script[] =
    "local g = redis.call('GET', KEYS[1]) or '0' "
    "local k = ARGV[1] .. g .. ARGV[2] "
    "local v = redis.call('GET', k) "
    "if not v then return {g} end "
    "return {g, v, redis.call('PTTL', k)}";

/* KEYS[1] the generation; ARGV[1] the channel.  Sent whole (writes are
 * rare), so a script cache flush cannot lose a bump. */
static const char  ngx_http_invoices_bump_script[] =
    "local g = redis.call('INCR', KEYS[1]) "
    "redis.call('PUBLISH', ARGV[1], g) "
    "return g";

static char                             ngx_http_invoices_cache_sha[41];
static ngx_uint_t                       ngx_http_invoices_cache_on;
static ngx_uint_t                       ngx_http_invoices_cache_bump_lost;
static ngx_http_invoices_redis_conf_t  *ngx_http_invoices_cache_conf;


ngx_int_t
ngx_http_invoices_cache_init(ngx_cycle_t *cycle)
{
    u_char                          digest[20];
    ngx_http_invoices_main_conf_t  *imcf;

    imcf = ngx_http_cycle_get_module_main_conf(cycle,
                                               ngx_http_invoices_module);

    if (imcf == NULL || imcf->redis.addr.len == 0) {
        return NGX_OK;
    }

    if (EVP_Digest(ngx_http_invoices_cache_script,
                   sizeof(ngx_http_invoices_cache_script) - 1, digest, NULL,
                   EVP_sha1(), NULL)
        != 1)
    {
        return NGX_ERROR;
    }

    *ngx_hex_dump((u_char *) ngx_http_invoices_cache_sha, digest, 20) = '\0';

    ngx_http_invoices_cache_conf = &imcf->redis;
    ngx_http_invoices_cache_on = 1;

    if (ngx_http_invoices_redis_init(cycle, &imcf->redis,
                                     ngx_http_invoices_cache_connected)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    ngx_http_invoices_local_init(imcf->redis.local, imcf->redis.ttl * 1000);

    if (imcf->redis.local == 0) {
        return NGX_OK;
    }

    /* the heartbeat reads the generation: for the copies, the same cost */

    ngx_http_invoices_redis_probe(NGX_HTTP_INVOICES_GEN_KEY,
                                  ngx_http_invoices_cache_probed);

    return ngx_http_invoices_redis_subscribe(cycle, NGX_HTTP_INVOICES_CHANNEL,
                                             ngx_http_invoices_cache_message,
                                             ngx_http_invoices_cache_listening);
}


ngx_uint_t
ngx_http_invoices_cache_enabled(void)
{
    return ngx_http_invoices_cache_on;
}


/*
 * "page" names the page within a generation (":<page>:<limit>").  NGX_OK:
 * the handler will be called; NGX_DECLINED: no cache now, serve directly.
 */

ngx_int_t
ngx_http_invoices_cache_lookup(ngx_http_request_t *r, ngx_str_t *page,
    ngx_http_invoices_cache_pt handler, void *data)
{
    ngx_http_invoices_lookup_t  *lk;

    if (!ngx_http_invoices_cache_on || !ngx_http_invoices_redis_ready()) {
        return NGX_DECLINED;
    }

    lk = ngx_palloc(r->pool, sizeof(ngx_http_invoices_lookup_t));
    if (lk == NULL) {
        return NGX_DECLINED;
    }

    lk->handler = handler;
    lk->data = data;
    lk->page = *page;
    lk->evaled = 0;

    return ngx_http_invoices_cache_send(r, lk, 0);
}


static ngx_int_t
ngx_http_invoices_cache_send(ngx_http_request_t *r,
    ngx_http_invoices_lookup_t *lk, ngx_uint_t eval)
{
    const char  *argv[6];
    size_t       argvlen[6];

    argv[0] = eval ? "EVAL" : "EVALSHA";
    argv[1] = eval ? ngx_http_invoices_cache_script
                   : ngx_http_invoices_cache_sha;
    argv[2] = "1";
    argv[3] = NGX_HTTP_INVOICES_GEN_KEY;
    argv[4] = NGX_HTTP_INVOICES_PAGE_KEY;
    argv[5] = (const char *) lk->page.data;

    argvlen[0] = ngx_strlen(argv[0]);
    argvlen[1] = eval ? sizeof(ngx_http_invoices_cache_script) - 1 : 40;
    argvlen[2] = 1;
    argvlen[3] = sizeof(NGX_HTTP_INVOICES_GEN_KEY) - 1;
    argvlen[4] = sizeof(NGX_HTTP_INVOICES_PAGE_KEY) - 1;
    argvlen[5] = lk->page.len;

    return ngx_http_invoices_redis_call(r, ngx_http_invoices_cache_reply, lk,
                                        6, argv, argvlen);
}


static void
ngx_http_invoices_cache_reply(ngx_http_request_t *r, void *data,
    redisReply *reply)
{
    ngx_str_t                    gen, value;
    ngx_msec_t                   left;
    redisReply                  *g, *v;
    ngx_http_invoices_lookup_t  *lk = data;

    if (reply && reply->type == REDIS_REPLY_ERROR && !lk->evaled
        && reply->len >= 8 && ngx_strncmp(reply->str, "NOSCRIPT", 8) == 0)
    {
        /* the script cache was flushed: EVAL loads it again */

        lk->evaled = 1;

        if (ngx_http_invoices_cache_send(r, lk, 1) == NGX_OK) {
            return;
        }

        reply = NULL;
    }

    if (reply == NULL || reply->type != REDIS_REPLY_ARRAY
        || reply->elements < 1
        || (reply->element[0]->type != REDIS_REPLY_STRING
            && reply->element[0]->type != REDIS_REPLY_INTEGER))
    {
        lk->handler(r, lk->data, NGX_ERROR, NULL, NULL, 0);
        return;
    }

    g = reply->element[0];

    if (g->type == REDIS_REPLY_INTEGER) {
        gen.data = ngx_pnalloc(r->pool, NGX_INT64_LEN);
        if (gen.data == NULL) {
            lk->handler(r, lk->data, NGX_ERROR, NULL, NULL, 0);
            return;
        }

        gen.len = ngx_slprintf(gen.data, gen.data + NGX_INT64_LEN, "%L",
                               (int64_t) g->integer)
                  - gen.data;

    } else {
        gen.len = g->len;
        gen.data = ngx_pnalloc(r->pool, g->len);
        if (gen.data == NULL) {
            lk->handler(r, lk->data, NGX_ERROR, NULL, NULL, 0);
            return;
        }

        ngx_memcpy(gen.data, g->str, g->len);
    }

    /* before the handler: a new generation leaves its answer uncopied */

    ngx_http_invoices_local_gen_read(&gen);

    /* a Lua nil ends the array: one element is a miss */

    v = reply->elements > 1 ? reply->element[1] : NULL;

    if (v == NULL || v->type != REDIS_REPLY_STRING) {
        lk->handler(r, lk->data, NGX_DECLINED, &gen, NULL, 0);
        return;
    }

    /* hiredis frees the reply after this: the page goes to the pool */

    value.len = v->len;
    value.data = ngx_pnalloc(r->pool, v->len);
    if (value.data == NULL) {
        lk->handler(r, lk->data, NGX_ERROR, NULL, NULL, 0);
        return;
    }

    ngx_memcpy(value.data, v->str, v->len);

    /* -1: the page has no expiry; a page about to expire gets 1 ms */

    left = 0;

    if (reply->elements > 2 && reply->element[2]->type == REDIS_REPLY_INTEGER
        && reply->element[2]->integer >= 0)
    {
        left = (ngx_msec_t) ngx_max(reply->element[2]->integer, 1);
    }

    lk->handler(r, lk->data, NGX_OK, &gen, &value, left);
}


/* a miss's page, under the generation read before the database was asked */

void
ngx_http_invoices_cache_store(ngx_http_request_t *r, ngx_str_t *gen,
    ngx_str_t *page, ngx_str_t *value)
{
    u_char      *p;
    size_t       argvlen[5];
    ngx_str_t    key;
    const char  *argv[5];
    u_char       ttl[NGX_TIME_T_LEN];

    key.len = sizeof(NGX_HTTP_INVOICES_PAGE_KEY) - 1 + gen->len + page->len;
    key.data = ngx_pnalloc(r->pool, key.len);
    if (key.data == NULL) {
        return;
    }

    p = ngx_cpymem(key.data, NGX_HTTP_INVOICES_PAGE_KEY,
                   sizeof(NGX_HTTP_INVOICES_PAGE_KEY) - 1);
    p = ngx_cpymem(p, gen->data, gen->len);
    ngx_memcpy(p, page->data, page->len);

    argv[0] = "SET";
    argv[1] = (const char *) key.data;
    argv[2] = (const char *) value->data;
    argv[3] = "EX";
    argv[4] = (const char *) ttl;

    argvlen[0] = 3;
    argvlen[1] = key.len;
    argvlen[2] = value->len;
    argvlen[3] = 2;
    argvlen[4] = ngx_slprintf(ttl, ttl + sizeof(ttl), "%T",
                              ngx_http_invoices_cache_conf->ttl)
                 - ttl;

    ngx_http_invoices_redis_send(5, argv, argvlen);
}


/* a write happened: every node's next lookup reads a new generation */

void
ngx_http_invoices_cache_bump(void)
{
    ngx_http_invoices_local_invalidate();

    if (ngx_http_invoices_cache_on) {
        (void) ngx_http_invoices_cache_incr(NULL,
                                            ngx_http_invoices_cache_bumped,
                                            NULL);
    }
}


/*
 * The same for a request that answers only once Redis has the bump: a
 * reader anywhere that comes after the answer sees the new generation.
 * NGX_OK: "then" will be called; NGX_DECLINED: no cache or no Redis now
 * (the bump is kept for later), go on at once.
 */

ngx_int_t
ngx_http_invoices_cache_bump_for(ngx_http_request_t *r,
    void (*then)(ngx_http_request_t *r, void *data), void *data)
{
    ngx_http_invoices_bump_t  *b;

    if (!ngx_http_invoices_cache_on) {
        return NGX_DECLINED;
    }

    /* this node's copies go at once, whatever becomes of the bump */

    ngx_http_invoices_local_invalidate();

    b = ngx_palloc(r->pool, sizeof(ngx_http_invoices_bump_t));
    if (b == NULL) {
        ngx_http_invoices_cache_bump();
        return NGX_DECLINED;
    }

    b->then = then;
    b->data = data;

    return ngx_http_invoices_cache_incr(r, ngx_http_invoices_cache_bumped_for,
                                        b);
}


/*
 * INCR the generation and publish it; a bump that cannot be sent is kept
 * for later
 */

static ngx_int_t
ngx_http_invoices_cache_incr(ngx_http_request_t *r,
    ngx_http_invoices_redis_pt handler, void *data)
{
    const char  *argv[5];
    size_t       argvlen[5];

    argv[0] = "EVAL";
    argv[1] = ngx_http_invoices_bump_script;
    argv[2] = "1";
    argv[3] = NGX_HTTP_INVOICES_GEN_KEY;
    argv[4] = NGX_HTTP_INVOICES_CHANNEL;
    argvlen[0] = 4;
    argvlen[1] = sizeof(ngx_http_invoices_bump_script) - 1;
    argvlen[2] = 1;
    argvlen[3] = sizeof(NGX_HTTP_INVOICES_GEN_KEY) - 1;
    argvlen[4] = sizeof(NGX_HTTP_INVOICES_CHANNEL) - 1;

    ngx_http_invoices_cache_bump_lost = 0;

    if (ngx_http_invoices_redis_call(r, handler, data, 5, argv, argvlen)
        != NGX_OK)
    {
        ngx_http_invoices_cache_bump_lost = 1;
        return NGX_DECLINED;
    }

    return NGX_OK;
}


static void
ngx_http_invoices_cache_bumped_for(ngx_http_request_t *r, void *data,
    redisReply *reply)
{
    ngx_http_invoices_bump_t  *b = data;

    ngx_http_invoices_cache_bumped(r, NULL, reply);

    b->then(r, b->data);
}


static void
ngx_http_invoices_cache_bumped(ngx_http_request_t *r, void *data,
    redisReply *reply)
{
    ngx_str_t  gen;
    u_char     buf[NGX_INT64_LEN];

    if (reply == NULL || reply->type != REDIS_REPLY_INTEGER) {
        ngx_http_invoices_cache_bump_lost = 1;
        return;
    }

    /*
     * The copies were dropped before the INCR was sent; a worker may have
     * copied an older page since, so the generation seen now drops them
     * once more (once for this nginx: the message finds it done).
     */

    gen.data = buf;
    gen.len = ngx_slprintf(buf, buf + sizeof(buf), "%L",
                           (int64_t) reply->integer)
              - buf;

    ngx_http_invoices_local_gen_read(&gen);
}


static void
ngx_http_invoices_cache_connected(void)
{
    /* the copies were not used while the link was down or stalled */

    ngx_http_invoices_local_invalidate();

    if (ngx_http_invoices_cache_bump_lost) {
        ngx_http_invoices_cache_bump();
    }
}


/* the heartbeat's GET of the generation: a string, or nil after FLUSHALL */

static void
ngx_http_invoices_cache_probed(redisReply *reply)
{
    ngx_str_t  gen;

    gen.len = 0;
    gen.data = NULL;

    if (reply->type == REDIS_REPLY_STRING) {
        gen.len = reply->len;
        gen.data = (u_char *) reply->str;
    }

    ngx_http_invoices_local_gen_read(&gen);
}


/* some node wrote: the message is the generation its INCR made */

static void
ngx_http_invoices_cache_message(ngx_str_t *payload)
{
    ngx_http_invoices_local_gen_heard(payload);
}


static void
ngx_http_invoices_cache_listening(ngx_uint_t on)
{
    ngx_http_invoices_local_listening(on);
}


/* the main configuration's cache settings: unset, then their defaults */

void
ngx_http_invoices_cache_conf_create(ngx_http_invoices_redis_conf_t *rc)
{
    rc->db = NGX_CONF_UNSET;
    rc->timeout = NGX_CONF_UNSET_MSEC;
    rc->ttl = NGX_CONF_UNSET;
    rc->local = NGX_CONF_UNSET_SIZE;
}


ngx_int_t
ngx_http_invoices_cache_conf_init(ngx_conf_t *cf,
    ngx_http_invoices_redis_conf_t *rc)
{
    ngx_conf_init_value(rc->db, 0);
    ngx_conf_init_msec_value(rc->timeout, 100);
    ngx_conf_init_value(rc->ttl, 60);
    ngx_conf_init_size_value(rc->local, 4 * 1024 * 1024);

    /* the worker's copy needs the subscription, so Redis */

    if (rc->addr.len && rc->local) {
        return ngx_http_invoices_local_add_zone(cf);
    }

    return NGX_OK;
}


/* invoices_cache_local off | <size>: the worker's copy in front of Redis */

char *
ngx_http_invoices_cache_local_directive(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_invoices_main_conf_t *imcf = conf;

    ssize_t     size;
    ngx_str_t  *value;

    if (imcf->redis.local != NGX_CONF_UNSET_SIZE) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (ngx_strcmp(value[1].data, "off") == 0) {
        imcf->redis.local = 0;
        return NGX_CONF_OK;
    }

    size = ngx_parse_size(&value[1]);

    if (size < 64 * 1024) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid \"invoices_cache_local\" value \"%V\": "
                           "it takes \"off\" or a size of at least 64k",
                           &value[1]);
        return NGX_CONF_ERROR;
    }

    imcf->redis.local = size;

    return NGX_CONF_OK;
}


/*
 * invoices_redis 127.0.0.1:6379 | [::1]:6379 | unix:/path
 *                [password=file:/path|env:NAME] [db=N];
 *
 * Parsed by nginx's ngx_parse_url.  Numeric addresses only: hiredis 0.14
 * resolves names with a blocking getaddrinfo(), which the event loop must
 * never run.
 */

char *
ngx_http_invoices_cache_redis_directive(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_invoices_main_conf_t *imcf = conf;

    ngx_url_t                        u;
    ngx_str_t                       *value, spec, host;
    ngx_uint_t                       i;
    ngx_http_invoices_redis_conf_t  *rc;

    rc = &imcf->redis;

    if (rc->addr.len) {
        return "is duplicate";
    }

    value = cf->args->elts;
    rc->addr = value[1];

    ngx_memzero(&u, sizeof(ngx_url_t));
    u.url = value[1];
    u.no_resolve = 1;

    if (ngx_parse_url(cf->pool, &u) != NGX_OK) {
        goto invalid;
    }

    if (u.family == AF_UNIX) {
        /* the path of "unix:/path", NUL-ended in the configuration */
        rc->unix_path = u.host;

    } else {
        host = u.host;

        if (host.len > 2 && host.data[0] == '[') {
            host.data++;
            host.len -= 2;
        }

        if (u.no_port
            || (ngx_inet_addr(host.data, host.len) == INADDR_NONE
#if (NGX_HAVE_INET6)
                && ngx_inet6_addr(host.data, host.len, (u_char [16]) { 0 })
                   != NGX_OK
#endif
               ))
        {
            goto invalid;
        }

        rc->port = u.port;

        /* NUL-ended for hiredis */

        rc->host.data = ngx_pnalloc(cf->pool, host.len + 1);
        if (rc->host.data == NULL) {
            return NGX_CONF_ERROR;
        }

        ngx_memcpy(rc->host.data, host.data, host.len);
        rc->host.data[host.len] = '\0';
        rc->host.len = host.len;
    }

    for (i = 2; i < cf->args->nelts; i++) {

        if (value[i].len > 9
            && ngx_strncmp(value[i].data, "password=", 9) == 0)
        {
            spec.data = value[i].data + 9;
            spec.len = value[i].len - 9;

            if (ngx_http_invoices_secret_load(cf, &spec, &rc->password)
                != NGX_OK)
            {
                return NGX_CONF_ERROR;
            }

            continue;
        }

        if (value[i].len > 3 && ngx_strncmp(value[i].data, "db=", 3) == 0) {
            rc->db = ngx_atoi(value[i].data + 3, value[i].len - 3);
            if (rc->db == NGX_ERROR || rc->db > 65535) {
                goto invalid;
            }

            continue;
        }

        goto invalid;
    }

    return NGX_CONF_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid \"invoices_redis\" value \"%V\"%s%s: it takes a "
                       "numeric IP:port, [IPv6]:port or unix:/path, then "
                       "optional password=file:/path|env:NAME and db=N",
                       &value[1], u.err ? ": " : "", u.err ? u.err : "");
    return NGX_CONF_ERROR;
}
