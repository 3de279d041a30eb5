"""
The ``get_dag_run`` result as the gateway shapes it, for the servers that
stand in for it (A answers it fixed, C computes it the same way).
"""

from __future__ import annotations

import json
from typing import Any

from stub_airflow import run_document

#: The fields of a DAG run the gateway returns (txairflowrpc.airflow's list).
RUN_FIELDS = (
    "dag_id", "dag_run_id", "state", "run_type", "triggered_by",
    "triggering_user_name", "logical_date", "run_after", "queued_at",
    "start_date", "end_date", "duration", "data_interval_start",
    "data_interval_end", "conf", "note",
)


def shape_run(data: dict[str, Any]) -> dict[str, Any]:
    """Airflow's DAGRun → the XML-RPC struct: known fields, no nulls."""
    return {f: data[f] for f in RUN_FIELDS if data.get(f) is not None}


def gateway_run(dag_id: str, run_id: str) -> dict[str, Any]:
    return shape_run(json.loads(run_document(dag_id, run_id)))
