-- 0005: more of Stripe's invoice on every row: its number, the customer's
-- email and name as Stripe printed them on the invoice, the amounts due,
-- paid and remaining, the hosted page, the due date and the times it was
-- finalized, paid and voided.
--
-- Rows written before this migration have NULL in these columns until
-- their next write: the next event of the invoice, or a sync
-- (POST /admin/api/invoices/sync, docs/operations.md), which reads every
-- invoice from Stripe and fills them in.
--
-- invoices_apply() and invoices_webhook_event() get new signatures that
-- take the new fields.  The old signatures stay, unchanged, for nodes that
-- still run the previous module while the others are upgraded (the schema
-- goes first, docs/operations.md): their writes keep the rules and leave
-- the new columns as they are.  A later migration drops them.

ALTER TABLE invoices
    ADD COLUMN number              text,
    ADD COLUMN customer_email      text,
    ADD COLUMN customer_name       text,
    ADD COLUMN amount_due          bigint,
    ADD COLUMN amount_paid         bigint,
    ADD COLUMN amount_remaining    bigint,
    ADD COLUMN hosted_invoice_url  text,
    ADD COLUMN due_date            timestamptz,
    ADD COLUMN finalized_at        timestamptz,
    ADD COLUMN paid_at             timestamptz,
    ADD COLUMN voided_at           timestamptz;

-- The rules are those of 0002 and 0004 (one writer per invoice, forward
-- only, the newest view decides, tombstones).  Of the new fields, the
-- number, the hosted page and the status times are facts that Stripe
-- never takes back, so a view without them keeps what the row has; the
-- others are the view's own.
CREATE FUNCTION invoices_apply(p_stripe_invoice_id text,
                               p_stripe_customer_id text,
                               p_status text,
                               p_amount bigint,
                               p_currency text,
                               p_invoice_pdf text,
                               p_stripe_created bigint,
                               p_seen_at bigint,
                               p_seen_tie bigint,
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
    v_team char(24);
    v_old  invoices%ROWTYPE;
    v_new  invoices%ROWTYPE;
BEGIN
    PERFORM invoices_lock(p_stripe_invoice_id);

    PERFORM 1 FROM invoices_deleted
      WHERE stripe_invoice_id = p_stripe_invoice_id;
    IF FOUND THEN
        RETURN 'deleted';
    END IF;

    SELECT id INTO v_team FROM teams
     WHERE stripe_customer_id = p_stripe_customer_id;

    INSERT INTO invoices (stripe_invoice_id, stripe_customer_id, team_id,
                          status, amount, currency, invoice_pdf,
                          stripe_created_at, stripe_seen_at, stripe_seen_tie,
                          number, customer_email, customer_name, amount_due,
                          amount_paid, amount_remaining, hosted_invoice_url,
                          due_date, finalized_at, paid_at, voided_at)
    VALUES (p_stripe_invoice_id, p_stripe_customer_id, v_team, p_status,
            p_amount, p_currency, p_invoice_pdf,
            to_timestamp(p_stripe_created), p_seen_at, p_seen_tie,
            p_number, p_customer_email, p_customer_name, p_amount_due,
            p_amount_paid, p_amount_remaining, p_hosted_invoice_url,
            to_timestamp(p_due_date), to_timestamp(p_finalized_at),
            to_timestamp(p_paid_at), to_timestamp(p_voided_at))
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

    v_new := v_old;
    v_new.status := p_status;
    v_new.amount := p_amount;
    v_new.currency := p_currency;
    v_new.invoice_pdf := coalesce(p_invoice_pdf, v_old.invoice_pdf);
    v_new.stripe_customer_id := p_stripe_customer_id;
    v_new.team_id := coalesce(v_team, v_old.team_id);
    v_new.number := coalesce(p_number, v_old.number);
    v_new.customer_email := p_customer_email;
    v_new.customer_name := p_customer_name;
    v_new.amount_due := p_amount_due;
    v_new.amount_paid := p_amount_paid;
    v_new.amount_remaining := p_amount_remaining;
    v_new.hosted_invoice_url := coalesce(p_hosted_invoice_url,
                                         v_old.hosted_invoice_url);
    v_new.due_date := to_timestamp(p_due_date);
    v_new.finalized_at := coalesce(to_timestamp(p_finalized_at),
                                   v_old.finalized_at);
    v_new.paid_at := coalesce(to_timestamp(p_paid_at), v_old.paid_at);
    v_new.voided_at := coalesce(to_timestamp(p_voided_at), v_old.voided_at);

    IF (v_new.status, v_new.amount, v_new.currency, v_new.invoice_pdf,
        v_new.stripe_customer_id, v_new.team_id, v_new.number,
        v_new.customer_email, v_new.customer_name, v_new.amount_due,
        v_new.amount_paid, v_new.amount_remaining, v_new.hosted_invoice_url,
        v_new.due_date, v_new.finalized_at, v_new.paid_at, v_new.voided_at)
       IS NOT DISTINCT FROM
       (v_old.status, v_old.amount, v_old.currency, v_old.invoice_pdf,
        v_old.stripe_customer_id, v_old.team_id, v_old.number,
        v_old.customer_email, v_old.customer_name, v_old.amount_due,
        v_old.amount_paid, v_old.amount_remaining, v_old.hosted_invoice_url,
        v_old.due_date, v_old.finalized_at, v_old.paid_at, v_old.voided_at)
    THEN
        RETURN 'unchanged';
    END IF;

    UPDATE invoices
       SET status = v_new.status,
           amount = v_new.amount,
           currency = v_new.currency,
           invoice_pdf = v_new.invoice_pdf,
           stripe_customer_id = v_new.stripe_customer_id,
           team_id = v_new.team_id,
           number = v_new.number,
           customer_email = v_new.customer_email,
           customer_name = v_new.customer_name,
           amount_due = v_new.amount_due,
           amount_paid = v_new.amount_paid,
           amount_remaining = v_new.amount_remaining,
           hosted_invoice_url = v_new.hosted_invoice_url,
           due_date = v_new.due_date,
           finalized_at = v_new.finalized_at,
           paid_at = v_new.paid_at,
           voided_at = v_new.voided_at,
           stripe_seen_at = greatest(stripe_seen_at, p_seen_at),
           stripe_seen_tie = CASE WHEN p_seen_at >= stripe_seen_at
                                  THEN p_seen_tie ELSE stripe_seen_tie END,
           updated_at = now()
     WHERE id = v_old.id;

    RETURN 'updated';
END
$$;

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
        -- only drafts can be deleted in Stripe; the tombstone is kept as
        -- long as event ids are
        PERFORM invoices_lock(p_stripe_invoice_id);
        INSERT INTO invoices_deleted (stripe_invoice_id)
        VALUES (p_stripe_invoice_id) ON CONFLICT DO NOTHING;
        DELETE FROM invoices WHERE stripe_invoice_id = p_stripe_invoice_id;
        RETURN 'deleted';
    END IF;

    RETURN invoices_apply(p_stripe_invoice_id, p_stripe_customer_id,
                          p_status, p_amount, p_currency, p_invoice_pdf,
                          p_stripe_created, p_event_created, p_transition_at,
                          p_number, p_customer_email, p_customer_name,
                          p_amount_due, p_amount_paid, p_amount_remaining,
                          p_hosted_invoice_url, p_due_date, p_finalized_at,
                          p_paid_at, p_voided_at);
END
$$;
