"""Payment methods: the test cards (tokens such as pm_card_visa, and how each
one fares when charged), creating and attaching payment methods (Store
methods, through PaymentMethodState), and GET /v1/payment_methods/ID,
POST /v1/payment_methods/ID/attach (PaymentMethodRoutes, in routes.py's
table)."""

import hashlib
import time

from .common import new_id, now
from .errors import invalid, no_such
from .form import check_params, require


# ----------------------------------------------------------- test cards


CARDS = {
    "pm_card_visa": {"brand": "visa", "last4": "4242", "fail": None},
    "pm_card_chargeDeclined": {"brand": "visa", "last4": "0002",
                               "fail": "generic_decline"},
    "pm_card_chargeCustomerFail": {"brand": "visa", "last4": "0341",
                                   "fail": "generic_decline"},
    "pm_card_mastercard": {"brand": "mastercard", "last4": "4444",
                           "fail": None},
}


class PaymentMethodState:
    """Store methods (state.py) for payment methods."""

    def new_pm(self, token, customer_id):
        card = CARDS[token]
        pm = {
            "id": new_id("pm"),
            "object": "payment_method",
            "billing_details": {
                "address": {"city": None, "country": None, "line1": None,
                            "line2": None, "postal_code": None,
                            "state": None},
                "email": None, "name": None, "phone": None},
            "card": {
                "brand": card["brand"],
                "checks": {"address_line1_check": None,
                           "address_postal_code_check": None,
                           "cvc_check": "pass"},
                "country": "US",
                "exp_month": 12,
                "exp_year": time.gmtime().tm_year + 3,
                "fingerprint": hashlib.sha256(token.encode()).hexdigest()[:16],
                "funding": "credit",
                "generated_from": None,
                "last4": card["last4"],
                "networks": {"available": [card["brand"]], "preferred": None},
                "three_d_secure_usage": {"supported": True},
                "wallet": None,
            },
            "created": now(),
            "customer": customer_id,
            "livemode": False,
            "metadata": {},
            "type": "card",
        }
        self.pms[pm["id"]] = pm
        self.pm_card[pm["id"]] = card
        return pm

    def attach(self, ident, cust, param, tokens=None, ctx=None):
        if ident in CARDS:
            pm = self.new_pm(ident, cust["id"])
        else:
            pm = self.pms.get(ident)
            if pm is None:
                raise no_such("PaymentMethod", ident, param)
            if pm["customer"] not in (None, cust["id"]):
                raise invalid("The payment method you provided has already "
                              "been attached to a customer.", param=param,
                              store=True)
            pm["customer"] = cust["id"]
        if ctx is not None:
            self.emit("payment_method.attached", pm, ctx)
        return pm

    def resolve_pm(self, ident, cust, param):
        """A payment method id or test token for an invoice of cust."""
        if ident in CARDS:
            return self.new_pm(ident, cust["id"])["id"]
        if ident not in self.pms:
            raise no_such("PaymentMethod", ident, param)
        return ident


class PaymentMethodRoutes:
    """Api handlers (routes.py) of /v1/payment_methods."""

    def pm_get(self, s, p, m, ctx):
        check_params(p, {"expand": "expand"})
        ident = m.group(1)
        if ident in CARDS:
            return 200, s.new_pm(ident, None)
        pm = s.pms.get(ident)
        if pm is None:
            raise no_such("PaymentMethod", ident, "id", 404)
        return 200, pm

    def pm_attach(self, s, p, m, ctx):
        p = check_params(p, {"customer": "str", "expand": "expand"})
        cust = s.customer(require(p, "customer"))
        ident = m.group(1)
        if ident not in CARDS and ident not in s.pms:
            raise no_such("PaymentMethod", ident, "id", 404)
        return 200, s.attach(ident, cust, "payment_method", ctx=ctx)
