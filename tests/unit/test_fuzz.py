"""
Property: whatever bytes arrive, the gateway answers with a well-formed
XML-RPC response or a clean HTTP error, never a 500 and never a hang.
"""

from __future__ import annotations

import xmlrpc.client
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .helpers import gateway

METHODS = ["ping", "whoami", "list_dags", "get_dag", "pause_dag", "trigger_dag", "get_dag_run",
           "list_dag_runs", "wait_dag_run", "set_dag_run_state", "list_task_instances",
           "clear_task_instances", "get_task_log", "create_backfill", "get_backfill",
           "list_backfills", "cancel_backfill", "system.multicall", "system.methodHelp",
           "system.methodSignature", "system.listMethods", "nope", "", "a.b.c", "_private"]

scalars = st.one_of(
    st.text(max_size=40), st.integers(-2**31, 2**31 - 1), st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False), st.binary(max_size=20).map(xmlrpc.client.Binary),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=10), inner, max_size=4)),
    max_leaves=12,
)
calls = st.tuples(st.sampled_from(METHODS), st.lists(values, max_size=4))


def request_bytes(method: str, params: list[Any]) -> bytes:
    return xmlrpc.client.dumps(tuple(params), method, allow_none=True).encode()


@st.composite
def mutated(draw: Any) -> bytes:
    body = bytearray(request_bytes(*draw(calls)))
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "splice"]))
        at = draw(st.integers(0, max(0, len(body) - 1)))
        if kind == "flip" and body:
            body[at] = draw(st.integers(0, 255))
        elif kind == "insert":
            body[at:at] = draw(st.sampled_from([
                b"<!DOCTYPE x>", b"&amp;", b"&x;", b"<value>", b"</value>", b"\xff\xfe",
                b"<nil/>", b"<i8>99999999999</i8>", b"<array><data>", b"]]>", b"\x00"]))
        elif kind == "delete" and body:
            del body[at:at + draw(st.integers(1, 20))]
        elif kind == "truncate":
            del body[at:]
        elif kind == "splice":
            body[at:at] = draw(st.binary(max_size=30))
    return bytes(body)


def check(gw: Any, body: bytes, content_type: str = "text/xml") -> None:
    d = gw.post(body, {"Content-Type": content_type})
    gw.advance(70)  # lets any wait or deadline play out
    response = d.result if hasattr(d, "result") else None
    assert response is not None, "no answer"
    content = response.content()
    gw.client.flush()
    data = content.result
    assert response.code != 500, data
    if response.code == 200:
        try:
            xmlrpc.client.loads(data)
        except xmlrpc.client.Fault as fault:
            assert isinstance(fault.faultCode, int) and fault.faultString
            assert "Traceback" not in fault.faultString
    else:
        assert response.code in (400, 401, 403, 404, 405, 413, 415), response.code


GW = gateway()


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(calls)
def test_generated_calls_get_a_well_formed_answer(call: tuple[str, list[Any]]) -> None:
    check(GW, request_bytes(*call))


@settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))
@given(mutated())
def test_mutated_requests_get_a_well_formed_answer_or_a_clean_error(body: bytes) -> None:
    check(GW, body)


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.binary(max_size=300), st.sampled_from(["text/xml", "text/plain", "application/xml"]))
def test_random_bytes(body: bytes, content_type: str) -> None:
    check(GW, body, content_type)
