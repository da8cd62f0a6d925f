
/*
 * The worker's own copy of recent answers, in front of Redis.
 *
 * A cache hit in Redis still costs a round trip to Redis per request; this
 * copy costs none.  Each entry carries the version it was made under, and
 * is served only while that is the current version, which lives in shared
 * memory so that every worker of this nginx sees a bump at once:
 *
 *   - a write through this nginx bumps it before it answers;
 *   - a write through another node bumps the generation in Redis and
 *     publishes on a channel that every worker listens to (a second Redis
 *     link, see _redis.c); the message bumps it here;
 *   - a change of the generation made by hand (redis-cli INCR
 *     invoices:gen, FLUSHALL, a restarted Redis) publishes nothing: the
 *     worker reads the generation every 200 ms instead of a bare PING
 *     (_redis.c), and a value this nginx has not acted on yet bumps it;
 *   - losing that subscription, or the command link stalling, turns the
 *     copy off until both are back; coming back bumps it, since messages
 *     may have been missed meanwhile.
 *
 * Every worker reads the generation, so the last value acted on is kept
 * next to the version: the first worker to see a new one bumps, the
 * others find it done.  A bump follows the change it answers (it is seen
 * in Redis, or announced after it), so no entry made from before the
 * change survives it.
 *
 * An entry is stored under the version read BEFORE its answer was looked
 * up, so a write that lands meanwhile leaves it unusable (the same rule as
 * for the pages in Redis).  Entries live at most invoices_cache_ttl, and
 * the least recently used go first when the copy outgrows its size.
 */


#include "ngx_http_invoices_module.h"
#include "ngx_http_invoices_redis.h"
#include "ngx_http_invoices_local.h"


typedef struct {
    ngx_str_node_t      sn;           /* sn.str: the key */
    ngx_queue_t         queue;        /* most recently used first */
    ngx_atomic_uint_t   version;
    ngx_msec_t          expires;
    ngx_str_t           etag;
    ngx_str_t           body;
    size_t              size;
} ngx_http_invoices_local_entry_t;


/* in shared memory: one for all workers of this nginx */
typedef struct {
    ngx_atomic_t        version;
    ngx_atomic_t        gen;          /* the last generation acted on */
} ngx_http_invoices_local_shm_t;


/* no generation seen yet: whatever comes first is new */
#define NGX_HTTP_INVOICES_LOCAL_NO_GEN  ((ngx_atomic_uint_t) -1)


static ngx_int_t ngx_http_invoices_local_init_zone(ngx_shm_zone_t *shm_zone,
    void *data);
static void ngx_http_invoices_local_free(
    ngx_http_invoices_local_entry_t *e);
static ngx_atomic_uint_t ngx_http_invoices_local_gen_value(ngx_str_t *gen);
static void ngx_http_invoices_local_gen_changed(ngx_atomic_uint_t gen);


static ngx_http_invoices_local_shm_t  *ngx_http_invoices_local_shared;
static ngx_rbtree_t                    ngx_http_invoices_local_tree;
static ngx_rbtree_node_t               ngx_http_invoices_local_sentinel;
static ngx_queue_t                     ngx_http_invoices_local_lru;
static size_t                          ngx_http_invoices_local_used;
static size_t                          ngx_http_invoices_local_max;
static ngx_msec_t                      ngx_http_invoices_local_ttl;
static ngx_uint_t                      ngx_http_invoices_local_on;
static ngx_uint_t                      ngx_http_invoices_local_heard;
static ngx_atomic_uint_t               ngx_http_invoices_local_read_gen;


/* configuration time, with invoices_redis: the version every worker reads */

ngx_int_t
ngx_http_invoices_local_add_zone(ngx_conf_t *cf)
{
    ngx_shm_zone_t  *shm_zone;

    /* named for its layout: a reload onto a new module gets a new zone */
    static ngx_str_t  name = ngx_string("ngx_http_invoices_cache_state");

    shm_zone = ngx_shared_memory_add(cf, &name, 8 * ngx_pagesize,
                                     &ngx_http_invoices_module);
    if (shm_zone == NULL) {
        return NGX_ERROR;
    }

    shm_zone->init = ngx_http_invoices_local_init_zone;

    return NGX_OK;
}


static ngx_int_t
ngx_http_invoices_local_init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_slab_pool_t                *shpool;
    ngx_http_invoices_local_shm_t  *sh;

    if (data) {
        /* a reload: the version goes on */
        shm_zone->data = data;
        ngx_http_invoices_local_shared = data;
        return NGX_OK;
    }

    shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

    sh = ngx_slab_alloc(shpool, sizeof(ngx_http_invoices_local_shm_t));
    if (sh == NULL) {
        return NGX_ERROR;
    }

    sh->version = 1;
    sh->gen = NGX_HTTP_INVOICES_LOCAL_NO_GEN;

    shm_zone->data = (void *) sh;
    ngx_http_invoices_local_shared = sh;

    return NGX_OK;
}


/* init_process; size 0 turns the copy off */

void
ngx_http_invoices_local_init(size_t size, ngx_msec_t ttl)
{
    ngx_rbtree_init(&ngx_http_invoices_local_tree,
                    &ngx_http_invoices_local_sentinel,
                    ngx_str_rbtree_insert_value);
    ngx_queue_init(&ngx_http_invoices_local_lru);

    ngx_http_invoices_local_used = 0;
    ngx_http_invoices_local_max = size;
    ngx_http_invoices_local_ttl = ttl;
    ngx_http_invoices_local_heard = 0;
    ngx_http_invoices_local_read_gen = NGX_HTTP_INVOICES_LOCAL_NO_GEN;
    ngx_http_invoices_local_on = (size > 0
                                  && ngx_http_invoices_local_shared != NULL);
}


void
ngx_http_invoices_local_exit(void)
{
    ngx_queue_t                      *q;
    ngx_http_invoices_local_entry_t  *e;

    if (!ngx_http_invoices_local_on) {
        return;
    }

    while (!ngx_queue_empty(&ngx_http_invoices_local_lru)) {
        q = ngx_queue_last(&ngx_http_invoices_local_lru);
        e = ngx_queue_data(q, ngx_http_invoices_local_entry_t, queue);
        ngx_http_invoices_local_free(e);
    }

    ngx_http_invoices_local_on = 0;
}


/* the version to look up and store under now; 0: do not use the copy */

ngx_atomic_uint_t
ngx_http_invoices_local_version(void)
{
    if (!ngx_http_invoices_local_on || !ngx_http_invoices_local_heard
        || !ngx_http_invoices_redis_ready())
    {
        return 0;
    }

    return ngx_http_invoices_local_shared->version;
}


/* NGX_OK: a usable entry, copied into the request's pool */

ngx_int_t
ngx_http_invoices_local_get(ngx_http_request_t *r, ngx_str_t *key,
    ngx_str_t *etag, ngx_str_t *body)
{
    u_char                           *p;
    ngx_atomic_uint_t                 version;
    ngx_http_invoices_local_entry_t  *e;

    version = ngx_http_invoices_local_version();
    if (version == 0) {
        return NGX_DECLINED;
    }

    e = (ngx_http_invoices_local_entry_t *)
        ngx_str_rbtree_lookup(&ngx_http_invoices_local_tree, key,
                              ngx_crc32_short(key->data, key->len));
    if (e == NULL) {
        return NGX_DECLINED;
    }

    if (e->version != version
        || (ngx_msec_int_t) (e->expires - ngx_current_msec) <= 0)
    {
        ngx_http_invoices_local_free(e);
        return NGX_DECLINED;
    }

    p = ngx_pnalloc(r->pool, e->etag.len + e->body.len);
    if (p == NULL) {
        return NGX_DECLINED;
    }

    etag->data = p;
    etag->len = e->etag.len;
    body->data = ngx_cpymem(p, e->etag.data, e->etag.len);
    body->len = e->body.len;
    ngx_memcpy(body->data, e->body.data, e->body.len);

    ngx_queue_remove(&e->queue);
    ngx_queue_insert_head(&ngx_http_invoices_local_lru, &e->queue);

    return NGX_OK;
}


/*
 * An answer read under "version": kept only if no write came since.  A
 * copy of a page read from Redis lives no longer than the page has "left"
 * there (0: as long as invoices_cache_ttl).
 */

void
ngx_http_invoices_local_put(ngx_str_t *key, ngx_atomic_uint_t version,
    ngx_str_t *etag, u_char *body, size_t len, ngx_msec_t left)
{
    u_char                           *p;
    size_t                            size;
    uint32_t                          hash;
    ngx_queue_t                      *q;
    ngx_http_invoices_local_entry_t  *e;

    if (version == 0 || version != ngx_http_invoices_local_version()) {
        return;
    }

    size = sizeof(ngx_http_invoices_local_entry_t) + key->len + etag->len
           + len;

    /* one big page must not push out everything else */

    if (size > ngx_http_invoices_local_max / 8) {
        return;
    }

    hash = ngx_crc32_short(key->data, key->len);

    e = (ngx_http_invoices_local_entry_t *)
        ngx_str_rbtree_lookup(&ngx_http_invoices_local_tree, key, hash);
    if (e) {
        ngx_http_invoices_local_free(e);
    }

    while (ngx_http_invoices_local_used + size > ngx_http_invoices_local_max
           && !ngx_queue_empty(&ngx_http_invoices_local_lru))
    {
        q = ngx_queue_last(&ngx_http_invoices_local_lru);
        e = ngx_queue_data(q, ngx_http_invoices_local_entry_t, queue);
        ngx_http_invoices_local_free(e);
    }

    e = ngx_alloc(size, ngx_cycle->log);
    if (e == NULL) {
        return;
    }

    p = (u_char *) (e + 1);

    e->sn.node.key = hash;
    e->sn.str.data = p;
    e->sn.str.len = key->len;
    p = ngx_cpymem(p, key->data, key->len);

    e->etag.data = p;
    e->etag.len = etag->len;
    p = ngx_cpymem(p, etag->data, etag->len);

    e->body.data = p;
    e->body.len = len;
    ngx_memcpy(p, body, len);

    e->version = version;
    e->expires = ngx_current_msec
                 + ((left && left < ngx_http_invoices_local_ttl)
                    ? left : ngx_http_invoices_local_ttl);
    e->size = size;

    ngx_rbtree_insert(&ngx_http_invoices_local_tree, &e->sn.node);
    ngx_queue_insert_head(&ngx_http_invoices_local_lru, &e->queue);
    ngx_http_invoices_local_used += size;
}


/* a write, here or (through the subscription) anywhere */

void
ngx_http_invoices_local_invalidate(void)
{
    if (ngx_http_invoices_local_shared) {
        (void) ngx_atomic_fetch_add(&ngx_http_invoices_local_shared->version,
                                    1);
    }
}


/*
 * The command link read the generation: the heartbeat, a lookup, a bump.
 * Its replies come in the order Redis ran the commands, so only a change
 * from this worker's previous read counts; an old value still in flight
 * on another link cannot undo a newer one here.
 */

void
ngx_http_invoices_local_gen_read(ngx_str_t *gen)
{
    ngx_atomic_uint_t  g;

    if (ngx_http_invoices_local_shared == NULL) {
        return;
    }

    g = ngx_http_invoices_local_gen_value(gen);

    if (g == ngx_http_invoices_local_read_gen) {
        return;
    }

    ngx_http_invoices_local_read_gen = g;

    ngx_http_invoices_local_gen_changed(g);
}


/* a message on the channel: "gen" is what the writer's INCR returned */

void
ngx_http_invoices_local_gen_heard(ngx_str_t *gen)
{
    if (ngx_http_invoices_local_shared == NULL) {
        return;
    }

    ngx_http_invoices_local_gen_changed(ngx_http_invoices_local_gen_value(gen));
}


/* one bump per new generation for the whole nginx, whoever sees it first */

static void
ngx_http_invoices_local_gen_changed(ngx_atomic_uint_t gen)
{
    ngx_atomic_uint_t               old;
    ngx_http_invoices_local_shm_t  *sh = ngx_http_invoices_local_shared;

    for ( ;; ) {
        old = sh->gen;

        if (old == gen) {
            /* another worker of this nginx has bumped for it */
            return;
        }

        if (ngx_atomic_cmp_set(&sh->gen, old, gen)) {
            break;
        }
    }

    ngx_http_invoices_local_invalidate();
}


/*
 * INCR keeps the generation as a decimal number, and a missing key reads
 * as 0 (FLUSHALL, a new Redis); any other text is hashed, away from the
 * numbers INCR makes and from "none seen yet".
 */

static ngx_atomic_uint_t
ngx_http_invoices_local_gen_value(ngx_str_t *gen)
{
    ngx_int_t  n;

    if (gen->len == 0) {
        return 0;
    }

    n = ngx_atoi(gen->data, gen->len);

    if (n != NGX_ERROR) {
        return (ngx_atomic_uint_t) n;
    }

    return ((ngx_atomic_uint_t) 1 << (sizeof(ngx_atomic_uint_t) * 8 - 1))
           | (ngx_crc32_short(gen->data, gen->len) & 0x7ffffffe);
}


/* the subscription stands (1) or is lost (0) */

void
ngx_http_invoices_local_listening(ngx_uint_t on)
{
    /* what was missed while not listening is unknown: forget it all */

    ngx_http_invoices_local_invalidate();
    ngx_http_invoices_local_heard = on;
}


static void
ngx_http_invoices_local_free(ngx_http_invoices_local_entry_t *e)
{
    ngx_rbtree_delete(&ngx_http_invoices_local_tree, &e->sn.node);
    ngx_queue_remove(&e->queue);
    ngx_http_invoices_local_used -= e->size;
    ngx_free(e);
}
