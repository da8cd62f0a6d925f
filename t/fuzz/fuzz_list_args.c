
/*
 * libFuzzer target: the list query string (page, limit, the filters,
 * the cursors, format).  The input is
 * the query string, not NUL-ended, so ASan sees any read past its end.
 */


#include "ngx_http_invoices_parse.h"

#include <stdlib.h>
#include <string.h>


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    u_char                          *copy;
    size_t                           i;
    ngx_str_t                        args;
    ngx_uint_t                       r;
    ngx_http_invoices_invalid_t      invalid;
    ngx_http_invoices_list_query_t   q;

    copy = malloc(size ? size : 1);
    if (copy == NULL) {
        return 0;
    }

    memcpy(copy, data, size);

    args.data = copy;
    args.len = size;

    if (ngx_http_invoices_parse_list_query(&args,
                                           NGX_HTTP_INVOICES_ARGS_PAGING
                                           |NGX_HTTP_INVOICES_ARGS_FORMAT,
                                           &q, &invalid)
        == NGX_OK)
    {
        if (q.page < 1 || q.page > NGX_HTTP_INVOICES_PAGE_MAX
            || q.limit < 1 || q.limit > NGX_HTTP_INVOICES_LIMIT_MAX
            || q.statuses > 0x1f
            || memchr(q.team, '\0', sizeof(q.team)) == NULL
            || memchr(q.customer, '\0', sizeof(q.customer)) == NULL
            || memchr(q.currency, '\0', sizeof(q.currency)) == NULL
            || memchr(q.q, '\0', sizeof(q.q)) == NULL
            || memchr(q.cursor, '\0', sizeof(q.cursor)) == NULL
            || (q.team[0] && strlen(q.team) != 24)
            || (q.currency[0] && strlen(q.currency) != 3)
            || (q.cursor[0] && q.page > 1)
            || q.format > NGX_HTTP_INVOICES_FORMAT_NDJSON)
        {
            abort();
        }

        /* q: no control characters reach the database */
        for (i = 0; q.q[i]; i++) {
            if ((u_char) q.q[i] < 0x20 || q.q[i] == 0x7f) {
                abort();
            }
        }

        for (r = 0; r < NGX_HTTP_INVOICES_RANGES; r++) {
            if ((q.has_lower[r] | q.has_upper[r]) > 1) {
                abort();
            }
        }

    } else {
        /* an error names a printable parameter, or none */
        if (invalid.code == NULL || invalid.message == NULL
            || memchr(invalid.param, '\0', sizeof(invalid.param)) == NULL)
        {
            abort();
        }

        for (i = 0; invalid.param[i]; i++) {
            if ((u_char) invalid.param[i] < 0x20
                || (u_char) invalid.param[i] >= 0x7f)
            {
                abort();
            }
        }
    }

    /* the input is never changed */
    if (memcmp(copy, data, size) != 0) {
        abort();
    }

    free(copy);

    return 0;
}
