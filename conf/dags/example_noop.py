"""A DAG whose one task does nothing: cheap to trigger many times (load tests)."""

from datetime import datetime, timezone

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG

with DAG(
    dag_id="example_noop",
    schedule=None,
    start_date=datetime(2024, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    tags=["example"],
    description="Does nothing, quickly.",
):
    EmptyOperator(task_id="noop")
