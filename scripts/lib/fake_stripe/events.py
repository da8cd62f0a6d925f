"""Events: the event object every change emits (Store.emit, through
EventState, which also hands it to the webhook deliverer in webhooks.py)
and GET /v1/events, GET /v1/events/ID (EventRoutes, in routes.py's table)."""

import copy

from .common import API_VERSION, new_id, now
from .errors import invalid, no_such
from .form import check_params
from .lists import LIST_SPEC, in_range, paginate


EVENT_LIST_SPEC = dict(LIST_SPEC, type="str", types="strlist",
                       created="range", delivery_success="bool")
MAX_TYPES = 20


class EventState:
    """Store methods (state.py) for events."""

    def emit(self, type_, obj, ctx, previous=None):
        ev = {
            "id": new_id("evt"),
            "object": "event",
            "api_version": API_VERSION,
            "created": now(),
            "data": {"object": copy.deepcopy(obj)},
            "livemode": False,
            "pending_webhooks": 1 if self.fake.webhooks_on() else 0,
            "request": {"id": ctx.get("request_id") if ctx else None,
                        "idempotency_key": ctx.get("idempotency_key")
                        if ctx else None},
            "type": type_,
        }
        if previous is not None:
            ev["data"]["previous_attributes"] = copy.deepcopy(previous)
        self.events.append(ev)
        self.fake.deliverer.enqueue(ev)
        return ev


class EventRoutes:
    """Api handlers (routes.py) of /v1/events."""

    def event_list(self, s, p, m, ctx):
        """Stripe's reference: type is one event name or a group with *
        as a wildcard (invoice.*); types[] is up to 20 specific event
        names, so a * in it is no wildcard (it names no event); either
        type or types, not both."""
        q = check_params(p, EVENT_LIST_SPEC)
        types = q.get("types")
        if types is not None and q.get("type") is not None:
            raise invalid("You may pass either `type` or `types`, but not "
                          "both.", param="types")
        if types is not None and len(types) > MAX_TYPES:
            raise invalid("Invalid array: types can have at most %d "
                          "elements." % MAX_TYPES, param="types")

        def want(ev):
            if types is not None:
                return ev["type"] in types
            t = q.get("type")
            return (t is None or t == ev["type"] or
                    (t.endswith(".*") and ev["type"].startswith(t[:-1])))
        objs = [e for e in reversed(s.events)
                if want(e) and in_range(e["created"], q.get("created"))]
        return 200, paginate(objs, q, "/v1/events", "event")

    def event_get(self, s, p, m, ctx):
        check_params(p, {"expand": "expand"})
        for e in s.events:
            if e["id"] == m.group(1):
                return 200, e
        raise no_such("event", m.group(1), "id", 404)
