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
-- the rows themselves.  A bucket is named by its start; the bounds of a
-- range are numerics, so that an unbounded end is -Infinity or Infinity.
--
-- The page of a narrow amount or dueDate range with no other filter
-- (ngx_http_invoices_query.c) walks each bucket of a coarse key (the
-- amount's thousands, the due date's hour) in list order, each walk
-- stopping after a page, and merges the walks: the two indexes below.

CREATE TABLE invoices_range_count (
    field  "char"    NOT NULL CHECK (field IN ('c', 'd', 'a')),
    width  integer   NOT NULL CHECK (width > 0),
    start  bigint    NOT NULL,
    slot   smallint  NOT NULL CHECK (slot BETWEEN 0 AND 15),
    n      bigint    NOT NULL,
    PRIMARY KEY (field, width, start, slot)
);

-- The buckets a row is counted in: each field's widths, finest first,
-- by its start (createdAt and dueDate: Stripe's Unix seconds, never
-- infinite; an infinite one would be in no bucket).  The only place that
-- names the widths.  Plain built-in arithmetic, inlined where it is used:
-- the trigger runs in every write's transaction, and a helper function
-- of SQL called per bucket made inserts 7% slower (docs/benchmarks.md).
CREATE FUNCTION invoices_range_buckets(p_created timestamptz,
                                       p_due timestamptz, p_amount bigint)
RETURNS TABLE (field "char", width integer, start bigint)
LANGUAGE sql STABLE AS $$
    SELECT * FROM (VALUES
        ('c'::"char", 60, CASE WHEN isfinite(p_created) THEN
            (floor(date_part('epoch', p_created) / 60) * 60)::bigint END),
        ('c', 3600, CASE WHEN isfinite(p_created) THEN
            (floor(date_part('epoch', p_created) / 3600) * 3600)::bigint END),
        ('c', 86400, CASE WHEN isfinite(p_created) THEN
            (floor(date_part('epoch', p_created) / 86400) * 86400)::bigint END),
        ('d', 60, CASE WHEN isfinite(p_due) THEN
            (floor(date_part('epoch', p_due) / 60) * 60)::bigint END),
        ('d', 3600, CASE WHEN isfinite(p_due) THEN
            (floor(date_part('epoch', p_due) / 3600) * 3600)::bigint END),
        ('d', 86400, CASE WHEN isfinite(p_due) THEN
            (floor(date_part('epoch', p_due) / 86400) * 86400)::bigint END),
        ('a', 100, p_amount - ((p_amount % 100) + 100) % 100),
        ('a', 10000, p_amount - ((p_amount % 10000) + 10000) % 10000),
        ('a', 1000000, p_amount - ((p_amount % 1000000) + 1000000) % 1000000)
    ) b (field, width, start)
    WHERE b.start IS NOT NULL
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
        SELECT b.field, b.width, b.start, pg_backend_pid() % 16, count(*)
        FROM new_rows c
        CROSS JOIN LATERAL invoices_range_buckets(c.stripe_created_at,
                                                  c.due_date, c.amount) b
        GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
        ON CONFLICT (field, width, start, slot)
        DO UPDATE SET n = t.n + excluded.n;

    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO invoices_range_count AS t
        SELECT b.field, b.width, b.start, pg_backend_pid() % 16, -count(*)
        FROM old_rows c
        CROSS JOIN LATERAL invoices_range_buckets(c.stripe_created_at,
                                                  c.due_date, c.amount) b
        GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
        ON CONFLICT (field, width, start, slot)
        DO UPDATE SET n = t.n + excluded.n;

    ELSE
        INSERT INTO invoices_range_count AS t
        SELECT b.field, b.width, b.start, pg_backend_pid() % 16, sum(c.d)
        FROM (SELECT stripe_created_at, due_date, amount, -1 AS d
              FROM old_rows
              UNION ALL
              SELECT stripe_created_at, due_date, amount, 1 FROM new_rows) c
        CROSS JOIN LATERAL invoices_range_buckets(c.stripe_created_at,
                                                  c.due_date, c.amount) b
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
SELECT b.field, b.width, b.start, 0, count(*)
FROM invoices i
CROSS JOIN LATERAL invoices_range_buckets(i.stripe_created_at, i.due_date,
                                          i.amount) b
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
    w   integer;
    ca  numeric;
    cb  numeric;
    r   bigint[];             -- the bigint starts [ca, a, b, cb], clamped
BEGIN
    kept := 0;

    IF p_lo >= p_hi THEN
        RETURN;
    END IF;

    FOR w IN SELECT DISTINCT x.width
             FROM invoices_range_buckets(now(), now(), 0) x
             WHERE x.field = p_field ORDER BY 1 DESC
    LOOP
        ca := ceil(p_lo / w) * w;
        cb := floor(p_hi / w) * w;

        IF a IS NULL AND ca >= cb THEN
            CONTINUE;
        END IF;

        r := ARRAY[greatest(least(ca, 9e18), -9e18),
                   greatest(least(coalesce(a, cb), 9e18), -9e18),
                   greatest(least(coalesce(b, cb), 9e18), -9e18),
                   greatest(least(cb, 9e18), -9e18)]::bigint[];

        -- the whole buckets of this width: [ca, cb) the first time, else
        -- the ones around what the coarser widths took, [ca, a) and [b, cb)
        kept := kept + (SELECT coalesce(sum(n), 0) FROM invoices_range_count
                        WHERE field = p_field AND width = w
                          AND start >= r[1] AND start < r[2])
                     + (SELECT coalesce(sum(n), 0) FROM invoices_range_count
                        WHERE field = p_field AND width = w
                          AND start >= r[3] AND start < r[4]);
        a := ca;
        b := cb;
    END LOOP;
END
$$;

-- The number of invoices with p_from <= createdAt ('c') or dueDate ('d')
-- < p_to, NULL for no bound (an invoice without a due date is in no range
-- of it).
CREATE FUNCTION invoices_time_range_count(p_field "char",
                                          p_from timestamptz,
                                          p_to timestamptz)
RETURNS bigint
LANGUAGE plpgsql STABLE AS $$
DECLARE
    k    record;
    lo   timestamptz[];
    hi   timestamptz[];
    n    bigint := 0;
    i    integer;
BEGIN
    IF p_from >= p_to THEN
        RETURN 0;
    END IF;

    SELECT * INTO k FROM invoices_range_kept(p_field,
        coalesce(extract(epoch FROM p_from), '-Infinity'),
        coalesce(extract(epoch FROM p_to), 'Infinity'));

    -- the parts left (under a minute each), counted from the rows through
    -- the list's index, or 0009's index on the due date
    IF k.a IS NULL THEN
        lo := ARRAY[p_from];
        hi := ARRAY[p_to];
    ELSE
        lo := ARRAY[p_from, to_timestamp(k.b::float8)];
        hi := ARRAY[to_timestamp(k.a::float8), p_to];
    END IF;

    FOR i IN 1 .. array_length(lo, 1) LOOP
        IF lo[i] < hi[i] AND p_field = 'c' THEN     -- (NULL: an open end)
            n := n + (SELECT count(*) FROM invoices
                      WHERE stripe_created_at >= lo[i]
                        AND stripe_created_at < hi[i]);
        ELSIF lo[i] < hi[i] THEN
            n := n + (SELECT count(*) FROM invoices
                      WHERE due_date >= lo[i] AND due_date < hi[i]);
        END IF;
    END LOOP;

    RETURN k.kept + n;
END
$$;

-- what 0008's function of the same name answered
CREATE OR REPLACE FUNCTION invoices_created_count(p_from timestamptz,
                                                  p_to timestamptz)
RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT invoices_time_range_count('c', p_from, p_to)
$$;

CREATE FUNCTION invoices_due_count(p_from timestamptz, p_to timestamptz)
RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT invoices_time_range_count('d', p_from, p_to)
$$;

-- The same for p_from <= amount < p_to.
CREATE FUNCTION invoices_amount_count(p_from bigint, p_to bigint)
RETURNS bigint
LANGUAGE plpgsql STABLE AS $$
DECLARE
    k    record;
    lo   bigint[];
    hi   bigint[];
    n    bigint := 0;
    i    integer;
BEGIN
    IF p_from >= p_to THEN
        RETURN 0;
    END IF;

    SELECT * INTO k FROM invoices_range_kept('a',
        coalesce(p_from::numeric, '-Infinity'),
        coalesce(p_to::numeric, 'Infinity'));

    -- the parts left, counted from the rows through the amount's index,
    -- which is by thousands (below)
    IF k.a IS NULL THEN
        lo := ARRAY[p_from];
        hi := ARRAY[p_to];
    ELSE
        lo := ARRAY[p_from, CASE WHEN p_to IS NOT NULL THEN k.b::bigint END];
        hi := ARRAY[CASE WHEN p_from IS NOT NULL THEN k.a::bigint END, p_to];
    END IF;

    FOR i IN 1 .. array_length(lo, 1) LOOP
        IF lo[i] < hi[i] THEN               -- (NULL: an open end)
            n := n + (SELECT count(*) FROM invoices
                      WHERE amount >= lo[i] AND amount < hi[i]
                        AND amount / 1000 >= lo[i] / 1000
                        AND amount / 1000 <= hi[i] / 1000);
        END IF;
    END LOOP;

    RETURN k.kept + n;
END
$$;

-- The walks' indexes (built-in expressions only: an expression of a SQL
-- function would run that function's executor for every row written).
-- The amount's replaces 0009's index on the amount (each index costs
-- every write): a condition on the amount is given with its thousands too
-- (ngx_http_invoices_query.c, and the count above), so that it serves it
-- as well; the part of an amount's count read from the rows lies within a
-- hundred of a bound that is not a multiple of a hundred, and reads that
-- bound's thousand.  The due date keeps 0009's index beside its walk's:
-- the part of its count read from the rows (under a minute at either end,
-- a bound being any millisecond) would read a whole hour of the walk's.
CREATE INDEX invoices_due_date_walk ON invoices
    (date_bin(interval '1 hour', due_date, timestamptz 'epoch') DESC,
     stripe_created_at DESC, id DESC)
    INCLUDE (due_date);
CREATE INDEX invoices_amount_walk ON invoices
    ((amount / 1000) DESC, stripe_created_at DESC, id DESC)
    INCLUDE (amount);
DROP INDEX invoices_amount_order;

ANALYZE invoices_range_count;
ANALYZE invoices;
