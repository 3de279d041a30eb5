"""Hardening in memory: retries, circuit breaker, upstream cap, rate limits,
deadlines, and the connection-level limits of the site."""

from __future__ import annotations

import xmlrpc.client
from random import Random
from typing import Any

import attrs
import pytest
from treq.testing import RequestTraversalAgent
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseFailed, ResponseNeverReceived

from txairflowrpc.core import errors
from txairflowrpc.gate.limits import CallLimits
from txairflowrpc.gate.methods import AirflowMethods
from txairflowrpc.upstream.accounts import Account, Accounts
from txairflowrpc.upstream.breaker import CircuitBreaker
from txairflowrpc.upstream.client import AirflowClient
from txairflowrpc.upstream.watch import RunWatcher

from ..fakes import FakeAirflow
from .helpers import CONFIG, gateway


class Flaky:
    """Wraps the in-memory agent: the next API requests fail as ``plan`` says."""

    def __init__(self, airflow: FakeAirflow) -> None:
        self.stub = RequestTraversalAgent(airflow)
        self.airflow = airflow
        self.plan: list[str] = []  # "refuse", "break-after" (reaches Airflow), "silent"
        self.sent: list[str] = []

    def request(self, method: bytes, url: bytes, headers: Any = None, body: Any = None) -> Deferred[Any]:
        if url.endswith(b"/auth/token") or not self.plan:
            self.sent.append(f"{method.decode()} {url.decode()}")
            return self.stub.request(method, url, headers, body)
        self.sent.append(f"{method.decode()} {url.decode()}")
        what = self.plan.pop(0)
        if what == "silent-agent":
            # What a real Agent does when its request is cancelled.
            return Deferred(lambda d: d.errback(
                ResponseNeverReceived([Failure(CancelledError())])))
        if what == "refuse":
            return fail(ConnectionRefusedError())
        if what == "break-after":
            # The request reaches Airflow, but the answer is lost on the way back.
            d = self.stub.request(method, url, headers, body)
            return d.addCallback(lambda _: fail(ConnectionRefusedError()))
        if what == "lost-after":
            # The same, as a real connection loses it: the answer broke off.
            d = self.stub.request(method, url, headers, body)
            return d.addCallback(lambda _: fail(ResponseFailed([Failure(ConnectionDone())])))
        return Deferred()


def client(http: Any, clock: Clock, **kw: Any) -> AirflowClient:
    values = dict(agent=http, clock=clock, base_url="http://airflow.test", username="gateway",
                  password="pw", timeout=5, retries=2, max_in_flight=4, random=Random(1))
    values.update(kw)
    return AirflowClient(**values)


class RetryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.airflow = FakeAirflow()
        self.http = Flaky(self.airflow)

    def api_sent(self) -> list[str]:
        return [s for s in self.http.sent if "/auth/token" not in s]

    def test_reads_are_retried_with_backoff(self) -> None:
        c = client(self.http, self.clock)
        self.http.plan = ["refuse", "refuse"]
        d = c.get_dag("etl_orders")
        self.assertNoResult(d)
        self.clock.advance(0.5)
        self.clock.advance(1.0)
        self.assertEqual(self.successResultOf(d)["dag_id"], "etl_orders")
        self.assertEqual(len(self.api_sent()), 3)

    def test_a_change_refused_after_a_retry_still_counts_as_a_change(self) -> None:
        """
        From the second reading: a change whose first attempt's answer was
        lost may have been made; its retry's 404 does not say it was not.
        """
        from txairflowrpc.upstream.client import Changes

        changes = Changes()
        c = client(self.http, self.clock, changes=changes)
        self.successResultOf(c.get_dag("etl_orders"))  # logged in
        self.http.plan = ["break-after"]  # the PATCH reaches Airflow, its answer is lost
        d = c.set_dag_run_state("etl_orders", "gone", "failed")
        self.clock.advance(1.0)
        self.failureResultOf(d, errors.NotFound)
        self.assertEqual((len(self.api_sent()), changes.ended), (3, 1))

    def test_reads_give_up_after_the_retries(self) -> None:
        c = client(self.http, self.clock)
        self.http.plan = ["refuse"] * 5
        d = c.get_dag("etl_orders")
        for _ in range(4):
            self.clock.advance(1.0)
        self.failureResultOf(d, errors.UpstreamUnavailable)
        self.assertEqual(len(self.api_sent()), 3)

    def test_a_trigger_without_run_id_is_never_retried(self) -> None:
        c = client(self.http, self.clock)
        self.http.plan = ["break-after"]
        d = c.trigger_dag_run("etl_orders", dag_run_id=None, conf={}, logical_date=None, note=None)
        self.clock.advance(10)
        self.failureResultOf(d, errors.UpstreamUnavailable)
        self.assertEqual(len(self.api_sent()), 1)
        self.assertEqual(len(self.airflow.runs), 1)

    def test_a_trigger_without_run_id_whose_answer_is_lost_says_the_run_may_exist(
            self) -> None:
        """
        Found by review: its fault said "retry later", and a caller that did
        made a second run.  It says what to do instead.
        """
        from txairflowrpc.core.spec import CallContext

        from .helpers import OPERATOR

        c = client(self.http, self.clock)
        methods = AirflowMethods(Accounts(Account(c, RunWatcher(c.get_dag_run, self.clock, 2))),
                                 300, 1000, 3660, self.clock)
        self.http.plan = ["lost-after"]
        d = Deferred.fromCoroutine(methods.trigger_dag(
            CallContext(OPERATOR, "req"), "etl_orders", {"a": 1}, {}))
        self.clock.advance(10)
        failure = self.failureResultOf(d, errors.MayHaveBeenMade)
        self.assertEqual(failure.value.code, 503)
        self.assertEqual(failure.value.message,
                         "Airflow unavailable: the connection to Airflow broke; the run may "
                         "have been made all the same: look for it (list_dag_runs) before "
                         "triggering again, and pass options.dag_run_id to make a retry safe")
        self.assertNotIn("retry later", failure.value.message)
        self.assertEqual(len(self.airflow.runs), 1)
        # Found by review: one never sent (the connection refused) made nothing.
        self.http.plan = ["refuse"]
        d = Deferred.fromCoroutine(methods.trigger_dag(
            CallContext(OPERATOR, "req"), "etl_orders", {"a": 2}, {}))
        failure = self.failureResultOf(d, errors.UpstreamUnavailable)
        self.assertNotIsInstance(failure.value, errors.MayHaveBeenMade)
        self.assertIn("retry later", failure.value.message)

    def test_a_trigger_with_run_id_is_retried_and_never_runs_twice(self) -> None:
        c = client(self.http, self.clock)
        methods = AirflowMethods(Accounts(Account(c, RunWatcher(c.get_dag_run, self.clock, 2))),
                                 300, 1000, 3660, self.clock)
        from txairflowrpc.core.spec import CallContext

        from .helpers import OPERATOR

        self.http.plan = ["break-after"]
        d = Deferred.fromCoroutine(methods.trigger_dag(
            CallContext(OPERATOR, "req"), "etl_orders", {"a": 1}, {"dag_run_id": "r1"}))
        self.clock.advance(1)
        run = self.successResultOf(d)
        # The first attempt made it (its answer lost): this call made the run.
        self.assertEqual((run["dag_run_id"], run["created"]), ("r1", True))
        self.assertEqual(len(self.airflow.runs), 1)

    def test_airflow_s_retry_after_is_heeded_and_told(self) -> None:
        """
        Found by review: a 429 with Retry-After: 5 was retried at once (three
        GETs in a second) and its caller got no hint of when to come back.
        """
        from txairflowrpc.core import calltrace
        from txairflowrpc.core.calltrace import CallTrace

        c = client(RequestTraversalAgent(self.airflow), self.clock, retries=2)
        self.successResultOf(c.get_dag("etl_orders"))  # logged in
        self.airflow.fail_next[("GET", "/api/v2/dags/etl_orders")] = (
            429, {"detail": "slow down"}, {"Retry-After": "2"})
        trace = CallTrace(deadline=self.clock.seconds() + 60)
        d = calltrace.started_in(trace, lambda: c.get_dag("etl_orders"))
        self.clock.advance(1.9)
        self.assertNoResult(d)  # it waits as asked: no second request yet
        self.clock.advance(0.2)
        self.successResultOf(d)
        # Asked for longer than the call has left: told at once, with the wait.
        self.airflow.fail_next[("GET", "/api/v2/dags/etl_orders")] = (
            429, {"detail": "slow down"}, {"Retry-After": "120"})
        trace = CallTrace(deadline=self.clock.seconds() + 60)
        d = calltrace.started_in(trace, lambda: c.get_dag("etl_orders"))
        failure = self.failureResultOf(d, errors.UpstreamUnavailable)
        self.assertEqual(failure.value.message, "Airflow unavailable: Airflow is overloaded "
                         "(HTTP 429); retry after 120 s (Airflow's Retry-After)")
        # With no deadline (a run watcher's poll, with readers sharing it), no
        # longer than a request may take (found by review: a 40 s wait slept).
        self.airflow.fail_next[("GET", "/api/v2/dags/etl_orders")] = (
            429, {"detail": "slow down"}, {"Retry-After": "40"})
        self.failureResultOf(c.get_dag("etl_orders"), errors.UpstreamUnavailable)

    def test_invalid_jwt_403_gets_a_new_token(self) -> None:
        c = client(RequestTraversalAgent(self.airflow), self.clock)
        self.successResultOf(c.get_dag("etl_orders"))
        self.airflow.fail_next[("GET", "/api/v2/dags/etl_orders")] = (
            403, {"detail": "Invalid JWT token"})
        self.successResultOf(c.get_dag("etl_orders"))
        self.assertEqual(self.airflow.logins(), 2)


    def test_a_request_cancelled_by_its_own_timeout_is_an_upstream_timeout(self) -> None:
        # Found against a real Airflow: the Agent reports the cancellation as
        # ResponseNeverReceived, which once became a silent "cancelled".
        c = client(self.http, self.clock, retries=0)
        self.successResultOf(c.get_dag("etl_orders"))
        self.http.plan = ["silent-agent"]
        d = c.get_dag("etl_orders")
        self.clock.advance(5)
        self.failureResultOf(d, errors.UpstreamTimeout)


class BreakerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.airflow = FakeAirflow()
        self.http = Flaky(self.airflow)
        self.healthy: Any = True  # what Airflow's health endpoint says (a Deferred: not yet)
        self.asked = 0

    def check(self) -> Deferred[bool]:
        self.asked += 1
        return self.healthy if isinstance(self.healthy, Deferred) else succeed(self.healthy)

    def breaker(self, failures: int = 3, check: Any = "mine") -> CircuitBreaker:
        return CircuitBreaker(self.clock, failures=failures, reset_seconds=10,
                              check=self.check if check == "mine" else check)

    def test_opens_when_airflow_fails_its_health_check_and_closes_when_it_answers(self) -> None:
        breaker = self.breaker()
        c = client(self.http, self.clock, retries=0, breaker=breaker)
        self.successResultOf(c.get_dag("etl_orders"))  # logged in, healthy
        self.healthy = False
        self.http.plan = ["refuse"] * 3
        for _ in range(3):
            self.failureResultOf(c.get_dag("etl_orders"), errors.UpstreamUnavailable)
        self.assertEqual((breaker.state, self.asked, breaker.opened), ("open", 1, 1))
        sent = len(self.http.sent)
        f = self.failureResultOf(c.get_dag("etl_orders"), errors.CircuitOpen)
        self.assertEqual(f.value.code, 503)
        self.assertEqual(len(self.http.sent), sent)  # failed fast: Airflow not asked
        self.clock.advance(10)  # the breaker asks again by itself: still down
        self.assertEqual((breaker.state, self.asked), ("open", 2))
        self.healthy = True
        self.clock.advance(10)  # no caller's request is the probe
        self.assertEqual((breaker.state, self.asked), ("closed", 3))
        self.assertEqual(self.successResultOf(c.get_dag("etl_orders"))["dag_id"], "etl_orders")
        self.assertEqual(len(self.http.sent), sent + 1)

    def test_half_open_while_the_health_check_is_out(self) -> None:
        breaker = self.breaker(failures=1)
        c = client(self.http, self.clock, retries=0, breaker=breaker)
        self.successResultOf(c.get_dag("etl_orders"))
        self.healthy, self.http.plan = False, ["refuse"]
        self.failureResultOf(c.get_dag("etl_orders"), errors.UpstreamUnavailable)
        self.healthy = Deferred()
        self.clock.advance(10)
        self.assertEqual(breaker.state, "half-open")
        self.failureResultOf(c.get_dag("etl_orders"), errors.CircuitOpen)  # still fails fast
        self.healthy.callback(True)
        self.assertEqual(breaker.state, "closed")

    def test_one_callers_slow_requests_do_not_open_the_circuit_for_all(self) -> None:
        """
        Found by review: three requests of one caller that Airflow could
        not answer in time (a task log too large to send, say) opened the
        shared circuit, and that caller's next slow request, taken as the
        half-open probe, held it open: everyone else got 503 for minutes.
        Airflow's health endpoint, asked by the breaker itself, decides.
        """
        breaker = self.breaker()
        c = client(self.http, self.clock, retries=0, breaker=breaker)
        self.successResultOf(c.get_dag("etl_orders"))
        for _ in range(3):
            self.http.plan = ["silent"]
            slow = c.get_dag("etl_orders")
            self.clock.advance(5)
            self.failureResultOf(slow, errors.UpstreamTimeout)
        self.assertEqual((breaker.state, breaker.dismissed, self.asked), ("closed", 1, 1))
        self.assertEqual(self.successResultOf(c.get_dag("etl_orders"))["dag_id"], "etl_orders")
        for _ in range(2):  # the count started again
            self.http.plan = ["refuse"]
            self.failureResultOf(c.get_dag("etl_orders"), errors.UpstreamUnavailable)
        self.assertEqual(self.asked, 1)

    def test_one_callers_500s_do_not_open_the_circuit_for_all(self) -> None:
        """
        Found by review: five queries that make Airflow fail with 500 opened
        the shared circuit, so every caller got 503 for reset_seconds.  A
        500 is Airflow's answer to that request; 502/503/504 still count.
        """
        breaker = self.breaker()
        c = client(Flaky(self.airflow), self.clock, retries=0, breaker=breaker)
        for _ in range(5):
            self.airflow.fail_next[("GET", "/api/v2/dags/etl_orders")] = (500, {"detail": "boom"})
            self.failureResultOf(c.get_dag("etl_orders"), errors.UpstreamError)
        self.assertEqual((breaker.state, self.asked), ("closed", 0))
        self.assertEqual(self.successResultOf(c.get_dag("etl_orders"))["dag_id"], "etl_orders")
        self.healthy = False
        for _ in range(3):
            self.airflow.fail_next[("GET", "/api/v2/dags/etl_orders")] = (503, b"busy")
            self.failureResultOf(c.get_dag("etl_orders"), errors.UpstreamUnavailable)
        self.assertEqual(breaker.state, "open")

    def test_an_answer_while_the_check_is_out_keeps_the_circuit_closed(self) -> None:
        breaker = self.breaker()
        c = client(self.http, self.clock, retries=0, breaker=breaker)
        self.successResultOf(c.get_dag("etl_orders"))
        self.healthy = Deferred()  # the health endpoint is slow to say
        self.http.plan = ["refuse"] * 3
        for _ in range(3):
            self.failureResultOf(c.get_dag("etl_orders"), errors.UpstreamUnavailable)
        self.assertEqual(self.successResultOf(c.get_dag("etl_orders"))["dag_id"], "etl_orders")
        self.healthy.callback(False)  # too late: a request was answered meanwhile
        self.assertEqual(breaker.state, "closed")

    def test_without_a_check_requests_try_again_after_the_pause(self) -> None:
        breaker = self.breaker(failures=1, check=None)
        c = client(self.http, self.clock, retries=0, breaker=breaker)
        self.http.plan = ["refuse"]
        self.failureResultOf(c.get_dag("etl_orders"), errors.UpstreamUnavailable)
        self.failureResultOf(c.get_dag("etl_orders"), errors.CircuitOpen)
        self.clock.advance(10)
        self.assertEqual(self.successResultOf(c.get_dag("etl_orders"))["dag_id"], "etl_orders")

    def test_the_gateway_asks_airflows_own_health_endpoint(self) -> None:
        """The check the gateway wires in (`AirflowClient.reachable`), from no caller's request."""
        breaker = self.breaker(failures=1, check=None)
        c = client(self.http, self.clock, retries=0, breaker=breaker)
        breaker.check = c.reachable
        self.http.plan = ["refuse", "refuse"]  # the failing request, then the check
        self.failureResultOf(c.get_dag("etl_orders"), errors.UpstreamUnavailable)
        self.assertEqual(self.http.sent[-1], "GET http://airflow.test/api/v2/monitor/health")
        self.assertEqual(breaker.state, "open")
        stopped = len(self.http.sent)
        breaker.stop()  # the gateway shuts down: it stops asking
        self.clock.advance(60)
        self.assertEqual(len(self.http.sent), stopped)

    def test_stopped_it_asks_no_more_even_with_a_check_under_way(self) -> None:
        """From the second reading: a check answering after stop() armed the timer again."""
        breaker = self.breaker(failures=1)
        c = client(self.http, self.clock, retries=0, breaker=breaker)
        self.healthy, self.http.plan = False, ["refuse"]
        self.failureResultOf(c.get_dag("etl_orders"), errors.UpstreamUnavailable)
        self.healthy = Deferred()
        self.clock.advance(10)  # a check under way ...
        breaker.stop()  # ... when the gateway shuts down: cancelled
        self.assertEqual((self.clock.getDelayedCalls(), self.asked), ([], 2))
        self.clock.advance(60)
        self.assertEqual(self.asked, 2)

    def test_a_check_that_never_answers_is_a_no(self) -> None:
        """From the second reading: one that never fired kept the circuit from ever opening."""
        from txairflowrpc.upstream.breaker import CHECK_SECONDS

        breaker = self.breaker()
        c = client(self.http, self.clock, retries=0, breaker=breaker)
        self.healthy = Deferred()  # never fires
        self.http.plan = ["refuse"] * 3
        for _ in range(3):
            self.failureResultOf(c.get_dag("etl_orders"), errors.UpstreamUnavailable)
        self.assertEqual(breaker.state, "closed")
        self.clock.advance(2 * CHECK_SECONDS)
        self.assertEqual(breaker.state, "open")

    def test_a_health_answer_that_says_the_database_is_down_is_a_no(self) -> None:
        """Airflow 3 answers its health endpoint 200 whatever it finds: the body says."""
        c = client(self.http, self.clock, retries=0)
        self.assertIs(self.successResultOf(c.reachable()), True)
        self.airflow.fail_next[("GET", "/api/v2/monitor/health")] = (
            200, {"metadatabase": {"status": "unhealthy"}, "scheduler": {"status": "unhealthy"}})
        self.assertIs(self.successResultOf(c.reachable()), False)
        self.http.plan = ["silent"]
        slow = c.reachable(timeout=1)  # the breaker's check waits less than a call
        self.clock.advance(1)
        self.assertIs(self.successResultOf(slow), False)


class UpstreamCapTests(SynchronousTestCase):
    def test_at_most_max_in_flight_requests_reach_airflow(self) -> None:
        clock = Clock()
        airflow = FakeAirflow()
        http = Flaky(airflow)
        c = client(http, clock, retries=0, max_in_flight=4)
        self.successResultOf(c.get_dag("etl_orders"))
        before = len(http.sent)
        http.plan = ["silent"] * 10
        # Six different reads: identical ones would share one request.
        calls = [c.get_dag(f"etl_orders_{i}") for i in range(6)]
        self.assertEqual(len(http.sent) - before, 4)
        calls[-1].cancel()  # a waiting call can leave the queue
        self.failureResultOf(calls[-1])
        clock.advance(5)  # the four time out; the fifth gets its turn
        self.assertEqual(len(http.sent) - before, 5)
        for d in calls[:4]:
            self.failureResultOf(d, errors.UpstreamTimeout)
        clock.advance(5)
        self.failureResultOf(calls[4], errors.UpstreamTimeout)


    def test_a_call_whose_turn_comes_at_its_deadline_sends_nothing(self) -> None:
        """
        Found by review: queued for a slow Airflow, calls whose deadline was
        about to cut them off still sent their requests as slots came free,
        requests abandoned on their way (450 GETs nobody waited for).
        """
        from txairflowrpc.core import calltrace
        from txairflowrpc.core.calltrace import CallTrace

        clock = Clock()
        http = Flaky(FakeAirflow())
        c = client(http, clock, retries=0, max_in_flight=1, timeout=30)
        self.successResultOf(c.get_dag("etl_orders"))  # logged in
        before = len(http.sent)
        http.plan = ["silent"] * 3

        def within(seconds: float, name: str) -> Deferred[Any]:
            trace = CallTrace(deadline=clock.seconds() + seconds)
            return calltrace.started_in(trace, lambda: c.get_dag(name))

        first = within(60, "etl_a")  # takes the one slot
        short, long = within(10, "etl_b"), within(60, "etl_c")  # wait for it
        self.assertEqual(len(http.sent) - before, 1)
        clock.advance(9.5)
        first.cancel()  # its caller's deadline: the slot comes free
        self.failureResultOf(first)
        failure = self.failureResultOf(short, errors.UpstreamUnavailable)
        self.assertIn("time ran out waiting for its turn", failure.value.message)
        clock.advance(0)  # the slot it had goes on
        self.assertEqual(len(http.sent) - before, 2)  # not etl_b's: etl_c's, with time left
        self.assertTrue(http.sent[-1].endswith("/dags/etl_c"))
        long.cancel()
        self.failureResultOf(long)
        # A read shared by a caller with time left is sent for it.
        first = within(60, "etl_a")
        short, joined = within(10, "etl_d"), within(60, "etl_d")
        clock.advance(9.5)
        first.cancel()
        self.failureResultOf(first)
        clock.advance(0)
        self.assertTrue(http.sent[-1].endswith("/dags/etl_d"))
        for d in (short, joined):
            d.cancel()
            self.failureResultOf(d)


    def test_many_calls_whose_turn_comes_too_late_all_end(self) -> None:
        """
        Found while checking the change above live: each of 500 such waiters,
        handed the slot at once, resumed the next inside its own stack; past
        Python's recursion limit some never resumed, hung past their deadline,
        and held the shutdown's drain for good.
        """
        from txairflowrpc.core import calltrace
        from txairflowrpc.core.calltrace import CallTrace

        clock = Clock()
        http = Flaky(FakeAirflow())
        c = client(http, clock, retries=0, max_in_flight=100, timeout=30)
        self.successResultOf(c.get_dag("etl_orders"))
        http.plan = ["silent"] * 1000

        def within(seconds: float, name: str) -> Deferred[Any]:
            trace = CallTrace(deadline=clock.seconds() + seconds)
            return calltrace.started_in(trace, lambda: c.get_dag(name))

        holding = [within(60, f"etl_a{i}") for i in range(100)]
        waiting = [within(10, f"etl_b{i}") for i in range(600)]
        clock.advance(9.5)
        for d in holding:
            d.cancel()
            self.failureResultOf(d)
        for _ in range(700):
            clock.advance(0)
        for d in waiting:
            self.failureResultOf(d, errors.UpstreamUnavailable)


class CallLimitTests(SynchronousTestCase):
    def test_rate_and_in_flight_caps_are_429(self) -> None:
        clock = Clock()
        limits = CallLimits(clock, rate=2, burst=3, max_in_flight=2)
        for _ in range(3):
            limits.take("bot")
        with self.assertRaises(errors.RateLimited) as e:
            limits.take("bot")
        self.assertEqual(e.exception.code, 429)
        self.assertIn("retry after 0.5 s", e.exception.message)
        limits.take("other")  # per principal
        clock.advance(0.5)
        limits.take("bot")
        limits.enter("bot")
        limits.enter("bot")
        with self.assertRaises(errors.RateLimited):
            limits.enter("bot")
        limits.leave("bot")
        limits.enter("bot")

    def test_with_every_tracked_caller_busy_a_newcomer_is_429_not_an_error(self) -> None:
        from txairflowrpc.gate import limits as limits_module
        self.patch(limits_module, "MAX_TRACKED", 3)
        limits = CallLimits(Clock(), rate=2, burst=3, max_in_flight=2)
        for name in ("a", "b", "c"):
            limits.enter(name)
        with self.assertRaises(errors.RateLimited) as e:
            limits.take("d")
        self.assertIn("callers have calls in flight", e.exception.message)
        limits.leave("b")
        limits.take("d")  # b's bucket, idle now, made room

    def test_through_the_gateway(self) -> None:
        gw = gateway()
        dispatcher = gw.site.rpc._dispatcher
        dispatcher._limits = CallLimits(gw.clock, rate=1, burst=2, max_in_flight=10)
        results = [self.successResultOf(gw.call_d("ping"))[2] for _ in range(3)]
        self.assertEqual(results[:2], ["pong", "pong"])
        self.assertEqual(results[2].faultCode, 429)
        gw.advance(2)
        multi = self.successResultOf(gw.call_d("system.multicall", [
            {"methodName": "ping", "params": []}] * 3))[2]
        # Every inner call counts: three, from a bucket of two, let in whole
        # (one was left), the third owed: the next call waits until it is paid.
        self.assertEqual(multi, [["pong"]] * 3)
        owing = self.successResultOf(gw.call_d("ping"))[2]
        self.assertEqual(owing.faultCode, 429)
        self.assertIn("retry after 2.0 s", owing.faultString)  # from -1 to 1 at 1 a second
        gw.advance(2)
        self.assertEqual(self.successResultOf(gw.call_d("ping"))[2], "pong")

    def test_the_largest_multicall_is_let_in_whole_whatever_the_burst(self) -> None:
        """
        Found by a newcomer: with the defaults (a burst of 40, multicalls of
        up to 50) a multicall of 45 pings always had its last 6 refused, however
        long its caller had waited; with two workers (a burst of 20 each),
        everything past 19.  Now its calls are spent when it starts, owing what
        the bucket lacks: the rate over time is the same.
        """
        gw = gateway(attrs.evolve(CONFIG, rpc=attrs.evolve(CONFIG.rpc, max_multicall=50)))
        dispatcher = gw.site.rpc._dispatcher
        for burst in (40, 20):
            dispatcher._limits = CallLimits(gw.clock, rate=10, burst=burst, max_in_flight=10)
            multi = self.successResultOf(gw.call_d("system.multicall", [
                {"methodName": "ping", "params": []}] * 50))[2]
            self.assertEqual(multi, [["pong"]] * 50)
            owing = self.successResultOf(gw.call_d("ping"))[2]  # owes 50 - burst
            self.assertEqual(owing.faultCode, 429)
            self.assertIn(f"retry after {(51 - burst) / 10:.1f} s", owing.faultString)
            gw.advance((51 - burst) / 10)
            self.assertEqual(self.successResultOf(gw.call_d("ping"))[2], "pong")
            # With no call left, a multicall is refused whole, as a call is.
            refused = self.successResultOf(gw.call_d("system.multicall", [
                {"methodName": "ping", "params": []}] * 2))[2]
            self.assertEqual(refused.faultCode, 429)
            gw.advance(60)
        self.assertEqual(dispatcher._paid, {})  # nothing kept once the requests are over

    def test_a_multicall_refused_at_the_in_flight_cap_spends_one_call(self) -> None:
        gw = gateway(attrs.evolve(CONFIG, rpc=attrs.evolve(CONFIG.rpc, max_multicall=50)))
        dispatcher = gw.site.rpc._dispatcher
        dispatcher._limits = limits = CallLimits(gw.clock, rate=1, burst=40, max_in_flight=1)
        limits.enter("ci-bot")  # one request of its in flight: at its cap
        refused = self.successResultOf(gw.call_d("system.multicall", [
            {"methodName": "ping", "params": []}] * 50))[2]
        self.assertEqual(refused.faultCode, 429)
        self.assertIn("in flight", refused.faultString)
        limits.leave("ci-bot")
        multi = self.successResultOf(gw.call_d("system.multicall", [
            {"methodName": "ping", "params": []}] * 40))[2]
        self.assertEqual(multi, [["pong"]] * 40)  # 39 were left: it owes one
        self.assertIn("retry after 2.0 s", self.successResultOf(gw.call_d("ping"))[2].faultString)
        self.assertEqual(dispatcher._paid, {})

    def test_a_cost_above_one_leaves_the_caller_owing_up_to_its_burst(self) -> None:
        clock = Clock()
        limits = CallLimits(clock, rate=2, burst=3, max_in_flight=2)
        limits.take("bot", 10)  # one call was left: taken, the rest owed (at most the burst)
        with self.assertRaises(errors.RateLimited) as e:
            limits.take("bot")
        self.assertIn("retry after 2.0 s", e.exception.message)  # from -3 to 1 at 2 a second
        clock.advance(2)
        limits.take("bot")
        self.assertEqual((limits.body_cost(64 * 1024 - 1), limits.body_cost(200 * 1024)), (0, 3))

    def test_a_large_body_is_paid_for_before_it_is_parsed(self) -> None:
        """
        Found by an attacker's review: a caller with no scopes sent 1 MiB
        bodies within its rate (each 30-65 ms of parsing) and held the
        reactor, and bodies past its rate were parsed in full before their 429.
        """
        gw = gateway()
        dispatcher = gw.site.rpc._dispatcher
        dispatcher._limits = CallLimits(gw.clock, rate=1, burst=4, max_in_flight=10)
        big = "x" * (200 * 1024)  # three calls more than its own
        self.assertEqual(self.successResultOf(gw.call_d("ping"))[2], "pong")
        self.assertEqual(self.successResultOf(gw.call_d("ping", big))[2].faultCode, -32602)
        fault = self.successResultOf(gw.call_d("ping"))[2]  # 3 - 4 = -1 left
        self.assertEqual(fault.faultCode, 429)
        self.assertIn("retry after 2.0 s", fault.faultString)
        # Past the rate, a large body is refused unread: this one is not XML
        # at all, and its answer is the rate's, not a parse error.
        junk = b"<methodCall>" + b"\xff" * (100 * 1024)
        response = self.successResultOf(gw.post(junk))
        body = self.successResultOf(response.content())
        with self.assertRaises(xmlrpc.client.Fault) as refused:
            xmlrpc.client.loads(body)
        self.assertEqual(refused.exception.faultCode, 429)
        # From the second reader: one just under 64 KiB was still parsed past
        # the rate (10 ms each); from 4 KiB a body is paid for first.
        response = self.successResultOf(gw.post(b"<methodCall>" + b"\xff" * 5000))
        with self.assertRaises(xmlrpc.client.Fault) as refused:
            xmlrpc.client.loads(self.successResultOf(response.content()))
        self.assertEqual(refused.exception.faultCode, 429)
        # A small one past the rate is parsed, and its refusal names its method.
        self.assertEqual(self.successResultOf(gw.call_d("get_dag", "x"))[2].faultCode, 429)
        gw.advance(2)
        self.assertEqual(self.successResultOf(gw.call_d("ping"))[2], "pong")

    def test_a_multicall_in_a_large_body_costs_the_larger_of_its_calls_and_its_size(
        self,
    ) -> None:
        """
        From the second reader: a 1 MiB multicall of 30 pings had 6 refused
        at the default burst of 40 (the body's 17 and the calls' 30).
        """
        gw = gateway(attrs.evolve(CONFIG, rpc=attrs.evolve(CONFIG.rpc, max_multicall=50)))
        dispatcher = gw.site.rpc._dispatcher
        dispatcher._limits = CallLimits(gw.clock, rate=1, burst=40, max_in_flight=10)
        padded = {"methodName": "ping", "params": ["x" * (200 * 1024)]}  # 3 calls more
        calls = [{"methodName": "ping", "params": []}] * 30 + [padded]
        results = self.successResultOf(gw.call_d("system.multicall", calls))[2]
        self.assertEqual(results[:30], [["pong"]] * 30)
        self.assertEqual(results[30]["faultCode"], -32602)
        # 31 spent in all, the larger of the body's 4 and its 31 calls: 9 calls left.
        answers = [self.successResultOf(gw.call_d("ping"))[2] for _ in range(10)]
        self.assertEqual(answers[:9], ["pong"] * 9)
        self.assertEqual(answers[9].faultCode, 429)
        self.assertEqual(dispatcher._paid, {})  # nothing kept once the request is over
        # A large body refused before it is parsed keeps nothing either.
        self.successResultOf(gw.post(b"<methodCall>" + b"\xff" * 70000))
        gw.advance(60)
        self.successResultOf(gw.post(b"<methodCall>" + b"\xff" * 70000))
        self.assertEqual(dispatcher._paid, {})

    def test_a_body_gives_its_multicall_only_the_credit_it_paid(self) -> None:
        """
        From a second reading: a caller owing its whole burst spends less than
        a large body costs, yet its multicall was credited the whole cost (410
        calls in 60 s at a rate of 1 and a burst of 5).
        """
        cfg = attrs.evolve(CONFIG, rpc=attrs.evolve(CONFIG.rpc, max_multicall=50,
                                                    max_body_bytes=1 << 20))
        gw = gateway(cfg)
        dispatcher = gw.site.rpc._dispatcher
        dispatcher._limits = CallLimits(gw.clock, rate=1, burst=5, max_in_flight=10)
        padded = {"methodName": "ping", "params": ["x" * (240 * 1024)]}
        calls = [padded] * 3 + [{"methodName": "ping", "params": []}] * 40  # 11 calls more
        results = self.successResultOf(gw.call_d("system.multicall", calls))[2]
        # 5 tokens, down to -5: the body paid 10 of its 12; the multicall then
        # spent its other 33 calls (it was let in; the second reader's finding:
        # with 1-2 calls left, its entries were refused one by one, each saying
        # to come back when the next would be refused too), down to -38: what
        # it was credited is what it spent, 43 for its 43 entries.
        self.assertEqual({r["faultCode"] for r in results[:3]}, {-32602})
        self.assertEqual(results[3:], [["pong"]] * 40)
        owing = self.successResultOf(gw.call_d("ping"))[2]
        self.assertEqual(owing.faultCode, 429)
        self.assertIn("retry after 39.0 s", owing.faultString)  # the rate over time holds
        gw.advance(39)
        self.assertEqual(self.successResultOf(gw.call_d("ping"))[2], "pong")

    def test_a_multicall_refused_before_it_runs_spends_one_call(self) -> None:
        """From the second reader: refused while stopping, its caller owed all its calls."""
        gw = gateway(attrs.evolve(CONFIG, rpc=attrs.evolve(CONFIG.rpc, max_multicall=50)))
        dispatcher = gw.site.rpc._dispatcher
        dispatcher._limits = CallLimits(gw.clock, rate=1, burst=40, max_in_flight=10)
        dispatcher.draining = True
        refused = self.successResultOf(gw.call_d("system.multicall", [
            {"methodName": "ping", "params": []}] * 50))[2]
        self.assertEqual(refused.faultCode, 503)
        dispatcher.draining = False
        multi = self.successResultOf(gw.call_d("system.multicall", [
            {"methodName": "ping", "params": []}] * 39))[2]
        self.assertEqual(multi, [["pong"]] * 39)  # 39 of the burst's 40 were still there
        self.assertEqual(self.successResultOf(gw.call_d("ping"))[2].faultCode, 429)
        self.assertEqual(dispatcher._paid, {})

    def test_entries_that_are_no_calls_draw_on_the_credit_too(self) -> None:
        cfg = attrs.evolve(CONFIG, rpc=attrs.evolve(CONFIG.rpc, max_multicall=50))
        gw = gateway(cfg)
        dispatcher = gw.site.rpc._dispatcher
        dispatcher._limits = CallLimits(gw.clock, rate=1, burst=10, max_in_flight=10)
        padded = {"methodName": "ping", "params": ["x" * (200 * 1024)]}  # 3 calls more
        results = self.successResultOf(gw.call_d(
            "system.multicall", [7, 7, 7, {"methodName": "ping", "params": []}, padded]))[2]
        self.assertEqual(results[3], ["pong"])
        # 4 paid first, 1 more for its 5 entries (the 3 that are no calls, the
        # ping and the padded one): 5 spent, the larger of the two.
        answers = [self.successResultOf(gw.call_d("ping"))[2] for _ in range(6)]
        self.assertEqual(answers[:5], ["pong"] * 5)
        self.assertEqual(answers[5].faultCode, 429)

    def test_a_paid_body_that_is_not_xml_rpc_is_not_charged_again(self) -> None:
        gw = gateway()
        gw.site.refusals.charge = lambda name: gw.site.rpc._dispatcher._limits.spend(name)
        dispatcher = gw.site.rpc._dispatcher
        dispatcher._limits = CallLimits(gw.clock, rate=1, burst=10, max_in_flight=10)
        response = self.successResultOf(gw.post(b"<methodCall>" + b"<x>" * 2000))
        with self.assertRaises(xmlrpc.client.Fault) as refused:
            xmlrpc.client.loads(self.successResultOf(response.content()))
        self.assertEqual(refused.exception.faultCode, -32600)
        answers = [self.successResultOf(gw.call_d("ping"))[2] for _ in range(10)]
        self.assertEqual(answers[:9], ["pong"] * 9)
        self.assertEqual(answers[9].faultCode, 429)

    def test_a_call_past_its_deadline_is_504_and_its_work_is_cancelled(self) -> None:
        gw = gateway()
        dispatcher = gw.site.rpc._dispatcher
        dispatcher.deadline = 5  # shorter than the Airflow timeout (10 s)
        self.successResultOf(gw.call_d("get_dag", "etl_orders"))  # logged in
        gw.airflow.hang.append("/api/v2/dags/etl_orders")
        d = gw.call_d("get_dag", "etl_orders")
        gw.advance(4.9)
        self.assertNoResult(d)
        gw.advance(0.1)
        fault = self.successResultOf(d)[2]
        self.assertEqual((fault.faultCode, fault.faultString),
                         (504, "the call did not finish within its deadline of 5 s; retry later"))
        self.assertEqual(gw.clock.getDelayedCalls(), [])  # the Airflow request is abandoned


def test_prepay_counts_whole_calls_and_forgives_no_debt() -> None:
    """From a third reading: an int() of 7.999999999999998 credited a call less than was paid."""
    clock = Clock()
    limits = CallLimits(clock, rate=1, burst=5, max_in_flight=2)
    assert (CallLimits.whole(7.999999999999998), CallLimits.whole(8.4)) == (8, 8)
    limits.take("bot")
    assert limits.whole(limits.prepay("bot", 54, owing=50)) == 54  # 4 - 54: owes 50
    limits.burst = 2  # a reload lowered the floor to -10: the debt stays
    assert limits.prepay("bot", 5, owing=10) == 0
    assert limits._buckets["bot"].tokens == -50


@pytest.mark.parametrize(("status", "value", "seconds"), [
    (429, b"5", 5.0), (503, b" 30 ", 30.0), (429, b"99999999", 3600.0),
    (429, b"Wed, 21 Oct 2026 07:28:00 GMT", None), (429, b"-1", None), (429, b"1.5", None),
    (500, b"5", None),
])
def test_retry_after_is_read_as_seconds_only(status: int, value: bytes,
                                             seconds: float | None) -> None:
    from types import SimpleNamespace

    from twisted.web.http_headers import Headers

    from txairflowrpc.upstream.transport import retry_after
    response = SimpleNamespace(code=status, headers=Headers({b"Retry-After": [value]}))
    assert retry_after(response) == seconds


def test_a_shared_login_is_not_cut_short_by_one_caller_s_deadline() -> None:
    """
    Found by review: a login started by a caller with 0.5 s left failed for
    every caller that had joined it, one with 50 s left among them.
    """
    from txairflowrpc.core import calltrace
    from txairflowrpc.core.calltrace import CallTrace

    clock = Clock()
    http = Flaky(FakeAirflow())
    c = client(http, clock, retries=0, max_in_flight=1, timeout=30)
    http.plan = ["silent"]

    def within(seconds: float, name: str) -> Deferred[Any]:
        trace = CallTrace(deadline=clock.seconds() + seconds)
        return calltrace.started_in(trace, lambda: c.get_dag(name))

    holder = within(60, "etl_a")  # logs in, then holds the one slot with its GET
    c._jwt = None  # the token expires
    short, long = within(10, "no_such_dag"), within(60, "nor_this")  # one login, shared
    clock.advance(9.5)
    holder.cancel()
    holder.addErrback(lambda f: None)
    for _ in range(5):
        clock.advance(0)
    # The login went out and both reached Airflow (which knows neither DAG).
    failure = Failure  # for the type checker: results below are failures
    for d in (short, long):
        result = d.result if d.called else None
        assert isinstance(result, failure) and result.check(errors.NotFound), result
        d.addErrback(lambda f: None)
