
/*
 * The filter module: a module entry of its own, of type HTTP_AUX_FILTER
 * (see config), so that a static build puts its filters in the chains
 * where a dynamic one does: after nginx's not-modified and copy filters'
 * places, before the headers, gzip and header filters.  It has no
 * directives; it acts in the locations of ngx_http_invoices_module.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_invoices_module.h"
#include "ngx_http_invoices_json.h"


static ngx_int_t ngx_http_invoices_filter_init(ngx_conf_t *cf);
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
    { NGX_HTTP_PRECONDITION_FAILED, "invalid_request_error",
      "precondition_failed", "the If-Match or If-Unmodified-Since "
      "precondition failed" },
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


static ngx_http_module_t  ngx_http_invoices_filter_module_ctx = {
    NULL,                                  /* preconfiguration */
    ngx_http_invoices_filter_init,         /* postconfiguration */

    NULL,                                  /* create main configuration */
    NULL,                                  /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    NULL,                                  /* create location configuration */
    NULL                                   /* merge location configuration */
};


ngx_module_t  ngx_http_invoices_filter_module = {
    NGX_MODULE_V1,
    &ngx_http_invoices_filter_module_ctx,  /* module context */
    NULL,                                  /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    NULL,                                  /* init module */
    NULL,                                  /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    NULL,                                  /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


/*
 * Errors that nginx answers by itself in the API's location (a body over
 * client_max_body_size, a broken chunked body, a handler's 500, limit_req)
 * come as nginx's HTML page.  These filters swap the page for the JSON
 * error shape, so that every answer from the API's location is JSON.
 */

static ngx_int_t
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

    ngx_http_invoices_set_json_type(r);
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
