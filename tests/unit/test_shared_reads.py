"""
Identical reads share one request to Airflow (single-flight), and with
``read_cache_seconds`` a successful answer serves the same read for a while;
changes are never shared, and each caller's record still gets Airflow's
status.
"""

from __future__ import annotations

import contextvars
from typing import Any

from treq.testing import RequestTraversalAgent
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from txairflowrpc.core import calltrace, errors
from txairflowrpc.core.calltrace import CallTrace
from txairflowrpc.upstream import client as client_module

from ..fakes import FakeAirflow
from .test_resilience import client


class Held:
    """The in-memory agent, but API requests wait until the test lets them go."""

    def __init__(self, airflow: FakeAirflow) -> None:
        self.stub = RequestTraversalAgent(airflow)
        self.held: list[tuple[Deferred[Any], tuple[Any, ...]]] = []
        self.cancelled = 0

    def request(self, method: bytes, url: bytes, headers: Any = None, body: Any = None) -> Any:
        if url.endswith(b"/auth/token"):
            return self.stub.request(method, url, headers, body)

        def cancel(d: Deferred[Any]) -> None:
            self.cancelled += 1

        waiting: Deferred[Any] = Deferred(cancel)
        self.held.append((waiting, (method, url, headers, body)))
        return waiting

    def release(self, method: bytes | None = None) -> None:
        """Let the requests held go (only those of ``method``, if given)."""
        held = [h for h in self.held if method is None or h[1][0] == method]
        self.held = [h for h in self.held if h not in held]
        for waiting, args in held:
            if not waiting.called:
                self.stub.request(*args).chainDeferred(waiting)


def traced(call: Any) -> tuple[Deferred[Any], CallTrace]:
    """Start ``call`` as the dispatcher would: in a context with its own trace."""
    trace = CallTrace()

    def start() -> Deferred[Any]:
        calltrace.current.set(trace)
        return call()

    return contextvars.copy_context().run(start), trace


class SharedReadTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.airflow = FakeAirflow()
        self.airflow.runs[("etl_orders", "r1")] = {
            "dag_id": "etl_orders", "dag_run_id": "r1", "state": "running", "conf": {"a": 1},
        }
        self.http = Held(self.airflow)

    def test_identical_reads_in_flight_share_one_request(self) -> None:
        c = client(self.http, self.clock)
        calls = [traced(lambda: c.get_dag_run("etl_orders", "r1")) for _ in range(5)]
        self.assertEqual(len(self.http.held), 1)
        self.http.release()
        for d, trace in calls:
            self.assertEqual(self.successResultOf(d)["state"], "running")
            self.assertEqual(trace.airflow_status, 200)  # each record gets the status
        self.assertEqual(len(self.airflow.api_requests()), 1)
        self.assertEqual((c.reads, c.reads_upstream), (5, 1))

    def test_the_callers_of_a_shared_read_share_one_shaped_answer(self) -> None:
        """
        The run is shaped once per answer, and every caller gets that same
        value (so the gate writes its XML once for a polling storm).
        """
        shaped: list[Any] = []

        def counting(data: Any) -> Any:
            shaped.append(data)
            return real(data)

        real = client_module.shape_run
        self.patch(client_module, "shape_run", counting)
        c = client(self.http, self.clock)
        calls = [c.get_dag_run("etl_orders", "r1") for _ in range(4)]
        self.http.release()
        answers = [self.successResultOf(d) for d in calls]
        self.assertEqual(len(shaped), 1)
        self.assertTrue(all(a is answers[0] for a in answers))
        self.assertEqual(answers[0], real(shaped[0]))
        # The next read is another answer, shaped anew: nothing is kept past it.
        again = c.get_dag_run("etl_orders", "r1")
        self.http.release()
        self.assertIsNot(self.successResultOf(again), answers[0])
        self.assertEqual(len(shaped), 2)

    def test_a_shape_that_fails_fails_each_caller_and_is_not_kept(self) -> None:
        def broken(data: Any) -> Any:
            tries.append(data)
            raise errors.UpstreamError("Airflow answered something unexpected")

        tries: list[Any] = []
        self.patch(client_module, "shape_run", broken)
        c = client(self.http, self.clock)
        calls = [c.get_dag_run("etl_orders", "r1") for _ in range(3)]
        self.http.release()
        for d in calls:
            self.failureResultOf(d, errors.UpstreamError)
        self.assertEqual(len(tries), 3)

    def test_the_cache_serves_the_shape_it_made(self) -> None:
        c = client(self.http, self.clock, read_cache_seconds=5)
        first = c.get_dag_run("etl_orders", "r1")
        self.http.release()
        self.assertIs(self.successResultOf(c.get_dag_run("etl_orders", "r1")),
                      self.successResultOf(first))

    def test_other_paths_and_queries_are_other_requests(self) -> None:
        c = client(self.http, self.clock)
        c.get_dag_run("etl_orders", "r1")
        c.get_dag("etl_orders")
        c.list_dag_runs("etl_orders", states=[], limit=10, offset=0)
        c.list_dag_runs("etl_orders", states=[], limit=10, offset=10)
        self.assertEqual(len(self.http.held), 4)

    def test_a_read_after_the_answer_asks_again_without_a_cache(self) -> None:
        c = client(self.http, self.clock)
        first = c.get_dag_run("etl_orders", "r1")
        self.http.release()
        self.successResultOf(first)
        c.get_dag_run("etl_orders", "r1")
        self.assertEqual(len(self.http.held), 1)

    def test_a_shared_error_reaches_every_caller(self) -> None:
        c = client(self.http, self.clock)
        calls = [traced(lambda: c.get_dag_run("etl_orders", "nope")) for _ in range(3)]
        self.http.release()
        for d, trace in calls:
            self.failureResultOf(d, errors.NotFound)
            self.assertEqual(trace.airflow_status, 404)

    def test_changes_are_never_shared(self) -> None:
        c = client(self.http, self.clock)
        c.set_dag_paused("etl_orders", True)
        c.set_dag_paused("etl_orders", True)
        self.assertEqual(len(self.http.held), 2)

    def test_a_read_asked_after_a_change_ended_does_not_share_an_older_read(self) -> None:
        """A caller reads its own writes: a GET begun before the change may predate it."""
        c = client(self.http, self.clock)
        before = c.get_dag_run("etl_orders", "r1")  # a poller's read, in flight
        change = c.set_dag_run_state("etl_orders", "r1", "failed")
        during = c.get_dag_run("etl_orders", "r1")  # asked before the change ended: shares
        self.assertEqual(len(self.http.held), 2)
        self.http.release(b"PATCH")
        self.successResultOf(change)  # ended; the poller's GET is still in flight
        after = c.get_dag_run("etl_orders", "r1")
        self.assertEqual(len(self.http.held), 2)  # its own request, not the poller's
        self.http.release()
        self.successResultOf(before)
        self.successResultOf(during)
        self.assertEqual(self.successResultOf(after)["state"], "failed")

    def test_a_change_through_another_account_counts_too(self) -> None:
        changes = client_module.Changes()
        # Two clients, as two accounts have, sharing the gateway's count.
        reader, writer = (client(self.http, self.clock, changes=changes) for _ in range(2))
        read = reader.get_dag_run("etl_orders", "r1")
        change = writer.set_dag_paused("etl_orders", True)
        self.http.release(b"PATCH")
        self.successResultOf(change)  # ended, while the reader's GET is still in flight
        again = reader.get_dag_run("etl_orders", "r1")
        self.assertEqual(len(self.http.held), 2)  # its own request, not the older one's
        self.http.release()
        self.successResultOf(read)
        self.successResultOf(again)

    def test_a_change_airflow_refused_or_a_dry_run_ends_no_sharing(self) -> None:
        """
        Found by review: any request but a GET counted as a change, so a
        caller allowed to clear one DAG's tasks ended every caller's shared
        reads and cache at will, with dry runs or clears Airflow refused
        (404).
        """
        changes = client_module.Changes()
        c = client(self.http, self.clock, changes=changes)
        refused = c.clear_task_instances("no_such_dag", "r1", task_ids=None,
                                         only_failed=True, dry_run=False)
        dry = c.clear_task_instances("etl_orders", "r1", task_ids=None, only_failed=True,
                                     dry_run=True)
        self.http.release(b"POST")
        self.failureResultOf(refused, errors.NotFound)
        self.successResultOf(dry)
        self.assertEqual(changes.ended, 0)
        done = c.clear_task_instances("etl_orders", "r1", task_ids=None, only_failed=True,
                                      dry_run=False)
        self.http.release(b"POST")
        self.successResultOf(done)
        self.assertEqual(changes.ended, 1)  # a real change: reads begun before are not shared
        # A change refused on its only attempt changed nothing, a PATCH too;
        # one refused after a retry counts (see the next test).
        patched = c.set_dag_run_state("no_such_dag", "r1", "failed")
        self.http.release(b"PATCH")
        self.failureResultOf(patched, errors.NotFound)
        self.assertEqual(changes.ended, 1)

    def test_one_caller_leaving_does_not_cancel_the_others_read(self) -> None:
        c = client(self.http, self.clock)
        leaving, staying = c.get_dag_run("etl_orders", "r1"), c.get_dag_run("etl_orders", "r1")
        leaving.cancel()
        self.failureResultOf(leaving, CancelledError)
        self.assertEqual(self.http.cancelled, 0)
        self.http.release()
        self.assertEqual(self.successResultOf(staying)["dag_run_id"], "r1")

    def test_when_every_caller_left_the_request_is_abandoned(self) -> None:
        c = client(self.http, self.clock)
        calls = [c.get_dag_run("etl_orders", "r1") for _ in range(2)]
        for d in calls:
            d.cancel()
            self.failureResultOf(d, CancelledError)
        self.assertEqual(self.http.cancelled, 1)
        c.get_dag_run("etl_orders", "r1")  # nothing stale in flight: a new request
        self.assertEqual(len(self.http.held), 2)


class ReadCacheTests(SynchronousTestCase):
    setUp = SharedReadTests.setUp

    def test_reads_in_flight_are_shared_with_the_cache_on_too(self) -> None:
        c = client(self.http, self.clock, read_cache_seconds=2)
        calls = [c.get_dag_run("etl_orders", "r1") for _ in range(3)]
        self.assertEqual(len(self.http.held), 1)
        self.http.release()
        for d in calls:
            self.successResultOf(d)

    def test_a_successful_answer_serves_for_read_cache_seconds(self) -> None:
        c = client(self.http, self.clock, read_cache_seconds=2)
        d = c.get_dag_run("etl_orders", "r1")
        self.http.release()
        self.successResultOf(d)
        self.clock.advance(1.9)
        again, trace = traced(lambda: c.get_dag_run("etl_orders", "r1"))
        self.assertEqual(self.successResultOf(again)["state"], "running")
        self.assertEqual(trace.airflow_status, 200)
        self.assertEqual(self.http.held, [])
        self.clock.advance(0.1)
        c.get_dag_run("etl_orders", "r1")
        self.assertEqual(len(self.http.held), 1)
        self.assertEqual((c.reads, c.reads_upstream), (3, 2))

    def test_a_change_ends_what_the_cache_holds(self) -> None:
        c = client(self.http, self.clock, read_cache_seconds=60)
        d = c.get_dag_run("etl_orders", "r1")
        self.http.release()
        self.successResultOf(d)
        change = c.set_dag_run_state("etl_orders", "r1", "failed")
        self.http.release()
        self.successResultOf(change)
        again = c.get_dag_run("etl_orders", "r1")
        self.assertEqual(len(self.http.held), 1)  # not from the cache
        self.http.release()
        self.assertEqual(self.successResultOf(again)["state"], "failed")

    def test_errors_are_not_cached(self) -> None:
        c = client(self.http, self.clock, read_cache_seconds=2)
        d = c.get_dag_run("etl_orders", "nope")
        self.http.release()
        self.failureResultOf(d, errors.NotFound)
        c.get_dag_run("etl_orders", "nope")
        self.assertEqual(len(self.http.held), 1)

    def test_answers_past_their_time_go_when_the_next_comes(self) -> None:
        """They were held until the cache was full: 300 log pages an hour after."""
        c = client(self.http, self.clock, read_cache_seconds=1)
        for i in range(3):
            d = c.list_dag_runs("etl_orders", states=[], limit=10, offset=i)
            self.http.release()
            self.successResultOf(d)
        self.assertEqual(len(c._cache), 3)
        self.clock.advance(2)
        d = c.list_dag_runs("etl_orders", states=[], limit=10, offset=9)
        self.http.release()
        self.successResultOf(d)
        self.assertEqual(len(c._cache), 1)

    def test_the_cache_holds_a_bounded_number_of_bytes(self) -> None:
        """
        Found by review: the cap was a count only, so 4,096 answers of up
        to 16 MiB each could be held.  The bytes Airflow sent are capped
        too, and one answer above a quarter of them is not kept at all.
        """
        c = client(self.http, self.clock, read_cache_seconds=60)
        d = c.list_dag_runs("etl_orders", states=[], limit=10, offset=0)
        self.http.release()
        self.successResultOf(d)
        size = c._cache_bytes
        self.assertGreater(size, 0)
        self.patch(client_module, "READ_CACHE_BYTES", 4 * size)
        for i in range(1, 6):
            d = c.list_dag_runs("etl_orders", states=[], limit=10, offset=i)
            self.http.release()
            self.successResultOf(d)
            self.assertLessEqual(c._cache_bytes, 4 * size)
        self.assertEqual((len(c._cache), c._cache_bytes), (4, 4 * size))
        before = len(self.airflow.api_requests())
        self.successResultOf(c.list_dag_runs("etl_orders", states=[], limit=10, offset=5))
        self.assertEqual(len(self.airflow.api_requests()), before)  # the newest: kept
        self.patch(client_module, "READ_CACHE_BYTES", 4 * size - 1)  # now above a quarter
        d = c.list_dag_runs("etl_orders", states=[], limit=10, offset=9)
        self.http.release()
        self.successResultOf(d)
        self.assertEqual(len(c._cache), 4)  # not kept
        c.list_dag_runs("etl_orders", states=[], limit=10, offset=9)
        self.assertEqual(len(self.http.held), 1)  # so asked again

    def test_the_cache_holds_a_bounded_number_of_answers(self) -> None:
        self.patch(client_module, "READ_CACHE_ENTRIES", 3)
        c = client(self.http, self.clock, read_cache_seconds=60)
        for i in range(5):
            d = c.get_dag(f"dag_{i}")
            self.http.release()
            self.failureResultOf(d, errors.NotFound)  # errors: never kept
            d = c.list_dag_runs("etl_orders", states=[], limit=10, offset=i)
            self.http.release()
            self.successResultOf(d)
        self.assertEqual(len(c._cache), 3)
        before = len(self.airflow.api_requests())
        d = c.list_dag_runs("etl_orders", states=[], limit=10, offset=4)  # the newest: kept
        self.successResultOf(d)
        d = c.list_dag_runs("etl_orders", states=[], limit=10, offset=0)  # the oldest: gone
        self.http.release()
        self.successResultOf(d)
        self.assertEqual(len(self.airflow.api_requests()) - before, 1)
