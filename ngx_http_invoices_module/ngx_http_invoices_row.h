
/*
 * An invoice row (see ngx_http_invoices_row.c): the columns every read
 * selects, in the order ngx_http_invoices_row_write reads them.
 */


#ifndef _NGX_HTTP_INVOICES_ROW_H_INCLUDED_
#define _NGX_HTTP_INVOICES_ROW_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <libpq-fe.h>


#define NGX_HTTP_INVOICES_TIME(col)                                           \
    "to_char(" col " AT TIME ZONE 'UTC', "                                    \
    "'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')"

/* the columns of one invoice, in ngx_http_invoices_row_write's order */
#define NGX_HTTP_INVOICES_COLUMNS                                             \
    "i.id AS id, i.stripe_invoice_id, t.id AS team_id, t.name AS team_name, " \
    "i.status, i.amount, i.currency, i.invoice_pdf, "                         \
    NGX_HTTP_INVOICES_TIME("i.stripe_created_at") " AS created, "             \
    NGX_HTTP_INVOICES_TIME("i.updated_at") " AS updated, "                    \
    "i.number, i.stripe_customer_id, i.customer_email, i.customer_name, "     \
    "i.amount_due, i.amount_paid, i.amount_remaining, "                       \
    "i.hosted_invoice_url, "                                                  \
    NGX_HTTP_INVOICES_TIME("i.due_date") " AS due_date, "                     \
    NGX_HTTP_INVOICES_TIME("i.paid_at") " AS paid_at, "                       \
    NGX_HTTP_INVOICES_TIME("i.finalized_at") " AS finalized_at, "             \
    NGX_HTTP_INVOICES_TIME("i.voided_at") " AS voided_at "

#define NGX_HTTP_INVOICES_FROM                                                \
    "FROM invoices i LEFT JOIN teams t ON t.id = i.team_id "

/* how many columns NGX_HTTP_INVOICES_COLUMNS selects */
#define NGX_HTTP_INVOICES_NCOLUMNS  22


extern const char  ngx_http_invoices_row_select[];

size_t ngx_http_invoices_row_size(PGresult *res, int row, int col);
u_char *ngx_http_invoices_row_write(u_char *p, PGresult *res, int row,
    int col);


#endif /* _NGX_HTTP_INVOICES_ROW_H_INCLUDED_ */
