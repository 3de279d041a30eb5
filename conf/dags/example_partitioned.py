"""
A partitioned DAG (a daily `CronPartitionTimetable`), so that there is one
to backfill whose runs carry a partition key and no logical date.
"""

from datetime import datetime, timezone

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG, CronPartitionTimetable

with DAG(
    dag_id="example_partitioned",
    schedule=CronPartitionTimetable("0 0 * * *", timezone="UTC"),
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    tags=["example"],
    description="Runs one partition a day; backfill it over past days (create_backfill).",
):
    BashOperator(
        task_id="report",
        bash_command="echo \"partition {{ dag_run.partition_key }}\"",
    )
