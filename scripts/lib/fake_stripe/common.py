"""Constants and small helpers every part of the fake uses: the API version
it answers with, the fake account, Stripe-shaped ids, the clock, and the
copy of an answer whose invoice line lists carry no total_count (the
omit_total_count knob of /_fake/config)."""

import re
import secrets
import string
import time


API_VERSION = "2023-10-16"
ACCOUNT = "acct_1FakeStripeAcct00"
B62 = string.digits + string.ascii_uppercase + string.ascii_lowercase
LINES_URL_RE = re.compile(r"^/v1/invoices/[^/]+/lines$")


def rand62(n):
    return "".join(secrets.choice(B62) for _ in range(n))


def new_id(prefix):
    if prefix in ("cus", "req"):
        return prefix + "_" + rand62(14)
    return prefix + "_1" + rand62(23)


def now():
    return int(time.time())


def without_total_count(node):
    """A copy of node whose invoice line lists carry no total_count."""
    if isinstance(node, list):
        return [without_total_count(v) for v in node]
    if not isinstance(node, dict):
        return node
    drop = (node.get("object") == "list" and isinstance(node.get("url"), str)
            and LINES_URL_RE.match(node["url"]) is not None)
    return {k: without_total_count(v) for k, v in node.items()
            if not (drop and k == "total_count")}
