"""
The audit trail of a real gateway: complete, verifiable, durable through
``kill -9``, failing closed when its file cannot grow, and signed at
shutdown so that a cut or rewritten chain shows.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import ssl
import stat
import subprocess
import sys
import threading
import time
import xmlrpc.client
from pathlib import Path
from typing import Any

import pytest

from txairflowrpc.audit.chain import ROTATED_SUFFIX
from txairflowrpc.devstack.airflow import LocalAirflow
from txairflowrpc.devstack.pki import DevPKI

from .conftest import TWISTD, RunningGateway, audit_records, client_context

AIRFLOWRPC = Path(sys.executable).parent / "airflowrpc"


def records(path: Path) -> list[dict[str, Any]]:
    return audit_records(path)


def airflowrpc(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(AIRFLOWRPC), *map(str, args)],
                          capture_output=True, text=True, timeout=60)


def chain_files(path: Path) -> list[Path]:
    """
    The trail's files, oldest first: the ones rotated away (named by the time
    they were), then ``path``: a gateway given ``audit.rotate_bytes`` has more
    than one (the tests' gateways do not rotate at midnight).
    """
    rotated = sorted(f for f in path.parent.glob(path.name + ".*")
                     if ROTATED_SUFFIX.search(f.name))
    return [*rotated, path]


def verify(*paths: Path) -> subprocess.CompletedProcess[str]:
    return airflowrpc("audit", "verify", *paths)


class RequestIdTransport(xmlrpc.client.SafeTransport):
    """Remembers the X-Request-Id of every response it parsed."""

    def __init__(self, context: ssl.SSLContext, seen: list[str]) -> None:
        super().__init__(context=context)
        self.seen = seen

    def parse_response(self, response: Any) -> Any:
        request_id = response.getheader("X-Request-Id")
        try:
            result = super().parse_response(response)
        except xmlrpc.client.Fault:
            self.seen.append(request_id)  # a fault is an answer too
            raise
        self.seen.append(request_id)  # only once the whole answer was read
        return result


def test_every_call_and_refusal_is_on_a_verifiable_trail(gateway: RunningGateway) -> None:
    seen: list[str] = []
    ctx = client_context(gateway.pki, gateway.client)
    proxy = xmlrpc.client.ServerProxy(gateway.url, transport=RequestIdTransport(ctx, seen))
    proxy.get_dag("etl_orders")
    with pytest.raises(xmlrpc.client.Fault):
        proxy.get_dag("no_such_dag")
    bare = xmlrpc.client.ServerProxy(gateway.url, context=client_context(gateway.pki, None))
    with pytest.raises(OSError):
        bare.ping()
    time.sleep(0.5)
    files = chain_files(gateway.audit_path)
    recs = [r for f in files for r in records(f)]
    by_id = {r.get("request_id"): r for r in recs}
    ok, missing = by_id[seen[0]], by_id[seen[1]]
    assert (ok["method"], ok["dag_id"], ok["outcome"], ok["airflow_status"]) == (
        "get_dag", "etl_orders", "ok", 200)
    assert ok["principal"] == "ci-bot"
    assert len(ok["auth"]["certificate_sha256"]) == 64
    assert (missing["outcome"], missing["fault_code"], missing["airflow_status"]) == (
        "fault", 404, 404)
    assert any(r.get("reason") == "TLS handshake failed" for r in recs[-3:])
    assert recs[0]["event"] == "service.start"
    out = verify(*files)
    assert out.returncode == 0 and out.stdout.startswith("chain whole:"), out.stdout


def start_gateway(gateway: RunningGateway, config: Path, **popen: Any) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [str(TWISTD), "-n", "--pidfile=", "airflowrpc", "--config", str(config)],
        stdin=subprocess.DEVNULL, start_new_session=True, **popen,
    )
    deadline = time.monotonic() + 30
    while True:
        assert process.poll() is None
        try:
            if gateway.proxy().ping() == "pong":
                return process
        except OSError:
            assert time.monotonic() < deadline
            time.sleep(0.2)


def test_kill_9_loses_no_record_of_an_answered_call(
    tmp_path: Path, pki: DevPKI, airflow: LocalAirflow
) -> None:
    gw = RunningGateway(tmp_path, pki, airflow)
    process = start_gateway(gw, gw.config, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    answered: list[str] = []
    stop = threading.Event()

    def load() -> None:
        ctx = client_context(pki, gw.client)
        proxy = xmlrpc.client.ServerProxy(gw.url, transport=RequestIdTransport(ctx, answered))
        for i in range(2000):  # bounded; ends at the kill
            if stop.is_set():
                return
            try:
                proxy.get_dag("etl_orders") if i % 2 else proxy.ping()
            except (OSError, xmlrpc.client.ProtocolError):
                return

    threads = [threading.Thread(target=load) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(3)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    stop.set()
    for t in threads:
        t.join(30)
    assert len(answered) > 50, "the load did not run"
    recorded = {r.get("request_id") for r in records(gw.audit_path)}
    lost = [rid for rid in answered if rid not in recorded]
    assert lost == [], f"{len(lost)} answered calls have no record"
    # A restart trims any torn last line and continues the same chain.
    process = start_gateway(gw, gw.config, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        gw.proxy().ping()
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)
    out = verify(gw.audit_path)
    assert out.returncode == 0, out.stdout


def test_a_full_disk_fails_closed_and_recovers(
    tmp_path: Path, pki: DevPKI, airflow: LocalAirflow
) -> None:
    gw = RunningGateway(tmp_path, pki, airflow)
    limit = 12 * 1024  # bytes any file of the gateway may grow to: a "full disk"

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    process = start_gateway(gw, gw.config, stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT, preexec_fn=small_files)
    try:
        proxy = gw.proxy()
        faults: list[int] = []
        for _ in range(100):  # bounded: the file fills after a few dozen records
            try:
                proxy.get_dag("etl_orders")
            except xmlrpc.client.Fault as fault:
                faults.append(fault.faultCode)
                break
        assert faults == [507], "the audit file never filled"
        before = gw.audit_path.stat().st_size
        for _ in range(3):  # refused at once, without asking Airflow
            with pytest.raises(xmlrpc.client.Fault) as e:
                proxy.trigger_dag("etl_orders", {}, {"dag_run_id": f"never-{_}"})
            assert e.value.faultCode == 507
            assert "audit log cannot be written" in e.value.faultString
        # Space again: the gateway recovers by itself and writes what it held.
        resource.prlimit(process.pid, resource.RLIMIT_FSIZE,
                         (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        deadline = time.monotonic() + 30
        while True:
            try:
                assert proxy.ping() == "pong"
                break
            except xmlrpc.client.Fault as fault:
                assert fault.faultCode == 507 and time.monotonic() < deadline
                time.sleep(0.5)
        assert gw.audit_path.stat().st_size > before
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)
    recs = records(gw.audit_path)
    refused = [r for r in recs if r.get("method") == "trigger_dag"]
    assert len(refused) == 3 and all(r["fault_code"] == 507 for r in refused)
    assert all(r["decision"] == "denied" for r in refused)
    out = verify(gw.audit_path)
    assert out.returncode == 0, out.stdout
    # The refused triggers never reached Airflow.
    assert not any(airflow_has_run(airflow, "etl_orders", f"never-{i}") for i in range(3))


def airflow_has_run(airflow: LocalAirflow, dag_id: str, run_id: str) -> bool:
    """Ask Airflow directly (as its admin), not through the gateway."""
    import urllib.error
    import urllib.request

    token = airflow.token("admin", airflow.admin_password)
    req = urllib.request.Request(f"{airflow.base_url}/api/v2/dags/{dag_id}/dagRuns/{run_id}",
                                 headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=10):
            return True
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return False
        raise


def test_rotation_under_load_keeps_the_chain_whole(
    tmp_path: Path, pki: DevPKI, airflow: LocalAirflow
) -> None:
    gw = RunningGateway(tmp_path, pki, airflow)
    gw.config.write_text(gw.config.read_text().replace(
        '[audit]\npath = "', '[audit]\nrotate_bytes = 20000\npath = "'))
    process = start_gateway(gw, gw.config, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    answered: list[str] = []

    def load() -> None:
        ctx = client_context(pki, gw.client)
        proxy = xmlrpc.client.ServerProxy(gw.url, transport=RequestIdTransport(ctx, answered))
        for _ in range(60):
            proxy.ping()

    threads = [threading.Thread(target=load) for _ in range(6)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)
    files = sorted(f for f in gw.audit_path.parent.glob(gw.audit_path.name + "*")
                   if not f.name.endswith(".lock"))
    assert len(files) >= 4, files  # it did rotate, several times
    out = verify(*files)
    assert out.returncode == 0, out.stdout
    ids = [r.get("request_id") for f in files for r in records(f) if r.get("method") == "ping"]
    # none lost, none doubled (plus the readiness ping of start_gateway)
    assert len(answered) == 360 and set(answered) <= set(ids)
    assert len(ids) == len(set(ids)) == len(answered) + 1


def test_a_signed_trail_ends_with_a_checkpoint_and_a_cut_or_rewrite_shows(
    tmp_path: Path, pki: DevPKI, airflow: LocalAirflow
) -> None:
    made = airflowrpc("audit", "keygen", "--out", tmp_path / "signing")
    assert made.returncode == 0, made.stderr
    key, public = tmp_path / "signing.key", tmp_path / "signing.pub"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    gw = RunningGateway(tmp_path, pki, airflow)
    # Checkpoints only at shutdown, so that the file's shape is known.
    gw.config.write_text(gw.config.read_text().replace(
        '[audit]\npath = "', f'[audit]\nsigning_key = "{key}"\ncheckpoint_records = 0\n'
        f'checkpoint_seconds = 0\npath = "'))
    for run in range(2):  # two runs: two shutdown checkpoints
        gw.start()
        try:
            assert gw.proxy().get_dag("etl_orders")["dag_id"] == "etl_orders"
        finally:
            gw.stop()
        # twistd stops cleanly on SIGTERM, and says so: status 0 (not SIGKILL).
        assert gw.process is not None and gw.process.returncode == 0
    recs = records(gw.audit_path)
    cps = [r for r in recs if r.get("event") == "audit.checkpoint"]
    assert [(c["reason"], recs[c["seq"] - 2]["event"]) for c in cps] == [
        ("shutdown", "service.stop")] * 2
    assert recs[-1] == cps[-1] and cps[-1]["head_hash"] == recs[-2]["hash"]

    out = airflowrpc("audit", "verify", "--public-key", public, gw.audit_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"last checkpoint: seq {cps[-1]['seq']} at {cps[-1]['time']}" in out.stdout

    whole = gw.audit_path.read_text()
    lines = whole.splitlines(keepends=True)
    shipped = tmp_path / "shipped.jsonl"  # what tail -F | jq would have sent elsewhere
    shipped.write_text("".join(line for line in lines if '"audit.checkpoint"' in line))

    # Cut the tail: the last checkpoint goes, the records before it are uncovered.
    gw.audit_path.write_text("".join(lines[:-1]))
    out = airflowrpc("audit", "verify", "--public-key", public, gw.audit_path)
    assert out.returncode == 3, out.stdout
    assert (f"NOT COVERED by a checkpoint: records {cps[0]['seq'] + 1}..{cps[-1]['seq'] - 1}"
            in out.stdout)

    # Cut back to the first checkpoint: only the copy kept elsewhere can tell.
    gw.audit_path.write_text("".join(lines[:cps[0]["seq"]]))
    out = airflowrpc("audit", "verify", "--public-key", public, gw.audit_path)
    assert out.returncode == 0, out.stdout
    out = airflowrpc("audit", "verify", "--public-key", public, "--shipped", shipped,
                     gw.audit_path)
    assert out.returncode == 1 and "records were cut from the end" in out.stdout, out.stdout

    # Rewrite a record and re-hash the whole chain, as someone without the key can.
    gw.audit_path.write_text(rehashed(lines, lambda r: {**r, "principal": "someone-else"}
                                      if r.get("method") == "get_dag" else r))
    assert verify(gw.audit_path).returncode == 0  # the hashes alone cannot tell
    out = airflowrpc("audit", "verify", "--public-key", public, gw.audit_path)
    assert out.returncode == 1 and "the signature does not match" in out.stdout, out.stdout


def rehashed(lines: list[str], change: Any) -> str:
    """The chain with ``change`` applied to each record, every hash made to match again."""
    from txairflowrpc.audit.chain import seal

    out, prev = [], "0" * 64
    for line in lines:
        record = json.loads(line)
        del record["hash"]
        record = change(record)
        record["prev"] = prev
        if record.get("event") == "audit.checkpoint":
            record["head_hash"] = prev
        line = seal(record)
        prev = line[-67:-3]
        out.append(line)
    return "".join(out)
