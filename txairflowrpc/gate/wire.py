"""
XML-RPC on the wire: parsing requests safely and writing responses.

`parse_call` accepts only plain XML-RPC: a DOCTYPE, an entity declaration
or an external reference is refused outright (so no entity is ever
expanded: no billion laughs, no quadratic blow-up, no XXE), nesting is
capped, and every problem is a `ParseError` or `InvalidRequest` whose text
is the gateway's own, never expat's.

`dump_response` and `dump_fault` write what any client can read: a missing
value is left out of its struct (never ``<nil/>``), integers beyond XML-RPC's
32 bits become strings, and characters XML cannot carry are dropped.
"""

from __future__ import annotations

import re
from typing import Any
from xml.parsers import expat
from xmlrpc.client import DateTime, Fault, Unmarshaller, dumps
from xmlrpc.client import Error as XMLRPCError

from ..core import errors

#: Deeper element nesting than this is refused.  A methodCall with a
#: struct inside an array inside a param is already 9 deep.
MAX_DEPTH = 64
#: Most values in one request (every <value>, at any depth).
MAX_VALUES = 10000
#: Longest single string (or other text) in a request, in characters.
MAX_TEXT = 256 * 1024

_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1
# Characters XML 1.0 does not allow, which no client could parse.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


class _Refused(Exception):
    """Raised from inside expat's handlers to stop the parse."""

    def __init__(self, error: errors.GatewayError) -> None:
        self.error = error


class _Unmarshaller(Unmarshaller):
    """
    The stdlib's, minus its byte decoding: expat already gives text, and
    the stdlib would call ``str.decode`` whenever ``_encoding`` is set (by
    default, or by an XML declaration naming an encoding).
    """

    def __init__(self) -> None:
        super().__init__(use_datetime=False, use_builtin_types=False)
        self._encoding = None


def _forbid(what: str) -> Any:
    def handler(*args: Any) -> None:
        raise _Refused(errors.ParseError(f"{what} is not allowed"))

    return handler


def parse_call(body: bytes, max_depth: int = MAX_DEPTH) -> tuple[str, tuple[Any, ...]]:
    """
    The method name and parameters of an XML-RPC ``methodCall``.

    Raises `errors.ParseError` (-32700) for XML that is not well-formed or
    uses DTD features, `errors.InvalidRequest` (-32600) for XML that is not
    a methodCall, and `errors.InvalidParams` (-32602) for nesting too deep,
    too many values or a value too long.
    """
    target = _Unmarshaller()
    parser = expat.ParserCreate(None, None)
    depth = 0
    values = 0
    text = 0

    def start(tag: str, attrs: dict[str, str]) -> None:
        nonlocal depth, values, text
        depth += 1
        text = 0
        if depth > max_depth:
            raise _Refused(errors.InvalidParams(f"the request nests deeper than {max_depth}"))
        if tag == "value":
            values += 1
            if values > MAX_VALUES:
                raise _Refused(errors.InvalidParams(f"the request holds more than {MAX_VALUES} values"))
        target.start(tag, attrs)

    def data(chunk: str) -> None:
        nonlocal text
        text += len(chunk)
        if text > MAX_TEXT:
            raise _Refused(errors.InvalidParams(f"a value is longer than {MAX_TEXT} characters"))
        target.data(chunk)

    def end(tag: str) -> None:
        nonlocal depth, text
        depth -= 1
        text = 0
        target.end(tag)

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = data
    parser.buffer_text = True
    parser.StartDoctypeDeclHandler = _forbid("a DOCTYPE")
    parser.EntityDeclHandler = _forbid("an entity declaration")
    parser.UnparsedEntityDeclHandler = _forbid("an entity declaration")
    parser.ExternalEntityRefHandler = _forbid("an external reference")
    parser.NotationDeclHandler = _forbid("a notation declaration")
    try:
        parser.Parse(body, True)
    except _Refused as refused:
        raise refused.error from None
    except expat.ExpatError as e:
        raise errors.ParseError(_expat_reason(e)) from None
    except (ValueError, TypeError, KeyError, IndexError, OverflowError, AttributeError):
        # The Unmarshaller's conversion of a value (<int>abc</int>, ...).
        raise errors.InvalidRequest("a value does not match its type") from None
    except XMLRPCError:
        # The Unmarshaller's structure checks (<data> outside an <array>, ...).
        raise errors.InvalidRequest("its elements are not XML-RPC's") from None
    try:
        params = target.close()
    except Exception:
        raise errors.InvalidRequest("it is incomplete") from None
    method = target.getmethodname()
    if not isinstance(method, str) or not method:
        raise errors.InvalidRequest("it has no methodName")
    return method, tuple(params)


def _expat_reason(e: expat.ExpatError) -> str:
    if e.code == expat.errors.codes[expat.errors.XML_ERROR_INVALID_TOKEN] and e.lineno:
        return f"invalid character or token at line {e.lineno}"
    if e.code in (
        expat.errors.codes[expat.errors.XML_ERROR_UNKNOWN_ENCODING],
        expat.errors.codes[expat.errors.XML_ERROR_INCORRECT_ENCODING],
    ):
        return "unsupported or wrong character encoding"
    if e.code == expat.errors.codes[expat.errors.XML_ERROR_NO_ELEMENTS]:
        return "the body is empty"
    return f"malformed XML at line {e.lineno}"


def to_xmlrpc(value: Any) -> Any:
    """``value`` made safe for every XML-RPC client (see the module doc)."""
    if isinstance(value, str):
        return _NOT_XML.sub("", value)
    if isinstance(value, bool) or isinstance(value, (float, DateTime)):
        return value
    if isinstance(value, int):
        return value if _INT_MIN <= value <= _INT_MAX else str(value)
    if isinstance(value, dict):
        return {
            to_xmlrpc(str(k)): to_xmlrpc(v) for k, v in value.items() if v is not None
        }
    if isinstance(value, (list, tuple)):
        return [to_xmlrpc(v) for v in value if v is not None]
    if value is None:
        return ""
    return to_xmlrpc(str(value))


def dump_response(result: Any) -> bytes:
    return dumps((to_xmlrpc(result),), methodresponse=True, encoding="utf-8").encode("utf-8")


def dump_fault(fault: Fault) -> bytes:
    safe = Fault(fault.faultCode, to_xmlrpc(fault.faultString))
    return dumps(safe, methodresponse=True, encoding="utf-8").encode("utf-8")
