"""
``make phases``: where one call's time goes at concurrency 1.

The benchmark's c=1 point (wrk, one connection, keep-alive TLS, bearer
token, ``get_dag_run`` against the stub Airflow, audit with fsync) with a
probe in the gateway (`phases_probe/sitecustomize.py`, loaded through
``PYTHONPATH``, not part of the gateway) that marks the time at each step
of a call.  Each call is cut into phases, one after the other:

- ``request``: from the request's bytes being read to the Airflow request
  being made (TLS, HTTP, token, XML-RPC, access, limits, the client);
- ``to Airflow``: making that request and sending it on the next reactor turn;
- ``Airflow``: the stub's answer on its way (its process, two wake-ups);
- ``from Airflow``: reading the answer, up to the client's result;
- ``record``: the result shaped and the call's audit record made;
- ``to audit thread``: the record handed to the audit thread;
- ``seal``: the chain's lock taken and the record sealed (JSON, SHA-256);
- ``write+fsync``: the write and the fsync;
- ``back to reactor``: the reactor told the record is on disk;
- ``answer``: the response body made and sent;
- ``client``: wrk's side, from the answer sent to the next request read.

It prints each phase's median in µs over the calls measured, their sum,
wrk's p50 for the gateway and for D (the stub over TLS, no gateway), and
writes the same as ``bench/results/phases.md``.  The probe costs about a
µs per mark: the sum runs a little above wrk's p50.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from clients import xmlrpc_body  # noqa: E402
from gatewayproc import Refused, create_token, gateway_config, start_gateway  # noqa: E402
from lineup import DAG, RUN, rpc_target, start_stub  # noqa: E402
from loadgen import Request, Target, _wrk  # noqa: E402
from processes import Processes, accepts, free_port, wait_until  # noqa: E402
from txairflowrpc.devstack.pki import DevPKI  # noqa: E402

PHASES = (
    ("request", "read", "exchange"),
    ("to Airflow", "exchange", "up_write"),
    ("Airflow", "up_write", "up_read"),
    ("from Airflow", "up_read", "exchanged"),
    ("record", "exchanged", "append"),
    ("to audit thread", "append", "thread_start"),
    ("seal", "thread_start", "fsync_start"),
    ("write+fsync", "fsync_start", "fsync_end"),
    ("back to reactor", "fsync_end", "appended"),
    ("answer", "appended", "write"),
    ("client", "write", "next_read"),
)

#: Not the gateway's time: Airflow's answer on its way, and wrk's turn.
OUTSIDE = ("Airflow", "client")
#: The call waiting for its audit record to be on disk.
AUDIT_WAITS = ("to audit thread", "seal", "write+fsync", "back to reactor")


def calls(marks: list[tuple[int, str]]) -> list[dict[str, int]]:
    """
    The calls in the probe's marks, each as {step: ns}.  A call is kept only
    if its steps came in the one expected order (one Airflow exchange, one
    record), so that a login, a checkpoint or the warm-up's edge is left out.
    """
    found: list[dict[str, int]] = []
    call: dict[str, int] | None = None
    client = upstream = None
    for t, event in marks:
        kind, _, fd = event.partition(":")
        if call is None:
            if kind == "read":
                call, client, upstream = {"read": t}, fd, None
            continue
        order = list(call)
        if kind == "read" and fd == client:
            if order[-1] == "write":
                call["next_read"] = t
                found.append(call)
            call, upstream = {"read": t}, None
        elif kind == "exchange" and order == ["read"]:
            call["exchange"] = t
        elif kind == "write" and fd != client and order[-1] == "exchange":
            call["up_write"], upstream = t, fd
        elif kind == "read" and fd == upstream and order[-1] == "up_write":
            call["up_read"] = t
        elif kind == "exchanged" and order[-1] == "up_read":
            call["exchanged"] = t
        elif kind == "append" and order[-1] == "exchanged":
            call["append"] = t
        elif kind in ("thread_start", "fsync_start", "fsync_end") and order[-1] in (
                "append", "thread_start", "fsync_start"):
            call[kind] = t
        elif kind == "appended" and order[-1] == "fsync_end":
            call["appended"] = t
        elif kind == "write" and fd == client and order[-1] == "appended":
            call["write"] = t
        elif kind in ("thread_end",):
            continue
        else:
            call = None  # not the plain order: wait for the next request
    return [c for c in found if all(step in c for _, step, _ in PHASES)]


def read_marks(path: Path) -> list[tuple[int, str]]:
    marks = []
    for line in path.read_text().splitlines():
        t, _, event = line.partition(" ")
        marks.append((int(t), event))
    return marks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--results", type=Path, default=HERE / "results")
    parser.add_argument("--probe", type=Path, default=HERE / "phases_probe",
                        help="the probe's directory (a variant of it, for an experiment)")
    options = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="airflowrpc-phases-"))
    out = work / "marks.txt"
    with Processes(work) as processes:
        pki = DevPKI.create(work / "tls")
        pki.client("bench")
        stub = start_stub(processes, "stub")
        d = start_stub(processes, "D-stub-tls", tls=pki.directory)
        port = free_port()
        config = gateway_config(work / "gateway", port=port, tls=pki.directory,
                                airflow=stub.url, password="bench-password")
        token = create_token(config)
        gateway = start_gateway(processes, "B-gateway", config, accepts(port), env={
            "PYTHONPATH": str(options.probe), "PHASES_OUT": str(out)})
        if isinstance(gateway, Refused):
            raise SystemExit(f"the gateway did not start: {gateway.reason}")
        b = rpc_target("B", port, f"Bearer {token}", xmlrpc_body("get_dag_run", DAG, RUN))
        d_target = Target("D", f"https://127.0.0.1:{d.port}",
                          (Request("GET", f"/api/v2/dags/{DAG}/dagRuns/{RUN}"),),
                          auth="Bearer stub", content_type="application/json",
                          expect='"dag_run_id"')
        _wrk(b, 1, 3, "warm")
        since = time.perf_counter_ns()  # the probe's clock: CLOCK_MONOTONIC, as here
        measured, _ = _wrk(b, 1, options.seconds, "B")
        os.kill(gateway.pid, signal.SIGUSR2)
        wait_until(lambda: out.exists() and out.stat().st_size > 0, 10, "the probe's marks")
        time.sleep(0.5)  # the whole file written
        d_result, _ = _wrk(d_target, 1, options.seconds, "D")
    found = calls([m for m in read_marks(out) if m[0] >= since])
    lines = [
        f"# Where a call's time goes at c=1 ({time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())})",
        "",
        f"{len(found):,} calls of {measured['requests']:,} measured in their plain order; "
        f"median per phase, in µs.",
        "",
        "| phase | median µs | p90 µs |",
        "|---|---:|---:|",
    ]
    medians = {}
    for name, start, end in PHASES:
        spans = sorted((c[end] - c[start]) / 1000 for c in found)
        medians[name] = statistics.median(spans)
        lines.append(f"| {name} | {medians[name]:,.0f} | {spans[int(len(spans) * 0.9)]:,.0f} |")
    own = sum(v for k, v in medians.items() if k not in OUTSIDE)
    audit = sum(medians[k] for k in AUDIT_WAITS)
    lines += [
        f"| **sum of medians** | **{sum(medians.values()):,.0f}** | |",
        "",
        f"- the gateway's own phases (all but Airflow and client): {own:,.0f} µs, of which "
        f"{audit:,.0f} µs waiting for the audit record (hand-offs and fsync) and "
        f"{own - audit:,.0f} µs of work on the reactor.",
        f"- wrk p50, gateway (B): {measured['p50_us']:,} µs; D, the stub over TLS: "
        f"{d_result['p50_us']:,} µs; D + 1 ms: {d_result['p50_us'] + 1000:,} µs.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    options.results.mkdir(parents=True, exist_ok=True)
    (options.results / "phases.md").write_text(text)


if __name__ == "__main__":
    main()
