"""
What the audit trail's durability costs, measured side by side in one run.

1. The audit log alone, 20,000 records: group commit with fsync (what the
   gateway does), one fsync per record (no group commit), and no fsync.
2. The whole gateway: `ping` calls from concurrent clients over mutual TLS
   to two `twistd airflowrpc` processes that differ only in `audit.fsync`,
   alternating rounds so that machine noise hits both alike.

Run with `make bench`; prints ratios, not absolute promises.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import xmlrpc.client
from pathlib import Path

from twisted.internet import defer, task
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from txairflowrpc.devstack.gatewayconf import core_config  # noqa: E402
from txairflowrpc.devstack.pki import DevPKI  # noqa: E402
from txairflowrpc.audit.log import AuditLog  # noqa: E402

RECORD = {"kind": "call", "request_id": "0123456789abcdef", "principal": "ci-bot",
          "method": "get_dag", "dag_id": "etl_orders", "decision": "allowed",
          "outcome": "ok", "airflow_status": 200, "duration_ms": 3.2}


async def audit_alone(reactor, directory: Path, mode: str, n: int) -> float:
    pool = ThreadPool(1, 1, "audit")
    pool.start()
    log = AuditLog(directory / f"{mode}.jsonl", clock=reactor, instance="bench",
                   run_blocking=lambda f: deferToThreadPool(reactor, pool, f),
                   fsync=mode != "no-fsync")
    log.open()
    started = time.perf_counter()
    if mode == "fsync-each":
        for _ in range(n // 20):  # one at a time: every record waits for its own fsync
            await log.append(RECORD)
        n = n // 20
    else:
        # 200 concurrent callers, as under load: each waits for its record
        sem = defer.DeferredSemaphore(200)
        await defer.gatherResults([sem.run(log.append, RECORD) for _ in range(n)])
    elapsed = time.perf_counter() - started
    await log.close()
    pool.stop()
    return n / elapsed


REST = """
[health]
port = 0
[limits]
rate_per_second = 100000
burst = 100000
max_in_flight = 1000
[roles.pinger]
scopes = []
[principals.bench]
roles = ["pinger"]
cert_cn = ["bench"]
"""


def start(directory: Path, pki: DevPKI, name: str, port: int, fsync: bool) -> subprocess.Popen:
    (directory / "pw").write_text("x\n")
    config = directory / f"{name}.toml"
    config.write_text(core_config(
        port=port, tls=pki.directory, airflow="http://127.0.0.1:9",
        password_file=directory / "pw", audit=directory / f"audit-{name}.jsonl",
        audit_extra=f"fsync = {str(fsync).lower()}",
    ) + REST)
    twistd = Path(sys.executable).parent / "twistd"
    return subprocess.Popen([str(twistd), "-n", "--pidfile=", "airflowrpc", "--config",
                             str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                            start_new_session=True)


def proxy(pki: DevPKI, client, port: int) -> xmlrpc.client.ServerProxy:
    import ssl
    ctx = ssl.create_default_context(cafile=str(pki.ca_file))
    ctx.load_cert_chain(str(client.cert), str(client.key))
    return xmlrpc.client.ServerProxy(f"https://localhost:{port}/RPC2", context=ctx)


def load(pki: DevPKI, client, port: int, threads: int, seconds: float) -> float:
    count = [0] * threads

    def run(i: int) -> None:
        p = proxy(pki, client, port)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            p.ping()
            count[i] += 1

    ts = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    started = time.monotonic()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return sum(count) / (time.monotonic() - started)


def gateway_side_by_side(directory: Path) -> tuple[float, float]:
    pki = DevPKI.create(directory / "tls")
    client = pki.client("bench")
    ports = {"fsync": 18443, "no-fsync": 18444}
    procs = [start(directory, pki, name, port, name == "fsync") for name, port in ports.items()]
    try:
        for port in ports.values():
            for _ in range(100):
                try:
                    proxy(pki, client, port).ping()
                    break
                except OSError:
                    time.sleep(0.2)
        rates: dict[str, list[float]] = {name: [] for name in ports}
        for _ in range(3):
            for name, port in ports.items():
                rates[name].append(load(pki, client, port, threads=16, seconds=4))
        return max(rates["fsync"]), max(rates["no-fsync"])
    finally:
        for p in procs:
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(30)


def main() -> None:
    directory = Path(tempfile.mkdtemp(prefix="audit-bench-"))

    async def alone(reactor):
        return {mode: await audit_alone(reactor, directory, mode, 20000)
                for mode in ("group-commit", "fsync-each", "no-fsync")}

    results: dict[str, float] = {}

    def run(reactor):
        return defer.Deferred.fromCoroutine(alone(reactor)).addCallback(results.update)

    try:
        task.react(run)
    except SystemExit:
        pass
    print("audit log alone (records/s):")
    for mode, rate in results.items():
        print(f"  {mode:13s} {rate:10.0f}")
    print(f"  group commit is {results['group-commit'] / results['fsync-each']:.1f}x "
          f"fsync-per-record, {results['group-commit'] / results['no-fsync']:.2f}x no-fsync")
    with_fsync, without = gateway_side_by_side(directory)
    print("gateway, ping over mutual TLS, 16 clients (calls/s, best of 3 alternating rounds):")
    print(f"  audit.fsync = true   {with_fsync:8.0f}")
    print(f"  audit.fsync = false  {without:8.0f}")
    print(f"  durability costs {100 * (1 - with_fsync / without):.0f}% of throughput "
          f"(ratio {with_fsync / without:.2f})")


if __name__ == "__main__":
    main()
