
/*
 * libFuzzer target: the body of an action (POST .../{id}/{action}).  The
 * first byte chooses the action (odd: pay, which takes paymentMethod;
 * even: any other, which takes no key); the rest is the body.  An
 * accepted body gives a payment method only for pay, and only a Stripe
 * payment method id; a refused one names a code and a message.
 */


#include "ngx_http_invoices_parse.h"

#include <stdlib.h>
#include <string.h>


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    u_char                       *body;
    size_t                        len;
    ngx_uint_t                    pay;
    ngx_int_t                     rc;
    char                          pm[256];
    ngx_http_invoices_invalid_t   invalid;

    if (size == 0) {
        return 0;
    }

    pay = data[0] & 1;
    len = size - 1;

    /* a copy of its own size: reads past the body are ASan's to catch */

    body = malloc(len ? len : 1);
    if (body == NULL) {
        return 0;
    }

    memcpy(body, data + 1, len);
    memset(pm, 'x', sizeof(pm));
    memset(&invalid, 0, sizeof(invalid));

    rc = ngx_http_invoices_parse_action(body, len, pay, pm, sizeof(pm),
                                        &invalid);

    if (rc == NGX_OK) {
        if (memchr(pm, '\0', sizeof(pm)) == NULL) {
            abort();
        }

        if (pm[0] != '\0'
            && (!pay
                || !(ngx_http_invoices_stripe_id((u_char *) pm, strlen(pm),
                                                 "pm_")
                     || ngx_http_invoices_stripe_id((u_char *) pm,
                                                    strlen(pm), "card_")
                     || ngx_http_invoices_stripe_id((u_char *) pm,
                                                    strlen(pm), "src_"))))
        {
            abort();
        }

    } else if (rc != NGX_ERROR || invalid.code == NULL
               || invalid.message == NULL || invalid.message[0] == '\0')
    {
        abort();
    }

    free(body);

    return 0;
}
