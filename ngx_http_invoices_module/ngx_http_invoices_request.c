
/*
 * What the endpoints read of a request: its headers (by name, with how
 * often each came) and its body, in memory.
 */


#include <ngx_config.h>
#include <ngx_core.h>

#include "ngx_http_invoices_module.h"
#include "ngx_http_invoices_request.h"


/*
 * The request body as one piece of memory, the exact bytes received (the
 * webhook signature is computed over them).  Parts nginx spooled to a
 * temporary file are read back here: a local file of at most
 * client_max_body_size that was just written, so in the page cache.
 */

ngx_int_t
ngx_http_invoices_request_body(ngx_http_request_t *r, ngx_str_t *body)
{
    u_char       *p;
    off_t         len;
    ssize_t       n;
    ngx_buf_t    *b;
    ngx_chain_t  *cl;

    ngx_str_null(body);

    if (r->request_body == NULL || r->request_body->bufs == NULL) {
        return NGX_OK;
    }

    len = 0;

    /* measured the way it is copied below: a file part by its file */

    for (cl = r->request_body->bufs; cl; cl = cl->next) {
        b = cl->buf;
        len += b->in_file ? b->file_last - b->file_pos : b->last - b->pos;
    }

    if (len == 0) {
        return NGX_OK;
    }

    body->data = ngx_pnalloc(r->pool, len + 1);
    if (body->data == NULL) {
        return NGX_ERROR;
    }

    p = body->data;

    for (cl = r->request_body->bufs; cl; cl = cl->next) {
        b = cl->buf;

        if (b->in_file) {
            n = ngx_read_file(b->file, p, b->file_last - b->file_pos,
                              b->file_pos);
            if (n != b->file_last - b->file_pos) {
                return NGX_ERROR;
            }

            p += n;
            continue;
        }

        p = ngx_cpymem(p, b->pos, b->last - b->pos);
    }

    *p = '\0';
    body->len = p - body->data;

    return NGX_OK;
}


/* the value of a request header (any case) and how often it came */

ngx_str_t *
ngx_http_invoices_header(ngx_http_request_t *r, const char *name,
    ngx_uint_t *count)
{
    size_t            len;
    ngx_str_t        *value;
    ngx_uint_t        i;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h;

    len = ngx_strlen(name);
    value = NULL;
    *count = 0;

    part = &r->headers_in.headers.part;
    h = part->elts;

    for (i = 0; /* void */ ; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                break;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (h[i].key.len == len
            && ngx_strncasecmp(h[i].key.data, (u_char *) name, len) == 0)
        {
            if (value == NULL) {
                value = &h[i].value;
            }

            (*count)++;
        }
    }

    return value;
}


/*
 * "application/json", any case, with parameters; a charset must be UTF-8.
 * Exactly one Content-Type: nginx 1.22 keeps the first of several, and a
 * body announced as two types at once is not taken as JSON.
 */

ngx_int_t
ngx_http_invoices_content_type_json(ngx_http_request_t *r)
{
    u_char           *p, *end;
    ngx_uint_t        n;
    ngx_table_elt_t  *h;

    h = r->headers_in.content_type;
    if (h == NULL) {
        return NGX_DECLINED;
    }

    (void) ngx_http_invoices_header(r, "Content-Type", &n);
    if (n != 1) {
        return NGX_DECLINED;
    }

    p = h->value.data;
    end = p + h->value.len;

    if (h->value.len < sizeof("application/json") - 1
        || ngx_strncasecmp(p, (u_char *) "application/json",
                           sizeof("application/json") - 1) != 0)
    {
        return NGX_DECLINED;
    }

    p += sizeof("application/json") - 1;

    while (p < end && (*p == ' ' || *p == '\t')) {
        p++;
    }

    if (p == end) {
        return NGX_OK;
    }

    if (*p != ';') {
        return NGX_DECLINED;
    }

    /* only a charset parameter, and only UTF-8, is understood */

    for (p++; p < end && (*p == ' ' || *p == '\t'); p++) { /* void */ }

    if (end - p >= 8 && ngx_strncasecmp(p, (u_char *) "charset=", 8) == 0) {
        p += 8;

        if (p < end && *p == '"' && end - p >= 2 && end[-1] == '"') {
            p++;
            end--;
        }

        if ((end - p == 5 && ngx_strncasecmp(p, (u_char *) "utf-8", 5) == 0)
            || (end - p == 4 && ngx_strncasecmp(p, (u_char *) "utf8", 4) == 0))
        {
            return NGX_OK;
        }
    }

    return NGX_DECLINED;
}
