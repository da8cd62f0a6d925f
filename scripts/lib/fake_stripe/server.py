"""The HTTP server: Handler reads each request and dispatches /_fake/ to
control.py, /v1 through the pipeline Stripe runs (auth, Stripe-Version,
parameters, "before" fault rules, Idempotency-Key replay and 409s, the
handler of routes.py's table under the store lock, latency, "after" fault
rules, hangs) and writes the JSON answer with Stripe's headers.  serve()
binds the port, writes the port file and runs until SIGTERM/SIGINT."""

import base64
import hashlib
import hmac
import http.server
import json
import os
import re
import signal
import socket
import threading
import time
import urllib.parse

from .common import API_VERSION, new_id, without_total_count
from .control import ControlHandler
from .errors import StripeError, canned_error, error_body, invalid
from .fake import Fake
from .form import parse_form


VERSION_RE = re.compile(r"^\d{4}-\d{2}-\d{2}(\.[a-z]+)?$")
MAX_KEY = 255


def fingerprint(method, path, params):
    return hashlib.sha256(json.dumps([method, path, params], sort_keys=True)
                          .encode()).hexdigest()


class Handler(ControlHandler, http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fake = None  # set on the class by serve()

    def version_string(self):
        return "nginx"

    def log_message(self, fmt, *args):
        self.fake.logline("%s %s" % (self.address_string(), fmt % args))

    def do_GET(self):
        self.dispatch("GET")

    def do_POST(self):
        self.dispatch("POST")

    def do_DELETE(self):
        self.dispatch("DELETE")

    def do_PUT(self):
        self.dispatch("PUT")

    def do_PATCH(self):
        self.dispatch("PATCH")

    def read_body(self):
        n = int(self.headers.get("Content-Length") or 0)
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline().strip():
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        return self.rfile.read(n) if n > 0 else b""

    def answer(self, status, body, headers=None):
        data = (json.dumps(body, indent=2) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-cache, no-store")
        for k, v in (headers or {}).items():
            if v is not None:
                self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def dispatch(self, method):
        url = urllib.parse.urlsplit(self.path)
        try:
            raw = self.read_body()
        except Exception:
            self.close_connection = True
            return
        if url.path.startswith("/_fake/"):
            return self.control(method, url, raw)
        return self.v1(method, url, raw)

    # -------------------------------------------------------------- /v1

    def v1(self, method, url, raw):
        fake = self.fake
        req_id = new_id("req")
        started = time.time()
        h = self.headers
        idem_key = h.get("Idempotency-Key")
        version = h.get("Stripe-Version")
        ctype = h.get("Content-Type")
        entry = {
            "method": method, "path": url.path, "query": url.query,
            "params": None, "raw_body": raw.decode("utf-8", "replace"),
            "idempotency_key": idem_key, "stripe_version": version,
            "authorized": self.authorized(), "content_type": ctype,
            "status": None, "replayed": False, "time": started,
            "request_id": req_id,
        }
        fake.record(entry)
        headers = {"Request-Id": req_id,
                   "Stripe-Version": version or API_VERSION}
        if method == "POST" and idem_key is not None:
            headers["Idempotency-Key"] = idem_key
        state = {"key": None}
        try:
            status, body, extra = self.v1_inner(method, url, raw, entry,
                                                req_id, idem_key, version,
                                                state)
        except StripeError as err:
            status, body, extra = err.status, error_body(err, req_id), \
                err.headers
            if status == 401:
                extra = dict(extra, **{"WWW-Authenticate":
                                       'Basic realm="Stripe"'})
        headers.update(extra or {})
        hang = state.get("hang")
        self.latency(state)
        if hang is not None:
            entry["status"] = "hang"
            fake.stopping.wait(float(hang))
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        entry["status"] = status
        if fake.omit_total_count():
            with fake.store.lock:
                body = without_total_count(body)
        self.answer(status, body, headers)

    def latency(self, state):
        """latency_ms, once per answer (inside the idempotency window when
        the request carries a key, so that a twin sees it in flight)."""
        if state.get("latency_done"):
            return
        state["latency_done"] = True
        lat = self.fake.cfg.get("latency_ms") or 0
        if lat:
            self.fake.stopping.wait(lat / 1000.0)

    def authorized(self):
        auth = self.headers.get("Authorization") or ""
        key = None
        if auth.startswith("Bearer "):
            key = auth[7:].strip()
        elif auth.startswith("Basic "):
            try:
                key = base64.b64decode(auth[6:].strip()).decode() \
                    .split(":", 1)[0]
            except Exception:
                key = ""
        self._key = key
        return key is not None and hmac.compare_digest(
            key.encode(), self.fake.secret_key.encode())

    def fault_answer(self, rule, state, req_id):
        if rule.get("hang_seconds") is not None:
            state["hang"] = rule["hang_seconds"]
            return 0, None, {}
        err = canned_error(int(rule["status"]))
        if isinstance(rule.get("error"), dict):
            err.error.update(rule["error"])
        extra = {}
        if "should_retry" in rule:
            extra["Stripe-Should-Retry"] = ("true" if rule["should_retry"]
                                            else "false")
        if rule.get("retry_after") is not None:
            extra["Retry-After"] = str(rule["retry_after"])
        return err.status, error_body(err, req_id), extra

    def v1_inner(self, method, url, raw, entry, req_id, key, version, state):
        fake = self.fake
        if not entry["authorized"]:
            if not self._key:
                raise StripeError(401, "You did not provide an API key. You "
                                  "need to provide your API key in the "
                                  "Authorization header, using Bearer auth "
                                  "(e.g. 'Authorization: Bearer "
                                  "YOUR_SECRET_KEY'). See https://stripe.com/"
                                  "docs/api#authentication for details, or we "
                                  "can help at https://support.stripe.com/.")
            k = self._key
            shown = (k[:8] + "*" * max(0, len(k) - 12) + k[-4:]
                     if len(k) > 12 else "*" * len(k))
            raise StripeError(401, "Invalid API Key provided: %s" % shown)
        if version is not None and not VERSION_RE.match(version):
            raise StripeError(400, "Invalid Stripe API version: %s" % version)
        if key is not None and len(key) > MAX_KEY:
            raise invalid("Idempotency-Key must be %d characters or fewer, "
                          "got %d." % (MAX_KEY, len(key)))
        text = url.query if method in ("GET", "DELETE") else \
            raw.decode("utf-8", "replace")
        if method not in ("GET", "DELETE") and url.query:
            text = url.query + ("&" + text if text else "")
        ct = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        if method == "POST" and raw and ct not in (
                "", "application/x-www-form-urlencoded"):
            text = url.query  # Stripe reads no parameters from other bodies
        params = parse_form(text)
        entry["params"] = params

        rule = fake.take_fault(method, url.path, "before", url.query)
        if rule is not None:
            entry["fault"] = "before"
            return self.fault_answer(rule, state, req_id)

        store = fake.store
        use_key = method == "POST" and key is not None
        fp = fingerprint(method, url.path, params)
        if use_key:
            with store.lock:
                rec = store.idem.get(key)
                if rec is not None and rec["state"] == "inflight":
                    raise StripeError(
                        409, "There is currently another in-progress request "
                        "using this Idempotent Key (that probably means you "
                        "submitted twice, and the other request is still "
                        "going through): %s. Please try again later." % key,
                        code="idempotency_key_in_use", store=False)
                if rec is not None:
                    if rec["fp"] != fp:
                        raise StripeError(
                            400, "Keys for idempotent requests can only be "
                            "used with the same parameters they were first "
                            "used with. Try using a key other than '%s' if "
                            "you meant to execute a different request." % key,
                            "idempotency_error", store=False)
                    entry["replayed"] = True
                    return rec["status"], rec["body"], {
                        "Idempotent-Replayed": "true",
                        "Original-Request": rec["request_id"]}
                store.idem[key] = {"state": "inflight", "fp": fp}
        ctx = {"request_id": req_id, "idempotency_key": key}
        keep = False
        try:
            fn, match = fake.api.find(method, url.path)
            with store.lock:
                status, body = fn(store, params, match, ctx)
            keep = True
            extra = {}
        except StripeError as err:
            status, body, extra = err.status, error_body(err, req_id), \
                err.headers
            keep = err.store and status < 500
        except Exception as e:  # a bug in the fake: Stripe's 500
            fake.logline("internal error: %r" % e)
            err = canned_error(500)
            status, body, extra = 500, error_body(err, req_id), {}
        self.latency(state)
        if use_key:
            with store.lock:
                if keep:
                    store.idem[key] = {"state": "done", "fp": fp,
                                       "status": status, "body": body,
                                       "request_id": req_id}
                else:
                    store.idem.pop(key, None)

        rule = fake.take_fault(method, url.path, "after", url.query)
        if rule is not None:
            entry["fault"] = "after"
            return self.fault_answer(rule, state, req_id)
        return status, body, extra


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


def serve(args, host, port):
    """Run the fake for the options of scripts/fake-stripe, on host:port,
    until SIGTERM or SIGINT; returns its exit status."""
    fake = Fake(args)
    Handler.fake = fake
    if host == "::1":
        Server.address_family = socket.AF_INET6
    httpd = Server((host, int(port)), Handler)
    bound = httpd.server_address[1]
    if args.port_file:
        tmp = args.port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write("%d\n" % bound)
        os.replace(tmp, args.port_file)
    fake.logline("listening on %s:%d, webhooks to %s" % (
        host, bound, args.webhook_url or "(none)"))

    def stop(signum, frame):
        fake.stopping.set()
        fake.deliverer.stop()
        threading.Thread(target=httpd.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        httpd.serve_forever(poll_interval=0.2)
    finally:
        httpd.server_close()
        fake.logline("stopped")
    return 0
