"""
``airflowrpc backfill``'s work: finding the backfill an earlier try of the
same command made, following one until it has completed, and telling how
its runs ended.

Airflow runs one backfill of a DAG at a time and creates its runs at once.
Its API names no backfill on a run, so a backfill's runs are told apart as
the ``backfill`` runs over its range queued since it was created: an older
backfill's runs on the same dates are not its (with ``reprocess_behavior``
those dates are queued again, and so count).  A partitioned DAG's runs
have a partition key and no logical date, so no range of logical dates
holds them: for it, the ``backfill`` runs without a logical date queued
while the backfill ran (one that runs a partition again makes a new run
beside the old, which stays as it was).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import attrs

from ..core.jsonvalues import json_equal
from .errors import BackfillTimedOut, BadAnswer, OutOfTime
from .retry import Backoff, call_with_retries
from .transport import Caller
from .waiting import Progress

#: Seconds between two looks at a backfill by default.
DEFAULT_EVERY = 15
#: How many of a DAG's newest backfills are searched for an earlier try's.
RECENT = 10
#: Runs asked for per page when a backfill's runs are told, and the most
#: pages read (found by review: a gateway's total of 2**31-1 kept the count
#: paging for ever); a count cut there finds fewer runs: no success.
PAGE = 100
MAX_PAGES = 1000
#: Failed runs named on stderr at most.
NAMED = 20


def _instant(text: Any) -> datetime | None:
    """An instant Airflow gave (with its zone); None for anything else, a naive time too."""
    try:
        found = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return None
    return found if found.tzinfo is not None else None


def same_backfill(
    gateway: Caller, dag_id: str, from_date: str, to_date: str, conf: dict[str, Any] | None,
    options: dict[str, Any], *, completed_too: bool,
) -> dict[str, Any] | None:
    """
    The newest of the DAG's recent backfills that this command would have
    made (the same range, conf, ``reprocess_behavior`` and, if asked for,
    ``max_active_runs``), or None.  Only one that has not completed unless
    ``completed_too``: after a 409 or a lost answer the backfill in the way
    is the DAG's one running.
    """
    wanted = (_instant(from_date), _instant(to_date))
    reprocess = options.get("reprocess_behavior", "none")
    listed = gateway.call("list_backfills", dag_id, {"limit": RECENT})
    for backfill in listed.get("backfills", []):
        if not isinstance(backfill, dict):
            continue  # no struct: no backfill this command made
        if not completed_too and backfill.get("completed"):
            continue
        if ((_instant(backfill.get("from_date")), _instant(backfill.get("to_date"))) == wanted
                and json_equal(backfill.get("dag_run_conf") or {}, conf or {})
                and backfill.get("reprocess_behavior", "none") == reprocess
                and ("max_active_runs" not in options
                     or backfill.get("max_active_runs") == options["max_active_runs"])):
            return dict(backfill)
    return None


@attrs.frozen
class Tally:
    """How a backfill's runs stand."""

    runs: int
    succeeded: int
    failed: int
    #: The first `NAMED` failed runs' ids, by logical date (or partition key).
    failed_ids: tuple[str, ...]


def tally(gateway: Caller, dag_id: str, backfill: dict[str, Any]) -> Tally:
    """The backfill's runs (see the module doc), page by page."""
    since = _instant(backfill.get("created_at"))
    mine = _backfill_runs(gateway, dag_id, since, None, {
        "logical_date_from": backfill["from_date"], "logical_date_to": backfill["to_date"]})
    if not mine:
        # None over its range: a partitioned DAG's (found by review: its
        # count was always 0, so a completed backfill failed, and one found
        # again had 0 runs, all "succeeded").
        mine = [run for run in _backfill_runs(
                    gateway, dag_id, since, _instant(backfill.get("completed_at")), {})
                if run.get("logical_date") is None]
    failed = sorted((r for r in mine if r.get("state") == "failed"),
                    key=lambda r: str(r.get("logical_date") or r.get("partition_key")))
    return Tally(len(mine), sum(1 for r in mine if r.get("state") == "success"), len(failed),
                 tuple(str(r.get("dag_run_id")) for r in failed[:NAMED]))


def _backfill_runs(
    gateway: Caller, dag_id: str, since: datetime | None, until: datetime | None,
    filters: dict[str, Any],
) -> list[dict[str, Any]]:
    """The DAG's ``backfill`` runs of ``filters`` queued from ``since`` to ``until``, paged."""
    found: dict[Any, dict[str, Any]] = {}  # by run id: a page may repeat a run
    offset = pages = 0
    while True:
        page = gateway.call("list_dag_runs", dag_id, {
            "run_type": "backfill", "limit": PAGE, "offset": offset, **filters})
        runs = page.get("dag_runs", [])
        if not isinstance(runs, list) or not all(isinstance(run, dict) for run in runs):
            raise BadAnswer("list_dag_runs", "its dag_runs are not an array of structs")
        for run in runs:
            queued = _instant(run.get("queued_at"))
            if since is None or (queued is not None and queued >= since
                                 and (until is None or queued <= until)):
                found[str(run.get("dag_run_id", id(run)))] = run
        total = page.get("total", 0)
        if type(total) is not int:
            raise BadAnswer("list_dag_runs", "its total is not a count")
        offset += len(runs)
        pages += 1
        if not runs or offset >= total or pages >= MAX_PAGES:
            return list(found.values())


def follow_backfill(
    gateway: Caller, dag_id: str, backfill: dict[str, Any], timeout: float, *,
    progress: Progress, every: int = DEFAULT_EVERY, backoff: Backoff | None = None,
    clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
    rand: Callable[[], float] = random.random, deadline: float | None = None,
    on_answer: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """
    The backfill once it has completed, looked at every ``every`` seconds
    and a last time at the deadline.  Raises `BackfillTimedOut` (with the
    backfill as last seen) when ``timeout`` seconds pass first, or
    ``deadline`` (a ``clock`` time: the command's) comes, also while an
    outage is being retried: it goes on in Airflow; or the `ClientError`
    that was not transient.  ``on_answer`` hears of each look's answer.
    """
    backoff = backoff or Backoff()
    started = clock()
    deadline = started + timeout if deadline is None else deadline
    backfill_id = backfill["id"]
    current = backfill
    state = "unknown"
    while True:
        try:
            current = call_with_retries(
                lambda: gateway.call("get_backfill", dag_id, backfill_id), backoff=backoff,
                sleep=sleep, clock=clock, deadline=deadline, on_retry=progress.retrying,
                rand=rand)
        except OutOfTime as e:
            why = e.cause.message if e.cause is not None else e.message
            raise BackfillTimedOut(dag_id, backfill_id, state, timeout, current,
                                   cause=why) from None
        if on_answer is not None:
            on_answer(current)
        done = bool(current.get("completed"))
        state = "completed" if done else "paused" if current.get("is_paused") else "running"
        progress.seen(state, clock() - started, done)
        if done:
            return current
        left = deadline - clock()
        if left <= 0:
            raise BackfillTimedOut(dag_id, backfill_id, state, timeout, current)
        sleep(min(every, left))
