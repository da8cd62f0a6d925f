
/*
 * libFuzzer target: the Stripe-Signature header parser and checker.
 *
 * Input: a flags byte, then the header, a NUL, the body.  With flag 1 the
 * harness appends ",t=NOW,v1=<the right HMAC>" (or with flag 2 the HMAC
 * under the second secret) so that the accepting path is reached too.
 * Whatever the header, an accepted one must hold, for one of its t=
 * values, the right HMAC of that t and the body.
 */


#include "ngx_http_invoices_parse.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>


#define FUZZ_NOW        1700000000
#define FUZZ_TOLERANCE  300


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);


static ngx_str_t  fuzz_secrets[] = {
    ngx_string("whsec_fuzz_first_secret"),
    ngx_string("whsec_fuzz_second")
};


/* is there a "t=" value in the header whose HMAC is in the header too? */

static int
fuzz_signed(ngx_str_t *header, ngx_str_t *body)
{
    u_char      *p, *end, *v;
    ngx_str_t    t;
    ngx_uint_t   i;
    u_char       hex[64];

    end = header->data + header->len;

    for (p = header->data; p + 2 <= end; p++) {
        if (p[0] != 't' || p[1] != '=') {
            continue;
        }

        t.data = p + 2;

        for (v = t.data; v < end && *v != ','; v++) { /* void */ }

        t.len = v - t.data;

        for (i = 0; i < 2; i++) {
            if (ngx_http_invoices_hmac_hex(&fuzz_secrets[i], &t, body, hex)
                != NGX_OK)
            {
                abort();
            }

            if (memmem(header->data, header->len, hex, sizeof(hex))) {
                return 1;
            }
        }
    }

    return 0;
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    u_char       *header_data, *body_data, *nul, flags;
    size_t        hlen, blen;
    ngx_str_t     header, body, t;
    const char   *why;
    u_char        stamp[32], hex[64];

    if (size == 0) {
        return 0;
    }

    flags = data[0];
    data++;
    size--;

    nul = memchr(data, '\0', size);
    hlen = nul ? (size_t) (nul - data) : size;
    blen = nul ? size - hlen - 1 : 0;

    /* exact-size copies: ASan sees any read past either end */

    header_data = malloc(hlen + 128);           /* room for the appendix */
    body_data = malloc(blen ? blen : 1);

    if (header_data == NULL || body_data == NULL) {
        free(header_data);
        free(body_data);
        return 0;
    }

    memcpy(header_data, data, hlen);
    memcpy(body_data, data + hlen + 1 - !nul, blen);

    body.data = body_data;
    body.len = blen;

    if (flags & 3) {
        t.data = stamp;
        t.len = snprintf((char *) stamp, sizeof(stamp), "%ld",
                         (long) FUZZ_NOW - (flags >> 4));

        if (ngx_http_invoices_hmac_hex(&fuzz_secrets[(flags & 2) >> 1], &t,
                                       &body, hex)
            != NGX_OK)
        {
            abort();
        }

        hlen += snprintf((char *) header_data + hlen, 128, ",t=%.*s,v1=%.*s",
                         (int) t.len, (char *) t.data, 64, (char *) hex);
    }

    /* down to the exact size, so that overreads show */
    header_data = realloc(header_data, hlen ? hlen : 1);
    if (header_data == NULL) {
        abort();
    }

    header.data = header_data;
    header.len = hlen;

    why = ngx_http_invoices_parse_signature(&header, &body, fuzz_secrets, 2,
                                            FUZZ_NOW, FUZZ_TOLERANCE);

    if (why == NULL && !fuzz_signed(&header, &body)) {
        abort();
    }

    free(header_data);
    free(body_data);

    return 0;
}
