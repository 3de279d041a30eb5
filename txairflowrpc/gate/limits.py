"""
Rates and caps, kept before work is done.

- `CallLimits`, per principal: a rate of calls (token bucket) and a cap on
  calls in flight, both answered with fault 429.  Every call counts against
  the rate, including each call inside a ``system.multicall``; the in-flight
  cap counts HTTP requests (a multicall is one).  A multicall of N calls
  costs N (at least one): let in as a call is, it spends the rest when it
  runs, owing what the bucket lacks, up to ``rpc.max_multicall`` (a burst
  smaller than the largest multicall, as each of several workers has,
  would otherwise refuse its last calls every time).  A body of
  `PAID_FIRST_BYTES` or more is paid for before it is parsed, one call more
  per `BODY_BYTES_PER_CALL` bytes (the calls of a multicall in it draw on
  what was paid: a request costs the larger of the two); past the rate it
  is refused unparsed.  Parsing is the dearest thing a caller with no
  scopes at all can have the gateway do (10-65 ms of the reactor per MiB).
- `ConnectionRate`, per source: a rate of new connections, checked before
  the TLS handshake (see `GatewaySite.buildProtocol`).
"""

from __future__ import annotations

from collections import OrderedDict

import attrs
from twisted.internet.interfaces import IReactorTime

from ..core import errors

#: Principals remembered at most; the longest idle are forgotten first.
MAX_TRACKED = 10000
#: A request body costs one call of its caller's rate more per this many bytes.
BODY_BYTES_PER_CALL = 64 * 1024
#: A body this large or larger is paid for before it is parsed.  Below it (nearly
#: every call) a call is charged once parsed, so that a refusal for the rate names
#: the method: parsing one costs at most about 0.5 ms (4 KiB of values; an ordinary
#: call's body 5 us), twice a whole call's CPU under load.
PAID_FIRST_BYTES = 4 * 1024


@attrs.define
class _Bucket:
    """A token bucket (and, for a principal, its calls in flight)."""

    tokens: float
    stamp: float
    in_flight: int = 0

    def refill(self, now: float, rate: float, burst: int) -> None:
        """Add what ``rate`` per second gave since the last time, up to ``burst``."""
        self.tokens = min(float(burst), self.tokens + (now - self.stamp) * rate)
        self.stamp = now

    def take(self, cost: int = 1, floor: float = 0.0, admitted: bool = False) -> float:
        """
        Spend ``cost`` tokens; what was spent (0: there was not a whole
        one, unless the spending was ``admitted`` already).  What a cost of
        more than one leaves owing takes the bucket below zero, down to
        ``floor`` at most (then less than ``cost`` is spent), and is paid
        back by the time that refills it.  Never raises the bucket: a floor
        lowered by a reload forgives no debt.
        """
        if self.tokens < 1 and not admitted:
            return 0.0
        before = self.tokens
        self.tokens = min(before, max(min(floor, 0.0), before - cost))
        return before - self.tokens


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
        bucket.refill(now, self.rate, self.burst)
        return bucket

    def take(self, name: str, cost: int = 1) -> int:
        """
        Spend ``cost`` calls of ``name``'s rate; the whole calls spent
        (`whole`), or `errors.RateLimited` if not one call is left.  A cost
        above one (a large body, `body_cost`) may leave ``name`` owing up to
        its burst (what is beyond that is not spent): its next calls wait
        until it is paid.
        """
        bucket = self._bucket(name)
        spent = self.whole(bucket.take(cost, -float(self.burst)))
        if not spent:
            self.refused += 1
            raise errors.RateLimited(
                f"more than {self.rate:g} calls per second (bursts of {self.burst})",
                retry_after=(1 - bucket.tokens) / self.rate,
            )
        return spent

    @staticmethod
    def body_cost(size: int) -> int | None:
        """
        The calls a request body of ``size`` bytes costs beyond its call
        itself, to be paid before it is parsed; None for a body too small to
        be paid for first.
        """
        return size // BODY_BYTES_PER_CALL if size >= PAID_FIRST_BYTES else None

    def prepay(self, name: str, cost: int, owing: int = 0) -> int:
        """
        Spend what a request that was let in (its own call spent) will cost
        more, a multicall's calls: even below one call, owing up to its
        burst or ``owing`` if that is more; the whole calls spent.  Its next
        calls wait until it is paid.
        """
        try:
            bucket = self._bucket(name)
        except errors.RateLimited:  # every caller tracked has a call in flight
            return 0
        return self.whole(bucket.take(cost, -float(max(self.burst, owing)), admitted=True))

    @staticmethod
    def whole(spent: float) -> int:
        """
        The whole calls in what a bucket spent: ``before - after`` of a
        float bucket is ``cost - 1e-15`` at times (found by review: an int()
        of it credited a multicall one call less than it paid, and its last
        entry was refused).
        """
        return int(spent + 1e-6)

    def spend(self, name: str) -> bool:
        """
        Spend one of ``name``'s calls on something that is no call (a refused
        request, a multicall entry that is no call); False if none is left.
        Not counted in `refused`: nobody gets a 429 for it.
        """
        try:
            bucket = self._bucket(name)
        except errors.RateLimited:  # every caller tracked has a call in flight
            return False
        return bool(bucket.take())

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


#: Sources whose connection rate is remembered at most; the least recently
#: seen are forgotten first (a forgotten source starts again with a full
#: bucket: forgetting never refuses anyone).
MAX_SOURCES = 10000


class ConnectionRate:
    """
    New connections per source: a token bucket each, filled at ``rate`` per
    second up to ``burst``.

    A TLS handshake is the dearest thing an unauthenticated peer can make
    the gateway do (a key exchange and a signature: about 2.6 ms of the
    reactor each on the 2-core benchmark machine, where one ``openssl
    s_time`` loop took two thirds of a core and halved everyone else's
    calls).  The per-source connection cap bounds how many one source holds
    open, not how fast it opens them; this does.  Every step is O(1): the
    table is kept in the order sources were last seen.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def take(self, source: str, rate: float, burst: int) -> bool:
        """Spend one of ``source``'s new connections; False if it has none left."""
        now = self._clock.seconds()
        bucket = self._buckets.get(source)
        if bucket is None:
            bucket = self._buckets[source] = _Bucket(float(burst), now)
            if len(self._buckets) > MAX_SOURCES:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(source)
            bucket.refill(now, rate, burst)
        return bool(bucket.take())

    def refund(self, source: str) -> None:
        """Give back the connection `take` spent (refused for a cause not the source's)."""
        bucket = self._buckets.get(source)
        if bucket is not None:
            bucket.tokens += 1

    def __len__(self) -> int:
        return len(self._buckets)
