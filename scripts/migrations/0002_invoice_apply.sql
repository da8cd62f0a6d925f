-- 0002: one forward-only way to write an invoice from Stripe's data.
--
-- Every writer (the create endpoint, the webhook, the sync) goes through
-- invoices_apply(), so the rules live in one place:
--   * status only moves forward along Stripe's graph:
--       draft -> open -> paid | void | uncollectible; uncollectible -> paid | void
--     (paid and void are final); an older state never overwrites a newer one;
--   * the team is matched by the Stripe customer id (NULL while none is
--     linked; filled in by a later write once it is);
--   * a write that changes nothing leaves updated_at alone.

CREATE FUNCTION invoices_status_rank(status text) RETURNS integer
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE status
        WHEN 'draft' THEN 0
        WHEN 'open' THEN 1
        WHEN 'uncollectible' THEN 2
        WHEN 'paid' THEN 3
        WHEN 'void' THEN 3
    END
$$;

-- May "to" follow "from"?  Equal states are allowed (the other fields may
-- change); paid and void never follow each other.
CREATE FUNCTION invoices_status_may_follow(from_status text, to_status text)
RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT from_status = to_status
        OR invoices_status_rank(to_status) > invoices_status_rank(from_status)
$$;

-- Returns 'inserted', 'updated' or 'unchanged'.
CREATE FUNCTION invoices_apply(p_stripe_invoice_id text,
                               p_stripe_customer_id text,
                               p_status text,
                               p_amount bigint,
                               p_currency text,
                               p_invoice_pdf text,
                               p_stripe_created bigint)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_team char(24);
    v_old  invoices%ROWTYPE;
BEGIN
    SELECT id INTO v_team FROM teams
     WHERE stripe_customer_id = p_stripe_customer_id;

    INSERT INTO invoices (stripe_invoice_id, stripe_customer_id, team_id,
                          status, amount, currency, invoice_pdf,
                          stripe_created_at)
    VALUES (p_stripe_invoice_id, p_stripe_customer_id, v_team, p_status,
            p_amount, p_currency, p_invoice_pdf,
            to_timestamp(p_stripe_created))
    ON CONFLICT (stripe_invoice_id) DO NOTHING;

    IF FOUND THEN
        RETURN 'inserted';
    END IF;

    SELECT * INTO v_old FROM invoices
     WHERE stripe_invoice_id = p_stripe_invoice_id FOR UPDATE;

    IF NOT invoices_status_may_follow(v_old.status, p_status) THEN
        -- a late event: keep the newer status, but a team linked since
        -- still gets filled in
        IF v_old.team_id IS NULL AND v_team IS NOT NULL THEN
            UPDATE invoices SET team_id = v_team, updated_at = now()
             WHERE id = v_old.id;
            RETURN 'updated';
        END IF;
        RETURN 'unchanged';
    END IF;

    UPDATE invoices
       SET status = p_status,
           amount = p_amount,
           currency = p_currency,
           invoice_pdf = coalesce(p_invoice_pdf, invoice_pdf),
           stripe_customer_id = p_stripe_customer_id,
           team_id = coalesce(v_team, team_id),
           updated_at = now()
     WHERE id = v_old.id
       AND (status, amount, currency, invoice_pdf, stripe_customer_id,
            team_id)
           IS DISTINCT FROM
           (p_status, p_amount, p_currency,
            coalesce(p_invoice_pdf, v_old.invoice_pdf), p_stripe_customer_id,
            coalesce(v_team, v_old.team_id));

    IF FOUND THEN
        RETURN 'updated';
    END IF;

    RETURN 'unchanged';
END
$$;
