"""
Waiting for DAG runs to finish without one poll loop per waiter.

`RunWatcher.wait` is what ``wait_dag_run`` calls.  However many callers
wait on the same run, one loop polls Airflow for it, every
``poll_interval`` seconds, and stops when the run ends or nobody waits any
more.  Each waiter has its own deadline and can be cancelled on its own
(a caller that disconnects); cancelling the last waiter stops the loop and
abandons its request.
"""

from __future__ import annotations

from typing import Any, Callable

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..core import calltrace, errors
from ..core.calltrace import CallTrace

#: States after which a DAG run never changes by itself.
FINISHED_STATES = frozenset({"success", "failed"})

_log = Logger()

Fetch = Callable[[str, str], "Deferred[dict[str, Any]]"]


@attrs.define(eq=False)
class _Waiter:
    deferred: Deferred[dict[str, Any]]
    timer: IDelayedCall | None = None
    due: bool = False
    #: The waiting call's trace: each poll's Airflow status is noted there.
    trace: CallTrace | None = None


@attrs.define(eq=False)
class _Watch:
    key: tuple[str, str]
    waiters: list[_Waiter] = attrs.Factory(list)
    #: The answer of the last poll that got the run (None: none has yet),
    #: one value for every waiter it answers (no one changes it: the gate
    #: writes it out once for all of them).
    answer: dict[str, Any] | None = None
    fetching: Deferred[Any] | None = None
    next_poll: IDelayedCall | None = None


def _answer(run: dict[str, Any]) -> dict[str, Any]:
    return {**run, "finished": run.get("state") in FINISHED_STATES}


class RunWatcher:
    """
    One poll loop per watched run, shared by all its waiters.

    :param fetch: ``fetch(dag_id, dag_run_id)`` gives the run's shaped dict.
    """

    def __init__(self, fetch: Fetch, clock: IReactorTime, poll_interval: float) -> None:
        self._fetch = fetch
        self._clock = clock
        self.poll_interval = poll_interval
        self._watches: dict[tuple[str, str], _Watch] = {}
        #: How many times Airflow was asked, for how many waiters; for tests
        #: and metrics (polls / waits is how well waits are coalesced).
        self.polls = 0
        self.waits = 0

    @property
    def watched(self) -> int:
        """How many runs are being watched now."""
        return len(self._watches)

    def wait(self, dag_id: str, dag_run_id: str, timeout: float) -> Deferred[dict[str, Any]]:
        """
        The run, with ``finished`` true, once it has finished; or, after
        ``timeout`` seconds, its last known state with ``finished`` false.

        Fails with the fetch's error if the run cannot be read at first
        (e.g. `errors.NotFound`).  Cancellable.
        """
        self.waits += 1
        key = (dag_id, dag_run_id)
        watch = self._watches.get(key)
        started = watch is None
        if watch is None:
            watch = self._watches[key] = _Watch(key)
        waiter = _Waiter(Deferred(lambda d: self._cancelled(watch, waiter)),
                         trace=calltrace.current.get())
        waiter.timer = self._clock.callLater(timeout, self._expired, watch, waiter)
        watch.waiters.append(waiter)
        if started:
            self._poll(watch)
        return waiter.deferred

    def _poll(self, watch: _Watch) -> None:
        watch.next_poll = None
        self.polls += 1
        # The poll is no one waiter's: it runs with a trace of its own, whose
        # Airflow status every waiter's record then gets.
        polled = CallTrace()
        d = watch.fetching = calltrace.started_in(polled, lambda: self._fetch(*watch.key))
        d.addBoth(self._noted, watch, polled)
        d.addCallbacks(self._got, self._failed, (watch,), None, (watch,))
        d.addErrback(lambda f: _log.failure("run watch failed", f))

    def _noted(self, result: Any, watch: _Watch, polled: CallTrace) -> Any:
        if polled.airflow_status is not None:
            for waiter in watch.waiters:
                if waiter.trace is not None:
                    waiter.trace.airflow_status = polled.airflow_status
        return result

    def _got(self, run: dict[str, Any], watch: _Watch) -> None:
        watch.fetching = None
        answer = watch.answer = _answer(run)
        if run.get("state") in FINISHED_STATES:
            self._finish(watch, lambda w: w.deferred.callback(answer))
            return
        for waiter in [w for w in watch.waiters if w.due]:
            self._release(watch, waiter)
            waiter.deferred.callback(answer)
        self._schedule(watch)

    def _failed(self, failure: Failure, watch: _Watch) -> None:
        watch.fetching = None
        if watch.answer is None or failure.check(errors.NotFound):
            # Nothing known to answer with, or the run is gone: tell everyone.
            self._finish(watch, lambda w: w.deferred.errback(failure))
            return
        # A passing upstream failure: keep the last known state and go on.
        for waiter in [w for w in watch.waiters if w.due]:
            self._release(watch, waiter)
            waiter.deferred.callback(watch.answer)
        self._schedule(watch)

    def _schedule(self, watch: _Watch) -> None:
        if watch.waiters:
            watch.next_poll = self._clock.callLater(self.poll_interval, self._poll, watch)
        else:
            self._stop(watch)

    def _finish(self, watch: _Watch, fire: Callable[[_Waiter], None]) -> None:
        waiters, watch.waiters = watch.waiters, []
        self._stop(watch)
        for waiter in waiters:
            if waiter.timer is not None and waiter.timer.active():
                waiter.timer.cancel()
            fire(waiter)

    def _expired(self, watch: _Watch, waiter: _Waiter) -> None:
        waiter.timer = None
        if watch.answer is None:
            waiter.due = True  # answer as soon as the first poll does
            return
        self._release(watch, waiter)
        waiter.deferred.callback(watch.answer)
        if not watch.waiters:
            self._stop(watch)

    def _cancelled(self, watch: _Watch, waiter: _Waiter) -> None:
        self._release(watch, waiter)
        if not watch.waiters:
            self._stop(watch)

    def _release(self, watch: _Watch, waiter: _Waiter) -> None:
        if waiter in watch.waiters:
            watch.waiters.remove(waiter)
        if waiter.timer is not None and waiter.timer.active():
            waiter.timer.cancel()
        waiter.timer = None

    def _stop(self, watch: _Watch) -> None:
        if self._watches.get(watch.key) is watch:
            del self._watches[watch.key]
        if watch.next_poll is not None and watch.next_poll.active():
            watch.next_poll.cancel()
        watch.next_poll = None
        fetching, watch.fetching = watch.fetching, None
        if fetching is not None:
            fetching.cancel()
