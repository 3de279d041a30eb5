"""
The second part: the gateway in front of a real Airflow 3.3.2 (``airflow
standalone`` on a throwaway PostgreSQL, both from `txairflowrpc.devstack`),
against Airflow's REST API called directly, for ``get_dag_run`` and
``trigger_dag`` (every trigger with a new run id), so that users see where
the time really goes.

``example_noop`` is paused first: a paused DAG accepts triggers and its
runs stay queued, so the scheduler does not run hundreds of runs on the
same two cores while the calls are measured.
"""

from __future__ import annotations

import json
import secrets
import time
import urllib.request
from pathlib import Path
from typing import Callable, Iterator

import attrs

from clients import xmlrpc_body
from gatewayproc import Refused, create_token, gateway_config, start_gateway
from lineup import rpc_target
from loadgen import Point, Request, Target, measure
from processes import Processes, accepts, free_port
from txairflowrpc.devstack.airflow import LocalAirflow
from txairflowrpc.devstack.pki import DevPKI
from txairflowrpc.devstack.postgres import LocalPostgres

DAG = "example_noop"
READ_RUN = "bench-read-1"


def _rest(airflow: LocalAirflow, method: str, path: str, token: str, body: object) -> dict:
    request = urllib.request.Request(
        airflow.base_url + path, method=method, data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as r:
        return json.load(r)


def real_airflow(processes: Processes, work: Path, pki: DevPKI, *, concurrencies: tuple[int, ...],
                 seconds: float, warmup: float, log: Callable[[str], None]) -> Iterator[Point]:
    """
    Start PostgreSQL, Airflow and a gateway; yield the measured points
    (direct and through the gateway, get then trigger); stop them all.
    """
    with LocalPostgres() as database:
        airflow = LocalAirflow(work / "airflow", free_port(), secrets.token_urlsafe(16),
                               database=database.url)
        try:
            log(f"starting Airflow 3.3.2 on PostgreSQL (log: {airflow.log_path}) ...")
            started = time.monotonic()
            airflow.start()
            airflow.wait_dags([DAG])
            log(f"Airflow up in {time.monotonic() - started:.0f} s")
            admin = airflow.token("admin", airflow.admin_password)
            _rest(airflow, "PATCH", f"/api/v2/dags/{DAG}?update_mask=is_paused", admin,
                  {"is_paused": True})
            _rest(airflow, "POST", f"/api/v2/dags/{DAG}/dagRuns", admin,
                  {"dag_run_id": READ_RUN, "logical_date": None, "conf": {}})
            jwt = airflow.token("gateway", airflow.gateway_password)

            port = free_port()
            config = gateway_config(work / "gateway-airflow", port=port, tls=pki.directory,
                                    airflow=airflow.base_url, password=airflow.gateway_password)
            token = create_token(config)
            gateway = start_gateway(processes, "gateway-airflow", config, accepts(port))
            if isinstance(gateway, Refused):
                raise RuntimeError(f"gateway refused its config: {gateway.reason}")
            airflow_pid = airflow.process.pid
            runs = f"/api/v2/dags/{DAG}/dagRuns"
            stamp = time.strftime("%H%M%S")
            cases = [
                ("get_dag_run", Target(
                    "Airflow REST", airflow.base_url, (Request("GET", f"{runs}/{READ_RUN}"),),
                    auth=f"Bearer {jwt}", content_type="application/json",
                    expect='"dag_run_id"'), airflow_pid),
                ("get_dag_run", rpc_target("gateway → Airflow", port, f"Bearer {token}",
                                           xmlrpc_body("get_dag_run", DAG, READ_RUN)),
                 gateway.pid),
                ("trigger_dag", Target(
                    "Airflow REST", airflow.base_url, (Request(
                        "POST", runs,
                        '{"dag_run_id": "{ID}", "logical_date": null, "conf": {}}'),),
                    auth=f"Bearer {jwt}", content_type="application/json",
                    expect='"dag_run_id"'), airflow_pid),
                ("trigger_dag", rpc_target(
                    "gateway → Airflow", port, f"Bearer {token}",
                    xmlrpc_body("trigger_dag", DAG, {}, {"dag_run_id": "{ID}"})),
                 gateway.pid),
            ]
            for method, target, pid in cases:
                for c in concurrencies:
                    via = "rest" if target.name.startswith("Airflow") else "gw"
                    point = measure(target, pid, c, seconds=seconds, warmup=warmup,
                                    prefix=f"b{stamp}-{via}-{c}",
                                    also={"Airflow": airflow_pid})
                    yield attrs.evolve(point, server=f"{method}: {target.name}")
            processes.stop(gateway)
        finally:
            airflow.stop()

