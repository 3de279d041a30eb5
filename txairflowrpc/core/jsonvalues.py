"""
JSON values compared as JSON: what both the gateway (is a retried trigger's
conf the run's?) and the client (is this backfill's conf mine?) ask.
"""

from __future__ import annotations

from typing import Any


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
