
/*
 * The one Stripe request function (libcurl, pool threads only); its form
 * encoder is in ngx_http_invoices_parse.c.
 */


#ifndef _NGX_HTTP_INVOICES_STRIPE_H_INCLUDED_
#define _NGX_HTTP_INVOICES_STRIPE_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <jansson.h>

#include "ngx_http_invoices_module.h"
#include "ngx_http_invoices_parse.h"


/* plain C, copied from the location configuration; strings NUL-ended */
typedef struct {
    const char  *api_base;
    const char  *secret_key;
    const char  *version;
    long         connect_timeout;    /* ms */
    long         timeout;            /* ms, one attempt */
    ngx_uint_t   max_retries;
} ngx_http_invoices_stripe_conf_t;


typedef enum {
    NGX_HTTP_INVOICES_STRIPE_ANSWERED = 0,   /* "status" holds Stripe's */
    NGX_HTTP_INVOICES_STRIPE_TIMEOUT,
    NGX_HTTP_INVOICES_STRIPE_UNREACHABLE,
    NGX_HTTP_INVOICES_STRIPE_FAILED          /* out of memory, bad URL */
} ngx_http_invoices_stripe_outcome_e;


typedef struct {
    ngx_http_invoices_stripe_outcome_e   outcome;
    long                                 status;
    char                                *body;         /* malloc()ed */
    size_t                               len;
    ngx_uint_t                           attempts;
    long                                 retry_after;  /* s, 0: none */
    char                                 request_id[64];
    char                                 error[256];   /* no secrets */
} ngx_http_invoices_stripe_res_t;


/*
 * What we keep of a Stripe invoice object, as statement parameters.  A
 * NULL pointer or an empty array is SQL's NULL (Stripe's null, or a field
 * the object did not have).
 */
typedef struct {
    const char  *id;
    const char  *customer;
    const char  *status;
    const char  *currency;
    const char  *invoice_pdf;            /* NULL: none yet */
    char         amount[24];             /* total */
    char         created[24];
    char         transition_at[24];      /* latest status_transitions */

    /* the details (migration 0005), ngx_http_invoices_stripe_details() */
    const char  *number;
    const char  *customer_email;
    const char  *customer_name;
    char         amount_due[24];
    char         amount_paid[24];
    char         amount_remaining[24];
    const char  *hosted_invoice_url;
    char         due_date[24];
    char         finalized_at[24];
    char         paid_at[24];
    char         voided_at[24];
} ngx_http_invoices_stripe_invoice_t;

/* how many statement parameters ngx_http_invoices_stripe_details fills */
#define NGX_HTTP_INVOICES_STRIPE_DETAILS  11


ngx_int_t ngx_http_invoices_stripe_invoice(json_t *invoice,
    ngx_http_invoices_stripe_invoice_t *inv);
void ngx_http_invoices_stripe_details(
    ngx_http_invoices_stripe_invoice_t *inv, const char **values);
ngx_int_t ngx_http_invoices_stripe_store(ngx_http_invoices_job_t *job,
    ngx_http_invoices_stripe_invoice_t *inv, char *result, size_t size);
ngx_int_t ngx_http_invoices_stripe_store_object(ngx_http_invoices_job_t *job,
    json_t *invoice);
void ngx_http_invoices_stripe_conf(ngx_http_invoices_stripe_conf_t *conf,
    ngx_http_invoices_loc_conf_t *ilcf);

void ngx_http_invoices_stripe_request(ngx_http_invoices_stripe_conf_t *conf,
    const char *method, const char *path, ngx_http_invoices_form_t *form,
    const char *idempotency_key, ngx_http_invoices_stripe_res_t *res);
void ngx_http_invoices_stripe_res_free(ngx_http_invoices_stripe_res_t *res);

ngx_uint_t ngx_http_invoices_stripe_error(ngx_http_invoices_stripe_res_t *sr,
    const char *step, const char *invoice_id, char **body, size_t *len,
    ngx_uint_t *final, ngx_http_invoices_job_t *job);

ngx_int_t ngx_http_invoices_stripe_init(void);


#endif /* _NGX_HTTP_INVOICES_STRIPE_H_INCLUDED_ */
