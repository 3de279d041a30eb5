"""
The four servers measured side by side, all running at once (idle ones
cost nothing), each its own process tree:

- A  twisted.web over TLS, one fixed XML-RPC reply (`servers/floor.py`);
- B  the gateway, ``twistd -n airflowrpc``, audit with fsync, tokens;
- C  SimpleXMLRPCServer + threads over TLS (`servers/threaded.py`);
- D  the stub Airflow's REST endpoint itself, over TLS, no gateway.

B and C call the same plain-HTTP stub Airflow, whose request counter
gives the upstream requests per call.
"""

from __future__ import annotations

import json
import secrets
import ssl
import subprocess
import sys
import urllib.request
from pathlib import Path

import attrs

from clients import xmlrpc_body
from gatewayproc import (AuditCalls, Refused, audit_path, create_token, gateway_config,
                         start_gateway)
from loadgen import Counts, Request, Target
from processes import Processes, accepts, free_port, wait_until
from txairflowrpc.devstack.pki import ClientFiles, DevPKI

HERE = Path(__file__).resolve().parent
PYTHON = sys.executable
DAG, RUN = "bench_dag", "bench-run-1"
XML_EXPECT, XML_FAULT = "<name>dag_run_id</name>", "<fault>"


def get_json(url: str, context: ssl.SSLContext | None = None) -> dict:
    with urllib.request.urlopen(url, timeout=10, context=context) as r:
        return json.load(r)


@attrs.define
class Stub:
    """The plain-HTTP stub Airflow B and C call."""

    process: subprocess.Popen
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stats(self) -> dict:
        return get_json(self.url + "/stats")

    def requests(self) -> int:
        return self.stats()["requests"]


@attrs.define
class Lineup:
    pki: DevPKI
    client: ClientFiles
    stub: Stub
    servers: dict[str, tuple[subprocess.Popen, Target]]
    counts: dict[str, Counts]  # (upstream requests, calls answered), for B and C
    gateway_token: str
    gateway_port: int

    def target(self, name: str) -> Target:
        return self.servers[name][1]

    def pid(self, name: str) -> int:
        return self.servers[name][0].pid


def rpc_target(name: str, port: int, auth: str, *bodies: str) -> Target:
    return Target(name, f"https://127.0.0.1:{port}",
                  tuple(Request("POST", "/RPC2", b) for b in bodies),
                  auth=auth, expect=XML_EXPECT, fault=XML_FAULT)


def start_stub(processes: Processes, name: str, tls: Path | None = None) -> Stub:
    port = free_port()
    argv = [PYTHON, str(HERE / "stub_airflow.py"), "--port", str(port)]
    if tls is not None:
        argv += ["--tls-cert", str(tls / "server.pem"), "--tls-key", str(tls / "server.key")]
    process, log = processes.start(name, argv)
    wait_until(accepts(port), 30, name, alive=process, log=log)
    return Stub(process, port)


def start_lineup(processes: Processes, work: Path) -> Lineup:
    pki = DevPKI.create(work / "tls")
    client = pki.client("bench")  # the gateway's principal "bench" (cert_cn)
    stub = start_stub(processes, "stub")
    body = xmlrpc_body("get_dag_run", DAG, RUN)
    servers: dict[str, tuple[subprocess.Popen, Target]] = {}

    port = free_port()
    process, log = processes.start("A-floor", [PYTHON, str(HERE / "servers" / "floor.py"),
                                               "--port", str(port), "--tls", str(pki.directory)])
    wait_until(accepts(port), 30, "A", alive=process, log=log)

    gw_port = free_port()
    config = gateway_config(work / "gateway", port=gw_port, tls=pki.directory,
                            airflow=stub.url, password="bench-password")
    token = create_token(config)
    servers["A"] = (process, rpc_target("A", port, f"Bearer {token}", body))
    gateway = start_gateway(processes, "B-gateway", config, accepts(gw_port))
    if isinstance(gateway, Refused):
        raise RuntimeError(f"the gateway refused the benchmark's config: {gateway.reason}")
    servers["B"] = (gateway, rpc_target("B", gw_port, f"Bearer {token}", body))
    # The same gateway, every call for a different run: nothing for identical
    # reads to share, so this row is the full cost of a call that reaches Airflow.
    servers["B/distinct"] = (gateway, rpc_target(
        "B/distinct", gw_port, f"Bearer {token}", xmlrpc_body("get_dag_run", DAG, "{ID}")))

    port = free_port()
    c_token = secrets.token_urlsafe(24)
    process, log = processes.start("C-threaded", [
        PYTHON, str(HERE / "servers" / "threaded.py"), "--port", str(port),
        "--tls", str(pki.directory), "--upstream", stub.url, f"--token={c_token}"])
    wait_until(accepts(port), 30, "C", alive=process, log=log)
    servers["C"] = (process, rpc_target("C", port, f"Bearer {c_token}", body))
    c_stats = f"https://localhost:{port}/stats"
    ca = ssl.create_default_context(cafile=str(pki.ca_file))
    b_calls = AuditCalls(audit_path(config.parent))
    counts: dict[str, Counts] = {
        "B": lambda: (stub.requests(), b_calls()),
        "B/distinct": lambda: (stub.requests(), b_calls()),
        "C": lambda: (stub.requests(), get_json(c_stats, ca)["served"]),
    }

    d = start_stub(processes, "D-stub-tls", tls=pki.directory)
    servers["D"] = (d.process, Target(
        "D", f"https://127.0.0.1:{d.port}",
        (Request("GET", f"/api/v2/dags/{DAG}/dagRuns/{RUN}"),),
        auth="Bearer stub", content_type="application/json", expect='"dag_run_id"'))
    return Lineup(pki, client, stub, servers, counts, token, gw_port)
