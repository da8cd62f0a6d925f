
/*
 * libFuzzer target: the form encoder of Stripe requests.  The input is
 * split at NUL bytes into key, value, key, value...; the encoded form is
 * decoded again and must give back exactly those strings, and contain
 * nothing but unreserved bytes, "%XX", "&" and "=".
 */


#include "ngx_http_invoices_parse.h"

#include <stdlib.h>
#include <string.h>


#define FUZZ_PAIRS_MAX  64


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);


static int
fuzz_hex(u_char c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }

    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }

    abort();        /* the encoder writes uppercase hex only */
}


/* decodes one key or value of data at *p into out, up to stop */

static size_t
fuzz_decode(const char *data, size_t *p, size_t len, char stop, char *out)
{
    u_char  c;
    size_t  n;

    n = 0;

    while (*p < len && data[*p] != stop && data[*p] != '&') {
        c = data[*p];

        if (c == '%') {
            if (*p + 2 >= len) {
                abort();
            }

            out[n++] = (char) (fuzz_hex(data[*p + 1]) << 4
                               | fuzz_hex(data[*p + 2]));
            *p += 3;
            continue;
        }

        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
              || (c >= '0' && c <= '9')
              || c == '-' || c == '.' || c == '_' || c == '~'))
        {
            abort();
        }

        out[n++] = c;
        (*p)++;
    }

    out[n] = '\0';

    return n;
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char                      *copy, *s, *end, *out;
    size_t                     i, n, p;
    const char                *str[2 * FUZZ_PAIRS_MAX];
    ngx_http_invoices_form_t   form;

    copy = malloc(size + 1);
    if (copy == NULL) {
        return 0;
    }

    memcpy(copy, data, size);
    copy[size] = '\0';

    n = 0;
    end = copy + size;

    for (s = copy; s <= end && n < 2 * FUZZ_PAIRS_MAX; s += strlen(s) + 1) {
        str[n++] = s;
    }

    if (n % 2) {
        str[n++] = "";
    }

    memset(&form, 0, sizeof(form));

    for (i = 0; i < n; i += 2) {
        ngx_http_invoices_form_add(&form, str[i], str[i + 1]);
    }

    if (form.failed) {
        ngx_http_invoices_form_free(&form);
        free(copy);
        return 0;
    }

    if (form.data == NULL || strlen(form.data) != form.len
        || form.len >= form.size)
    {
        abort();
    }

    out = malloc(form.len + 1);
    if (out == NULL) {
        abort();
    }

    p = 0;

    for (i = 0; i < n; i += 2) {
        if (i) {
            if (form.data[p] != '&') {
                abort();
            }

            p++;
        }

        fuzz_decode(form.data, &p, form.len, '=', out);
        if (strcmp(out, str[i]) != 0 || form.data[p] != '=') {
            abort();
        }

        p++;

        fuzz_decode(form.data, &p, form.len, '&', out);
        if (strcmp(out, str[i + 1]) != 0) {
            abort();
        }
    }

    if (p != form.len) {
        abort();
    }

    free(out);
    ngx_http_invoices_form_free(&form);
    free(copy);

    return 0;
}
