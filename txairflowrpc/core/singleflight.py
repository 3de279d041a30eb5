"""
One piece of work shared by everyone who asks for it while it runs.

The Airflow client's login and an OIDC provider's key-set fetch both work
this way: the first caller starts the work, callers that arrive meanwhile
wait for the same result, and the next caller after it ended starts anew.
"""

from __future__ import annotations

from typing import Any, Callable, Generic, TypeVar

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

T = TypeVar("T")


class SingleFlight(Generic[T]):
    """
    Runs ``work`` at most once at a time.

    Each caller gets its own Deferred; cancelling it withdraws only that
    caller (the work goes on for the others, and its result is dropped for
    the one who left).  With ``abandon=True``, the work itself is cancelled
    once every caller has withdrawn.
    """

    def __init__(self, *, abandon: bool = False) -> None:
        self._waiters: list[Deferred[T]] | None = None
        self._abandon = abandon
        self._work: Deferred[T] | None = None

    @property
    def running(self) -> bool:
        return self._waiters is not None

    def run(self, work: Callable[[], "Deferred[T]"]) -> "Deferred[T]":
        """The result of the running work, or of ``work`` started now."""
        waiter: Deferred[T] = Deferred(self._withdrawn if self._abandon else None)
        if self._waiters is None:
            self._waiters = [waiter]
            started = work()
            self._work = started
            started.addBoth(self._done)
        else:
            self._waiters.append(waiter)
        return waiter

    def _withdrawn(self, waiter: "Deferred[T]") -> None:
        # Called as the waiter is cancelled, before it fails with CancelledError.
        waiters, work = self._waiters, self._work
        if waiters is None or work is None:
            return
        if all(w is waiter or w.called for w in waiters):
            work.cancel()

    def _done(self, result: Any) -> None:
        waiters, self._waiters, self._work = self._waiters or [], None, None
        for waiter in waiters:
            if waiter.called:  # cancelled by its caller
                continue
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)
