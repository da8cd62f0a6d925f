-- 0009: a page of a narrow amount or dueDate range is collected from the
-- range's own index and sorted (ngx_http_invoices_read.c, "A range of
-- amount or dueDate"): the index holds (createdAt, _id) too, so that the
-- matches are sorted from it alone and only the page's rows are read.

CREATE INDEX invoices_amount_order
    ON invoices (amount) INCLUDE (stripe_created_at, id);
CREATE INDEX invoices_due_date_order
    ON invoices (due_date) INCLUDE (stripe_created_at, id);

DROP INDEX invoices_amount;
DROP INDEX invoices_due_date;

ANALYZE invoices;
