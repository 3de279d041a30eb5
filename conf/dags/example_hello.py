"""A one-task DAG for trying the gateway: it greets conf["who"]."""

from datetime import datetime, timezone

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG

with DAG(
    dag_id="example_hello",
    schedule=None,
    start_date=datetime(2024, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    tags=["example"],
    description="Says hello to conf['who'].",
):
    BashOperator(
        task_id="say_hello",
        bash_command="echo \"hello from txairflowrpc to {{ dag_run.conf.get('who', 'nobody') }}\"",
    )
