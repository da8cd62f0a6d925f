"""Invoices: the invoice object, its totals, finalizing, paying and charging
it (Store methods, through InvoiceState), and the /v1/invoices routes
(InvoiceRoutes, in routes.py's table): create, list, get, update, delete,
GET .../lines, POST .../finalize, .../pay, .../send, .../void,
.../mark_uncollectible.  Invoice items and the lines they make are in
invoice_items.py; the automatic finalization and collection in
auto_advance.py."""

import copy
import re
import time

from .common import ACCOUNT, new_id, now, rand62
from .errors import StripeError, invalid, no_such
from .form import check_params, require
from .lists import LIST_SPEC, in_range, paginate


CURRENCY_RE = re.compile(r"^[a-z]{3}$")
INVOICE_SPEC = {
    "customer": "str", "default_payment_method": "str",
    "collection_method": ("enum", ["charge_automatically", "send_invoice"]),
    "auto_advance": "bool",
    "pending_invoice_items_behavior": ("enum", ["exclude", "include"]),
    "currency": "str", "description": "str", "metadata": "metadata",
    "days_until_due": "int", "expand": "expand",
}
INVOICE_UPDATE_SPEC = {
    "auto_advance": "bool", "default_payment_method": "str",
    "description": "str", "metadata": "metadata", "expand": "expand",
}
INVOICE_LIST_SPEC = dict(LIST_SPEC, customer="str", created="range",
                         collection_method=("enum", ["charge_automatically",
                                                     "send_invoice"]),
                         status=("enum", ["draft", "open", "paid",
                                          "uncollectible", "void"]),
                         due_date="range")


class InvoiceState:
    """Store methods (state.py) for invoices."""

    def invoice(self, iid, param="id", status=404):
        inv = self.invoices.get(iid) if isinstance(iid, str) else None
        if inv is None:
            raise no_such("invoice", iid, param, status)
        return inv

    def new_invoice(self, p, cust):
        born = time.time()
        t = int(born)
        iid = new_id("in")
        method = p.get("collection_method") or "charge_automatically"
        auto = p.get("auto_advance")
        if auto is None:
            auto = True
        fin_delay = self.fake.auto_finalize_delay()
        due = None
        if method == "send_invoice":
            due = t + 86400 * p["days_until_due"]
        inv = {
            "id": iid,
            "object": "invoice",
            "account_country": "US",
            "account_name": "Fake Stripe Test Account",
            "account_tax_ids": None,
            "amount_due": 0,
            "amount_paid": 0,
            "amount_remaining": 0,
            "amount_shipping": 0,
            "application": None,
            "application_fee_amount": None,
            "attempt_count": 0,
            "attempted": False,
            "auto_advance": auto,
            "automatic_tax": {"enabled": False, "status": None},
            "billing_reason": "manual",
            "charge": None,
            "collection_method": method,
            "created": t,
            "currency": p.get("currency") or cust.get("currency") or "usd",
            "custom_fields": None,
            "customer": cust["id"],
            "customer_address": copy.deepcopy(cust["address"]),
            "customer_email": cust["email"],
            "customer_name": cust["name"],
            "customer_phone": cust["phone"],
            "customer_shipping": copy.deepcopy(cust["shipping"]),
            "customer_tax_exempt": cust["tax_exempt"],
            "customer_tax_ids": [],
            "default_payment_method": p.get("default_payment_method"),
            "default_source": None,
            "default_tax_rates": [],
            "description": p.get("description"),
            "discount": None,
            "discounts": [],
            "due_date": due,
            "effective_at": None,
            "ending_balance": None,
            "footer": None,
            "from_invoice": None,
            "hosted_invoice_url": None,
            "invoice_pdf": None,
            "last_finalization_error": None,
            "latest_revision": None,
            "lines": {"object": "list", "data": [], "has_more": False,
                      "total_count": 0,
                      "url": "/v1/invoices/%s/lines" % iid},
            "livemode": False,
            "metadata": dict(p.get("metadata") or {}),
            "next_payment_attempt": (t + max(1, int(round(fin_delay)))
                                     if auto and
                                     method == "charge_automatically"
                                     else None),
            "number": None,
            "on_behalf_of": None,
            "paid": False,
            "paid_out_of_band": False,
            "payment_intent": None,
            "payment_settings": {"default_mandate": None,
                                 "payment_method_options": None,
                                 "payment_method_types": None},
            "period_end": t,
            "period_start": t,
            "post_payment_credit_notes_amount": 0,
            "pre_payment_credit_notes_amount": 0,
            "quote": None,
            "receipt_number": None,
            "rendering": {"amount_tax_display": None,
                          "pdf": {"page_size": "auto"}},
            "rendering_options": None,
            "shipping_cost": None,
            "shipping_details": None,
            "starting_balance": 0,
            "statement_descriptor": None,
            "status": "draft",
            "status_transitions": {"finalized_at": None,
                                   "marked_uncollectible_at": None,
                                   "paid_at": None, "voided_at": None},
            "subscription": None,
            "subscription_details": {"metadata": None},
            "subtotal": 0,
            "subtotal_excluding_tax": 0,
            "tax": None,
            "test_clock": None,
            "total": 0,
            "total_discount_amounts": [],
            "total_excluding_tax": 0,
            "total_tax_amounts": [],
            "transfer_data": None,
            "webhooks_delivered_at": None,
        }
        self.invoices[iid] = inv
        self.lines[iid] = []
        self.born[iid] = born
        if auto:
            self.schedule(born + fin_delay, iid, "finalize")
        return inv

    def retotal(self, inv):
        lines = self.lines[inv["id"]]
        sub = sum(li["amount"] for li in lines)
        inv["subtotal"] = inv["subtotal_excluding_tax"] = sub
        inv["total"] = inv["total_excluding_tax"] = sub
        inv["amount_due"] = max(sub, 0)
        inv["amount_remaining"] = inv["amount_due"] - inv["amount_paid"]
        inv["lines"]["data"] = copy.deepcopy(lines[:10])
        inv["lines"]["has_more"] = len(lines) > 10
        inv["lines"]["total_count"] = len(lines)

    def finalize(self, inv, ctx):
        t = now()
        cust = self.customers[inv["customer"]]
        seq = cust["next_invoice_sequence"]
        cust["next_invoice_sequence"] = seq + 1
        token = "CAcQARoX" + rand62(40)
        inv["status"] = "open"
        inv["number"] = "%s-%04d" % (cust["invoice_prefix"], seq)
        inv["hosted_invoice_url"] = ("https://invoice.stripe.com/i/%s/test_%s"
                                     "?s=ap" % (ACCOUNT, token))
        inv["invoice_pdf"] = ("https://pay.stripe.com/invoice/%s/test_%s/pdf"
                              "?s=ap" % (ACCOUNT, token))
        inv["status_transitions"]["finalized_at"] = t
        inv["effective_at"] = t
        inv["ending_balance"] = 0
        inv["webhooks_delivered_at"] = t
        inv["next_payment_attempt"] = None
        if inv["amount_due"] > 0 and \
                inv["collection_method"] == "charge_automatically":
            inv["payment_intent"] = new_id("pi")
        self.emit("invoice.finalized", inv, ctx)
        if inv["amount_due"] <= 0:
            self.mark_paid(inv, ctx, None)
        elif inv["auto_advance"] and \
                inv["collection_method"] == "charge_automatically":
            delay = self.fake.collect_delay()
            inv["next_payment_attempt"] = t + max(1, int(round(delay)))
            self.schedule(time.time() + delay, inv["id"], "collect")

    def mark_paid(self, inv, ctx, charge, out_of_band=False):
        prev = {"status": inv["status"], "paid": inv["paid"],
                "amount_paid": inv["amount_paid"],
                "amount_remaining": inv["amount_remaining"],
                "attempted": inv["attempted"],
                "attempt_count": inv["attempt_count"],
                "charge": inv["charge"],
                "next_payment_attempt": inv["next_payment_attempt"],
                "status_transitions": dict(inv["status_transitions"])}
        inv["status"] = "paid"
        inv["paid"] = True
        inv["paid_out_of_band"] = out_of_band
        inv["amount_paid"] = inv["amount_due"]
        inv["amount_remaining"] = 0
        if charge:
            inv["charge"] = charge
            inv["attempted"] = True
            inv["attempt_count"] += 1
        inv["next_payment_attempt"] = None
        inv["status_transitions"]["paid_at"] = now()
        inv["receipt_number"] = None
        self.emit("invoice.updated", inv, ctx, previous=prev)
        self.emit("invoice.paid", inv, ctx)
        self.emit("invoice.payment_succeeded", inv, ctx)

    def charge(self, inv, pm_id, ctx):
        """One payment attempt; returns None or the StripeError of a decline."""
        card = self.pm_card.get(pm_id) if pm_id else None
        if card is not None and card["fail"] is None:
            self.mark_paid(inv, ctx, new_id("ch"))
            return None
        prev = {"attempted": inv["attempted"],
                "attempt_count": inv["attempt_count"],
                "next_payment_attempt": inv["next_payment_attempt"]}
        inv["attempted"] = True
        inv["attempt_count"] += 1
        if card is None:
            err = StripeError(400, "This customer has no attached payment "
                              "source or default payment method. Please "
                              "consider adding a default payment method. For "
                              "more information, visit https://stripe.com/"
                              "docs/billing/subscriptions/payment-methods-"
                              "setting#payment-method-priority.",
                              store=True)
        else:
            ch = new_id("ch")
            inv["charge"] = ch
            prev["charge"] = None
            err = StripeError(402, "Your card was declined.", "card_error",
                              code="card_declined",
                              decline_code=card["fail"], charge=ch,
                              payment_method={"id": pm_id,
                                              "object": "payment_method"})
        inv["next_payment_attempt"] = (now() + 3 * 86400
                                       if inv["auto_advance"] else None)
        self.emit("invoice.payment_failed", inv, ctx)
        self.emit("invoice.updated", inv, ctx, previous=prev)
        return err

    def payment_method_for(self, inv):
        pm = inv["default_payment_method"]
        if pm is None:
            pm = (self.customers[inv["customer"]]["invoice_settings"]
                  ["default_payment_method"])
        return pm


class InvoiceRoutes:
    """Api handlers (routes.py) of /v1/invoices."""

    def invoice_create(self, s, p, m, ctx):
        p = check_params(p, INVOICE_SPEC)
        require(p, "customer")
        if p.get("currency") is not None:
            p["currency"] = p["currency"].lower()
            if not CURRENCY_RE.match(p["currency"]):
                raise invalid("Invalid currency: %s. Stripe currently "
                              "supports these currencies: usd, eur, gbp, ..."
                              % p["currency"], param="currency")
        method = p.get("collection_method") or "charge_automatically"
        if method == "send_invoice" and p.get("days_until_due") is None:
            raise invalid("Missing required param: days_until_due.",
                          param="days_until_due", code="parameter_missing")
        if method != "send_invoice" and "days_until_due" in p:
            raise invalid("You can only set `days_until_due` if "
                          "`collection_method` is `send_invoice`.",
                          param="days_until_due")
        cust = s.customer(p["customer"])
        if p.get("default_payment_method"):
            p["default_payment_method"] = s.resolve_pm(
                p["default_payment_method"], cust, "default_payment_method")
        inv = s.new_invoice(p, cust)
        if p.get("pending_invoice_items_behavior") == "include":
            for item in list(s.items.values()):
                if item["customer"] == cust["id"] and item["invoice"] is None:
                    s.add_line(inv, item)
        s.emit("invoice.created", inv, ctx)
        return 200, self.expanded(s, inv, p.get("expand"))

    def invoice_get(self, s, p, m, ctx):
        p = check_params(p, {"expand": "expand"})
        return 200, self.expanded(s, s.invoice(m.group(1)), p.get("expand"))

    def invoice_update(self, s, p, m, ctx):
        p = check_params(p, INVOICE_UPDATE_SPEC)
        inv = s.invoice(m.group(1))
        if inv["status"] in ("paid", "void", "uncollectible"):
            for k in p:
                if k not in ("metadata", "expand"):
                    raise invalid("You can only update `metadata` on a %s "
                                  "invoice." % inv["status"], param=k,
                                  code="invoice_not_editable", store=True)
        before = copy.deepcopy(inv)
        if "description" in p:
            inv["description"] = p["description"]
        if "default_payment_method" in p:
            want = p["default_payment_method"]
            inv["default_payment_method"] = (
                None if want is None else
                s.resolve_pm(want, s.customers[inv["customer"]],
                             "default_payment_method"))
        if "metadata" in p:
            if p["metadata"] == {}:
                inv["metadata"] = {}
            for k, v in p["metadata"].items():
                if v == "":
                    inv["metadata"].pop(k, None)
                else:
                    inv["metadata"][k] = v
        if p.get("auto_advance") is not None and \
                p["auto_advance"] != inv["auto_advance"]:
            inv["auto_advance"] = p["auto_advance"]
            if inv["auto_advance"]:
                s.auto_advance_on(inv)
            else:
                # No automatic finalization nor collection from now on.
                inv["next_payment_attempt"] = None
        prev = {k: before[k] for k in inv if inv[k] != before[k]}
        if prev:
            s.emit("invoice.updated", inv, ctx, previous=prev)
        return 200, self.expanded(s, inv, p.get("expand"))

    def invoice_list(self, s, p, m, ctx):
        q = check_params(p, INVOICE_LIST_SPEC)
        objs = [i for i in reversed(list(s.invoices.values()))
                if (q.get("customer") is None or i["customer"] == q["customer"])
                and (q.get("status") is None or i["status"] == q["status"])
                and (q.get("collection_method") is None or
                     i["collection_method"] == q["collection_method"])
                and in_range(i["created"], q.get("created"))]
        return 200, self.expanded(s, paginate(objs, q, "/v1/invoices",
                                              "invoice"), q.get("expand"))

    def invoice_lines(self, s, p, m, ctx):
        q = check_params(p, LIST_SPEC)
        inv = s.invoice(m.group(1))
        lines = s.lines[inv["id"]]
        # Lines read in the order they were added: paginate that order.
        return 200, paginate(list(lines), q, "/v1/invoices/%s/lines"
                             % inv["id"], "line item")

    def invoice_delete(self, s, p, m, ctx):
        check_params(p, {})
        inv = s.invoice(m.group(1))
        if inv["status"] != "draft":
            raise invalid("You can only delete draft invoices. This invoice "
                          "is %s; void it or mark it uncollectible instead."
                          % inv["status"], store=True)
        del s.invoices[inv["id"]]
        s.born.pop(inv["id"], None)
        for iid in [k for k, v in s.items.items() if v["invoice"] == inv["id"]]:
            del s.items[iid]
        s.lines.pop(inv["id"], None)
        s.emit("invoice.deleted", inv, ctx)
        return 200, {"id": inv["id"], "object": "invoice", "deleted": True}

    def invoice_finalize(self, s, p, m, ctx):
        p = check_params(p, {"auto_advance": "bool", "expand": "expand"})
        inv = s.invoice(m.group(1))
        if inv["status"] != "draft":
            raise invalid("This invoice is already finalized, you can't "
                          "re-finalize a non-draft invoice.",
                          code="invoice_not_editable", store=True)
        if p.get("auto_advance") is not None:
            inv["auto_advance"] = p["auto_advance"]
        s.finalize(inv, ctx)
        return 200, self.expanded(s, inv, p.get("expand"))

    def invoice_pay(self, s, p, m, ctx):
        p = check_params(p, {"payment_method": "str", "paid_out_of_band":
                             "bool", "off_session": "bool", "forgive": "bool",
                             "expand": "expand"})
        inv = s.invoice(m.group(1))
        if inv["status"] == "paid":
            raise invalid("Invoice is already paid", store=True)
        if inv["status"] == "void":
            raise invalid("This invoice is void and can no longer be paid.",
                          store=True)
        cust = s.customers[inv["customer"]]
        pm = None
        if p.get("payment_method"):
            pm = s.resolve_pm(p["payment_method"], cust, "payment_method")
        if inv["status"] == "draft":
            s.finalize(inv, ctx)
            if inv["status"] == "paid":
                return 200, self.expanded(s, inv, p.get("expand"))
        if p.get("paid_out_of_band"):
            s.mark_paid(inv, ctx, None, out_of_band=True)
            return 200, self.expanded(s, inv, p.get("expand"))
        err = s.charge(inv, pm or s.payment_method_for(inv), ctx)
        if err is not None:
            raise err
        return 200, self.expanded(s, inv, p.get("expand"))

    def invoice_send(self, s, p, m, ctx):
        # Stripe e-mails the invoice (in test mode it only emits
        # invoice.sent).  It sends only invoices that are collected by
        # sending them (collection_method=send_invoice), never a draft (the
        # fake's wording; Stripe's checks are these).
        p = check_params(p, {"expand": "expand"})
        inv = s.invoice(m.group(1))
        if inv["collection_method"] != "send_invoice":
            raise invalid("You can only manually send an invoice if its "
                          "collection method is 'send_invoice'.", store=True)
        if inv["status"] in ("draft", "void"):
            raise invalid("You can't send an invoice that is %s."
                          % inv["status"], store=True)
        s.emit("invoice.sent", inv, ctx)
        return 200, self.expanded(s, inv, p.get("expand"))

    def invoice_void(self, s, p, m, ctx):
        p = check_params(p, {"expand": "expand"})
        inv = s.invoice(m.group(1))
        if inv["status"] not in ("open", "uncollectible"):
            raise invalid("You can only void open or uncollectible invoices; "
                          "this invoice is %s." % inv["status"], store=True)
        prev = {"status": inv["status"],
                "status_transitions": dict(inv["status_transitions"]),
                "next_payment_attempt": inv["next_payment_attempt"]}
        inv["status"] = "void"
        inv["status_transitions"]["voided_at"] = now()
        inv["next_payment_attempt"] = None
        s.emit("invoice.voided", inv, ctx)
        s.emit("invoice.updated", inv, ctx, previous=prev)
        return 200, self.expanded(s, inv, p.get("expand"))

    def invoice_uncollectible(self, s, p, m, ctx):
        p = check_params(p, {"expand": "expand"})
        inv = s.invoice(m.group(1))
        if inv["status"] != "open":
            raise invalid("You can only mark open invoices as uncollectible; "
                          "this invoice is %s." % inv["status"], store=True)
        prev = {"status": inv["status"],
                "status_transitions": dict(inv["status_transitions"]),
                "next_payment_attempt": inv["next_payment_attempt"]}
        inv["status"] = "uncollectible"
        inv["status_transitions"]["marked_uncollectible_at"] = now()
        inv["next_payment_attempt"] = None
        s.emit("invoice.marked_uncollectible", inv, ctx)
        s.emit("invoice.updated", inv, ctx, previous=prev)
        return 200, self.expanded(s, inv, p.get("expand"))
