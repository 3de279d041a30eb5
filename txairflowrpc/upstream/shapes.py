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
    # A partitioned DAG's run (Airflow 3.2+): a partition instead of a logical date.
    "partition_key", "partition_date",
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
    the ``conf`` struct that XML-RPC renders for the caller.  In ASCII, with
    JSON's escapes: found by review, U+FFFE, U+FFFF and lone surrogates,
    which XML cannot carry, were dropped from it, and xmlrpc-c read no run
    whose conf held an emoji.
    """
    run = _pick(data, _RUN_FIELDS)
    if isinstance(data.get("conf"), dict):
        run["conf_json"] = json.dumps(data["conf"], separators=(",", ":"), ensure_ascii=True)
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
                                                   ensure_ascii=True)
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
    its traceback as Python prints one (`format_exception_chain`), at most
    `MAX_PAGE_TRACEBACK_LINES` of them for one page of the log; past that,
    each exception by its type and message alone (`exception_summary`).
    """
    if isinstance(content, str):
        return content.splitlines()
    if not isinstance(content, list):
        return []
    lines: list[str] = []
    traceback_lines = 0
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
                if traceback_lines < MAX_PAGE_TRACEBACK_LINES:
                    traceback = format_exception_chain(entry["error_detail"])
                    traceback_lines += len(traceback)
                else:
                    traceback = exception_summary(entry["error_detail"])
                lines.extend(traceback)
    return lines


#: Exceptions of one entry's ``error_detail`` rendered at most, its chain and
#: the groups in it together (each member of a group counts, whatever it is).
MAX_EXCEPTIONS = 32
#: Frames of one exception rendered at most, the last ones (nearest the raise).
MAX_FRAMES = 50
#: Lines of one entry's traceback at most (its end kept: the raised exception).
MAX_TRACEBACK_LINES = 1000
#: Lines of traceback on one page of a log, past which an entry's traceback is
#: its type and message alone: an exception's dict is written by whoever
#: writes the task, and found by review, 0.8 MB of nested groups became 1.3
#: million lines, 111 MB and a second of the reactor.
MAX_PAGE_TRACEBACK_LINES = 20_000
_CAUSE = "The above exception was the direct cause of the following exception:"
_CONTEXT = "During handling of the above exception, another exception occurred:"
#: What `str.splitlines` breaks a line at, each written as an escape instead.
_BREAKS = {ord(c): f"\\u{ord(c):04x}" for c in "\v\f\x1c\x1d\x1e\x85\u2028\u2029"}
_BREAKS.update({ord("\n"): "\\n", ord("\r"): "\\r"})


class _Budget:
    """How many exceptions one ``error_detail`` may still render, and how many it left out."""

    def __init__(self) -> None:
        self.exceptions = MAX_EXCEPTIONS
        self.left_out = 0


def exception_summary(detail: Any) -> list[str]:
    """The raised exception of an ``error_detail``, as its traceback's last line: type: message."""
    if not isinstance(detail, list) or not detail or not isinstance(detail[0], dict):
        return []
    stack = detail[0]
    if not isinstance(stack.get("exc_type"), str):
        return []
    return _raised(stack)[:1]


def format_exception_chain(detail: Any) -> list[str]:
    """
    The traceback of a log entry's ``error_detail`` as Python prints it,
    the exception raised last at the end (where a log's tail shows it).
    Found by trying a Python task that raises: Airflow 3.3.2 puts the
    exception of "Task failed with exception" only there (structlog's
    dict of the chain, the raised one first, each ``is_cause`` of the one
    before it), so a caller saw that the task failed but not why.
    Whatever the shape, never fails: what it cannot read is left out; at
    most `MAX_EXCEPTIONS` exceptions and `MAX_TRACEBACK_LINES` lines, each
    one line (what would break one is written as an escape).
    """
    budget = _Budget()
    lines = _chain(detail, budget, 0)
    if budget.left_out:
        lines.append(f"[txairflowrpc: {budget.left_out} more exceptions left out]")
    if len(lines) > MAX_TRACEBACK_LINES:
        cut = len(lines) - MAX_TRACEBACK_LINES + 1
        lines = [f"[txairflowrpc: {cut} lines of this traceback left out]",
                 *lines[-(MAX_TRACEBACK_LINES - 1):]]
    return lines


def _chain(detail: Any, budget: _Budget, depth: int) -> list[str]:
    """One chain: its exceptions, the first cause first, as Python prints them."""
    if not isinstance(detail, list) or depth > 2:
        return []
    stacks = []
    for index, stack in enumerate(detail):
        if budget.exceptions <= 0:
            budget.left_out += len(detail) - index
            break
        if isinstance(stack, dict) and isinstance(stack.get("exc_type"), str):
            budget.exceptions -= 1
            stacks.append(stack)  # the raised one and its nearest causes first
    lines: list[str] = []
    for index in range(len(stacks) - 1, -1, -1):
        lines.extend(_one_exception(stacks[index], budget, depth))
        if index:  # the one printed next was raised from this one, or while it was handled
            lines.extend(["", _CAUSE if stacks[index].get("is_cause") else _CONTEXT, ""])
    return lines


def _one_exception(stack: dict[str, Any], budget: _Budget, depth: int) -> list[str]:
    """One exception of a chain: its frames, then its type and message (and notes)."""
    lines = ["Traceback (most recent call last):"]
    frames = stack.get("frames")
    frames = [f for f in frames if isinstance(f, dict)] if isinstance(frames, list) else []
    if len(frames) > MAX_FRAMES:
        lines.append(f"  [txairflowrpc: {len(frames) - MAX_FRAMES} frames left out]")
    for frame in frames[-MAX_FRAMES:]:
        lines.append(f'  File "{_one_line(frame.get("filename", "?"))}", line '
                     f'{_one_line(frame.get("lineno", "?"))}, in {_one_line(frame.get("name", "?"))}')
    lines.extend(_raised(stack))
    notes = stack.get("exc_notes")
    if isinstance(notes, list):
        for note in notes[:MAX_FRAMES]:
            lines.extend(_one_line(line) for line in _text(note).splitlines())
    if stack.get("is_group") and isinstance(stack.get("exceptions"), list):
        members = stack["exceptions"]
        for index, inner in enumerate(members, 1):
            if budget.exceptions <= 0:  # every member counts, a chain or not
                budget.left_out += len(members) - index + 1
                break
            budget.exceptions -= 1
            chain = [inner] if isinstance(inner, dict) else inner
            lines.append(f"  +-- {index} --")
            lines.extend(f"  | {line}" for line in _chain(chain, budget, depth + 1))
    return lines


def _raised(stack: dict[str, Any]) -> list[str]:
    """What an exception says: ``Type: message``, then the message's other lines."""
    said = [_one_line(line) for line in _text(stack.get("exc_value")).splitlines()]
    kind = _one_line(stack["exc_type"])
    return [f"{kind}: {said[0]}" if said else kind, *said[1:]]


def _text(value: Any) -> str:
    """A value of the dict as text: a string or a number as it is, anything else by its type."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, (int, float, bool)):
        return str(value)
    return f"<{type(value).__name__}>"  # never str() of a deep structure


def _one_line(value: Any) -> str:
    """A value on one line: whatever `str.splitlines` would break it at, as an escape."""
    return _text(value).translate(_BREAKS)
