-- 0011: the work one worker of one node does in the background
-- (ngx_http_invoices_housekeeping.c): the reconciler, which pulls Stripe's
-- invoice events a lost delivery missed, and the pruning of old
-- bookkeeping.
--
-- Which node does each task is a lease, taken and renewed by the one that
-- runs it: a node that stops renewing (killed, cut off) hands over once
-- its lease runs out.  Two nodes that both believed they held it would
-- only do the same work twice: an event is applied once by its id, and a
-- row pruned once.  The reconciler's watermark (Stripe's "created", in
-- seconds, of the newest event it pulled) is kept with its lease, and,
-- while a sweep through Stripe's list takes more than one pass, where it
-- stopped (the last event id read, the newest "created" seen so far).

CREATE TABLE invoices_leases (
    task           text         PRIMARY KEY
                   CHECK (task IN ('reconcile', 'prune')),
    holder         text         NOT NULL,      -- "<host> <pid>"
    lease_until    timestamptz  NOT NULL,
    taken_at       timestamptz  NOT NULL DEFAULT now(),
    watermark      bigint,
    resume_after   text,
    resume_newest  bigint
);

-- The lease of p_task for p_ms more, if it is free, run out, or ours:
-- one row (the holder before, NULL when there was none; the reconciler's
-- state), or none when another holds it.
CREATE FUNCTION invoices_lease_take(p_task text, p_holder text, p_ms bigint)
RETURNS TABLE (previous text, watermark bigint, resume_after text,
               resume_newest bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_previous  text;
BEGIN
    SELECT l.holder INTO v_previous FROM invoices_leases l
     WHERE l.task = p_task;

    RETURN QUERY
    INSERT INTO invoices_leases AS l (task, holder, lease_until)
    VALUES (p_task, p_holder,
            clock_timestamp() + p_ms * interval '1 millisecond')
    ON CONFLICT (task) DO UPDATE
       SET holder = excluded.holder,
           lease_until = excluded.lease_until,
           taken_at = CASE WHEN l.holder = excluded.holder THEN l.taken_at
                           ELSE now() END
     WHERE l.holder = excluded.holder OR l.lease_until < clock_timestamp()
    RETURNING v_previous, l.watermark, l.resume_after, l.resume_newest;
END
$$;

-- The pruning reads the old rows by age, a small batch at a time.  Event
-- ids arrive in the order of received_at, so a BRIN index (a few pages,
-- summarised by VACUUM) finds the old ones without a second B-tree for
-- every webhook's insert to keep up.
CREATE INDEX webhook_events_received ON webhook_events
    USING brin (received_at);
CREATE INDEX invoices_deleted_at ON invoices_deleted (deleted_at);
CREATE INDEX idempotency_keys_done ON idempotency_keys (updated_at)
    WHERE state = 'done';
