"""
Airflow's documents in the gateway's own shapes.

Only the fields named here leave the upstream layer, in Airflow's own
names; anything else Airflow sends (file locations, internal tokens) stays
inside.  A document that is not what Airflow's API promises is an
`errors.UpstreamError`.
"""

from __future__ import annotations

import json
from typing import Any, Iterable

from ..core import errors

#: Fields of a DAG, DAG run and task instance that the gateway returns, in
#: Airflow's own names.  Anything else Airflow sends (file locations,
#: internal tokens) stays inside.
_DAG_FIELDS = (
    "dag_id", "dag_display_name", "description", "is_paused", "is_stale",
    "owners", "timetable_summary", "timetable_description", "max_active_runs",
    "max_active_tasks", "has_import_errors", "last_parsed_time",
    "next_dagrun_logical_date", "next_dagrun_run_after",
)
_RUN_FIELDS = (
    "dag_id", "dag_run_id", "state", "run_type", "triggered_by",
    "triggering_user_name", "logical_date", "run_after", "queued_at",
    "start_date", "end_date", "duration", "data_interval_start",
    "data_interval_end", "conf", "note",
)
_TASK_INSTANCE_FIELDS = (
    "task_id", "task_display_name", "dag_id", "dag_run_id", "map_index",
    "state", "try_number", "max_tries", "operator", "operator_name",
    "start_date", "end_date", "duration", "queued_when", "pool", "queue",
)
_BACKFILL_FIELDS = (
    "id", "dag_id", "dag_display_name", "from_date", "to_date", "dag_run_conf",
    "is_paused", "reprocess_behavior", "max_active_runs", "created_at",
    "completed_at", "updated_at",
)


def _unexpected() -> errors.UpstreamError:
    return errors.UpstreamError("Airflow answered with an unexpected document")


def _pick(data: Any, fields: Iterable[str], named_by: tuple[str, ...] = ()) -> dict[str, Any]:
    """``fields`` of ``data``; the ``named_by`` ones must be there, as strings."""
    if not isinstance(data, dict) or not all(isinstance(data.get(f), str) for f in named_by):
        raise _unexpected()
    return {f: data[f] for f in fields if data.get(f) is not None}


def shape_dag(data: Any) -> dict[str, Any]:
    dag = _pick(data, _DAG_FIELDS, named_by=("dag_id",))
    tags = data.get("tags") or []
    if not isinstance(tags, list):
        raise _unexpected()
    dag["tags"] = sorted(
        t["name"] if isinstance(t, dict) else str(t)
        for t in tags
        if (isinstance(t, dict) and isinstance(t.get("name"), str)) or isinstance(t, str)
    )
    return dag


def shape_run(data: Any) -> dict[str, Any]:
    """
    A run, with ``conf_json``: its conf as JSON text, exactly as Airflow
    holds it (nulls, big integers and array positions included), next to
    the ``conf`` struct that XML-RPC renders for the caller.
    """
    run = _pick(data, _RUN_FIELDS)
    if isinstance(data.get("conf"), dict):
        run["conf_json"] = json.dumps(data["conf"], separators=(",", ":"), ensure_ascii=False)
    return run


def shape_task_instance(data: Any) -> dict[str, Any]:
    ti = _pick(data, _TASK_INSTANCE_FIELDS)
    tries = ti.get("try_number")
    if tries is not None and (not isinstance(tries, int) or isinstance(tries, bool)):
        raise _unexpected()  # the gateway counts with it (the latest try's log)
    return ti


def shape_backfill(data: Any) -> dict[str, Any]:
    """
    A backfill, with ``completed`` (true once it has ended or been
    cancelled) and ``dag_run_conf_json`` (its runs' conf as JSON text, as a
    run's ``conf_json``).
    """
    backfill = _pick(data, _BACKFILL_FIELDS, named_by=("dag_id",))
    if not isinstance(backfill.get("id"), int) or isinstance(backfill["id"], bool):
        raise _unexpected()  # the gateway names backfills by it
    backfill["completed"] = backfill.get("completed_at") is not None
    if isinstance(data.get("dag_run_conf"), dict):
        backfill["dag_run_conf_json"] = json.dumps(data["dag_run_conf"], separators=(",", ":"),
                                                   ensure_ascii=False)
    return backfill


def items(data: Any, key: str) -> tuple[list[Any], int]:
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        raise _unexpected()
    total = data.get("total_entries")
    return data[key], total if isinstance(total, int) else len(data[key])


def format_log_content(content: Any) -> list[str]:
    """
    Airflow 3's structured log entries (or plain text) as text lines: an
    entry's time, level and event, and, for an exception (``error_detail``),
    its traceback as Python prints one (`format_exception_chain`).
    """
    if isinstance(content, str):
        return content.splitlines()
    if not isinstance(content, list):
        return []
    lines = []
    for entry in content:
        if isinstance(entry, str):
            lines.append(entry)
        elif isinstance(entry, dict):
            parts = [
                str(entry[k]) for k in ("timestamp", "level") if entry.get(k) is not None
            ]
            if parts and "level" in entry:
                parts[-1] = f"[{parts[-1]}]"
            event = entry.get("event")
            parts.append("" if event is None else str(event))
            lines.append(" ".join(parts))
            if "error_detail" in entry:
                lines.extend(format_exception_chain(entry["error_detail"]))
    return lines


#: Exceptions of a chain, and of a group below one, rendered at most (the
#: rest are counted); a task's traceback needs a few.
MAX_EXCEPTIONS = 16
#: Frames of one exception rendered at most, the last ones (nearest the raise).
MAX_FRAMES = 50
_CAUSE = "The above exception was the direct cause of the following exception:"
_CONTEXT = "During handling of the above exception, another exception occurred:"


def format_exception_chain(detail: Any, depth: int = 0) -> list[str]:
    """
    The traceback of a log entry's ``error_detail`` as Python prints it,
    the exception raised last at the end (where a log's tail shows it).
    Found by trying a Python task that raises: Airflow 3.3.2 puts the
    exception of "Task failed with exception" only there (structlog's
    dict of the chain, the raised one first, each ``is_cause`` of the one
    before it), so a caller saw that the task failed but not why.
    Whatever the shape, never fails: what it cannot read is left out.
    """
    if not isinstance(detail, list) or depth > 2:
        return []
    stacks = [s for s in detail[:MAX_EXCEPTIONS] if isinstance(s, dict)]
    lines: list[str] = []
    for index in range(len(stacks) - 1, -1, -1):  # the first cause first, as Python prints
        lines.extend(_one_exception(stacks[index], depth))
        if index:  # the one printed next was raised from this one, or while it was handled
            lines.extend(["", _CAUSE if stacks[index].get("is_cause") else _CONTEXT, ""])
    if len(detail) > MAX_EXCEPTIONS:
        lines.append(f"[txairflowrpc: {len(detail) - MAX_EXCEPTIONS} more chained "
                     "exceptions left out]")
    return lines


def _one_exception(stack: dict[str, Any], depth: int) -> list[str]:
    """One exception of a chain: its frames, then its type and message (and notes)."""
    lines = ["Traceback (most recent call last):"]
    frames = stack.get("frames")
    frames = [f for f in frames if isinstance(f, dict)] if isinstance(frames, list) else []
    if len(frames) > MAX_FRAMES:
        lines.append(f"  [txairflowrpc: {len(frames) - MAX_FRAMES} frames left out]")
    for frame in frames[-MAX_FRAMES:]:
        lines.append(f'  File "{frame.get("filename", "?")}", line {frame.get("lineno", "?")}, '
                     f'in {frame.get("name", "?")}')
    kind = str(stack.get("exc_type") or "Exception")
    value = stack.get("exc_value")
    text = "" if value is None else str(value)
    said = text.splitlines() or [""]
    lines.append(f"{kind}: {said[0]}" if text else kind)
    lines.extend(said[1:])
    notes = stack.get("exc_notes")
    if isinstance(notes, list):
        lines.extend(str(note) for note in notes[:MAX_EXCEPTIONS])
    if stack.get("is_group") and isinstance(stack.get("exceptions"), list):
        for index, inner in enumerate(stack["exceptions"][:MAX_EXCEPTIONS], 1):
            chain = [inner] if isinstance(inner, dict) else inner
            lines.append(f"  +-- {index} --")
            lines.extend(f"  | {line}" for line in format_exception_chain(chain, depth + 1))
    return lines
