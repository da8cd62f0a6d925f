
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


/* a body json_loadb() refused */
#define NGX_HTTP_INVOICES_NOT_JSON                                            \
    "the body is not valid JSON (UTF-8, no duplicate keys, no \\u0000)"


static ngx_int_t ngx_http_invoices_parse_int(ngx_str_t *value, ngx_int_t max,
    ngx_int_t *out);
static ngx_int_t ngx_http_invoices_list_arg(ngx_uint_t i, ngx_str_t *raw,
    ngx_http_invoices_list_query_t *query, int64_t *bound);
static ngx_int_t ngx_http_invoices_parse_int64(u_char *p, size_t len,
    int64_t *out);
static ngx_int_t ngx_http_invoices_parse_time(u_char *p, size_t len,
    int64_t *ms);
static int64_t ngx_http_invoices_digits(u_char *p, ngx_uint_t n);
static ngx_uint_t ngx_http_invoices_utf8_text(u_char *p, size_t len);
static void ngx_http_invoices_utf8_cut(char *s);
static ngx_uint_t ngx_http_invoices_payment_method(json_t *v);
static void ngx_http_invoices_invalid(ngx_http_invoices_invalid_t *invalid,
    const char *code, const char *message, const char *param);
static void ngx_http_invoices_form_escape(ngx_http_invoices_form_t *form,
    const char *s);


const char  *ngx_http_invoices_statuses[] = {
    "draft", "open", "paid", "uncollectible", "void", NULL
};


/*
 * The parameters of the list's routes, in the order their checks run;
 * "takes" is the route flag that admits one (0: every route).  The
 * ranges come in groups of four: gte, gt, lte, lt.
 */

#define NGX_HTTP_INVOICES_ARG_PAGE       0
#define NGX_HTTP_INVOICES_ARG_LIMIT      1
#define NGX_HTTP_INVOICES_ARG_AFTER      2
#define NGX_HTTP_INVOICES_ARG_BEFORE     3
#define NGX_HTTP_INVOICES_ARG_FORMAT     4
#define NGX_HTTP_INVOICES_ARG_STATUS     5
#define NGX_HTTP_INVOICES_ARG_TEAM       6
#define NGX_HTTP_INVOICES_ARG_CUSTOMER   7
#define NGX_HTTP_INVOICES_ARG_CURRENCY   8
#define NGX_HTTP_INVOICES_ARG_Q          9
#define NGX_HTTP_INVOICES_ARG_RANGES     10
#define NGX_HTTP_INVOICES_ARGS           22

typedef struct {
    const char  *name;
    ngx_uint_t   takes;
    const char  *invalid;
} ngx_http_invoices_arg_t;

static ngx_http_invoices_arg_t  ngx_http_invoices_list_args[] = {
    { "page", NGX_HTTP_INVOICES_ARGS_PAGING,
      "page must be an integer from 1 to 2147483647" },
    { "limit", NGX_HTTP_INVOICES_ARGS_PAGING,
      "limit must be an integer from 1 to 100" },
    { "starting_after", NGX_HTTP_INVOICES_ARGS_PAGING,
      "starting_after must be an invoice _id or a Stripe invoice id" },
    { "ending_before", NGX_HTTP_INVOICES_ARGS_PAGING,
      "ending_before must be an invoice _id or a Stripe invoice id" },
    { "format", NGX_HTTP_INVOICES_ARGS_FORMAT,
      "format must be csv or ndjson" },
    { "status", 0,
      "status must be a comma-separated list of draft, open, paid, "
      "uncollectible and void" },
    { "team", 0, "team must be a team _id (24 lowercase hex digits)" },
    { "customer", 0, "customer must be a Stripe customer id (cus_...)" },
    { "currency", 0, "currency must be three lowercase letters" },
    { "q", 0,
      "q must be 1 to 100 characters of UTF-8 text, without control "
      "characters" },
    { "created[gte]", 0, "created[gte] must be Unix seconds or "
                         "an ISO 8601 UTC time (2026-11-01T00:00:00Z)" },
    { "created[gt]", 0, "created[gt] must be Unix seconds or "
                        "an ISO 8601 UTC time (2026-11-01T00:00:00Z)" },
    { "created[lte]", 0, "created[lte] must be Unix seconds or "
                         "an ISO 8601 UTC time (2026-11-01T00:00:00Z)" },
    { "created[lt]", 0, "created[lt] must be Unix seconds or "
                        "an ISO 8601 UTC time (2026-11-01T00:00:00Z)" },
    { "amount[gte]", 0, "amount[gte] must be an integer" },
    { "amount[gt]", 0, "amount[gt] must be an integer" },
    { "amount[lte]", 0, "amount[lte] must be an integer" },
    { "amount[lt]", 0, "amount[lt] must be an integer" },
    { "dueDate[gte]", 0, "dueDate[gte] must be Unix seconds or "
                         "an ISO 8601 UTC time (2026-11-01T00:00:00Z)" },
    { "dueDate[gt]", 0, "dueDate[gt] must be Unix seconds or "
                        "an ISO 8601 UTC time (2026-11-01T00:00:00Z)" },
    { "dueDate[lte]", 0, "dueDate[lte] must be Unix seconds or "
                         "an ISO 8601 UTC time (2026-11-01T00:00:00Z)" },
    { "dueDate[lt]", 0, "dueDate[lt] must be Unix seconds or "
                        "an ISO 8601 UTC time (2026-11-01T00:00:00Z)" },
    { NULL, 0, NULL }
};


/*
 * A list query string (docs/openapi.yaml, "Finding invoices"): every
 * parameter known to this route ("takes"), each at most once, each
 * value checked; an unknown name is an error too, so that a typo never
 * lists everything.  Names and values may be percent-encoded; in q a "+"
 * is a space, as HTML forms send it.
 */

ngx_int_t
ngx_http_invoices_parse_list_query(ngx_str_t *args, ngx_uint_t takes,
    ngx_http_invoices_list_query_t *query,
    ngx_http_invoices_invalid_t *invalid)
{
    u_char                   *p, *end, *name, *name_end, *next, *dst, *src;
    size_t                    len;
    int64_t                   v, bound[NGX_HTTP_INVOICES_ARGS];
    uint32_t                  seen;
    ngx_str_t                 value, values[NGX_HTTP_INVOICES_ARGS];
    ngx_uint_t                i, range, op;
    ngx_http_invoices_arg_t  *arg;
    u_char                    decoded[32], shown[64];

    ngx_memzero(query, sizeof(ngx_http_invoices_list_query_t));
    query->page = 1;
    query->limit = NGX_HTTP_INVOICES_LIMIT_DEF;

    seen = 0;

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

        if (name_end == name && next == name) {
            /* "a=1&&b=2", a trailing "&": nothing there */
            goto next;
        }

        len = 0;

        if ((size_t) (name_end - name) < sizeof(decoded)) {
            src = name;
            dst = decoded;
            ngx_unescape_uri(&dst, &src, name_end - name, 0);
            len = dst - decoded;
        }

        for (arg = ngx_http_invoices_list_args; arg->name; arg++) {
            if (ngx_strlen(arg->name) == len
                && ngx_strncmp(arg->name, decoded, len) == 0
                && (arg->takes == 0 || (arg->takes & takes)))
            {
                break;
            }
        }

        if (arg->name == NULL) {
            /* the name as given, printable, for "param" */
            for (i = 0; i < sizeof(shown) - 1
                        && name + i < name_end; i++)
            {
                shown[i] = (name[i] >= 0x20 && name[i] < 0x7f) ? name[i]
                                                               : '?';
            }

            shown[i] = '\0';

            ngx_http_invoices_invalid(invalid, "parameter_unknown",
                "unknown parameter",
                (char *) shown);
            return NGX_ERROR;
        }

        i = arg - ngx_http_invoices_list_args;

        if (seen & (1U << i)) {
            ngx_http_invoices_invalid(invalid, "parameter_invalid",
                "the parameter must be given at most once", arg->name);
            return NGX_ERROR;
        }

        seen |= 1U << i;
        values[i] = value;

    next:

        if (next == end) {
            break;
        }
    }

    for (i = 0; i < NGX_HTTP_INVOICES_ARGS; i++) {

        if (!(seen & (1U << i))) {
            continue;
        }

        arg = &ngx_http_invoices_list_args[i];

        if (ngx_http_invoices_list_arg(i, &values[i], query, &bound[i])
            != NGX_OK)
        {
            ngx_http_invoices_invalid(invalid, "parameter_invalid",
                                      arg->invalid, arg->name);
            return NGX_ERROR;
        }
    }

    /* the ranges: each bound given turned into ">= lower" or "< upper" */

    for (i = NGX_HTTP_INVOICES_ARG_RANGES; i < NGX_HTTP_INVOICES_ARGS; i++) {

        if (!(seen & (1U << i))) {
            continue;
        }

        range = (i - NGX_HTTP_INVOICES_ARG_RANGES) / 4;
        op = (i - NGX_HTTP_INVOICES_ARG_RANGES) % 4;
        v = bound[i];

        switch (op) {

        case 0:  /* gte */
        case 1:  /* gt */
            v += op;

            if (!query->has_lower[range] || v > query->lower[range]) {
                query->lower[range] = v;
            }

            query->has_lower[range] = 1;
            break;

        default: /* lte, lt */
            v += (op == 2);

            if (!query->has_upper[range] || v < query->upper[range]) {
                query->upper[range] = v;
            }

            query->has_upper[range] = 1;
            break;
        }
    }

    if ((seen & (1U << NGX_HTTP_INVOICES_ARG_AFTER))
        && (seen & (1U << NGX_HTTP_INVOICES_ARG_BEFORE)))
    {
        ngx_http_invoices_invalid(invalid, "parameter_invalid",
            "starting_after and ending_before cannot be combined",
            "ending_before");
        return NGX_ERROR;
    }

    if (query->cursor[0] && query->page > 1) {
        ngx_http_invoices_invalid(invalid, "parameter_invalid",
            "page cannot be combined with starting_after or ending_before",
            "page");
        return NGX_ERROR;
    }

    return NGX_OK;
}


/* does the query narrow the list (a cursor does not: it moves in it)? */

ngx_uint_t
ngx_http_invoices_list_filtered(ngx_http_invoices_list_query_t *query)
{
    ngx_uint_t  i;

    for (i = 0; i < NGX_HTTP_INVOICES_RANGES; i++) {
        if (query->has_lower[i] || query->has_upper[i]) {
            return 1;
        }
    }

    return query->statuses || query->team[0] || query->customer[0]
           || query->currency[0] || query->q[0];
}


/* one parameter's value into the query; NGX_ERROR: malformed */

static ngx_int_t
ngx_http_invoices_list_arg(ngx_uint_t i, ngx_str_t *raw,
    ngx_http_invoices_list_query_t *query, int64_t *bound)
{
    u_char      *p, *last, *dst, *src, *comma;
    size_t       len;
    ngx_uint_t   n, s, plus;
    u_char       buf[3 * 4 * NGX_HTTP_INVOICES_Q_MAX + 1];

    switch (i) {

    case NGX_HTTP_INVOICES_ARG_PAGE:
        return ngx_http_invoices_parse_int(raw, NGX_HTTP_INVOICES_PAGE_MAX,
                                           &query->page);

    case NGX_HTTP_INVOICES_ARG_LIMIT:
        return ngx_http_invoices_parse_int(raw, NGX_HTTP_INVOICES_LIMIT_MAX,
                                           &query->limit);

    default:
        break;
    }

    /* the value decoded into buf, NUL-ended */

    if (raw->len == 0 || raw->len >= sizeof(buf)) {
        return NGX_ERROR;
    }

    plus = (i == NGX_HTTP_INVOICES_ARG_Q);

    for (n = 0; n < raw->len; n++) {
        buf[n] = (plus && raw->data[n] == '+') ? ' ' : raw->data[n];
    }

    src = buf;
    dst = buf;
    ngx_unescape_uri(&dst, &src, raw->len, 0);
    len = dst - buf;
    buf[len] = '\0';

    if (len == 0 || ngx_strlen(buf) != len) {
        return NGX_ERROR;                /* empty, or a NUL inside */
    }

    switch (i) {

    case NGX_HTTP_INVOICES_ARG_AFTER:
    case NGX_HTTP_INVOICES_ARG_BEFORE:
        if (!ngx_http_invoices_object_id(buf, len)
            && !ngx_http_invoices_stripe_id(buf, len, "in_"))
        {
            return NGX_ERROR;
        }

        ngx_cpystrn((u_char *) query->cursor, buf, sizeof(query->cursor));
        query->before = (i == NGX_HTTP_INVOICES_ARG_BEFORE);
        return NGX_OK;

    case NGX_HTTP_INVOICES_ARG_FORMAT:
        if (len == 3 && ngx_strncmp(buf, "csv", 3) == 0) {
            query->format = NGX_HTTP_INVOICES_FORMAT_CSV;
            return NGX_OK;
        }

        if (len == 6 && ngx_strncmp(buf, "ndjson", 6) == 0) {
            query->format = NGX_HTTP_INVOICES_FORMAT_NDJSON;
            return NGX_OK;
        }

        return NGX_ERROR;

    case NGX_HTTP_INVOICES_ARG_STATUS:
        last = buf + len;

        for (p = buf; p <= last; p = comma + 1) {
            comma = ngx_strlchr(p, last, ',');
            if (comma == NULL) {
                comma = last;
            }

            for (s = 0; ngx_http_invoices_statuses[s]; s++) {
                if (ngx_strlen(ngx_http_invoices_statuses[s])
                    == (size_t) (comma - p)
                    && ngx_strncmp(ngx_http_invoices_statuses[s], p,
                                   comma - p)
                       == 0)
                {
                    break;
                }
            }

            if (ngx_http_invoices_statuses[s] == NULL) {
                return NGX_ERROR;        /* unknown, or an empty item */
            }

            query->statuses |= 1U << s;
        }

        return NGX_OK;

    case NGX_HTTP_INVOICES_ARG_TEAM:
        if (!ngx_http_invoices_object_id(buf, len)) {
            return NGX_ERROR;
        }

        ngx_cpystrn((u_char *) query->team, buf, sizeof(query->team));
        return NGX_OK;

    case NGX_HTTP_INVOICES_ARG_CUSTOMER:
        if (!ngx_http_invoices_stripe_id(buf, len, "cus_")) {
            return NGX_ERROR;
        }

        ngx_cpystrn((u_char *) query->customer, buf,
                    sizeof(query->customer));
        return NGX_OK;

    case NGX_HTTP_INVOICES_ARG_CURRENCY:
        if (len != 3) {
            return NGX_ERROR;
        }

        for (n = 0; n < 3; n++) {
            if (buf[n] < 'a' || buf[n] > 'z') {
                return NGX_ERROR;
            }
        }

        ngx_cpystrn((u_char *) query->currency, buf,
                    sizeof(query->currency));
        return NGX_OK;

    case NGX_HTTP_INVOICES_ARG_Q:
        n = ngx_http_invoices_utf8_text(buf, len);

        if (n == 0 || n > NGX_HTTP_INVOICES_Q_MAX
            || len >= sizeof(query->q))
        {
            return NGX_ERROR;
        }

        ngx_cpystrn((u_char *) query->q, buf, sizeof(query->q));
        return NGX_OK;

    default:
        /* a range bound; the caller turns it into the range */
        if ((i - NGX_HTTP_INVOICES_ARG_RANGES) / 4
            == NGX_HTTP_INVOICES_RANGE_AMOUNT)
        {
            return ngx_http_invoices_parse_int64(buf, len, bound);
        }

        return ngx_http_invoices_parse_time(buf, len, bound);
    }
}


/* an integer, optionally negative, of at most 15 digits (+1 never overflows) */

static ngx_int_t
ngx_http_invoices_parse_int64(u_char *p, size_t len, int64_t *out)
{
    size_t    i;
    int64_t   v;
    ngx_int_t sign;

    sign = 1;

    if (len && p[0] == '-') {
        sign = -1;
        p++;
        len--;
    }

    if (len == 0 || len > 15) {
        return NGX_ERROR;
    }

    v = 0;

    for (i = 0; i < len; i++) {
        if (p[i] < '0' || p[i] > '9') {
            return NGX_ERROR;
        }

        v = v * 10 + (p[i] - '0');
    }

    *out = sign * v;

    return NGX_OK;
}


/*
 * Unix seconds (digits only, up to 9999-12-31) or an ISO 8601 UTC time,
 * "YYYY-MM-DDTHH:MM:SS[.f{1,3}]Z" from 1970 on, into milliseconds.
 */

static ngx_int_t
ngx_http_invoices_parse_time(u_char *p, size_t len, int64_t *ms)
{
    size_t      i;
    int64_t     v, y, m, d, hh, mm, ss, frac, days, era, yoe, doy, doe;
    ngx_uint_t  digits;

    static const ngx_uint_t  mdays[] = { 31, 29, 31, 30, 31, 30, 31, 31, 30,
                                         31, 30, 31 };

    for (i = 0; i < len && p[i] >= '0' && p[i] <= '9'; i++) { /* void */ }

    if (i == len) {
        if (len > 12) {
            return NGX_ERROR;
        }

        v = 0;

        for (i = 0; i < len; i++) {
            v = v * 10 + (p[i] - '0');
        }

        if (!ngx_http_invoices_stripe_time(v)) {
            return NGX_ERROR;
        }

        *ms = v * 1000;
        return NGX_OK;
    }

    /* YYYY-MM-DDTHH:MM:SS is 19 bytes; then .f, .ff or .fff; then Z */

    if (len < 20 || p[4] != '-' || p[7] != '-' || p[10] != 'T'
        || p[13] != ':' || p[16] != ':' || p[len - 1] != 'Z')
    {
        return NGX_ERROR;
    }

    for (i = 0; i < 19; i++) {
        if (i == 4 || i == 7 || i == 10 || i == 13 || i == 16) {
            continue;
        }

        if (p[i] < '0' || p[i] > '9') {
            return NGX_ERROR;
        }
    }

#define num(a, n)  ngx_http_invoices_digits(p + (a), n)

    y = num(0, 4);
    m = num(5, 2);
    d = num(8, 2);
    hh = num(11, 2);
    mm = num(14, 2);
    ss = num(17, 2);

#undef num

    frac = 0;

    if (len > 20) {
        if (p[19] != '.' || len > 24 || len == 21) {
            return NGX_ERROR;
        }

        for (i = 20, digits = 0; i < len - 1; i++, digits++) {
            if (p[i] < '0' || p[i] > '9') {
                return NGX_ERROR;
            }

            frac = frac * 10 + (p[i] - '0');
        }

        for ( /* void */ ; digits < 3; digits++) {
            frac *= 10;
        }
    }

    if (y < 1970 || m < 1 || m > 12 || d < 1 || d > (int64_t) mdays[m - 1]
        || (m == 2 && d == 29
            && !(y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)))
        || hh > 23 || mm > 59 || ss > 59)
    {
        return NGX_ERROR;
    }

    /* days since 1970-01-01 of a proleptic Gregorian date */

    y -= (m <= 2);
    era = y / 400;
    yoe = y - era * 400;
    doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    days = era * 146097 + doe - 719468;

    *ms = ((days * 86400 + hh * 3600 + mm * 60 + ss) * 1000) + frac;

    return NGX_OK;
}


static int64_t
ngx_http_invoices_digits(u_char *p, ngx_uint_t n)
{
    int64_t  v;

    for (v = 0; n; n--) {
        v = v * 10 + (*p++ - '0');
    }

    return v;
}


/*
 * The number of characters of valid UTF-8 text without control
 * characters (C0, DEL, C1); 0 when it is not that.
 */

static ngx_uint_t
ngx_http_invoices_utf8_text(u_char *p, size_t len)
{
    u_char      *last;
    uint32_t     c;
    ngx_uint_t   n, need, chars;

    last = p + len;
    chars = 0;

    while (p < last) {
        c = *p++;

        if (c < 0x80) {
            if (c < 0x20 || c == 0x7f) {
                return 0;
            }

            chars++;
            continue;
        }

        if (c >= 0xc2 && c <= 0xdf) {
            need = 1;
            c &= 0x1f;

        } else if (c >= 0xe0 && c <= 0xef) {
            need = 2;
            c &= 0x0f;

        } else if (c >= 0xf0 && c <= 0xf4) {
            need = 3;
            c &= 0x07;

        } else {
            return 0;
        }

        if ((size_t) (last - p) < need) {
            return 0;
        }

        for (n = 0; n < need; n++) {
            if ((p[n] & 0xc0) != 0x80) {
                return 0;
            }

            c = (c << 6) | (p[n] & 0x3f);
        }

        p += need;

        /* overlong, surrogates, past U+10FFFF, C1 controls */
        if ((need == 2 && c < 0x800) || (need == 3 && c < 0x10000)
            || (c >= 0xd800 && c <= 0xdfff) || c > 0x10ffff
            || (c >= 0x80 && c <= 0x9f))
        {
            return 0;
        }

        chars++;
    }

    return chars;
}


/* an invoice _id: 24 lowercase hex digits */

ngx_uint_t
ngx_http_invoices_object_id(const u_char *id, size_t len)
{
    size_t  i;

    if (len != 24) {
        return 0;
    }

    for (i = 0; i < 24; i++) {
        if (!((id[i] >= '0' && id[i] <= '9') || (id[i] >= 'a' && id[i] <= 'f')))
        {
            return 0;
        }
    }

    return 1;
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
                                      : NGX_HTTP_INVOICES_NOT_JSON,
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

    if (v != NULL && !json_is_null(v)
        && !ngx_http_invoices_payment_method(v))
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


/*
 * The body of an action (POST .../{id}/{action}): empty, or a JSON object;
 * "pay" takes an optional paymentMethod (copied to payment_method, ""
 * when none), the others no keys.  NGX_OK, or NGX_ERROR and the failure.
 */

ngx_int_t
ngx_http_invoices_parse_action(u_char *body, size_t len, ngx_uint_t pay,
    char *payment_method, size_t size, ngx_http_invoices_invalid_t *invalid)
{
    size_t        i;
    json_t       *req, *v;
    const char   *key;
    json_error_t  err;

    payment_method[0] = '\0';

    for (i = 0; i < len; i++) {
        if (body[i] != ' ' && body[i] != '\t' && body[i] != '\r'
            && body[i] != '\n')
        {
            break;
        }
    }

    if (i == len) {
        return NGX_OK;
    }

    req = json_loadb((const char *) body, len, JSON_REJECT_DUPLICATES, &err);

    if (req == NULL || !json_is_object(req)) {
        ngx_http_invoices_invalid(invalid, "body_invalid",
                                  req ? "the body must be empty or a JSON "
                                        "object"
                                      : NGX_HTTP_INVOICES_NOT_JSON,
                                  NULL);
        goto invalid;
    }

    json_object_foreach(req, key, v) {
        if (!pay || ngx_strcmp(key, "paymentMethod") != 0) {
            ngx_http_invoices_invalid(invalid, "parameter_unknown",
                pay ? "unknown parameter: pay takes only paymentMethod"
                    : "unknown parameter: this action takes none", key);
            goto invalid;
        }

        if (json_is_null(v)) {
            continue;
        }

        if (!ngx_http_invoices_payment_method(v)
            || json_string_length(v) >= size)
        {
            ngx_http_invoices_invalid(invalid, "parameter_invalid",
                "paymentMethod must be a Stripe payment method id (pm_...)",
                "paymentMethod");
            goto invalid;
        }

        ngx_cpystrn((u_char *) payment_method,
                    (u_char *) json_string_value(v), size);
    }

    json_decref(req);

    return NGX_OK;

invalid:

    json_decref(req);

    return NGX_ERROR;
}


/* a Stripe payment method id: pm_..., or the older card_... and src_... */

static ngx_uint_t
ngx_http_invoices_payment_method(json_t *v)
{
    const char  *s;

    s = json_string_value(v);

    return s != NULL
           && (ngx_http_invoices_stripe_id((u_char *) s,
                                           json_string_length(v), "pm_")
               || ngx_http_invoices_stripe_id((u_char *) s,
                                              json_string_length(v), "card_")
               || ngx_http_invoices_stripe_id((u_char *) s,
                                              json_string_length(v), "src_"));
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
