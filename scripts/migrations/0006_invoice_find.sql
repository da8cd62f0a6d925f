-- 0006: finding invoices fast at millions of rows (docs/benchmarks.md,
-- "Finding invoices").
--
-- Page 1 of a filter walks an index in the list's order, (createdAt, _id)
-- descending, that starts with the filtered column, and stops after limit
-- + 1 rows: one index per equality filter (status, team, customer,
-- currency).  All its columns descend, so that the page's ORDER BY (the
-- filtered column first: ngx_http_invoices_query.c says why) and the
-- cursor's row comparison on the three columns both follow it.  The ranges of amount and dueDate have plain indexes, for
-- when they select few rows; otherwise the list's own index with the
-- range as a filter is the faster way, and the planner picks.
--
-- q: a trigram index (pg_trgm, in PostgreSQL's contrib) on the invoice's
-- searchable texts joined by newlines (q never holds a control character,
-- so a match never spans two fields), the team's name among them: each
-- invoice keeps a copy of its team's name (team_name), set by a trigger
-- whenever team_id is written and followed when a team is renamed, so
-- that one index answers q.
--
-- The exact count under equality filters comes from counts kept in the
-- same transaction as every write, like the total in 0003: per (status,
-- team, currency) in 16 slots, for filters without a customer (a few
-- dozen rows to sum), and per (status, team, customer, currency) for
-- filters with one (the few rows of that customer).  Ranges and q count
-- the rows themselves.

CREATE EXTENSION IF NOT EXISTS pg_trgm;

DROP INDEX invoices_team;
DROP INDEX invoices_customer;

CREATE INDEX invoices_status_order
    ON invoices (status DESC, stripe_created_at DESC, id DESC);
CREATE INDEX invoices_team_order
    ON invoices (team_id DESC, stripe_created_at DESC, id DESC);
CREATE INDEX invoices_customer_order
    ON invoices (stripe_customer_id DESC, stripe_created_at DESC, id DESC);
CREATE INDEX invoices_currency_order
    ON invoices (currency DESC, stripe_created_at DESC, id DESC);
CREATE INDEX invoices_amount ON invoices (amount);
CREATE INDEX invoices_due_date ON invoices (due_date);

-- the team's name on each invoice, for q
ALTER TABLE invoices ADD COLUMN team_name text;

UPDATE invoices i SET team_name = t.name FROM teams t WHERE t.id = i.team_id;

CREATE FUNCTION invoices_team_name_set() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.team_name := (SELECT name FROM teams WHERE id = NEW.team_id);
    RETURN NEW;
END
$$;

CREATE TRIGGER invoices_team_name BEFORE INSERT OR UPDATE OF team_id
    ON invoices FOR EACH ROW EXECUTE FUNCTION invoices_team_name_set();

CREATE FUNCTION invoices_team_renamed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE invoices SET team_name = NEW.name
     WHERE team_id = NEW.id AND team_name IS DISTINCT FROM NEW.name;
    RETURN NULL;
END
$$;

CREATE TRIGGER teams_renamed AFTER UPDATE OF name ON teams
    FOR EACH ROW WHEN (OLD.name IS DISTINCT FROM NEW.name)
    EXECUTE FUNCTION invoices_team_renamed();

-- what q is matched against, kept in the row (a stored generated column,
-- computed after the trigger above set team_name), so that checking a
-- candidate of the index reads it instead of computing it
ALTER TABLE invoices ADD COLUMN search_text text GENERATED ALWAYS AS (
    coalesce(number, '') || E'\n' || stripe_invoice_id || E'\n'
    || coalesce(team_name, '') || E'\n' || coalesce(customer_email, '')
    || E'\n' || coalesce(customer_name, '')) STORED;

CREATE INDEX invoices_search ON invoices USING gin (search_text gin_trgm_ops);

-- counts per group; '' stands for no team or no customer
CREATE TABLE invoices_group_count (
    status        text    NOT NULL,
    team_key      text    NOT NULL,
    customer_key  text    NOT NULL,
    currency      text    NOT NULL,
    n             bigint  NOT NULL,
    PRIMARY KEY (customer_key, status, team_key, currency)
);

-- the same without the customer, spread over 16 slots (by backend) so
-- that concurrent writers of one group do not queue on one row
CREATE TABLE invoices_team_count (
    status        text      NOT NULL,
    team_key      text      NOT NULL,
    currency      text      NOT NULL,
    slot          smallint  NOT NULL CHECK (slot BETWEEN 0 AND 15),
    n             bigint    NOT NULL,
    PRIMARY KEY (status, team_key, currency, slot)
);

-- no write may run while the starting counts are taken
LOCK TABLE invoices IN SHARE MODE;

INSERT INTO invoices_group_count
SELECT status, coalesce(team_id, ''), coalesce(stripe_customer_id, ''),
       currency, count(*)
FROM invoices GROUP BY 1, 2, 3, 4;

INSERT INTO invoices_team_count
SELECT status, coalesce(team_id, ''), currency, 0, count(*)
FROM invoices GROUP BY 1, 2, 3;

-- A statement's change of the counts: one row per group touched.
CREATE TYPE invoices_count_change AS (
    status text, team_key text, customer_key text, currency text, d bigint);

-- Applies a change to both kept counts, one upsert per row touched, in key
-- order: two writers lock the rows they share in the same order, so they
-- may wait for each other but never deadlock.
CREATE FUNCTION invoices_count_apply(p_change invoices_count_change[])
RETURNS void
LANGUAGE sql AS $$
    INSERT INTO invoices_group_count AS g
    SELECT status, team_key, customer_key, currency, sum(d)
    FROM unnest(p_change)
    GROUP BY 1, 2, 3, 4 HAVING sum(d) <> 0 ORDER BY 3, 1, 2, 4
    ON CONFLICT (customer_key, status, team_key, currency)
    DO UPDATE SET n = g.n + excluded.n;

    INSERT INTO invoices_team_count AS g
    SELECT status, team_key, currency, pg_backend_pid() % 16, sum(d)
    FROM unnest(p_change)
    GROUP BY 1, 2, 3 HAVING sum(d) <> 0 ORDER BY 1, 2, 3
    ON CONFLICT (status, team_key, currency, slot)
    DO UPDATE SET n = g.n + excluded.n;
$$;

CREATE FUNCTION invoices_group_count_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM invoices_count_apply(ARRAY(
            SELECT ROW(s, t, c, u, n)::invoices_count_change
            FROM (SELECT status AS s, coalesce(team_id, '') AS t,
                         coalesce(stripe_customer_id, '') AS c,
                         currency AS u, count(*) AS n
                  FROM new_rows GROUP BY 1, 2, 3, 4) x));

    ELSIF TG_OP = 'DELETE' THEN
        PERFORM invoices_count_apply(ARRAY(
            SELECT ROW(s, t, c, u, -n)::invoices_count_change
            FROM (SELECT status AS s, coalesce(team_id, '') AS t,
                         coalesce(stripe_customer_id, '') AS c,
                         currency AS u, count(*) AS n
                  FROM old_rows GROUP BY 1, 2, 3, 4) x));

    ELSE
        PERFORM invoices_count_apply(ARRAY(
            SELECT ROW(s, t, c, u, d)::invoices_count_change
            FROM (SELECT status AS s, coalesce(team_id, '') AS t,
                         coalesce(stripe_customer_id, '') AS c,
                         currency AS u, -1 AS d
                  FROM old_rows
                  UNION ALL
                  SELECT status, coalesce(team_id, ''),
                         coalesce(stripe_customer_id, ''), currency, 1
                  FROM new_rows) x));
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
    DELETE FROM invoices_team_count;
    RETURN NULL;
END
$$;

CREATE TRIGGER invoices_group_count_truncate AFTER TRUNCATE ON invoices
    FOR EACH STATEMENT EXECUTE FUNCTION invoices_group_count_truncated();

ANALYZE invoices;
