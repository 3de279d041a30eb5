"""
Command-line words to XML-RPC values, and XML-RPC results to JSON.

An argument is read as JSON when it is JSON: ``'{"day": "2026-01-01"}'``,
``120``, ``true``, ``null``, ``'"12345"'`` (a string that looks like a
number).  A word that is not JSON is a string as it stands, so ids need no
quotes: ``get_dag etl_orders``, ``get_dag_run etl 2026-01-01``.  A word
that starts like a JSON object, array or string (``{``, ``[``, ``"``) must
be valid JSON: a typo there is an error, never a string.  ``@FILE`` reads
the JSON value from a file (``@-``: standard input).

JSON's null goes out as ``<nil/>`` (the gateway reads it as "not given"),
integers beyond 32 bits as ``<i8>``; NaN, Infinity and integers beyond 64
bits cannot be sent and are refused here.
"""

from __future__ import annotations

import base64
import json
import math
import re
import sys
from pathlib import Path
from typing import IO, Any
from xmlrpc.client import Binary, DateTime

from .errors import UsageError

_I8_MIN, _I8_MAX = -(2**63), 2**63 - 1
#: Nesting deeper than this is refused (the gateway refuses 16+ in conf).
MAX_DEPTH = 32


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON data")


def _loads(text: str) -> Any:
    return json.loads(text, parse_constant=_no_constant)


def parse_json(text: str, what: str) -> Any:
    """
    ``text`` as a JSON value that XML-RPC can carry; `UsageError` naming
    ``what`` if it is not.
    """
    try:
        value = _loads(text)
    except ValueError as e:
        raise UsageError(f"{what} is not valid JSON: {e}") from None
    check_sendable(value, what)
    return value


def parse_argument(
    word: str, position: int, stdin: IO[str] | None = None, what: str | None = None,
) -> Any:
    """
    One ``call`` argument (see the module doc); ``position`` counts from 1
    and names it in errors, unless ``what`` does.
    """
    what = what or f"argument {position}"
    if word.startswith("@"):
        source = word[1:]
        try:
            text = (stdin or sys.stdin).read() if source == "-" else Path(source).read_text()
        except (OSError, UnicodeDecodeError) as e:
            reason = getattr(e, "strerror", None) or type(e).__name__
            raise UsageError(f"{what}: cannot read {source}: {reason}") from None
        return parse_json(text, f"{what} ({source})")
    if word[:1] in ("{", "[", '"'):
        return parse_json(word, what)
    try:
        value = _loads(word)
    except ValueError:
        return word
    check_sendable(value, what)
    return value


def check_sendable(value: Any, what: str, depth: int = 0) -> None:
    """Raise `UsageError` unless XML-RPC (with ``i8`` and ``nil``) can carry ``value``."""
    if depth > MAX_DEPTH:
        raise UsageError(f"{what} is nested deeper than {MAX_DEPTH}")
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return
    if isinstance(value, int):
        if not _I8_MIN <= value <= _I8_MAX:
            raise UsageError(f"{what}: the integer {value} does not fit in 64 bits: send it "
                             f"as a string")
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise UsageError(f"{what}: {value} is not a number XML-RPC can carry")
        return
    if isinstance(value, dict):
        for item in value.values():
            check_sendable(item, what, depth + 1)
        return
    if isinstance(value, list):
        for item in value:
            check_sendable(item, what, depth + 1)
        return
    raise UsageError(f"{what}: a {type(value).__name__} cannot be sent")


def plain(value: Any) -> Any:
    """An XML-RPC result as plain JSON data: dateTime as ISO-8601, base64 as text."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, DateTime):
        return value.value
    if isinstance(value, Binary):
        return base64.b64encode(value.data).decode("ascii")
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


#: Characters that move, hide or break the text around them where a
#: terminal or a CI log shows it -- line and paragraph separators and the
#: bidirectional marks, embeddings, overrides and isolates -- as a regex
#: class body: what the gateway sends is never shown with them raw.
LAYOUT_CONTROLS = "\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069"
#: What json.dumps leaves raw but a terminal acts on: DEL, the C1 controls
#: (CSI among them) and `LAYOUT_CONTROLS`.
_RAW_IN_JSON = re.compile(f"[\x7f-\x9f{LAYOUT_CONTROLS}]")


def to_json(value: Any) -> str:
    """
    One line of JSON for ``value``: non-ASCII kept as it is, except the
    characters a terminal acts on, written as ``\\uXXXX`` escapes (the same
    text to any JSON reader).
    """
    text = json.dumps(plain(value), ensure_ascii=False, allow_nan=False)
    return _RAW_IN_JSON.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
