"""RunWatcher: one poll loop per run, however many wait_dag_run callers."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from txairflowrpc.core import errors
from txairflowrpc.upstream.watch import RunWatcher


class FakeRuns:
    def __init__(self) -> None:
        self.state = "running"
        self.fetches = 0
        self.hold = False
        self.held: list[Deferred[Any]] = []
        self.cancelled = 0
        self.error: Exception | None = None

    def fetch(self, dag_id: str, run_id: str) -> Deferred[dict[str, Any]]:
        self.fetches += 1
        if self.error is not None:
            return fail(self.error)
        if self.hold:
            d: Deferred[Any] = Deferred(lambda _: setattr(self, "cancelled", self.cancelled + 1))
            self.held.append(d)
            return d
        return succeed({"dag_id": dag_id, "dag_run_id": run_id, "state": self.state})


class RunWatcherTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.runs = FakeRuns()
        self.watcher = RunWatcher(self.runs.fetch, self.clock, poll_interval=2)

    def test_many_waiters_share_one_poll_loop(self) -> None:
        waits = [self.watcher.wait("d", "r", 60) for _ in range(100)]
        self.clock.advance(2)
        self.clock.advance(2)
        self.assertEqual(self.runs.fetches, 3)  # one at start, one per interval
        self.runs.state = "success"
        self.clock.advance(2)
        results = [self.successResultOf(d) for d in waits]
        for result in results:
            self.assertEqual((result["state"], result["finished"]), ("success", True))
        # One poll's answer is one value for all it answers (written out once).
        self.assertTrue(all(r is results[0] for r in results))
        self.assertEqual(self.runs.fetches, 4)
        self.assertEqual(self.watcher.watched, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_already_finished_run_answers_at_once(self) -> None:
        self.runs.state = "failed"
        result = self.successResultOf(self.watcher.wait("d", "r", 60))
        self.assertEqual((result["state"], result["finished"]), ("failed", True))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_timeout_gives_last_state_unfinished(self) -> None:
        d = self.watcher.wait("d", "r", 5)
        self.clock.advance(4)
        self.assertNoResult(d)
        self.clock.advance(1)
        result = self.successResultOf(d)
        self.assertEqual((result["state"], result["finished"]), ("running", False))
        self.assertEqual(self.watcher.watched, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_each_waiter_has_its_own_deadline(self) -> None:
        short = self.watcher.wait("d", "r", 3)
        long = self.watcher.wait("d", "r", 30)
        self.clock.advance(3)
        self.assertFalse(self.successResultOf(short)["finished"])
        self.assertNoResult(long)
        self.runs.state = "success"
        self.clock.advance(2)
        self.assertTrue(self.successResultOf(long)["finished"])

    def test_zero_timeout_answers_after_the_first_poll(self) -> None:
        self.runs.hold = True
        d = self.watcher.wait("d", "r", 0)
        self.clock.advance(0)
        self.assertNoResult(d)
        self.runs.held[0].callback({"dag_run_id": "r", "state": "queued"})
        self.assertEqual(self.successResultOf(d)["finished"], False)

    def test_cancelling_the_last_waiter_stops_the_loop(self) -> None:
        self.runs.hold = True
        a = self.watcher.wait("d", "r", 60)
        b = self.watcher.wait("d", "r", 60)
        a.cancel()
        self.assertEqual(self.runs.cancelled, 0)  # b still waits
        b.cancel()
        self.assertEqual(self.runs.cancelled, 1)  # the poll in flight is abandoned
        self.failureResultOf(a)
        self.failureResultOf(b)
        self.assertEqual(self.watcher.watched, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_missing_run_fails_every_waiter(self) -> None:
        self.runs.error = errors.NotFound("run 'r' of DAG 'd'")
        d = self.watcher.wait("d", "r", 60)
        self.failureResultOf(d, errors.NotFound)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_passing_upstream_failure_keeps_waiting(self) -> None:
        d = self.watcher.wait("d", "r", 60)
        self.runs.error = errors.UpstreamUnavailable()
        self.clock.advance(2)
        self.assertNoResult(d)
        self.runs.error = None
        self.runs.state = "success"
        self.clock.advance(2)
        self.assertTrue(self.successResultOf(d)["finished"])

    def test_different_runs_have_different_loops(self) -> None:
        self.watcher.wait("d", "r1", 60)
        self.watcher.wait("d", "r2", 60)
        self.assertEqual(self.watcher.watched, 2)
        self.assertEqual(self.runs.fetches, 2)
