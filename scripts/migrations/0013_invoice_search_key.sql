-- 0013: q reads the trigram index (0006) for its rare part only.
--
-- A trigram index scan of ILIKE '%q%' reads the posting list of every
-- trigram of q, and the trigrams that most invoices share (the prefix of
-- every invoice number, a common email domain, a team's name) have lists
-- as long as the table: most of the scan's cost, for no narrowing.  So
-- the index is asked for the part of q with the most trigrams among those
-- that hold none of them (its "key"), and each invoice it gives is then
-- checked against the whole of q.  A part of q matches wherever q does, so the answer is the
-- same whatever the key; only the cost changes (docs/benchmarks.md).
--
-- The shared trigrams are found in a sample of the invoices: those in at
-- least a fifth of them.  invoices_search_refresh() takes the sample; the
-- housekeeping timer calls it (ngx_http_invoices_housekeeping.c) and it
-- samples again when its last sample is over an hour old, or when the
-- table has since doubled or halved (by PostgreSQL's estimate, which
-- autovacuum keeps).  Until the first sample, every trigram counts as
-- rare: q is asked for whole, as before.

CREATE TABLE invoices_search_common (
    one         boolean      PRIMARY KEY DEFAULT true CHECK (one),
    trigrams    text[]       NOT NULL,
    sampled     bigint       NOT NULL,   -- invoices in the sample
    table_rows  bigint       NOT NULL,   -- the table's estimate then
    sampled_at  timestamptz  NOT NULL
);

-- the sample: about p_rows invoices, whole pages at random (cheap at any
-- size), each trigram counted once per invoice (show_trgm: as pg_trgm indexes
-- it)
CREATE FUNCTION invoices_search_refresh(p_max_age interval DEFAULT '1 hour',
                                        p_rows integer DEFAULT 30000)
RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_rows  bigint;
    v_pct   float8;
    v_n     bigint;
    v_tris  text[];
BEGIN
    -- -1 before the first VACUUM or ANALYZE
    SELECT greatest(reltuples, 0) INTO v_rows
    FROM pg_class WHERE oid = 'invoices'::regclass;

    IF EXISTS (SELECT 1 FROM invoices_search_common
               WHERE sampled_at > now() - p_max_age
                 AND v_rows <= 2 * greatest(table_rows, 500)
                 AND v_rows >= table_rows / 2) THEN
        RETURN false;
    END IF;

    v_pct := least(100, 100.0 * p_rows / greatest(v_rows, 1));

    WITH s AS (
        SELECT search_text FROM invoices TABLESAMPLE SYSTEM (v_pct)
    )
    SELECT (SELECT count(*) FROM s),
           coalesce((SELECT array_agg(x ORDER BY x) FROM (
                         SELECT x FROM s, unnest(show_trgm(s.search_text)) x
                         GROUP BY x
                         HAVING count(*) * 5 >= (SELECT count(*) FROM s)) c),
                    '{}')
    INTO v_n, v_tris;

    INSERT INTO invoices_search_common AS c (trigrams, sampled, table_rows,
                                             sampled_at)
    VALUES (v_tris, v_n, v_rows, now())
    ON CONFLICT (one) DO UPDATE
    SET trigrams = EXCLUDED.trigrams, sampled = EXCLUDED.sampled,
        table_rows = EXCLUDED.table_rows, sampled_at = EXCLUDED.sampled_at;

    RETURN true;
END
$$;

-- The trigrams pg_trgm takes from ILIKE '%q%', each with the span of q's
-- characters it stands for (a and b, 1-based): lower case; each run of
-- letters and digits a word, padded with two blanks before and one after
-- where a character that is neither bounds it inside q (q's own ends
-- border on the wildcards: no padding there).  A part q[i..j] then holds
-- exactly the trigrams whose span lies within it.
CREATE FUNCTION invoices_search_trigrams(p_q text)
RETURNS TABLE (trigram text, a integer, b integer)
LANGUAGE plpgsql IMMUTABLE STRICT ROWS 20 AS $$
DECLARE
    v_s     text := lower(p_q);
    v_n     integer := length(p_q);
    v_word  boolean[];
    v_x     integer := 1;
    v_y     integer;
    v_w     text;
    v_at    integer[];
    k       integer;
BEGIN
    v_word := ARRAY(SELECT substr(v_s, g, 1) ~ '^[[:alnum:]]$'
                    FROM generate_series(1, v_n) g);

    WHILE v_x <= v_n LOOP
        IF NOT v_word[v_x] THEN
            v_x := v_x + 1;
            CONTINUE;
        END IF;

        v_y := v_x;
        WHILE v_y < v_n AND v_word[v_y + 1] LOOP
            v_y := v_y + 1;
        END LOOP;

        -- the padded word, and the character of q each of its own stands for
        v_w := substr(v_s, v_x, v_y - v_x + 1);
        v_at := ARRAY(SELECT generate_series(v_x, v_y));

        IF v_x > 1 THEN
            v_w := '  ' || v_w;
            v_at := ARRAY[v_x - 1, v_x - 1] || v_at;
        END IF;

        IF v_y < v_n THEN
            v_w := v_w || ' ';
            v_at := v_at || (v_y + 1);
        END IF;

        FOR k IN 1 .. length(v_w) - 2 LOOP
            trigram := substr(v_w, k, 3);
            a := v_at[k];
            b := v_at[k + 2];
            RETURN NEXT;
        END LOOP;

        v_x := v_y + 1;
    END LOOP;
END
$$;

-- q's own LIKE pattern: q anywhere, its wildcards and escape taken
-- literally
CREATE FUNCTION invoices_search_like(p_q text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT AS $$
    SELECT '%' || replace(replace(replace(p_q, '\', '\\'), '%', '\%'), '_', '\_')
           || '%'
$$;

-- The LIKE pattern the index is asked for: of the parts of q that hold
-- no shared trigram, the one with the most trigrams (then the longest,
-- then the first); q itself when no part holds one.  The trigrams come in
-- the order of their spans (both ends never go down), so the parts are
-- found in one pass: for each end j, the earliest start that leaves out
-- every shared trigram ending by j, and the trigrams between.
CREATE FUNCTION invoices_search_key(p_q text) RETURNS text
LANGUAGE plpgsql STABLE STRICT AS $$
DECLARE
    v_a       integer[];
    v_b       integer[];
    v_shared  boolean[];
    v_m       integer;
    v_i       integer := 1;
    v_lo      integer := 1;
    v_hi      integer := 0;
    v_best    integer := 0;
    v_from    integer;
    v_to      integer;
BEGIN
    SELECT array_agg(t.a ORDER BY t.k), array_agg(t.b ORDER BY t.k),
           array_agg(t.trigram = ANY (c.trigrams) ORDER BY t.k)
    INTO v_a, v_b, v_shared
    FROM invoices_search_trigrams(p_q) WITH ORDINALITY t (trigram, a, b, k)
    LEFT JOIN invoices_search_common c ON true;

    v_m := coalesce(cardinality(v_a), 0);

    FOR j IN 1 .. length(p_q) LOOP
        WHILE v_hi < v_m AND v_b[v_hi + 1] <= j LOOP
            v_hi := v_hi + 1;
            IF v_shared[v_hi] THEN
                v_i := greatest(v_i, v_a[v_hi] + 1);
            END IF;
        END LOOP;

        WHILE v_lo <= v_hi AND v_a[v_lo] < v_i LOOP
            v_lo := v_lo + 1;
        END LOOP;

        IF v_hi - v_lo + 1 > v_best
           OR (v_hi - v_lo + 1 = v_best AND v_best > 0 AND j - v_i > v_to - v_from)
        THEN
            v_best := v_hi - v_lo + 1;
            v_from := v_i;
            v_to := j;
        END IF;
    END LOOP;

    IF v_best = 0 THEN
        RETURN invoices_search_like(p_q);
    END IF;

    RETURN invoices_search_like(substr(p_q, v_from, v_to - v_from + 1));
END
$$;

SELECT invoices_search_refresh();
