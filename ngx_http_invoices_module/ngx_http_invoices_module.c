
/*
 * ngx_http_invoices_module: directives, configuration and init hooks.
 * The request handling lives in the other files (see docs/architecture.md).
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <jansson.h>
#include <libpq-fe.h>

#include "ngx_http_invoices_module.h"
#include "ngx_http_invoices_handler.h"
#include "ngx_http_invoices_json.h"
#include "ngx_http_invoices_job.h"
#include "ngx_http_invoices_stripe.h"
#include "ngx_http_invoices_webhook.h"
#include "ngx_http_invoices_cache.h"
#include "ngx_http_invoices_local.h"
#include "ngx_http_invoices_housekeeping.h"
#include "ngx_http_invoices_metrics.h"
#include "ngx_http_invoices_secret.h"


static ngx_int_t ngx_http_invoices_postconfiguration(ngx_conf_t *cf);
static void *ngx_http_invoices_create_main_conf(ngx_conf_t *cf);
static char *ngx_http_invoices_init_main_conf(ngx_conf_t *cf, void *conf);
static ngx_int_t ngx_http_invoices_init_process(ngx_cycle_t *cycle);
static void *ngx_http_invoices_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_invoices_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child);
static char *ngx_http_invoices_admin(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_invoices_database(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_invoices_api_keys_file(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
static char *ngx_http_invoices_stripe_secret_key(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
static char *ngx_http_invoices_webhook(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_invoices_webhook_secret(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
static char *ngx_http_invoices_check_token(ngx_conf_t *cf, ngx_str_t *value,
    const char *directive, const char *allowed);
static ngx_int_t ngx_http_invoices_init_module(ngx_cycle_t *cycle);
static void ngx_http_invoices_exit_process(ngx_cycle_t *cycle);
static char *ngx_http_invoices_reconcile(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_invoices_housekeeping_conf(ngx_conf_t *cf,
    ngx_http_invoices_loc_conf_t *conf);


static ngx_command_t  ngx_http_invoices_commands[] = {

    { ngx_string("invoices_admin"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_invoices_admin,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("invoices_metrics"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_invoices_metrics,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("invoices_database"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_invoices_database,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_invoices_loc_conf_t, database),
      NULL },

    { ngx_string("invoices_thread_pool"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_invoices_loc_conf_t, thread_pool_name),
      NULL },

    { ngx_string("invoices_api_keys_file"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_invoices_api_keys_file,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("invoices_stripe_webhook"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_invoices_webhook,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("invoices_stripe_webhook_secret"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE12,
      ngx_http_invoices_webhook_secret,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("invoices_stripe_webhook_tolerance"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_sec_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_invoices_loc_conf_t, webhook_tolerance),
      NULL },

    { ngx_string("invoices_redis"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE123,
      ngx_http_invoices_cache_redis_directive,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("invoices_redis_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_invoices_main_conf_t, redis.timeout),
      NULL },

    { ngx_string("invoices_cache_ttl"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_sec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_invoices_main_conf_t, redis.ttl),
      NULL },

    { ngx_string("invoices_cache_local"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_invoices_cache_local_directive,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("invoices_currency"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_invoices_loc_conf_t, currency),
      NULL },

    { ngx_string("invoices_stripe_secret_key"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_invoices_stripe_secret_key,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("invoices_stripe_api_base"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_invoices_loc_conf_t, stripe_api_base),
      NULL },

    { ngx_string("invoices_stripe_version"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_invoices_loc_conf_t, stripe_version),
      NULL },

    { ngx_string("invoices_stripe_thread_pool"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_invoices_loc_conf_t, stripe_thread_pool_name),
      NULL },

    { ngx_string("invoices_stripe_connect_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_invoices_loc_conf_t, stripe_connect_timeout),
      NULL },

    { ngx_string("invoices_stripe_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_invoices_loc_conf_t, stripe_timeout),
      NULL },

    { ngx_string("invoices_stripe_max_retries"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_invoices_loc_conf_t, stripe_max_retries),
      NULL },

    { ngx_string("invoices_reconcile"),
      NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_invoices_reconcile,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("invoices_event_retention"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_sec_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_invoices_loc_conf_t, event_retention),
      NULL },

    { ngx_string("invoices_idempotency_retention"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_sec_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_invoices_loc_conf_t, idempotency_retention),
      NULL },

    { ngx_string("invoices_idempotency_lease"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_invoices_loc_conf_t, idempotency_lease),
      NULL },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_invoices_module_ctx = {
    NULL,                                  /* preconfiguration */
    ngx_http_invoices_postconfiguration,   /* postconfiguration */

    ngx_http_invoices_create_main_conf,    /* create main configuration */
    ngx_http_invoices_init_main_conf,      /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    ngx_http_invoices_create_loc_conf,     /* create location configuration */
    ngx_http_invoices_merge_loc_conf       /* merge location configuration */
};


ngx_module_t  ngx_http_invoices_module = {
    NGX_MODULE_V1,
    &ngx_http_invoices_module_ctx,         /* module context */
    ngx_http_invoices_commands,            /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    ngx_http_invoices_init_module,         /* init module */
    ngx_http_invoices_init_process,        /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    ngx_http_invoices_exit_process,        /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


static ngx_int_t
ngx_http_invoices_postconfiguration(ngx_conf_t *cf)
{
    return ngx_http_invoices_metrics_init(cf);
}


static void *
ngx_http_invoices_create_main_conf(ngx_conf_t *cf)
{
    ngx_http_invoices_main_conf_t  *imcf;

    imcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_invoices_main_conf_t));
    if (imcf == NULL) {
        return NULL;
    }

    ngx_http_invoices_cache_conf_create(&imcf->redis);

    return imcf;
}


static char *
ngx_http_invoices_init_main_conf(ngx_conf_t *cf, void *conf)
{
    ngx_http_invoices_main_conf_t *imcf = conf;

    if (ngx_http_invoices_metrics_add_zone(cf) != NGX_OK
        || ngx_http_invoices_cache_conf_init(cf, &imcf->redis) != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


static void *
ngx_http_invoices_create_loc_conf(ngx_conf_t *cf)
{
    ngx_http_invoices_loc_conf_t  *conf;

    conf = ngx_pcalloc(cf->pool, sizeof(ngx_http_invoices_loc_conf_t));
    if (conf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     conf->database = { 0, NULL };
     *     conf->thread_pool_name = { 0, NULL };
     *     conf->thread_pool = NULL;
     *     conf->api_keys_file = { 0, NULL };
     *     conf->prefix = { 0, NULL };
     *     conf->clcf = NULL;
     */

    conf->admin = NGX_CONF_UNSET;
    conf->webhook = NGX_CONF_UNSET;
    conf->api_keys = NGX_CONF_UNSET_PTR;
    conf->webhook_secrets = NGX_CONF_UNSET_PTR;
    conf->webhook_tolerance = NGX_CONF_UNSET;
    conf->stripe_connect_timeout = NGX_CONF_UNSET_MSEC;
    conf->stripe_timeout = NGX_CONF_UNSET_MSEC;
    conf->stripe_max_retries = NGX_CONF_UNSET_UINT;
    conf->idempotency_lease = NGX_CONF_UNSET_MSEC;
    conf->reconcile = NGX_CONF_UNSET_MSEC;
    conf->event_retention = NGX_CONF_UNSET;
    conf->idempotency_retention = NGX_CONF_UNSET;

    return conf;
}


static char *
ngx_http_invoices_merge_loc_conf(ngx_conf_t *cf, void *parent, void *child)
{
    ngx_msec_t                     longest;
    ngx_http_invoices_loc_conf_t  *prev = parent;
    ngx_http_invoices_loc_conf_t  *conf = child;

    ngx_conf_merge_str_value(conf->database, prev->database, "");
    ngx_conf_merge_str_value(conf->thread_pool_name, prev->thread_pool_name,
                             "invoices");
    ngx_conf_merge_ptr_value(conf->api_keys, prev->api_keys, NULL);
    ngx_conf_merge_str_value(conf->api_keys_file, prev->api_keys_file, "");
    ngx_conf_merge_str_value(conf->currency, prev->currency, "eur");
    ngx_conf_merge_str_value(conf->stripe_secret_key, prev->stripe_secret_key,
                             "");
    ngx_conf_merge_str_value(conf->stripe_api_base, prev->stripe_api_base,
                             "https://api.stripe.com");
    ngx_conf_merge_str_value(conf->stripe_version, prev->stripe_version,
                             "2023-10-16");
    /* "": the pool of invoices_thread_pool, resolved below */
    ngx_conf_merge_str_value(conf->stripe_thread_pool_name,
                             prev->stripe_thread_pool_name, "");
    ngx_conf_merge_msec_value(conf->stripe_connect_timeout,
                              prev->stripe_connect_timeout, 5000);
    ngx_conf_merge_msec_value(conf->stripe_timeout, prev->stripe_timeout,
                              30000);
    ngx_conf_merge_uint_value(conf->stripe_max_retries,
                              prev->stripe_max_retries, 2);
    ngx_conf_merge_ptr_value(conf->webhook_secrets, prev->webhook_secrets,
                             NULL);
    ngx_conf_merge_sec_value(conf->webhook_tolerance, prev->webhook_tolerance,
                             300);

    if (ngx_http_invoices_check_token(cf, &conf->currency,
                                      "invoices_currency",
                                      "abcdefghijklmnopqrstuvwxyz")
        != NGX_CONF_OK
        || conf->currency.len != 3)
    {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "\"invoices_currency\" must be a lowercase ISO code "
                      "such as \"eur\", not \"%V\"", &conf->currency);
        return NGX_CONF_ERROR;
    }

    if (ngx_http_invoices_check_token(cf, &conf->stripe_version,
                                      "invoices_stripe_version",
                                      "0123456789-.abcdefghijklmnopqrstuvwxyz")
        != NGX_CONF_OK)
    {
        return NGX_CONF_ERROR;
    }

    if (ngx_strncmp(conf->stripe_api_base.data, "https://", 8) != 0
        && ngx_strncmp(conf->stripe_api_base.data, "http://", 7) != 0)
    {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "\"invoices_stripe_api_base\" must be an http:// or "
                      "https:// URL, not \"%V\"", &conf->stripe_api_base);
        return NGX_CONF_ERROR;
    }

    /* paths are appended to it: no trailing slash */

    while (conf->stripe_api_base.len > 8
           && conf->stripe_api_base.data[conf->stripe_api_base.len - 1] == '/')
    {
        conf->stripe_api_base.data[--conf->stripe_api_base.len] = '\0';
    }

    if (conf->stripe_max_retries > 10) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "\"invoices_stripe_max_retries\" must be 0 to 10");
        return NGX_CONF_ERROR;
    }

    /*
     * The lease of an Idempotency-Key is renewed before each Stripe call,
     * so it must outlast the longest call: every attempt timing out, with
     * the pauses between attempts (5 s at most each, see
     * ngx_http_invoices_stripe_request).  0, the default, is 10 s more
     * than that, for each location's own Stripe settings
     * (ngx_http_invoices_create).
     */

    longest = conf->stripe_timeout * (conf->stripe_max_retries + 1)
              + 5000 * conf->stripe_max_retries;

    ngx_conf_merge_msec_value(conf->idempotency_lease,
                              prev->idempotency_lease, 0);

    if (conf->idempotency_lease != 0 && conf->idempotency_lease <= longest) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "\"invoices_idempotency_lease\" must be longer than "
                      "the longest Stripe call, %M ms (invoices_stripe_timeout "
                      "times 1 + invoices_stripe_max_retries, and 5 s per "
                      "retry)", longest);
        return NGX_CONF_ERROR;
    }

    /*
     * The background work's settings.  invoices_reconcile is not
     * inherited: it names the one location whose Stripe account is pulled.
     * Event ids (and tombstones) must outlive Stripe's thirty days of
     * events, or a late event could be applied twice or bring a deleted
     * invoice back; Stripe keeps its own idempotency keys 24 hours.
     */

    if (conf->reconcile == NGX_CONF_UNSET_MSEC) {
        conf->reconcile = 0;
    }

    ngx_conf_merge_sec_value(conf->event_retention, prev->event_retention,
                             45 * 86400);
    ngx_conf_merge_sec_value(conf->idempotency_retention,
                             prev->idempotency_retention, 30 * 86400);

    if (conf->event_retention < 30 * 86400) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "\"invoices_event_retention\" must be at least 30d "
                      "(Stripe keeps events for thirty days)");
        return NGX_CONF_ERROR;
    }

    if (conf->idempotency_retention < 86400) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "\"invoices_idempotency_retention\" must be at least "
                      "24h");
        return NGX_CONF_ERROR;
    }

    /* "invoices_admin" and "invoices_stripe_webhook" name one location */

    if (conf->webhook == 1) {
        conf->admin = 0;

        if (conf->reconcile) {
            ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                          "\"invoices_reconcile\" belongs in the "
                          "\"invoices_admin\" location, not in \"%V\"",
                          &conf->clcf->name);
            return NGX_CONF_ERROR;
        }

        if (conf->database.len == 0 || conf->webhook_secrets == NULL) {
            ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                          "\"invoices_stripe_webhook\" in location \"%V\" "
                          "needs \"invoices_database\" and "
                          "\"invoices_stripe_webhook_secret\"",
                          &conf->clcf->name);
            return NGX_CONF_ERROR;
        }

        conf->thread_pool = ngx_thread_pool_add(cf, &conf->thread_pool_name);
        if (conf->thread_pool == NULL) {
            return NGX_CONF_ERROR;
        }

        return NGX_CONF_OK;
    }

    conf->webhook = 0;

    if (conf->admin != 1) {
        conf->admin = 0;

        if (conf->reconcile) {
            ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                          "\"invoices_reconcile\" in location \"%V\" needs "
                          "\"invoices_admin\" there", &conf->clcf->name);
            return NGX_CONF_ERROR;
        }

        return NGX_CONF_OK;
    }

    if (conf->database.len == 0) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "\"invoices_admin\" in location \"%V\" needs "
                      "\"invoices_database\"", &conf->clcf->name);
        return NGX_CONF_ERROR;
    }

    if (conf->api_keys == NULL) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "\"invoices_admin\" in location \"%V\" needs "
                      "\"invoices_api_keys_file\"", &conf->clcf->name);
        return NGX_CONF_ERROR;
    }

    conf->thread_pool = ngx_thread_pool_add(cf, &conf->thread_pool_name);
    if (conf->thread_pool == NULL) {
        return NGX_CONF_ERROR;
    }

    if (conf->stripe_secret_key.len) {
        if (conf->stripe_thread_pool_name.len == 0) {
            conf->stripe_thread_pool_name = conf->thread_pool_name;
        }

        conf->stripe_thread_pool = ngx_thread_pool_add(cf,
                                              &conf->stripe_thread_pool_name);
        if (conf->stripe_thread_pool == NULL) {
            return NGX_CONF_ERROR;
        }
    }

    return ngx_http_invoices_housekeeping_conf(cf, conf);
}


/*
 * The location the background work runs for: the one with
 * invoices_reconcile (one at most, with Stripe), else the first
 * invoices_admin location.
 */

static char *
ngx_http_invoices_housekeeping_conf(ngx_conf_t *cf,
    ngx_http_invoices_loc_conf_t *conf)
{
    ngx_http_invoices_main_conf_t  *imcf;

    imcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_invoices_module);

    if (conf->reconcile == 0) {
        if (imcf->housekeeping == NULL) {
            imcf->housekeeping = conf;
        }

        return NGX_CONF_OK;
    }

    if (conf->stripe_secret_key.len == 0) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "\"invoices_reconcile\" in location \"%V\" needs "
                      "\"invoices_stripe_secret_key\"", &conf->clcf->name);
        return NGX_CONF_ERROR;
    }

    if (imcf->housekeeping && imcf->housekeeping->reconcile) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "\"invoices_reconcile\" is set in location \"%V\" "
                      "and in location \"%V\": one Stripe account is "
                      "reconciled by one location",
                      &imcf->housekeeping->clcf->name, &conf->clcf->name);
        return NGX_CONF_ERROR;
    }

    imcf->housekeeping = conf;

    return NGX_CONF_OK;
}


/* invoices_reconcile <interval> | off: at least 1s */

static char *
ngx_http_invoices_reconcile(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_invoices_loc_conf_t *ilcf = conf;

    ngx_int_t   ms;
    ngx_str_t  *value;

    if (ilcf->reconcile != NGX_CONF_UNSET_MSEC) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (value[1].len == 3 && ngx_strncmp(value[1].data, "off", 3) == 0) {
        ilcf->reconcile = 0;
        return NGX_CONF_OK;
    }

    ms = ngx_parse_time(&value[1], 0);

    if (ms == NGX_ERROR || ms < 1000) {
        return "must be \"off\" or a time of at least 1s";
    }

    ilcf->reconcile = (ngx_msec_t) ms;

    return NGX_CONF_OK;
}


static char *
ngx_http_invoices_admin(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_invoices_loc_conf_t *ilcf = conf;

    ngx_http_core_loc_conf_t  *clcf;

    if (ilcf->admin != NGX_CONF_UNSET || ilcf->webhook != NGX_CONF_UNSET) {
        return "is duplicate";
    }

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);

    if (clcf->named
#if (NGX_PCRE)
        || clcf->regex
#endif
        )
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"invoices_admin\" needs a prefix or exact "
                           "location, not \"%V\"", &clcf->name);
        return NGX_CONF_ERROR;
    }

    ilcf->admin = 1;
    ilcf->clcf = clcf;
    ilcf->prefix = clcf->name;

    /* "/admin/api/invoices/" and "/admin/api/invoices" route alike */

    while (ilcf->prefix.len && ilcf->prefix.data[ilcf->prefix.len - 1] == '/')
    {
        ilcf->prefix.len--;
    }

    clcf->handler = ngx_http_invoices_admin_handler;

    return NGX_CONF_OK;
}


static char *
ngx_http_invoices_webhook(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_invoices_loc_conf_t *ilcf = conf;

    ngx_http_core_loc_conf_t  *clcf;

    if (ilcf->admin != NGX_CONF_UNSET || ilcf->webhook != NGX_CONF_UNSET) {
        return "is duplicate";
    }

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);

    ilcf->webhook = 1;
    ilcf->clcf = clcf;
    clcf->handler = ngx_http_invoices_webhook_handler;

    return NGX_CONF_OK;
}


static char *
ngx_http_invoices_database(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_invoices_loc_conf_t *ilcf = conf;

    char               *rv, *err;
    PQconninfoOption   *opts;

    rv = ngx_conf_set_str_slot(cf, cmd, conf);
    if (rv != NGX_CONF_OK) {
        return rv;
    }

    /* the parser NUL-terminates every word, libpq can read it as is */

    err = NULL;
    opts = PQconninfoParse((char *) ilcf->database.data, &err);

    if (opts == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid \"invoices_database\" value: %s",
                           err ? err : "out of memory");
        if (err) {
            PQfreemem(err);
        }

        return NGX_CONF_ERROR;
    }

    PQconninfoFree(opts);

    if (ilcf->database.len == 0) {
        return "is empty";
    }

    return NGX_CONF_OK;
}


/*
 * The admin keys: one a line, blank lines and "#" comments skipped; two
 * can be valid at once during a rotation.  A line is "<name> <scope>
 * <key>" (scope "read": GET and HEAD only; "write": everything), or a key
 * alone, a write key named "line-<n>" after its line, as files were before
 * keys had names.  Names go into the error log and the audit trail, never
 * the key; a name or a key given twice is refused, so that the audit
 * always names one key.  Read at configuration time, so a reload picks up
 * a new file.  A file others can read is refused.
 */

static char *
ngx_http_invoices_api_keys_file(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_invoices_loc_conf_t *ilcf = conf;

    u_char                        c, *p, *end, *line, *last, *name;
    ngx_str_t                    *value, content, word[4];
    ngx_uint_t                    n, nline, i;
    ngx_http_invoices_api_key_t  *key, *keys;

    if (ilcf->api_keys != NGX_CONF_UNSET_PTR) {
        return "is duplicate";
    }

    value = cf->args->elts;
    ilcf->api_keys_file = value[1];

    if (ngx_http_invoices_secret_read(cf, &ilcf->api_keys_file, &content)
        != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    ilcf->api_keys = ngx_array_create(cf->pool, 2,
                                      sizeof(ngx_http_invoices_api_key_t));
    if (ilcf->api_keys == NULL) {
        return NGX_CONF_ERROR;
    }

    end = content.data + content.len;
    nline = 0;

    for (p = content.data; p < end; p = last + 1) {
        last = ngx_strlchr(p, end, '\n');
        if (last == NULL) {
            last = end;
        }

        nline++;

        /* the line's words, at most 3 (a 4th is an error) */

        n = 0;
        line = p;

        while (line < last && n < 4) {
            while (line < last
                   && (*line == ' ' || *line == '\t' || *line == '\r'))
            {
                line++;
            }

            if (line == last || (n == 0 && *line == '#')) {
                break;
            }

            word[n].data = line;

            while (line < last
                   && *line != ' ' && *line != '\t' && *line != '\r')
            {
                line++;
            }

            word[n].len = line - word[n].data;
            n++;
        }

        if (n == 0) {
            continue;
        }

        if (n != 1 && n != 3) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "\"invoices_api_keys_file\" \"%V\", line %ui:"
                               " expected \"<name> <scope> <key>\" or a key"
                               " alone", &ilcf->api_keys_file, nline);
            return NGX_CONF_ERROR;
        }

        key = ngx_array_push(ilcf->api_keys);
        if (key == NULL) {
            return NGX_CONF_ERROR;
        }

        key->write = 1;

        if (n == 1) {
            key->key = word[0];

            name = ngx_pnalloc(cf->pool, sizeof("line-") + NGX_INT_T_LEN);
            if (name == NULL) {
                return NGX_CONF_ERROR;
            }

            key->name.data = name;
            key->name.len = ngx_sprintf(name, "line-%ui", nline) - name;

        } else {
            key->name = word[0];
            key->key = word[2];

            if (word[1].len == 4 && ngx_strncmp(word[1].data, "read", 4) == 0)
            {
                key->write = 0;

            } else if (word[1].len != 5
                       || ngx_strncmp(word[1].data, "write", 5) != 0)
            {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "\"invoices_api_keys_file\" \"%V\", line"
                                   " %ui: the scope must be \"read\" or"
                                   " \"write\"", &ilcf->api_keys_file, nline);
                return NGX_CONF_ERROR;
            }

            for (i = 0; i < key->name.len; i++) {
                c = key->name.data[i];

                if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
                      || (c >= '0' && c <= '9')
                      || c == '.' || c == '_' || c == '-'))
                {
                    break;
                }
            }

            if (i < key->name.len || key->name.len > 64) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "\"invoices_api_keys_file\" \"%V\", line"
                                   " %ui: a key's name is 1 to 64 letters,"
                                   " digits, \".\", \"_\" or \"-\"",
                                   &ilcf->api_keys_file, nline);
                return NGX_CONF_ERROR;
            }
        }

        keys = ilcf->api_keys->elts;

        for (i = 0; i + 1 < ilcf->api_keys->nelts; i++) {
            if ((keys[i].name.len == key->name.len
                 && ngx_strncmp(keys[i].name.data, key->name.data,
                                key->name.len) == 0)
                || (keys[i].key.len == key->key.len
                    && ngx_strncmp(keys[i].key.data, key->key.data,
                                   key->key.len) == 0))
            {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "\"invoices_api_keys_file\" \"%V\", line"
                                   " %ui: the name \"%V\" or its key is given"
                                   " twice", &ilcf->api_keys_file, nline,
                                   &key->name);
                return NGX_CONF_ERROR;
            }
        }
    }

    if (ilcf->api_keys->nelts == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"invoices_api_keys_file\" \"%V\" has no key",
                           &ilcf->api_keys_file);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


static char *
ngx_http_invoices_stripe_secret_key(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_invoices_loc_conf_t *ilcf = conf;

    ngx_str_t  *value;

    if (ilcf->stripe_secret_key.data != NULL) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (ngx_http_invoices_secret_load(cf, &value[1], &ilcf->stripe_secret_key)
        != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/* one or two secrets: two while a rotation is under way */

static char *
ngx_http_invoices_webhook_secret(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_invoices_loc_conf_t *ilcf = conf;

    ngx_str_t   *value, *secret;
    ngx_uint_t   i;

    if (ilcf->webhook_secrets != NGX_CONF_UNSET_PTR) {
        return "is duplicate";
    }

    value = cf->args->elts;

    ilcf->webhook_secrets = ngx_array_create(cf->pool, 2, sizeof(ngx_str_t));
    if (ilcf->webhook_secrets == NULL) {
        return NGX_CONF_ERROR;
    }

    for (i = 1; i < cf->args->nelts; i++) {
        secret = ngx_array_push(ilcf->webhook_secrets);
        if (secret == NULL) {
            return NGX_CONF_ERROR;
        }

        if (ngx_http_invoices_secret_load(cf, &value[i], secret) != NGX_OK) {
            return NGX_CONF_ERROR;
        }
    }

    return NGX_CONF_OK;
}


/* a value made only of the allowed characters */

static char *
ngx_http_invoices_check_token(ngx_conf_t *cf, ngx_str_t *value,
    const char *directive, const char *allowed)
{
    size_t  i;

    for (i = 0; i < value->len; i++) {
        if (ngx_strchr(allowed, value->data[i]) == NULL) {
            ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                          "\"%s\" has an invalid value \"%V\"", directive,
                          value);
            return NGX_CONF_ERROR;
        }
    }

    return value->len ? NGX_CONF_OK : NGX_CONF_ERROR;
}


static ngx_int_t
ngx_http_invoices_init_process(ngx_cycle_t *cycle)
{
    /* the worker's Redis link, when a cache is configured */
    if (ngx_http_invoices_cache_init(cycle) != NGX_OK) {
        return NGX_ERROR;
    }

    /* the background work, in worker 0 */
    return ngx_http_invoices_housekeeping_init(cycle);
}


static ngx_int_t
ngx_http_invoices_init_module(ngx_cycle_t *cycle)
{
    /* before any worker or pool thread builds JSON or calls Stripe */
    json_object_seed(0);

    return ngx_http_invoices_stripe_init();
}


static void
ngx_http_invoices_exit_process(ngx_cycle_t *cycle)
{
    ngx_http_invoices_redis_exit();
    ngx_http_invoices_local_exit();
    ngx_http_invoices_thread_handles_close();
}
