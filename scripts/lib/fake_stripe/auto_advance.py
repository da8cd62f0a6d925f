"""What Stripe does by itself to an invoice whose auto_advance is true:
finalize a draft auto_finalize_delay_ms after its creation, collect an open
charge_automatically invoice collect_delay_ms after its finalization.  The
steps wait on a heap (Store.collect); Fake.collector (fake.py) runs them
when due, POST /_fake/advance (control.py) at once."""

import heapq
import time

from .common import now


class AutoAdvanceState:
    """Store methods (state.py) for the automatic steps."""

    def schedule(self, due, iid, kind):
        """An automatic step at time due: "finalize" a draft whose
        auto_advance is true, "collect" an open invoice."""
        heapq.heappush(self.collect, (due, iid, kind))
        self.fake.wake_collector()

    def auto_advance_on(self, inv):
        """auto_advance turned (back) to true: schedule the next step."""
        if inv["status"] == "draft":
            delay = self.fake.auto_finalize_delay()
            due = max(time.time(),
                      self.born.get(inv["id"], time.time()) + delay)
            if inv["collection_method"] == "charge_automatically":
                inv["next_payment_attempt"] = max(now() + 1, int(round(due)))
            self.schedule(due, inv["id"], "finalize")
        elif inv["status"] == "open" and inv["amount_remaining"] > 0 and \
                inv["collection_method"] == "charge_automatically":
            delay = self.fake.collect_delay()
            inv["next_payment_attempt"] = now() + max(1, int(round(delay)))
            self.schedule(time.time() + delay, inv["id"], "collect")

    def run_collections(self, force=False):
        """The automatic steps that are due (force: every collection, due
        or not; finalizations only when due).  Returns the ids collected
        and the ids finalized."""
        done, finalized = [], []
        with self.lock:
            keep = []
            while self.collect:
                entry = heapq.heappop(self.collect)
                due, iid, kind = entry
                if due > time.time() and (not force or kind == "finalize"):
                    keep.append(entry)
                    if not force:
                        break
                    continue
                inv = self.invoices.get(iid)
                if inv is None or not inv["auto_advance"]:
                    continue
                try:
                    if kind == "finalize":
                        # As POST /v1/invoices/ID/finalize, by Stripe itself.
                        if inv["status"] != "draft":
                            continue
                        self.finalize(inv, None)
                        finalized.append(iid)
                        continue
                    if inv["status"] != "open":
                        continue
                    self.charge(inv, self.payment_method_for(inv), None)
                    done.append(iid)
                except Exception as e:  # never lose the rest of the heap
                    self.fake.logline("automatic %s of %s: %r"
                                      % (kind, iid, e))
            for k in keep:
                heapq.heappush(self.collect, k)
        return done, finalized

    def next_due(self):
        with self.lock:
            return self.collect[0][0] if self.collect else None
