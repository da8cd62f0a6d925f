-- Demo data for scripts/run: three teams and thirteen invoices in every
-- status, one of them for a Stripe customer that no team is linked to.
-- Fixed ids, so running it again changes nothing (ON CONFLICT DO NOTHING).
--
--   psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -f scripts/seed.sql

INSERT INTO teams (id, name, stripe_customer_id) VALUES
    ('6548a41138406c14db33b601', 'Acme GmbH',   'cus_DemoAcme0001'),
    ('6548a41138406c14db33b602', 'Globex SE',   'cus_DemoGlobex0001'),
    ('6548a41138406c14db33b603', 'Initech Ltd', 'cus_DemoInitech0001')
ON CONFLICT DO NOTHING;

-- The details (migration 0005) as Stripe would have them: a number, the
-- hosted page and finalizedAt once finalized, paidAt and voidedAt by
-- status, the customer's email and name as printed on the invoice.
INSERT INTO invoices (id, stripe_invoice_id, stripe_customer_id, team_id,
                      status, amount, currency, invoice_pdf,
                      stripe_created_at, number, customer_email,
                      customer_name, amount_due, amount_paid,
                      amount_remaining, hosted_invoice_url, finalized_at,
                      paid_at, voided_at)
SELECT v.id, v.invoice, v.customer, t.id, v.status, v.amount, 'eur',
       CASE WHEN v.status <> 'draft' THEN
           'https://pay.stripe.com/invoice/acct_1DemoAccount0001/test_'
           || v.invoice || '/pdf?s=ap'
       END,
       date_trunc('second', now()) - v.age,
       CASE WHEN v.status <> 'draft' THEN
           upper(substr(v.customer, 9, 4)) || '-' || right(v.invoice, 4)
       END,
       'billing@' || lower(substr(v.customer, 9, length(v.customer) - 12))
           || '.example',
       coalesce(t.name, 'Orphan Customer'),
       v.amount,
       CASE WHEN v.status = 'paid' THEN v.amount ELSE 0 END,
       CASE WHEN v.status IN ('paid', 'void') THEN 0 ELSE v.amount END,
       CASE WHEN v.status <> 'draft' THEN
           'https://invoice.stripe.com/i/acct_1DemoAccount0001/test_'
           || v.invoice
       END,
       CASE WHEN v.status <> 'draft' THEN
           date_trunc('second', now()) - v.age + interval '1 minute'
       END,
       CASE WHEN v.status = 'paid' THEN
           date_trunc('second', now()) - v.age + interval '2 minutes'
       END,
       CASE WHEN v.status = 'void' THEN
           date_trunc('second', now()) - v.age + interval '2 days'
       END
FROM (VALUES
    ('6553a0c0de00000000000001', 'in_1DemoAcme00000000000001',
     'cus_DemoAcme0001',    'paid',           3300, interval '41 days 3 hours'),
    ('6553a0c0de00000000000002', 'in_1DemoAcme00000000000002',
     'cus_DemoAcme0001',    'paid',          12900, interval '34 days 5 hours'),
    ('6553a0c0de00000000000003', 'in_1DemoGlobex000000000001',
     'cus_DemoGlobex0001',  'uncollectible',  4900, interval '30 days 1 hour'),
    ('6553a0c0de00000000000004', 'in_1DemoInitech00000000001',
     'cus_DemoInitech0001', 'paid',         250000, interval '27 days 8 hours'),
    ('6553a0c0de00000000000005', 'in_1DemoGlobex000000000002',
     'cus_DemoGlobex0001',  'void',           7500, interval '21 days 2 hours'),
    ('6553a0c0de00000000000006', 'in_1DemoAcme00000000000003',
     'cus_DemoAcme0001',    'paid',           3300, interval '14 days 6 hours'),
    ('6553a0c0de00000000000007', 'in_1DemoOrphan000000000001',
     'cus_DemoOrphan0001',  'paid',           1999, interval '12 days 4 hours'),
    ('6553a0c0de00000000000008', 'in_1DemoInitech00000000002',
     'cus_DemoInitech0001', 'open',          89000, interval '9 days 7 hours'),
    ('6553a0c0de00000000000009', 'in_1DemoGlobex000000000003',
     'cus_DemoGlobex0001',  'paid',          15800, interval '6 days 3 hours'),
    ('6553a0c0de0000000000000a', 'in_1DemoAcme00000000000004',
     'cus_DemoAcme0001',    'open',           3300, interval '3 days 9 hours'),
    ('6553a0c0de0000000000000b', 'in_1DemoInitech00000000003',
     'cus_DemoInitech0001', 'draft',         42000, interval '1 day 5 hours'),
    ('6553a0c0de0000000000000c', 'in_1DemoGlobex000000000004',
     'cus_DemoGlobex0001',  'draft',           990, interval '6 hours'),
    ('6553a0c0de0000000000000d', 'in_1DemoAcme00000000000005',
     'cus_DemoAcme0001',    'uncollectible',  5600, interval '2 hours')
) AS v (id, invoice, customer, status, amount, age)
LEFT JOIN teams t ON t.stripe_customer_id = v.customer
ON CONFLICT DO NOTHING;
