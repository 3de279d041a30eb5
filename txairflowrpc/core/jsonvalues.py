"""
JSON values compared as JSON: what both the gateway (is a retried trigger's
conf the run's?  are a conf array's items unique?) and the client (is this
backfill's conf mine?) ask.
"""

from __future__ import annotations

import json
from typing import Any

from . import errors

#: The largest conf, as JSON in UTF-8, and its deepest nesting.
MAX_CONF_BYTES = 64 * 1024
MAX_CONF_DEPTH = 16


def json_equal(a: Any, b: Any) -> bool:
    """
    Equality of JSON values: objects by their members, arrays element by
    element, numbers by value (``1`` equals ``1.0``), never a boolean equal
    to a number (as Python's ``True == 1`` would have it).
    """
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def json_key(value: Any) -> Any:
    """
    A hashable key of a JSON value, equal for two values exactly when
    `json_equal` holds: to find duplicates in one pass rather than by
    comparing every pair.
    """
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, float) and value.is_integer():
        return ("n", int(value))  # 1.0 is 1
    if isinstance(value, (int, float)):
        return ("n", value)
    if isinstance(value, dict):
        return ("o", frozenset((k, json_key(v)) for k, v in value.items()))
    if isinstance(value, list):
        return ("a", tuple(json_key(v) for v in value))
    return (type(value).__name__, value)


def _json_value(method: str, value: Any, depth: int = 0) -> None:
    """Raise unless ``value`` is plain JSON data within the depth cap."""
    if depth > MAX_CONF_DEPTH:
        raise errors.InvalidParams(f"conf is nested deeper than {MAX_CONF_DEPTH}", method)
    if isinstance(value, dict):
        for item in value.values():
            _json_value(method, item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _json_value(method, item, depth + 1)
    elif value is not None and not isinstance(value, (str, int, float, bool)):
        raise errors.InvalidParams(
            "conf may hold only strings, numbers, booleans, nulls, structs and arrays", method
        )


def check_conf(method: str, conf: dict[str, Any]) -> dict[str, Any]:
    """
    ``conf``, if it is plain JSON data within `MAX_CONF_DEPTH` and
    `MAX_CONF_BYTES`; else `errors.InvalidParams` for ``method``.  Before
    any conf rule looks at it, so that none works on a conf larger than these.
    """
    _json_value(method, conf)
    # Its size as JSON in UTF-8, as documented: ensure_ascii would count a
    # non-ASCII character as its six-byte escape.
    size = len(json.dumps(conf, ensure_ascii=False, separators=(",", ":"))
               .encode("utf-8", "surrogatepass"))
    if size > MAX_CONF_BYTES:
        raise errors.InvalidParams(f"conf is larger than {MAX_CONF_BYTES} bytes", method)
    return conf
