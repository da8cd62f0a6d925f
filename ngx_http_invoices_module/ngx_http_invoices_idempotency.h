
/*
 * A write that goes to Stripe under an Idempotency-Key (the create and the
 * actions): see ngx_http_invoices_idempotency.c.
 */


#ifndef _NGX_HTTP_INVOICES_IDEMPOTENCY_H_INCLUDED_
#define _NGX_HTTP_INVOICES_IDEMPOTENCY_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include <jansson.h>

#include "ngx_http_invoices_module.h"
#include "ngx_http_invoices_job.h"
#include "ngx_http_invoices_stripe.h"


/* the 400 of a key ngx_http_invoices_idem_init refuses */
#define NGX_HTTP_INVOICES_IDEM_INVALID                                        \
    "Idempotency-Key must be given once, with 1 to 255 printable ASCII "     \
    "characters"


typedef struct {
    /* in: set on the event loop */
    char                              key[256];
    ngx_uint_t                        own;        /* the caller's key */
    char                              lease[NGX_INT_T_LEN + 1];  /* ms */
    const char                       *what;       /* "creating an invoice" */
    ngx_uint_t                        drafts;     /* the invoice kept under
                                                     the key is a draft the
                                                     request made (create),
                                                     not one it acts on */
    ngx_http_invoices_stripe_conf_t   stripe;

    /* in the thread */
    char                              hash[65];   /* of the request */
    char                              stripe_key[64];  /* Stripe's keys'
                                                          stem */
    char                              fence[24];
    ngx_uint_t                        held;       /* the lease is ours */
    ngx_uint_t                        forget;     /* release: drop the key */

    /* out */
    ngx_uint_t                        replayed;
    char                              invoice_id[256];  /* kept under it */
} ngx_http_invoices_idem_t;


/* event loop */
ngx_int_t ngx_http_invoices_idem_init(ngx_http_request_t *r,
    ngx_http_invoices_loc_conf_t *ilcf, ngx_http_invoices_idem_t *idem,
    const char *what);

/* pool threads */
ngx_int_t ngx_http_invoices_idem_prepare(ngx_http_invoices_job_t *job,
    ngx_http_invoices_idem_t *idem, const void *request, size_t len);
ngx_int_t ngx_http_invoices_idem_claim(ngx_http_invoices_job_t *job,
    ngx_http_invoices_idem_t *idem);
ngx_int_t ngx_http_invoices_idem_invoice(ngx_http_invoices_job_t *job,
    ngx_http_invoices_idem_t *idem, const char *invoice_id);
json_t *ngx_http_invoices_idem_call(ngx_http_invoices_job_t *job,
    ngx_http_invoices_idem_t *idem, const char *method, const char *path,
    ngx_http_invoices_form_t *form, const char *key, const char *step,
    ngx_http_invoices_stripe_res_t *sr);
void ngx_http_invoices_idem_done(ngx_http_invoices_job_t *job,
    ngx_http_invoices_idem_t *idem, ngx_uint_t status, char *body,
    size_t len);
void ngx_http_invoices_idem_release(ngx_http_invoices_job_t *job,
    ngx_http_invoices_idem_t *idem);


#endif /* _NGX_HTTP_INVOICES_IDEMPOTENCY_H_INCLUDED_ */
