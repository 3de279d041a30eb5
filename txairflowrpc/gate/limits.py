"""
Per-principal limits on calls: a rate (token bucket) and a cap on calls in
flight.  Both answer with fault 429 before any work is done.  Every call
counts against the rate, including each call inside a ``system.multicall``;
the in-flight cap counts HTTP requests (a multicall is one).
"""

from __future__ import annotations

import attrs
from twisted.internet.interfaces import IReactorTime

from ..core import errors

#: Principals remembered at most; the longest idle are forgotten first.
MAX_TRACKED = 10000


@attrs.define
class _Bucket:
    tokens: float
    stamp: float
    in_flight: int = 0


class CallLimits:
    def __init__(self, clock: IReactorTime, *, rate: float, burst: int, max_in_flight: int) -> None:
        self._clock = clock
        self.rate = rate
        self.burst = burst
        self.max_in_flight = max_in_flight
        self._buckets: dict[str, _Bucket] = {}
        #: How many calls were refused; for the health endpoint and tests.
        self.refused = 0

    def _bucket(self, name: str) -> _Bucket:
        now = self._clock.seconds()
        bucket = self._buckets.get(name)
        if bucket is None:
            if len(self._buckets) >= MAX_TRACKED:
                idle = min(((b.stamp, k) for k, b in self._buckets.items() if not b.in_flight),
                           default=None)
                if idle is None:  # every caller tracked has a call in flight
                    self.refused += 1
                    raise errors.RateLimited(
                        f"more than {MAX_TRACKED} callers have calls in flight", retry_after=1.0)
                del self._buckets[idle[1]]
            bucket = self._buckets[name] = _Bucket(float(self.burst), now)
        bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.stamp) * self.rate)
        bucket.stamp = now
        return bucket

    def take(self, name: str) -> None:
        """Spend one call of ``name``'s rate; `errors.RateLimited` if none is left."""
        bucket = self._bucket(name)
        if bucket.tokens < 1:
            self.refused += 1
            raise errors.RateLimited(
                f"more than {self.rate:g} calls per second (bursts of {self.burst})",
                retry_after=(1 - bucket.tokens) / self.rate,
            )
        bucket.tokens -= 1

    def enter(self, name: str) -> None:
        """Count a request in flight; `errors.RateLimited` past the cap."""
        bucket = self._bucket(name)
        if bucket.in_flight >= self.max_in_flight:
            self.refused += 1
            raise errors.RateLimited(f"more than {self.max_in_flight} calls in flight")
        bucket.in_flight += 1

    def leave(self, name: str) -> None:
        bucket = self._buckets.get(name)
        if bucket is not None and bucket.in_flight > 0:
            bucket.in_flight -= 1
