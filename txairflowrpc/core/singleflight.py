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
    the one who left).
    """

    def __init__(self) -> None:
        self._waiters: list[Deferred[T]] | None = None

    @property
    def running(self) -> bool:
        return self._waiters is not None

    def run(self, work: Callable[[], "Deferred[T]"]) -> "Deferred[T]":
        """The result of the running work, or of ``work`` started now."""
        waiter: Deferred[T] = Deferred()
        if self._waiters is None:
            self._waiters = [waiter]
            work().addBoth(self._done)
        else:
            self._waiters.append(waiter)
        return waiter

    def _done(self, result: Any) -> None:
        waiters, self._waiters = self._waiters or [], None
        for waiter in waiters:
            if waiter.called:  # cancelled by its caller
                continue
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)
