"""
Slowing down sources that keep failing to authenticate.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime


class Backoff:
    """
    Slows down sources that keep failing to authenticate.

    After ``free`` failures within ``window`` seconds, each further failure
    from the same address is answered after a delay that doubles up to
    ``maximum``.  Successful requests are never delayed, so a legitimate
    principal behind the same address is slowed only on its own mistakes.
    """

    def __init__(self, clock: IReactorTime, maximum: float, free: int = 5, window: float = 900) -> None:
        self._clock = clock
        self.maximum = maximum
        self._free = free
        self._window = window
        self._failures: dict[str, tuple[int, float]] = {}

    def failed(self, source: str) -> float:
        """Note a failure; the delay before answering it, in seconds."""
        now = self._clock.seconds()
        count, since = self._failures.get(source, (0, now))
        if now - since > self._window:
            count, since = 0, now
        count += 1
        self._failures[source] = (count, since)
        if len(self._failures) > 10000:  # bounded memory under a spray of addresses
            oldest = min(self._failures, key=lambda k: self._failures[k][1])
            del self._failures[oldest]
        if count <= self._free:
            return 0.0
        return min(self.maximum, 0.25 * 2 ** (count - self._free))
