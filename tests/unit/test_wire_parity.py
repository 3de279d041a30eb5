"""
`parse_call` reads every valid XML-RPC call exactly as the standard library
does: generated calls, and hand-written ones in the spellings real clients
use (untyped values, whitespace, ``<nil/>``, ``<i8>``, ``ex:`` prefixes,
base64, dates).
"""

from __future__ import annotations

import math
import xmlrpc.client
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from txairflowrpc.gate.wire import parse_call

TEXT = st.text(st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\ufffe\uffff")
               | st.sampled_from("\t\n "), max_size=20)
SCALARS = (TEXT | st.integers(-(2**31), 2**31 - 1) | st.booleans()
           | st.floats(allow_nan=False, allow_infinity=False))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(TEXT, inner, max_size=4), max_leaves=12)
NAMES = st.from_regex(r"\A[a-z][a-z_.]{0,20}\Z")


def stdlib(body: bytes) -> tuple[str, tuple[Any, ...]]:
    params, method = xmlrpc.client.loads(body)
    return method, params


@settings(max_examples=300, deadline=None)
@given(NAMES, st.lists(VALUES, max_size=4))
def test_generated_calls_read_as_the_stdlib_reads_them(method: str, params: list[Any]) -> None:
    body = xmlrpc.client.dumps(tuple(params), method).encode()
    assert parse_call(body) == stdlib(body)


def wrap(*values: str, method: str = "m") -> bytes:
    params = "".join(f"<param>{v}</param>" for v in values)
    return f"<methodCall><methodName>{method}</methodName><params>{params}</params></methodCall>".encode()


@pytest.mark.parametrize("value", [
    "<value>untyped</value>", "<value>  spaced  </value>", "<value></value>", "<value/>",
    "<value><string></string></value>", "<value><string/></value>",
    "<value> <string>x</string> </value>", "<value><int> 42 </int></value>",
    "<value><i4>-7</i4></value>", "<value><i8>9007199254740993</i8></value>",
    "<value><ex:i8>12</ex:i8></value>", "<value><ex:nil/></value>", "<value><nil/></value>",
    "<value><boolean>1</boolean></value>", "<value><boolean>0</boolean></value>",
    "<value><double>-1.5e3</double></value>", "<value><double> 2 </double></value>",
    "<value><base64>aGVsbG8=</base64></value>", "<value><base64>\naGVs\nbG8=\n</base64></value>",
    "<value><dateTime.iso8601>20260127T10:11:12</dateTime.iso8601></value>",
    "<value><array><data></data></array></value>", "<value><array><data/></array></value>",
    "<value><array><data><value>a</value><value><int>1</int></value></data></array></value>",
    "<value><struct></struct></value>",
    "<value><struct><member><name>k</name><value>v</value></member>"
    "<member><name> n </name><value><struct><member><name>x</name><value><array><data>"
    "<value><nil/></value></data></array></value></member></struct></value></member>"
    "</struct></value>",
    "<value><struct>\n  <member>\n    <name>k</name>\n    <value><i4>1</i4></value>\n"
    "  </member>\n</struct></value>",
    "<value>caf\u00e9 &amp; &lt;tea&gt; &#233;</value>",
])
def test_hand_written_values_read_as_the_stdlib_reads_them(value: str) -> None:
    body = wrap(value, "<value><string>next</string></value>")
    ours, theirs = parse_call(body), stdlib(body)
    assert ours == theirs
    assert [type(v) for v in ours[1]] == [type(v) for v in theirs[1]]


def test_a_param_without_a_value_is_none_in_its_place() -> None:
    # Go's kolo/xmlrpc sends a nil so; the stdlib would drop it and shift the rest.
    assert parse_call(wrap("", "<value>b</value>")) == ("m", (None, "b"))


def test_whitespace_between_elements_is_ignored() -> None:
    body = (b"<?xml version='1.0'?>\n<methodCall>\n <methodName>m</methodName>\n <params>\n"
            b"  <param>\n   <value><int>1</int></value>\n  </param>\n </params>\n</methodCall>\n")
    assert parse_call(body) == stdlib(body) == ("m", (1,))


def test_finite_doubles_only() -> None:
    assert math.isinf(stdlib(wrap("<value><double>inf</double></value>"))[1][0])
    with pytest.raises(Exception):
        parse_call(wrap("<value><double>inf</double></value>"))
