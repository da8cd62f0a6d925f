
/*
 * POST /admin/api/invoices/sync[?since=UNIX&starting_after=in_...]
 *
 * Pages through Stripe's invoice list (newest first, 100 a page) and
 * applies every invoice through the same forward-only write as the
 * webhook, so it recovers invoices whose events never arrived and is safe
 * to run twice or beside the webhook.  One call is bounded in pages and
 * time; when it stops early it says where to go on ("next").
 */


#include "ngx_http_invoices_module.h"
#include "ngx_http_invoices_json.h"
#include "ngx_http_invoices_pg.h"
#include "ngx_http_invoices_cache.h"
#include "ngx_http_invoices_stripe.h"
#include "ngx_http_invoices_sync.h"


#define NGX_HTTP_INVOICES_SYNC_PAGES    20
#define NGX_HTTP_INVOICES_SYNC_SECONDS  20


typedef struct {
    ngx_http_invoices_stripe_conf_t   stripe;
    char                              since[24];
    char                              starting_after[256];
} ngx_http_invoices_sync_t;


static ngx_int_t ngx_http_invoices_sync_names(ngx_http_request_t *r,
    char *unknown, size_t size);
static ngx_int_t ngx_http_invoices_sync_arg(ngx_http_request_t *r,
    const char *name, const char *allowed, size_t min, size_t max,
    char *out, size_t size);
static void ngx_http_invoices_sync_run(ngx_http_invoices_job_t *job);


ngx_int_t
ngx_http_invoices_sync(ngx_http_request_t *r,
    ngx_http_invoices_loc_conf_t *ilcf)
{
    ngx_int_t                  rc;
    ngx_http_invoices_job_t   *job;
    ngx_http_invoices_sync_t  *sy;
    char                       unknown[64];

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    sy = ngx_pcalloc(r->pool, sizeof(ngx_http_invoices_sync_t));
    if (sy == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (ngx_http_invoices_sync_names(r, unknown, sizeof(unknown)) != NGX_OK) {
        return ngx_http_invoices_send_error(r, NGX_HTTP_BAD_REQUEST,
                   "invalid_request_error", "parameter_unknown",
                   "unknown parameter: the sync takes since and "
                   "starting_after", unknown);
    }

    if (ngx_http_invoices_sync_arg(r, "since", "0123456789", 1, 12,
                                   sy->since, sizeof(sy->since))
        != NGX_OK)
    {
        return ngx_http_invoices_send_error(r, NGX_HTTP_BAD_REQUEST,
                   "invalid_request_error", "parameter_invalid",
                   "since must be a Unix timestamp (seconds)", "since");
    }

    if (ngx_http_invoices_sync_arg(r, "starting_after",
                                   "abcdefghijklmnopqrstuvwxyz"
                                   "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_",
                                   4, 255, sy->starting_after,
                                   sizeof(sy->starting_after))
        != NGX_OK
        || (sy->starting_after[0]
            && !ngx_http_invoices_stripe_id((u_char *) sy->starting_after,
                                            ngx_strlen(sy->starting_after),
                                            "in_")))
    {
        return ngx_http_invoices_send_error(r, NGX_HTTP_BAD_REQUEST,
                   "invalid_request_error", "parameter_invalid",
                   "starting_after must be a Stripe invoice id (in_...)",
                   "starting_after");
    }

    ngx_http_invoices_stripe_conf(&sy->stripe, ilcf);

    job = ngx_http_invoices_job_create(r, ilcf);
    if (job == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    job->thread_pool = ilcf->stripe_thread_pool;
    job->run = ngx_http_invoices_sync_run;
    job->data = sy;

    return ngx_http_invoices_job_run(r, job);
}


/*
 * Every name in the query one of the sync's own (in any case, as
 * ngx_http_arg() matches them), so that a typo ("sinse=") never runs a
 * full sync; else the first other name, printable, in "unknown".
 */

static ngx_int_t
ngx_http_invoices_sync_names(ngx_http_request_t *r, char *unknown,
    size_t size)
{
    size_t   i, len;
    u_char  *p, *end, *next, *eq;

    end = r->args.data + r->args.len;

    for (p = r->args.data; p < end; p = next + 1) {
        next = ngx_strlchr(p, end, '&');
        if (next == NULL) {
            next = end;
        }

        eq = ngx_strlchr(p, next, '=');
        if (eq == NULL) {
            eq = next;
        }

        len = eq - p;

        if ((len == 0 && next == p)          /* "a=1&&b=2", a trailing "&" */
            || (len == sizeof("since") - 1
                && ngx_strncasecmp(p, (u_char *) "since", len) == 0)
            || (len == sizeof("starting_after") - 1
                && ngx_strncasecmp(p, (u_char *) "starting_after", len) == 0))
        {
            continue;
        }

        for (i = 0; i < size - 1 && i < len; i++) {
            unknown[i] = (p[i] >= 0x20 && p[i] < 0x7f) ? p[i] : '?';
        }

        unknown[i] = '\0';

        return NGX_ERROR;
    }

    return NGX_OK;
}


/*
 * An optional query argument of allowed characters; NGX_OK when fine.
 * Given twice (in any case, as ngx_http_arg() matches) it is ambiguous:
 * ngx_http_arg() would take the first; an error, as for the list.
 */

static ngx_int_t
ngx_http_invoices_sync_arg(ngx_http_request_t *r, const char *name,
    const char *allowed, size_t min, size_t max, char *out, size_t size)
{
    size_t      i, len;
    u_char     *p, *end;
    ngx_str_t   value;
    ngx_uint_t  n;

    len = ngx_strlen(name);

    if (ngx_http_arg(r, (u_char *) name, len, &value) != NGX_OK) {
        return NGX_OK;
    }

    n = 0;
    p = r->args.data;
    end = p + r->args.len;

    while (p < end) {
        if ((size_t) (end - p) > len
            && ngx_strncasecmp(p, (u_char *) name, len) == 0
            && p[len] == '=')
        {
            n++;
        }

        p = ngx_strlchr(p, end, '&');
        if (p == NULL) {
            break;
        }

        p++;
    }

    if (n != 1) {
        return NGX_ERROR;
    }

    if (value.len < min || value.len > max || value.len >= size) {
        return NGX_ERROR;
    }

    for (i = 0; i < value.len; i++) {
        if (ngx_strchr(allowed, value.data[i]) == NULL) {
            return NGX_ERROR;
        }
    }

    *ngx_cpymem(out, value.data, value.len) = '\0';

    return NGX_OK;
}


static void
ngx_http_invoices_sync_run(ngx_http_invoices_job_t *job)
{
    char                                *body;
    size_t                               i, len;
    json_t                              *list, *data, *invoice, *answer;
    time_t                               deadline;
    ngx_uint_t                           pages, more, final;
    char                                 path[512], result[16], *p;
    ngx_http_invoices_sync_t            *sy = job->data;
    ngx_http_invoices_stripe_res_t       sr;
    ngx_http_invoices_stripe_invoice_t   inv;
    json_int_t                           seen, inserted, updated,
                                         unchanged, deleted, skipped;

    seen = inserted = updated = unchanged = deleted = skipped = 0;
    deadline = time(NULL) + NGX_HTTP_INVOICES_SYNC_SECONDS;
    more = 0;

    for (pages = 0; pages < NGX_HTTP_INVOICES_SYNC_PAGES; pages++) {

        (void) ngx_http_invoices_sprint(path, "/v1/invoices?limit=100%s%s%s%s",
                                        sy->since[0]
                                        ? "&created%5Bgte%5D=" : "",
                                        sy->since,
                                        sy->starting_after[0]
                                        ? "&starting_after=" : "",
                                        sy->starting_after);

        ngx_http_invoices_stripe_request(&sy->stripe, "GET", path, NULL, NULL,
                                         &sr);

        if (sr.outcome != NGX_HTTP_INVOICES_STRIPE_ANSWERED
            || sr.status != 200)
        {
            free(job->body);
            job->status = ngx_http_invoices_stripe_error(&sr,
                              "listing invoices", NULL, &job->body,
                              &job->len, &final, job);
            ngx_http_invoices_stripe_res_free(&sr);
            return;
        }

        list = json_loadb(sr.body, sr.len, 0, NULL);
        ngx_http_invoices_stripe_res_free(&sr);

        data = json_object_get(list, "data");

        if (!json_is_array(data)) {
            json_decref(list);
            ngx_http_invoices_job_fail(job, NGX_HTTP_BAD_GATEWAY,
                                       "stripe_error", "stripe_bad_response",
                                       "Stripe's invoice list could not be "
                                       "read");
            return;
        }

        json_array_foreach(data, i, invoice) {

            if (ngx_http_invoices_stripe_invoice(invoice, &inv) != NGX_OK) {
                /* counted and logged, never silently dropped */
                skipped++;
                p = (char *) ngx_snprintf((u_char *) job->log,
                                          sizeof(job->log) - 1,
                                          "sync: %L invoice(s) from Stripe "
                                          "could not be read, the last one "
                                          "%s", (int64_t) skipped,
                                          json_string_value(json_object_get(
                                              invoice, "id")));
                *p = '\0';
                continue;
            }

            if (ngx_http_invoices_stripe_store(job, &inv, result,
                                               sizeof(result))
                != NGX_OK)
            {
                json_decref(list);
                return;
            }

            seen++;

            if (ngx_strcmp(result, "inserted") == 0) {
                inserted++;
                job->defer = ngx_http_invoices_cache_bump_for;

            } else if (ngx_strcmp(result, "updated") == 0) {
                updated++;
                job->defer = ngx_http_invoices_cache_bump_for;

            } else if (ngx_strcmp(result, "deleted") == 0) {
                deleted++;
                job->defer = ngx_http_invoices_cache_bump_for;

            } else {
                unchanged++;
            }

            ngx_cpystrn((u_char *) sy->starting_after, (u_char *) inv.id,
                        sizeof(sy->starting_after));
        }

        more = json_is_true(json_object_get(list, "has_more"))
               && json_array_size(data) > 0;
        json_decref(list);

        if (!more || time(NULL) >= deadline) {
            break;
        }
    }

    answer = json_pack("{s:I,s:I,s:I,s:I,s:I,s:I,s:b,s:s?}",
                       "seen", seen, "inserted", inserted,
                       "updated", updated, "unchanged", unchanged,
                       "deleted", deleted, "skipped", skipped,
                       "hasMore", (int) more,
                       "next", more ? sy->starting_after : NULL);

    body = ngx_http_invoices_json_dump(answer, &len);
    json_decref(answer);

    free(job->body);
    job->body = body;
    job->len = len;
    job->status = body ? NGX_HTTP_OK : 0;
}

