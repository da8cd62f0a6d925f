"""Webhooks: Deliverer POSTs each emitted event, signed with the webhook
secret, to the webhook URL from a background thread, with the knobs of
/_fake/config "webhooks" (delay, bursts in reverse order, duplicates,
retries with backoff, timeout), and keeps the log of its attempts
(GET /_fake/webhooks)."""

import hashlib
import hmac
import json
import threading
import time
import urllib.error
import urllib.request

from .common import now, without_total_count


class Deliverer:
    """Posts events to the webhook URL from a background thread, in
    bursts (reverse_order), with duplicates and retries."""

    def __init__(self, fake):
        self.fake = fake
        self.cond = threading.Condition()
        self.queue = []
        self.log = []
        self.log_lock = threading.Lock()
        self.stopping = False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def enqueue(self, ev):
        if not self.fake.webhooks_on():
            return
        with self.cond:
            self.queue.append(ev)
            self.cond.notify()

    def run(self):
        while True:
            with self.cond:
                while not self.queue and not self.stopping:
                    self.cond.wait()
                if self.stopping:
                    return
            cfg = self.fake.cfg_webhooks()
            # A short window gathers a burst (events of one action).
            wait = max(cfg["delay_ms"] / 1000.0,
                       0.05 if cfg["reverse_order"] else 0)
            if wait:
                with self.cond:
                    self.cond.wait(wait)
            with self.cond:
                batch, self.queue = self.queue, []
            if cfg["reverse_order"]:
                batch.reverse()
            for ev in batch:
                for _ in range(1 + max(0, int(cfg["duplicate"]))):
                    self.attempt(ev, 1)

    def attempt(self, ev, n):
        cfg = self.fake.cfg_webhooks()
        url, secret = cfg["url"], cfg["secret"] or ""
        if not url or self.stopping:
            return
        if self.fake.omit_total_count():
            ev = without_total_count(ev)
        body = json.dumps(ev, indent=2).encode()
        t = now()
        sig = hmac.new(secret.encode(), b"%d." % t + body,
                       hashlib.sha256).hexdigest()
        req = urllib.request.Request(url, data=body, method="POST", headers={
            "Content-Type": "application/json; charset=utf-8",
            "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
            "Stripe-Signature": "t=%d,v1=%s" % (t, sig),
            "Accept": "*/*; q=0.5, application/xml",
            "Cache-Control": "no-cache",
        })
        entry = {"event_id": ev["id"], "type": ev["type"], "attempt": n,
                 "time": time.time()}
        ok = False
        try:
            with urllib.request.urlopen(
                    req, timeout=cfg["timeout_ms"] / 1000.0) as resp:
                resp.read()
                entry["status"] = resp.status
                ok = 200 <= resp.status < 300
        except urllib.error.HTTPError as e:
            entry["status"] = e.code
            try:
                e.read()
            except Exception:
                pass
        except Exception as e:  # connection refused, timeout, reset
            entry["error"] = "%s: %s" % (type(e).__name__, e)
        with self.log_lock:
            self.log.append(entry)
        self.fake.logline("webhook %s %s attempt %d -> %s" % (
            ev["type"], ev["id"], n, entry.get("status", entry.get("error"))))
        if not ok and n < int(cfg["max_attempts"]):
            backoff = list(cfg["retry_backoff_ms"]) or [500]
            ms = (backoff[n - 1] if n - 1 < len(backoff)
                  else backoff[-1] * 2 ** (n - len(backoff)))
            tm = threading.Timer(ms / 1000.0, self.attempt, (ev, n + 1))
            tm.daemon = True
            tm.start()

    def stop(self):
        with self.cond:
            self.stopping = True
            self.cond.notify_all()
