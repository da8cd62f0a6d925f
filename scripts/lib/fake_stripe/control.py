"""The /_fake/ test knobs (no auth, JSON bodies): config, the request and
webhook logs, seeding a customer with a chosen id, advancing the automatic
steps, forgetting Idempotency-Key results, reset, health.  The routes are
listed in scripts/fake-stripe's header.  ControlHandler is a part of
server.py's Handler."""

import copy
import json
import re

from .errors import StripeError
from .payment_methods import CARDS


class ControlHandler:
    """Handler methods (server.py) for /_fake/."""

    def control(self, method, url, raw):
        fake = self.fake
        try:
            body = json.loads(raw) if raw.strip() else {}
        except ValueError:
            return self.answer(400, {"error": "body is not JSON"})
        p = url.path
        try:
            if p == "/_fake/config" and method == "GET":
                return self.answer(200, fake.get_config())
            if p == "/_fake/config" and method == "POST":
                return self.answer(200, fake.set_config(body))
            if p == "/_fake/requests" and method == "GET":
                with fake.req_lock:
                    return self.answer(200, list(fake.requests))
            if p == "/_fake/requests" and method == "DELETE":
                with fake.req_lock:
                    fake.requests = []
                return self.answer(200, {"ok": True})
            if p == "/_fake/webhooks" and method == "GET":
                with fake.deliverer.log_lock:
                    return self.answer(200, list(fake.deliverer.log))
            if p == "/_fake/webhooks" and method == "DELETE":
                with fake.deliverer.log_lock:
                    fake.deliverer.log = []
                return self.answer(200, {"ok": True})
            if p == "/_fake/customers" and method == "POST":
                return self.answer(*self.seed_customer(body))
            if p == "/_fake/advance" and method == "POST":
                collected, finalized = fake.store.run_collections(True)
                return self.answer(200, {"collected": collected,
                                         "finalized": finalized})
            if p == "/_fake/forget-idempotency" and method == "POST":
                return self.answer(200, {"forgotten":
                                         fake.store.forget_idempotency()})
            if p == "/_fake/reset" and method == "POST":
                fake.reset(body)
                return self.answer(200, {"ok": True})
            if p == "/_fake/health" and method == "GET":
                return self.answer(200, {"ok": True,
                                         "port": self.server.server_port})
        except (ValueError, TypeError, re.error) as e:
            return self.answer(400, {"error": str(e)})
        except StripeError as e:
            return self.answer(e.status, {"error": e.error})
        return self.answer(404, {"error": "no such control route: %s %s"
                                 % (method, p)})

    def seed_customer(self, body):
        s = self.fake.store
        cid = body.get("id")
        if not isinstance(cid, str) or not re.fullmatch(r"cus_\w+", cid):
            raise ValueError("id must look like cus_...")
        pm_token = body.get("payment_method")
        pm_id = body.get("payment_method_id")
        if pm_token is not None and pm_token not in CARDS:
            raise ValueError("payment_method must be one of %s"
                             % sorted(CARDS))
        with s.lock:
            c = s.customers.get(cid)
            created = c is None
            if created:
                c = s.new_customer(cid, {}, None)
            for k in ("name", "email", "description"):
                if k in body:
                    c[k] = body[k]
            if isinstance(body.get("metadata"), dict):
                c["metadata"] = dict(body["metadata"])
            if pm_token:
                if pm_id and pm_id in s.pms:
                    pm = s.pms[pm_id]
                else:
                    pm = s.new_pm(pm_token, cid)
                    if pm_id:
                        s.pms.pop(pm["id"])
                        s.pm_card[pm_id] = s.pm_card.pop(pm["id"])
                        pm["id"] = pm_id
                        s.pms[pm_id] = pm
                c["invoice_settings"]["default_payment_method"] = pm["id"]
            s.customers[cid] = c
            if created:
                s.emit("customer.created", c, None)
            return (201 if created else 200), copy.deepcopy(c)
