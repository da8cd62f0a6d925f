"""The /v1 routing table: which method and path each handler answers (the
handlers are in the resource modules: customers.py, payment_methods.py,
invoices.py, invoice_items.py, events.py), the 404 for an id of the wrong
shape or an unknown URL, and ?expand[]= of an answer."""

import copy
import re

from .customers import CustomerRoutes
from .errors import StripeError, invalid, no_such
from .events import EventRoutes
from .invoice_items import InvoiceItemRoutes
from .invoices import InvoiceRoutes
from .payment_methods import PaymentMethodRoutes


class Api(CustomerRoutes, PaymentMethodRoutes, InvoiceRoutes,
          InvoiceItemRoutes, EventRoutes):
    """The /v1 routes.  Each handler gets (store, params, match, ctx) and
    returns (status, body)."""

    def __init__(self, fake):
        self.fake = fake
        self.routes = []
        r = self.route
        r("POST", r"/v1/customers", self.customer_create)
        r("GET", r"/v1/customers/(cus_[^/]+)", self.customer_get)
        r("POST", r"/v1/customers/(cus_[^/]+)", self.customer_update)
        r("GET", r"/v1/payment_methods/([^/]+)", self.pm_get)
        r("POST", r"/v1/payment_methods/([^/]+)/attach", self.pm_attach)
        r("POST", r"/v1/invoices", self.invoice_create)
        r("GET", r"/v1/invoices", self.invoice_list)
        r("GET", r"/v1/invoices/(in_[^/]+)", self.invoice_get)
        r("POST", r"/v1/invoices/(in_[^/]+)", self.invoice_update)
        r("DELETE", r"/v1/invoices/(in_[^/]+)", self.invoice_delete)
        r("GET", r"/v1/invoices/(in_[^/]+)/lines", self.invoice_lines)
        r("POST", r"/v1/invoices/(in_[^/]+)/finalize", self.invoice_finalize)
        r("POST", r"/v1/invoices/(in_[^/]+)/pay", self.invoice_pay)
        r("POST", r"/v1/invoices/(in_[^/]+)/send", self.invoice_send)
        r("POST", r"/v1/invoices/(in_[^/]+)/void", self.invoice_void)
        r("POST", r"/v1/invoices/(in_[^/]+)/mark_uncollectible",
          self.invoice_uncollectible)
        r("POST", r"/v1/invoiceitems", self.item_create)
        r("GET", r"/v1/invoiceitems/(ii_[^/]+)", self.item_get)
        r("GET", r"/v1/events", self.event_list)
        r("GET", r"/v1/events/(evt_[^/]+)", self.event_get)

    def route(self, method, pattern, fn):
        self.routes.append((method, re.compile(pattern + "$"), fn))

    def find(self, method, path):
        for m, rx, fn in self.routes:
            mt = rx.match(path)
            if mt and m == method:
                return fn, mt
        # An id of the wrong shape in the path is an unknown object.
        for m, rx, fn in self.routes:
            loose = re.compile(rx.pattern.replace("(in_[^/]+)", "([^/]+)")
                               .replace("(cus_[^/]+)", "([^/]+)")
                               .replace("(ii_[^/]+)", "([^/]+)")
                               .replace("(evt_[^/]+)", "([^/]+)"))
            mt = loose.match(path)
            if mt and m == method:
                kind = {"/v1/c": "customer", "/v1/i": "invoice",
                        "/v1/e": "event"}.get(path[:5], "object")
                if path.startswith("/v1/invoiceitems"):
                    kind = "invoiceitem"
                raise no_such(kind, mt.group(1), "id", 404)
        raise StripeError(404, "Unrecognized request URL (%s: %s). Please see "
                          "https://stripe.com/docs or we can help at "
                          "https://support.stripe.com/." % (method, path))

    # ------------------------------------------------------------ expand

    def expanded(self, s, obj, expand):
        if not expand:
            return obj
        obj = copy.deepcopy(obj)
        for e in expand:
            if e in ("customer",) and isinstance(obj.get("customer"), str):
                obj["customer"] = copy.deepcopy(s.customers.get(
                    obj["customer"]))
            elif e == "default_payment_method" and \
                    isinstance(obj.get("default_payment_method"), str):
                obj["default_payment_method"] = copy.deepcopy(
                    s.pms.get(obj["default_payment_method"]))
            elif e == "invoice_settings.default_payment_method" and \
                    obj.get("object") == "customer":
                pm = obj["invoice_settings"]["default_payment_method"]
                if pm:
                    obj["invoice_settings"]["default_payment_method"] = \
                        copy.deepcopy(s.pms.get(pm))
            elif e.startswith("data.") and obj.get("object") == "list":
                obj["data"] = [self.expanded(s, o, [e[5:]])
                               for o in obj["data"]]
            elif e in ("lines",):
                pass
            else:
                raise invalid("This property cannot be expanded (%s)." % e,
                              param="expand")
        return obj
