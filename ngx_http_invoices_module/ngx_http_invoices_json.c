
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
    ngx_http_invoices_set_json_type(r);

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


void
ngx_http_invoices_set_json_type(ngx_http_request_t *r)
{
    r->headers_out.content_type = ngx_http_invoices_content_type;
    r->headers_out.content_type_len = ngx_http_invoices_content_type.len;
    r->headers_out.content_type_lowcase = NULL;
}
