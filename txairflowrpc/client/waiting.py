"""
Waiting for a run to finish, over as many ``wait_dag_run`` calls as it
takes.

The gateway holds a ``wait_dag_run`` open for at most its
``rpc.max_wait_seconds``; the client asks for ``chunk`` seconds at a time
instead, until the run has finished or ``timeout`` has passed.  Short
chunks cost the gateway little (it polls Airflow once for all waiters of a
run) and mean a state change is reported within ``chunk`` seconds.  A
transient failure (the gateway restarting, Airflow briefly down: 503, 504,
no connection) is retried with back-off, a bounded number of times in a
row and never past the timeout.

`Progress` writes a line when the state changes and, while it does not,
one a minute (so that a CI job that watches for silence does not kill a
long wait): never a line per call.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from typing import Any

from .errors import ClientError, OutOfTime, WaitTimedOut
from .retry import Backoff, call_with_retries
from .transport import Caller

#: Seconds each wait_dag_run asks for by default.
DEFAULT_CHUNK = 15
#: The socket timeout of a wait call is its wait plus this: the gateway's
#: call deadline (limits.call_deadline_seconds, 60 by default) comes on top
#: of the wait, and its poll interval after it.
ANSWER_MARGIN = 90.0
#: Seconds before the deadline under which no further look is begun (the
#: run was seen already): a one-second wait and its answer need that long.
LAST_LOOK = 2.0
#: A wait call that comes back unfinished sooner than this (a gateway whose
#: cap is lower than asked) is followed by a pause: the loop never spins.
MIN_ROUND = 1.0
#: Seconds without a line after which Progress says the state again.
HEARTBEAT = 60.0


def elapsed_text(seconds: float) -> str:
    """``42s``, ``3m05s``, ``1h02m03s``."""
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s"


class Progress:
    """The progress lines of one wait, written with ``write`` (stderr)."""

    def __init__(
        self, write: Callable[[str], None], *, what: str,
        clock: Callable[[], float] = time.monotonic, heartbeat: float = HEARTBEAT,
    ) -> None:
        self._write = write
        #: What is waited for, as the lines name it ("run R of D", "backfill N of D").
        self._what = what
        self._clock = clock
        self._heartbeat = heartbeat
        self._state: str | None = None
        self._last_line = -math.inf

    def seen(self, state: str, elapsed: float, finished: bool = False) -> None:
        """The run was seen in ``state`` after ``elapsed`` seconds of waiting."""
        now = self._clock()
        if finished:
            self._line(f"{self._what}: {state} after {elapsed_text(elapsed)}", now)
        elif state != self._state:
            self._line(f"{self._what}: {state} ({elapsed_text(elapsed)})", now)
        elif now - self._last_line >= self._heartbeat:
            self._line(f"{self._what}: still {state} ({elapsed_text(elapsed)})", now)
        self._state = state

    def retrying(self, error: ClientError, pause: float) -> None:
        self._line(f"{error.message}; trying again in {pause:.1f} s", self._clock())

    def _line(self, text: str, now: float) -> None:
        self._last_line = now
        self._write(text)


def wait_for_run(
    gateway: Caller, dag_id: str, run_id: str, timeout: float, *,
    progress: Progress, chunk: int = DEFAULT_CHUNK, backoff: Backoff = Backoff(),
    clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
    rand: Callable[[], float] = random.random, deadline: float | None = None,
    on_answer: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """
    The run once it has finished (``finished`` true).  Raises
    `WaitTimedOut` (with its last state) when ``timeout`` seconds pass
    first, or ``deadline`` (a ``clock`` time: the command's, which began
    before the wait) comes, also while an outage is being retried; or the
    `ClientError` that was not transient, or the last transient one when
    its retries ran out.  ``on_answer`` hears of each answer (the run as
    last known, should the command be interrupted).
    """
    started = clock()
    deadline = started + timeout if deadline is None else deadline
    state = "unknown"
    run: dict[str, Any] | None = None

    def one_wait() -> Any:
        # The gateway's wait ends a second before the deadline, which also
        # bounds the socket's (`deadline.Bounded`): else the last look
        # would be cut short by its own timeout and read as an outage.
        seconds = max(1, min(chunk, math.floor(deadline - clock()) - 1))
        return gateway.call("wait_dag_run", dag_id, run_id, seconds,
                            timeout=seconds + ANSWER_MARGIN)

    while clock() < deadline:
        if run is not None and deadline - clock() < LAST_LOOK:
            break  # too little left for a look the deadline would not cut short
        began = clock()
        try:
            answer = call_with_retries(one_wait, backoff=backoff, sleep=sleep, clock=clock,
                                       deadline=deadline, on_retry=progress.retrying, rand=rand)
        except OutOfTime as e:
            why = e.cause.message if e.cause is not None else e.message
            raise WaitTimedOut(dag_id, run_id, state, timeout, run, cause=why) from None
        run = answer
        if on_answer is not None:
            on_answer(run)
        state = str(run.get("state", "unknown"))
        finished = bool(run.get("finished"))
        progress.seen(state, clock() - started, finished)
        if finished:
            return run
        spent = clock() - began
        if spent < MIN_ROUND:
            sleep(max(0.0, min(MIN_ROUND - spent, deadline - clock())))
    raise WaitTimedOut(dag_id, run_id, state, timeout, run)
