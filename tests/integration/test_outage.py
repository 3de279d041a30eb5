"""
Fault injection against a real Airflow: stop it in the middle of a load run,
start it again, and check that every call got an answer or a fault within
its deadline, that the gateway recovered by itself, that no trigger ran
twice, and that the gateway's memory stayed flat.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
import xmlrpc.client
from pathlib import Path
from typing import Any

from txairflowrpc.devstack.airflow import LocalAirflow
from txairflowrpc.devstack.pki import DevPKI

from .conftest import RunningGateway

DEADLINE = 15.0
UPSTREAM_FAULTS = {502, 503, 504}


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def runs_by_conf_tag(airflow: LocalAirflow, prefix: str) -> dict[str, list[str]]:
    """Ask Airflow directly: which runs of example_noop carry which tag."""
    token = airflow.token("admin", airflow.admin_password)
    tags: dict[str, list[str]] = {}
    offset = 0
    while True:
        req = urllib.request.Request(
            f"{airflow.base_url}/api/v2/dags/example_noop/dagRuns?limit=100&offset={offset}",
            headers={"Authorization": f"Bearer {token}"})
        page = json.load(urllib.request.urlopen(req, timeout=30))
        for run in page["dag_runs"]:
            tag = (run.get("conf") or {}).get("tag", "")
            if tag.startswith(prefix):
                tags.setdefault(tag, []).append(run["dag_run_id"])
        offset += 100
        if offset >= page["total_entries"]:
            return tags


def test_airflow_outage_and_recovery(tmp_path: Path, pki: DevPKI, airflow: LocalAirflow) -> None:
    gw = RunningGateway(tmp_path, pki, airflow)
    text = gw.config.read_text().replace("timeout_seconds = 20", (
        "timeout_seconds = 4\nbreaker_failures = 3\nbreaker_reset_seconds = 2\nretries = 2"))
    text = text.replace("rate_per_second = 10000", f"call_deadline_seconds = {DEADLINE}\n"
                        "rate_per_second = 10000")
    gw.config.write_text(text)
    gw.start()
    outcomes: list[tuple[str, float, float, Any]] = []  # (kind, start, end, result)
    stop = threading.Event()
    prefix = f"outage-{int(time.time())}"

    def load(worker: int) -> None:
        proxy = gw.proxy()
        for i in range(10000):  # bounded; stopped by the flag
            if stop.is_set():
                return
            # A trigger with a dag_run_id, retried by the client until it lands.
            run_id = f"{prefix}-{worker}-{i}"
            for attempt in range(50):
                started = time.monotonic()
                try:
                    result: Any = proxy.trigger_dag(
                        "example_noop", {"tag": f"{prefix}-id-{run_id}"}, {"dag_run_id": run_id})
                except xmlrpc.client.Fault as f:
                    result = f.faultCode
                except Exception as e:  # a transport error is a failure of the test
                    result = repr(e)
                outcomes.append(("trigger-id", started, time.monotonic(), result))
                if isinstance(result, dict) or stop.is_set():
                    break
                time.sleep(0.3)
            # A trigger without a dag_run_id: never retried, so at most one run.
            started = time.monotonic()
            try:
                result = proxy.trigger_dag("example_noop", {"tag": f"{prefix}-once-{worker}-{i}"})
            except xmlrpc.client.Fault as f:
                result = f.faultCode
            except Exception as e:
                result = repr(e)
            outcomes.append(("trigger", started, time.monotonic(), result))
            started = time.monotonic()
            try:
                result = proxy.get_dag("example_noop")
            except xmlrpc.client.Fault as f:
                result = f.faultCode
            except Exception as e:
                result = repr(e)
            outcomes.append(("get_dag", started, time.monotonic(), result))
            time.sleep(0.2)

    threads = [threading.Thread(target=load, args=(n,)) for n in range(3)]
    try:
        for t in threads:
            t.start()
        time.sleep(4)
        rss_before = rss_kib(gw.process.pid)
        airflow.stop()
        down_at = time.monotonic()  # from here on Airflow is really gone
        time.sleep(8)
        restart_at = time.monotonic()
        airflow.start()
        up_at = time.monotonic()
        recovered = None
        while time.monotonic() - up_at < 60:
            ok = [o for o in outcomes if o[1] > up_at and isinstance(o[3], dict)]
            if ok:
                recovered = ok[0][2] - up_at
                break
            time.sleep(0.5)
        time.sleep(3)
    finally:
        stop.set()
        for t in threads:
            t.join(DEADLINE + 30)
    rss_after = rss_kib(gw.process.pid)
    gw.stop()

    after = [o[3] if not isinstance(o[3], dict) else "ok" for o in outcomes if o[1] > up_at]
    assert recovered is not None, f"no recovery after Airflow came back: {after[-20:]}"
    transport_errors = [o for o in outcomes if isinstance(o[3], str)]
    assert transport_errors == []
    faults = [o[3] for o in outcomes if isinstance(o[3], int)]
    assert faults, "the outage was not noticed"
    assert set(faults) <= UPSTREAM_FAULTS, set(faults)
    slowest = max(o[2] - o[1] for o in outcomes)
    assert slowest < DEADLINE + 2, slowest
    during = [o[3] for o in outcomes if down_at < o[1] and o[2] < restart_at]
    assert during and all(isinstance(r, int) and r in UPSTREAM_FAULTS for r in during), during

    runs = runs_by_conf_tag(airflow, prefix)
    doubled = {tag: ids for tag, ids in runs.items() if len(ids) > 1}
    assert doubled == {}, doubled
    landed_ids = {o for o in runs if "-id-" in o}
    assert len(landed_ids) >= 3
    assert rss_after - rss_before < 40 * 1024, (rss_before, rss_after)
    print(f"\noutage: {len(outcomes)} calls, {len(faults)} faults "
          f"({sorted(set(faults))}), slowest {slowest:.1f} s, recovered {recovered:.1f} s "
          f"after Airflow answered, RSS {rss_before} -> {rss_after} KiB")
