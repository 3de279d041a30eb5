"""A two-task ETL-shaped DAG (extract, then load), tagged "etl"."""

from datetime import datetime, timezone

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG

with DAG(
    dag_id="etl_orders",
    schedule=None,
    start_date=datetime(2024, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    tags=["etl"],
    description="Extracts and loads orders (it only echoes).",
):
    extract = BashOperator(task_id="extract", bash_command="echo extracting {{ dag_run.conf.get('day', 'today') }}")
    load = BashOperator(task_id="load", bash_command="echo loading")
    extract >> load
