"""
``airflowrpc backfill``'s work: finding the backfill an earlier try of the
same command made, and following one until it has completed.

Airflow runs one backfill of a DAG at a time and creates its runs at once;
the command follows it with ``get_backfill`` every ``every`` seconds,
counting its runs with ``list_dag_runs`` (``run_type`` backfill over its
range, one small page per state), and reports them when it completes.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from .errors import BackfillTimedOut
from .retry import Backoff, call_with_retries
from .transport import Caller
from .waiting import Progress

#: Seconds between two looks at a backfill by default.
DEFAULT_EVERY = 15
#: How many of a DAG's newest backfills are searched for an earlier try's.
RECENT = 10


def _instant(text: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return None


def same_backfill(
    gateway: Caller, dag_id: str, from_date: str, to_date: str, conf: dict[str, Any],
) -> dict[str, Any] | None:
    """
    The newest of the DAG's recent backfills over the same range with the
    same conf (what an earlier try of the same command made), or None.
    """
    wanted = (_instant(from_date), _instant(to_date))
    listed = gateway.call("list_backfills", dag_id, {"limit": RECENT})
    for backfill in listed.get("backfills", []):
        if ((_instant(backfill.get("from_date")), _instant(backfill.get("to_date"))) == wanted
                and (backfill.get("dag_run_conf") or {}) == conf):
            return dict(backfill)
    return None


def count_runs(gateway: Caller, dag_id: str, backfill: dict[str, Any],
               states: list[str]) -> int:
    """How many backfill runs over ``backfill``'s range are in ``states``."""
    found = gateway.call("list_dag_runs", dag_id, {
        "run_type": "backfill", "state": states, "limit": 1,
        "logical_date_from": backfill["from_date"], "logical_date_to": backfill["to_date"]})
    return int(found.get("total", 0))


def failed_runs(gateway: Caller, dag_id: str, backfill: dict[str, Any],
                limit: int = 100) -> list[str]:
    """The ids of the backfill's runs that failed (at most ``limit``), oldest first."""
    found = gateway.call("list_dag_runs", dag_id, {
        "run_type": "backfill", "state": "failed", "limit": limit,
        "logical_date_from": backfill["from_date"], "logical_date_to": backfill["to_date"]})
    runs = sorted(found.get("dag_runs", []), key=lambda r: str(r.get("logical_date")))
    return [str(r.get("dag_run_id")) for r in runs]


def follow_backfill(
    gateway: Caller, dag_id: str, backfill: dict[str, Any], runs: int, timeout: float, *,
    progress: Progress, every: int = DEFAULT_EVERY, backoff: Backoff = Backoff(),
    clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
    rand: Callable[[], float] = random.random,
) -> dict[str, Any]:
    """
    The backfill once it has completed, with ``finished`` and ``failed``:
    how many of its runs ended, and failed.  Raises when
    ``timeout`` seconds pass first (`BackfillTimedOut`: it goes on in
    Airflow), or the `ClientError` that was not transient.
    """
    started = clock()
    deadline = started + timeout
    backfill_id = backfill["id"]
    state = "running"

    def look() -> tuple[dict[str, Any], int]:
        current = gateway.call("get_backfill", dag_id, backfill_id)
        return current, count_runs(gateway, dag_id, current, ["success", "failed"])

    while True:
        current, finished = call_with_retries(
            look, backoff=backoff, sleep=sleep, clock=clock, deadline=deadline,
            on_retry=progress.retrying, rand=rand)
        done = bool(current.get("completed"))
        paused = " (paused)" if current.get("is_paused") and not done else ""
        state = f"{finished} of {runs} runs finished{paused}"
        progress.seen(state, clock() - started, done)
        if done:
            completed = current
            failed = call_with_retries(
                lambda: count_runs(gateway, dag_id, completed, ["failed"]), backoff=backoff,
                sleep=sleep, clock=clock, on_retry=progress.retrying, rand=rand)
            return {**completed, "finished": finished, "failed": failed}
        if clock() + every >= deadline:
            raise BackfillTimedOut(dag_id, backfill_id, state, timeout)
        sleep(every)
