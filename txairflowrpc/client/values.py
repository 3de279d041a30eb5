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
integers beyond 32 bits as ``<i8>``; NaN, Infinity, integers beyond 64
bits and strings holding a character XML 1.0 has no place for
(`txairflowrpc.core.xmlchars.NOT_IN_XML`: the gateway would refuse the
request as not well-formed, -32700, which a pipeline takes for an outage)
cannot be sent and are refused here, naming where they are.  ``@FILE`` and
``@-`` are read as UTF-8, as JSON is (RFC 8259), whatever the locale.
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

from ..core.shown import LAYOUT_CONTROLS
from ..core.xmlchars import NOT_IN_XML
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
        return parse_json(_read_utf8(source, stdin, what), f"{what} ({source})")
    if word[:1] in ("{", "[", '"'):
        return parse_json(word, what)
    try:
        value = _loads(word)
    except ValueError:
        value = word
    check_sendable(value, what)
    return value


def _read_utf8(source: str, stdin: IO[str] | None, what: str) -> str:
    """
    The text of file ``source`` (``-``: standard input) as UTF-8, never in
    the locale's encoding (cp1252 on a Windows runner would garble every
    non-ASCII character without a word).  A leading byte order mark is
    skipped: RFC 8259 lets a reader ignore one, and Windows tools write it.
    `UsageError` when it cannot be read or is not UTF-8.
    """
    try:
        if source == "-":
            stream = stdin or sys.stdin
            raw = getattr(stream, "buffer", None)
            if raw is None:  # already text (a test's StringIO): nothing to decode
                return stream.read().removeprefix("\ufeff")
            data = raw.read()
        else:
            data = Path(source).read_bytes()
    except OSError as e:
        raise UsageError(f"{what}: cannot read {source}: {e.strerror or type(e).__name__}"
                         ) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UsageError(f"{what}: {source} is not UTF-8 (byte {e.start}): JSON is UTF-8 "
                         f"text") from None


def check_sendable(value: Any, what: str, depth: int = 0, at: str = "") -> None:
    """
    Raise `UsageError` unless XML-RPC (with ``i8`` and ``nil``) can carry
    ``value``; it names ``what`` and where in it (``["key"][2]``).
    """
    if depth > MAX_DEPTH:
        raise UsageError(f"{what} is nested deeper than {MAX_DEPTH}")
    if isinstance(value, str):
        _check_text(value, what, at)
        return
    if isinstance(value, bool) or value is None:
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
        for key, item in value.items():
            if not isinstance(key, str):
                raise UsageError(f"{what}: a struct's keys must be strings")
            inner = f"{at}[{json.dumps(key)}]"
            _check_text(key, what, inner, "key")
            check_sendable(item, what, depth + 1, inner)
        return
    if isinstance(value, list):
        for n, item in enumerate(value):
            check_sendable(item, what, depth + 1, f"{at}[{n}]")
        return
    raise UsageError(f"{what}: a {type(value).__name__} cannot be sent")


def _check_text(text: str, what: str, at: str, kind: str = "string") -> None:
    found = NOT_IN_XML.search(text)
    if found is not None:
        where = f"{what} {at}" if at else what
        raise UsageError(
            f"{where}: the {kind} holds U+{ord(found.group()):04X}, which XML-RPC cannot carry "
            f"(no control character but tab, line feed and carriage return, no U+FFFE or "
            f"U+FFFF, no lone surrogate)")


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


#: What the gateway sends is never shown with `LAYOUT_CONTROLS` raw
#: (ARABIC LETTER MARK, ZERO WIDTH SPACE and its kin each found by review).
#: What json.dumps leaves raw but a terminal acts on: DEL, the C1 controls
#: (CSI among them) and `LAYOUT_CONTROLS`.
_RAW_IN_JSON = re.compile(f"[\x7f-\x9f{LAYOUT_CONTROLS}]")
#: The commands a CI runner obeys wherever they stand in a line of a job's
#: output, stdout or stderr, not only at its start: Azure Pipelines' logging
#: commands (``##vso[task.setvariable ...]``, ``##vso[task.uploadfile]``)
#: and GitHub Actions' older form (``##[add-mask]``).  Found by review:
#: prefixing a line (``| ``, ``airflowrpc: ``) keeps GitHub's ``::`` commands
#: from its start, which protects nothing from these.
_RUNNER_COMMAND = re.compile(r"##(?=(?:vso)?\[)", re.IGNORECASE)
#: The same in JSON text, where the ``[`` becomes an escape: the same value to jq.
_RUNNER_COMMAND_IN_JSON = re.compile(r"(##(?:vso)?)\[", re.IGNORECASE)


def defused(text: str) -> str:
    """
    ``text`` with every runner command made inert as the Azure agent itself
    does when it echoes one: ``##vso[`` is shown as ``**vso[``, ``##[`` as
    ``**[``.  For what is shown; a result on stdout keeps its value
    (`to_json`).
    """
    return _RUNNER_COMMAND.sub("**", text)


def to_json(value: Any, ascii_only: bool = False) -> str:
    """
    One line of JSON for ``value``: non-ASCII kept as it is (all of it as
    ``\\uXXXX`` escapes with ``ascii_only``), except the characters a
    terminal acts on, written as ``\\uXXXX`` escapes (the same text to any
    JSON reader), and the ``[`` of a runner command (``##vso[``, ``##[``),
    which a CI runner would obey on stdout, as ``\\u005b``.
    """
    text = json.dumps(plain(value), ensure_ascii=ascii_only, allow_nan=False)
    text = _RAW_IN_JSON.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
    # Only a string can hold "##[" or "##vso[" (no JSON syntax writes "#").
    return _RUNNER_COMMAND_IN_JSON.sub(r"\1\\u005b", text)
