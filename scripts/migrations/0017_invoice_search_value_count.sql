-- 0017: how many invoices hold each customer email and name, kept.
--
-- A page of q (0016's invoices_search_page) counts the invoices the kept
-- emails and names that hold q find by reading them from their index
-- (0014's invoices_email_order, invoices_name_order): a customer's email
-- on 10,010 of 10,000,000 invoices cost an index-only scan of all of them
-- on every page, 6.67 times the unfiltered page (docs/benchmarks.md, "The
-- ninth run").  Now each value's count is kept, changed in the write's
-- transaction as 0006 keeps the counts per team: a page asks for the
-- counts of the values q finds.  A count read so is exact only for the
-- first field that finds anything, as an invoice found by two fields is
-- counted once: when a team's name holds q too, the email's invoices of
-- those teams are left out by reading them, as before (and the name's of
-- those teams or emails).
--
-- The counts are spread over 16 slots (by backend) as 0006's per team, so
-- that writers of one value (one customer's invoices; a name many
-- customers share) do not queue on one row.  A slot may go below zero (a
-- delete in another backend than the insert); the sum is the count.

CREATE TABLE invoices_search_value_count (
    field  "char"    NOT NULL CHECK (field IN ('e', 'n')),
    value  text      NOT NULL,
    slot   smallint  NOT NULL CHECK (slot BETWEEN 0 AND 15),
    n      bigint    NOT NULL,
    PRIMARY KEY (field, value, slot)
);

-- A statement's change of the counts, one upsert per value touched, in key
-- order: two writers lock the rows they share in the same order, so they
-- may wait for each other but never deadlock.
CREATE FUNCTION invoices_search_value_counted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO invoices_search_value_count AS c
        SELECT x.field, x.value, pg_backend_pid() % 16, count(*)
        FROM new_rows r,
             LATERAL (VALUES ('e'::"char", r.customer_email),
                             ('n'::"char", r.customer_name)) x (field, value)
        WHERE x.value IS NOT NULL
        GROUP BY 1, 2 ORDER BY 1, 2
        ON CONFLICT (field, value, slot) DO UPDATE SET n = c.n + excluded.n;
    ELSE
        INSERT INTO invoices_search_value_count AS c
        SELECT x.field, x.value, pg_backend_pid() % 16, -count(*)
        FROM old_rows r,
             LATERAL (VALUES ('e'::"char", r.customer_email),
                             ('n'::"char", r.customer_name)) x (field, value)
        WHERE x.value IS NOT NULL
        GROUP BY 1, 2 ORDER BY 1, 2
        ON CONFLICT (field, value, slot) DO UPDATE SET n = c.n + excluded.n;
    END IF;

    RETURN NULL;
END
$$;

CREATE TRIGGER invoices_search_value_count_insert AFTER INSERT ON invoices
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION invoices_search_value_counted();

CREATE TRIGGER invoices_search_value_count_delete AFTER DELETE ON invoices
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION invoices_search_value_counted();

-- an update of a row's email or name (0014's row trigger, limited to
-- those): the old values count one less, the new ones one more, and the
-- new ones are kept
CREATE OR REPLACE FUNCTION invoices_search_value_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO invoices_search_value_count AS c
    SELECT x.field, x.value, pg_backend_pid() % 16, sum(x.d)
    FROM (VALUES ('e'::"char", OLD.customer_email, -1),
                 ('n'::"char", OLD.customer_name, -1),
                 ('e'::"char", NEW.customer_email, 1),
                 ('n'::"char", NEW.customer_name, 1)) x (field, value, d)
    WHERE x.value IS NOT NULL
    GROUP BY 1, 2 HAVING sum(x.d) <> 0 ORDER BY 1, 2
    ON CONFLICT (field, value, slot) DO UPDATE SET n = c.n + excluded.n;

    INSERT INTO invoices_search_value (field, value)
    SELECT x.field, x.value
    FROM (VALUES ('e'::"char", NEW.customer_email),
                 ('n'::"char", NEW.customer_name)) x (field, value)
    WHERE x.value IS NOT NULL
    ORDER BY 1, 2
    ON CONFLICT DO NOTHING;

    RETURN NULL;
END
$$;

CREATE FUNCTION invoices_search_value_truncated() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM invoices_search_value_count;
    RETURN NULL;
END
$$;

CREATE TRIGGER invoices_search_value_count_truncate AFTER TRUNCATE ON invoices
    FOR EACH STATEMENT EXECUTE FUNCTION invoices_search_value_truncated();

-- 0006's count per customer (and status, team, currency) is one row with
-- no slots: every writer of that customer wants it, and holds it until
-- commit once taken.  Triggers fire in name order, and its fired second,
-- so every count after it (0012's, 0014's values, the counts above)
-- lengthened that wait for all of them: with the bench's one customer,
-- the counts above cost the webhook a sixth of its throughput there.  Its
-- triggers are renamed to fire last; with that, the webhook with the
-- counts above is as fast as without them, or faster (docs/benchmarks.md,
-- "The tenth run").
ALTER TRIGGER invoices_group_count_insert ON invoices
    RENAME TO invoices_tail_group_count_insert;
ALTER TRIGGER invoices_group_count_update ON invoices
    RENAME TO invoices_tail_group_count_update;
ALTER TRIGGER invoices_group_count_delete ON invoices
    RENAME TO invoices_tail_group_count_delete;

-- no write may run while the starting counts are taken
LOCK TABLE invoices IN SHARE MODE;

INSERT INTO invoices_search_value_count
SELECT 'e', customer_email, 0, count(*) FROM invoices
WHERE customer_email IS NOT NULL GROUP BY 2
UNION ALL
SELECT 'n', customer_name, 0, count(*) FROM invoices
WHERE customer_name IS NOT NULL GROUP BY 2;

-- How many invoices the teams, emails and names that hold q find, each
-- invoice once; the number's and the Stripe id's finds are counted by the
-- page's own statement, which reads them anyway.  Each invoice a value
-- finds has that value: only the fields before it need asking.  Whether
-- an invoice's field is in a list is asked of a hash of the list (IN a
-- subquery), not along it (= ANY): a broad q finds thousands of values,
-- and their invoices are a good part of the table.
CREATE FUNCTION invoices_search_value_total(v invoices_search_parts)
RETURNS bigint
LANGUAGE plpgsql STABLE STRICT AS $$
DECLARE
    v_t  boolean := cardinality(v.teams) > 0;
    v_e  boolean := cardinality(v.emails) > 0;
    v_m  boolean := cardinality(v.names) > 0;
    v_n  bigint := 0;
    v_c  bigint;
BEGIN
    IF v_t THEN
        SELECT coalesce(sum(c.n), 0) INTO v_n FROM invoices_team_count c
        WHERE c.team_key = ANY (v.teams::text[]);
    END IF;

    IF v_e AND NOT v_t THEN
        SELECT coalesce(sum(c.n), 0) INTO v_c
        FROM invoices_search_value_count c
        WHERE c.field = 'e' AND c.value = ANY (v.emails);
        v_n := v_n + v_c;
    ELSIF v_e THEN
        SELECT count(*) INTO v_c FROM invoices i
        WHERE i.customer_email = ANY (v.emails)
          AND NOT coalesce(i.team_id IN (SELECT unnest(v.teams)), false);
        v_n := v_n + v_c;
    END IF;

    IF v_m AND NOT (v_t OR v_e) THEN
        SELECT coalesce(sum(c.n), 0) INTO v_c
        FROM invoices_search_value_count c
        WHERE c.field = 'n' AND c.value = ANY (v.names);
        v_n := v_n + v_c;
    ELSIF v_m THEN
        SELECT count(*) INTO v_c FROM invoices i
        WHERE i.customer_name = ANY (v.names)
          AND NOT coalesce(i.team_id IN (SELECT unnest(v.teams))
                           OR i.customer_email IN (SELECT unnest(v.emails)),
                           false);
        v_n := v_n + v_c;
    END IF;

    RETURN v_n;
END
$$;

-- 0016's page, its count of what the teams, emails and names find taken
-- from the function above; the rest as it was (without parallel workers
-- and JIT: see 0016)
CREATE OR REPLACE FUNCTION invoices_search_page(p_q text, p_rows bigint,
                                                p_at timestamptz,
                                                p_id char(24),
                                                p_up boolean)
RETURNS TABLE (sort_at timestamptz, id char(24), n bigint)
LANGUAGE plpgsql STABLE ROWS 100 SET plan_cache_mode = force_generic_plan
SET max_parallel_workers_per_gather = 0 SET jit = off
AS $$
DECLARE
    v      invoices_search_parts := invoices_search_parts(p_q);
    v_n    bigint := invoices_search_value_total(v);
    -- Stripe's created is never infinite: no cursor is one past every row
    v_at   timestamptz := coalesce(p_at, CASE WHEN p_up
                                              THEN '-infinity'::timestamptz
                                              ELSE 'infinity' END);
    v_id   char(24) := coalesce(p_id, '');
BEGIN
    -- The page: the first p_rows of each walk, each invoice once (UNION),
    -- the first p_rows of those; the number's and the Stripe id's finds
    -- are read once, for the page and for the count of those no value
    -- found (a NULL field finds nothing: coalesce), the Stripe id's
    -- without those the number finds (each once without a hash of them
    -- all: q may find every invoice by both).  The two directions differ
    -- only in their comparisons and orders.
    IF p_up THEN
        RETURN QUERY
            WITH f AS MATERIALIZED (
                SELECT m.sort_at, m.id,
                       coalesce(m.team_id IN (SELECT unnest(v.teams))
                                OR m.customer_email
                                   IN (SELECT unnest(v.emails))
                                OR m.customer_name
                                   IN (SELECT unnest(v.names)),
                                false) AS seen
                FROM (SELECT i.stripe_created_at AS sort_at, i.id,
                             i.team_id, i.customer_email, i.customer_name
                      FROM invoices i
                      WHERE i.number ILIKE v.number
                        AND lower(i.number) LIKE v.low_like
                      UNION ALL
                      SELECT i.stripe_created_at, i.id, i.team_id,
                             i.customer_email, i.customer_name
                      FROM invoices i
                      WHERE invoices_number_grams(i.number) @> v.number_gram
                        AND lower(i.number) LIKE v.low_like
                      UNION ALL
                      SELECT i.stripe_created_at, i.id, i.team_id,
                             i.customer_email, i.customer_name
                      FROM invoices i
                      WHERE i.stripe_invoice_id ILIKE v.invoice
                        AND lower(i.stripe_invoice_id) LIKE v.low_like
                        AND NOT coalesce(lower(i.number) LIKE v.low_like,
                                         false)) m)
            (SELECT w.sort_at, w.id, NULL::bigint FROM (
                SELECT x.sort_at, x.id
                FROM unnest(v.teams) u (value) CROSS JOIN LATERAL (
                    SELECT i.stripe_created_at AS sort_at, i.id
                    FROM invoices i
                    WHERE i.team_id = u.value
                      AND (i.stripe_created_at, i.id) > (v_at, v_id)
                    ORDER BY i.stripe_created_at, i.id
                    LIMIT p_rows) x
                UNION
                SELECT x.sort_at, x.id
                FROM unnest(v.emails) u (value) CROSS JOIN LATERAL (
                    SELECT i.stripe_created_at AS sort_at, i.id
                    FROM invoices i
                    WHERE i.customer_email = u.value
                      AND (i.stripe_created_at, i.id) > (v_at, v_id)
                    ORDER BY i.stripe_created_at, i.id
                    LIMIT p_rows) x
                UNION
                SELECT x.sort_at, x.id
                FROM unnest(v.names) u (value) CROSS JOIN LATERAL (
                    SELECT i.stripe_created_at AS sort_at, i.id
                    FROM invoices i
                    WHERE i.customer_name = u.value
                      AND (i.stripe_created_at, i.id) > (v_at, v_id)
                    ORDER BY i.stripe_created_at, i.id
                    LIMIT p_rows) x
                UNION
                (SELECT f.sort_at, f.id FROM f
                 WHERE (f.sort_at, f.id) > (v_at, v_id)
                 ORDER BY f.sort_at, f.id LIMIT p_rows)) w
             ORDER BY w.sort_at, w.id LIMIT p_rows)
            UNION ALL
            SELECT NULL, NULL, v_n + count(*) FROM f WHERE NOT f.seen;
    ELSE
        RETURN QUERY
            WITH f AS MATERIALIZED (
                SELECT m.sort_at, m.id,
                       coalesce(m.team_id IN (SELECT unnest(v.teams))
                                OR m.customer_email
                                   IN (SELECT unnest(v.emails))
                                OR m.customer_name
                                   IN (SELECT unnest(v.names)),
                                false) AS seen
                FROM (SELECT i.stripe_created_at AS sort_at, i.id,
                             i.team_id, i.customer_email, i.customer_name
                      FROM invoices i
                      WHERE i.number ILIKE v.number
                        AND lower(i.number) LIKE v.low_like
                      UNION ALL
                      SELECT i.stripe_created_at, i.id, i.team_id,
                             i.customer_email, i.customer_name
                      FROM invoices i
                      WHERE invoices_number_grams(i.number) @> v.number_gram
                        AND lower(i.number) LIKE v.low_like
                      UNION ALL
                      SELECT i.stripe_created_at, i.id, i.team_id,
                             i.customer_email, i.customer_name
                      FROM invoices i
                      WHERE i.stripe_invoice_id ILIKE v.invoice
                        AND lower(i.stripe_invoice_id) LIKE v.low_like
                        AND NOT coalesce(lower(i.number) LIKE v.low_like,
                                         false)) m)
            (SELECT w.sort_at, w.id, NULL::bigint FROM (
                SELECT x.sort_at, x.id
                FROM unnest(v.teams) u (value) CROSS JOIN LATERAL (
                    SELECT i.stripe_created_at AS sort_at, i.id
                    FROM invoices i
                    WHERE i.team_id = u.value
                      AND (i.stripe_created_at, i.id) < (v_at, v_id)
                    ORDER BY i.stripe_created_at DESC, i.id DESC
                    LIMIT p_rows) x
                UNION
                SELECT x.sort_at, x.id
                FROM unnest(v.emails) u (value) CROSS JOIN LATERAL (
                    SELECT i.stripe_created_at AS sort_at, i.id
                    FROM invoices i
                    WHERE i.customer_email = u.value
                      AND (i.stripe_created_at, i.id) < (v_at, v_id)
                    ORDER BY i.stripe_created_at DESC, i.id DESC
                    LIMIT p_rows) x
                UNION
                SELECT x.sort_at, x.id
                FROM unnest(v.names) u (value) CROSS JOIN LATERAL (
                    SELECT i.stripe_created_at AS sort_at, i.id
                    FROM invoices i
                    WHERE i.customer_name = u.value
                      AND (i.stripe_created_at, i.id) < (v_at, v_id)
                    ORDER BY i.stripe_created_at DESC, i.id DESC
                    LIMIT p_rows) x
                UNION
                (SELECT f.sort_at, f.id FROM f
                 WHERE (f.sort_at, f.id) < (v_at, v_id)
                 ORDER BY f.sort_at DESC, f.id DESC LIMIT p_rows)) w
             ORDER BY w.sort_at DESC, w.id DESC LIMIT p_rows)
            UNION ALL
            SELECT NULL, NULL, v_n + count(*) FROM f WHERE NOT f.seen;
    END IF;
END
$$;

ANALYZE invoices_search_value_count;
