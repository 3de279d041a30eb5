"""
The second part: the gateway in front of a real Airflow 3.3.2 (``airflow
standalone`` on a throwaway PostgreSQL, both from `txairflowrpc.devstack`),
against Airflow's REST API called directly, for ``get_dag_run`` and
``trigger_dag`` (every trigger with a new run id), so that users see where
the time really goes.

``example_noop`` is paused first: a paused DAG accepts triggers and its
runs stay queued, so the scheduler does not run hundreds of runs on the
same two cores while the calls are measured.

Direct and through the gateway are measured one right after the other at
each concurrency, so that both see the same Airflow: it slows as the
triggered runs pile up, and a whole part's drift once fell on the gateway's
side only.  The gateway's own /metrics, read before and after each of its
points, say how long Airflow took to answer it and how long its audit
writes took (`GatewayTimes`): what of a call is Airflow's.
"""

from __future__ import annotations

import json
import secrets
import time
import urllib.request
from pathlib import Path
from typing import Callable, ClassVar, Iterator

import attrs

from prometheus_client.parser import text_string_to_metric_families

from clients import xmlrpc_body
from gatewayproc import Refused, create_token, gateway_config, start_gateway
from lineup import rpc_target
from loadgen import Point, Request, Target, _wrk, measure
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


class GatewayTimes:
    """
    A gateway's histograms' sums and counts from its /metrics (read with
    prometheus_client's parser): `since` gives the mean times, in ms, of
    Airflow's answers (``airflow``) and of audit writes (``audit``) between
    two readings.
    """

    SERIES: ClassVar[dict[str, str]] = {"airflow": "airflowrpc_upstream_request_duration_seconds",
              "audit": "airflowrpc_audit_write_duration_seconds"}

    def __init__(self, url: str) -> None:
        self._url = url

    def read(self) -> dict[str, tuple[float, float]]:
        with urllib.request.urlopen(self._url, timeout=10) as r:
            text = r.read().decode()
        totals = {name: [0.0, 0.0] for name in self.SERIES}
        for family in text_string_to_metric_families(text):
            for name, metric in self.SERIES.items():
                if family.name != metric:
                    continue
                for sample in family.samples:  # every label set (GET, POST) summed
                    if sample.name == metric + "_sum":
                        totals[name][0] += sample.value
                    elif sample.name == metric + "_count":
                        totals[name][1] += sample.value
        return {name: (total, count) for name, (total, count) in totals.items()}

    @staticmethod
    def since(before: dict[str, tuple[float, float]],
              after: dict[str, tuple[float, float]]) -> dict[str, float]:
        means = {}
        for name in after:
            total = after[name][0] - before[name][0]
            count = after[name][1] - before[name][1]
            if count:
                means[name] = 1000 * total / count
        return means


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

            port, health = free_port(), free_port()
            config = gateway_config(work / "gateway-airflow", port=port, tls=pki.directory,
                                    airflow=airflow.base_url, password=airflow.gateway_password,
                                    fragments=(f"[health]\nport = {health}\n",))
            token = create_token(config)
            gateway = start_gateway(processes, "gateway-airflow", config, accepts(port))
            if isinstance(gateway, Refused):
                raise RuntimeError(f"gateway refused its config: {gateway.reason}")
            airflow_pid = airflow.process.pid
            times = GatewayTimes(f"http://127.0.0.1:{health}/metrics")
            runs = f"/api/v2/dags/{DAG}/dagRuns"
            stamp = time.strftime("%H%M%S")
            cases = [
                ("get_dag_run", Target(
                    "Airflow REST", airflow.base_url, (Request("GET", f"{runs}/{READ_RUN}"),),
                    auth=f"Bearer {jwt}", content_type="application/json",
                    expect='"dag_run_id"'),
                 rpc_target("gateway → Airflow", port, f"Bearer {token}",
                            xmlrpc_body("get_dag_run", DAG, READ_RUN))),
                ("trigger_dag", Target(
                    "Airflow REST", airflow.base_url, (Request(
                        "POST", runs,
                        '{"dag_run_id": "{ID}", "logical_date": null, "conf": {}}'),),
                    auth=f"Bearer {jwt}", content_type="application/json",
                    expect='"dag_run_id"'),
                 rpc_target("gateway → Airflow", port, f"Bearer {token}",
                            xmlrpc_body("trigger_dag", DAG, {}, {"dag_run_id": "{ID}"}))),
            ]
            for method, direct, via_gateway in cases:
                for c in concurrencies:
                    yield attrs.evolve(
                        measure(direct, airflow_pid, c, seconds=seconds, warmup=warmup,
                                prefix=f"b{stamp}-rest-{c}", also={"Airflow": airflow_pid}),
                        server=f"{method}: {direct.name}")
                    if warmup > 0:  # here, so that the means cover the measured calls only
                        _wrk(via_gateway, c, warmup, f"b{stamp}-gw-{c}w")
                    before = times.read()
                    point = measure(via_gateway, gateway.pid, c, seconds=seconds, warmup=0,
                                    prefix=f"b{stamp}-gw-{c}", also={"Airflow": airflow_pid})
                    yield attrs.evolve(point, server=f"{method}: {via_gateway.name}",
                                       inside_ms=times.since(before, times.read()))
            processes.stop(gateway)
        finally:
            airflow.stop()

