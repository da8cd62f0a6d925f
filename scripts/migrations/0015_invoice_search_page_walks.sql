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
-- The answer is the same as 0014's (t/filters.t asks both the counts and
-- the walks); invoices_search_matches() (q with other filters, the
-- summary, the export) is unchanged.  The statements here are planned
-- once per connection (force_generic_plan): their plans do not depend on
-- q's values, only on which lists are empty, and the branches below say
-- that.

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
    -- it need asking
    IF v_e AND NOT v_t THEN
        SELECT count(*) INTO v_c FROM invoices i
        WHERE i.customer_email = ANY (v.emails);
        v_n := v_n + v_c;
    ELSIF v_e THEN
        SELECT count(*) INTO v_c FROM invoices i
        WHERE i.customer_email = ANY (v.emails)
          AND NOT coalesce(i.team_id = ANY (v.teams), false);
        v_n := v_n + v_c;
    END IF;

    IF v_m AND NOT (v_t OR v_e) THEN
        SELECT count(*) INTO v_c FROM invoices i
        WHERE i.customer_name = ANY (v.names);
        v_n := v_n + v_c;
    ELSIF v_m THEN
        SELECT count(*) INTO v_c FROM invoices i
        WHERE i.customer_name = ANY (v.names)
          AND NOT coalesce(i.team_id = ANY (v.teams)
                           OR i.customer_email = ANY (v.emails), false);
        v_n := v_n + v_c;
    END IF;

    -- The page: the first p_rows of each walk, each invoice once (UNION),
    -- the first p_rows of those; the number's and the Stripe id's finds
    -- are read once, for the page and for the count of those no value
    -- found (a NULL field finds nothing: coalesce).  The two directions
    -- differ only in their comparisons and orders.
    IF p_up THEN
        RETURN QUERY
            WITH f AS MATERIALIZED (
                SELECT i.stripe_created_at AS sort_at, i.id,
                       coalesce(i.team_id = ANY (v.teams)
                                OR i.customer_email = ANY (v.emails)
                                OR i.customer_name = ANY (v.names),
                                false) AS seen
                FROM invoices i
                WHERE i.number ILIKE v.number
                  AND lower(i.number) LIKE v.low_like
                UNION
                SELECT i.stripe_created_at, i.id,
                       coalesce(i.team_id = ANY (v.teams)
                                OR i.customer_email = ANY (v.emails)
                                OR i.customer_name = ANY (v.names),
                                false)
                FROM invoices i
                WHERE i.stripe_invoice_id ILIKE v.invoice
                  AND lower(i.stripe_invoice_id) LIKE v.low_like)
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
                       coalesce(i.team_id = ANY (v.teams)
                                OR i.customer_email = ANY (v.emails)
                                OR i.customer_name = ANY (v.names),
                                false) AS seen
                FROM invoices i
                WHERE i.number ILIKE v.number
                  AND lower(i.number) LIKE v.low_like
                UNION
                SELECT i.stripe_created_at, i.id,
                       coalesce(i.team_id = ANY (v.teams)
                                OR i.customer_email = ANY (v.emails)
                                OR i.customer_name = ANY (v.names),
                                false)
                FROM invoices i
                WHERE i.stripe_invoice_id ILIKE v.invoice
                  AND lower(i.stripe_invoice_id) LIKE v.low_like)
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
