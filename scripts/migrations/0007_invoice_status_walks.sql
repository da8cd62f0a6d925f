-- 0007: a team's page of some statuses walks (team, status) once per
-- status named, and merges the walks (ngx_http_invoices_query.c, "How a
-- page of equalities only walks").  With the team's index alone, a page
-- of its paid invoices read through every newer open one first.

CREATE INDEX invoices_team_status_order
    ON invoices (team_id DESC, status DESC, stripe_created_at DESC, id DESC);

ANALYZE invoices;
