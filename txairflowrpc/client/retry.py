"""
Calling again after a transient failure: bounded, with jittered back-off.

Only what `ClientError.transient` says may pass soon is retried: no
connection, a socket timeout, faults 429, 503, 504 and 507, HTTP 429, 502,
503 and 504.  A fault that is the caller's own (403, 404, 409, -32602) or a
bug (-32603) is raised at once.  Retrying a trigger is safe only because
it carries a run id: the `trigger` command always sends one.  A pause is
never shorter than the gateway asked for (a 429's "retry after N s", a
``Retry-After`` header; `ClientError.retry_after`).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

import attrs

from ..core import errors as codes
from .errors import ClientError, OutOfTime

T = TypeVar("T")


@attrs.frozen
class Backoff:
    """
    Delays between tries: ``first``, then ×``factor`` up to ``cap``, each
    jittered by up to ``jitter`` of itself (so that many waiting jobs do not
    come back at the same moment); at most ``attempts`` tries in a row.
    """

    first: float = 1.0
    factor: float = 2.0
    cap: float = 30.0
    attempts: int = 8
    jitter: float = 0.25

    def delay(self, failures: int, rand: Callable[[], float] = random.random) -> float:
        """The pause after the ``failures``-th failure in a row (from 1)."""
        base = min(self.cap, self.first * self.factor ** (failures - 1))
        return base * (1 - self.jitter + 2 * self.jitter * rand())


def refused_before_it_ran(error: ClientError) -> bool:
    """
    Was the call refused before anything of it was done (429: a rate, a
    cap, the gateway busy)?  Then even a call that is not safe to repeat
    (a backfill's create) may be made again.
    """
    return (getattr(error, "code", None) == codes.RATE_LIMITED
            or getattr(error, "status", None) == codes.RATE_LIMITED)


def call_with_retries(
    attempt: Callable[[], T], *, backoff: Backoff,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    deadline: float | None = None,
    on_retry: Callable[[ClientError, float], None] | None = None,
    rand: Callable[[], float] = random.random,
    retry_if: Callable[[ClientError], bool] | None = None,
) -> T:
    """
    ``attempt()``, tried again after each transient failure (or each
    ``retry_if`` says may be tried again, for a call that is safe to repeat
    only after some failures), at most ``backoff.attempts`` times in all and
    never sleeping past ``deadline`` (a ``clock`` time).  Raises the last
    failure when the tries run out, or `OutOfTime` (a timeout, not an
    outage) with it when the deadline comes first; ``on_retry`` hears of
    each failure that is retried and the pause.
    """
    failures = 0
    while True:
        try:
            return attempt()
        except ClientError as e:
            failures += 1
            again = e.transient if retry_if is None else retry_if(e)
            if not again or failures >= backoff.attempts:
                raise
            # At least what the gateway asked for (found by review: a rate's
            # "retry after 3.9 s" was met by tries at 1.2 and 2.2 s, each
            # refused and each a try spent).
            pause = max(backoff.delay(failures, rand), e.retry_after or 0.0)
            if deadline is not None and clock() + pause >= deadline:
                raise OutOfTime(getattr(e, "method", "the call"), e) from None
            if on_retry is not None:
                on_retry(e, pause)
            sleep(pause)
