#!/usr/bin/env python3
"""
Drive Airflow through txairflowrpc with Python's standard library.

    export AIRFLOWRPC_URL=https://localhost:8443/RPC2 AIRFLOWRPC_CA=ca.pem
    export AIRFLOWRPC_CERT=client.pem AIRFLOWRPC_KEY=client.key   # or AIRFLOWRPC_TOKEN=arpc_...
    python3 airflowrpc_example.py nightly-2026-11-26

Triggers example_hello with the run id given (safe to retry), waits for the
run, prints its task log and shows how a fault's code is read.  Prints one
JSON object per line.
"""

import json
import os
import ssl
import sys
import xmlrpc.client

DAG, TASK = "example_hello", "say_hello"


def connect() -> xmlrpc.client.ServerProxy:
    ctx = ssl.create_default_context(cafile=os.environ["AIRFLOWRPC_CA"])
    if os.environ.get("AIRFLOWRPC_CERT"):
        ctx.load_cert_chain(os.environ["AIRFLOWRPC_CERT"], os.environ["AIRFLOWRPC_KEY"])
    headers = []
    if os.environ.get("AIRFLOWRPC_TOKEN"):
        headers.append(("Authorization", "Bearer " + os.environ["AIRFLOWRPC_TOKEN"]))
    return xmlrpc.client.ServerProxy(os.environ["AIRFLOWRPC_URL"], context=ctx, headers=headers)


def show(step: str, **fields: object) -> None:
    print(json.dumps({"step": step, **fields}), flush=True)


def main() -> None:
    run_id = sys.argv[1] if len(sys.argv) > 1 else os.environ["AIRFLOWRPC_RUN_ID"]
    rpc = connect()

    me = rpc.whoami()
    show("whoami", principal=me["principal"], authenticated_by=me["authenticated_by"])

    # With a dag_run_id a trigger may be retried: the retry finds the run
    # (created is false) instead of starting a second one.
    for step in ("trigger", "retry"):
        run = rpc.trigger_dag(DAG, {"who": "python"}, {"dag_run_id": run_id})
        show(step, dag_run_id=run["dag_run_id"], created=run["created"])

    run = rpc.wait_dag_run(DAG, run_id, 300)
    show("wait", dag_run_id=run["dag_run_id"], state=run["state"], finished=run["finished"])
    show("log", task_id=TASK, log=rpc.get_task_log(DAG, run_id, TASK))

    try:
        rpc.get_dag("no_such_dag")
    except xmlrpc.client.Fault as fault:
        show("fault", method="get_dag", code=fault.faultCode, message=fault.faultString)


if __name__ == "__main__":
    main()
