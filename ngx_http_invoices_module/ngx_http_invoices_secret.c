
/*
 * Secrets at configuration time: "file:/path" or "env:NAME", never the
 * configuration itself; files refused when others can read them.  Used
 * by the admin keys, the Stripe key, the webhook secrets and the Redis
 * password.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <sys/stat.h>

#include "ngx_http_invoices_secret.h"


#define NGX_HTTP_INVOICES_SECRET_MAX_SIZE  65536


/*
 * A secret from "file:/path" (the secret alone in a file nobody else can
 * read) or "env:NAME" (nginx's environment when the configuration is
 * read); never from the configuration itself.  One line of printable
 * characters, trimmed, NUL-ended.
 */

ngx_int_t
ngx_http_invoices_secret_load(ngx_conf_t *cf, ngx_str_t *spec,
    ngx_str_t *secret)
{
    u_char     *p, *last;
    char       *env;
    ngx_str_t  *directive, name, key;

    directive = cf->args->elts;

    if (spec->len > 5 && ngx_strncmp(spec->data, "file:", 5) == 0) {
        name.data = spec->data + 5;
        name.len = spec->len - 5;

        if (ngx_http_invoices_secret_read(cf, &name, &key) != NGX_OK) {
            return NGX_ERROR;
        }

    } else if (spec->len > 4 && ngx_strncmp(spec->data, "env:", 4) == 0) {
        env = getenv((char *) spec->data + 4);

        if (env == NULL || *env == '\0') {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "\"%V\": the environment variable \"%s\" is "
                               "not set", directive, spec->data + 4);
            return NGX_ERROR;
        }

        key.len = ngx_strlen(env);
        key.data = ngx_pnalloc(cf->pool, key.len + 1);
        if (key.data == NULL) {
            return NGX_ERROR;
        }

        ngx_memcpy(key.data, env, key.len + 1);

    } else {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%V\" takes \"file:/path\" or \"env:NAME\"; "
                           "the secret itself never goes into the "
                           "configuration", directive);
        return NGX_ERROR;
    }

    p = key.data;
    last = key.data + key.len;

    while (p < last && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n'))
    {
        p++;
    }

    while (last > p && (last[-1] == ' ' || last[-1] == '\t'
                        || last[-1] == '\r' || last[-1] == '\n'))
    {
        last--;
    }

    if (last == p || last - p > 255) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%V\": no secret found in \"%V\"", directive,
                           spec);
        return NGX_ERROR;
    }

    for (key.data = p; p < last; p++) {
        if (*p <= ' ' || *p >= 0x7f) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "\"%V\": the secret in \"%V\" must be one "
                               "line of printable characters", directive,
                               spec);
            return NGX_ERROR;
        }
    }

    *last = '\0';
    secret->data = key.data;
    secret->len = last - key.data;

    return NGX_OK;
}


/*
 * A secret file, read whole into the configuration pool: refused when
 * missing, over 64 KiB, or readable or writable by others.
 */

ngx_int_t
ngx_http_invoices_secret_read(ngx_conf_t *cf, ngx_str_t *path,
    ngx_str_t *content)
{
    u_char           *buf;
    ssize_t           n;
    ngx_fd_t          fd;
    ngx_str_t         name, *directive;
    ngx_file_info_t   fi;

    directive = cf->args->elts;
    name = *path;

    if (ngx_conf_full_name(cf->cycle, &name, 1) != NGX_OK) {
        return NGX_ERROR;
    }

    fd = ngx_open_file(name.data, NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);
    if (fd == NGX_INVALID_FILE) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           "\"%V\" cannot open \"%s\"", directive,
                           name.data);
        return NGX_ERROR;
    }

    if (ngx_fd_info(fd, &fi) == NGX_FILE_ERROR) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           "\"%V\" cannot stat \"%s\"", directive,
                           name.data);
        goto failed;
    }

    if (fi.st_mode & (S_IROTH|S_IWOTH)) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%V\": \"%s\" is accessible by others; "
                           "chmod o-rwx it", directive, name.data);
        goto failed;
    }

    if (ngx_file_size(&fi) > NGX_HTTP_INVOICES_SECRET_MAX_SIZE) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%V\": \"%s\" is larger than %d bytes",
                           directive, name.data,
                           NGX_HTTP_INVOICES_SECRET_MAX_SIZE);
        goto failed;
    }

    buf = ngx_pnalloc(cf->pool, NGX_HTTP_INVOICES_SECRET_MAX_SIZE + 1);
    if (buf == NULL) {
        goto failed;
    }

    n = ngx_read_fd(fd, buf, NGX_HTTP_INVOICES_SECRET_MAX_SIZE);
    if (n == -1) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           "\"%V\" cannot read \"%s\"", directive,
                           name.data);
        goto failed;
    }

    (void) ngx_close_file(fd);

    buf[n] = '\0';
    content->data = buf;
    content->len = n;

    return NGX_OK;

failed:

    (void) ngx_close_file(fd);
    return NGX_ERROR;
}
