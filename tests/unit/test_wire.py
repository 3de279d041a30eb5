"""Parsing requests safely and writing responses every client can read."""

from __future__ import annotations

import xmlrpc.client

import pytest

from txairflowrpc.core import errors
from txairflowrpc.gate.wire import dump_fault, dump_response, parse_call


def call(method: str, *params: object) -> bytes:
    return xmlrpc.client.dumps(params, method).encode()


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
    b"", b"<methodCall>", b"not xml at all", b"<a></b>",
    b"<methodCall><methodName>ping</methodName><params><param><value><string>\xff\xfe"
    b"</string></value></param></params></methodCall>",
])
def test_malformed_xml_is_a_parse_error_without_expat_internals(body: bytes) -> None:
    with pytest.raises(errors.ParseError) as e:
        parse_call(body)
    assert e.value.code == -32700
    assert "expat" not in e.value.message.lower()


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
    body = dump_response({"a": None, "b": [1, None, 2], "big": 2**40, "ctl": "x\x00y\x1bz",
                          "ok": True, "f": 1.5})
    (result,), _ = xmlrpc.client.loads(body)
    assert result == {"b": [1, 2], "big": str(2**40), "ctl": "xyz", "ok": True, "f": 1.5}
    assert b"<nil/>" not in body


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
