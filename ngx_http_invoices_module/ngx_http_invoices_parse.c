
/*
 * The parsers of untrusted input, on plain buffers: the list query string,
 * the create body, the Stripe-Signature header, and the form encoder of
 * Stripe requests.  Nothing here touches a request, a pool or a log, so
 * the same code runs in nginx, in pool threads and under t/fuzz/.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "ngx_http_invoices_parse.h"


static ngx_int_t ngx_http_invoices_parse_int(ngx_str_t *value, ngx_int_t max,
    ngx_int_t *out);
static void ngx_http_invoices_utf8_cut(char *s);
static void ngx_http_invoices_invalid(ngx_http_invoices_invalid_t *invalid,
    const char *code, const char *message, const char *param);
static void ngx_http_invoices_form_escape(ngx_http_invoices_form_t *form,
    const char *s);


/*
 * "page" and "limit" of a list query (other arguments are ignored): each
 * at most once, an integer from 1 to its maximum; absent, 1 and 10.
 */

ngx_int_t
ngx_http_invoices_parse_list_args(ngx_str_t *args, ngx_int_t *page,
    ngx_int_t *limit, ngx_http_invoices_invalid_t *invalid)
{
    u_char      *p, *end, *name, *name_end, *next;
    ngx_str_t    value, page_value, limit_value;
    ngx_uint_t   have_page, have_limit;

    have_page = 0;
    have_limit = 0;
    ngx_str_null(&page_value);
    ngx_str_null(&limit_value);

    p = args->data;
    end = p + args->len;

    for (name = p; name < end; name = next + 1) {
        next = ngx_strlchr(name, end, '&');
        if (next == NULL) {
            next = end;
        }

        name_end = ngx_strlchr(name, next, '=');

        if (name_end == NULL) {
            name_end = next;
            value.data = next;

        } else {
            value.data = name_end + 1;
        }

        value.len = next - value.data;

        if (name_end - name == 4 && ngx_strncmp(name, "page", 4) == 0) {
            if (have_page++) {
                ngx_http_invoices_invalid(invalid, "parameter_invalid",
                    "page must be given at most once", "page");
                return NGX_ERROR;
            }

            page_value = value;

        } else if (name_end - name == 5
                   && ngx_strncmp(name, "limit", 5) == 0)
        {
            if (have_limit++) {
                ngx_http_invoices_invalid(invalid, "parameter_invalid",
                    "limit must be given at most once", "limit");
                return NGX_ERROR;
            }

            limit_value = value;
        }

        if (next == end) {
            break;
        }
    }

    *page = 1;
    *limit = NGX_HTTP_INVOICES_LIMIT_DEF;

    if (have_page
        && ngx_http_invoices_parse_int(&page_value,
                                       NGX_HTTP_INVOICES_PAGE_MAX, page)
           != NGX_OK)
    {
        ngx_http_invoices_invalid(invalid, "parameter_invalid",
            "page must be an integer from 1 to 2147483647", "page");
        return NGX_ERROR;
    }

    if (have_limit
        && ngx_http_invoices_parse_int(&limit_value,
                                       NGX_HTTP_INVOICES_LIMIT_MAX, limit)
           != NGX_OK)
    {
        ngx_http_invoices_invalid(invalid, "parameter_invalid",
            "limit must be an integer from 1 to 100", "limit");
        return NGX_ERROR;
    }

    return NGX_OK;
}


/* an integer from 1 to max, decimal digits only, percent-encoding allowed */

static ngx_int_t
ngx_http_invoices_parse_int(ngx_str_t *value, ngx_int_t max, ngx_int_t *out)
{
    u_char     *src, *dst, *p;
    ngx_int_t   n;
    u_char      buf[32];

    if (value->len == 0 || value->len >= sizeof(buf)) {
        return NGX_ERROR;
    }

    src = value->data;
    dst = buf;
    ngx_unescape_uri(&dst, &src, value->len, 0);

    if (dst == buf) {
        return NGX_ERROR;
    }

    for (p = buf; p < dst; p++) {
        if (*p < '0' || *p > '9') {
            return NGX_ERROR;
        }
    }

    n = ngx_atoi(buf, dst - buf);

    if (n < 1 || n > max) {
        return NGX_ERROR;
    }

    *out = n;

    return NGX_OK;
}


/*
 * The create body, checked against every rule of docs/openapi.yaml: the request
 * object (names trimmed, currency lowercased; the caller decrefs it), or
 * NULL and the first failure, with the parameter named as Stripe would
 * ("items[2][amount]").
 */

json_t *
ngx_http_invoices_parse_create(u_char *body, size_t len,
    ngx_http_invoices_invalid_t *invalid)
{
    size_t         i, n;
    json_t        *req, *items, *item, *v;
    char           param[64];
    const char    *key, *s;
    json_int_t     amount;
    json_error_t   err;

    if (len == 0) {
        ngx_http_invoices_invalid(invalid, "body_invalid",
                                  "the body must be a JSON object", NULL);
        return NULL;
    }

    req = json_loadb((const char *) body, len, JSON_REJECT_DUPLICATES, &err);

    if (req == NULL || !json_is_object(req)) {
        ngx_http_invoices_invalid(invalid, "body_invalid",
                                  req ? "the body must be a JSON object"
                                      : "the body is not valid JSON "
                                        "(UTF-8, no duplicate keys, "
                                        "no \\u0000)",
                                  NULL);
        goto invalid;
    }

    json_object_foreach(req, key, v) {
        if (ngx_strcmp(key, "items") != 0
            && ngx_strcmp(key, "customer") != 0
            && ngx_strcmp(key, "paymentMethod") != 0
            && ngx_strcmp(key, "currency") != 0
            && ngx_strcmp(key, "description") != 0)
        {
            ngx_http_invoices_invalid(invalid, "parameter_unknown",
                "unknown parameter: the body takes items, customer, "
                "paymentMethod, currency and description", key);
            goto invalid;
        }
    }

    items = json_object_get(req, "items");
    n = json_array_size(items);

    if (!json_is_array(items) || n < 1 || n > NGX_HTTP_INVOICES_ITEMS_MAX) {
        ngx_http_invoices_invalid(invalid,
            items ? "parameter_invalid" : "parameter_missing",
            "items must be an array of 1 to 250 line items", "items");
        goto invalid;
    }

    json_array_foreach(items, i, item) {

        if (!json_is_object(item)) {
            *ngx_snprintf((u_char *) param, sizeof(param) - 1, "items[%uz]",
                          i) = '\0';
            ngx_http_invoices_invalid(invalid, "parameter_invalid",
                "each item must be an object with name and amount", param);
            goto invalid;
        }

        json_object_foreach(item, key, v) {
            if (ngx_strcmp(key, "name") != 0
                && ngx_strcmp(key, "amount") != 0)
            {
                *ngx_snprintf((u_char *) param, sizeof(param) - 1,
                              "items[%uz][%s]", i, key) = '\0';
                ngx_http_invoices_invalid(invalid, "parameter_unknown",
                    "unknown item parameter: an item takes name and amount",
                    param);
                goto invalid;
            }
        }

        v = json_object_get(item, "name");
        s = json_string_value(v);

        /* trimmed: the new string is made before the old one is freed */

        if (s != NULL) {
            size_t  e = json_string_length(v), b = 0;

            while (b < e && (s[b] == ' ' || s[b] == '\t'
                             || s[b] == '\n' || s[b] == '\r'))
            {
                b++;
            }

            while (e > b && (s[e - 1] == ' ' || s[e - 1] == '\t'
                             || s[e - 1] == '\n' || s[e - 1] == '\r'))
            {
                e--;
            }

            if (e > b && e - b <= NGX_HTTP_INVOICES_TEXT_MAX) {
                json_object_set_new(item, "name", json_stringn(s + b, e - b));
                s = json_string_value(json_object_get(item, "name"));

            } else {
                s = NULL;
            }
        }

        if (s == NULL) {
            *ngx_snprintf((u_char *) param, sizeof(param) - 1,
                          "items[%uz][name]", i) = '\0';
            ngx_http_invoices_invalid(invalid,
                v ? "parameter_invalid" : "parameter_missing",
                "an item's name must be a non-empty string of at most 500 "
                "bytes", param);
            goto invalid;
        }

        v = json_object_get(item, "amount");
        amount = json_integer_value(v);

        if (!json_is_integer(v) || amount < 1
            || amount > NGX_HTTP_INVOICES_AMOUNT_MAX)
        {
            *ngx_snprintf((u_char *) param, sizeof(param) - 1,
                          "items[%uz][amount]", i) = '\0';
            ngx_http_invoices_invalid(invalid,
                v ? "parameter_invalid" : "parameter_missing",
                "an item's amount must be an integer from 1 to 99999999 "
                "(the currency's smallest unit)", param);
            goto invalid;
        }
    }

    v = json_object_get(req, "customer");
    s = json_string_value(v);

    if (s == NULL
        || !ngx_http_invoices_stripe_id((u_char *) s, json_string_length(v),
                                        "cus_"))
    {
        ngx_http_invoices_invalid(invalid,
            v ? "parameter_invalid" : "parameter_missing",
            "customer must be a Stripe customer id (cus_...)", "customer");
        goto invalid;
    }

    v = json_object_get(req, "paymentMethod");
    s = json_string_value(v);

    if (v != NULL && !json_is_null(v)
        && (s == NULL
            || !(ngx_http_invoices_stripe_id((u_char *) s,
                                             json_string_length(v), "pm_")
                 || ngx_http_invoices_stripe_id((u_char *) s,
                                                json_string_length(v), "card_")
                 || ngx_http_invoices_stripe_id((u_char *) s,
                                                json_string_length(v),
                                                "src_"))))
    {
        ngx_http_invoices_invalid(invalid, "parameter_invalid",
            "paymentMethod must be a Stripe payment method id (pm_...)",
            "paymentMethod");
        goto invalid;
    }

    v = json_object_get(req, "currency");
    s = json_string_value(v);

    if (v != NULL && !json_is_null(v)) {
        char  lower[4];

        if (s == NULL || json_string_length(v) != 3
            || s[strspn(s, "abcdefghijklmnopqrstuvwxyz"
                           "ABCDEFGHIJKLMNOPQRSTUVWXYZ")] != '\0')
        {
            ngx_http_invoices_invalid(invalid, "parameter_invalid",
                "currency must be a three-letter ISO code such as \"eur\"",
                "currency");
            goto invalid;
        }

        for (i = 0; i < 3; i++) {
            lower[i] = ngx_tolower(s[i]);
        }

        lower[3] = '\0';
        json_object_set_new(req, "currency", json_string(lower));
    }

    v = json_object_get(req, "description");

    if (v != NULL && !json_is_null(v)
        && (!json_is_string(v)
            || json_string_length(v) > NGX_HTTP_INVOICES_TEXT_MAX
            || ngx_strlen(json_string_value(v)) != json_string_length(v)))
    {
        ngx_http_invoices_invalid(invalid, "parameter_invalid",
            "description must be a string of at most 500 bytes",
            "description");
        goto invalid;
    }

    return req;

invalid:

    json_decref(req);
    return NULL;
}


/*
 * A Stripe-Signature header ("t=1700000000,v1=hex,v1=hex,v0=hex": other
 * schemes are ignored) checked against the raw body: NULL when a v1 is
 * HMAC-SHA256(secret, t "." body) for one of the secrets, compared in
 * constant time, and |now - t| <= tolerance; else why not (no secret in
 * it, for the log).
 */

const char *
ngx_http_invoices_parse_signature(ngx_str_t *header, ngx_str_t *body,
    ngx_str_t *secrets, ngx_uint_t nsecrets, time_t now, time_t tolerance)
{
    u_char      *p, *end, *item, *eq, *next;
    time_t       t;
    ngx_str_t    ts, v1[NGX_HTTP_INVOICES_V1_MAX];
    ngx_uint_t   i, j, nv1;
    u_char       expected[64];

    ngx_str_null(&ts);
    nv1 = 0;
    p = header->data;
    end = p + header->len;

    for (item = p; item < end; item = next + 1) {
        next = ngx_strlchr(item, end, ',');
        if (next == NULL) {
            next = end;
        }

        while (item < next && *item == ' ') {
            item++;
        }

        eq = ngx_strlchr(item, next, '=');

        if (eq != NULL) {
            if (eq - item == 1 && item[0] == 't' && ts.data == NULL) {
                ts.data = eq + 1;
                ts.len = next - ts.data;

            } else if (eq - item == 2 && item[0] == 'v' && item[1] == '1'
                       && nv1 < NGX_HTTP_INVOICES_V1_MAX)
            {
                v1[nv1].data = eq + 1;
                v1[nv1].len = next - v1[nv1].data;
                nv1++;
            }
        }

        if (next == end) {
            break;
        }
    }

    if (ts.data == NULL) {
        return "no timestamp in Stripe-Signature";
    }

    if (nv1 == 0) {
        return "no v1 signature in Stripe-Signature";
    }

    t = ngx_atotm(ts.data, ts.len);
    if (t == NGX_ERROR) {
        return "the Stripe-Signature timestamp is not a number";
    }

    /* t >= 0 and now, tolerance sane: no overflow either way */

    if (t < now - tolerance || t - now > tolerance) {
        return "the Stripe-Signature timestamp is outside the tolerance";
    }

    for (i = 0; i < nsecrets; i++) {

        if (ngx_http_invoices_hmac_hex(&secrets[i], &ts, body, expected)
            != NGX_OK)
        {
            return "the signature could not be computed";
        }

        for (j = 0; j < nv1; j++) {
            if (v1[j].len == sizeof(expected)
                && CRYPTO_memcmp(v1[j].data, expected, sizeof(expected)) == 0)
            {
                return NULL;
            }
        }
    }

    return "no v1 signature matches";
}


/* lowercase hex of HMAC-SHA256(secret, t "." body) */

ngx_int_t
ngx_http_invoices_hmac_hex(ngx_str_t *secret, ngx_str_t *t, ngx_str_t *body,
    u_char *hex)
{
    size_t         len;
    EVP_MAC       *mac;
    ngx_int_t      rc;
    OSSL_PARAM     params[2];
    EVP_MAC_CTX   *ctx;
    u_char         digest[32];

    rc = NGX_ERROR;
    mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    ctx = mac ? EVP_MAC_CTX_new(mac) : NULL;

    params[0] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST,
                                                 (char *) "SHA256", 0);
    params[1] = OSSL_PARAM_construct_end();

    if (ctx
        && EVP_MAC_init(ctx, secret->data, secret->len, params) == 1
        && EVP_MAC_update(ctx, t->data, t->len) == 1
        && EVP_MAC_update(ctx, (u_char *) ".", 1) == 1
        && EVP_MAC_update(ctx, body->data, body->len) == 1
        && EVP_MAC_final(ctx, digest, &len, sizeof(digest)) == 1
        && len == sizeof(digest))
    {
        ngx_hex_dump(hex, digest, sizeof(digest));
        rc = NGX_OK;
    }

    EVP_MAC_CTX_free(ctx);
    EVP_MAC_free(mac);

    return rc;
}


/*
 * application/x-www-form-urlencoded, keys too (Stripe's bracketed keys
 * become %5B..%5D); every byte but the unreserved ones is escaped.
 */

void
ngx_http_invoices_form_add(ngx_http_invoices_form_t *form, const char *key,
    const char *value)
{
    if (form->failed) {
        return;
    }

    if (form->len) {
        ngx_http_invoices_form_escape(form, "");
        if (form->failed) {
            return;
        }

        form->data[form->len++] = '&';
    }

    ngx_http_invoices_form_escape(form, key);
    if (form->failed) {
        return;
    }

    form->data[form->len++] = '=';
    ngx_http_invoices_form_escape(form, value);
}


void
ngx_http_invoices_form_free(ngx_http_invoices_form_t *form)
{
    free(form->data);
    ngx_memzero(form, sizeof(ngx_http_invoices_form_t));
}


/* appends s escaped, NUL-ended, with room for one more byte after it */

static void
ngx_http_invoices_form_escape(ngx_http_invoices_form_t *form, const char *s)
{
    char        *p;
    size_t       need;
    const char  *c;

    static const char  hex[] = "0123456789ABCDEF";

    need = form->len + 3 * ngx_strlen(s) + 2;

    if (need > form->size) {
        p = realloc(form->data, need * 2);
        if (p == NULL) {
            form->failed = 1;
            return;
        }

        form->data = p;
        form->size = need * 2;
    }

    for (c = s; *c; c++) {
        if ((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z')
            || (*c >= '0' && *c <= '9')
            || *c == '-' || *c == '.' || *c == '_' || *c == '~')
        {
            form->data[form->len++] = *c;

        } else {
            form->data[form->len++] = '%';
            form->data[form->len++] = hex[(u_char) *c >> 4];
            form->data[form->len++] = hex[(u_char) *c & 0xf];
        }
    }

    form->data[form->len] = '\0';
}


static void
ngx_http_invoices_invalid(ngx_http_invoices_invalid_t *invalid,
    const char *code, const char *message, const char *param)
{
    invalid->code = code;
    invalid->message = message;

    if (param) {
        ngx_cpystrn((u_char *) invalid->param, (u_char *) param,
                    sizeof(invalid->param));
        ngx_http_invoices_utf8_cut(invalid->param);
        invalid->has_param = 1;

    } else {
        invalid->param[0] = '\0';
        invalid->has_param = 0;
    }
}


/*
 * A parameter name cut to fit its buffer may end inside a UTF-8 sequence
 * (the body's keys are valid UTF-8, jansson checked them); jansson would
 * then refuse the string and the error would lose its "param".  Drop the
 * partial character.
 */

static void
ngx_http_invoices_utf8_cut(char *s)
{
    u_char  *p, *last;
    size_t   len, need;

    len = ngx_strlen(s);
    if (len == 0) {
        return;
    }

    p = (u_char *) s;
    last = p + len - 1;

    while (last > p && (*last & 0xc0) == 0x80) {
        last--;
    }

    need = (*last < 0x80) ? 1
           : ((*last & 0xe0) == 0xc0) ? 2
           : ((*last & 0xf0) == 0xe0) ? 3
           : ((*last & 0xf8) == 0xf0) ? 4 : 0;

    if ((size_t) (p + len - last) != need) {
        *last = '\0';
    }
}


/* the one check of a Stripe object id (NGX_HTTP_INVOICES_ID_MAX) */

ngx_uint_t
ngx_http_invoices_stripe_id(const u_char *id, size_t len, const char *prefix)
{
    size_t  i, n;

    n = ngx_strlen(prefix);

    if (id == NULL || len <= n || len > NGX_HTTP_INVOICES_ID_MAX
        || ngx_strncmp(id, prefix, n) != 0)
    {
        return 0;
    }

    for (i = n; i < len; i++) {
        if (!((id[i] >= 'a' && id[i] <= 'z') || (id[i] >= 'A' && id[i] <= 'Z')
              || (id[i] >= '0' && id[i] <= '9') || id[i] == '_'))
        {
            return 0;
        }
    }

    return 1;
}


/* a Unix time PostgreSQL's to_timestamp() keeps: 0 to 9999-12-31 */

ngx_uint_t
ngx_http_invoices_stripe_time(int64_t t)
{
    return t >= 0 && t <= NGX_HTTP_INVOICES_TIME_MAX;
}
