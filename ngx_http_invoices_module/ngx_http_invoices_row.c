
/*
 * An invoice row: the JSON object the API shows for the columns every
 * read selects (NGX_HTTP_INVOICES_COLUMNS, ngx_http_invoices_row.h).  The
 * list, the detail and the export all go through it.
 */


#include <ngx_config.h>
#include <ngx_core.h>

#include "ngx_http_invoices_row.h"


static json_t *ngx_http_invoices_column(PGresult *res, int row, int col,
    ngx_uint_t integer);


/* the columns and the join, for a statement to add its WHERE and order */
const char  ngx_http_invoices_row_select[] =
    "SELECT " NGX_HTTP_INVOICES_COLUMNS NGX_HTTP_INVOICES_FROM;


/*
 * One invoice as docs/openapi.yaml shapes it; NULL when out of memory or
 * bad UTF-8.
 */

json_t *
ngx_http_invoices_row_json(PGresult *res, int row, int col)
{
    json_t  *user;

#define v(n)  PQgetvalue(res, row, col + (n))
#define null(n)  PQgetisnull(res, row, col + (n))

    if (null(2)) {
        user = json_null();

    } else {
        user = json_pack("{s:s,s:s}", "_id", v(2), "name", v(3));
    }

#define text(n)  ngx_http_invoices_column(res, row, col + (n), 0)
#define integer(n)  ngx_http_invoices_column(res, row, col + (n), 1)

    return json_pack("{s:s,s:s,s:o,s:s,s:I,s:s,s:s?,s:s,s:s,"
                     "s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o}",
                     "_id", v(0),
                     "invoiceId", v(1),
                     "user", user,
                     "status", v(4),
                     "amount", (json_int_t) strtoll(v(5), NULL, 10),
                     "currency", v(6),
                     "invoicePdf", null(7) ? NULL : v(7),
                     "createdAt", v(8),
                     "updatedAt", v(9),
                     "number", text(10),
                     "customer", text(11),
                     "customerEmail", text(12),
                     "customerName", text(13),
                     "amountDue", integer(14),
                     "amountPaid", integer(15),
                     "amountRemaining", integer(16),
                     "hostedInvoiceUrl", text(17),
                     "dueDate", text(18),
                     "paidAt", text(19),
                     "finalizedAt", text(20),
                     "voidedAt", text(21));
#undef v
#undef null
#undef text
#undef integer
}


/*
 * A column that may be NULL: json null, a string or (integer) a number;
 * NULL (the pack fails) when a string is not UTF-8 or memory ran out.
 */

static json_t *
ngx_http_invoices_column(PGresult *res, int row, int col, ngx_uint_t integer)
{
    if (PQgetisnull(res, row, col)) {
        return json_null();
    }

    if (integer) {
        return json_integer(strtoll(PQgetvalue(res, row, col), NULL, 10));
    }

    return json_stringn(PQgetvalue(res, row, col),
                        PQgetlength(res, row, col));
}
