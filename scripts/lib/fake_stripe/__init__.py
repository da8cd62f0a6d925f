"""The fake Stripe started by scripts/fake-stripe (its header says what it
fakes and how it behaves like Stripe).  One module a concern:

  server.py           the HTTP server: reading a request, auth,
                      Stripe-Version, Idempotency-Key replay, fault rules,
                      latency, writing the answer; serve() runs it
  routes.py           the /v1 routing table (method + path -> handler),
                      unknown ids and URLs, ?expand[]=
  customers.py        /v1/customers
  payment_methods.py  /v1/payment_methods and the test cards (pm_card_visa...)
  invoices.py         /v1/invoices and /v1/invoices/ID/{lines, finalize, pay,
                      void, mark_uncollectible}; finalizing, paying, charging
  invoice_items.py    /v1/invoiceitems and the invoice lines they make
  auto_advance.py     what Stripe does by itself: finalizing drafts and
                      collecting open invoices when they are due
  events.py           event objects (emit) and /v1/events
  webhooks.py         POSTing signed events to the webhook URL, with retries
  control.py          the /_fake/ test knobs
  fake.py             the running fake: config, fault rules, request log,
                      log file, the automatic-collection thread
  state.py            Store, every Stripe object under one lock (its methods
                      come from the resource modules above)
  form.py             Stripe's bracketed form bodies, parameter checking
  lists.py            list parameters: pagination, created[gte]= ranges
  errors.py           Stripe's error shape and the canned errors
  common.py           the API version, ids, the clock
"""
