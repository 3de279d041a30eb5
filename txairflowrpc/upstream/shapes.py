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
    """Airflow 3's structured log entries (or plain text) as text lines."""
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
    return lines
