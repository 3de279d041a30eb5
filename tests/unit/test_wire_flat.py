"""
The plain-call reader (`_flat_call`) against the full one (expat and
`_CallReader`): whatever it reads, the full reader reads the same, values
and their types; whatever it does not read, it leaves to the full reader.
"""

from __future__ import annotations

import xmlrpc.client
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from txairflowrpc.client.errors import UsageError
from txairflowrpc.client.transport import request_body
from txairflowrpc.core import errors
from txairflowrpc.gate.wire import _as_utf8, _flat_call, _read_call, parse_call

from .test_fuzz import mutated

plain_text = st.text(st.characters(blacklist_categories=("Cs",),
                                   blacklist_characters="\r&<>\x00"), max_size=30)
scalars = st.one_of(plain_text, st.text(max_size=20), st.integers(-2**31, 2**31 - 1),
                    st.booleans(), st.floats(allow_nan=False, allow_infinity=False))
values = st.one_of(scalars, st.lists(scalars, max_size=3),
                   st.dictionaries(st.text(max_size=5), scalars, max_size=3))
names = st.sampled_from(["get_dag_run", "ping", "system.listMethods", "a_b.c", "x", "ünïcode",
                         "with space", ""])


def full(body: bytes, charset: str | None = None) -> Any:
    """What the full reader makes of ``body``: the call, or the error's type and code."""
    try:
        utf8, transcoded = _as_utf8(body, charset)
        return _read_call(utf8, 64, "utf-8" if transcoded else None)
    except errors.GatewayError as e:
        return (type(e), e.code)


def typed(value: Any) -> Any:
    """``value`` with each leaf's type beside it: True and 1 are not the same param."""
    if isinstance(value, (list, tuple)):
        return [typed(v) for v in value]
    return (type(value).__name__, value)


def agrees(body: bytes, charset: str | None = None) -> bool:
    """True if the plain reader read ``body``; fails if it read it otherwise than the full one."""
    try:
        flat = _flat_call(_as_utf8(body, charset)[0])
    except errors.GatewayError:
        return False  # refused before either reader (an encoding): the same for both
    if flat is None:
        return False
    assert full(body, charset) == flat
    assert typed(flat[1]) == typed(full(body, charset)[1])
    assert parse_call(body, charset=charset) == flat
    return True


@given(names, st.lists(values, max_size=4), st.booleans())
@settings(max_examples=400, deadline=None)
def test_generated_calls_read_the_same(method: str, params: list[Any], one_line: bool) -> None:
    bodies = [xmlrpc.client.dumps(tuple(params), method).encode()]
    try:
        bodies.append(request_body(method, tuple(params)))
    except UsageError:  # a character XML cannot carry: the client refuses it
        pass
    for body in bodies:
        if one_line:
            body = body.replace(b"\n", b"")
        agrees(body)


@given(mutated())
@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_mutated_calls_read_the_same_or_go_the_long_way(body: bytes) -> None:
    agrees(body)


@given(names, st.lists(scalars, max_size=4), st.sampled_from(["utf-8", "iso-8859-1", "cp1252"]))
@settings(max_examples=200, deadline=None)
def test_a_charset_read_the_same(method: str, params: list[Any], charset: str) -> None:
    body = xmlrpc.client.dumps(tuple(params), method or "m").split("?>", 1)[1]
    try:
        encoded = body.encode(charset)
    except UnicodeEncodeError:
        return
    agrees(encoded, charset)


@pytest.mark.parametrize("params", [
    (), ("bench_dag", "bench-run-1"), ("etl", 5, True, False, -7, 2.5, ""), ("  spaced  ",),
    ("é ü \u2028 \U0001f600 quote\" apos'",),
])
def test_the_plain_calls_of_real_clients_are_read_plainly(params: tuple[Any, ...]) -> None:
    stdlib = xmlrpc.client.dumps(params, "get_dag_run").encode()
    for body in (stdlib, stdlib.replace(b"\n", b""), request_body("get_dag_run", params),
                 stdlib.replace(b"<?xml version='1.0'?>", b'<?xml version="1.0" encoding="UTF-8"?>'),
                 stdlib.split(b"?>", 1)[1]):
        assert agrees(body), body


PARAM = "<param><value>{}</value></param>"


@pytest.mark.parametrize("value", [
    "<string>a\r\nb</string>", "<string>a&amp;b</string>", "<string>a]]>b</string>",
    "<string><![CDATA[x]]></string>", "<string>a</string>b", "b<string>a</string>",
    "<string>a<!-- c --></string>", "<int>99999999999999999999</int>", "<int>x</int>",
    "<double>nan</double>", "<boolean>2</boolean>", "<nil/>", "<i4 a='1'>5</i4>",
    "<ex:i8>5</ex:i8>", "<string>a</int>", "<struct></struct>", "<array><data/></array>",
    "<string>\x0c</string>", "<string>\ufffe</string>", "<base64>eA==</base64>",
    "<dateTime.iso8601>20261128T06:00:00</dateTime.iso8601>", "<value>x</value>",
])
def test_anything_else_goes_the_long_way(value: str) -> None:
    body = ("<?xml version='1.0'?><methodCall><methodName>m</methodName><params>"
            + PARAM.format(value) + "</params></methodCall>").encode("utf-8")
    assert not agrees(body)
    for other in (
        body.replace(b"<params>", b"<params><param></param>"),
        b"\xef\xbb\xbf" + body.replace(b"<nil/>", b"x"),
        body.replace(b"version='1.0'", b"version='1.0' encoding='iso-8859-1'"),
        body.replace(b"<methodCall>", b"<!DOCTYPE methodCall><methodCall>"),
        body.replace(b"<methodCall>", b"<methodCall x='1'>"),
    ):
        assert not agrees(other)


def test_a_shallow_depth_cap_is_kept() -> None:
    body = xmlrpc.client.dumps(("a",), "m").encode()
    with pytest.raises(errors.InvalidParams):
        parse_call(body, max_depth=4)
    assert parse_call(body, max_depth=5) == ("m", ("a",))
