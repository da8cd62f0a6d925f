"""The running fake: Fake holds the config that /_fake/config reads and sets
(latency, fault rules, webhooks, delays, omit_total_count) and the fault
rules' bookkeeping, the log of /v1 requests, the log file, and the Store,
the webhook Deliverer and the routing table (Api); its collector thread
runs the automatic steps of auto_advance.py when they are due."""

import copy
import random
import re
import threading
import time

from .routes import Api
from .state import Store
from .webhooks import Deliverer


DEFAULT_WEBHOOKS = {
    "enabled": True,
    "url": None,
    "secret": None,
    "delay_ms": 0,
    "duplicate": 0,
    "reverse_order": False,
    "retry_backoff_ms": [500, 1000, 2000, 4000, 8000],
    "max_attempts": 6,
    "timeout_ms": 5000,
}


class Fake:
    def __init__(self, args):
        self.args = args
        self.secret_key = args.secret_key
        self.cfg_lock = threading.Lock()
        self.base_cfg = {
            "latency_ms": 0,
            "faults": [],
            "webhooks": dict(DEFAULT_WEBHOOKS, url=args.webhook_url,
                             secret=args.webhook_secret),
            "collect_delay_ms": int(args.collect_delay * 1000),
            "auto_finalize_delay_ms": 3600000,
            "omit_total_count": False,
        }
        self.cfg = copy.deepcopy(self.base_cfg)
        self.requests = []
        self.req_lock = threading.Lock()
        self.stopping = threading.Event()
        self.logf = open(args.log, "a", buffering=1) if args.log else None
        self.store = Store(self)
        self.deliverer = Deliverer(self)
        self.api = Api(self)
        self.collect_cond = threading.Condition()
        self.collect_woken = False
        threading.Thread(target=self.collector, daemon=True).start()

    def logline(self, msg):
        if self.logf:
            self.logf.write("%s %s\n" % (time.strftime("%Y-%m-%dT%H:%M:%S"),
                                         msg))

    def webhooks_on(self):
        w = self.cfg["webhooks"]
        return bool(w["enabled"] and w["url"])

    def cfg_webhooks(self):
        with self.cfg_lock:
            return dict(self.cfg["webhooks"])

    def collect_delay(self):
        return max(0, self.cfg["collect_delay_ms"]) / 1000.0

    def auto_finalize_delay(self):
        return max(0, self.cfg["auto_finalize_delay_ms"]) / 1000.0

    def omit_total_count(self):
        return bool(self.cfg["omit_total_count"])

    def wake_collector(self):
        with self.collect_cond:
            self.collect_woken = True
            self.collect_cond.notify()

    def collector(self):
        while not self.stopping.is_set():
            due = self.store.next_due()
            with self.collect_cond:
                timeout = 1.0 if due is None else max(0, due - time.time())
                # A step scheduled since next_due() was read: look again.
                if timeout > 0 and not self.collect_woken:
                    self.collect_cond.wait(min(timeout, 1.0))
                self.collect_woken = False
            try:
                self.store.run_collections()
            except Exception as e:  # never let the thread die
                self.logline("collector error: %r" % e)

    # -------------------------------------------------------- config

    def set_config(self, body):
        if not isinstance(body, dict):
            raise ValueError("config must be a JSON object")
        known = {"latency_ms", "faults", "webhooks", "collect_delay_ms",
                 "auto_finalize_delay_ms", "omit_total_count"}
        unknown = set(body) - known
        if unknown:
            raise ValueError("unknown config keys: %s" % sorted(unknown))
        if "auto_finalize_delay_ms" in body:
            v = body["auto_finalize_delay_ms"]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or \
                    v < 0:
                raise ValueError("auto_finalize_delay_ms must be a number "
                                 ">= 0")
        if "omit_total_count" in body and \
                not isinstance(body["omit_total_count"], bool):
            raise ValueError("omit_total_count must be true or false")
        faults = body.get("faults")
        if faults is not None:
            if not isinstance(faults, list):
                raise ValueError("faults must be a list")
            for f in faults:
                if not isinstance(f, dict) or "path" not in f:
                    raise ValueError("each fault needs a path regex")
                bad = set(f) - {"path", "query", "status", "count", "rate",
                                "when", "hang_seconds", "should_retry",
                                "retry_after", "error"}
                if bad:
                    raise ValueError("unknown fault keys: %s" % sorted(bad))
                re.compile(f["path"])
                re.compile(f.get("query", ""))
                if "status" not in f and "hang_seconds" not in f:
                    raise ValueError("a fault needs status or hang_seconds")
                if f.get("when", "before") not in ("before", "after"):
                    raise ValueError("when is before or after")
        w = body.get("webhooks")
        if w is not None:
            if not isinstance(w, dict) or set(w) - set(DEFAULT_WEBHOOKS):
                raise ValueError("webhooks keys: %s" % sorted(DEFAULT_WEBHOOKS))
        with self.cfg_lock:
            for k, v in body.items():
                if k == "webhooks":
                    self.cfg["webhooks"].update(v)
                elif k == "faults":
                    self.cfg["faults"] = [dict(f, hits=0) for f in v]
                else:
                    self.cfg[k] = v
        return self.get_config()

    def get_config(self):
        with self.cfg_lock:
            return copy.deepcopy(self.cfg)

    def take_fault(self, method, path, when, query=""):
        """The first live fault rule matching 'METHOD PATH' for this phase
        (path: a regex of the whole 'METHOD PATH'; query, if the rule has
        one: a regex found in the query string, as in "starting_after=" to
        fail the pages of a list after its first)."""
        target = "%s %s" % (method, path)
        with self.cfg_lock:
            for f in self.cfg["faults"]:
                if f.get("when", "before") != when or f.get("spent"):
                    continue
                if not re.fullmatch(f["path"], target):
                    continue
                if "query" in f and not re.search(f["query"], query or ""):
                    continue
                if "rate" in f and random.random() >= float(f["rate"]):
                    continue
                f["hits"] = f.get("hits", 0) + 1
                if "count" in f and f["hits"] >= int(f["count"]):
                    f["spent"] = True
                return dict(f)
        return None

    def reset(self, body):
        with self.cfg_lock:
            self.cfg = copy.deepcopy(self.base_cfg)
        with self.req_lock:
            self.requests = []
        with self.deliverer.log_lock:
            self.deliverer.log = []
        with self.deliverer.cond:
            self.deliverer.queue = []
        if isinstance(body, dict) and body.get("state"):
            with self.store.lock:
                self.store.clear()

    # ------------------------------------------------------ requests

    def record(self, entry):
        with self.req_lock:
            self.requests.append(entry)
