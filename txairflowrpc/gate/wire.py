"""
XML-RPC on the wire: parsing requests safely and writing responses.

`parse_call` accepts only plain XML-RPC: a DOCTYPE, an entity declaration
or an external reference is refused outright (so no entity is ever
expanded: no billion laughs, no quadratic blow-up, no XXE), nesting is
capped, and every problem is a `ParseError` or `InvalidRequest` whose text
is the gateway's own, never expat's.  A plain call (scalar params in
UTF-8, nothing in it that XML would change) is read by a regular expression
instead, in a quarter of the time, to the same result (`_flat_call`).

`dump_response` and `dump_fault` write what any client can read: a missing
value is left out of its struct (never ``<nil/>``), integers beyond XML-RPC's
32 bits become strings, characters XML cannot carry are dropped (and a
carriage return is written ``&#13;``, so that it arrives as itself), and a
struct or array nested deeper than `MAX_RESULT_DEPTH` is sent as its JSON
text; a caller that names the ``nil`` and ``i8`` extensions in its request
gets JSON nulls as ``<nil/>`` and big integers as ``<i8>`` instead.  A
struct member without a name is left out too (Go's kolo cannot read a
response holding one, and fails every call after it).  A caller with the
``bmp`` extension (xmlrpc-c's, always: it refuses a whole response holding
a character beyond the Basic Multilingual Plane) gets each such character
as U+FFFD.
"""

from __future__ import annotations

import codecs
import json
import math
import re
import time
from typing import Any, Callable
from xml.parsers import expat
from xmlrpc.client import Binary, DateTime, Fault, dumps, escape

from ..core import errors
from ..core.xmlchars import NOT_IN_XML, declaration_handlers

#: Deeper element nesting than this is refused.  A methodCall with a
#: struct inside an array inside a param is already 9 deep.
MAX_DEPTH = 64
#: Most values in one request (every <value>, at any depth).
MAX_VALUES = 10000
#: Most elements of any kind in one request: enough for MAX_VALUES values
#: in arrays and structs, and a bound on the work any request can cause.
MAX_ELEMENTS = 4 * MAX_VALUES
#: CPU seconds reading one request may take: what the caps above allow
#: takes far less; past it the request is refused, whatever it holds.
PARSE_CPU_SECONDS = 0.5
#: Elements read between two looks at the CPU clock.
_CPU_CHECK_EVERY = 1024
#: Longest single string (or other text) in a request, in characters.
MAX_TEXT = 256 * 1024

#: Structs and arrays in a result nested deeper than this are sent as their
#: JSON text: XML-RPC parsers (the stdlib's marshaller among them) recurse.
MAX_RESULT_DEPTH = 32

_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1


class _Refused(Exception):
    """Raised from inside expat's handlers to stop the parse."""

    def __init__(self, error: errors.GatewayError) -> None:
        self.error = error


def _forbid(what: str) -> Any:
    def handler(*args: Any) -> None:
        raise _Refused(errors.ParseError(f"{what} is not allowed"))

    return handler


# Made once: a parser per call need not build five closures each time.
_REFUSALS = declaration_handlers(_forbid)


#: Elements that carry one value each, as the stdlib's Unmarshaller reads
#: them (``ex:``-prefixed extensions, as Apache XML-RPC sends them, too).
_SCALARS = frozenset({
    "string", "int", "i4", "i8", "i1", "i2", "biginteger", "boolean", "double",
    "float", "dateTime.iso8601", "base64", "nil",
})
#: Which element may hold which: XML-RPC's grammar, and nothing else.
_CHILDREN: dict[str | None, frozenset[str]] = {
    None: frozenset({"methodCall"}),
    "methodCall": frozenset({"methodName", "params"}),
    "params": frozenset({"param"}),
    "param": frozenset({"value"}),
    "value": _SCALARS | {"struct", "array"},
    "struct": frozenset({"member"}),
    "member": frozenset({"name", "value"}),
    "array": frozenset({"data"}),
    "data": frozenset({"value"}),
}
_TOP = _CHILDREN[None]
_NOTHING: frozenset[str] = frozenset()
#: Elements that hold at most one child of each kind they may hold.
_ONE_EACH = frozenset({"methodCall", "param", "value", "member", "array"})
#: Elements whose text is markup only (whitespace between their children).
_CONTAINERS = frozenset({"methodCall", "params", "param", "struct", "member", "array", "data"})
#: (parent, element): the sibling that must come before it.
_AFTER = {("methodCall", "params"): "methodName", ("member", "value"): "name"}
#: What XML calls whitespace (not the rest of Unicode's).
_XML_SPACE = " \t\r\n"


class _Frame:
    __slots__ = ("tag", "children", "text", "chunks", "value", "items", "key")

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.children: list[str] = []
        self.text = False
        #: The element's text, in the pieces expat gave.
        self.chunks: list[str] = []
        #: What a <value>, <param>, <member> or <array> holds once its child ended.
        self.value: Any = None
        #: A <struct>'s members, a <data>'s or <params>'s values.
        self.items: Any = None
        #: A <member>'s name.
        self.key: Any = None


def _boolean(text: str) -> bool:
    if text == "0":
        return False
    if text == "1":
        return True
    raise TypeError("bad boolean value")


#: The widest integer XML-RPC has (``<i8>``): a number past it is refused,
#: as no client means it and JSON readers, Airflow's UI among them, lose it
#: (found by review: a 400-digit int overflowed a conf rule's float check).
_INT_RANGE = range(-(2**63), 2**63)


#: An int's and a double's text as XML-RPC writes them (ASCII digits, space
#: around allowed).  Found by review: Python's int() and float() also take
#: ``5_0`` (50), Arabic-Indic digits and ``nan``: text a filter in front of
#: the gateway would read otherwise, or not as a number at all.
_INT_TEXT = re.compile(r"[ \t\r\n]*[+-]?[0-9]+[ \t\r\n]*", re.ASCII)
_DOUBLE_TEXT = re.compile(  # nan and inf too: refused below as what they are
    r"[ \t\r\n]*[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
    r"|(?i:nan|inf|infinity))[ \t\r\n]*", re.ASCII)


def _integer(text: str) -> int:
    if _INT_TEXT.fullmatch(text) is None:
        raise ValueError("not an int as XML-RPC writes one")
    value = int(text)
    if value not in _INT_RANGE:
        raise _Refused(errors.InvalidParams("an int must fit in 64 bits (i8)"))
    return value


def _double(text: str) -> float:
    if _DOUBLE_TEXT.fullmatch(text) is None:
        raise ValueError("not a double as XML-RPC writes one")
    value = float(text)
    if not math.isfinite(value):
        raise _Refused(errors.InvalidParams("a double must be a finite number"))
    return value


def _date(text: str) -> DateTime:
    value = DateTime()
    value.decode(text)
    return value


def _base64(text: str) -> Binary:
    value = Binary()
    value.decode(text.encode("ascii"))
    return value


#: How the text of each scalar element becomes its value, as the stdlib's
#: `Unmarshaller` converts it (``int()`` and ``float()`` themselves, a
#: boolean only "0" or "1", a `DateTime`, a `Binary`), but for integers
#: past 64 bits and doubles that are not finite, refused.
_CONVERT: dict[str, Callable[[str], Any]] = {
    "string": str, "int": _integer, "i4": _integer, "i8": _integer, "i1": _integer,
    "i2": _integer, "biginteger": _integer, "boolean": _boolean,
    "double": _double, "float": _double,
    "dateTime.iso8601": _date, "base64": _base64, "nil": lambda text: None,
}


class _CallReader:
    """
    Reads a request in one pass: checks every element against XML-RPC's
    grammar and builds the values as it goes, exactly as the stdlib's
    `Unmarshaller` would read a valid call (a test compares them), so that
    nothing the stdlib would silently tolerate gets through: an element
    outside its place, a ``<param>`` or ``<value>`` holding two values, a
    ``<member>`` without a name, text between elements, a struct naming a
    member twice.  A ``<param>`` with no ``<value>`` is an omitted value in
    its own position (``None``), as a nil from Go's kolo/xmlrpc arrives.
    """

    def __init__(self, max_depth: int) -> None:
        self._max_depth = max_depth
        self._frames: list[_Frame] = []
        self._values = 0
        self._elements = 0
        self._text = 0
        # Taken at the first look (a syscall each: most requests never need one).
        self._cpu_started: float | None = None
        self.method: str | None = None
        self.params: list[Any] | None = None

    @property
    def started(self) -> bool:
        """Whether an element has begun."""
        return self._elements > 0

    def start(self, tag: str, attrs: dict[str, str]) -> None:
        if ":" in tag:
            tag = tag.rpartition(":")[2]
        frames = self._frames
        parent = frames[-1] if frames else None
        if parent is None:
            if tag not in _TOP:
                raise _Refused(errors.InvalidRequest(
                    f"<{tag[:40]}> is not allowed in the document"))
        else:
            where = parent.tag
            if tag not in _CHILDREN.get(where, _NOTHING):
                raise _Refused(errors.InvalidRequest(f"<{tag[:40]}> is not allowed in <{where}>"))
            if where in _ONE_EACH and tag in parent.children:
                raise _Refused(errors.InvalidRequest(f"<{where}> holds more than one <{tag}>"))
            if where == "value" and parent.children:
                raise _Refused(errors.InvalidRequest("a <value> holds more than one value"))
            first = _AFTER.get((where, tag))
            if first is not None and first not in parent.children:
                raise _Refused(errors.InvalidRequest(
                    f"<{where}> needs its <{first}> before its <{tag}>"))
            parent.children.append(tag)
        self._elements += 1
        if self._elements > MAX_ELEMENTS:
            raise _Refused(errors.InvalidParams(
                f"the request holds more than {MAX_ELEMENTS} elements"))
        if not self._elements % _CPU_CHECK_EVERY:
            self._check_cpu()
        if len(frames) >= self._max_depth:
            raise _Refused(errors.InvalidParams(f"the request nests deeper than {self._max_depth}"))
        frame = _Frame(tag)
        if tag == "value":
            self._values += 1
            if self._values > MAX_VALUES:
                raise _Refused(errors.InvalidParams(
                    f"the request holds more than {MAX_VALUES} values"))
        elif tag == "struct":
            frame.items = {}
        elif tag == "data" or tag == "params":
            frame.items = []
        frames.append(frame)
        self._text = 0

    def _check_cpu(self) -> None:
        """Refuse a request that has cost `PARSE_CPU_SECONDS` of CPU since its first look."""
        now = time.thread_time()
        if self._cpu_started is None:
            self._cpu_started = now
        elif now - self._cpu_started > PARSE_CPU_SECONDS:
            raise _Refused(errors.InvalidParams("the request costs too much to read"))

    def data(self, chunk: str) -> None:
        if not self._frames:
            return  # whitespace around the document (expat refuses anything else)
        frame = self._frames[-1]
        markup = not chunk.strip(_XML_SPACE)
        if frame.tag in _CONTAINERS:
            if not markup:
                raise _Refused(errors.InvalidRequest(f"text is not allowed in <{frame.tag}>"))
            return
        if frame.tag == "value" and not markup:
            frame.text = True
        self._text += len(chunk)  # whitespace in a value is part of it
        if self._text > MAX_TEXT:
            raise _Refused(errors.InvalidParams(f"a value is longer than {MAX_TEXT} characters"))
        frame.chunks.append(chunk)

    def end(self, tag: str) -> None:
        frames = self._frames
        frame = frames.pop()
        self._text = 0
        tag = frame.tag
        parent = frames[-1] if frames else None
        if tag == "value":
            if frame.children:
                if frame.text:
                    raise _Refused(errors.InvalidRequest("a <value> mixes text and a typed value"))
                value = frame.value
            else:
                value = "".join(frame.chunks)  # no type: a string
            assert parent is not None
            if parent.tag == "data":
                parent.items.append(value)
            else:  # a <param> or a <member>
                parent.value = value
        elif tag in _CONVERT:
            assert parent is not None
            parent.value = _CONVERT[tag]("".join(frame.chunks))
        elif tag == "name":
            assert parent is not None
            key = "".join(frame.chunks)
            if key in frames[-2].items:
                raise _Refused(errors.InvalidRequest(f"a struct names member {key[:64]!r} twice"))
            parent.key = key
        elif tag == "member":
            if sorted(frame.children) != ["name", "value"]:
                raise _Refused(errors.InvalidRequest("a struct <member> needs a <name> and a <value>"))
            assert parent is not None
            parent.items[frame.key] = frame.value
        elif tag == "struct" or tag == "data":  # a struct's value, or its array's
            assert parent is not None
            parent.value = frame.items
        elif tag == "array":
            if not frame.children:
                raise _Refused(errors.InvalidRequest("an <array> needs its <data>"))
            assert parent is not None
            parent.value = frame.value
        elif tag == "param":
            assert parent is not None
            # An omitted value keeps its position.
            parent.items.append(frame.value if frame.children else None)
        elif tag == "params":
            self.params = frame.items
        elif tag == "methodName":
            self.method = "".join(frame.chunks)


def parse_call(
    body: bytes, max_depth: int = MAX_DEPTH, charset: str | None = None
) -> tuple[str, tuple[Any, ...]]:
    """
    The method name and parameters of an XML-RPC ``methodCall``.

    ``charset`` is the HTTP ``Content-Type``'s charset parameter; it decides
    how the body is read when the body has no XML declaration of its own
    (which otherwise decides, or UTF-8 when there is neither).

    Raises `errors.ParseError` (-32700) for XML that is not well-formed or
    uses DTD features, `errors.UnsupportedEncoding` (-32701) for a charset
    the gateway cannot read, `errors.InvalidRequest` (-32600) for XML that
    is not a methodCall by XML-RPC's grammar, and `errors.InvalidParams`
    (-32602) for nesting too deep, too many elements or values, a value too
    long, or a double that is not finite.
    """
    body, transcoded = _as_utf8(body, charset)
    if len(body) <= _FLAT_MAX_BYTES and max_depth >= _FLAT_DEPTH:
        flat = _flat_call(body)
        if flat is not None:
            return flat
    return _read_call(body, max_depth, "utf-8" if transcoded else None)


def _read_call(body: bytes, max_depth: int,
               encoding: str | None = None) -> tuple[str, tuple[Any, ...]]:
    """
    `parse_call` of a body in UTF-8 or naming its own encoding, by expat and
    `_CallReader`; ``encoding``, if given, is the body's, whatever it says.
    """
    reader = _CallReader(max_depth)
    parser = expat.ParserCreate(encoding, None)
    parser.StartElementHandler = reader.start
    parser.EndElementHandler = reader.end
    parser.CharacterDataHandler = reader.data
    parser.buffer_text = True
    for name, handler in _REFUSALS:
        setattr(parser, name, handler)
    try:
        parser.Parse(body, True)
    except _Refused as refused:
        raise refused.error from None
    except expat.ExpatError as e:
        raise errors.ParseError(_expat_reason(e, reader.started)) from None
    except LookupError:  # an encoding expat asked Python for (not named where we look)
        raise errors.UnsupportedEncoding("declared in the body") from None
    except (ValueError, TypeError, KeyError, IndexError, OverflowError, AttributeError):
        # A value's text does not convert to its type (<int>abc</int>, ...).
        raise errors.InvalidRequest("a value does not match its type") from None
    if reader.method is None and reader.params is None:
        raise errors.InvalidRequest("it is incomplete")
    method = reader.method
    if not isinstance(method, str) or not method:
        raise errors.InvalidRequest("it has no methodName")
    return method, tuple(reader.params or ())


#: The longest request `_flat_call` reads (past about 1 KiB its three
#: linear scans cost more than expat's one), and the nesting of what it reads.
_FLAT_MAX_BYTES = 1024
_FLAT_DEPTH = 5
_SPACE = r"[ \t\n]*+"
#: A param whose value is text (typed or not) that reads as itself in XML:
#: no markup, no reference, no CR (a parser turns CR LF into LF) and no
#: ``>`` (``]]>`` is refused in text).  Possessive: nothing is tried twice.
_PARAM = (rf"<param>{_SPACE}<value>(?:{_SPACE}<(?P<type>string|int|i4|i8|boolean|double)>"
          rf"(?P<typed>[^<>&\r]*+)</(?P=type)>{_SPACE}|(?P<untyped>[^<>&\r]*+))</value>"
          rf"{_SPACE}</param>")
_FLAT_PARAM = re.compile(_PARAM)
#: A methodCall of such params in UTF-8, as Python's ``xmlrpc.client`` and
#: the gateway's own client write one for every method but those taking a
#: struct or an array.
_FLAT_CALL = re.compile(
    rf"(?:<\?xml version=(['\"])1\.0\1(?: encoding=(['\"])[Uu][Tt][Ff]-8\2)?\?>)?{_SPACE}"
    rf"<methodCall>{_SPACE}<methodName>(?P<method>[A-Za-z0-9_.]{{1,200}})</methodName>{_SPACE}"
    rf"(?:<params>(?P<params>(?:{_SPACE}{_PARAM})*+){_SPACE}</params>{_SPACE})?"
    rf"</methodCall>{_SPACE}")


def _flat_call(body: bytes) -> tuple[str, tuple[Any, ...]] | None:
    """
    The call in ``body`` if it is a plain one (`_FLAT_CALL`), read without
    expat in a fraction of the time; None for anything else, and for
    anything it cannot read, which the full reader then reads or refuses
    with its own error.  What it returns is what the full reader returns
    (a test compares them, on generated and mutated calls), given what
    `parse_call` gives it: it applies no limit of its own, and the length
    and depth of a body within `_FLAT_MAX_BYTES` are within every limit.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if NOT_IN_XML.search(text) is not None:
        return None
    call = _FLAT_CALL.fullmatch(text)
    if call is None:
        return None
    params: list[Any] = []
    found = call.group("params") or ""
    try:
        for param in _FLAT_PARAM.finditer(found):
            kind, typed, untyped = param.group("type", "typed", "untyped")
            params.append(untyped if kind is None else _CONVERT[kind](typed))
    except (_Refused, ValueError, TypeError, OverflowError):  # the full reader says why
        return None
    if len(params) != found.count("<param>"):
        return None  # cannot be (the same pattern matched each), but never a param lost
    return call.group("method"), tuple(params)


#: An XML declaration naming an encoding (XML's EncName), in an ASCII-compatible body.
_DECLARATION = re.compile(
    rb"\A(?:\xef\xbb\xbf)?\s*<\?xml\s[^>]*?\bencoding\s*=\s*([\"'])([A-Za-z][A-Za-z0-9._-]*)\1")
_BOMS = (b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")
#: The encodings a request may be in (Python's codec names), named by an
#: XML declaration or the Content-Type's charset: the text encodings
#: XML-RPC clients use.  Any other is refused (-32701) before a byte is
#: decoded: Python also has codecs that are not text (``rot13``, ``zlib``)
#: or that cost more than linear time (``punycode``).
READABLE_ENCODINGS = frozenset({
    "utf-8", "ascii", "utf-16", "utf-16-le", "utf-16-be",
    *(f"iso8859-{n}" for n in (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 13, 14, 15, 16)),
    *(f"cp{n}" for n in range(1250, 1259)),
})


def _codec(name: str) -> str:
    """The Python codec ``name`` stands for, if it is one of `READABLE_ENCODINGS`."""
    try:
        codec = codecs.lookup(name).name
    except (LookupError, ValueError):  # unknown, or not even a name (a NUL in it)
        codec = None
    if codec not in READABLE_ENCODINGS:
        raise errors.UnsupportedEncoding(name[:40])
    return codec


#: The first bytes of UTF-16 without a byte-order mark (``<`` in either order).
_UTF16_STARTS = {b"<\x00": "utf-16-le", b"\x00<": "utf-16-be"}


def _as_utf8(body: bytes, charset: str | None) -> tuple[bytes, bool]:
    """
    ``body`` in UTF-8, read in ``charset`` when the body does not say its
    own encoding (an XML declaration naming one, or a byte-order mark), and
    whether it was turned into UTF-8 here (then expat is told so: the
    declaration in it is no longer true).  An encoding named either way
    must be one of `READABLE_ENCODINGS`.  UTF-16 without a byte-order mark
    is turned into UTF-8 here too (found by review: expat found it by
    itself, then asked Python's codecs for whatever its declaration named,
    ``punycode`` or ``utf-7`` among them), and so is UTF-16 with one.
    """
    if _declared(body):
        return body, False
    if body.startswith(b"\xef\xbb\xbf"):  # UTF-8's mark: a declaration was checked above
        return body, False
    # UTF-16, marked or not, is read here, its declaration checked as any other's
    # (found by review: expat handed what it declared to Python's codecs).
    utf16 = "utf-16" if body.startswith(_BOMS) else _UTF16_STARTS.get(body[:2])
    if not charset and utf16 is None:
        return body, False
    codec = utf16 or _codec(charset.strip().strip('"'))  # type: ignore[union-attr]
    if codec == "utf-8":
        return body, False
    try:
        utf8 = body.decode(codec).encode("utf-8")
    except UnicodeError:
        raise errors.ParseError(f"the body is not valid {codec}") from None
    _declared(utf8)  # what it says of itself: one of the list too
    return utf8, True


def _declared(body: bytes) -> bool:
    """Whether ``body`` (ASCII-compatible) declares its encoding; it must be one of the list."""
    declared = _DECLARATION.match(body)
    if declared is None:
        return False
    _codec(declared.group(2).decode("ascii"))
    return True


def _expat_reason(e: expat.ExpatError, started: bool) -> str:
    """What a caller is told of expat's error; ``started``: an element had begun."""
    if e.code == expat.errors.codes[expat.errors.XML_ERROR_INVALID_TOKEN] and e.lineno:
        return f"invalid character or token at line {e.lineno}"
    if e.code in (
        expat.errors.codes[expat.errors.XML_ERROR_UNKNOWN_ENCODING],
        expat.errors.codes[expat.errors.XML_ERROR_INCORRECT_ENCODING],
    ):
        return "unsupported or wrong character encoding"
    if e.code == expat.errors.codes[expat.errors.XML_ERROR_NO_ELEMENTS]:
        # expat's "no element found" also ends a document cut off inside its elements.
        return "the document ends before its elements are closed" if started else (
            "the body holds no element")
    return f"malformed XML at line {e.lineno}"


#: XML-RPC extensions a caller can read, named in the request header
#: ``X-Airflowrpc-Extensions`` (comma-separated): ``nil`` (JSON nulls as
#: ``<nil/>``) and ``i8`` (integers beyond 32 bits as ``<i8>``); and one it
#: cannot: ``bmp`` (no character beyond the Basic Multilingual Plane).
EXTENSIONS = frozenset({"nil", "i8", "bmp"})
#: Clients, by a product token in their User-Agent (lower case), that get
#: ``bmp`` whatever they send: xmlrpc-c (found by review: a run whose conf or
#: note held an emoji was unreadable to it, "-510 ... not in the Basic
#: Multilingual Plane", even written as a character reference), which sends
#: no header of a caller's choosing, and names itself after the program
#: (``myapp/1.0 Xmlrpc-c/1.33.14 Curl/7.88.1``).
BMP_ONLY_AGENTS = (b"xmlrpc-c/",)

_I8_MIN, _I8_MAX = -(2**63), 2**63 - 1
_BEYOND_BMP = re.compile("[\U00010000-\U0010FFFF]")


def extensions_of(header: bytes | None, agent: bytes | None = None) -> frozenset[str]:
    """
    The known extensions a request's ``X-Airflowrpc-Extensions`` names, and
    ``bmp`` for a client its User-Agent (``agent``) shows needs it.
    """
    names: set[str] = set()
    if header:
        names = {part.strip().lower() for part in header.decode("latin-1").split(",")}
    if agent:
        tokens = agent[:256].lower().split()
        if any(token.startswith(BMP_ONLY_AGENTS) for token in tokens):
            names.add("bmp")
    return frozenset(names & EXTENSIONS)


def _within_bmp(text: str, extensions: frozenset[str]) -> str:
    """``text`` with each character beyond the BMP as U+FFFD, for a ``bmp`` caller."""
    return _BEYOND_BMP.sub("\ufffd", text) if "bmp" in extensions else text


class _I8(int):
    """An integer written as ``<i8>``."""


class _Unrepresentable(Exception):
    """A value this caller's XML-RPC cannot carry (a null inside an array)."""


def to_xmlrpc(value: Any, extensions: frozenset[str] = frozenset()) -> Any:
    """
    ``value`` made safe for the caller (see the module doc).

    Without the ``nil`` extension a null struct member is left out, and so
    is a member whose value holds an array with a null in it (leaving the
    null out would shift the elements after it): a run's ``conf_json`` has
    it exactly.  Integers beyond 32 bits are strings, or ``<i8>`` with the
    ``i8`` extension.
    """
    try:
        return _render(value, "nil" in extensions, "i8" in extensions, MAX_RESULT_DEPTH)
    except _Unrepresentable:
        return ""


def _render(value: Any, nil: bool, i8: bool, depth: int) -> Any:
    if isinstance(value, (dict, list, tuple)) and depth <= 0:
        # Deeper than callers' parsers (and the marshaller) go: its JSON text.
        try:
            # ASCII, as a run's conf_json: exact for every caller, a bmp one too.
            text = json.dumps(value, default=str, ensure_ascii=True)
        except RecursionError:  # deeper still than Python's own limit
            text = f"(nested more than {MAX_RESULT_DEPTH} levels deep: not sent)"
        return _render(text, nil, i8, depth)
    depth -= 1
    if isinstance(value, str):
        # Printable text holds none of what XML forbids; the rest is cleaned.
        return value if value.isprintable() else NOT_IN_XML.sub("", value)
    if isinstance(value, bool) or isinstance(value, DateTime):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, int):
        if _INT_MIN <= value <= _INT_MAX:
            return value
        return _I8(value) if i8 and _I8_MIN <= value <= _I8_MAX else str(value)
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if item is None and not nil:
                continue
            try:
                key = key if isinstance(key, str) and key.isprintable() else NOT_IN_XML.sub(
                    "", str(key))
                if not key:  # no name: Go's kolo reads no response holding one
                    continue
                out[key] = _render(item, nil, i8, depth)
            except _Unrepresentable:
                continue
        return out
    if isinstance(value, (list, tuple)):
        if not nil and any(item is None for item in value):
            raise _Unrepresentable()
        return [_render(item, nil, i8, depth) for item in value]
    if value is None:
        if nil:
            return None
        raise _Unrepresentable()
    return _render(str(value), nil, i8, depth)


def dump_response(result: Any, extensions: frozenset[str] = frozenset()) -> bytes:
    """A ``methodResponse`` holding ``result``, written for the caller's ``extensions``."""
    out = ["<?xml version='1.0'?>\n<methodResponse>\n<params>\n<param>\n"]
    try:
        _emit(result, "nil" in extensions, "i8" in extensions, MAX_RESULT_DEPTH, out)
    except _Unrepresentable:
        del out[1:]
        _write("", out)
    out.append("</param>\n</params>\n</methodResponse>\n")
    return _within_bmp("".join(out), extensions).encode()


def _string(text: str) -> tuple[str, str, str]:
    """The ``<value>`` of safe ``text``, a carriage return as ``&#13;`` (to arrive as itself)."""
    return "<value><string>", escape(text).replace("\r", "&#13;"), "</string></value>\n"


def _emit(value: Any, nil: bool, i8: bool, depth: int, out: list[str]) -> None:
    """
    `_write` of `to_xmlrpc`'s ``value``, in one pass for the values results
    are made of (no copy of the result is built); anything else, and a
    struct with a key to clean (two keys may become one), goes the long way.
    Raises `_Unrepresentable` where `_render` does; what was appended of
    the value by then (an array's elements before a deeper one's null) is
    taken back by the struct member (or the result) that holds it.
    """
    kind = type(value)
    if kind is str:
        out += _string(value if value.isprintable() else NOT_IN_XML.sub("", value))
    elif kind is dict and depth > 0:
        if not all(type(key) is str and key and key.isprintable() for key in value):
            # Looked at before a member is written: nothing is written twice.
            _write(_render(value, nil, i8, depth), out)
            return
        out.append("<value><struct>\n")
        for key, item in value.items():
            if item is None and not nil:
                continue
            member = len(out)
            out += ("<member>\n<name>", escape(key), "</name>\n")
            try:
                _emit(item, nil, i8, depth - 1, out)
            except _Unrepresentable:
                del out[member:]
                continue
            out.append("</member>\n")
        out.append("</struct></value>\n")
    elif kind is int and _INT_MIN <= value <= _INT_MAX:
        out += ("<value><int>", str(value), "</int></value>\n")
    elif kind is float and math.isfinite(value):
        out += ("<value><double>", repr(value), "</double></value>\n")
    elif (kind is list or kind is tuple) and depth > 0:
        # A null in it, looked for first as `_render` does: the struct
        # member (or the result) holding the array goes.
        if not nil and any(item is None for item in value):
            raise _Unrepresentable()
        out.append("<value><array><data>\n")
        for item in value:
            _emit(item, nil, i8, depth - 1, out)
        out.append("</data></array></value>\n")
    elif value is None:
        if not nil:
            raise _Unrepresentable()
        out.append("<value><nil/></value>")
    else:
        _write(_render(value, nil, i8, depth), out)


def _write(value: Any, out: list[str]) -> None:
    """
    Append the ``<value>`` of ``value``, a result made safe by `to_xmlrpc`,
    to ``out``: what the stdlib's `xmlrpc.client.Marshaller` writes for it,
    character for character (a test compares them), with ``<i8>`` for an
    `_I8` and a carriage return as ``&#13;``, in less time.
    """
    kind = type(value)
    if kind is str:
        out += _string(value)
    elif kind is dict:
        out.append("<value><struct>\n")
        for key, item in value.items():
            out += ("<member>\n<name>", escape(key), "</name>\n")
            _write(item, out)
            out.append("</member>\n")
        out.append("</struct></value>\n")
    elif kind is int:
        out += ("<value><int>", str(value), "</int></value>\n")
    elif kind is bool:
        out.append("<value><boolean>1</boolean></value>\n" if value
                   else "<value><boolean>0</boolean></value>\n")
    elif kind is float:
        out += ("<value><double>", repr(value), "</double></value>\n")
    elif kind is list:
        out.append("<value><array><data>\n")
        for item in value:
            _write(item, out)
        out.append("</data></array></value>\n")
    elif value is None:
        out.append("<value><nil/></value>")
    elif kind is _I8:
        out += ("<value><i8>", str(int(value)), "</i8></value>\n")
    elif kind is DateTime:
        out += ("<value><dateTime.iso8601>", value.value, "</dateTime.iso8601></value>\n")
    else:  # not a value `to_xmlrpc` makes
        raise TypeError(f"cannot write {kind.__name__} as XML-RPC")


#: Longest fault string sent: a bound on what any fault can echo.
MAX_FAULT_TEXT = 1000


def dump_fault(fault: Fault, extensions: frozenset[str] = frozenset()) -> bytes:
    text = _within_bmp(to_xmlrpc(str(fault.faultString)[:MAX_FAULT_TEXT]), extensions)
    safe = Fault(fault.faultCode, text)
    return dumps(safe, methodresponse=True, encoding="utf-8").encode("utf-8")
