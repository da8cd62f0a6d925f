
/*
 * JSON bodies: the one error writer and the one response sender.
 *
 * Bodies are produced by jansson into malloc()ed memory, either here on the
 * event loop or in a pool thread; ngx_http_invoices_send_json() takes
 * ownership and frees the memory with the request pool.
 */


#include "ngx_http_invoices_module.h"
#include "ngx_http_invoices_json.h"


static void ngx_http_invoices_free_body(void *data);
static ngx_int_t ngx_http_invoices_header_filter(ngx_http_request_t *r);
static ngx_int_t ngx_http_invoices_body_filter(ngx_http_request_t *r,
    ngx_chain_t *in);


typedef struct {
    ngx_uint_t   status;
    const char  *type;
    const char  *code;
    const char  *message;
} ngx_http_invoices_status_error_t;


/* nginx's own error statuses, as the API's errors */
static ngx_http_invoices_status_error_t  ngx_http_invoices_status_errors[] = {
    { NGX_HTTP_BAD_REQUEST, "invalid_request_error", "request_malformed",
      "the request is malformed" },
    { NGX_HTTP_FORBIDDEN, "invalid_request_error", "forbidden",
      "access is forbidden" },
    { NGX_HTTP_NOT_FOUND, "invalid_request_error", "route_missing",
      "unrecognized request URL" },
    { NGX_HTTP_NOT_ALLOWED, "invalid_request_error", "method_not_allowed",
      "this method is not allowed here" },
    { NGX_HTTP_REQUEST_TIME_OUT, "invalid_request_error", "request_timeout",
      "the request was not received in time" },
    { NGX_HTTP_REQUEST_ENTITY_TOO_LARGE, "invalid_request_error",
      "body_too_large", "the request body is too large" },
    { NGX_HTTP_REQUEST_URI_TOO_LARGE, "invalid_request_error",
      "uri_too_long", "the request URI is too long" },
    { NGX_HTTP_TOO_MANY_REQUESTS, "invalid_request_error", "rate_limited",
      "too many requests, retry later" },
    { NGX_HTTP_SERVICE_UNAVAILABLE, "api_error", "service_unavailable",
      "the service is unavailable, retry later" },
    { 0, NULL, NULL, NULL }
};


static ngx_http_output_header_filter_pt  ngx_http_next_header_filter;
static ngx_http_output_body_filter_pt    ngx_http_next_body_filter;


static ngx_str_t  ngx_http_invoices_content_type =
    ngx_string("application/json; charset=utf-8");


char *
ngx_http_invoices_json_dump(json_t *json, size_t *len)
{
    char  *s;

    if (json == NULL) {
        return NULL;
    }

    s = json_dumps(json, JSON_COMPACT);
    if (s != NULL) {
        *len = strlen(s);
    }

    return s;
}


char *
ngx_http_invoices_json_error(const char *type, const char *code,
    const char *message, const char *param, size_t *len)
{
    char    *s;
    json_t  *root;

    root = ngx_http_invoices_json_error_new(type, code, message, param);

    s = ngx_http_invoices_json_dump(root, len);
    json_decref(root);

    return s;
}


const char *
ngx_http_invoices_json_str(json_t *o, const char *key)
{
    return json_string_value(json_object_get(o, key));
}


/* {"error": {...}}; callers may add to the inner object before dumping */

json_t *
ngx_http_invoices_json_error_new(const char *type, const char *code,
    const char *message, const char *param)
{
    json_t  *root, *err;

    err = json_object();
    root = json_object();

    if (err == NULL || root == NULL) {
        json_decref(err);
        json_decref(root);
        return NULL;
    }

    json_object_set_new(err, "type", json_string(type));

    if (code) {
        json_object_set_new(err, "code", json_string(code));
    }

    json_object_set_new(err, "message", json_string(message));

    if (param) {
        json_object_set_new(err, "param", json_string(param));
    }

    json_object_set_new(root, "error", err);

    return root;
}


/*
 * Sends a complete JSON response.  "body" is malloc()ed and owned by this
 * function from here on, whatever happens.
 */

ngx_int_t
ngx_http_invoices_send_json(ngx_http_request_t *r, ngx_uint_t status,
    char *body, size_t len)
{
    ngx_pool_cleanup_t  *cln;

    if (body == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        free(body);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    cln->handler = ngx_http_invoices_free_body;
    cln->data = body;

    return ngx_http_invoices_send_bytes(r, status, (u_char *) body, len);
}


/* the same for bytes that live at least as long as the request */

ngx_int_t
ngx_http_invoices_send_bytes(ngx_http_request_t *r, ngx_uint_t status,
    u_char *body, size_t len)
{
    ngx_buf_t    *b;
    ngx_int_t     rc;
    ngx_chain_t   out;

    static ngx_str_t  retry_after = ngx_string("Retry-After");
    static ngx_str_t  one_second = ngx_string("1");

    if (status == NGX_HTTP_SERVICE_UNAVAILABLE
        && ngx_http_invoices_set_header(r, &retry_after, &one_second)
           != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    r->headers_out.status = status;
    r->headers_out.content_type = ngx_http_invoices_content_type;
    r->headers_out.content_type_len = ngx_http_invoices_content_type.len;
    r->headers_out.content_type_lowcase = NULL;

    if (status == NGX_HTTP_NOT_MODIFIED) {
        r->header_only = 1;
        ngx_http_clear_content_length(r);
        r->headers_out.content_type.len = 0;
        return ngx_http_send_header(r);
    }

    r->headers_out.content_length_n = len;

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    b = ngx_calloc_buf(r->pool);
    if (b == NULL) {
        return NGX_ERROR;
    }

    b->start = body;
    b->pos = b->start;
    b->last = b->start + len;
    b->end = b->last;
    b->memory = 1;
    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}


ngx_int_t
ngx_http_invoices_send_error(ngx_http_request_t *r, ngx_uint_t status,
    const char *type, const char *code, const char *message,
    const char *param)
{
    char    *body;
    size_t   len;

    body = ngx_http_invoices_json_error(type, code, message, param, &len);

    return ngx_http_invoices_send_json(r, status, body, len);
}


ngx_int_t
ngx_http_invoices_set_header(ngx_http_request_t *r, ngx_str_t *name,
    ngx_str_t *value)
{
    ngx_table_elt_t  *h;

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h->hash = 1;
    h->key = *name;
    h->value = *value;

    return NGX_OK;
}


static void
ngx_http_invoices_free_body(void *data)
{
    free(data);
}


ngx_http_invoices_ctx_t *
ngx_http_invoices_ctx(ngx_http_request_t *r)
{
    ngx_http_invoices_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_invoices_module);

    if (ctx == NULL) {
        ctx = ngx_pcalloc(r->pool, sizeof(ngx_http_invoices_ctx_t));
        if (ctx == NULL) {
            return NULL;
        }

        ngx_http_set_ctx(r, ctx, ngx_http_invoices_module);
    }

    return ctx;
}


/*
 * Errors that nginx answers by itself in the API's location (a body over
 * client_max_body_size, a broken chunked body, a handler's 500, limit_req)
 * come as nginx's HTML page.  These filters, at the top of the chains,
 * swap the page for the JSON error shape, so that every answer from the
 * API's location is JSON.
 */

ngx_int_t
ngx_http_invoices_filter_init(ngx_conf_t *cf)
{
    ngx_http_next_header_filter = ngx_http_top_header_filter;
    ngx_http_top_header_filter = ngx_http_invoices_header_filter;

    ngx_http_next_body_filter = ngx_http_top_body_filter;
    ngx_http_top_body_filter = ngx_http_invoices_body_filter;

    return NGX_OK;
}


static ngx_int_t
ngx_http_invoices_header_filter(ngx_http_request_t *r)
{
    char                              *json;
    size_t                             len;
    ngx_buf_t                         *b;
    ngx_chain_t                       *cl;
    ngx_http_invoices_ctx_t           *ctx;
    ngx_http_invoices_loc_conf_t      *ilcf;
    ngx_http_invoices_status_error_t  *e;

    static ngx_str_t  retry_after = ngx_string("Retry-After");
    static ngx_str_t  one_second = ngx_string("1");

    ilcf = ngx_http_get_module_loc_conf(r, ngx_http_invoices_module);

    if (!(ilcf->admin || ilcf->webhook)
        || r != r->main
        || r->headers_out.status < NGX_HTTP_BAD_REQUEST
        || r->headers_out.content_type.len != sizeof("text/html") - 1
        || ngx_strncmp(r->headers_out.content_type.data, "text/html",
                       sizeof("text/html") - 1) != 0)
    {
        return ngx_http_next_header_filter(r);
    }

    for (e = ngx_http_invoices_status_errors; e->status; e++) {
        if (e->status == r->headers_out.status) {
            break;
        }
    }

    if (e->status == 0) {
        json = ngx_http_invoices_json_error(
                   r->headers_out.status >= NGX_HTTP_INTERNAL_SERVER_ERROR
                   ? "api_error" : "invalid_request_error",
                   r->headers_out.status >= NGX_HTTP_INTERNAL_SERVER_ERROR
                   ? "internal_error" : "request_invalid",
                   r->headers_out.status >= NGX_HTTP_INTERNAL_SERVER_ERROR
                   ? "internal error" : "the request is invalid",
                   NULL, &len);
    } else {
        json = ngx_http_invoices_json_error(e->type, e->code, e->message,
                                            NULL, &len);
    }

    if (json == NULL) {
        return ngx_http_next_header_filter(r);
    }

    ctx = ngx_http_invoices_ctx(r);
    b = ngx_create_temp_buf(r->pool, len);
    cl = ngx_alloc_chain_link(r->pool);

    if (ctx == NULL || b == NULL || cl == NULL) {
        free(json);
        return NGX_ERROR;
    }

    b->last = ngx_cpymem(b->pos, json, len);
    b->last_buf = 1;
    free(json);

    cl->buf = b;
    cl->next = NULL;
    ctx->error_body = cl;

    if (r->headers_out.status == NGX_HTTP_SERVICE_UNAVAILABLE
        && ngx_http_invoices_set_header(r, &retry_after, &one_second)
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    r->headers_out.content_type = ngx_http_invoices_content_type;
    r->headers_out.content_type_len = ngx_http_invoices_content_type.len;
    r->headers_out.content_type_lowcase = NULL;
    ngx_http_clear_content_length(r);
    r->headers_out.content_length_n = len;

    return ngx_http_next_header_filter(r);
}


static ngx_int_t
ngx_http_invoices_body_filter(ngx_http_request_t *r, ngx_chain_t *in)
{
    ngx_uint_t                last;
    ngx_chain_t              *cl, *out;
    ngx_http_invoices_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_invoices_module);

    if (ctx == NULL || ctx->error_body == NULL) {
        return ngx_http_next_body_filter(r, in);
    }

    /* swallow nginx's page, then send ours in its place */

    last = 0;

    for (cl = in; cl; cl = cl->next) {
        cl->buf->pos = cl->buf->last;
        cl->buf->file_pos = cl->buf->file_last;

        if (cl->buf->last_buf) {
            last = 1;
        }
    }

    if (!last) {
        return NGX_OK;
    }

    out = ctx->error_body;
    ctx->error_body = NULL;

    return ngx_http_next_body_filter(r, out);
}
