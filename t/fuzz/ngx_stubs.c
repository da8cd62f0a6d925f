
/*
 * Stand-ins for the few nginx core functions that
 * ngx_http_invoices_parse.c calls.  Debian's nginx-dev ships nginx's
 * headers but not its .c files, so the fuzz binaries cannot link
 * nginx's own string functions; these follow the contracts nginx documents
 * for them (same results, same bounds), and abort on any use
 * they do not cover, so a new call in parse.c is noticed here.
 */


#include <ngx_config.h>
#include <ngx_core.h>

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>


u_char *
ngx_cpystrn(u_char *dst, u_char *src, size_t n)
{
    if (n == 0) {
        return dst;
    }

    while (--n) {
        *dst = *src;

        if (*dst == '\0') {
            return dst;
        }

        dst++;
        src++;
    }

    *dst = '\0';

    return dst;
}


/* the conversions parse.c uses: %s %d %i %ui %uz %z %L %% */

u_char * ngx_cdecl
ngx_snprintf(u_char *buf, size_t max, const char *fmt, ...)
{
    int          n;
    size_t       len;
    va_list      args;
    const char  *f;
    char         one[64];

    va_start(args, fmt);

    len = 0;

    for (f = fmt; *f && len < max; f++) {

        if (*f != '%') {
            buf[len++] = *f;
            continue;
        }

        f++;

        if (*f == 's') {
            const char  *s = va_arg(args, const char *);

            while (*s && len < max) {
                buf[len++] = *s++;
            }

            continue;
        }

        if (*f == '%') {
            n = snprintf(one, sizeof(one), "%%");

        } else if (*f == 'd') {
            n = snprintf(one, sizeof(one), "%d", va_arg(args, int));

        } else if (*f == 'i') {
            n = snprintf(one, sizeof(one), "%ld",
                         (long) va_arg(args, ngx_int_t));

        } else if (*f == 'L') {
            n = snprintf(one, sizeof(one), "%lld",
                         (long long) va_arg(args, int64_t));

        } else if (*f == 'z') {
            n = snprintf(one, sizeof(one), "%zd", va_arg(args, ssize_t));

        } else if (f[0] == 'u' && f[1] == 'i') {
            f++;
            n = snprintf(one, sizeof(one), "%lu",
                         (unsigned long) va_arg(args, ngx_uint_t));

        } else if (f[0] == 'u' && f[1] == 'z') {
            f++;
            n = snprintf(one, sizeof(one), "%zu", va_arg(args, size_t));

        } else {
            abort();
        }

        if (n < 0) {
            abort();
        }

        if ((size_t) n > max - len) {
            n = max - len;
        }

        ngx_memcpy(buf + len, one, n);
        len += n;
    }

    va_end(args);

    return buf + len;
}


ngx_int_t
ngx_atoi(u_char *line, size_t n)
{
    ngx_int_t  value, cutoff, cutlim;

    if (n == 0) {
        return NGX_ERROR;
    }

    cutoff = NGX_MAX_INT_T_VALUE / 10;
    cutlim = NGX_MAX_INT_T_VALUE % 10;

    for (value = 0; n--; line++) {
        if (*line < '0' || *line > '9') {
            return NGX_ERROR;
        }

        if (value >= cutoff && (value > cutoff || *line - '0' > cutlim)) {
            return NGX_ERROR;
        }

        value = value * 10 + (*line - '0');
    }

    return value;
}


time_t
ngx_atotm(u_char *line, size_t n)
{
    time_t  value, cutoff, cutlim;

    if (n == 0) {
        return NGX_ERROR;
    }

    cutoff = NGX_MAX_TIME_T_VALUE / 10;
    cutlim = NGX_MAX_TIME_T_VALUE % 10;

    for (value = 0; n--; line++) {
        if (*line < '0' || *line > '9') {
            return NGX_ERROR;
        }

        if (value >= cutoff && (value > cutoff || *line - '0' > cutlim)) {
            return NGX_ERROR;
        }

        value = value * 10 + (*line - '0');
    }

    return value;
}


u_char *
ngx_hex_dump(u_char *dst, u_char *src, size_t len)
{
    static u_char  hex[] = "0123456789abcdef";

    while (len--) {
        *dst++ = hex[*src >> 4];
        *dst++ = hex[*src++ & 0xf];
    }

    return dst;
}


/*
 * Type 0 only (what parse.c asks for): "%XX" becomes the byte; after a
 * "%" a non-hex character is kept and the "%" dropped; a "%X" followed by
 * a non-hex character drops all three.  Never writes more than size bytes.
 */

void
ngx_unescape_uri(u_char **dst, u_char **src, size_t size, ngx_uint_t type)
{
    u_char  *d, *s, ch, c, decoded;
    enum {
        sw_usual = 0,
        sw_quoted,
        sw_quoted_second
    } state;

    if (type != 0) {
        abort();
    }

    d = *dst;
    s = *src;

    state = 0;
    decoded = 0;

    while (size--) {

        ch = *s++;

        switch (state) {

        case sw_usual:
            if (ch == '%') {
                state = sw_quoted;
                break;
            }

            *d++ = ch;
            break;

        case sw_quoted:
            if (ch >= '0' && ch <= '9') {
                decoded = (u_char) (ch - '0');
                state = sw_quoted_second;
                break;
            }

            c = (u_char) (ch | 0x20);
            if (c >= 'a' && c <= 'f') {
                decoded = (u_char) (c - 'a' + 10);
                state = sw_quoted_second;
                break;
            }

            state = sw_usual;
            *d++ = ch;
            break;

        case sw_quoted_second:
            state = sw_usual;

            if (ch >= '0' && ch <= '9') {
                *d++ = (u_char) ((decoded << 4) + (ch - '0'));
                break;
            }

            c = (u_char) (ch | 0x20);
            if (c >= 'a' && c <= 'f') {
                *d++ = (u_char) ((decoded << 4) + (c - 'a') + 10);
            }

            break;
        }
    }

    *dst = d;
    *src = s;
}
