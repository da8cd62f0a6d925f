-- 0002: one forward-only way to write an invoice from Stripe's data, and
-- the webhook's exactly-once event record.
--
-- Every writer (the create endpoint, the webhook, the sync) goes through
-- invoices_apply(), so the rules live in one place:
--   * status only moves forward along Stripe's graph:
--       draft -> open -> paid | void | uncollectible; uncollectible -> paid | void
--     (paid and void are final); an older state never overwrites a newer one;
--   * among writes that leave the status where it is, the newest view of
--     the invoice decides the other fields: (seen_at, seen_tie) orders them,
--     the event's `created` (or the time of an API read) and then the
--     latest of the invoice's status_transitions; an older view changes
--     nothing;
--   * the team is matched by the Stripe customer id (NULL while none is
--     linked; filled in by a later write, or at once when a team is linked);
--   * a deleted draft stays deleted (a late event does not bring it back);
--   * a write that changes nothing leaves updated_at alone.

ALTER TABLE invoices
    ADD COLUMN stripe_seen_at  bigint NOT NULL DEFAULT 0,
    ADD COLUMN stripe_seen_tie bigint NOT NULL DEFAULT 0;

CREATE TABLE invoices_deleted (
    stripe_invoice_id   text        PRIMARY KEY,
    deleted_at          timestamptz NOT NULL DEFAULT now()
);

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

-- Returns 'inserted', 'updated', 'unchanged' or 'deleted' (a deleted draft).
CREATE FUNCTION invoices_apply(p_stripe_invoice_id text,
                               p_stripe_customer_id text,
                               p_status text,
                               p_amount bigint,
                               p_currency text,
                               p_invoice_pdf text,
                               p_stripe_created bigint,
                               p_seen_at bigint,
                               p_seen_tie bigint)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_team char(24);
    v_old  invoices%ROWTYPE;
BEGIN
    PERFORM 1 FROM invoices_deleted
      WHERE stripe_invoice_id = p_stripe_invoice_id;
    IF FOUND THEN
        RETURN 'deleted';
    END IF;

    SELECT id INTO v_team FROM teams
     WHERE stripe_customer_id = p_stripe_customer_id;

    INSERT INTO invoices (stripe_invoice_id, stripe_customer_id, team_id,
                          status, amount, currency, invoice_pdf,
                          stripe_created_at, stripe_seen_at, stripe_seen_tie)
    VALUES (p_stripe_invoice_id, p_stripe_customer_id, v_team, p_status,
            p_amount, p_currency, p_invoice_pdf,
            to_timestamp(p_stripe_created), p_seen_at, p_seen_tie)
    ON CONFLICT (stripe_invoice_id) DO NOTHING;

    IF FOUND THEN
        RETURN 'inserted';
    END IF;

    SELECT * INTO v_old FROM invoices
     WHERE stripe_invoice_id = p_stripe_invoice_id FOR UPDATE;

    IF NOT invoices_status_may_follow(v_old.status, p_status)
       OR (v_old.status = p_status
           AND (p_seen_at, p_seen_tie)
               < (v_old.stripe_seen_at, v_old.stripe_seen_tie))
    THEN
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
           stripe_seen_at = greatest(stripe_seen_at, p_seen_at),
           stripe_seen_tie = CASE WHEN p_seen_at >= stripe_seen_at
                                  THEN p_seen_tie ELSE stripe_seen_tie END,
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

-- A team linked to a Stripe customer claims that customer's invoices at
-- once (webhooks may have stored them with no team).
CREATE FUNCTION invoices_link_team() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.stripe_customer_id IS NOT NULL THEN
        UPDATE invoices SET team_id = NEW.id, updated_at = now()
         WHERE stripe_customer_id = NEW.stripe_customer_id
           AND team_id IS DISTINCT FROM NEW.id;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER teams_link_invoices
    AFTER INSERT OR UPDATE OF stripe_customer_id ON teams
    FOR EACH ROW EXECUTE FUNCTION invoices_link_team();

-- One Stripe event, exactly once: the event id is recorded in the same
-- transaction (this one statement) as its effect.  Returns 'duplicate',
-- 'ignored' (not an invoice event), 'deleted', or what invoices_apply says.
CREATE FUNCTION invoices_webhook_event(p_event_id text,
                                       p_type text,
                                       p_event_created bigint,
                                       p_stripe_invoice_id text,
                                       p_stripe_customer_id text,
                                       p_status text,
                                       p_amount bigint,
                                       p_currency text,
                                       p_invoice_pdf text,
                                       p_stripe_created bigint,
                                       p_transition_at bigint)
RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO webhook_events (id, type, stripe_created_at)
    VALUES (p_event_id, p_type, to_timestamp(p_event_created))
    ON CONFLICT (id) DO NOTHING;

    IF NOT FOUND THEN
        RETURN 'duplicate';
    END IF;

    IF p_stripe_invoice_id IS NULL THEN
        RETURN 'ignored';
    END IF;

    IF p_type = 'invoice.deleted' THEN
        -- only drafts can be deleted in Stripe
        INSERT INTO invoices_deleted (stripe_invoice_id)
        VALUES (p_stripe_invoice_id) ON CONFLICT DO NOTHING;
        DELETE FROM invoices WHERE stripe_invoice_id = p_stripe_invoice_id;
        RETURN 'deleted';
    END IF;

    RETURN invoices_apply(p_stripe_invoice_id, p_stripe_customer_id,
                          p_status, p_amount, p_currency, p_invoice_pdf,
                          p_stripe_created, p_event_created, p_transition_at);
END
$$;
