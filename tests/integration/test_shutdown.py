"""
SIGTERM with calls in flight, against the real twistd and Airflow: no new
connection, the calls finish or are cut off at ``limits.shutdown_seconds``,
every one is answered and recorded, the trail is flushed, and twistd exits 0.
"""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
import xmlrpc.client
from pathlib import Path
from typing import Any

import pytest

from txairflowrpc.devstack.airflow import LocalAirflow
from txairflowrpc.devstack.pki import DevPKI

from .conftest import RunningGateway, audit_records


def test_sigterm_answers_and_records_every_call_in_flight(
    tmp_path: Path, pki: DevPKI, airflow: LocalAirflow, gateway: RunningGateway,
) -> None:
    gw = RunningGateway(tmp_path, pki, airflow)
    gw.config.write_text(gw.config.read_text().replace(
        "max_in_flight = 1000", "max_in_flight = 1000\nshutdown_seconds = 4"))
    gw.start()
    admin = gateway.proxy()  # another gateway, to set Airflow up and back
    run_id = f"held-{secrets.token_hex(4)}"
    admin.pause_dag("example_noop")  # its runs stay queued: a wait on one never ends by itself
    try:
        admin.trigger_dag("example_noop", {}, {"dag_run_id": run_id})
        answers: dict[str, Any] = {}

        def call(name: str, method: str, *args: Any) -> None:
            try:
                answers[name] = getattr(gw.proxy(), method)(*args)
            except xmlrpc.client.Fault as fault:
                answers[name] = fault
            except Exception as e:  # no answer at all: the failure this test is about
                answers[name] = e

        threads = [threading.Thread(target=call, args=(f"wait{i}", "wait_dag_run",
                                                       "example_noop", run_id, 300))
                   for i in range(3)]
        threads.append(threading.Thread(target=call, args=(
            "trigger", "trigger_dag", "example_hello", {}, {"dag_run_id": f"t-{run_id}"})))
        for t in threads:
            t.start()
        # All four connected (a request that comes in after SIGTERM on an open
        # connection is answered 503 too, so that is all this waits for).
        wait_for(lambda: counters(gw)["open_connections"] >= 4)
        assert gw.process is not None
        gw.process.send_signal(signal.SIGTERM)
        # A second SIGTERM while the calls drain (as `kill -TERM -- -PGID` and a
        # launcher passing it on send) changes nothing: no critical traceback
        # of a second reactor.stop() (found by a newcomer on make run).
        wait_for(lambda: "Received SIGTERM" in gw.log.read_text())
        gw.process.send_signal(signal.SIGTERM)
        status = gw.process.wait(timeout=60)
        for t in threads:
            t.join(30)
    finally:
        admin.unpause_dag("example_noop")
    assert status == 0
    log = gw.log.read_text()
    assert "SIGTERM while stopping: the shutdown goes on" in log, log
    assert "ReactorNotRunning" not in log and "critical" not in log, log
    for i in range(3):
        fault = answers[f"wait{i}"]
        assert isinstance(fault, xmlrpc.client.Fault), fault
        assert fault.faultCode == 503 and "shutting down" in fault.faultString
    assert not isinstance(answers["trigger"], Exception) or isinstance(
        answers["trigger"], xmlrpc.client.Fault), answers["trigger"]
    records = audit(gw)
    waits = [r for r in records if r.get("kind") == "call" and r["method"] == "wait_dag_run"]
    assert [(r["outcome"], r["fault_code"]) for r in waits] == [("fault", 503)] * 3
    assert [r for r in records if r.get("kind") == "call" and r["method"] == "trigger_dag"]
    assert records[-1].get("event") in ("service.stop", "audit.checkpoint")
    assert any(r.get("event") == "service.stop" for r in records)
    out = subprocess.run([str(airflowrpc_cli()), "audit", "verify", str(gw.audit_path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr  # whole, and no intent left open
    with pytest.raises(OSError):  # and the port is closed
        gw.proxy().ping()


def counters(gw: RunningGateway) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{gw.health_port}/readyz", timeout=10) as r:
        return json.load(r)["counters"]


def wait_for(check: Any, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "not reached in time"
        time.sleep(0.1)


def audit(gw: RunningGateway) -> list[dict[str, Any]]:
    if not gw.audit_path.exists():
        return []
    return audit_records(gw.audit_path)


def airflowrpc_cli() -> Path:
    import sys

    return Path(sys.executable).parent / "airflowrpc"
