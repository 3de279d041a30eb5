"""
``[listen] workers = 2`` with the real ``twistd airflowrpc``, real TLS on
loopback and the real Airflow: both workers serve the one port, each writes
its own audit chain, the supervisor's admin listener speaks for both
(metrics under a worker label, readiness), a worker killed with ``kill -9``
is logged, counted and replaced while calls go on, SIGHUP reaches both (and a broken config reaches
neither), SIGTERM stops everything with status 0, and ``audit verify`` finds
both chains whole.  The steps run in order on one gateway.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import types
import urllib.error
import urllib.request
import xmlrpc.client
from pathlib import Path
from typing import Iterator

import pytest

from txairflowrpc.service.supervisor import HUNG_SECONDS
from txairflowrpc.service.workers import PING_SECONDS

from .conftest import TWISTD, RunningGateway, audit_records, client_context, free_port
from .test_deployment import AirflowHealth, Systemd
from .test_operations import SUPERVISOR_METRICS, alert_metric_names, scrape_port

AIRFLOWRPC = TWISTD.parent / "airflowrpc"


def free_ports(count: int) -> int:
    """
    The first of ``count`` consecutive free ports (the supervisor's admin
    listener is on the first, worker K's at +1+K).
    """
    for _ in range(100):
        first = free_port()
        taken = []
        try:
            for k in range(count):
                s = socket.socket()
                taken.append(s)
                s.bind(("127.0.0.1", first + k))
            return first
        except OSError:
            continue
        finally:
            for s in taken:
                s.close()
    raise AssertionError(f"no {count} consecutive free ports")


def two_workers(gateway: RunningGateway) -> RunningGateway:
    """``gateway`` with ``workers = 2``, its admin listeners on three free ports."""
    health = free_ports(3)
    text = gateway.config.read_text().replace(
        f"port = {gateway.port}\n", f"port = {gateway.port}\nworkers = 2\n", 1).replace(
        f"[health]\nport = {gateway.health_port}\n", f"[health]\nport = {health}\n", 1)
    assert f"port = {health}" in text and "workers = 2" in text
    gateway.config.write_text(text)
    gateway.health_port = health
    return gateway


def mounted(gateway: RunningGateway) -> RunningGateway:
    """
    ``gateway`` with its config reached as Kubernetes mounts a ConfigMap:
    ``conf/airflowrpc.toml`` -> ``..data/airflowrpc.toml``, ``..data`` -> ``..v1``.
    """
    mount = gateway.config.parent / "conf"
    (mount / "..v1").mkdir(parents=True)
    gateway.config.rename(mount / "..v1" / "airflowrpc.toml")
    (mount / "..data").symlink_to("..v1")
    (mount / "airflowrpc.toml").symlink_to("..data/airflowrpc.toml")
    gateway.config = mount / "airflowrpc.toml"
    return gateway


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory, pki, airflow) -> Iterator[RunningGateway]:
    # The systemd unit's log format: a worker's lines name it.
    gateway = mounted(two_workers(RunningGateway(
        tmp_path_factory.mktemp("workers-gw"), pki, airflow,
        twistd_args=("--logger", "txairflowrpc.service.logs.journal_observer"))))
    gateway.start()
    wait_for(lambda: "ready: 2 workers serving" in gateway.log.read_text(), "both workers ready")
    yield gateway
    gateway.stop()


def wait_for(condition, what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def fresh_call(gateway: RunningGateway, method: str = "get_dag", *args: object) -> object:
    """One call on a new connection (the kernel picks a worker for each)."""
    proxy = xmlrpc.client.ServerProxy(gateway.url,
                                      context=client_context(gateway.pki, gateway.client))
    try:
        return getattr(proxy, method)(*(args or ("example_hello",)))
    finally:
        proxy("close")()


def records(gateway: RunningGateway, index: int) -> list[dict]:
    path = gateway.audit_path.with_name(f"audit.w{index}.jsonl")
    return audit_records(path)


def worker_pids(gateway: RunningGateway) -> dict[int, int]:
    """The pid each worker was last started with, from the supervisor's log."""
    found = re.findall(r"worker (\d) started \(pid (\d+)\)", gateway.log.read_text())
    return {int(k): int(pid) for k, pid in found}


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie left for a busy init to reap does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def test_each_worker_names_itself_in_the_log(workers: RunningGateway) -> None:
    lines = workers.log.read_text().splitlines()
    for k in (0, 1):
        assert any(line.startswith(f"<6>[w{k}][txairflowrpc.service.notify] ready: listening")
                   for line in lines), f"worker {k}'s ready line"
    (ready,) = [line for line in lines if "ready: 2 workers serving" in line]
    assert ready.startswith("<6>[txairflowrpc.") and "[w" not in ready  # the supervisor's


def test_both_workers_serve_calls_each_on_its_own_chain(workers: RunningGateway) -> None:
    for _ in range(24):
        assert fresh_call(workers)["dag_id"] == "example_hello"
    served = {}
    for k in (0, 1):
        calls = [r for r in records(workers, k) if r.get("kind") == "call"]
        served[k] = len(calls)
        instances = {r["instance"] for r in calls}
        assert len(instances) == 1 and instances.pop().endswith(f"-w{k}"), instances
    assert served[0] + served[1] >= 24 and min(served.values()) > 0, served
    # Each worker's own admin listener is at health.port + 1 + K; the
    # supervisor's, at health.port, gives both under a worker label.
    get_dag = {"method": "get_dag", "outcome": "ok", "fault_code": ""}
    own = [scrape_port(workers.health_port + 1 + k)[("airflowrpc_calls_total",
                                                  frozenset(get_dag.items()))]
           for k in (0, 1)]
    merged = scrape_port(workers.health_port)
    for k in (0, 1):
        worker = {"worker": str(k)}
        assert merged[("airflowrpc_calls_total",
                       frozenset({**get_dag, **worker}.items()))] == own[k] > 0
        assert merged[("airflowrpc_worker_up", frozenset(worker.items()))] == 1
        assert merged[("airflowrpc_worker_restarts_total", frozenset(worker.items()))] == 0
    assert sum(own) >= 24 and merged[("airflowrpc_workers", frozenset())] == 2
    # The alert rules' supervisor metrics are there, with the labels they use.
    for name in alert_metric_names() & set(SUPERVISOR_METRICS):
        assert {k for key in merged if key[0] == name for k, _ in key[1]} == \
            SUPERVISOR_METRICS[name], name
    # Without a worker label: the supervisor's own gauge, its admin listener's refusals
    # and its own process.
    unlabelled = {key[0] for key in merged if "worker" not in dict(key[1])}
    own_names = {"airflowrpc_workers", "airflowrpc_admin_refusals_total"}
    assert unlabelled - own_names and all(
        name.startswith("process_") for name in unlabelled - own_names), unlabelled
    assert "airflowrpc_admin_refusals_total" in unlabelled
    assert merged[("process_resident_memory_bytes", frozenset())] > 0
    assert merged[("process_start_time_seconds", frozenset())] > 0
    status, ready = probe(workers.health_port, "/readyz")
    assert status == 200 and ready["ready"] is True, ready
    assert [ready["workers"][k]["answer"]["ready"] for k in "01"] == [True, True]
    print(f"\n24 calls on fresh connections: worker 0 served {served[0]}, worker 1 {served[1]}")


def probe(port: int, path: str) -> tuple[int, dict]:
    """An admin listener's JSON answer to ``path``, whatever its status."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=15) as page:
            return page.status, json.loads(page.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def sighup_reloads(gateway: RunningGateway, index: int) -> int:
    return sum(1 for r in records(gateway, index)
               if r.get("event") == "config.reload" and r.get("trigger") == "SIGHUP")


def test_sighup_reaches_every_worker_but_not_with_a_broken_config(
        workers: RunningGateway) -> None:
    assert workers.process is not None
    before = [sighup_reloads(workers, k) for k in (0, 1)]
    os.kill(workers.process.pid, signal.SIGHUP)
    wait_for(lambda: all(sighup_reloads(workers, k) == before[k] + 1 for k in (0, 1)),
             "a SIGHUP reload recorded by both workers", 30)

    good = workers.config.read_text()
    workers.config.write_text(good.replace("burst = 10000", "burst = 0"))
    try:
        os.kill(workers.process.pid, signal.SIGHUP)
        wait_for(lambda: "config reload (SIGHUP) rejected, the workers keep theirs: "
                 "limits.burst: must be at least 1" in workers.log.read_text(),
                 "the supervisor rejecting the broken config", 30)
        time.sleep(2)  # time for a SIGHUP, had one been passed on, to be recorded
        assert [sighup_reloads(workers, k) for k in (0, 1)] == [b + 1 for b in before]
    finally:
        workers.config.write_text(good)
    assert fresh_call(workers)["dag_id"] == "example_hello"


def test_a_config_mount_swapped_under_the_workers_is_read_through_its_link(
        workers: RunningGateway) -> None:
    """
    Found by review: the supervisor handed the workers the config's resolved
    path, gone once Kubernetes swaps ``..data`` to a new directory and removes
    the old: every reload was refused, and a dead worker never replaced (the
    next test kills one after this swap).
    """
    assert workers.process is not None
    mount = workers.config.parent
    (mount / "..v2").mkdir()
    (mount / "..v2" / "airflowrpc.toml").write_text(
        workers.config.read_text() + "\n# version 2\n")
    (mount / "..data_tmp").symlink_to("..v2")
    os.replace(mount / "..data_tmp", mount / "..data")
    shutil.rmtree(mount / "..v1")
    before = [sighup_reloads(workers, k) for k in (0, 1)]
    rejections = workers.log.read_text().count("rejected")
    os.kill(workers.process.pid, signal.SIGHUP)
    wait_for(lambda: all(sighup_reloads(workers, k) == before[k] + 1 for k in (0, 1)),
             "a SIGHUP reload recorded by both workers", 30)
    assert workers.log.read_text().count("rejected") == rejections
    assert fresh_call(workers)["dag_id"] == "example_hello"


def test_a_killed_worker_is_replaced_while_calls_go_on(workers: RunningGateway) -> None:
    old = worker_pids(workers)
    os.kill(old[1], signal.SIGKILL)
    wait_for(lambda: f"worker 1 (pid {old[1]}) exited unexpectedly: killed by signal 9; "
             "starting a new one in 1 s" in workers.log.read_text(), "the death logged")
    # Found by review: its admin port was free while it was down, and whoever
    # took it answered the supervisor's questions in its name and kept the
    # replacement from listening.  The supervisor holds it.
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past TIME_WAITs
    try:
        with pytest.raises(OSError):
            squatter.bind(("127.0.0.1", workers.health_port + 2))
    finally:
        squatter.close()
    # The supervisor's own chain says so: the worker's ends without a service.stop.
    wait_for(lambda: any(r.get("event") == "worker.exited" and r.get("worker") == 1
                         and r.get("pid") == old[1] and r.get("how") == "killed by signal 9"
                         for r in (audit_records(workers.audit_path)
                                   if workers.audit_path.exists() else [])),
             "the death on the supervisor's chain")
    # Calls meanwhile: those the kernel sends to the dead worker's socket
    # wait in its backlog for the replacement instead of being refused.
    for _ in range(12):
        assert fresh_call(workers)["dag_id"] == "example_hello"
    wait_for(lambda: worker_pids(workers)[1] != old[1], "a new worker 1")
    new = worker_pids(workers)[1]
    wait_for(lambda: f"worker 1 (pid {new}) ready" in workers.log.read_text(),
             "the new worker 1 ready")
    assert worker_pids(workers)[0] == old[0] and alive(old[0])
    before = len(records(workers, 1))
    for _ in range(24):
        assert fresh_call(workers)["dag_id"] == "example_hello"
    assert len(records(workers, 1)) > before  # the new worker serves, on the same chain
    merged = scrape_port(workers.health_port)
    assert [merged[("airflowrpc_worker_restarts_total", frozenset({("worker", k)}))]
            for k in "01"] == [0, 1]
    assert [merged[("airflowrpc_worker_up", frozenset({("worker", k)}))] for k in "01"] == [1, 1]
    wait_for(lambda: probe(workers.health_port, "/readyz")[0] == 200, "ready again", 30)


def test_a_worker_whose_reactor_stops_turning_is_replaced(workers: RunningGateway) -> None:
    """
    Found by review: a worker stopped (``kill -STOP``, or a reactor that no
    longer turns) stayed "running" and "ready" for good while the supervisor
    told systemd all was well; the calls the kernel gave it waited.  It
    reports WATCHDOG=1 to the supervisor, which kills and replaces it once
    it falls silent.
    """
    old = worker_pids(workers)
    os.kill(old[0], signal.SIGSTOP)
    try:
        wait_for(lambda: f"worker 0 (pid {old[0]}) has not reported for" in
                 workers.log.read_text(), "the silence seen",
                 HUNG_SECONDS + 2 * PING_SECONDS + 30)
        wait_for(lambda: f"worker 0 (pid {old[0]}) exited unexpectedly: killed by signal 9"
                 in workers.log.read_text(), "the hung worker killed")
    finally:
        if alive(old[0]):
            os.kill(old[0], signal.SIGCONT)
    wait_for(lambda: any(r.get("event") == "worker.exited" and r.get("pid") == old[0]
                         and r.get("hung") is True
                         for r in audit_records(workers.audit_path)),
             "the hang on the supervisor's chain")
    wait_for(lambda: worker_pids(workers)[0] != old[0], "a new worker 0")
    new = worker_pids(workers)[0]
    wait_for(lambda: f"worker 0 (pid {new}) ready" in workers.log.read_text(),
             "the new worker 0 ready")
    for _ in range(12):
        assert fresh_call(workers)["dag_id"] == "example_hello"
    assert worker_pids(workers)[1] == old[1]


def test_a_replacement_refuses_a_config_changed_where_only_a_restart_applies(
        workers: RunningGateway) -> None:
    """
    Found by review: a worker replaced after such a change ran on it beside
    the others (its admin port moved, its chain took a new instance).  It
    stops with one line until the file is as the gateway started with.
    """
    good = workers.config.read_text()
    changed = good.replace("max_in_flight = 1000\n",
                           "max_in_flight = 1000\nshutdown_seconds = 12\n", 1)
    assert changed != good
    workers.config.write_text(changed)
    try:
        old = worker_pids(workers)
        os.kill(old[1], signal.SIGKILL)
        wait_for(lambda: "airflowrpc: worker 1: the config on disk changes "
                 "limits.shutdown_seconds since the gateway started, which apply only when the "
                 "whole gateway restarts" in workers.log.read_text(), "the replacement refusing")
        wait_for(lambda: "worker 1 cannot start" in workers.log.read_text(),
                 "the supervisor saying so")
        assert fresh_call(workers)["dag_id"] == "example_hello"  # worker 0 serves on
    finally:
        workers.config.write_text(good)
    wait_for(lambda: worker_pids(workers)[1] != old[1]
             and f"worker 1 (pid {worker_pids(workers)[1]}) ready" in workers.log.read_text(),
             "worker 1 back once the file is as it was", 60)


def test_sigterm_stops_every_worker_and_the_chains_verify(workers: RunningGateway) -> None:
    assert workers.process is not None
    pids = worker_pids(workers)
    os.kill(workers.process.pid, signal.SIGTERM)  # the supervisor alone, as systemd does
    assert workers.process.wait(timeout=90) == 0
    log = workers.log.read_text()
    for k, pid in pids.items():
        assert f"worker {k} (pid {pid}) stopped: exit status 0" in log
        assert not alive(pid)
    for k in (0, 1):
        assert any(r.get("event") == "service.stop" for r in records(workers, k))
    out = subprocess.run([str(AIRFLOWRPC), "audit", "verify", str(workers.audit_path.parent)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    instances = re.findall(r"^instance (\S+): ", out.stdout, re.M)
    workers_chains = sorted(i[-3:] for i in instances if re.search(r"-w\d$", i))
    assert workers_chains == ["-w0", "-w1"], out.stdout
    # and audit.path's own, where the supervisor put the workers killed above
    assert len(instances) == 3, out.stdout
    assert out.stdout.splitlines()[-1] == "3 chains: 3 whole", out.stdout


def test_sigterm_to_the_whole_process_group_stops_everything_cleanly(
        tmp_path: Path, pki, airflow) -> None:
    """
    ``kill -TERM -- -PGID`` (systemd's KillMode=control-group, a container's
    init) reaches the supervisor and each worker, which the supervisor then
    sends SIGTERM again: found by a newcomer, a second reactor.stop() logged
    a critical ReactorNotRunning.  Now it is ignored while stopping.
    """
    gateway = two_workers(RunningGateway(tmp_path, pki, airflow))
    gateway.start()
    try:
        wait_for(lambda: "ready: 2 workers serving" in gateway.log.read_text(), "ready")
        assert gateway.process is not None
        os.killpg(gateway.process.pid, signal.SIGTERM)
        assert gateway.process.wait(timeout=60) == 0
        log = gateway.log.read_text()
        assert "ReactorNotRunning" not in log and "critical" not in log, log
    finally:
        gateway.stop()


def test_the_workers_stop_when_the_supervisor_is_killed(
        tmp_path: Path, pki, airflow) -> None:
    gateway = two_workers(RunningGateway(tmp_path, pki, airflow))
    gateway.start()
    try:
        wait_for(lambda: "ready: 2 workers serving" in gateway.log.read_text(), "ready")
        pids = worker_pids(gateway)
        assert gateway.process is not None
        os.kill(gateway.process.pid, signal.SIGKILL)
        gateway.process.wait(timeout=10)
        wait_for(lambda: not any(alive(p) for p in pids.values()),
                 "the orphaned workers to stop", 60)
        assert gateway.log.read_text().count("the supervisor is gone: stopping") == 2
    finally:
        gateway.stop()


def test_systemd_hears_ready_once_from_the_supervisor_when_both_workers_are(
        tmp_path: Path, pki) -> None:
    systemd = Systemd(tmp_path / "notify")
    airflow_port = free_port()  # nothing there yet: Airflow is "starting"
    stand_in = types.SimpleNamespace(gateway_password="unused",
                                     base_url=f"http://127.0.0.1:{airflow_port}")
    gateway = two_workers(RunningGateway(tmp_path, pki, stand_in,  # type: ignore[arg-type]
                                         env={"NOTIFY_SOCKET": str(systemd.path)}))
    health = None
    try:
        gateway.start()  # a worker answers ping: the port is served
        heard = systemd.listen(5)
        assert not [m for m in heard if "READY" in m], heard
        health = AirflowHealth(airflow_port)
        ready = systemd.wait_for("READY", 30)
        assert ready == {"READY": "1", "STATUS": f"ready: 2 workers, 127.0.0.1:{gateway.port}"}
        assert gateway.process is not None
        gateway.process.send_signal(signal.SIGTERM)
        systemd.wait_for("STOPPING", 30)
        assert gateway.process.wait(timeout=60) == 0
        heard = systemd.listen(1)
        # only the supervisor spoke to systemd: one READY, one STOPPING
        assert [m for m in heard if "READY" in m] == [ready]
        assert len([m for m in heard if "STOPPING" in m]) == 1, heard
    finally:
        gateway.stop()
        if health is not None:
            health.close()
        systemd.socket.close()
