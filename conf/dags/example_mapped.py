"""
A mapped task (dynamic task mapping): three instances, ``count[0..2]``.

Each prints its item; ``conf`` ``{"fail_item": "1"}`` makes that item's
instance fail, for trying what a caller sees of one failed instance.
"""

from datetime import datetime, timezone

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG

with DAG(
    dag_id="example_mapped",
    schedule=None,
    start_date=datetime(2024, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    tags=["example"],
    description="One task mapped over three items; conf fail_item fails that item's instance.",
    default_args={"retries": 0},
):
    BashOperator.partial(
        task_id="count",
        bash_command=(
            'echo "example_mapped: item $ITEM"; '
            'test "$ITEM" != "{{ dag_run.conf.get("fail_item", "none") }}"'
        ),
    ).expand(env=[{"ITEM": "0"}, {"ITEM": "1"}, {"ITEM": "2"}])
