-- 0001: teams, invoices, webhook events, idempotency keys.
--
-- Identifiers exposed by the API (_id) are 24 lowercase hex characters in
-- MongoDB ObjectId form: 4 bytes of seconds since the epoch, then 8 random
-- bytes.  The admin dashboard that consumes the API already expects them.

CREATE FUNCTION invoices_object_id() RETURNS char(24)
LANGUAGE sql VOLATILE AS $$
    SELECT lpad(to_hex(floor(extract(epoch FROM clock_timestamp()))::bigint), 8, '0')
        || substr(md5(gen_random_uuid()::text), 1, 16)
$$;

CREATE TABLE teams (
    id                  char(24)    PRIMARY KEY DEFAULT invoices_object_id()
                                    CHECK (id ~ '^[0-9a-f]{24}$'),
    name                text        NOT NULL,
    stripe_customer_id  text        UNIQUE,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE invoices (
    id                  char(24)    PRIMARY KEY DEFAULT invoices_object_id()
                                    CHECK (id ~ '^[0-9a-f]{24}$'),
    stripe_invoice_id   text        NOT NULL UNIQUE,
    stripe_customer_id  text,
    team_id             char(24)    REFERENCES teams (id) ON DELETE SET NULL,
    status              text        NOT NULL
                                    CHECK (status IN ('draft', 'open', 'paid',
                                                      'uncollectible', 'void')),
    amount              bigint      NOT NULL,
    currency            text        NOT NULL,
    invoice_pdf         text,
    stripe_created_at   timestamptz NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);

-- The list order: createdAt (Stripe's created) descending, then _id descending.
CREATE INDEX invoices_list_order ON invoices (stripe_created_at DESC, id DESC);
CREATE INDEX invoices_team ON invoices (team_id);
CREATE INDEX invoices_customer ON invoices (stripe_customer_id);

CREATE TABLE webhook_events (
    id                  text        PRIMARY KEY,
    type                text        NOT NULL,
    stripe_created_at   timestamptz,
    received_at         timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE idempotency_keys (
    key                 text        PRIMARY KEY CHECK (length(key) <= 255),
    request_hash        text        NOT NULL,
    state               text        NOT NULL DEFAULT 'running'
                                    CHECK (state IN ('running', 'done')),
    response_status     integer,
    response_body       text,
    stripe_invoice_id   text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);
