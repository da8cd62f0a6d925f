-- 0012: a range of amount or dueDate found like a range of createdAt:
-- its exact count from kept counts, its page from a few short walks
-- (docs/benchmarks.md, "Finding invoices").
--
-- The counts of 0008 (createdAt per day, hour and minute) become one
-- table for the three ranges, each with its own widths ("field": 'c'
-- createdAt and 'd' dueDate in Unix seconds, 'a' amount in its smallest
-- unit), each coarser width a multiple of the finer, kept in the same
-- transaction as every write in 16 slots per bucket as before.  A range
-- counts its whole coarsest buckets, then the whole finer ones at either
-- end, and only what is left at either end (under the finest width) from
-- the rows themselves.  A bucket is named by its start, a numeric, so that
-- an unbounded end (-Infinity, Infinity) needs no special case.
--
-- The page of a narrow amount or dueDate range with no other filter
-- (ngx_http_invoices_query.c) walks each bucket of a coarse key (the
-- amount's thousands, the due date's hour) in list order, each walk
-- stopping after a page, and merges the walks: the two indexes below.

CREATE TABLE invoices_range_count (
    field  "char"    NOT NULL CHECK (field IN ('c', 'd', 'a')),
    width  bigint    NOT NULL CHECK (width > 0),
    start  numeric   NOT NULL,
    slot   smallint  NOT NULL CHECK (slot BETWEEN 0 AND 15),
    n      bigint    NOT NULL,
    PRIMARY KEY (field, width, start, slot)
);

CREATE VIEW invoices_range_widths (field, width) AS VALUES
    ('c'::"char", 60::bigint), ('c', 3600), ('c', 86400), ('c', 2592000),
    ('d', 60), ('d', 3600), ('d', 86400), ('d', 2592000),
    ('a', 100), ('a', 10000), ('a', 1000000), ('a', 100000000);

-- the value of each field of a row: what a bucket is taken of
CREATE FUNCTION invoices_range_values(p_created timestamptz,
                                      p_due timestamptz, p_amount bigint)
RETURNS TABLE (field "char", v numeric)
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT 'c'::"char", extract(epoch FROM p_created)
    UNION ALL
    SELECT 'd', extract(epoch FROM p_due) WHERE p_due IS NOT NULL
    UNION ALL
    SELECT 'a', p_amount::numeric
$$;

-- A statement's change: +1 per row come, -1 per row gone, one upsert per
-- bucket touched, in key order (two writers lock the rows they share in
-- the same order: they may wait, never deadlock).  An update that keeps
-- the three values nets to nothing and locks no row.  The transition
-- tables are read in place (0008 says why).
CREATE FUNCTION invoices_range_count_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO invoices_range_count AS t
        SELECT v.field, w.width, floor(v.v / w.width) * w.width,
               pg_backend_pid() % 16, count(*)
        FROM new_rows c
        CROSS JOIN LATERAL invoices_range_values(c.stripe_created_at,
                                                 c.due_date, c.amount) v
        JOIN invoices_range_widths w ON w.field = v.field
        GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
        ON CONFLICT (field, width, start, slot)
        DO UPDATE SET n = t.n + excluded.n;

    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO invoices_range_count AS t
        SELECT v.field, w.width, floor(v.v / w.width) * w.width,
               pg_backend_pid() % 16, -count(*)
        FROM old_rows c
        CROSS JOIN LATERAL invoices_range_values(c.stripe_created_at,
                                                 c.due_date, c.amount) v
        JOIN invoices_range_widths w ON w.field = v.field
        GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
        ON CONFLICT (field, width, start, slot)
        DO UPDATE SET n = t.n + excluded.n;

    ELSE
        INSERT INTO invoices_range_count AS t
        SELECT v.field, w.width, floor(v.v / w.width) * w.width,
               pg_backend_pid() % 16, sum(c.d)
        FROM (SELECT stripe_created_at, due_date, amount, -1 AS d
              FROM old_rows
              UNION ALL
              SELECT stripe_created_at, due_date, amount, 1 FROM new_rows) c
        CROSS JOIN LATERAL invoices_range_values(c.stripe_created_at,
                                                 c.due_date, c.amount) v
        JOIN invoices_range_widths w ON w.field = v.field
        GROUP BY 1, 2, 3 HAVING sum(c.d) <> 0 ORDER BY 1, 2, 3
        ON CONFLICT (field, width, start, slot)
        DO UPDATE SET n = t.n + excluded.n;
    END IF;

    RETURN NULL;
END
$$;

DROP TRIGGER invoices_time_count_insert ON invoices;
DROP TRIGGER invoices_time_count_update ON invoices;
DROP TRIGGER invoices_time_count_delete ON invoices;
DROP TRIGGER invoices_time_count_truncate ON invoices;
DROP FUNCTION invoices_time_count_changed();
DROP FUNCTION invoices_time_count_truncated();
DROP TABLE invoices_time_count;
DROP VIEW invoices_time_widths;

CREATE TRIGGER invoices_range_count_insert AFTER INSERT ON invoices
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION invoices_range_count_changed();

CREATE TRIGGER invoices_range_count_update AFTER UPDATE ON invoices
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION invoices_range_count_changed();

CREATE TRIGGER invoices_range_count_delete AFTER DELETE ON invoices
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION invoices_range_count_changed();

CREATE FUNCTION invoices_range_count_truncated() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM invoices_range_count;
    RETURN NULL;
END
$$;

CREATE TRIGGER invoices_range_count_truncate AFTER TRUNCATE ON invoices
    FOR EACH STATEMENT EXECUTE FUNCTION invoices_range_count_truncated();

-- no write may run while the starting counts are taken
LOCK TABLE invoices IN SHARE MODE;

INSERT INTO invoices_range_count
SELECT v.field, w.width, floor(v.v / w.width) * w.width, 0, count(*)
FROM invoices i
CROSS JOIN LATERAL invoices_range_values(i.stripe_created_at, i.due_date,
                                         i.amount) v
JOIN invoices_range_widths w ON w.field = v.field
GROUP BY 1, 2, 3;

-- The kept part of the count of p_lo <= value < p_hi (bounds may be
-- infinite): the sum of the whole buckets within it, and [a, b), the part
-- they cover, so that only [p_lo, a) and [b, p_hi) are left to count from
-- the rows (a and b NULL: no whole bucket, everything is left, which
-- only a range bounded at both ends can be).  In the caller's snapshot.
CREATE FUNCTION invoices_range_kept(p_field "char", p_lo numeric,
                                    p_hi numeric,
                                    OUT kept bigint, OUT a numeric,
                                    OUT b numeric)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    w   bigint;
    ca  numeric;
    cb  numeric;
BEGIN
    kept := 0;

    IF p_lo >= p_hi THEN
        RETURN;
    END IF;

    FOR w IN SELECT width FROM invoices_range_widths
             WHERE field = p_field ORDER BY width DESC
    LOOP
        ca := ceil(p_lo / w) * w;
        cb := floor(p_hi / w) * w;

        IF a IS NULL THEN
            IF ca < cb THEN
                kept := kept + (SELECT coalesce(sum(n), 0)
                                FROM invoices_range_count
                                WHERE field = p_field AND width = w
                                  AND start >= ca AND start < cb);
                a := ca;
                b := cb;
            END IF;

        ELSE
            kept := kept + (SELECT coalesce(sum(n), 0)
                            FROM invoices_range_count
                            WHERE field = p_field AND width = w
                              AND start >= ca AND start < a)
                         + (SELECT coalesce(sum(n), 0)
                            FROM invoices_range_count
                            WHERE field = p_field AND width = w
                              AND start >= b AND start < cb);
            a := ca;
            b := cb;
        END IF;
    END LOOP;
END
$$;

-- The number of invoices with p_from <= createdAt < p_to, NULL for no
-- bound (what 0008's function of the same name answered).
CREATE OR REPLACE FUNCTION invoices_created_count(p_from timestamptz,
                                                  p_to timestamptz)
RETURNS bigint
LANGUAGE plpgsql STABLE AS $$
DECLARE
    k  record;
BEGIN
    IF p_from >= p_to THEN
        RETURN 0;
    END IF;

    SELECT * INTO k FROM invoices_range_kept('c',
        coalesce(extract(epoch FROM p_from), '-Infinity'),
        coalesce(extract(epoch FROM p_to), 'Infinity'));

    IF k.a IS NULL THEN
        RETURN (SELECT count(*) FROM invoices
                WHERE stripe_created_at >= p_from
                  AND stripe_created_at < p_to);
    END IF;

    RETURN k.kept
         + CASE WHEN p_from IS NULL THEN 0
           ELSE (SELECT count(*) FROM invoices
                 WHERE stripe_created_at >= p_from
                   AND stripe_created_at < to_timestamp(k.a::float8)) END
         + CASE WHEN p_to IS NULL THEN 0
           ELSE (SELECT count(*) FROM invoices
                 WHERE stripe_created_at >= to_timestamp(k.b::float8)
                   AND stripe_created_at < p_to) END;
END
$$;

-- The same for p_from <= dueDate < p_to (an invoice without one is in no
-- range of it).
CREATE FUNCTION invoices_due_count(p_from timestamptz, p_to timestamptz)
RETURNS bigint
LANGUAGE plpgsql STABLE AS $$
DECLARE
    k  record;
BEGIN
    IF p_from >= p_to THEN
        RETURN 0;
    END IF;

    SELECT * INTO k FROM invoices_range_kept('d',
        coalesce(extract(epoch FROM p_from), '-Infinity'),
        coalesce(extract(epoch FROM p_to), 'Infinity'));

    IF k.a IS NULL THEN
        RETURN (SELECT count(*) FROM invoices
                WHERE due_date >= p_from AND due_date < p_to);
    END IF;

    RETURN k.kept
         + CASE WHEN p_from IS NULL THEN 0
           ELSE (SELECT count(*) FROM invoices
                 WHERE due_date >= p_from
                   AND due_date < to_timestamp(k.a::float8)) END
         + CASE WHEN p_to IS NULL THEN 0
           ELSE (SELECT count(*) FROM invoices
                 WHERE due_date >= to_timestamp(k.b::float8)
                   AND due_date < p_to) END;
END
$$;

-- The same for p_from <= amount < p_to.
CREATE FUNCTION invoices_amount_count(p_from bigint, p_to bigint)
RETURNS bigint
LANGUAGE plpgsql STABLE AS $$
DECLARE
    k  record;
BEGIN
    IF p_from >= p_to THEN
        RETURN 0;
    END IF;

    SELECT * INTO k FROM invoices_range_kept('a',
        coalesce(p_from::numeric, '-Infinity'),
        coalesce(p_to::numeric, 'Infinity'));

    IF k.a IS NULL THEN
        RETURN (SELECT count(*) FROM invoices
                WHERE amount >= p_from AND amount < p_to);
    END IF;

    RETURN k.kept
         + CASE WHEN p_from IS NULL THEN 0
           ELSE (SELECT count(*) FROM invoices
                 WHERE amount >= p_from AND amount < k.a::bigint) END
         + CASE WHEN p_to IS NULL THEN 0
           ELSE (SELECT count(*) FROM invoices
                 WHERE amount >= k.b::bigint AND amount < p_to) END;
END
$$;

-- The walks: the due date's hour (UTC, from the epoch; NULL for none)
CREATE FUNCTION invoices_hour(t timestamptz) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN isfinite(t)
                THEN floor(extract(epoch FROM t) / 3600)::bigint END
$$;

CREATE INDEX invoices_due_date_walk ON invoices
    (invoices_hour(due_date) DESC, stripe_created_at DESC, id DESC)
    INCLUDE (due_date);
CREATE INDEX invoices_amount_walk ON invoices
    ((amount / 1000) DESC, stripe_created_at DESC, id DESC)
    INCLUDE (amount);

ANALYZE invoices_range_count;
ANALYZE invoices;
