"""Parsing requests safely and writing responses every client can read."""

from __future__ import annotations

import codecs
import enum
import xmlrpc.client

import pytest

from txairflowrpc.core import errors
from txairflowrpc.gate.wire import dump_fault, dump_response, parse_call


def call(method: str, *params: object) -> bytes:
    return xmlrpc.client.dumps(params, method).encode()


def bare(method: str, *params: object) -> bytes:
    """The call without the stdlib's XML declaration, for a test to put its own."""
    return call(method, *params).split(b"?>", 1)[1].lstrip()


def test_parses_a_call_with_nested_values() -> None:
    body = call("trigger_dag", "etl", {"a": [1, True, "x"]}, {"dag_run_id": "r"})
    assert parse_call(body) == ("trigger_dag", ("etl", {"a": [1, True, "x"]}, {"dag_run_id": "r"}))


def test_parses_a_declaration_naming_utf8() -> None:
    body = ('<?xml version="1.0" encoding="UTF-8"?><methodCall><methodName>get_dag'
            '</methodName><params><param><value><string>é</string></value></param>'
            '</params></methodCall>').encode()
    assert parse_call(body) == ("get_dag", ("é",))


def test_no_params_element_is_no_params() -> None:
    assert parse_call(b"<methodCall><methodName>ping</methodName></methodCall>") == ("ping", ())


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>
<methodCall><methodName>ping</methodName><params><param><value><string>&lol2;</string>
</value></param></params></methodCall>"""
XXE = b"""<?xml version="1.0"?><!DOCTYPE x [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<methodCall><methodName>get_dag</methodName><params><param><value><string>&xxe;</string>
</value></param></params></methodCall>"""
EXTERNAL_DTD = b"""<?xml version="1.0"?><!DOCTYPE methodCall SYSTEM "http://127.0.0.1:9/x.dtd">
<methodCall><methodName>ping</methodName></methodCall>"""


@pytest.mark.parametrize("body", [BILLION_LAUGHS, XXE, EXTERNAL_DTD])
def test_any_doctype_is_a_parse_error_before_expansion(body: bytes) -> None:
    with pytest.raises(errors.ParseError) as e:
        parse_call(body)
    assert e.value.code == -32700
    assert "DOCTYPE" in e.value.message
    assert "lol" not in e.value.message and "passwd" not in e.value.message


@pytest.mark.parametrize("body", [
    b"", b"<methodCall>", b"not xml at all", b"<methodCall></b>",
    b"<methodCall><methodName>ping</methodName><params><param><value><string>\xff\xfe"
    b"</string></value></param></params></methodCall>",
])
def test_malformed_xml_is_a_parse_error_without_expat_internals(body: bytes) -> None:
    with pytest.raises(errors.ParseError) as e:
        parse_call(body)
    assert e.value.code == -32700
    assert "expat" not in e.value.message.lower()


@pytest.mark.parametrize(("body", "said"), [
    (b"", "the body holds no element"),
    (b"  <!-- nothing -->  ", "the body holds no element"),
    (b"<methodCall>", "the document ends before its elements are closed"),
    (b"<methodCall><methodName>ping</methodName>",
     "the document ends before its elements are closed"),
])
def test_a_cut_off_document_is_not_called_empty(body: bytes, said: str) -> None:
    """expat says "no element found" of both; a reviewer found both answered "empty"."""
    with pytest.raises(errors.ParseError) as e:
        parse_call(body)
    assert e.value.message.endswith(said)


@pytest.mark.parametrize("body", [
    b"<methodResponse><params><param><value><int>1</int></value></param></params></methodResponse>",
    b"<methodCall><params><param><value><int>1</int></value></param></params></methodCall>",
    b"<methodCall><methodName>x</methodName><params><param><value><int>abc</int></value>"
    b"</param></params></methodCall>",
    b"<foo/>",
    # found by the fuzz test: a <data> outside an <array>
    b"<methodCall><methodName>x</methodName><params><param><value><data>"
    b"</data></value></param></params></methodCall>",
])
def test_not_a_method_call_is_an_invalid_request(body: bytes) -> None:
    with pytest.raises(errors.InvalidRequest) as e:
        parse_call(body)
    assert e.value.code == -32600


def test_nesting_beyond_the_cap_is_invalid_params() -> None:
    deep = "<value><array><data>" * 40 + "</data></array></value>" * 40
    body = (f"<methodCall><methodName>x</methodName><params><param>{deep}"
            "</param></params></methodCall>").encode()
    with pytest.raises(errors.InvalidParams) as e:
        parse_call(body)
    assert e.value.code == -32602


def test_response_omits_none_and_keeps_every_value_readable() -> None:
    body = dump_response({"a": None, "b": [1, None, 2], "c": [1, 2], "big": 2**40,
                          "ctl": "x\x00y\x1bz", "ok": True, "f": 1.5})
    (result,), _ = xmlrpc.client.loads(body)
    # An array is never shortened: one holding a null is left out whole (a
    # run's conf_json has it exactly), so no element ever moves.
    assert result == {"c": [1, 2], "big": str(2**40), "ctl": "xyz", "ok": True, "f": 1.5}
    assert b"<nil/>" not in body and b"<i8>" not in body


def test_printable_text_never_holds_what_xml_forbids() -> None:
    # The response writer passes printable text through untouched and cleans
    # only the rest: that is safe only if no printable code point is one XML
    # 1.0 forbids.  Every code point is checked.
    from txairflowrpc.core.xmlchars import NOT_IN_XML

    printable_forbidden = [hex(cp) for cp in range(0x110000)
                           if chr(cp).isprintable() and NOT_IN_XML.match(chr(cp))]
    assert printable_forbidden == []
    body = dump_response({"k\x01ey": "tab\tnew\nline\x02 \u2028 ok"})
    assert xmlrpc.client.loads(body)[0] == ({"key": "tab\tnew\nline \u2028 ok"},)


def test_the_nil_and_i8_extensions_carry_nulls_and_big_integers() -> None:
    value = {"a": [1, None, 2], "x": None, "big": 12345678901, "small": 5}
    body = dump_response(value, frozenset({"nil", "i8"}))
    assert xmlrpc.client.loads(body)[0] == (value,)
    assert b"<i8>12345678901</i8>" in body and b"<nil/>" in body
    only_nil = dump_response(value, frozenset({"nil"}))
    assert xmlrpc.client.loads(only_nil)[0] == ({**value, "big": "12345678901"},)


def test_extensions_are_read_from_the_header() -> None:
    from txairflowrpc.gate.wire import extensions_of

    assert extensions_of(b"nil, I8 ,bogus") == frozenset({"nil", "i8"})
    assert extensions_of(None) == frozenset()


def test_a_struct_member_without_a_name_is_left_out() -> None:
    """
    Found by review: Go's kolo reads no response holding ``<name></name>``, and
    its client fails every call after it: one conf member named "" made a run
    unreadable to Go readers.  A run's conf_json still has it.
    """
    body = dump_response({"run": {"conf": {"": "x", "\x01": "y", "ok": 1}}})
    assert b"<name></name>" not in body
    assert xmlrpc.client.loads(body)[0] == ({"run": {"conf": {"ok": 1}}},)


def test_xmlrpc_c_gets_no_character_beyond_the_basic_multilingual_plane() -> None:
    """
    Found by review: xmlrpc-c refuses a whole response holding one ("-510 ...
    not in the Basic Multilingual Plane"), written as a reference too: a run
    whose conf held an emoji was unreadable to it.  It gets U+FFFD instead;
    other clients get the character.
    """
    from txairflowrpc.gate.wire import extensions_of

    assert extensions_of(None, b"Xmlrpc-c/1.33.14 Curl/7.88.1") == frozenset({"bmp"})
    assert extensions_of(b"nil", b"read/1.0 Xmlrpc-c/1.33.14 Curl/7.88.1") == frozenset(
        {"nil", "bmp"})
    assert extensions_of(None, b"Python-xmlrpc/3.11") == frozenset()
    assert extensions_of(b"bmp", None) == frozenset({"bmp"})  # any caller may ask
    value = {"msg \U0001F680": "done \U0001F680\U0001F600 \u00e9\uffff"}
    bmp = dump_response(value, frozenset({"bmp"}))
    assert xmlrpc.client.loads(bmp)[0] == ({"msg \ufffd": "done \ufffd\ufffd \u00e9"},)
    assert xmlrpc.client.loads(dump_response(value))[0] == (
        {"msg \U0001F680": "done \U0001F680\U0001F600 \u00e9"},)
    with pytest.raises(xmlrpc.client.Fault) as e:
        xmlrpc.client.loads(dump_fault(xmlrpc.client.Fault(-32601, "no \U0001F680"),
                                       frozenset({"bmp"})))
    assert e.value.faultString == "no \ufffd"


def test_fault_text_is_made_safe_too() -> None:
    body = dump_fault(xmlrpc.client.Fault(404, "not found: \x07x"))
    with pytest.raises(xmlrpc.client.Fault) as e:
        xmlrpc.client.loads(body)
    assert (e.value.faultCode, e.value.faultString) == (404, "not found: x")


def test_too_many_values_and_too_long_strings_are_invalid_params() -> None:
    many = call("list_dags", [1] * 10001)
    with pytest.raises(errors.InvalidParams, match="more than 10000 values"):
        parse_call(many)
    long = call("get_dag", "x" * (256 * 1024 + 1))
    with pytest.raises(errors.InvalidParams, match="longer than"):
        parse_call(long)
    assert parse_call(call("get_dag", "x" * (256 * 1024)))[1][0] == "x" * (256 * 1024)


# -- how stock clients send "nothing" (interop) --------------------------------

HEAD = b"<?xml version='1.0'?><methodCall><methodName>trigger_dag</methodName><params>"
TAIL = b"</params></methodCall>"
RUN_ID_OPTIONS = (b"<param><value><struct><member><name>dag_run_id</name>"
                  b"<value><string>x</string></value></member></struct></value></param>")
DAG = b"<param><value><string>acc_echo</string></value></param>"


def test_an_empty_param_is_an_omitted_value_in_its_own_position() -> None:
    """Go's kolo/xmlrpc sends nil as a <param> with no <value>."""
    for empty in (b"<param></param>", b"<param/>", b"<param>\n  </param>"):
        method, params = parse_call(HEAD + DAG + empty + RUN_ID_OPTIONS + TAIL)
        assert params == ("acc_echo", None, {"dag_run_id": "x"})


def test_nil_in_the_middle_keeps_its_position() -> None:
    """Node's null and Python's None (allow_none) send <nil/>; Java's ex:nil too."""
    for nil in (b"<nil/>", b"<ex:nil/>"):
        body = HEAD + DAG + b"<param><value>" + nil + b"</value></param>" + RUN_ID_OPTIONS + TAIL
        assert parse_call(body)[1] == ("acc_echo", None, {"dag_run_id": "x"})


@pytest.mark.parametrize("body,why", [
    (HEAD + b"<param><value><string>a</string></value><value><int>1</int></value></param>" + TAIL,
     "more than one <value>"),
    (HEAD + b"<param><value><string>a</string><int>1</int></value></param>" + TAIL,
     "more than one value"),
    (HEAD + b"<param><value><struct><member><name>a</name><value><int>5</int></value>"
     b"<value><int>6</int></value></member></struct></value></param>" + TAIL, "more than one"),
    (HEAD + b"<param><value><struct><member><name>a</name></member>"
     b"</struct></value></param>" + TAIL, "needs a <name> and a <value>"),
    # The stdlib reads these as {"v": "k"} and {5: "k"}: the value's text as the name.
    (HEAD + b"<param><value><struct><member><value>v</value><name>k</name></member>"
     b"</struct></value></param>" + TAIL, "<member> needs its <name> before its <value>"),
    (HEAD + b"<param><value><struct><member><value><int>5</int></value></member>"
     b"</struct></value></param>" + TAIL, "<member> needs its <name> before its <value>"),
    (b"<methodCall><params/><methodName>ping</methodName></methodCall>",
     "<methodCall> needs its <methodName> before its <params>"),
    # Only XML's whitespace is markup: a no-break space is text.
    (HEAD + "<param>\u00a0<value><int>1</int></value></param>".encode() + TAIL,
     "text is not allowed in <param>"),
    (HEAD + b"<param><value><array><data><array/></data></array></value></param>" + TAIL,
     "<array> is not allowed in <data>"),
    (HEAD + b"<param><value><struct><value><int>5</int></value></struct></value></param>" + TAIL,
     "<value> is not allowed in <struct>"),
    (HEAD + b"<param>junk<value><int>1</int></value></param>" + TAIL, "text is not allowed"),
    (HEAD + b"<param><value>junk<int>1</int></value></param>" + TAIL, "mixes text"),
    (HEAD + b"<param><value><struct><member><name>a</name><value>1</value></member>"
     b"<member><name>a</name><value>2</value></member></struct></value></param>" + TAIL,
     "names member 'a' twice"),
    (HEAD + b"<param><value><array/></value></param>" + TAIL, "needs its <data>"),
    (b"<methodCall><methodName>x</methodName><methodName>y</methodName></methodCall>",
     "more than one <methodName>"),
    (b"<methodResponse><params/></methodResponse>", "<methodResponse> is not allowed"),
])
def test_what_the_stdlib_would_tolerate_is_refused(body: bytes, why: str) -> None:
    with pytest.raises(errors.InvalidRequest) as e:
        parse_call(body)
    assert e.value.code == -32600 and why in e.value.message


def test_every_element_counts_against_the_cap() -> None:
    """Elements that hold no <value> (empty params here) are counted too."""
    from txairflowrpc.gate.wire import MAX_ELEMENTS

    body = HEAD + b"<param/>" * (MAX_ELEMENTS + 1) + TAIL
    with pytest.raises(errors.InvalidParams) as e:
        parse_call(body)
    assert f"more than {MAX_ELEMENTS} elements" in e.value.message


def test_bare_containers_in_data_are_refused_at_the_first() -> None:
    """<data> followed by 131,000 <array/> cost 0.78 s of CPU; now the first one is refused."""
    body = (HEAD + b"<param><value><array><data>" + b"<array/>" * 131_000
            + b"</data></array></value></param>" + TAIL)
    assert len(body) < 1024 * 1024
    seen = []
    from txairflowrpc.gate import wire

    original = wire._CallReader.start

    def counting(self: object, tag: str, attrs: dict[str, str]) -> None:
        seen.append(tag)
        original(self, tag, attrs)  # type: ignore[arg-type]

    wire._CallReader.start = counting  # type: ignore[method-assign]
    try:
        with pytest.raises(errors.InvalidRequest, match="<array> is not allowed in <data>"):
            parse_call(body)
    finally:
        wire._CallReader.start = original  # type: ignore[method-assign]
    assert len(seen) < 10  # stopped at the first bare container, not after 131,000


@pytest.mark.parametrize("kind,text", [
    ("int", "5_0"), ("int", "\u0665"), ("i4", "\u0661\u0662"), ("int", "0x10"), ("int", "1e3"),
    ("i8", "5.0"), ("double", "1_0.5"), ("double", "\u0661.5"), ("double", "0x1p3"),
    ("double", "1e"), ("double", "."),
])
def test_numbers_only_as_xml_rpc_writes_them(kind: str, text: str) -> None:
    """
    Found by review: int() and float() took ``5_0`` as 50 and Arabic-Indic
    digits: text a filter in front of the gateway would read otherwise.
    """
    body = (HEAD + f"<param><value><{kind}>{text}</{kind}></value></param>".encode()
            + TAIL)
    with pytest.raises(errors.InvalidRequest, match="does not match its type"):
        parse_call(body)


@pytest.mark.parametrize("kind,text,value", [
    ("int", " +5 ", 5), ("i4", "-0012", -12), ("i8", "9223372036854775807", 2**63 - 1),
    ("double", "1e+300", 1e300), ("double", "-.5", -0.5), ("double", "3.", 3.0),
    ("double", "0.000001", 1e-6), ("double", "5", 5.0),
])
def test_numbers_as_clients_write_them_are_read(kind: str, text: str, value: object) -> None:
    body = (HEAD + f"<param><value><{kind}>{text}</{kind}></value></param>".encode()
            + TAIL)
    assert parse_call(body)[1] == (value,)


@pytest.mark.parametrize("declared", ["punycode", "utf-7", "idna", "rot13", "cp500"])
@pytest.mark.parametrize("codec", ["utf-16-le", "utf-16-be"])
def test_utf16_without_a_mark_cannot_name_an_encoding_beyond_the_list(
    declared: str, codec: str,
) -> None:
    """
    Found by review: expat detected UTF-16 without a byte-order mark by itself,
    then had Python's codecs decode with whatever its declaration named (the
    call came out as -32600, its text read as punycode).  Such a body is read
    as UTF-16 here, what it declares must be on the list as for any body, and
    expat is told it is UTF-8 from then on.
    """
    call = ("<?xml version='1.0' encoding='{}'?><methodCall><methodName>ping"
            "</methodName><params/></methodCall>")
    marked = codecs.BOM_UTF16_LE if codec == "utf-16-le" else codecs.BOM_UTF16_BE
    for charset in (None, "utf-16"):
        for mark in (b"", marked):
            with pytest.raises(errors.UnsupportedEncoding):
                parse_call(mark + call.format(declared).encode(codec), charset=charset)
            assert parse_call(mark + call.format("UTF-16").encode(codec),
                              charset=charset) == ("ping", ())


def test_a_double_must_be_finite() -> None:
    for text in (b"nan", b"inf", b"-Infinity"):
        body = HEAD + b"<param><value><double>" + text + b"</double></value></param>" + TAIL
        with pytest.raises(errors.InvalidParams, match="finite"):
            parse_call(body)


def test_an_int_must_fit_in_64_bits() -> None:
    """Found by review: a 400-digit int reached a conf rule's float arithmetic."""
    def int_call(tag: bytes, number: int) -> bytes:
        return HEAD + b"<param><value><%s>%d</%s></value></param>" % (tag, number, tag) + TAIL

    for tag in (b"int", b"i4", b"i8", b"ex:i8", b"ex:biginteger"):
        for fits in (2**63 - 1, -(2**63)):
            assert parse_call(int_call(tag, fits))[1] == (fits,)
        for too_wide in (2**63, -(2**63) - 1, 10**400):
            with pytest.raises(errors.InvalidParams, match="64 bits"):
                parse_call(int_call(tag, too_wide))


def test_the_content_type_charset_is_honoured_without_a_declaration() -> None:
    latin1 = ("<methodCall><methodName>get_dag</methodName><params><param><value>"
              "<string>caf\u00e9</string></value></param></params></methodCall>").encode("latin-1")
    assert parse_call(latin1, charset="ISO-8859-1") == ("get_dag", ("caf\u00e9",))
    assert parse_call(latin1, charset='"iso-8859-1"') == ("get_dag", ("caf\u00e9",))
    with pytest.raises(errors.ParseError):
        parse_call(latin1)  # no charset: UTF-8, and this is not UTF-8
    cp1252 = latin1.replace(b"\xe9", b"\x80")  # the euro sign in windows-1252
    assert parse_call(cp1252, charset="windows-1252")[1] == ("caf\u20ac",)


def test_a_declaration_wins_over_the_charset() -> None:
    body = ('<?xml version="1.0" encoding="UTF-8"?><methodCall><methodName>get_dag'
            '</methodName><params><param><value>\u00e9</value></param></params>'
            '</methodCall>').encode()
    assert parse_call(body, charset="ISO-8859-1")[1] == ("\u00e9",)


def test_an_unknown_charset_is_minus_32701() -> None:
    with pytest.raises(errors.UnsupportedEncoding) as e:
        parse_call(call("ping"), charset="klingon-8")
    assert e.value.code == -32701


def test_reading_a_request_has_a_cpu_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past PARSE_CPU_SECONDS of CPU (a clock that runs fast here), the request is refused."""
    from txairflowrpc.gate import wire

    ticks = iter(range(0, 10_000))
    monkeypatch.setattr(wire.time, "thread_time", lambda: next(ticks) * 0.2)
    body = call("list_dags", list(range(3000)))  # 6,000 elements: five looks at the clock
    with pytest.raises(errors.InvalidParams, match="costs too much to read"):
        parse_call(body)
    monkeypatch.undo()
    assert parse_call(body)[0] == "list_dags"


@pytest.mark.parametrize("charset", [
    "punycode",  # decodes in more than linear time: 6 s of CPU for 256 KB
    "rot13", "zlib", "base64", "undefined", "idna", "utf-7", "shift_jis", "klingon", "a\x00b",
])
def test_only_text_encodings_clients_use_are_read_from_the_charset(charset: str) -> None:
    with pytest.raises(errors.UnsupportedEncoding) as e:
        parse_call(call("ping") * 1000, charset=charset)
    assert e.value.code == -32701


@pytest.mark.parametrize("declared", ["klingon", "rot13", "zlib", "punycode", "utf-7", "shift_jis",
                                      "utf-32", "idna"])
def test_only_text_encodings_clients_use_are_read_from_the_declaration(declared: str) -> None:
    body = f'<?xml version="1.0" encoding="{declared}"?>'.encode() + bare("ping")
    with pytest.raises(errors.UnsupportedEncoding) as e:
        parse_call(body)
    assert e.value.code == -32701


@pytest.mark.parametrize("declared", ["UTF-8", "us-ascii", "ISO-8859-1", "iso-8859-15", "windows-1252",
                                      "latin1"])
def test_the_usual_declared_encodings_are_read(declared: str) -> None:
    body = f'<?xml version="1.0" encoding="{declared}"?>'.encode() + bare("ping")
    assert parse_call(body) == ("ping", ())


def test_a_utf8_byte_order_mark_wins_over_the_charset() -> None:
    body = b"\xef\xbb\xbf" + call("get_dag", "caf\u00e9")
    assert parse_call(body, charset="ISO-8859-1")[1] == ("caf\u00e9",)


def test_a_processing_instruction_is_not_a_declaration() -> None:
    """``<?xml-stylesheet ... encoding=...?>`` does not say the body's encoding."""
    body = (b'<?xml-stylesheet href="a.xsl" encoding="utf-8"?>'
            + bare("get_dag", "caf\u00e9").decode().encode("latin-1"))
    assert parse_call(body, charset="ISO-8859-1")[1] == ("caf\u00e9",)


def test_whitespace_in_a_value_counts_against_its_length() -> None:
    from txairflowrpc.gate.wire import MAX_TEXT
    body = HEAD + b"<param><value><string>" + b" " * (MAX_TEXT + 1) + b"</string></value></param>" + TAIL
    with pytest.raises(errors.InvalidParams) as e:
        parse_call(body)
    assert "longer than" in e.value.message
    spaces = HEAD + b"<param><value><string>" + b" " * MAX_TEXT + b"</string></value></param>" + TAIL
    assert parse_call(spaces)[1][-1] == " " * MAX_TEXT


def test_a_result_nested_deeper_than_callers_parse_is_sent_as_json_text() -> None:
    import json

    from txairflowrpc.gate.wire import MAX_RESULT_DEPTH
    deep = json.loads("[" * 900 + "1" + "]" * 900)  # Airflow holds a conf this deep
    (result,), _ = xmlrpc.client.loads(dump_response({"conf": deep, "state": "success"}))
    assert result["state"] == "success"
    inner, levels = result["conf"], 1
    while isinstance(inner, list):
        inner, levels = inner[0], levels + 1
    assert levels == MAX_RESULT_DEPTH
    assert json.loads(inner) == json.loads("[" * (900 - MAX_RESULT_DEPTH + 1) + "1" + "]" * (900 - MAX_RESULT_DEPTH + 1))
    shallow = {"a": [{"b": [1, 2]}]}
    assert xmlrpc.client.loads(dump_response(shallow))[0][0] == shallow
    # Its JSON text is ASCII: exact for a caller that gets no astral character
    # (found by review: xmlrpc-c got U+FFFD inside it, where conf_json is exact).
    emoji = json.loads("[" * 40 + '"\\ud83d\\ude80"' + "]" * 40)
    (result,), _ = xmlrpc.client.loads(dump_response({"conf": emoji}, frozenset({"bmp"})))
    inner = result["conf"]
    while isinstance(inner, list):
        inner = inner[0]
    assert json.loads(inner) == json.loads("[" * 9 + '"\\ud83d\\ude80"' + "]" * 9)


def test_a_carriage_return_arrives_as_itself() -> None:
    body = dump_response({"note": "line one\r\nline two\r"})
    assert b"\r" not in body
    assert xmlrpc.client.loads(body)[0][0]["note"] == "line one\r\nline two\r"


class _StdlibMarshaller(xmlrpc.client.Marshaller):
    """The stdlib's writer, with the gateway's ``<i8>`` and ``&#13;``: what
    `dump_response` wrote before it had its own writer, kept as its oracle."""

    dispatch = dict(xmlrpc.client.Marshaller.dispatch)

    def dump_i8(self, value: int, write: object) -> None:
        write("<value><i8>")  # type: ignore[operator]
        write(str(int(value)))  # type: ignore[operator]
        write("</i8></value>\n")  # type: ignore[operator]

    def dump_unicode(self, value: str, write: object, escape: object = xmlrpc.client.escape) -> None:
        write("<value><string>")  # type: ignore[operator]
        write(xmlrpc.client.escape(value).replace("\r", "&#13;"))  # type: ignore[operator]
        write("</string></value>\n")  # type: ignore[operator]

    dispatch[str] = dump_unicode


def _stdlib_response(result: object, extensions: frozenset[str]) -> bytes:
    from txairflowrpc.gate.wire import _I8, to_xmlrpc

    marshaller = _StdlibMarshaller("utf-8", allow_none="nil" in extensions)
    marshaller.dispatch[_I8] = _StdlibMarshaller.dump_i8
    body = marshaller.dumps((to_xmlrpc(result, extensions),))
    return ("<?xml version='1.0'?>\n<methodResponse>\n" + body + "</methodResponse>\n").encode()


@pytest.mark.parametrize("extensions", [frozenset(), frozenset({"nil"}), frozenset({"i8"}),
                                        frozenset({"nil", "i8"})])
def test_the_response_writer_writes_what_the_stdlib_marshaller_writes(
    extensions: frozenset[str],
) -> None:
    import json

    deep = json.loads("[" * 50 + '{"a": 1}' + "]" * 50)
    results = [
        "plain", "", "a & b < c > d \r\n \t é \u2028 \U0001f600 x\x00y", 0, -1, 2**31 - 1,
        -(2**31), 2**31, -(2**31) - 1, 2**63, -(2**63), 2**70, True, False, 1.5, -0.0, 1e300,
        float("nan"), float("inf"), None, [], {}, [1, "a", [2, [3]]], [1, None],
        {"k&<>\r": "v", "n": None, "l": [None], "e": {}, "deep": deep, "big": 2**40},
        {"k\x01ey": "\x02", "key": "second"},
        xmlrpc.client.DateTime("20261128T06:00:00"), {"when": xmlrpc.client.DateTime("20261128T06:00:00")},
        ("a", 1, (2.5,)), {"dag_run_id": "r", "conf": {"day": "2026-11-26", "attempt": 1}},
        object(), {1: "int key", "k": (None,), "m": [{"x": [1, [None]]}], "ok": [[]]},
        {"a\x00": 1, "a": 2, "b": [1, {"c": None}]}, [{"a": None}, ({},)],
        {"": 1, "x": {"": [1], "\x01": 2, "y": 3}}, {"\x02": "only a key to clean away"},
        json.loads("{" + '"a": {' * 40 + "}" * 41), [[None, 1], 2],
        [_Word.X, None], {"l": [_Number.ONE, None]}, [[1, [2, [None]]], 3],
    ]
    for result in results:
        try:
            expected: bytes | type[Exception] = _stdlib_response(result, extensions)
        except (TypeError, ValueError):  # a value neither can write (an enum in an array)
            expected = Exception
        try:
            written: bytes | type[Exception] = dump_response(result, extensions)
        except (TypeError, ValueError):
            written = Exception
        assert written == expected, result


class _Word(enum.StrEnum):
    X = "x"


class _Number(enum.IntEnum):
    ONE = 1


def test_a_key_to_clean_costs_its_struct_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    # A conf whose every level ends with a key that is not printable: each
    # level was written, thrown away and written again the long way, the
    # whole subtree once per level above it (found by review: 9x the work).
    from txairflowrpc.gate import wire

    conf: dict[str, object] = {"leaf": "x" * 100}
    nodes = 1
    for _ in range(16):
        conf = {"c": conf, "more": list(range(20)), "\t": 0}
        nodes += 23
    calls = 0
    render = wire._render

    def counted(*args: object) -> object:
        nonlocal calls
        calls += 1
        return render(*args)

    expected = _stdlib_response({"conf": conf}, frozenset())
    monkeypatch.setattr(wire, "_render", counted)
    assert dump_response({"conf": conf}) == expected
    assert calls <= nodes + 1  # each value rendered once (written again at each of 16 levels: 3,160)
