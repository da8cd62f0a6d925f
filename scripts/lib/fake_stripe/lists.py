"""What every list route shares: the limit/starting_after/ending_before
parameters and their pagination, and the created[gt]=... ranges."""

from .errors import invalid, no_such


LIST_SPEC = {"limit": "int", "starting_after": "str", "ending_before": "str",
             "expand": "expand"}


def paginate(objs, q, url, label):
    """objs newest first; Stripe's limit/starting_after/ending_before."""
    limit = q.get("limit", 10)
    if limit < 1 or limit > 100:
        raise invalid("This value must be %s or equal to %d." % (
            "greater than" if limit < 1 else "less than",
            1 if limit < 1 else 100), param="limit")
    ids = [o["id"] for o in objs]
    if q.get("starting_after") is not None:
        sa = q["starting_after"]
        if sa not in ids:
            raise no_such(label, sa, "starting_after")
        rest = objs[ids.index(sa) + 1:]
        return {"object": "list", "data": rest[:limit],
                "has_more": len(rest) > limit, "url": url}
    if q.get("ending_before") is not None:
        eb = q["ending_before"]
        if eb not in ids:
            raise no_such(label, eb, "ending_before")
        before = objs[:ids.index(eb)]
        page = before[-limit:]
        return {"object": "list", "data": page,
                "has_more": len(before) > limit, "url": url}
    return {"object": "list", "data": objs[:limit],
            "has_more": len(objs) > limit, "url": url}


def in_range(value, r):
    if r is None:
        return True
    if "eq" in r:
        return value == r["eq"]
    return ((r.get("gt") is None or value > r["gt"]) and
            (r.get("gte") is None or value >= r["gte"]) and
            (r.get("lt") is None or value < r["lt"]) and
            (r.get("lte") is None or value <= r["lte"]))
