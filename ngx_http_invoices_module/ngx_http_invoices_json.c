
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

    s = ngx_http_invoices_json_dump(root, len);
    json_decref(root);

    return s;
}


/*
 * Sends a complete JSON response.  "body" is malloc()ed and owned by this
 * function from here on, whatever happens.
 */

ngx_int_t
ngx_http_invoices_send_json(ngx_http_request_t *r, ngx_uint_t status,
    char *body, size_t len)
{
    ngx_buf_t           *b;
    ngx_int_t            rc;
    ngx_chain_t          out;
    ngx_pool_cleanup_t  *cln;

    static ngx_str_t  retry_after = ngx_string("Retry-After");
    static ngx_str_t  one_second = ngx_string("1");

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

    b->start = (u_char *) body;
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


/*
 * An rc on its way to ngx_http_finalize_request(): an HTTP error status
 * that nothing has answered yet (a broken chunked body, an allocation
 * failure) becomes a JSON error here, so that nginx never sends its HTML
 * error page from the API's location.
 */

ngx_int_t
ngx_http_invoices_finalize_status(ngx_http_request_t *r, ngx_int_t rc)
{
    if (rc < NGX_HTTP_SPECIAL_RESPONSE || r->header_sent) {
        return rc;
    }

    /* what follows a body nginx could not read is not a request */
    r->keepalive = 0;

    switch (rc) {

    case NGX_HTTP_BAD_REQUEST:
        return ngx_http_invoices_send_error(r, rc, "invalid_request_error",
                                            "request_malformed",
                                            "the request is malformed", NULL);

    case NGX_HTTP_REQUEST_ENTITY_TOO_LARGE:
        return ngx_http_invoices_send_error(r, rc, "invalid_request_error",
                                            "body_too_large",
                                            "the request body is too large",
                                            NULL);

    case NGX_HTTP_CLIENT_CLOSED_REQUEST:
    case NGX_HTTP_REQUEST_TIME_OUT:
        return rc;

    default:
        return ngx_http_invoices_send_error(r, NGX_HTTP_INTERNAL_SERVER_ERROR,
                                            "api_error", "internal_error",
                                            "internal error", NULL);
    }
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
