
/*
 * POST /stripe/webhook: Stripe's signed events.
 */


#ifndef _NGX_HTTP_INVOICES_WEBHOOK_H_INCLUDED_
#define _NGX_HTTP_INVOICES_WEBHOOK_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include <jansson.h>

#include "ngx_http_invoices_job.h"


ngx_int_t ngx_http_invoices_webhook_handler(ngx_http_request_t *r);

/* pool threads */
ngx_int_t ngx_http_invoices_webhook_apply(ngx_http_invoices_job_t *job,
    json_t *event, char *result, size_t size, const char **invalid);
ngx_uint_t ngx_http_invoices_webhook_changed(const char *result);


#endif /* _NGX_HTTP_INVOICES_WEBHOOK_H_INCLUDED_ */
