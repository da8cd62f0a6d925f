
/*
 * An invoice row: the JSON object the API shows for the columns every
 * read selects (NGX_HTTP_INVOICES_COLUMNS, ngx_http_invoices_row.h).  The
 * list, the detail and the export all go through it.  It is written
 * straight from libpq's result into the caller's buffer: a tree of
 * jansson objects per invoice, dumped again, cost the uncached list about
 * half of the worker's time (docs/benchmarks.md).
 */


#include <ngx_config.h>
#include <ngx_core.h>

#include "ngx_http_invoices_row.h"


/* how a column is shown */
typedef enum {
    NGX_HTTP_INVOICES_ROW_TEXT = 0,      /* a string, or null */
    NGX_HTTP_INVOICES_ROW_NUMBER,        /* an integer, or null */
    NGX_HTTP_INVOICES_ROW_USER           /* {"_id", "name"} of two, or null */
} ngx_http_invoices_row_kind_e;


typedef struct {
    const char                    *key;  /* "\"key\":" */
    ngx_uint_t                     kind;
} ngx_http_invoices_row_field_t;


/*
 * The object's fields in the order of NGX_HTTP_INVOICES_COLUMNS: one per
 * column, but "user", which takes two (team_id, team_name).
 */
static ngx_http_invoices_row_field_t  ngx_http_invoices_row_fields[] = {
    { "{\"_id\":", NGX_HTTP_INVOICES_ROW_TEXT },
    { ",\"invoiceId\":", NGX_HTTP_INVOICES_ROW_TEXT },
    { ",\"user\":", NGX_HTTP_INVOICES_ROW_USER },
    { ",\"status\":", NGX_HTTP_INVOICES_ROW_TEXT },
    { ",\"amount\":", NGX_HTTP_INVOICES_ROW_NUMBER },
    { ",\"currency\":", NGX_HTTP_INVOICES_ROW_TEXT },
    { ",\"invoicePdf\":", NGX_HTTP_INVOICES_ROW_TEXT },
    { ",\"createdAt\":", NGX_HTTP_INVOICES_ROW_TEXT },
    { ",\"updatedAt\":", NGX_HTTP_INVOICES_ROW_TEXT },
    { ",\"number\":", NGX_HTTP_INVOICES_ROW_TEXT },
    { ",\"customer\":", NGX_HTTP_INVOICES_ROW_TEXT },
    { ",\"customerEmail\":", NGX_HTTP_INVOICES_ROW_TEXT },
    { ",\"customerName\":", NGX_HTTP_INVOICES_ROW_TEXT },
    { ",\"amountDue\":", NGX_HTTP_INVOICES_ROW_NUMBER },
    { ",\"amountPaid\":", NGX_HTTP_INVOICES_ROW_NUMBER },
    { ",\"amountRemaining\":", NGX_HTTP_INVOICES_ROW_NUMBER },
    { ",\"hostedInvoiceUrl\":", NGX_HTTP_INVOICES_ROW_TEXT },
    { ",\"dueDate\":", NGX_HTTP_INVOICES_ROW_TEXT },
    { ",\"paidAt\":", NGX_HTTP_INVOICES_ROW_TEXT },
    { ",\"finalizedAt\":", NGX_HTTP_INVOICES_ROW_TEXT },
    { ",\"voidedAt\":", NGX_HTTP_INVOICES_ROW_TEXT },
    { NULL, 0 }
};

/* the keys, braces and nulls of one object, with room to spare */
#define NGX_HTTP_INVOICES_ROW_FIXED  512


static u_char *ngx_http_invoices_row_string(u_char *p, const u_char *s,
    size_t len);
static size_t ngx_http_invoices_row_utf8(const u_char *s, size_t len);


/* the columns and the join, for a statement to add its WHERE and order */
const char  ngx_http_invoices_row_select[] =
    "SELECT " NGX_HTTP_INVOICES_COLUMNS NGX_HTTP_INVOICES_FROM;


/* at least the bytes ngx_http_invoices_row_write() writes for a row */

size_t
ngx_http_invoices_row_size(PGresult *res, int row, int col)
{
    int     i;
    size_t  size;

    size = NGX_HTTP_INVOICES_ROW_FIXED;

    /* a byte of text takes 6 at most, escaped as \u00XX */

    for (i = 0; i < NGX_HTTP_INVOICES_NCOLUMNS; i++) {
        size += 6 * (size_t) PQgetlength(res, row, col + i);
    }

    return size;
}


/*
 * One invoice as docs/openapi.yaml shapes it, compact JSON at p, in a
 * buffer of at least ngx_http_invoices_row_size() bytes; the end of what
 * was written, or NULL when a text is not UTF-8 (PostgreSQL's text always
 * is, in a UTF8 database).
 */

u_char *
ngx_http_invoices_row_write(u_char *p, PGresult *res, int row, int col)
{
    int                             c, len;
    u_char                         *v;
    ngx_http_invoices_row_field_t  *f;

    c = col;

    for (f = ngx_http_invoices_row_fields; f->key; f++) {
        p = ngx_cpymem(p, f->key, ngx_strlen(f->key));

        if (PQgetisnull(res, row, c)) {
            p = ngx_cpymem(p, "null", 4);
            c += (f->kind == NGX_HTTP_INVOICES_ROW_USER) ? 2 : 1;
            continue;
        }

        v = (u_char *) PQgetvalue(res, row, c);
        len = PQgetlength(res, row, c);

        switch (f->kind) {

        case NGX_HTTP_INVOICES_ROW_NUMBER:
            /* a bigint as PostgreSQL writes it: digits, maybe a minus */
            p = ngx_cpymem(p, v, len);
            c++;
            break;

        case NGX_HTTP_INVOICES_ROW_USER:
            p = ngx_cpymem(p, "{\"_id\":", sizeof("{\"_id\":") - 1);
            p = ngx_http_invoices_row_string(p, v, len);
            if (p == NULL) {
                return NULL;
            }

            p = ngx_cpymem(p, ",\"name\":", sizeof(",\"name\":") - 1);
            v = (u_char *) PQgetvalue(res, row, c + 1);
            len = PQgetlength(res, row, c + 1);

            p = ngx_http_invoices_row_string(p, v, len);
            if (p == NULL) {
                return NULL;
            }

            *p++ = '}';
            c += 2;
            break;

        default: /* NGX_HTTP_INVOICES_ROW_TEXT */
            p = ngx_http_invoices_row_string(p, v, len);
            if (p == NULL) {
                return NULL;
            }

            c++;
        }
    }

    *p++ = '}';

    return p;
}


/*
 * A JSON string (RFC 8259): the quote, the backslash and the control
 * characters escaped, the rest as it is; NULL for bytes that are not
 * UTF-8.
 */

static u_char *
ngx_http_invoices_row_string(u_char *p, const u_char *s, size_t len)
{
    u_char         c;
    size_t         i, n;
    static u_char  hex[] = "0123456789ABCDEF";

    *p++ = '"';

    for (i = 0; i < len; /* void */) {
        c = s[i];

        if (c >= 0x80) {
            n = ngx_http_invoices_row_utf8(s + i, len - i);
            if (n == 0) {
                return NULL;
            }

            p = ngx_cpymem(p, s + i, n);
            i += n;
            continue;
        }

        i++;

        if (c >= 0x20 && c != '"' && c != '\\') {
            *p++ = c;
            continue;
        }

        *p++ = '\\';

        switch (c) {
        case '"':  *p++ = '"'; break;
        case '\\': *p++ = '\\'; break;
        case '\b': *p++ = 'b'; break;
        case '\f': *p++ = 'f'; break;
        case '\n': *p++ = 'n'; break;
        case '\r': *p++ = 'r'; break;
        case '\t': *p++ = 't'; break;
        default:
            *p++ = 'u';
            *p++ = '0';
            *p++ = '0';
            *p++ = hex[c >> 4];
            *p++ = hex[c & 0xf];
        }
    }

    *p++ = '"';

    return p;
}


/*
 * The length of the UTF-8 sequence at s (its lead byte is 0x80 or more):
 * 2 to 4, or 0 when it is not one (a stray continuation byte, a sequence
 * cut short, an overlong form, a surrogate, past U+10FFFF).
 */

static size_t
ngx_http_invoices_row_utf8(const u_char *s, size_t len)
{
    size_t    n, i;
    uint32_t  u, min;

    if (s[0] >= 0xc2 && s[0] <= 0xdf) {
        n = 2; u = s[0] & 0x1f; min = 0x80;

    } else if ((s[0] & 0xf0) == 0xe0) {
        n = 3; u = s[0] & 0x0f; min = 0x800;

    } else if (s[0] >= 0xf0 && s[0] <= 0xf4) {
        n = 4; u = s[0] & 0x07; min = 0x10000;

    } else {
        return 0;
    }

    if (len < n) {
        return 0;
    }

    for (i = 1; i < n; i++) {
        if ((s[i] & 0xc0) != 0x80) {
            return 0;
        }

        u = (u << 6) | (s[i] & 0x3f);
    }

    if (u < min || u > 0x10ffff || (u >= 0xd800 && u <= 0xdfff)) {
        return 0;
    }

    return n;
}
