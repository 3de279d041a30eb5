"""
The one deadline of a command that waits (``--timeout``), and a gateway
whose every call keeps to it.

`Deadline` is fixed when the command starts; `Bounded` wraps the gateway so
that no call starts after it and no call's socket timeout outlasts it, but
for `GRACE`: a last look made at the deadline (a backfill is looked at a
last time then) gets that long to be answered.  So the trigger and its
retries, the wait, a backfill's create, search and count, and the failed
tasks' log tails all end by ``--timeout`` (plus `GRACE` at most), and the
command exits 6 rather than hang a pipeline past what it was given.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from .errors import OutOfTime
from .transport import DEFAULT_TIMEOUT, Caller

#: Seconds past the deadline a call may still be started and answered in:
#: a real sleep until the deadline wakes a little after it, and the last
#: look made then needs time to come back.
GRACE = 5.0


@attrs.frozen
class Deadline:
    """The ``clock`` time ``at`` which a command that was given ``seconds`` must be done."""

    at: float
    seconds: float
    clock: Callable[[], float] = attrs.field(eq=False, repr=False)

    @classmethod
    def after(cls, seconds: float, clock: Callable[[], float]) -> Deadline:
        """The deadline ``seconds`` from now."""
        return cls(clock() + seconds, seconds, clock)

    def left(self) -> float:
        """Seconds until the deadline: negative once it has passed."""
        return self.at - self.clock()


class Bounded:
    """
    A `Caller` whose calls keep to ``deadline``: each socket timeout is at
    most the time left (a call made in the last `GRACE` seconds before it
    gets `GRACE`, and none ends more than `GRACE` past it), and a call that
    would start later than that raises `OutOfTime` without being made.
    """

    def __init__(self, gateway: Caller, deadline: Deadline) -> None:
        self._gateway = gateway
        self._deadline = deadline

    def call(self, method: str, *params: Any, timeout: float = DEFAULT_TIMEOUT) -> Any:
        left = self._deadline.left()
        # A call begun well before the deadline ends at it; one begun at it
        # (or just after) still gets GRACE, never beyond the deadline's GRACE.
        allowed = max(left, GRACE + min(left, 0.0))
        if allowed <= 0:
            raise OutOfTime(method)
        return self._gateway.call(method, *params, timeout=min(timeout, allowed))
