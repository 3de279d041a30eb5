"""
Slowing down sources that keep failing to authenticate.
"""

from __future__ import annotations

import ipaddress

from twisted.internet.interfaces import IReactorTime


#: Sources tracked at most; past it the one whose window began first is forgotten.
MAX_SOURCES = 10000


def source_key(source: str, ipv6_prefix: int = 64) -> str:
    """
    What one source is, for every per-source limit: the address, or for
    IPv6 its network of ``ipv6_prefix`` bits (one host usually holds a whole
    /64, and could spray from it; ``limits.ipv6_source_prefix``).  A key is
    its own key.
    """
    if ":" not in source:
        return source
    try:
        address = ipaddress.IPv6Address(source)
    except ValueError:
        return source
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    if ipv6_prefix >= 128:
        return str(address)
    drop = 128 - ipv6_prefix
    return str(ipaddress.IPv6Network((int(address) >> drop << drop, ipv6_prefix)))


class Backoff:
    """
    Slows down sources that keep failing to authenticate.

    After ``free`` failures within ``window`` seconds, each further failure
    from the same address is answered after a delay that doubles up to
    ``maximum``.  Successful requests are never delayed, so a legitimate
    principal behind the same address is slowed only on its own mistakes.
    IPv6 sources are counted by their network (``ipv6_prefix``, a /64 by default).
    """

    def __init__(self, clock: IReactorTime, maximum: float, free: int = 5, window: float = 900) -> None:
        self._clock = clock
        self.maximum = maximum
        self._free = free
        self._window = window
        self._failures: dict[str, tuple[int, float]] = {}
        #: What one source is for an IPv6 address (``limits.ipv6_source_prefix``).
        self.ipv6_prefix = 64

    def failed(self, source: str) -> float:
        """Note a failure; the delay before answering it, in seconds."""
        now = self._clock.seconds()
        source = source_key(source, self.ipv6_prefix)
        count, since = self._failures.get(source, (0, now))
        if now - since > self._window:
            count, since = 0, now
        if count == 0:  # a new window: to the end, so that the table stays in window order
            self._failures.pop(source, None)
        count += 1
        self._failures[source] = (count, since)
        if len(self._failures) > MAX_SOURCES:  # bounded memory under a spray of addresses
            del self._failures[next(iter(self._failures))]  # the oldest window
        if count <= self._free:
            return 0.0
        # 2**(count - free) overflows a float past about 1,030 failures: the
        # delay reaches any sensible maximum long before 2**30.
        return min(self.maximum, 0.25 * 2 ** min(count - self._free, 30))
