
/*
 * ngx_http_invoices_module: directives, configuration and init hooks.
 * The request handling lives in the other files (see DESIGN.md).
 */


#include <sys/stat.h>
#include <jansson.h>
#include <libpq-fe.h>

#include "ngx_http_invoices_module.h"
#include "ngx_http_invoices_handler.h"
#include "ngx_http_invoices_json.h"
#include "ngx_http_invoices_pg.h"


#define NGX_HTTP_INVOICES_KEYS_MAX_SIZE  65536


static void *ngx_http_invoices_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_invoices_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child);
static char *ngx_http_invoices_admin(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_invoices_database(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_invoices_api_keys_file(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
static ngx_int_t ngx_http_invoices_init_module(ngx_cycle_t *cycle);
static void ngx_http_invoices_exit_process(ngx_cycle_t *cycle);


static ngx_command_t  ngx_http_invoices_commands[] = {

    { ngx_string("invoices_admin"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_invoices_admin,
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

      ngx_null_command
};


static ngx_http_module_t  ngx_http_invoices_module_ctx = {
    NULL,                                  /* preconfiguration */
    ngx_http_invoices_filter_init,         /* postconfiguration */

    NULL,                                  /* create main configuration */
    NULL,                                  /* init main configuration */

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
    NULL,                                  /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    ngx_http_invoices_exit_process,        /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


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
    conf->api_keys = NGX_CONF_UNSET_PTR;

    return conf;
}


static char *
ngx_http_invoices_merge_loc_conf(ngx_conf_t *cf, void *parent, void *child)
{
    ngx_http_invoices_loc_conf_t  *prev = parent;
    ngx_http_invoices_loc_conf_t  *conf = child;

    ngx_conf_merge_str_value(conf->database, prev->database, "");
    ngx_conf_merge_str_value(conf->thread_pool_name, prev->thread_pool_name,
                             "invoices");
    ngx_conf_merge_ptr_value(conf->api_keys, prev->api_keys, NULL);
    ngx_conf_merge_str_value(conf->api_keys_file, prev->api_keys_file, "");

    /* "invoices_admin" is not inherited: it names one location */

    if (conf->admin != 1) {
        conf->admin = 0;
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

    return NGX_CONF_OK;
}


static char *
ngx_http_invoices_admin(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_invoices_loc_conf_t *ilcf = conf;

    ngx_http_core_loc_conf_t  *clcf;

    if (ilcf->admin != NGX_CONF_UNSET) {
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
 * can be valid at once during a rotation.  Read at configuration time, so
 * a reload picks up a new file.  A file others can read is refused.
 */

static char *
ngx_http_invoices_api_keys_file(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_invoices_loc_conf_t *ilcf = conf;

    u_char           *buf, *p, *end, *line, *last;
    ssize_t           n;
    ngx_fd_t          fd;
    ngx_str_t        *value, *key, name;
    ngx_file_info_t   fi;

    if (ilcf->api_keys != NGX_CONF_UNSET_PTR) {
        return "is duplicate";
    }

    value = cf->args->elts;
    name = value[1];

    if (ngx_conf_full_name(cf->cycle, &name, 1) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    fd = ngx_open_file(name.data, NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);
    if (fd == NGX_INVALID_FILE) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           "\"invoices_api_keys_file\" cannot open \"%s\"",
                           name.data);
        return NGX_CONF_ERROR;
    }

    buf = NULL;

    if (ngx_fd_info(fd, &fi) == NGX_FILE_ERROR) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           "\"invoices_api_keys_file\" cannot stat \"%s\"",
                           name.data);
        goto failed;
    }

    if (fi.st_mode & (S_IROTH|S_IWOTH)) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"invoices_api_keys_file\" \"%s\" is accessible "
                           "by others; chmod o-rwx it", name.data);
        goto failed;
    }

    if (ngx_file_size(&fi) > NGX_HTTP_INVOICES_KEYS_MAX_SIZE) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"invoices_api_keys_file\" \"%s\" is larger "
                           "than %d bytes", name.data,
                           NGX_HTTP_INVOICES_KEYS_MAX_SIZE);
        goto failed;
    }

    buf = ngx_pnalloc(cf->temp_pool, NGX_HTTP_INVOICES_KEYS_MAX_SIZE + 1);
    if (buf == NULL) {
        goto failed;
    }

    n = ngx_read_fd(fd, buf, NGX_HTTP_INVOICES_KEYS_MAX_SIZE + 1);
    if (n == -1) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           "\"invoices_api_keys_file\" cannot read \"%s\"",
                           name.data);
        goto failed;
    }

    (void) ngx_close_file(fd);
    fd = NGX_INVALID_FILE;

    ilcf->api_keys = ngx_array_create(cf->pool, 2, sizeof(ngx_str_t));
    if (ilcf->api_keys == NULL) {
        return NGX_CONF_ERROR;
    }

    ilcf->api_keys_file = name;

    end = buf + n;

    for (p = buf; p < end; p = last + 1) {
        last = ngx_strlchr(p, end, '\n');
        if (last == NULL) {
            last = end;
        }

        line = p;
        p = last;

        while (line < p && (*line == ' ' || *line == '\t')) {
            line++;
        }

        while (p > line && (p[-1] == ' ' || p[-1] == '\t' || p[-1] == '\r')) {
            p--;
        }

        if (line == p || *line == '#') {
            continue;
        }

        key = ngx_array_push(ilcf->api_keys);
        if (key == NULL) {
            return NGX_CONF_ERROR;
        }

        key->len = p - line;
        key->data = ngx_pstrdup(cf->pool, &(ngx_str_t) { key->len, line });
        if (key->data == NULL) {
            return NGX_CONF_ERROR;
        }
    }

    if (ilcf->api_keys->nelts == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"invoices_api_keys_file\" \"%s\" has no key",
                           name.data);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;

failed:

    (void) ngx_close_file(fd);
    return NGX_CONF_ERROR;
}


static ngx_int_t
ngx_http_invoices_init_module(ngx_cycle_t *cycle)
{
    /* before any worker or pool thread builds JSON */
    json_object_seed(0);

    return NGX_OK;
}


static void
ngx_http_invoices_exit_process(ngx_cycle_t *cycle)
{
    ngx_http_invoices_pg_close_all();
}
