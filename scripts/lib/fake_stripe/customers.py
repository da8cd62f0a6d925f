"""Customers: the customer object and its updates (Store methods, through
CustomerState) and POST /v1/customers, GET|POST /v1/customers/ID
(CustomerRoutes, in routes.py's table).  POST /_fake/customers, which seeds
a customer with a chosen id, is in control.py."""

import copy

from .common import new_id, now, rand62
from .errors import invalid, no_such
from .form import check_params
from .payment_methods import CARDS


CUSTOMER_SPEC = {
    "name": "str", "email": "str", "description": "str",
    "metadata": "metadata", "payment_method": "str",
    "invoice_settings": ("obj", {"default_payment_method": "str"}),
    "expand": "expand",
}


class CustomerState:
    """Store methods (state.py) for customers."""

    def new_customer(self, cid, p, ctx):
        c = {
            "id": cid,
            "object": "customer",
            "address": None,
            "balance": 0,
            "created": now(),
            "currency": None,
            "default_source": None,
            "delinquent": False,
            "description": p.get("description"),
            "discount": None,
            "email": p.get("email"),
            "invoice_prefix": rand62(8).upper(),
            "invoice_settings": {"custom_fields": None,
                                 "default_payment_method": None,
                                 "footer": None,
                                 "rendering_options": None},
            "livemode": False,
            "metadata": dict(p.get("metadata") or {}),
            "name": p.get("name"),
            "next_invoice_sequence": 1,
            "phone": None,
            "preferred_locales": [],
            "shipping": None,
            "tax_exempt": "none",
            "test_clock": None,
        }
        return c

    def customer(self, cid, param="customer", status=400):
        c = self.customers.get(cid) if isinstance(cid, str) else None
        if c is None:
            raise no_such("customer", cid, param, status)
        return c

    def apply_customer(self, c, p, ctx, tokens):
        for k in ("name", "email", "description"):
            if k in p:
                c[k] = p[k]
        if "metadata" in p:
            md = c["metadata"]
            for k, v in p["metadata"].items():
                if v == "":
                    md.pop(k, None)
                else:
                    md[k] = v
            if p["metadata"] == {}:
                c["metadata"] = {}
        if p.get("payment_method"):
            pm = self.attach(p["payment_method"], c, "payment_method", tokens)
            tokens[p["payment_method"]] = pm["id"]
        settings = p.get("invoice_settings")
        if settings and "default_payment_method" in settings:
            want = settings["default_payment_method"]
            if want is None:
                c["invoice_settings"]["default_payment_method"] = None
            else:
                param = "invoice_settings[default_payment_method]"
                pid = tokens.get(want)
                if pid is None and want in CARDS:
                    pid = self.attach(want, c, param, tokens)["id"]
                    tokens[want] = pid
                pid = pid or want
                pm = self.pms.get(pid)
                if pm is None:
                    raise no_such("PaymentMethod", want, param)
                if pm["customer"] != c["id"]:
                    raise invalid("The customer does not have a payment "
                                  "method with the ID %s. The payment method "
                                  "must be attached to the customer." % pid,
                                  param=param, store=True)
                c["invoice_settings"]["default_payment_method"] = pid


class CustomerRoutes:
    """Api handlers (routes.py) of /v1/customers."""

    def customer_create(self, s, p, m, ctx):
        p = check_params(p, CUSTOMER_SPEC)
        c = s.new_customer(new_id("cus"), p, ctx)
        tokens = {}
        s.apply_customer(c, p, ctx, tokens)
        s.customers[c["id"]] = c
        s.emit("customer.created", c, ctx)
        self.attached(s, tokens, ctx)
        return 200, self.expanded(s, c, p.get("expand"))

    def attached(self, s, tokens, ctx):
        """payment_method.attached for the cards a customer call attached
        (tokens: what was passed -> the pm_ id it became)."""
        for pid in dict.fromkeys(tokens.values()):
            s.emit("payment_method.attached", s.pms[pid], ctx)

    def customer_get(self, s, p, m, ctx):
        p = check_params(p, {"expand": "expand"})
        return 200, self.expanded(s, s.customer(m.group(1), "id", 404),
                                  p.get("expand"))

    def customer_update(self, s, p, m, ctx):
        p = check_params(p, CUSTOMER_SPEC)
        c = s.customer(m.group(1), "id", 404)
        before = copy.deepcopy(c)
        tokens = {}
        s.apply_customer(c, p, ctx, tokens)
        self.attached(s, tokens, ctx)
        prev = {k: before[k] for k in c if c[k] != before[k]}
        if prev:
            s.emit("customer.updated", c, ctx, previous=prev)
        return 200, self.expanded(s, c, p.get("expand"))
