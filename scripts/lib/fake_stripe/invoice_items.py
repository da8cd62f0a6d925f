"""Invoice items: the item object (with its one-time price) and the invoice
line it makes on a draft (Store methods, through InvoiceItemState), and
POST /v1/invoiceitems, GET /v1/invoiceitems/ID (InvoiceItemRoutes, in
routes.py's table)."""

import copy

from .common import new_id, now
from .errors import invalid, no_such
from .form import check_params, require


ITEM_SPEC = {
    "customer": "str", "invoice": "str", "amount": "int", "currency": "str",
    "description": "str", "quantity": "int", "unit_amount": "int",
    "metadata": "metadata", "expand": "expand",
}


class InvoiceItemState:
    """Store methods (state.py) for invoice items and lines."""

    def add_item(self, p, cust, inv):
        t = now()
        qty = p.get("quantity")
        if "amount" in p and "unit_amount" in p:
            raise invalid("You may only specify one of these parameters: "
                          "amount, unit_amount.", param="amount",
                          code="parameters_exclusive")
        if p.get("amount") is not None:
            qty = qty or 1
            amount = p["amount"]
            unit = amount // qty if qty else amount
        elif p.get("unit_amount") is not None:
            qty = 1 if qty is None else qty
            unit = p["unit_amount"]
            amount = unit * qty
        else:
            raise invalid("You must specify either `amount`, `price`, or "
                          "`unit_amount`.", param="amount",
                          code="parameter_missing")
        if qty < 0:
            raise invalid("This value must be greater than or equal to 0.",
                          param="quantity")
        currency = p.get("currency") or (inv["currency"] if inv else
                                         cust.get("currency") or "usd")
        if inv is not None and currency != inv["currency"]:
            raise invalid("The currency of the invoice item (%s) must match "
                          "the currency of the invoice (%s)."
                          % (currency, inv["currency"]), param="currency",
                          store=True)
        ii = new_id("ii")
        price = {
            "id": new_id("price"), "object": "price", "active": False,
            "billing_scheme": "per_unit", "created": t, "currency": currency,
            "custom_unit_amount": None, "livemode": False,
            "lookup_key": None, "metadata": {}, "nickname": None,
            "product": new_id("prod"), "recurring": None,
            "tax_behavior": "unspecified", "tiers_mode": None,
            "transform_quantity": None, "type": "one_time",
            "unit_amount": unit, "unit_amount_decimal": str(unit),
        }
        item = {
            "id": ii, "object": "invoiceitem", "amount": amount,
            "currency": currency, "customer": cust["id"], "date": t,
            "description": p.get("description"), "discountable": True,
            "discounts": [], "invoice": inv["id"] if inv else None,
            "livemode": False, "metadata": dict(p.get("metadata") or {}),
            "period": {"end": t, "start": t}, "plan": None, "price": price,
            "proration": False, "quantity": qty, "subscription": None,
            "tax_rates": [], "test_clock": None, "unit_amount": unit,
            "unit_amount_decimal": str(unit),
        }
        self.items[ii] = item
        if inv is not None:
            self.add_line(inv, item)
        return item

    def add_line(self, inv, item):
        item["invoice"] = inv["id"]
        line = {
            "id": new_id("il"), "object": "line_item",
            "amount": item["amount"], "amount_excluding_tax": item["amount"],
            "currency": item["currency"], "description": item["description"],
            "discount_amounts": [], "discountable": True, "discounts": [],
            "invoice_item": item["id"], "livemode": False,
            "metadata": dict(item["metadata"]),
            "period": dict(item["period"]), "plan": None,
            "price": copy.deepcopy(item["price"]), "proration": False,
            "proration_details": {"credited_items": None},
            "quantity": item["quantity"], "subscription": None,
            "tax_amounts": [], "tax_rates": [], "type": "invoiceitem",
            "unit_amount_excluding_tax": str(item["unit_amount"]),
        }
        self.lines[inv["id"]].append(line)
        self.retotal(inv)


class InvoiceItemRoutes:
    """Api handlers (routes.py) of /v1/invoiceitems."""

    def item_create(self, s, p, m, ctx):
        p = check_params(p, ITEM_SPEC)
        require(p, "customer")
        if p.get("currency") is not None:
            p["currency"] = p["currency"].lower()
        cust = s.customer(p["customer"])
        inv = None
        if p.get("invoice"):
            inv = s.invoice(p["invoice"], "invoice", 400)
            if inv["customer"] != cust["id"]:
                raise invalid("The invoice %s does not belong to customer %s."
                              % (inv["id"], cust["id"]), param="invoice",
                              store=True)
            if inv["status"] != "draft":
                raise invalid("Invoice %s is not a draft: invoice items can "
                              "only be added to draft invoices." % inv["id"],
                              param="invoice", code="invoice_not_editable",
                              store=True)
            before = {k: inv[k] for k in ("amount_due", "amount_remaining",
                                           "subtotal", "subtotal_excluding_tax",
                                           "total", "total_excluding_tax")}
            before["lines"] = copy.deepcopy(inv["lines"])
        item = s.add_item(p, cust, inv)
        s.emit("invoiceitem.created", item, ctx)
        if inv is not None:
            s.emit("invoice.updated", inv, ctx, previous=before)
        return 200, self.expanded(s, item, p.get("expand"))

    def item_get(self, s, p, m, ctx):
        check_params(p, {"expand": "expand"})
        item = s.items.get(m.group(1))
        if item is None:
            raise no_such("invoiceitem", m.group(1), "id", 404)
        return 200, item
