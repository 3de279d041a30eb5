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
each concurrency, the gateway first every other time, so that both see the
same Airflow: it slows as the triggered runs pile up, and a whole part's
drift once fell on the gateway's side only.  The gateway's own /metrics,
read before and after each of its points, say per call how many exchanges
with Airflow and audit writes it waited for and how long each took
(`GatewayTimes`): what of a call is Airflow's.
"""

from __future__ import annotations

import itertools
import json
import secrets
import time
import urllib.request
from pathlib import Path
from typing import Callable, Iterator

import attrs

from prometheus_client.parser import text_string_to_metric_families

from clients import xmlrpc_body
from gatewayproc import Refused, create_token, gateway_config, start_gateway
from lineup import rpc_target
from loadgen import Point, Request, Target, _settled, _wrk, measure
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


#: A gateway's running totals from its /metrics: calls answered, then the
#: sum (s) and count of Airflow's answers, then of its audit writes.
Reading = tuple[float, float, float, float, float]


class GatewayTimes:
    """
    Where a gateway's calls spent their time, by its own /metrics (read with
    prometheus_client's parser): the calls it answered, the exchanges with
    Airflow and the audit writes (batches) with their durations.  Readings
    are taken once the totals stop moving (`settled`), so that two of them
    bracket exactly the calls in between, those wrk abandoned included.
    """

    UPSTREAM = "airflowrpc_upstream_request_duration_seconds"
    AUDIT = "airflowrpc_audit_write_duration_seconds"
    CALLS = "airflowrpc_calls"

    def __init__(self, url: str) -> None:
        self._url = url

    def read(self) -> Reading:
        with urllib.request.urlopen(self._url, timeout=10) as r:
            text = r.read().decode()
        found = {name: 0.0 for name in (self.CALLS + "_total", self.UPSTREAM + "_sum",
                                        self.UPSTREAM + "_count", self.AUDIT + "_sum",
                                        self.AUDIT + "_count")}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:  # every label set (method, GET and POST) summed
                if sample.name in found:
                    found[sample.name] += sample.value
        return tuple(found.values())  # type: ignore[return-value]

    def settled(self) -> Reading:
        return _settled(self.read)  # type: ignore[arg-type, return-value]

    @staticmethod
    def between(before: Reading, after: Reading) -> dict[str, float]:
        """
        Per call answered in between: Airflow exchanges and their mean
        duration, audit writes waited for and their mean duration (ms).
        """
        calls, up_s, up_n, audit_s, audit_n = (a - b for a, b in zip(after, before))
        if not calls:
            return {}
        view = {"upstream_per_call": up_n / calls, "audit_per_call": audit_n / calls}
        if up_n:
            view["airflow_ms"] = 1000 * up_s / up_n
        if audit_n:
            view["audit_ms"] = 1000 * audit_s / audit_n
        return view


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
            def through_gateway(target: Target, c: int) -> Point:
                if warmup > 0:  # here, so that the readings bracket the measured calls only
                    _wrk(target, c, warmup, f"b{stamp}-gw-{c}w")
                before = times.settled()
                point = measure(target, gateway.pid, c, seconds=seconds, warmup=0,
                                prefix=f"b{stamp}-gw-{c}", also={"Airflow": airflow_pid})
                view = times.between(before, times.settled())
                return attrs.evolve(point, upstream_per_call=view.pop("upstream_per_call", None),
                                    inside=view)

            for turn, ((method, direct, via_gateway), c) in enumerate(
                    itertools.product(cases, concurrencies)):
                # In turns, the gateway first every other time: Airflow slows as the
                # triggered runs pile up, and that must not fall on one side.
                gateway_first = turn % 2 == 1
                if gateway_first:
                    gw_point = through_gateway(via_gateway, c)
                rest_point = measure(direct, airflow_pid, c, seconds=seconds, warmup=warmup,
                                     prefix=f"b{stamp}-rest-{c}", also={"Airflow": airflow_pid})
                if not gateway_first:
                    gw_point = through_gateway(via_gateway, c)
                yield attrs.evolve(rest_point, server=f"{method}: {direct.name}")
                yield attrs.evolve(gw_point, server=f"{method}: {via_gateway.name}")
            processes.stop(gateway)
        finally:
            airflow.stop()

