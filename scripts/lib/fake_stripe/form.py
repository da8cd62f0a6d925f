"""Request parameters: Stripe's form-encoded bodies with bracketed keys
(a[b]=1, a[]=1, a[0][b]=1) into nested dicts and lists, and checking them
against a route's spec (unknown, empty, badly typed and missing parameters,
metadata limits), with Stripe's 400 messages."""

import json
import re
import urllib.parse

from .errors import invalid


# --------------------------------------------------------- form parsing


def parse_form(text):
    """application/x-www-form-urlencoded with Stripe's bracketed keys into
    nested dicts/lists: a[b]=1, a[]=1, a[0][b]=1."""
    root = {}
    for key, value in urllib.parse.parse_qsl(text, keep_blank_values=True):
        m = re.match(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$", key)
        path = ([m.group(1)] + re.findall(r"\[([^\[\]]*)\]", m.group(2))
                if m else [key])
        cur = root
        for i, seg in enumerate(path):
            last = i == len(path) - 1
            if seg == "":
                if not isinstance(cur, list):
                    raise invalid("Invalid array", param=path[0])
                if last:
                    cur.append(value)
                else:
                    cur.append([] if path[i + 1] == "" else {})
                    cur = cur[-1]
                continue
            if not isinstance(cur, dict):
                raise invalid("Invalid array", param=path[0])
            if last:
                if isinstance(cur.get(seg), (dict, list)):
                    raise invalid("Invalid hash", param=path[0])
                cur[seg] = value
            else:
                want = list if path[i + 1] == "" else dict
                if seg not in cur:
                    cur[seg] = want()
                elif not isinstance(cur[seg], want):
                    raise invalid("Invalid hash", param=path[0])
                cur = cur[seg]
    return listify(root)


def listify(node, key=None):
    """Dicts whose keys are all indexes (lines[0][x]) become lists; metadata
    keys stay keys."""
    if isinstance(node, list):
        return [listify(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: (v if k == "metadata" else listify(v, k))
           for k, v in node.items()}
    if key != "metadata" and out and all(k.isdigit() for k in out):
        return [out[k] for k in sorted(out, key=int)]
    return out


# ---------------------------------------------------- parameter checking


def check_params(params, spec, prefix=""):
    """Validate against spec {name: type}; return a cleaned dict.
    Types: str, int, bool, ("enum", [...]), metadata, ("obj", spec),
    expand, range (int or {gt,gte,lt,lte}), strlist."""
    out = {}
    if not isinstance(params, dict):
        raise invalid("Invalid object", param=prefix.rstrip("[") or None)
    for name, value in params.items():
        full = prefix + name + ("]" if prefix else "")
        if name not in spec:
            raise invalid("Received unknown parameter: %s" % full,
                          param=full, code="parameter_unknown")
        out[name] = check_value(value, spec[name], full)
    return out


def check_value(value, kind, full):
    if isinstance(kind, tuple) and kind[0] == "obj":
        if value == "":
            return None
        return check_params(value, kind[1], full + "[")
    if kind == "metadata":
        if value == "":
            return {}
        if not isinstance(value, dict):
            raise invalid("Invalid object", param=full)
        for k, v in value.items():
            if not isinstance(v, str):
                raise invalid("Invalid string: %s" % json.dumps(v),
                              param="%s[%s]" % (full, k))
            if len(k) > 40:
                raise invalid("Metadata keys can have up to 40 characters",
                              param="%s[%s]" % (full, k))
            if len(v) > 500:
                raise invalid("Metadata values can have up to 500 characters",
                              param="%s[%s]" % (full, k))
        return value
    if kind in ("expand", "strlist"):
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or \
                not all(isinstance(v, str) for v in value):
            raise invalid("Invalid array", param=full)
        return value
    if kind == "range":
        if isinstance(value, dict):
            return check_params(value, {"gt": "int", "gte": "int",
                                        "lt": "int", "lte": "int"},
                                full + "[")
        return {"eq": check_value(value, "int", full)}
    if not isinstance(value, str):
        raise invalid("Invalid string: %s" % json.dumps(value)[:100],
                      param=full)
    if kind == "str":
        return value if value != "" else None
    if value == "":
        raise invalid("You passed an empty string for '%s'. We assume empty "
                      "values are an attempt to unset a parameter; however "
                      "'%s' cannot be unset. You should remove '%s' from "
                      "your request or supply a non-empty value."
                      % (full, full, full), param=full,
                      code="parameter_invalid_empty")
    if kind == "int":
        if not re.fullmatch(r"-?\d+", value):
            raise invalid("Invalid integer: %s" % value, param=full,
                          code="parameter_invalid_integer")
        return int(value)
    if kind == "bool":
        if value not in ("true", "false"):
            raise invalid("Invalid boolean: %s" % value, param=full)
        return value == "true"
    if isinstance(kind, tuple) and kind[0] == "enum":
        if value not in kind[1]:
            raise invalid("Invalid %s: must be one of %s" % (
                full, ", ".join(kind[1][:-1]) + " or " + kind[1][-1]
                if len(kind[1]) > 1 else kind[1][0]), param=full)
        return value
    raise AssertionError(kind)


def require(params, name):
    if params.get(name) is None:
        raise invalid("Missing required param: %s." % name, param=name,
                      code="parameter_missing")
    return params[name]
