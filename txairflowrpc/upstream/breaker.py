"""
A circuit breaker in front of Airflow.

After ``failures`` upstream failures in a row (Airflow unreachable, timing
out, or answering 502, 503 or 504) the circuit opens: calls fail at once with 503
instead of piling up on a sick Airflow.  After ``reset_seconds`` it lets
one probe through (half-open): if that succeeds the circuit closes and
traffic flows again, if not it opens for another period.  The gateway thus
recovers by itself when Airflow comes back.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from ..core import errors

_log = Logger()


class CircuitBreaker:
    def __init__(self, clock: IReactorTime, *, failures: int, reset_seconds: float) -> None:
        self._clock = clock
        self.failures_to_open = failures
        self.reset_seconds = reset_seconds
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False
        #: Calls failed fast while open; for the health endpoint and tests.
        self.rejected = 0
        #: Times the circuit opened (a flap between two scrapes still counts).
        self.opened = 0

    @property
    def state(self) -> str:
        if self._opened_at is None:
            return "closed"
        if self._clock.seconds() - self._opened_at >= self.reset_seconds:
            return "half-open"
        return "open"

    def before(self) -> None:
        """Raise `errors.CircuitOpen` unless a request may go to Airflow now."""
        state = self.state
        if state == "closed":
            return
        if state == "half-open" and not self._probing:
            self._probing = True  # this request is the probe
            return
        self.rejected += 1
        assert self._opened_at is not None
        wait = max(0.0, self._opened_at + self.reset_seconds - self._clock.seconds())
        raise errors.CircuitOpen(self._failures, wait)

    def success(self) -> None:
        if self._opened_at is not None:
            _log.info("Airflow answers again: circuit closed")
        self._failures = 0
        self._opened_at = None
        self._probing = False

    def abandon(self) -> None:
        """
        A request ended with neither verdict (cancelled by its caller, or an
        error that says nothing about Airflow's health): if it was the probe,
        let the next request probe instead, so the circuit never sticks.
        """
        self._probing = False

    def failure(self) -> None:
        self._failures += 1
        if self._probing or (self._opened_at is None and self._failures >= self.failures_to_open):
            if self._opened_at is None:
                self.opened += 1
                _log.warn("Airflow failed {n} times in a row: circuit open", n=self._failures)
            self._opened_at = self._clock.seconds()
        self._probing = False
