
/*
 * libFuzzer target: the list query string (page, limit).  The input is
 * the query string, not NUL-ended, so ASan sees any read past its end.
 */


#include "ngx_http_invoices_parse.h"

#include <stdlib.h>
#include <string.h>


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    u_char                       *copy;
    ngx_int_t                     page, limit;
    ngx_str_t                     args;
    ngx_http_invoices_invalid_t   invalid;

    copy = malloc(size ? size : 1);
    if (copy == NULL) {
        return 0;
    }

    memcpy(copy, data, size);

    args.data = copy;
    args.len = size;

    if (ngx_http_invoices_parse_list_args(&args, &page, &limit, &invalid)
        == NGX_OK)
    {
        if (page < 1 || page > NGX_HTTP_INVOICES_PAGE_MAX
            || limit < 1 || limit > NGX_HTTP_INVOICES_LIMIT_MAX)
        {
            abort();
        }

    } else {
        if (invalid.code == NULL || invalid.message == NULL
            || (strcmp(invalid.param, "page") != 0
                && strcmp(invalid.param, "limit") != 0))
        {
            abort();
        }
    }

    /* the input is never changed */
    if (memcmp(copy, data, size) != 0) {
        abort();
    }

    free(copy);

    return 0;
}
