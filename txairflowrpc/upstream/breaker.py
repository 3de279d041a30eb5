"""
A circuit breaker in front of Airflow.

After ``failures`` upstream failures in a row (Airflow unreachable, timing
out, or answering 502, 503 or 504) the breaker asks Airflow's own health
endpoint, from no caller's request (``check``):

- it answers: the failures were those requests' own (a log too large to
  send in time, a proxy's timeout on one path), not Airflow's.  The count
  starts again and the circuit stays closed, so that one caller's slow
  reads cannot shut Airflow off for everyone;
- it does not: the circuit opens, and calls fail at once with 503 instead
  of piling up on a sick Airflow.  Every ``reset_seconds`` the health
  endpoint is asked again (half-open while it is asked); when it answers,
  the circuit closes.  The gateway thus recovers by itself, at once, even
  with no traffic, and no caller's request is ever the probe that a slow
  request could hold.

An answer from Airflow to any request also closes an open circuit.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from ..core import errors

_log = Logger()

#: How long a health check may take: a sick Airflow is told apart from a slow
#: request in this, not in a whole ``airflow.timeout_seconds``.
CHECK_SECONDS = 5.0


class CircuitBreaker:
    """
    :param check: whether Airflow's health endpoint answers now, within
        `CHECK_SECONDS` (never fails); the client's ``reachable``.  May be
        set after construction.  Without one, failures open the circuit and
        it closes again after ``reset_seconds`` for requests to try.  One
        that has not answered in twice `CHECK_SECONDS` counts as a no.
    """

    def __init__(
        self, clock: IReactorTime, *, failures: int, reset_seconds: float,
        check: Callable[[], Deferred[bool]] | None = None,
    ) -> None:
        self._clock = clock
        self.failures_to_open = failures
        self.reset_seconds = reset_seconds
        self.check = check
        self._failures = 0
        self._opened_at: float | None = None
        self._checking: Deferred[Any] | None = None
        self._timer: IDelayedCall | None = None
        self._stopped = False
        #: Calls failed fast while open; for the health endpoint and tests.
        self.rejected = 0
        #: Times the circuit opened (a flap between two scrapes still counts).
        self.opened = 0
        #: Runs of failures the health endpoint said were not Airflow's.
        self.dismissed = 0

    @property
    def state(self) -> str:
        if self._opened_at is None:
            return "closed"
        return "half-open" if self._checking is not None else "open"

    def before(self) -> None:
        """Raise `errors.CircuitOpen` unless a request may go to Airflow now."""
        if self._opened_at is None:
            return
        self.rejected += 1
        wait = max(1.0, self._opened_at + self.reset_seconds - self._clock.seconds())
        raise errors.CircuitOpen(self._failures, wait)

    def success(self) -> None:
        self._failures = 0
        if self._opened_at is not None:
            self._close()

    def failure(self) -> None:
        self._failures += 1
        if self._opened_at is None and self._failures >= self.failures_to_open:
            self._ask()

    def _ask(self) -> None:
        """Ask Airflow's health endpoint (once at a time); `_answered` acts on it."""
        self._timer = None
        if self._checking is not None or self._stopped:
            return
        if self.check is None:  # nothing to ask: let requests try again after a pause
            self._answered(self._opened_at is not None)
            return
        checking = self._checking = maybeDeferred(self.check)
        checking.addTimeout(2 * CHECK_SECONDS, self._clock)
        checking.addBoth(self._answered)

    def _answered(self, answers: Any) -> None:
        self._checking = None
        if self._stopped:
            return
        if answers is True:
            if self._opened_at is not None:
                self._close()
            elif self._failures >= self.failures_to_open:
                self.dismissed += 1
                _log.info("{n} failed requests in a row, but Airflow's health endpoint "
                          "answers: the circuit stays closed", n=self._failures)
            self._failures = 0
            return
        if self._opened_at is None:
            if self._failures < self.failures_to_open:
                return  # a request got its answer meanwhile: Airflow is there
            self.opened += 1
            _log.warn("Airflow failed {n} times in a row and its health endpoint does not "
                      "answer: circuit open", n=self._failures)
        self._opened_at = self._clock.seconds()
        self._timer = self._clock.callLater(self.reset_seconds, self._ask)

    def _close(self) -> None:
        _log.info("Airflow answers again: circuit closed")
        self._opened_at = None
        self._stop_timer()

    def _stop_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def stop(self) -> None:
        """Stop asking, a check under way included (the gateway shuts down)."""
        self._stopped = True
        self._stop_timer()
        if self._checking is not None:
            self._checking.cancel()
