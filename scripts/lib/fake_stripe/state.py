"""The state: Store holds every Stripe object and every Idempotency-Key
result, under one lock.  Its methods for each kind of object come from the
resource modules (events.py, customers.py, payment_methods.py,
invoices.py, invoice_items.py, auto_advance.py); forgetting the
Idempotency-Key results is here, the replay itself in server.py."""

import threading

from .auto_advance import AutoAdvanceState
from .customers import CustomerState
from .events import EventState
from .invoice_items import InvoiceItemState
from .invoices import InvoiceState
from .payment_methods import PaymentMethodState


class Store(EventState, CustomerState, PaymentMethodState,
            InvoiceState, InvoiceItemState, AutoAdvanceState):
    """Every Stripe object, under one lock."""

    def __init__(self, fake):
        self.fake = fake
        self.lock = threading.RLock()
        self.clear()

    def clear(self):
        self.customers = {}
        self.pms = {}             # id -> payment method object
        self.pm_card = {}         # id -> CARDS entry
        self.invoices = {}        # insertion order = creation order
        self.items = {}
        self.lines = {}           # invoice id -> [line objects]
        self.events = []
        self.idem = {}            # key -> {"fp", "state", "status", ...}
        self.collect = []         # heap (due, invoice id, "collect"|"finalize")
        self.born = {}            # invoice id -> time.time() at creation

    def forget_idempotency(self):
        """Drop every stored result (Stripe: 24 hours after first use);
        keys in flight stay, so that their twins still get a 409."""
        with self.lock:
            gone = [k for k, v in self.idem.items() if v["state"] == "done"]
            for k in gone:
                del self.idem[k]
        return len(gone)
