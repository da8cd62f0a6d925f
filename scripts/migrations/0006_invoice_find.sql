-- 0006: finding invoices fast at millions of rows (docs/benchmarks.md,
-- "Finding invoices").
--
-- Page 1 of a filter walks an index in the list's order, (createdAt, _id)
-- descending, that starts with the filtered column, and stops after limit
-- + 1 rows: one index per equality filter (status, team, customer,
-- currency).  The ranges of amount and dueDate have plain indexes, for
-- when they select few rows; otherwise the list's own index with the
-- range as a filter is the faster way, and the planner picks.
--
-- q: a trigram index (pg_trgm, in PostgreSQL's contrib) on the invoice's
-- searchable texts joined by newlines (q never holds a control character,
-- so a match never spans two fields).  The team's name is matched in
-- teams, a small table, and turned into team ids.
--
-- The exact count under equality filters comes from counts per (status,
-- team, customer, currency) kept in the same transaction as every write,
-- like the total in 0003: summing a few hundred groups instead of counting
-- a hundred thousand rows.  Ranges and q count the rows themselves.

CREATE EXTENSION IF NOT EXISTS pg_trgm;

DROP INDEX invoices_team;
DROP INDEX invoices_customer;

CREATE INDEX invoices_status_order
    ON invoices (status, stripe_created_at DESC, id DESC);
CREATE INDEX invoices_team_order
    ON invoices (team_id, stripe_created_at DESC, id DESC);
CREATE INDEX invoices_customer_order
    ON invoices (stripe_customer_id, stripe_created_at DESC, id DESC);
CREATE INDEX invoices_currency_order
    ON invoices (currency, stripe_created_at DESC, id DESC);
CREATE INDEX invoices_amount ON invoices (amount);
CREATE INDEX invoices_due_date ON invoices (due_date);

-- what q is matched against, besides the team's name
CREATE FUNCTION invoices_search_text(p_number text, p_stripe_invoice_id text,
                                     p_customer_email text,
                                     p_customer_name text)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT coalesce(p_number, '') || E'\n' || p_stripe_invoice_id || E'\n'
           || coalesce(p_customer_email, '') || E'\n'
           || coalesce(p_customer_name, '')
$$;

CREATE INDEX invoices_search ON invoices USING gin
    (invoices_search_text(number, stripe_invoice_id, customer_email,
                          customer_name) gin_trgm_ops);

-- counts per group; '' stands for no team or no customer
CREATE TABLE invoices_group_count (
    status        text    NOT NULL,
    team_key      text    NOT NULL,
    customer_key  text    NOT NULL,
    currency      text    NOT NULL,
    n             bigint  NOT NULL,
    PRIMARY KEY (status, team_key, customer_key, currency)
);

-- no write may run while the starting counts are taken
LOCK TABLE invoices IN SHARE MODE;

INSERT INTO invoices_group_count
SELECT status, coalesce(team_id, ''), coalesce(stripe_customer_id, ''),
       currency, count(*)
FROM invoices GROUP BY 1, 2, 3, 4;

-- The change of a statement, one upsert per group touched, in key order:
-- two writers lock the groups they share in the same order, so they may
-- wait for each other but never deadlock.
CREATE FUNCTION invoices_group_count_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO invoices_group_count AS g
        SELECT status, coalesce(team_id, ''), coalesce(stripe_customer_id, ''),
               currency, count(*)
        FROM new_rows GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
        ON CONFLICT (status, team_key, customer_key, currency)
        DO UPDATE SET n = g.n + excluded.n;

    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO invoices_group_count AS g
        SELECT status, coalesce(team_id, ''), coalesce(stripe_customer_id, ''),
               currency, -count(*)
        FROM old_rows GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
        ON CONFLICT (status, team_key, customer_key, currency)
        DO UPDATE SET n = g.n + excluded.n;

    ELSE
        INSERT INTO invoices_group_count AS g
        SELECT s, t, c, u, sum(d)
        FROM (SELECT status AS s, coalesce(team_id, '') AS t,
                     coalesce(stripe_customer_id, '') AS c, currency AS u,
                     -1 AS d
              FROM old_rows
              UNION ALL
              SELECT status, coalesce(team_id, ''),
                     coalesce(stripe_customer_id, ''), currency, 1
              FROM new_rows) ch
        GROUP BY 1, 2, 3, 4 HAVING sum(d) <> 0 ORDER BY 1, 2, 3, 4
        ON CONFLICT (status, team_key, customer_key, currency)
        DO UPDATE SET n = g.n + excluded.n;
    END IF;

    RETURN NULL;
END
$$;

CREATE TRIGGER invoices_group_count_insert AFTER INSERT ON invoices
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION invoices_group_count_changed();

CREATE TRIGGER invoices_group_count_update AFTER UPDATE ON invoices
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION invoices_group_count_changed();

CREATE TRIGGER invoices_group_count_delete AFTER DELETE ON invoices
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION invoices_group_count_changed();

CREATE FUNCTION invoices_group_count_truncated() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM invoices_group_count;
    RETURN NULL;
END
$$;

CREATE TRIGGER invoices_group_count_truncate AFTER TRUNCATE ON invoices
    FOR EACH STATEMENT EXECUTE FUNCTION invoices_group_count_truncated();

ANALYZE invoices;
