-- 0015: a page of q from walks and counts, not from every match.
--
-- 0014's invoices_search_page() gathered every invoice the email, the
-- name, the number and the Stripe id found (a customer's 1,001 invoices
-- for a part of the email), deduplicated them in one hash and handed all
-- of them on, through two more copies, for the page to take 21: about
-- two thirds of a page of q's time in PostgreSQL went there, and on
-- planning the union for each call's values (docs/benchmarks.md, "The
-- eighth run").  Now each field gives what the page needs of it:
--
-- - the count: each field counts the invoices it finds that no field
--   before it found (team, email, name, number and Stripe id, in that
--   order), so the sum is the union's size without building the union.
--   A matching team's invoices come from the kept counts (0006); the
--   email's and the name's from their index alone while no field before
--   them found anything (else each invoice's team, email and name are
--   read to leave out those found before); the number's and the Stripe
--   id's are read anyway (each is checked against the whole of q);
-- - the page: from each team, email and name that holds q, the first
--   p_rows invoices after the cursor, from its own index in the order of
--   the list; the first p_rows of the number's and the Stripe id's; the
--   first p_rows of all of them, each once.
--
-- q's trigrams are found and looked up once for both fields' keys
-- (invoices_search_parts(); 0014 did it once per field), the keys chosen
-- as before (invoices_search_key_of(), 0014's rule).
--
-- The answer is the same as 0014's (t/filters.t asks both the counts and
-- the walks); invoices_search_matches() (q with other filters, the
-- summary, the export) is unchanged.  The statements here are planned
-- once per connection (force_generic_plan): their plans do not depend on
-- q's values, only on which lists are empty, and the branches below say
-- that.

-- A field's key from q's trigrams (their first and last characters in q,
-- a and b) and the number of sampled values holding each (n): 0014's
-- invoices_search_key() after its lookups, unchanged, so that
-- invoices_search_parts() looks q's trigrams up once for both fields
CREATE FUNCTION invoices_search_key_of(p_q text, v_a integer[],
                                       v_b integer[], v_n integer[],
                                       v_sampled bigint) RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
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

CREATE OR REPLACE FUNCTION invoices_search_key(p_q text, p_field text)
RETURNS text
LANGUAGE plpgsql STABLE STRICT AS $$
DECLARE
    v_a       integer[];
    v_b       integer[];
    v_n       integer[];
BEGIN
    -- a lookup per trigram (a join would read the whole table of them)
    SELECT array_agg(t.a ORDER BY t.k), array_agg(t.b ORDER BY t.k),
           array_agg(coalesce((SELECT g.n FROM invoices_search_trigram g
                               WHERE g.field = p_field
                                 AND g.trigram = t.trigram), 0)
                     ORDER BY t.k)
    INTO v_a, v_b, v_n
    FROM invoices_search_trigrams(p_q) WITH ORDINALITY t (trigram, a, b, k);

    RETURN invoices_search_key_of(p_q, v_a, v_b, v_n,
                                  (SELECT s.sampled
                                   FROM invoices_search_sample s));
END
$$;

CREATE OR REPLACE FUNCTION invoices_search_parts(p_q text)
RETURNS invoices_search_parts
LANGUAGE plpgsql STABLE STRICT AS $$
DECLARE
    v          invoices_search_parts;
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

    -- q's trigrams once, each looked up for both fields
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

    v.number := invoices_search_key_of(p_q, v_a, v_b, v_number, v_sampled);
    v.invoice := invoices_search_key_of(p_q, v_a, v_b, v_invoice, v_sampled);

    RETURN v;
END
$$;

CREATE OR REPLACE FUNCTION invoices_search_page(p_q text, p_rows bigint,
                                                p_at timestamptz,
                                                p_id char(24),
                                                p_up boolean)
RETURNS TABLE (sort_at timestamptz, id char(24), n bigint)
LANGUAGE plpgsql STABLE ROWS 100 SET plan_cache_mode = force_generic_plan
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
                SELECT i.stripe_created_at AS sort_at, i.id,
                       coalesce(i.team_id IN (SELECT unnest(v.teams))
                                OR i.customer_email
                                   IN (SELECT unnest(v.emails))
                                OR i.customer_name
                                   IN (SELECT unnest(v.names)),
                                false) AS seen
                FROM invoices i
                WHERE i.number ILIKE v.number
                  AND lower(i.number) LIKE v.low_like
                UNION ALL
                SELECT i.stripe_created_at, i.id,
                       coalesce(i.team_id IN (SELECT unnest(v.teams))
                                OR i.customer_email
                                   IN (SELECT unnest(v.emails))
                                OR i.customer_name
                                   IN (SELECT unnest(v.names)),
                                false)
                FROM invoices i
                WHERE i.stripe_invoice_id ILIKE v.invoice
                  AND lower(i.stripe_invoice_id) LIKE v.low_like
                  AND NOT coalesce(lower(i.number) LIKE v.low_like, false))
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
                SELECT i.stripe_created_at AS sort_at, i.id,
                       coalesce(i.team_id IN (SELECT unnest(v.teams))
                                OR i.customer_email
                                   IN (SELECT unnest(v.emails))
                                OR i.customer_name
                                   IN (SELECT unnest(v.names)),
                                false) AS seen
                FROM invoices i
                WHERE i.number ILIKE v.number
                  AND lower(i.number) LIKE v.low_like
                UNION ALL
                SELECT i.stripe_created_at, i.id,
                       coalesce(i.team_id IN (SELECT unnest(v.teams))
                                OR i.customer_email
                                   IN (SELECT unnest(v.emails))
                                OR i.customer_name
                                   IN (SELECT unnest(v.names)),
                                false)
                FROM invoices i
                WHERE i.stripe_invoice_id ILIKE v.invoice
                  AND lower(i.stripe_invoice_id) LIKE v.low_like
                  AND NOT coalesce(lower(i.number) LIKE v.low_like, false))
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
