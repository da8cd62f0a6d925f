-- 0004: one writer at a time per Stripe invoice, and Idempotency-Keys held
-- by a lease instead of a session lock.
--
-- Writes about one invoice are serialised.  Stripe does not order its
-- deliveries: an invoice.deleted and an invoice.created of the same draft
-- may run at once, and under READ COMMITTED the created's INSERT could
-- pass the tombstone check before the delete committed, leaving the row
-- back for good.  Every write about a Stripe invoice (the webhook, the
-- create's store, the sync, through invoices_apply() and
-- invoices_webhook_event()) now first takes a transaction-level advisory
-- lock on the invoice id; each later statement of the plpgsql function
-- takes a new snapshot, so it sees whatever the previous holder committed.
-- The tombstone in invoices_deleted then stops every later write.
--
-- The advisory key is the pair (class, hashtext(id)): two int4 keys never
-- collide with a single bigint key, and a hash collision between two ids
-- only makes their writes wait for each other.

CREATE FUNCTION invoices_lock(p_stripe_invoice_id text) RETURNS void
LANGUAGE sql VOLATILE AS $$
    -- 1768846963 is 'invs' read as a big-endian int4: the class of these locks
    SELECT pg_advisory_xact_lock(1768846963, hashtext(p_stripe_invoice_id))
$$;

CREATE OR REPLACE FUNCTION invoices_apply(p_stripe_invoice_id text,
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
                          p_stripe_created, p_event_created, p_transition_at);
END
$$;


-- Idempotency-Keys: a lease, not a session-level advisory lock.
--
-- A session lock stays held for as long as PostgreSQL believes the
-- session alive: a node that stops answering (a stopped process, a cut
-- network) kept every key it held until TCP keepalive gave up, about two
-- hours.  Now a claim is a row: lease_until says until when its holder
-- may work on it (the holder renews it before every Stripe step), and
-- fence counts the claims.  Another request may take over a key whose
-- lease has run out; it gets the next fence, and every write of a holder
-- names its fence, so a holder that wakes up late finds its writes
-- refused and cannot overwrite the taker's result.  A lease_until of NULL
-- is a key nobody holds (released after a failure that may be retried).
-- Times are the database's, so the nodes' clocks do not matter.

ALTER TABLE idempotency_keys
    ADD COLUMN lease_until timestamptz,
    ADD COLUMN fence       bigint      NOT NULL DEFAULT 0;

-- Rows of the old scheme: nobody holds them now.
UPDATE idempotency_keys SET lease_until = NULL WHERE state = 'running';

-- Claims p_key for a request whose body hashes to p_hash.  outcome:
--   'claimed'   the caller holds the key with "fence" until the lease ends;
--               stripe_invoice_id is what an earlier holder left (or NULL)
--   'done'      finished: response_status and response_body are the answer
--   'reused'    the key was used with another body
--   'in_use'    another holder's lease is still running
CREATE FUNCTION invoices_idempotency_claim(p_key text, p_hash text,
                                           p_lease_ms bigint)
RETURNS TABLE (outcome text, fence bigint, response_status integer,
               response_body text, stripe_invoice_id text)
LANGUAGE plpgsql AS $$
DECLARE
    v_row idempotency_keys%ROWTYPE;
BEGIN
    INSERT INTO idempotency_keys (key, request_hash, lease_until, fence)
    VALUES (p_key, p_hash,
            clock_timestamp() + p_lease_ms * interval '1 millisecond', 1)
    ON CONFLICT (key) DO NOTHING;

    IF FOUND THEN
        RETURN QUERY SELECT 'claimed'::text, 1::bigint, NULL::integer,
                            NULL::text, NULL::text;
        RETURN;
    END IF;

    SELECT * INTO v_row FROM idempotency_keys k
     WHERE k.key = p_key FOR UPDATE;

    IF NOT FOUND THEN
        -- released and deleted between the two statements
        RETURN QUERY SELECT 'in_use'::text, 0::bigint, NULL::integer,
                            NULL::text, NULL::text;
        RETURN;
    END IF;

    IF v_row.request_hash <> p_hash THEN
        RETURN QUERY SELECT 'reused'::text, v_row.fence, NULL::integer,
                            NULL::text, NULL::text;
        RETURN;
    END IF;

    IF v_row.state = 'done' THEN
        RETURN QUERY SELECT 'done'::text, v_row.fence, v_row.response_status,
                            v_row.response_body, v_row.stripe_invoice_id;
        RETURN;
    END IF;

    IF v_row.lease_until IS NOT NULL
       AND v_row.lease_until > clock_timestamp()
    THEN
        RETURN QUERY SELECT 'in_use'::text, v_row.fence, NULL::integer,
                            NULL::text, NULL::text;
        RETURN;
    END IF;

    UPDATE idempotency_keys k
       SET fence = k.fence + 1,
           lease_until = clock_timestamp()
                         + p_lease_ms * interval '1 millisecond',
           updated_at = now()
     WHERE k.key = p_key;

    RETURN QUERY SELECT 'claimed'::text, v_row.fence + 1, NULL::integer,
                        NULL::text, v_row.stripe_invoice_id;
END
$$;
