-- 0010: an invoice's history (the audit trail and
-- GET /admin/api/invoices/{id}/events: ngx_http_invoices_history.c,
-- docs/openapi.yaml), and the admin DELETE of a draft.
--
-- Every admin create and action that went to Stripe is recorded with the
-- name of the key that asked (never the key), the action, the Stripe
-- invoice, the caller's Idempotency-Key and the HTTP status answered.
-- Webhook events now keep the Stripe invoice they were about and whether
-- they changed our row; events received before this migration name no
-- invoice and so appear in no history.  Both are read by Stripe invoice
-- id, oldest first, through the two indexes below.

CREATE TABLE invoice_actions (
    id                 bigint       GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at                 timestamptz  NOT NULL DEFAULT clock_timestamp(),
    key_name           text         NOT NULL,
    action             text         NOT NULL
                       CHECK (action IN ('create', 'finalize', 'pay', 'send',
                                         'void', 'mark_uncollectible',
                                         'delete')),
    stripe_invoice_id  text,                      -- NULL: none made or found
    idempotency_key    text,                      -- NULL: the caller gave none
    replayed           boolean      NOT NULL DEFAULT false,
    status             integer      NOT NULL      -- the HTTP status answered
);

CREATE INDEX invoice_actions_invoice
    ON invoice_actions (stripe_invoice_id, at, id)
    WHERE stripe_invoice_id IS NOT NULL;

-- no default: adding the columns rewrites nothing
ALTER TABLE webhook_events
    ADD COLUMN stripe_invoice_id text,
    ADD COLUMN changed boolean;

CREATE INDEX webhook_events_invoice
    ON webhook_events (stripe_invoice_id, received_at, id)
    WHERE stripe_invoice_id IS NOT NULL;

-- An invoice deleted in Stripe (only drafts can be): its tombstone, kept
-- as long as event ids are, and its row gone, under the invoice's lock
-- (migration 0004); true when a row was removed.  The webhook's
-- invoice.deleted and the admin DELETE (ngx_http_invoices_action.c).
CREATE FUNCTION invoices_delete(p_stripe_invoice_id text) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_gone  integer;
BEGIN
    PERFORM invoices_lock(p_stripe_invoice_id);
    INSERT INTO invoices_deleted (stripe_invoice_id)
    VALUES (p_stripe_invoice_id) ON CONFLICT DO NOTHING;
    DELETE FROM invoices WHERE stripe_invoice_id = p_stripe_invoice_id;
    GET DIAGNOSTICS v_gone = ROW_COUNT;
    RETURN v_gone > 0;
END
$$;

-- 0005's function: the event's invoice and effect recorded with its id
CREATE OR REPLACE FUNCTION invoices_webhook_event(p_event_id text,
                                                  p_type text,
                                                  p_event_created bigint,
                                                  p_stripe_invoice_id text,
                                                  p_stripe_customer_id text,
                                                  p_status text,
                                                  p_amount bigint,
                                                  p_currency text,
                                                  p_invoice_pdf text,
                                                  p_stripe_created bigint,
                                                  p_transition_at bigint,
                                                  p_number text,
                                                  p_customer_email text,
                                                  p_customer_name text,
                                                  p_amount_due bigint,
                                                  p_amount_paid bigint,
                                                  p_amount_remaining bigint,
                                                  p_hosted_invoice_url text,
                                                  p_due_date bigint,
                                                  p_finalized_at bigint,
                                                  p_paid_at bigint,
                                                  p_voided_at bigint)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_result   text;
    v_changed  boolean;
BEGIN
    IF p_stripe_invoice_id IS NULL THEN
        INSERT INTO webhook_events (id, type, stripe_created_at)
        VALUES (p_event_id, p_type, to_timestamp(p_event_created))
        ON CONFLICT (id) DO NOTHING;

        RETURN CASE WHEN FOUND THEN 'ignored' ELSE 'duplicate' END;
    END IF;

    -- The invoice's lock first (migration 0004): a second delivery of
    -- this event waits here until the first commits, then finds its id.
    -- The id is recorded after the effect, with whether it changed the
    -- row, in one write; under the lock no other transaction records it
    -- meanwhile (if one did, the INSERT fails and the whole event rolls
    -- back, so it still happens once).
    PERFORM invoices_lock(p_stripe_invoice_id);

    PERFORM 1 FROM webhook_events WHERE id = p_event_id;

    IF FOUND THEN
        RETURN 'duplicate';
    END IF;

    IF p_type = 'invoice.deleted' THEN
        v_changed := invoices_delete(p_stripe_invoice_id);
        v_result := 'deleted';

    ELSE
        v_result := invoices_apply(p_stripe_invoice_id, p_stripe_customer_id,
                                   p_status, p_amount, p_currency,
                                   p_invoice_pdf, p_stripe_created,
                                   p_event_created, p_transition_at, p_number,
                                   p_customer_email, p_customer_name,
                                   p_amount_due, p_amount_paid,
                                   p_amount_remaining, p_hosted_invoice_url,
                                   p_due_date, p_finalized_at, p_paid_at,
                                   p_voided_at);

        -- 'deleted' here: a tombstone refused it, nothing changed
        v_changed := v_result IN ('inserted', 'updated');
    END IF;

    INSERT INTO webhook_events (id, type, stripe_created_at,
                                stripe_invoice_id, changed)
    VALUES (p_event_id, p_type, to_timestamp(p_event_created),
            p_stripe_invoice_id, v_changed);

    RETURN v_result;
END
$$;
