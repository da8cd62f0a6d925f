
/*
 * libFuzzer target: the create body parser and validator.  An accepted
 * body must satisfy every rule the Stripe sequence relies on.
 */


#include "ngx_http_invoices_parse.h"

#include <stdlib.h>
#include <string.h>


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);


static int
fuzz_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}


static void
fuzz_check(json_t *req)
{
    size_t       i, n, len;
    json_t      *items, *item, *v;
    const char  *s;

    if (!json_is_object(req)) {
        abort();
    }

    items = json_object_get(req, "items");
    n = json_array_size(items);

    if (!json_is_array(items) || n < 1 || n > NGX_HTTP_INVOICES_ITEMS_MAX) {
        abort();
    }

    json_array_foreach(items, i, item) {
        v = json_object_get(item, "name");
        s = json_string_value(v);
        len = json_string_length(v);

        if (s == NULL || len == 0 || len > NGX_HTTP_INVOICES_TEXT_MAX
            || fuzz_space(s[0]) || fuzz_space(s[len - 1]))
        {
            abort();
        }

        v = json_object_get(item, "amount");

        if (!json_is_integer(v) || json_integer_value(v) < 1
            || json_integer_value(v) > NGX_HTTP_INVOICES_AMOUNT_MAX)
        {
            abort();
        }
    }

    s = json_string_value(json_object_get(req, "customer"));

    if (s == NULL || strncmp(s, "cus_", 4) != 0 || strlen(s) > 255) {
        abort();
    }

    v = json_object_get(req, "currency");

    if (v != NULL && !json_is_null(v)) {
        s = json_string_value(v);

        if (s == NULL || strlen(s) != 3
            || strspn(s, "abcdefghijklmnopqrstuvwxyz") != 3)
        {
            abort();
        }
    }
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    u_char                       *copy;
    json_t                       *req;
    ngx_http_invoices_invalid_t   invalid;

    copy = malloc(size ? size : 1);
    if (copy == NULL) {
        return 0;
    }

    memcpy(copy, data, size);

    req = ngx_http_invoices_parse_create(copy, size, &invalid);

    if (req) {
        fuzz_check(req);
        json_decref(req);

    } else if (invalid.code == NULL || invalid.message == NULL
               || strlen(invalid.param) >= sizeof(invalid.param))
    {
        abort();
    }

    free(copy);

    return 0;
}
