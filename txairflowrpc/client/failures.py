"""
What went wrong in a failed run: its failed tasks and the end of their logs.

`failed_tasks` asks ``list_task_instances`` for the run's task instances
and ``get_task_log`` for the last lines of each failed one's latest try.
A log that cannot be had (no ``logs:read`` scope, not found, the gateway
busy) is reported as such, never as the run's outcome: the run failed
either way.
"""

from __future__ import annotations

import re
from typing import Any

import attrs

from ..core.shown import LAYOUT_CONTROLS
from .errors import ClientError
from .transport import Caller

#: Task instance states that mean the task itself failed (and has a log).
FAILED_STATES = ("failed",)
#: Most failed tasks whose logs are fetched and shown.
MAX_TASKS = 10
#: Socket timeout of the calls that gather the logs.
LOG_TIMEOUT = 120.0
#: The most of one log line shown; the rest is counted.
MAX_LINE = 2000
#: Control characters (ANSI escapes among them) other than tab, and the
#: characters that move or break the text around them.
_CONTROL = re.compile(f"[\\x00-\\x08\\x0a-\\x1f\\x7f-\\x9f{LAYOUT_CONTROLS}]")
#: A line that is only one of the log grouping markers Airflow writes
#: (``::group::Pre Execute``, ``::group::Post Execute``, ``::endgroup::``),
#: bare or after the ``<timestamp> [<level>]`` the gateway puts before a
#: log entry's event (``2026-01-01T00:00:00Z [info] ::endgroup::``).
_GROUP_MARKER = re.compile(r"(?:[0-9]\S* )?(?:\[\w+\] )?::(?:group::.*|endgroup::)\s*\Z")


def is_group_marker(line: str) -> bool:
    """
    Whether ``line`` is only an Airflow log grouping marker: it folds the log
    in Airflow's UI and says nothing of why a task failed, yet a failed
    task's log ends with ``::group::Post Execute`` and ``::endgroup::``.
    What is inside a group (the failure callbacks' output among it) is kept.
    """
    return _GROUP_MARKER.match(line) is not None


def quoted(line: str) -> str:
    """
    A task's log line as it is shown: after ``| ``, with control characters
    as ``?``, cut at `MAX_LINE` characters (the rest counted).  A CI runner reads lines of a job's output as commands
    (GitHub Actions: a line starting ``::``, such as ``::add-mask::`` or
    ``::stop-commands::``; GitLab: ``section_start`` after an escape), and a
    task's log is written by whoever controls the task: never let it
    command the pipeline.  Airflow's own ``::group::`` lines are left out of
    a tail (`is_group_marker`); any other line starting ``::`` is shown, not
    obeyed.
    """
    if len(line) > MAX_LINE:
        # Found by review: one 16-million-character line was 16 MB of a job's log.
        line = f"{line[:MAX_LINE]}... ({len(line) - MAX_LINE:,} more characters)"
    return "| " + _CONTROL.sub("?", line)


@attrs.frozen
class TaskTail:
    """The end of one failed task's log, or why it is missing."""

    task_id: str
    map_index: int
    try_number: int
    #: The last lines (at most the number asked for), Airflow's group
    #: markers left out; empty with a problem.
    lines: tuple[str, ...] = ()
    #: How many lines the whole log had, not counting group markers.
    total: int = 0
    #: Why there is no log to show, or None.
    problem: str | None = None


@attrs.frozen
class FailedTasks:
    """The failed tasks of a run (at most `MAX_TASKS` tailed) and the rest."""

    tails: tuple[TaskTail, ...]
    #: Failed task instances beyond MAX_TASKS, not tailed.
    more: int = 0
    #: Tasks that never ran because one upstream failed.
    upstream_failed: tuple[str, ...] = ()
    #: Why the task instances could not be listed, or None.
    problem: str | None = None


def _int(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def failed_tasks(gateway: Caller, dag_id: str, run_id: str, lines: int) -> FailedTasks:
    """The failed tasks of run ``run_id`` and the last ``lines`` lines of each log."""
    try:
        instances = gateway.call("list_task_instances", dag_id, run_id, timeout=LOG_TIMEOUT)
    except ClientError as e:
        return FailedTasks((), problem=e.message)
    instances = [ti for ti in instances if isinstance(ti, dict)]  # a struct each, as due
    failed = [ti for ti in instances if ti.get("state") in FAILED_STATES]
    upstream = sorted({str(ti.get("task_id")) for ti in instances
                       if ti.get("state") == "upstream_failed"})
    tails = []
    for ti in failed[:MAX_TASKS]:
        task_id = str(ti.get("task_id"))
        map_index = _int(ti.get("map_index"), -1)
        try_number = _int(ti.get("try_number"), 0)
        tails.append(_tail(gateway, dag_id, run_id, task_id, map_index, try_number, lines))
    return FailedTasks(tuple(tails), max(0, len(failed) - MAX_TASKS), tuple(upstream))


def _tail(
    gateway: Caller, dag_id: str, run_id: str, task_id: str, map_index: int, try_number: int,
    lines: int,
) -> TaskTail:
    args: tuple[Any, ...] = (dag_id, run_id, task_id, try_number if try_number >= 1 else None)
    if map_index >= 0:
        args += (map_index,)
    try:
        text = gateway.call("get_task_log", *args, timeout=LOG_TIMEOUT)
    except ClientError as e:
        return TaskTail(task_id, map_index, try_number, problem=e.message)
    all_lines = [line for line in str(text).splitlines() if not is_group_marker(line)]
    kept = all_lines[-lines:] if lines > 0 else []
    return TaskTail(task_id, map_index, try_number, tuple(kept), len(all_lines))


def _plain(text: object) -> str:
    """``text`` (from the gateway) with control characters as ``?``: it cannot start or colour a line."""
    return _CONTROL.sub("?", str(text))


def report(found: FailedTasks) -> list[str]:
    """
    ``found`` as lines for stderr; whatever in them came from the gateway
    (fault texts, task ids) has its control characters as ``?``, as the log
    lines have.
    """
    out: list[str] = []
    if found.problem is not None:
        return [f"cannot list the run's task instances: {_plain(found.problem)}"]
    if not found.tails:
        out.append("no task instance of the run failed (was the run marked failed by hand?)")
    for tail in found.tails:
        name = _plain(tail.task_id) + (f"[{tail.map_index}]" if tail.map_index >= 0 else "")
        attempt = f" (try {tail.try_number})" if tail.try_number >= 1 else ""
        if tail.problem is not None:
            out.append(f"task {name} failed{attempt}; its log: {_plain(tail.problem)}")
            continue
        shown = len(tail.lines)
        out.append(f"----- task {name} failed{attempt}: last {shown} of {tail.total} log "
                   f"lines -----")
        out.extend(quoted(line) for line in tail.lines)
        out.append(f"----- end of task {name} -----")
    if found.more:
        out.append(f"... and {found.more} more failed task instances (list_task_instances)")
    if found.upstream_failed:
        out.append("not run because an upstream task failed: "
                   + ", ".join(map(_plain, found.upstream_failed)))
    return out
