-- 0016: an invoice's number found by a six-character part of q.
--
-- A number is a prefix shared by many invoices and a sequence
-- (BENCH-00012345, or Stripe's ABCD1234-0001).  Asked through pg_trgm
-- (0014's invoices_number_search), q's rare part in a number is still
-- made of trigrams each held by a tenth of the numbers or more (000, 001,
-- 012 and 123 of BENCH-000123): the index reads and intersects their
-- lists, about 1.0 ms of the 1.5 a page of q by a number took in
-- PostgreSQL (docs/benchmarks.md, "The eighth run").  Six characters in
-- a row narrow much more than three (000123: the 111 numbers that hold
-- it), so each number's six-character parts (lower case, each once) are
-- indexed too, and a q of six characters or more asks the index for one
-- of them: the one the fewest sampled numbers hold, of those the last in
-- q (the sequence's end, in both kinds of number).  Every number that
-- holds q holds each of its parts, so no match is missed; each one found
-- is checked against the whole of q, as before.  A shorter q asks the
-- trigram index, as before.
--
-- The answers are those of 0015 (t/filters.t).  Writes: one more index
-- of about nine entries per invoice with a number (docs/benchmarks.md
-- has what it costs the webhook).

CREATE FUNCTION invoices_number_grams(p_number text) RETURNS text[]
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT coalesce(array_agg(DISTINCT substr(s.low, k, 6)), '{}')
    FROM (SELECT lower(p_number) AS low) s,
         generate_series(1, length(s.low) - 5) k
$$;

CREATE INDEX invoices_number_grams
    ON invoices USING gin (invoices_number_grams(number));

-- The six-character parts the sampled numbers hold and how many hold
-- each, those held by under a thousandth of them or by one left out (as
-- 0014 keeps trigrams): sampled with the trigrams, by the same function,
-- which keeps its name and signature (the housekeeping pass calls it).
CREATE TABLE invoices_search_gram (
    gram  text     PRIMARY KEY,
    n     integer  NOT NULL
);

ALTER FUNCTION invoices_search_refresh(interval, integer)
    RENAME TO invoices_search_refresh_trigrams;

CREATE FUNCTION invoices_search_refresh(p_max_age interval DEFAULT '1 hour',
                                        p_rows integer DEFAULT 30000)
RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_pct  float8;
BEGIN
    -- takes the sampler's lock, and says whether the sample was stale
    IF NOT invoices_search_refresh_trigrams(p_max_age, p_rows) THEN
        RETURN false;
    END IF;

    SELECT least(100, 100.0 * p_rows / greatest(s.table_rows, 1))
    INTO v_pct FROM invoices_search_sample s;

    DELETE FROM invoices_search_gram;

    WITH s AS MATERIALIZED (
        SELECT number FROM invoices TABLESAMPLE SYSTEM (v_pct)
        WHERE number IS NOT NULL
    )
    INSERT INTO invoices_search_gram (gram, n)
    SELECT g.gram, count(*)
    FROM s, LATERAL unnest(invoices_number_grams(s.number)) g (gram)
    GROUP BY 1
    HAVING count(*) >= 2 AND count(*) * 1000 >= (SELECT count(*) FROM s);

    RETURN true;
END
$$;

-- the first sample of the parts (and again of the trigrams)
SELECT invoices_search_refresh('0 s');

-- the part of q a number is asked by: NULL for a q under six characters
ALTER TYPE invoices_search_parts ADD ATTRIBUTE number_gram text[];

CREATE OR REPLACE FUNCTION invoices_search_parts(p_q text)
RETURNS invoices_search_parts
LANGUAGE plpgsql STABLE STRICT AS $$
DECLARE
    v          invoices_search_parts;
    v_low      text := lower(p_q);
    v_a        integer[];
    v_b        integer[];
    v_number   integer[];
    v_invoice  integer[];
    v_sampled  bigint;
BEGIN
    v.low_like := lower(invoices_search_like(p_q));
    v.teams := ARRAY(SELECT t.id FROM teams t
                     WHERE lower(t.name) LIKE v.low_like);

    SELECT coalesce(array_agg(x.value) FILTER (WHERE x.field = 'e'), '{}'),
           coalesce(array_agg(x.value) FILTER (WHERE x.field = 'n'), '{}')
    INTO v.emails, v.names
    FROM invoices_search_value x WHERE x.low LIKE v.low_like;

    -- q's trigrams once, each looked up for both fields (the number's
    -- counts are used only when q is too short for a six-character part)
    SELECT array_agg(t.a ORDER BY t.k), array_agg(t.b ORDER BY t.k),
           array_agg(coalesce((SELECT g.n FROM invoices_search_trigram g
                               WHERE g.field = 'number'
                                 AND g.trigram = t.trigram), 0)
                     ORDER BY t.k),
           array_agg(coalesce((SELECT g.n FROM invoices_search_trigram g
                               WHERE g.field = 'invoice'
                                 AND g.trigram = t.trigram), 0)
                     ORDER BY t.k)
    INTO v_a, v_b, v_number, v_invoice
    FROM invoices_search_trigrams(p_q) WITH ORDINALITY t (trigram, a, b, k);

    SELECT s.sampled INTO v_sampled FROM invoices_search_sample s;

    v.invoice := invoices_search_key_of(p_q, v_a, v_b, v_invoice, v_sampled);

    IF length(v_low) >= 6 THEN
        v.number_gram := ARRAY(
            SELECT p.gram
            FROM generate_series(1, length(v_low) - 5) k,
                 LATERAL (SELECT substr(v_low, k, 6) AS gram) p
            ORDER BY coalesce((SELECT g.n FROM invoices_search_gram g
                               WHERE g.gram = p.gram), 0),
                     k DESC
            LIMIT 1);
    ELSE
        v.number := invoices_search_key_of(p_q, v_a, v_b, v_number,
                                           v_sampled);
    END IF;

    RETURN v;
END
$$;

-- A number is found by whichever of the two the parts hold (the other is
-- NULL: its index finds nothing), and checked against the whole of q.
-- Two statements, not one with OR: a trigram index rechecks what it
-- finds, and the recheck of an OR would make every number's parts again
-- for each one the trigrams found (q=1: 7.5 s against 3.4).
CREATE OR REPLACE FUNCTION invoices_search_others(p invoices_search_parts)
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
        WHERE invoices_number_grams(i.number) @> p.number_gram
          AND lower(i.number) LIKE p.low_like
        UNION
        SELECT i.stripe_created_at, i.id FROM invoices i
        WHERE i.stripe_invoice_id ILIKE p.invoice
          AND lower(i.stripe_invoice_id) LIKE p.low_like;
END
$$;

-- 0015's page, its number found as invoices_search_others() finds it
-- (f: each invoice once, as the branches find none in common).
-- Without parallel workers: planned once for any q, the number's two
-- indexes are guessed to find thousands, and starting the workers took
-- 6 ms of a page that takes well under one.  Without JIT, as
-- invoices_search_matches() (0014): at 10,000,000 invoices those guesses
-- cost its statements past jit_above_cost, and compiling them took 0.5 to
-- 1 s of every page (docs/benchmarks.md, "The ninth run").
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
    v_t    boolean;
    v_e    boolean;
    v_m    boolean;
    v_n    bigint := 0;
    v_c    bigint;
    -- Stripe's created is never infinite: no cursor is one past every row
    v_at   timestamptz := coalesce(p_at, CASE WHEN p_up
                                              THEN '-infinity'::timestamptz
                                              ELSE 'infinity' END);
    v_id   char(24) := coalesce(p_id, '');
BEGIN
    v_t := cardinality(v.teams) > 0;
    v_e := cardinality(v.emails) > 0;
    v_m := cardinality(v.names) > 0;

    IF v_t THEN
        SELECT coalesce(sum(c.n), 0) INTO v_n FROM invoices_team_count c
        WHERE c.team_key = ANY (v.teams::text[]);
    END IF;

    -- each invoice a value finds has that value: only the fields before
    -- it need asking.  Whether an invoice's field is in a list is asked of
    -- a hash of the list (IN a subquery), not along it (= ANY): a broad q
    -- finds thousands of values, and its matches are a good part of the
    -- table.
    IF v_e AND NOT v_t THEN
        SELECT count(*) INTO v_c FROM invoices i
        WHERE i.customer_email = ANY (v.emails);
        v_n := v_n + v_c;
    ELSIF v_e THEN
        SELECT count(*) INTO v_c FROM invoices i
        WHERE i.customer_email = ANY (v.emails)
          AND NOT coalesce(i.team_id IN (SELECT unnest(v.teams)), false);
        v_n := v_n + v_c;
    END IF;

    IF v_m AND NOT (v_t OR v_e) THEN
        SELECT count(*) INTO v_c FROM invoices i
        WHERE i.customer_name = ANY (v.names);
        v_n := v_n + v_c;
    ELSIF v_m THEN
        SELECT count(*) INTO v_c FROM invoices i
        WHERE i.customer_name = ANY (v.names)
          AND NOT coalesce(i.team_id IN (SELECT unnest(v.teams))
                           OR i.customer_email IN (SELECT unnest(v.emails)),
                           false);
        v_n := v_n + v_c;
    END IF;

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
