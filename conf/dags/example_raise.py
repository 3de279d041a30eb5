"""
A Python task that raises, with a cause: for trying what a caller sees of a
Python exception (its type, message and traceback are in the task's log).

``conf`` ``{"rows": "12"}`` makes it succeed; anything else that is not a
whole number fails it: ``RuntimeError`` raised from ``int()``'s ``ValueError``.
"""

from datetime import datetime, timezone

from airflow.sdk import DAG, task

with DAG(
    dag_id="example_raise",
    schedule=None,
    start_date=datetime(2024, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    tags=["example"],
    description="A Python task that raises unless conf rows is a whole number.",
    default_args={"retries": 0},
):

    @task
    def load_rows(dag_run=None):  # type: ignore[no-untyped-def]
        rows = (dag_run.conf or {}).get("rows", "many")
        print(f"example_raise: loading {rows} rows")
        try:
            count = int(rows)
        except ValueError as e:
            raise RuntimeError(f"example_raise: cannot load {rows!r} rows") from e
        print(f"example_raise: loaded {count} rows")

    load_rows()
