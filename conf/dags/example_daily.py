"""A daily DAG, so that there is one to backfill: it echoes its logical date."""

from datetime import datetime, timezone

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG

with DAG(
    dag_id="example_daily",
    schedule="@daily",
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    tags=["example"],
    description="Runs daily; backfill it over past days (create_backfill).",
):
    BashOperator(
        task_id="report",
        bash_command="echo \"report for {{ ds }} ({{ dag_run.conf.get('who', 'nobody') }})\"",
    )
