-- 0014: q asked field by field (docs/benchmarks.md, "Finding invoices").
--
-- 0006 matched q against one text per invoice (its number, Stripe id,
-- team's name, customer's email and name joined), through one trigram
-- index.  Every invoice q finds there is read from the table to check it,
-- since trigrams never prove a substring: a customer's thousand invoices
-- found by the email cost a thousand table reads for the count, and the
-- trigrams of one field (the digits of a number) met those of another
-- (the digits of a Stripe id) in invoices q does not match.  Now:
--
-- - the team's name: the teams whose name holds q, then their invoices
--   from the team's own index (0006's, (team, createdAt, _id)) alone;
-- - the customer's email and name: their distinct values are kept in
--   invoices_search_value (added in the write's transaction, never
--   removed: a value no invoice holds any longer finds none), each with a
--   trigram index; the values that hold q, then their invoices from an
--   index per field, (value, createdAt, _id), alone;
-- - the number and the Stripe id: a trigram index each, asked for the
--   rarest part of q in that field (the key, as in 0013, now per field),
--   each invoice found checked against the whole of q.
--
-- invoices_search_matches(q) gives (createdAt, _id) of every invoice q
-- matches, the union of the five, from indexes only where the field
-- holds the value whole: for q with other filters, the summary and the
-- export (ngx_http_invoices_query.c).  invoices_search_page() answers a
-- page of q alone (ngx_http_invoices_read.c): a matching team's invoices
-- are counted from the kept counts (0006) and only a page of them read.
-- Matching is ILIKE as PostgreSQL runs it in UTF-8 (both sides in lower
-- case); q never holds a control character, so no match ever spanned two
-- fields of 0006's text: the answers are the same.  The copy of the
-- team's name on each invoice (0006) served q only: it goes, with its
-- triggers and the joined text, so a team's rename no longer rewrites
-- its invoices.

-- the number and the Stripe id
CREATE INDEX invoices_number_search
    ON invoices USING gin (number gin_trgm_ops);
CREATE INDEX invoices_stripe_id_search
    ON invoices USING gin (stripe_invoice_id gin_trgm_ops);

-- the customer's email ('e') and name ('n'), each value once
CREATE TABLE invoices_search_value (
    field  "char"  NOT NULL CHECK (field IN ('e', 'n')),
    value  text    NOT NULL,
    low    text    GENERATED ALWAYS AS (lower(value)) STORED,
    PRIMARY KEY (field, value)
);

CREATE INDEX invoices_search_value_low
    ON invoices_search_value USING gin (low gin_trgm_ops);

CREATE INDEX invoices_email_order
    ON invoices (customer_email, stripe_created_at, id);
CREATE INDEX invoices_name_order
    ON invoices (customer_name, stripe_created_at, id);

-- A statement's new values, in key order: two writers that add the same
-- new values wait for each other (the second adds nothing) and never
-- deadlock.  Nearly every write brings values kept already: a lookup
-- finds that, cheaper than an insert that conflicts (about 5% of a
-- one-row insert's throughput against 7%, docs/benchmarks.md).
CREATE FUNCTION invoices_search_value_add() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM FROM new_rows r
    WHERE (r.customer_email IS NOT NULL
           AND NOT EXISTS (SELECT FROM invoices_search_value v
                           WHERE v.field = 'e' AND v.value = r.customer_email))
       OR (r.customer_name IS NOT NULL
           AND NOT EXISTS (SELECT FROM invoices_search_value v
                           WHERE v.field = 'n' AND v.value = r.customer_name))
    LIMIT 1;

    IF NOT FOUND THEN
        RETURN NULL;
    END IF;

    INSERT INTO invoices_search_value (field, value)
    SELECT DISTINCT x.field, x.value
    FROM new_rows r,
         LATERAL (VALUES ('e'::"char", r.customer_email),
                         ('n'::"char", r.customer_name)) x (field, value)
    WHERE x.value IS NOT NULL
    ORDER BY 1, 2
    ON CONFLICT DO NOTHING;

    RETURN NULL;
END
$$;

CREATE TRIGGER invoices_search_value_insert AFTER INSERT ON invoices
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION invoices_search_value_add();

-- an update, for the rare row whose email or name it changes (a trigger
-- with a transition table cannot be limited to columns)
CREATE FUNCTION invoices_search_value_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
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

CREATE TRIGGER invoices_search_value_update
    AFTER UPDATE OF customer_email, customer_name ON invoices
    FOR EACH ROW
    WHEN (OLD.customer_email IS DISTINCT FROM NEW.customer_email
          OR OLD.customer_name IS DISTINCT FROM NEW.customer_name)
    EXECUTE FUNCTION invoices_search_value_changed();

-- no write may add a value while the existing ones are taken
LOCK TABLE invoices IN SHARE MODE;

INSERT INTO invoices_search_value (field, value)
SELECT 'e', customer_email FROM invoices
WHERE customer_email IS NOT NULL GROUP BY 2
UNION ALL
SELECT 'n', customer_name FROM invoices
WHERE customer_name IS NOT NULL GROUP BY 2;

-- 0006's joined text and the team's name it was made from
ALTER TABLE invoices DROP COLUMN search_text;
DROP TRIGGER teams_renamed ON teams;
DROP FUNCTION invoices_team_renamed();
DROP TRIGGER invoices_team_name ON invoices;
DROP FUNCTION invoices_team_name_set();
ALTER TABLE invoices DROP COLUMN team_name;

-- The sample of 0013, now of the two fields asked by a key: per field,
-- the trigrams of the sampled invoices with the number of invoices that
-- hold each, those held by under a thousandth of the sample or by one
-- only left out (they count as held by none).
DROP FUNCTION invoices_search_key(text);
DROP FUNCTION invoices_search_refresh(interval, integer);
DROP TABLE invoices_search_common;

CREATE TABLE invoices_search_sample (
    one         boolean      PRIMARY KEY DEFAULT true CHECK (one),
    sampled     bigint       NOT NULL,   -- invoices in the sample
    table_rows  bigint       NOT NULL,   -- the table's estimate then
    sampled_at  timestamptz  NOT NULL
);

CREATE TABLE invoices_search_trigram (
    field    text     NOT NULL CHECK (field IN ('number', 'invoice')),
    trigram  text     NOT NULL,
    n        integer  NOT NULL,
    PRIMARY KEY (field, trigram)
);

-- The sample: about p_rows invoices, whole pages at random (cheap at any
-- size), each trigram counted once per invoice (show_trgm: as pg_trgm
-- indexes it); taken again when the last is older than p_max_age, or the
-- table has since doubled or halved (by PostgreSQL's estimate, which
-- autovacuum keeps).  Until the first sample every trigram counts as
-- rare.  The housekeeping timer calls it (ngx_http_invoices_housekeeping.c).
CREATE FUNCTION invoices_search_refresh(p_max_age interval DEFAULT '1 hour',
                                        p_rows integer DEFAULT 30000)
RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_rows  bigint;
    v_pct   float8;
    v_n     bigint;
BEGIN
    -- one sampler at a time (a second then finds the sample fresh); the
    -- keys read on meanwhile
    LOCK TABLE invoices_search_trigram IN SHARE ROW EXCLUSIVE MODE;

    -- -1 before the first VACUUM or ANALYZE
    SELECT greatest(reltuples, 0) INTO v_rows
    FROM pg_class WHERE oid = 'invoices'::regclass;

    IF EXISTS (SELECT 1 FROM invoices_search_sample
               WHERE sampled_at > now() - p_max_age
                 AND v_rows <= 2 * greatest(table_rows, 500)
                 AND v_rows >= table_rows / 2) THEN
        RETURN false;
    END IF;

    v_pct := least(100, 100.0 * p_rows / greatest(v_rows, 1));

    DELETE FROM invoices_search_trigram;

    WITH s AS MATERIALIZED (
        SELECT number, stripe_invoice_id
        FROM invoices TABLESAMPLE SYSTEM (v_pct)
    ), kept AS (
        INSERT INTO invoices_search_trigram (field, trigram, n)
        SELECT f.field, t.trigram, count(*)
        FROM s,
             LATERAL (VALUES ('number', s.number),
                             ('invoice', s.stripe_invoice_id)) f (field, value),
             LATERAL unnest(show_trgm(f.value)) t (trigram)
        GROUP BY 1, 2
        HAVING count(*) >= 2 AND count(*) * 1000 >= (SELECT count(*) FROM s)
    )
    SELECT count(*) INTO v_n FROM s;

    INSERT INTO invoices_search_sample AS c (sampled, table_rows, sampled_at)
    VALUES (v_n, v_rows, now())
    ON CONFLICT (one) DO UPDATE
    SET sampled = EXCLUDED.sampled, table_rows = EXCLUDED.table_rows,
        sampled_at = EXCLUDED.sampled_at;

    RETURN true;
END
$$;

-- The LIKE pattern a field's index is asked for.  If some of q's trigrams
-- are held by no value of the sample (or too few to be kept), the part of
-- q that holds the longest run of them: their lists are short, and
-- reading the others would cost more than it saves.  Else, of the parts
-- of q that hold none of the field's shared trigrams (those in at least a
-- twentieth of the sample, or if no part of three trigrams is left, a
-- fifth: their lists are nearly as long as the table), the one whose
-- rarest trigram is the rarest (what it finds is at most what that
-- trigram finds), then with the most trigrams, then the longest, then
-- the first; q itself when no part holds a trigram.  The trigrams come
-- in the order of their spans (both ends never go down), so the parts
-- are found in one pass: for each end j, the earliest start that leaves
-- out every shared trigram ending by j.  Only a part that cannot grow to
-- the right (q ends, or the next trigram is shared) is weighed: the
-- others lie within it.
CREATE FUNCTION invoices_search_key(p_q text, p_field text) RETURNS text
LANGUAGE plpgsql STABLE STRICT AS $$
DECLARE
    v_a       integer[];
    v_b       integer[];
    v_n       integer[];
    v_sampled bigint;
    v_cut     boolean[];
    v_m       integer;
    v_len     integer := length(p_q);
    v_i       integer := 1;
    v_lo      integer := 1;
    v_hi      integer := 0;
    v_rare    integer;
    v_div     integer;
    v_run     integer := 0;
    v_best    integer := 0;
    v_brare   integer;
    v_from    integer;
    v_to      integer;
BEGIN
    SELECT sampled INTO v_sampled FROM invoices_search_sample;

    -- a lookup per trigram (a join would read the whole table of them)
    SELECT array_agg(t.a ORDER BY t.k), array_agg(t.b ORDER BY t.k),
           array_agg(coalesce((SELECT g.n FROM invoices_search_trigram g
                               WHERE g.field = p_field
                                 AND g.trigram = t.trigram), 0)
                     ORDER BY t.k)
    INTO v_a, v_b, v_n
    FROM invoices_search_trigrams(p_q) WITH ORDINALITY t (trigram, a, b, k);

    v_m := coalesce(cardinality(v_a), 0);

    -- trigrams no sampled value holds (or too few to keep) have short
    -- lists: the longest run of them is read at once, and finds few
    FOR k IN 1 .. v_m LOOP
        v_run := CASE WHEN v_n[k] = 0 THEN v_run + 1 ELSE 0 END;
        IF v_run > v_best THEN
            v_best := v_run;
            v_to := k;
        END IF;
    END LOOP;

    IF v_best > 0 THEN
        v_from := v_a[v_to - v_best + 1];
        RETURN invoices_search_like(substr(p_q, v_from, v_b[v_to] - v_from + 1));
    END IF;

    -- first without the trigrams held by a twentieth of the sample (their
    -- lists cost more to read than they narrow), if that leaves a part of
    -- three trigrams; else without those held by a fifth
    FOREACH v_div IN ARRAY ARRAY[20, 5] LOOP
        v_i := 1;
        v_lo := 1;
        v_hi := 0;
        v_best := 0;

        -- the ends of shared trigrams: where a part stops growing
        v_cut := array_fill(false, ARRAY[v_len + 1]);
        FOR k IN 1 .. v_m LOOP
            IF v_n[k] * v_div >= v_sampled THEN
                v_cut[v_b[k]] := true;
            END IF;
        END LOOP;

        FOR j IN 1 .. v_len LOOP
            WHILE v_hi < v_m AND v_b[v_hi + 1] <= j LOOP
                v_hi := v_hi + 1;
                IF v_n[v_hi] * v_div >= v_sampled THEN
                    v_i := greatest(v_i, v_a[v_hi] + 1);
                END IF;
            END LOOP;

            WHILE v_lo <= v_hi AND v_a[v_lo] < v_i LOOP
                v_lo := v_lo + 1;
            END LOOP;

            CONTINUE WHEN v_hi < v_lo OR (j < v_len AND NOT v_cut[j + 1]);

            v_rare := v_n[v_lo];
            FOR k IN v_lo + 1 .. v_hi LOOP
                v_rare := least(v_rare, v_n[k]);
            END LOOP;

            IF v_best = 0 OR v_rare < v_brare
               OR (v_rare = v_brare
                   AND (v_hi - v_lo + 1 > v_best
                        OR (v_hi - v_lo + 1 = v_best
                            AND j - v_i > v_to - v_from)))
            THEN
                v_best := v_hi - v_lo + 1;
                v_brare := v_rare;
                v_from := v_i;
                v_to := j;
            END IF;
        END LOOP;

        EXIT WHEN v_best >= 3;
    END LOOP;

    IF v_best = 0 THEN
        RETURN invoices_search_like(p_q);
    END IF;

    RETURN invoices_search_like(substr(p_q, v_from, v_to - v_from + 1));
END
$$;

-- What q is asked by, found once per statement: the teams whose name holds
-- it, the kept emails and names that hold it, each field's key, and q's
-- own pattern in lower case
CREATE TYPE invoices_search_parts AS (
    low_like  text,
    teams     char(24)[],
    emails    text[],
    names     text[],
    number    text,
    invoice   text
);

CREATE FUNCTION invoices_search_parts(p_q text) RETURNS invoices_search_parts
LANGUAGE plpgsql STABLE STRICT AS $$
DECLARE
    v  invoices_search_parts;
BEGIN
    v.low_like := lower(invoices_search_like(p_q));
    v.teams := ARRAY(SELECT t.id FROM teams t
                     WHERE lower(t.name) LIKE v.low_like);

    SELECT coalesce(array_agg(x.value) FILTER (WHERE x.field = 'e'), '{}'),
           coalesce(array_agg(x.value) FILTER (WHERE x.field = 'n'), '{}')
    INTO v.emails, v.names
    FROM invoices_search_value x WHERE x.low LIKE v.low_like;

    v.number := invoices_search_key(p_q, 'number');
    v.invoice := invoices_search_key(p_q, 'invoice');

    RETURN v;
END
$$;

-- (createdAt, _id) of the invoices q matches by any field but the team's
-- name; each part from its own index, an empty list finding nothing at
-- once (PL/pgSQL: the plan kept per connection)
CREATE FUNCTION invoices_search_others(p invoices_search_parts)
RETURNS TABLE (sort_at timestamptz, id char(24))
LANGUAGE plpgsql STABLE STRICT ROWS 1000 AS $$
BEGIN
    RETURN QUERY
        SELECT i.stripe_created_at, i.id FROM invoices i
        WHERE i.customer_email = ANY (p.emails)
        UNION
        SELECT i.stripe_created_at, i.id FROM invoices i
        WHERE i.customer_name = ANY (p.names)
        UNION
        SELECT i.stripe_created_at, i.id FROM invoices i
        WHERE i.number ILIKE p.number AND lower(i.number) LIKE p.low_like
        UNION
        SELECT i.stripe_created_at, i.id FROM invoices i
        WHERE i.stripe_invoice_id ILIKE p.invoice
          AND lower(i.stripe_invoice_id) LIKE p.low_like;
END
$$;

-- (createdAt, _id) of every invoice q matches: for q with other filters,
-- the summary and the export (ngx_http_invoices_query.c).  Without JIT:
-- PostgreSQL expects a list of teams to hold most invoices when there are
-- few teams, and would spend ~20 ms compiling the union for it.
CREATE FUNCTION invoices_search_matches(p_q text)
RETURNS TABLE (sort_at timestamptz, id char(24))
LANGUAGE plpgsql STABLE STRICT ROWS 1000 SET jit = off AS $$
DECLARE
    v  invoices_search_parts := invoices_search_parts(p_q);
BEGIN
    RETURN QUERY
        SELECT i.stripe_created_at, i.id FROM invoices i
        WHERE i.team_id = ANY (v.teams)
        UNION
        SELECT o.sort_at, o.id FROM invoices_search_others(v) o;
END
$$;

-- A page of q alone (ngx_http_invoices_read.c): the invoices that may be
-- on it, and the count.  A team whose name holds q may hold a third of
-- the table: its invoices are counted from the kept counts (0006) and
-- only p_rows of them read, the first after the cursor (p_at, p_id; none:
-- NULL) in the direction read (p_up: ending_before's), by the team's own
-- index; every invoice the other fields find that is of none of those
-- teams is given.  The count comes as one more row, with no _id.
CREATE FUNCTION invoices_search_page(p_q text, p_rows bigint,
                                     p_at timestamptz, p_id char(24),
                                     p_up boolean)
RETURNS TABLE (sort_at timestamptz, id char(24), n bigint)
LANGUAGE plpgsql STABLE ROWS 100 AS $$
DECLARE
    v     invoices_search_parts := invoices_search_parts(p_q);
    v_n   bigint;
    v_k   bigint := 0;
BEGIN
    IF cardinality(v.teams) = 0 THEN
        RETURN QUERY SELECT o.sort_at, o.id, NULL::bigint
                     FROM invoices_search_others(v) o;
        GET DIAGNOSTICS v_n = ROW_COUNT;
    ELSE
        RETURN QUERY SELECT o.sort_at, o.id, NULL::bigint
                     FROM invoices_search_others(v) o
                     JOIN invoices i ON i.id = o.id
                     WHERE i.team_id IS NULL OR i.team_id <> ALL (v.teams);
        GET DIAGNOSTICS v_n = ROW_COUNT;

        SELECT coalesce(sum(c.n), 0) INTO v_k FROM invoices_team_count c
        WHERE c.team_key = ANY (v.teams::text[]);
    END IF;

    v_n := v_n + v_k;

    -- Stripe's created is never infinite: no cursor is one past every row
    IF p_up THEN
        RETURN QUERY
            SELECT w.sort_at, w.id, NULL::bigint
            FROM unnest(v.teams) t (id) CROSS JOIN LATERAL (
                SELECT i.stripe_created_at AS sort_at, i.id FROM invoices i
                WHERE i.team_id = t.id
                  AND (i.stripe_created_at, i.id)
                      > (coalesce(p_at, '-infinity'), coalesce(p_id, ''))
                ORDER BY i.stripe_created_at, i.id LIMIT p_rows) w;
    ELSE
        RETURN QUERY
            SELECT w.sort_at, w.id, NULL::bigint
            FROM unnest(v.teams) t (id) CROSS JOIN LATERAL (
                SELECT i.stripe_created_at AS sort_at, i.id FROM invoices i
                WHERE i.team_id = t.id
                  AND (i.stripe_created_at, i.id)
                      < (coalesce(p_at, 'infinity'), coalesce(p_id, ''))
                ORDER BY i.stripe_created_at DESC, i.id DESC LIMIT p_rows) w;
    END IF;

    RETURN QUERY SELECT NULL::timestamptz, NULL::char(24), v_n;
END
$$;

SELECT invoices_search_refresh();

ANALYZE invoices;
