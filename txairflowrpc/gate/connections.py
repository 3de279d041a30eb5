"""
A listener's open connections, by source: how many there are, how many each
source holds, and at the listener's cap, which one gives way.  The gateway's
site and the admin listener keep theirs in one of these.
"""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

C = TypeVar("C")


class BySource(Generic[C]):
    """
    Connections by source key (one per address; an IPv6 host by its
    network, see `txairflowrpc.identity.backoff.source_key`), in the order
    they came.
    """

    def __init__(self) -> None:
        self._held: dict[str, list[C]] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def holds(self, source: str) -> int:
        """How many connections ``source`` holds."""
        return len(self._held.get(source, ()))

    def sources(self) -> set[str]:
        return set(self._held)

    def all(self) -> list[C]:
        return [c for held in self._held.values() for c in held]

    def of(self, source: str) -> list[C]:
        """The connections ``source`` holds, the oldest first."""
        return list(self._held.get(source, ()))

    def add(self, source: str, connection: C) -> None:
        self._held.setdefault(source, []).append(connection)
        self._count += 1

    def remove(self, source: str, connection: C) -> None:
        """Forget ``connection`` (again: nothing)."""
        held = self._held.get(source, [])
        if connection in held:
            held.remove(connection)
            self._count -= 1
        if not held:
            self._held.pop(source, None)

    def giving_way(self, newcomer: str, may_go: Callable[[C], bool],
                   at_least: int = 1) -> C | None:
        """
        At the cap: the first connection ``may_go`` allows of a source
        holding the most (if that is ``at_least``), unless the
        ``newcomer``'s source holds as many (then nobody gives way: it is
        the one to refuse).
        """
        most = max((len(held) for held in self._held.values()), default=0)
        if most < at_least or self.holds(newcomer) >= most:
            return None
        return next((c for held in self._held.values() if len(held) == most
                     for c in held if may_go(c)), None)
