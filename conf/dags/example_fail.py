"""A DAG that fails on purpose, quickly: for trying what a caller sees of a failed run."""

from datetime import datetime, timezone

from airflow.providers.standard.operators.bash import BashOperator
from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG

with DAG(
    dag_id="example_fail",
    schedule=None,
    start_date=datetime(2024, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    tags=["example"],
    description="Fails on purpose (its task exits 1), with no retries.",
    default_args={"retries": 0},
):
    fail = BashOperator(
        task_id="fail_on_purpose",
        bash_command=(
            "echo 'example_fail: step 1 of 2 done'; "
            "echo 'example_fail: step 2 of 2: failing on purpose for {{ dag_run.conf.get(\"why\", \"a test\") }}' >&2; "
            "exit 1"
        ),
    )
    fail >> EmptyOperator(task_id="never_runs")
