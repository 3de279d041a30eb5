"""
The client's exit statuses, its retries, and the wait loop, on a fake clock
against an in-memory fake gateway (tests/unit/fake_gateway.py).
"""

from __future__ import annotations

import xmlrpc.client
from typing import Any

import pytest

from txairflowrpc.client import errors
from txairflowrpc.client.errors import (
    BadAnswer, FaultReply, HandshakeRefused, HTTPRefused, OutOfTime, Unreachable, UsageError,
    WaitTimedOut,
)
from txairflowrpc.client.retry import Backoff, call_with_retries
from txairflowrpc.client.waiting import LAST_LOOK, MIN_ROUND, Progress, elapsed_text, wait_for_run

from .fake_gateway import SCRIPTS, FakeGateway, InMemory


class FakeClock:
    """Time that moves only when slept on or moved by a test."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.slept.append(seconds)
        self.now += seconds


# -- exit statuses -----------------------------------------------------------

@pytest.mark.parametrize("error, status, transient", [
    (UsageError("x"), 2, False),
    (FaultReply("m", -32602, "invalid params"), 2, False),
    (FaultReply("m", -32601, "no such method"), 2, False),
    (FaultReply("m", 401, "unauthenticated"), 3, False),
    (FaultReply("m", 403, "forbidden"), 3, False),
    (FaultReply("m", 404, "not found"), 4, False),
    (FaultReply("m", "409", "conflict"), 4, False),  # a code sent as a string
    (FaultReply("m", 429, "rate limited"), 5, True),
    (FaultReply("m", 502, "Airflow error"), 5, False),
    (FaultReply("m", 503, "unavailable"), 5, True),
    (FaultReply("m", 504, "timeout"), 5, True),
    (FaultReply("m", 507, "audit"), 5, True),
    (FaultReply("m", -32603, "internal error"), 5, False),
    (FaultReply("m", -32700, "parse error"), 5, False),
    (FaultReply("m", "weird", "?"), 5, False),
    (HTTPRefused("m", 401, "Unauthorized"), 3, False),
    (HTTPRefused("m", 413, "Too Large"), 5, False),
    (HTTPRefused("m", 503, "Service Unavailable"), 5, True),
    (HandshakeRefused("m", "refused our certificate", ours_refused=True), 3, False),
    (HandshakeRefused("m", "not trusted", ours_refused=False), 2, False),
    (Unreachable("m", "refused"), 5, True),
    (BadAnswer("m", "garbage"), 5, False),
    (errors.RunFailed("d", "r", "failed"), 1, False),
    (WaitTimedOut("d", "r", "running", 60), 6, False),
])
def test_each_error_has_its_exit_status(error: errors.ClientError, status: int,
                                        transient: bool) -> None:
    assert (error.exit_status, error.transient) == (status, transient)
    assert error.message


def test_messages_name_the_fault_and_request_id() -> None:
    assert FaultReply("get_dag", 404, "not found: DAG 'x'", "abc").message == \
        "get_dag: fault 404: not found: DAG 'x' (request id abc)"
    assert HTTPRefused("ping", 401, "Unauthorized", "r1", "no token").message == \
        "ping: HTTP 401 Unauthorized (request id r1); no token"


# -- retries -----------------------------------------------------------------

def test_backoff_grows_to_its_cap_with_jitter() -> None:
    b = Backoff(first=1, factor=2, cap=10, jitter=0.25)
    assert [b.delay(n, lambda: 0.5) for n in (1, 2, 3, 4, 5)] == [1, 2, 4, 8, 10]
    assert b.delay(1, lambda: 0.0) == 0.75 and b.delay(1, lambda: 1.0) == 1.25


def test_transient_failures_are_retried_then_given_up() -> None:
    clock = FakeClock()
    failures = [Unreachable("m", "reset"), FaultReply("m", 503, "down")]
    heard: list[tuple[str, float]] = []

    def attempt() -> str:
        if failures:
            raise failures.pop(0)
        return "ok"

    got = call_with_retries(attempt, backoff=Backoff(), sleep=clock.sleep, clock=clock,
                            on_retry=lambda e, p: heard.append((e.message, p)),
                            rand=lambda: 0.5)
    assert got == "ok" and clock.slept == [1.0, 2.0]
    assert [m for m, _ in heard] == ["m: gateway unreachable: reset", "m: fault 503: down"]

    def always() -> str:
        raise Unreachable("m", "refused")

    with pytest.raises(Unreachable):
        call_with_retries(always, backoff=Backoff(attempts=4), sleep=clock.sleep, clock=clock,
                          rand=lambda: 0.5)
    assert clock.slept[2:] == [1.0, 2.0, 4.0]  # 4 tries, 3 pauses

    def forbidden() -> str:
        raise FaultReply("m", 403, "forbidden")

    before = len(clock.slept)
    with pytest.raises(FaultReply):
        call_with_retries(forbidden, backoff=Backoff(), sleep=clock.sleep, clock=clock)
    assert len(clock.slept) == before  # not retried


def test_a_pause_is_never_shorter_than_the_gateway_asked_for() -> None:
    """
    Found by review: a rate's "retry after 3.9 s" was met by tries at 1.2
    and 2.2 s, each refused and each one of the tries spent.
    """
    clock = FakeClock()
    failures: list[Exception] = [
        FaultReply("m", 429, "rate limited: rate_per_second for this principal; retry after 3.9 s"),
        HTTPRefused("m", 503, "Service Unavailable", retry_after=7.0),
        FaultReply("m", 429, "rate limited: burst; retry after 99999 s"),  # cut to the cap
        FaultReply("m", 503, "down; retry after 50 s"),  # only a 429's text is read
    ]

    def attempt() -> str:
        if failures:
            raise failures.pop(0)
        return "ok"

    assert call_with_retries(attempt, backoff=Backoff(), sleep=clock.sleep, clock=clock,
                             rand=lambda: 0.5) == "ok"
    assert clock.slept == [3.9, 7.0, errors.MAX_RETRY_AFTER, 8.0]
    assert errors.retry_after_header("12") == 12.0
    for value in (None, "", "Wed, 21 Oct 2026 07:28:00 GMT", "-1", "1.5", "\xb2", "\u0663"):
        assert errors.retry_after_header(value) is None, value


def test_no_pause_runs_past_the_deadline() -> None:
    """
    Found by review: the outage's own error (exit 5) was raised when the
    deadline came; it is a timeout (exit 6) that says what the last try met.
    """
    clock = FakeClock()

    def always() -> str:
        raise Unreachable("m", "refused")

    with pytest.raises(OutOfTime) as caught:
        call_with_retries(always, backoff=Backoff(attempts=100), sleep=clock.sleep,
                          clock=clock, deadline=clock() + 10, rand=lambda: 0.5)
    assert clock.slept == [1.0, 2.0, 4.0] and clock() < 1010
    assert caught.value.exit_status == 6 and isinstance(caught.value.cause, Unreachable)
    assert caught.value.message == ("m: gateway unreachable: refused; --timeout ran out before "
                                    "it could be tried again")


# -- the wait ----------------------------------------------------------------

def setup_run(dag: str, run_id: str = "r1") -> tuple[FakeGateway, InMemory, FakeClock]:
    gateway = FakeGateway()
    gateway.trigger_dag(dag, {}, {"dag_run_id": run_id})
    clock = FakeClock()
    # Each wait_dag_run holds for the seconds asked, unless the run finishes
    # meanwhile (then a second).
    def on_call(method: str, params: tuple[Any, ...]) -> None:
        if method == "wait_dag_run":
            states = SCRIPTS[params[0]]
            step = gateway.runs[(params[0], params[1])]["step"] + 1
            ends = states[min(step, len(states) - 1)] in ("success", "failed")
            clock.now += 1 if ends else params[2]
    gateway.on_call = on_call
    return gateway, InMemory(gateway), clock


def test_waits_over_several_calls_and_reports_only_changes() -> None:
    gateway, caller, clock = setup_run("example_fail")
    lines: list[str] = []
    run = wait_for_run(caller, "example_fail", "r1", 600, chunk=15, clock=clock,
                       sleep=clock.sleep,
                       progress=Progress(lines.append, what="run r1 of example_fail", clock=clock))
    assert (run["state"], run["finished"]) == ("failed", True)
    waits = gateway.calls_of("wait_dag_run")
    assert waits == [("example_fail", "r1", 15)] * 3
    # running, running, failed: a line for each change, none for the repeat.
    assert lines == ["run r1 of example_fail: running (15s)",
                     "run r1 of example_fail: failed after 31s"]
    # The socket timeout of each wait covers the wait and the gateway's deadline.
    assert all(t > 15 + 60 for t in caller.timeouts)


def test_a_heartbeat_while_nothing_changes() -> None:
    gateway, caller, clock = setup_run("slow")
    lines: list[str] = []
    with pytest.raises(WaitTimedOut) as caught:
        wait_for_run(caller, "slow", "r1", 200, chunk=15, clock=clock, sleep=clock.sleep,
                     progress=Progress(lines.append, what="run r1 of slow", clock=clock,
                                       heartbeat=60))
    assert lines[0] == "run r1 of slow: running (15s)"
    assert all("still running" in line for line in lines[1:])
    assert 2 <= len(lines) <= 4  # a line a minute, not one per call (14 calls)
    assert len(gateway.calls_of("wait_dag_run")) == 14
    assert (caught.value.state, caught.value.exit_status) == ("running", 6)
    assert caught.value.run["state"] == "running"


def test_the_last_wait_asks_only_for_what_is_left() -> None:
    gateway, caller, clock = setup_run("slow")
    with pytest.raises(WaitTimedOut):
        wait_for_run(caller, "slow", "r1", 40, chunk=15, clock=clock, sleep=clock.sleep,
                     progress=Progress(lambda _: None, what="run r1 of slow", clock=clock))
    # A second short of what is left, so that its answer comes before the
    # deadline caps the socket (found by review: the last look was always cut
    # by its own timeout and reported as an outage); no look is begun after.
    assert [w[2] for w in gateway.calls_of("wait_dag_run")] == [15, 15, 9]
    assert clock() == 1039


def test_a_gateway_that_answers_at_once_is_not_hammered() -> None:
    gateway, caller, clock = setup_run("slow")
    gateway.on_call = None  # answers unfinished at once: its cap is below what is asked
    with pytest.raises(WaitTimedOut):
        wait_for_run(caller, "slow", "r1", 30, chunk=15, clock=clock, sleep=clock.sleep,
                     progress=Progress(lambda _: None, what="run r1 of slow", clock=clock))
    # One look per MIN_ROUND at most; none begun in the last LAST_LOOK seconds.
    assert len(gateway.calls_of("wait_dag_run")) == (30 - LAST_LOOK) / MIN_ROUND + 1


def test_the_wait_survives_a_gateway_restart() -> None:
    gateway, caller, clock = setup_run("example_hello")
    gateway.fail_next["wait_dag_run"] = [
        xmlrpc.client.Fault(503, "Airflow unavailable"), Unreachable("wait_dag_run", "refused"),
        xmlrpc.client.Fault(504, "timeout")]
    lines: list[str] = []
    run = wait_for_run(caller, "example_hello", "r1", 600, clock=clock, sleep=clock.sleep,
                       rand=lambda: 0.5,
                       progress=Progress(lines.append, what="run r1 of example_hello", clock=clock))
    assert run["state"] == "success"
    assert clock.slept[:3] == [1.0, 2.0, 4.0]
    assert [line for line in lines if "trying again" in line] == [
        "wait_dag_run: fault 503: Airflow unavailable (request id req-1); trying again in 1.0 s",
        "wait_dag_run: gateway unreachable: refused; trying again in 2.0 s",
        "wait_dag_run: fault 504: timeout (request id req-1); trying again in 4.0 s"]


def test_the_wait_gives_up_on_a_refusal_or_a_long_outage() -> None:
    gateway, caller, clock = setup_run("example_hello")
    gateway.fail_next["wait_dag_run"] = [xmlrpc.client.Fault(403, "forbidden")]
    with pytest.raises(FaultReply) as caught:
        wait_for_run(caller, "example_hello", "r1", 600, clock=clock, sleep=clock.sleep,
                     progress=Progress(lambda _: None, what="run r1 of example_hello", clock=clock))
    assert caught.value.exit_status == 3 and clock.slept == []
    gateway.fail_next["wait_dag_run"] = [Unreachable("wait_dag_run", "refused")] * 50
    with pytest.raises(Unreachable):
        wait_for_run(caller, "example_hello", "r1", 3600, clock=clock, sleep=clock.sleep,
                     backoff=Backoff(attempts=5),
                     progress=Progress(lambda _: None, what="run r1 of example_hello", clock=clock))
    assert len(gateway.calls_of("wait_dag_run")) == 1 + 5


def test_elapsed_text() -> None:
    assert [elapsed_text(s) for s in (0, 42.9, 65, 3600 + 123)] == [
        "0s", "42s", "1m05s", "1h02m03s"]


def test_an_answer_nested_too_deep_to_write_out_is_a_bad_answer() -> None:
    """It reached the JSON writer and ended as exit 70, 'a bug in the client'."""
    import xmlrpc.client

    from txairflowrpc.client.transport import MAX_ANSWER_DEPTH, parse_answer
    body = ("<methodResponse><params><param>" + "<value><array><data>" * 2000
            + "<value><string>x</string></value>" + "</data></array></value>" * 2000
            + "</param></params></methodResponse>").encode()
    with pytest.raises(BadAnswer) as e:
        parse_answer("get_dag_run", body, None)
    assert e.value.exit_status == 5 and f"deeper than {MAX_ANSWER_DEPTH}" in str(e.value)
    ok = {"a": [[{"b": 1}]]}
    assert parse_answer("get_dag", xmlrpc.client.dumps((ok,), methodresponse=True).encode(),
                        None) == ok


def test_an_answer_with_a_doctype_or_entities_is_refused_unexpanded() -> None:
    """
    Found by review: a hostile gateway's 20 MB answer of nested entities
    expanded to 1 GB (3.1 GB of memory), past the answer cap and --timeout.
    """
    import time
    import xmlrpc.client

    from txairflowrpc.client.transport import parse_answer
    levels = "".join(f'<!ENTITY e{n} "{f"&e{n - 1};" * 10}">' for n in range(1, 9))
    bomb = (f'<?xml version="1.0"?><!DOCTYPE m [<!ENTITY e0 "xxxxxxxxxx">{levels}]>'
            "<methodResponse><params><param><value><string>&e8;</string></value>"
            "</param></params></methodResponse>").encode()
    started = time.monotonic()
    with pytest.raises(BadAnswer) as e:
        parse_answer("get_task_log", bomb, None)
    assert time.monotonic() - started < 1  # not expanded: 10**9 characters would take long
    assert e.value.exit_status == 5 and "a DOCTYPE is not allowed" in str(e.value)
    plain = xmlrpc.client.dumps(({"n": None, "s": "a & b"},), methodresponse=True,
                                allow_none=True).encode().replace(
        b"</struct>", b"<member><name>big</name><value><i8>1099511627776</i8></value>"
                      b"</member></struct>")
    assert parse_answer("get_dag", plain, None) == {"n": None, "s": "a & b", "big": 2**40}
    fault = xmlrpc.client.dumps(xmlrpc.client.Fault(404, "not found: x")).encode()
    with pytest.raises(FaultReply) as f:
        parse_answer("get_dag", fault, "req-1")
    assert (f.value.code, f.value.text) == (404, "not found: x")


def test_a_fault_whose_string_is_no_string_is_a_bad_answer() -> None:
    """Found by review: a fault string nested 100,000 deep made str() recurse (exit 70)."""
    from txairflowrpc.client.transport import parse_answer
    deep = ("<value><array><data>" * 5000 + "<value><string>x</string></value>"
            + "</data></array></value>" * 5000)
    body = ("<methodResponse><fault><value><struct><member><name>faultCode</name>"
            "<value><int>1</int></value></member><member><name>faultString</name>"
            f"{deep}</member></struct></value></fault></methodResponse>").encode()
    with pytest.raises(BadAnswer) as e:
        parse_answer("get_dag", body, None)
    assert e.value.exit_status == 5
