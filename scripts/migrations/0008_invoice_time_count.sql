-- 0008: the exact count of a createdAt range without reading its rows
-- (docs/benchmarks.md, "Finding invoices").
--
-- Counts per day, hour and minute of createdAt (UTC, from the epoch), kept
-- in the same transaction as every write, like the counts of 0003 and 0006,
-- in 16 slots per bucket (by backend) so that concurrent writers of the
-- same minute do not queue on one row.  A range counts its whole days from
-- the day buckets, the whole hours at either end from the hour buckets,
-- the whole minutes from the minute buckets, and only the seconds left at
-- either end (under a minute each) from the rows themselves: a day's range
-- reads a few dozen buckets instead of its 86,400 rows at one a second.

CREATE TABLE invoices_time_count (
    width  integer      NOT NULL CHECK (width IN (60, 3600, 86400)),
    start  timestamptz  NOT NULL,
    slot   smallint     NOT NULL CHECK (slot BETWEEN 0 AND 15),
    n      bigint       NOT NULL,
    PRIMARY KEY (width, start, slot)
);

-- the start of the bucket of width w (seconds) that holds t; infinity as is
CREATE FUNCTION invoices_time_floor(t timestamptz, w integer)
RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN isfinite(t)
                THEN date_bin(w * interval '1 second', t,
                              timestamptz 'epoch')
                ELSE t END
$$;

-- the start of the first bucket of width w at or after t
CREATE FUNCTION invoices_time_ceil(t timestamptz, w integer)
RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN invoices_time_floor(t, w) < t
                THEN invoices_time_floor(t, w) + w * interval '1 second'
                ELSE t END
$$;

-- A statement's change: +1 per row come, -1 per row gone, one upsert per
-- bucket touched, in key order (two writers lock the rows they share in
-- the same order: they may wait, never deadlock).  An update that keeps
-- createdAt nets to nothing and locks no row.  The transition tables are
-- read in place: passing them on in arrays cost about a third of the
-- webhook's throughput in pgbench (docs/benchmarks.md).
CREATE VIEW invoices_time_widths (width) AS VALUES (60), (3600), (86400);

CREATE FUNCTION invoices_time_count_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO invoices_time_count AS t
        SELECT w.width, invoices_time_floor(c.stripe_created_at, w.width),
               pg_backend_pid() % 16, count(*)
        FROM new_rows c CROSS JOIN invoices_time_widths w
        GROUP BY 1, 2 ORDER BY 1, 2
        ON CONFLICT (width, start, slot) DO UPDATE SET n = t.n + excluded.n;

    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO invoices_time_count AS t
        SELECT w.width, invoices_time_floor(c.stripe_created_at, w.width),
               pg_backend_pid() % 16, -count(*)
        FROM old_rows c CROSS JOIN invoices_time_widths w
        GROUP BY 1, 2 ORDER BY 1, 2
        ON CONFLICT (width, start, slot) DO UPDATE SET n = t.n + excluded.n;

    ELSE
        INSERT INTO invoices_time_count AS t
        SELECT w.width, invoices_time_floor(c.at, w.width),
               pg_backend_pid() % 16, sum(c.d)
        FROM (SELECT stripe_created_at AS at, -1 AS d FROM old_rows
              UNION ALL
              SELECT stripe_created_at, 1 FROM new_rows) c
        CROSS JOIN invoices_time_widths w
        GROUP BY 1, 2 HAVING sum(c.d) <> 0 ORDER BY 1, 2
        ON CONFLICT (width, start, slot) DO UPDATE SET n = t.n + excluded.n;
    END IF;

    RETURN NULL;
END
$$;

CREATE TRIGGER invoices_time_count_insert AFTER INSERT ON invoices
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION invoices_time_count_changed();

CREATE TRIGGER invoices_time_count_update AFTER UPDATE ON invoices
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION invoices_time_count_changed();

CREATE TRIGGER invoices_time_count_delete AFTER DELETE ON invoices
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION invoices_time_count_changed();

CREATE FUNCTION invoices_time_count_truncated() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM invoices_time_count;
    RETURN NULL;
END
$$;

CREATE TRIGGER invoices_time_count_truncate AFTER TRUNCATE ON invoices
    FOR EACH STATEMENT EXECUTE FUNCTION invoices_time_count_truncated();

-- no write may run while the starting counts are taken
LOCK TABLE invoices IN SHARE MODE;

INSERT INTO invoices_time_count
SELECT w.width, invoices_time_floor(i.stripe_created_at, w.width), 0, count(*)
FROM invoices i CROSS JOIN invoices_time_widths w
GROUP BY 1, 2;

-- The number of invoices with p_from <= createdAt < p_to, NULL for no
-- bound, in the caller's snapshot (a STABLE function's queries take it).
-- [a_m, b_m) is the range's whole minutes, [a_h, b_h) its whole hours
-- within them, [a_d, b_d) its whole days within those; a level with none
-- collapses to a point inside the level below, so that the seven parts
-- never overlap and leave no gap.  Each part is one range of one index.
CREATE FUNCTION invoices_created_count(p_from timestamptz, p_to timestamptz)
RETURNS bigint
LANGUAGE plpgsql STABLE AS $$
DECLARE
    lo   timestamptz := coalesce(p_from, '-infinity');
    hi   timestamptz := coalesce(p_to, 'infinity');
    a_m  timestamptz := invoices_time_ceil(lo, 60);
    b_m  timestamptz := invoices_time_floor(hi, 60);
    a_h  timestamptz := invoices_time_ceil(lo, 3600);
    b_h  timestamptz := invoices_time_floor(hi, 3600);
    a_d  timestamptz := invoices_time_ceil(lo, 86400);
    b_d  timestamptz := invoices_time_floor(hi, 86400);
BEGIN
    IF lo >= hi THEN
        RETURN 0;
    END IF;

    IF a_m >= b_m THEN
        a_m := lo;
        b_m := lo;
    END IF;

    IF a_h >= b_h THEN
        a_h := a_m;
        b_h := a_m;
    END IF;

    IF a_d >= b_d THEN
        a_d := a_h;
        b_d := a_h;
    END IF;

    RETURN (SELECT coalesce(sum(n), 0) FROM invoices_time_count
            WHERE width = 86400 AND start >= a_d AND start < b_d)
         + (SELECT coalesce(sum(n), 0) FROM invoices_time_count
            WHERE width = 3600 AND start >= a_h AND start < a_d)
         + (SELECT coalesce(sum(n), 0) FROM invoices_time_count
            WHERE width = 3600 AND start >= b_d AND start < b_h)
         + (SELECT coalesce(sum(n), 0) FROM invoices_time_count
            WHERE width = 60 AND start >= a_m AND start < a_h)
         + (SELECT coalesce(sum(n), 0) FROM invoices_time_count
            WHERE width = 60 AND start >= b_h AND start < b_m)
         + (SELECT count(*) FROM invoices
            WHERE stripe_created_at >= lo AND stripe_created_at < a_m)
         + (SELECT count(*) FROM invoices
            WHERE stripe_created_at >= b_m AND stripe_created_at < hi);
END
$$;

ANALYZE invoices_time_count;
