
/*
 * The admin API's content handler: the Api-Key check, routing below the
 * location's prefix, methods, then the endpoint.  Errors nginx answers by
 * itself here (a body over client_max_body_size, a broken chunked body)
 * are turned into JSON by ngx_http_invoices_filter_module.c.
 */


#include "ngx_http_invoices_module.h"
#include "ngx_http_invoices_handler.h"
#include "ngx_http_invoices_request.h"
#include "ngx_http_invoices_json.h"
#include "ngx_http_invoices_read.h"
#include "ngx_http_invoices_export.h"
#include "ngx_http_invoices_create.h"
#include "ngx_http_invoices_sync.h"
#include "ngx_http_invoices_history.h"
#include "ngx_http_invoices_action.h"
#include "ngx_http_invoices_metrics.h"


static ngx_http_invoices_api_key_t *ngx_http_invoices_auth(
    ngx_http_request_t *r, ngx_http_invoices_loc_conf_t *ilcf,
    const char **denied);
static uintptr_t ngx_http_invoices_key_equal(ngx_str_t *given,
    ngx_str_t *key);
static ngx_int_t ngx_http_invoices_not_allowed(ngx_http_request_t *r,
    ngx_str_t *allow, const char *message);


ngx_int_t
ngx_http_invoices_admin_handler(ngx_http_request_t *r)
{
    u_char                        *p, *end, *slash;
    ngx_int_t                      rc, action;
    ngx_uint_t                     one;
    const char                    *denied;
    ngx_str_t                      rest, id, sub;
    ngx_http_invoices_ctx_t       *ctx;
    ngx_http_invoices_api_key_t   *key;
    ngx_http_invoices_loc_conf_t  *ilcf;

    static ngx_str_t  get_head = ngx_string("GET, HEAD");
    static ngx_str_t  get_head_post = ngx_string("GET, HEAD, POST");
    static ngx_str_t  get_head_delete = ngx_string("GET, HEAD, DELETE");
    static ngx_str_t  post = ngx_string("POST");

    ilcf = ngx_http_get_module_loc_conf(r, ngx_http_invoices_module);

    key = ngx_http_invoices_auth(r, ilcf, &denied);
    if (key == NULL) {
        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                       "invoices: Api-Key refused: %s", denied);

        rc = ngx_http_discard_request_body(r);
        if (rc != NGX_OK) {
            return rc;
        }

        return ngx_http_invoices_send_error(r, NGX_HTTP_UNAUTHORIZED,
                   "authentication_error", denied,
                   "a valid Api-Key header is required", NULL);
    }

    /*
     * a read key reads: anything but GET and HEAD is refused, whatever the
     * route, before any body is read
     */

    if (!key->write && !(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "invoices: the read key \"%V\" may not %V",
                      &key->name, &r->method_name);

        rc = ngx_http_discard_request_body(r);
        if (rc != NGX_OK) {
            return rc;
        }

        return ngx_http_invoices_send_error(r, NGX_HTTP_FORBIDDEN,
                   "permission_error", "api_key_read_only",
                   "this Api-Key may only read (GET, HEAD)", NULL);
    }

    ctx = ngx_http_invoices_ctx(r);
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->key = key;

    /*
     * route: "" or "/" is the collection, "/{id}" one invoice, and
     * "/{id}/events" its history, "/{id}/{action}" an action on it
     */

    if (r->uri.len < ilcf->prefix.len
        || ngx_strncmp(r->uri.data, ilcf->prefix.data, ilcf->prefix.len) != 0)
    {
        goto no_route;
    }

    rest.data = r->uri.data + ilcf->prefix.len;
    rest.len = r->uri.len - ilcf->prefix.len;

    ngx_str_null(&id);
    ngx_str_null(&sub);

    if (rest.len > 1) {
        p = rest.data;
        end = p + rest.len;

        if (*p != '/') {
            goto no_route;
        }

        id.data = p + 1;
        slash = ngx_strlchr(id.data, end, '/');

        if (slash == NULL) {
            id.len = end - id.data;

        } else {
            /* "/{id}/{sub}": one level below an invoice, no more */

            id.len = slash - id.data;
            sub.data = slash + 1;
            sub.len = end - sub.data;

            if (id.len == 0 || sub.len == 0
                || ngx_strlchr(sub.data, end, '/') != NULL)
            {
                goto no_route;
            }
        }

        ngx_log_debug2(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                       "invoices: route one invoice \"%V\" \"%V\"",
                       &id, &sub);

    } else if (rest.len == 1 && rest.data[0] != '/') {
        goto no_route;
    }

    /* "/{id}/{action}": acting needs Stripe, and is done with POST */

    action = (sub.len && ilcf->stripe_secret_key.len)
             ? ngx_http_invoices_action_find(&sub) : -1;

    if (action != -1) {
        ngx_http_invoices_metrics_endpoint(r, NGX_HTTP_INVOICES_EP_ACTION);

        if (r->method == NGX_HTTP_POST) {
            return ngx_http_invoices_action(r, ilcf, &id, action);
        }

        return ngx_http_invoices_not_allowed(r, &post,
                                             "an action is taken with POST");
    }

    if (sub.len) {
        if (sub.len != 6 || ngx_strncmp(sub.data, "events", 6) != 0) {
            goto no_route;
        }

        ngx_http_invoices_metrics_endpoint(r, NGX_HTTP_INVOICES_EP_EVENTS);

        if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
            return ngx_http_invoices_not_allowed(r, &get_head,
                       "an invoice's events are read with GET");
        }

        rc = ngx_http_discard_request_body(r);
        if (rc != NGX_OK) {
            return rc;
        }

        return ngx_http_invoices_history(r, ilcf, &id);
    }

    /* creating needs Stripe: without a key the collection is read-only */

    if (id.len == 0 && r->method == NGX_HTTP_POST
        && ilcf->stripe_secret_key.len)
    {
        ngx_http_invoices_metrics_endpoint(r, NGX_HTTP_INVOICES_EP_CREATE);
        return ngx_http_invoices_create(r, ilcf);
    }

    /* the sync, where Stripe is configured: POST only */

    if (id.len == 4 && ngx_strncmp(id.data, "sync", 4) == 0
        && ilcf->stripe_secret_key.len)
    {
        ngx_http_invoices_metrics_endpoint(r, NGX_HTTP_INVOICES_EP_SYNC);

        if (r->method == NGX_HTTP_POST) {
            return ngx_http_invoices_sync(r, ilcf);
        }

        return ngx_http_invoices_not_allowed(r, &post,
                                             "the sync is started with POST");
    }

    /* one invoice (not the export or the summary): a draft is deleted */

    one = id.len
          && !(id.len == 6 && ngx_strncmp(id.data, "export", 6) == 0)
          && !(id.len == 7 && ngx_strncmp(id.data, "summary", 7) == 0);

    if (one && r->method == NGX_HTTP_DELETE && ilcf->stripe_secret_key.len) {
        ngx_http_invoices_metrics_endpoint(r, NGX_HTTP_INVOICES_EP_ACTION);
        return ngx_http_invoices_action(r, ilcf, &id,
                                        NGX_HTTP_INVOICES_ACTION_DELETE);
    }

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        return ngx_http_invoices_not_allowed(r,
                   !ilcf->stripe_secret_key.len ? &get_head
                   : id.len == 0 ? &get_head_post
                   : one ? &get_head_delete : &get_head,
                   "this method is not allowed here");
    }

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    if (id.len == 0) {
        ngx_http_invoices_metrics_endpoint(r, NGX_HTTP_INVOICES_EP_LIST);
        return ngx_http_invoices_list(r, ilcf);
    }

    if (id.len == 6 && ngx_strncmp(id.data, "export", 6) == 0) {
        ngx_http_invoices_metrics_endpoint(r, NGX_HTTP_INVOICES_EP_EXPORT);
        return ngx_http_invoices_export(r, ilcf);
    }

    if (id.len == 7 && ngx_strncmp(id.data, "summary", 7) == 0) {
        ngx_http_invoices_metrics_endpoint(r, NGX_HTTP_INVOICES_EP_SUMMARY);
        return ngx_http_invoices_summary(r, ilcf);
    }

    ngx_http_invoices_metrics_endpoint(r, NGX_HTTP_INVOICES_EP_GET);
    return ngx_http_invoices_get(r, ilcf, &id);

no_route:

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "invoices: no route for \"%V\"", &r->uri);

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    return ngx_http_invoices_send_error(r, NGX_HTTP_NOT_FOUND,
               "invalid_request_error", "route_missing",
               "unrecognized request URL", NULL);
}


/*
 * The caller's key when the Api-Key is one of ours, else NULL and the
 * error code to answer.  Every key is compared, each in constant time;
 * the match is taken without a branch on it.
 */

static ngx_http_invoices_api_key_t *
ngx_http_invoices_auth(ngx_http_request_t *r,
    ngx_http_invoices_loc_conf_t *ilcf, const char **denied)
{
    uintptr_t                     found, eq;
    ngx_str_t                    *given;
    ngx_uint_t                    i, n;
    ngx_http_invoices_api_key_t  *keys;

    given = ngx_http_invoices_header(r, "Api-Key", &n);

    if (given == NULL || given->len == 0) {
        *denied = "api_key_missing";
        return NULL;
    }

    found = 0;
    keys = ilcf->api_keys->elts;

    for (i = 0; i < ilcf->api_keys->nelts; i++) {
        eq = ngx_http_invoices_key_equal(given, &keys[i].key);
        found |= (uintptr_t) &keys[i] & (0 - eq);
    }

    if (n == 1 && found) {
        return (ngx_http_invoices_api_key_t *) found;
    }

    ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                  "invoices: request with an invalid Api-Key");

    *denied = "api_key_invalid";
    return NULL;
}


/* time depends on the configured key's length only, not on the given key */

static uintptr_t
ngx_http_invoices_key_equal(ngx_str_t *given, ngx_str_t *key)
{
    u_char      c;
    size_t      i;
    ngx_uint_t  diff;

    diff = given->len ^ key->len;

    for (i = 0; i < key->len; i++) {
        c = (i < given->len) ? given->data[i] : 0;
        diff |= c ^ key->data[i];
    }

    return diff == 0;
}


/* 405 with the methods the route takes; a body sent is discarded */

static ngx_int_t
ngx_http_invoices_not_allowed(ngx_http_request_t *r, ngx_str_t *allow,
    const char *message)
{
    ngx_int_t  rc;

    static ngx_str_t  name = ngx_string("Allow");

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    if (ngx_http_invoices_set_header(r, &name, allow) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_invoices_send_error(r, NGX_HTTP_NOT_ALLOWED,
                                        "invalid_request_error",
                                        "method_not_allowed", message, NULL);
}
