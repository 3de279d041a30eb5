"""
``make bench``: the gateway measured side by side with what bounds it.

Against a fast stub Airflow (plain HTTP, a precomputed DAGRun), with wrk
over keep-alive TLS, ``get_dag_run`` at each concurrency for A (twisted.web
+ TLS, fixed reply: the floor), B (the gateway, ``twistd -n airflowrpc``,
audit with fsync, bearer token), C (stdlib threads) and D (the stub's REST
endpoint over TLS); then idle mutual-TLS connections, a polling storm, a
``wait_dag_run`` storm, the gateway with ``workers = 2``, and finally the
gateway against a real Airflow 3.3.2 on PostgreSQL.

Writes ``bench/results/bench.md`` (tables and target lines), ``bench.png``
and ``bench.json``; prints the tables, then the target lines last.  Every
server it starts is stopped when it ends, also on an error or Ctrl-C.
Numbers are what this run measured on this machine, nothing else.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(HERE), str(REPO)]

import attrs  # noqa: E402

import report  # noqa: E402
from gatewayproc import Refused  # noqa: E402
from lineup import start_lineup  # noqa: E402
from loadgen import Point, measure, median_point  # noqa: E402
from processes import Processes  # noqa: E402
from real_airflow import real_airflow  # noqa: E402
from scenarios import (IdleResult, WaitResult, extra_gateway, floor_processes,  # noqa: E402
                       idle_connections, polling_storm, wait_storm)

SECTIONS = ("lineup", "idle", "storm", "waits", "workers", "airflow")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(","))


def options(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10, help="each measured point")
    parser.add_argument("--warmup", type=float, default=3, help="before each point")
    parser.add_argument("--rounds", type=int, default=3,
                        help="each point is the median of this many rounds, the servers "
                             "measured in turn within a round")
    parser.add_argument("--concurrency", type=_ints, default=(1, 64, 512))
    parser.add_argument("--idle", type=int, default=2000, help="idle mutual-TLS connections")
    parser.add_argument("--idle-hold", type=float, default=5)
    parser.add_argument("--storm-clients", type=int, default=500)
    parser.add_argument("--storm-runs", type=int, default=5)
    parser.add_argument("--waits", type=int, default=1000)
    parser.add_argument("--wait-runs", type=int, default=10)
    parser.add_argument("--workers-fragment", type=Path,
                        default=HERE / "fragments" / "workers-2.toml")
    parser.add_argument("--workers-concurrency", type=_ints, default=(64, 512))
    parser.add_argument("--airflow-concurrency", type=_ints, default=(1, 8))
    parser.add_argument("--only", type=lambda s: tuple(s.split(",")), default=SECTIONS,
                        help=f"comma-separated subset of {','.join(SECTIONS)}")
    parser.add_argument("--quick", action="store_true",
                        help="a few seconds per point, smaller scenarios (development)")
    parser.add_argument("--results", type=Path, default=HERE / "results")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.warmup, args.rounds = 3, 1, 1
        args.idle, args.storm_clients, args.waits = 500, 100, 200
    unknown = set(args.only) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    return args


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def _raise_file_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # servers inherit it


@attrs.define
class Findings:
    points: list[Point] = attrs.Factory(list)
    idle: dict[str, IdleResult] = attrs.Factory(dict)
    storm: Point | None = None
    waits: WaitResult | None = None
    workers: list[Point] | Refused | None = None
    #: The lineup's B, measured alternately with the workers (the ratio's base).
    workers_base: list[Point] = attrs.Factory(list)
    #: B at each worker's share of the workers' connections, measured with them.
    workers_share: list[Point] = attrs.Factory(list)
    #: By concurrency, each round's ratio of the workers' calls/s to B's.
    workers_ratios: dict[int, list[float | None]] = attrs.Factory(dict)
    #: The floor with 2 processes and the lineup's A measured alternately
    #: with it: a reference for the 2 workers' ratio on this machine.
    floor_pair: tuple[Point, Point] | None = None
    #: Each round's ratio of the floor's 2 processes to one A.
    floor_ratios: list[float] = attrs.Factory(list)
    #: Every round of every lineup point (the medians are in ``points``).
    rounds: list[Point] = attrs.Factory(list)
    airflow: list[Point] = attrs.Factory(list)
    failure: str | None = None


def run(args: argparse.Namespace, work: Path, found: Findings) -> None:
    with Processes(work) as processes:
        lineup = start_lineup(processes, work)
        log(f"servers up (scratch: {work})")
        if "lineup" in args.only:
            names = ("A", "B", "B/distinct", "C", "D")
            for c in args.concurrency:
                rounds: dict[str, list[Point]] = {name: [] for name in names}
                for r in range(args.rounds):
                    for name in names:
                        point = measure(lineup.target(name), lineup.pid(name), c,
                                        seconds=args.seconds, warmup=args.warmup,
                                        counts=lineup.counts.get(name),
                                        prefix=f"{name.replace('/', '-')}{c}r{r}")
                        rounds[name].append(point)
                        found.rounds.append(point)
                        log(f"round {r + 1}/{args.rounds} {report.point_row(point)}")
                for name in names:
                    found.points.append(median_point(rounds[name]))
                    log(f"median {report.point_row(found.points[-1])}")
        if "idle" in args.only:
            for name in ("B", "A"):
                found.idle[name] = result = idle_connections(lineup, name, args.idle,
                                                             args.idle_hold)
                log(f"idle connections: {result}")
        if "storm" in args.only:
            found.storm = polling_storm(lineup, args.storm_clients, args.storm_runs,
                                        args.seconds, args.warmup)
            log(report.point_row(found.storm))
        if "waits" in args.only:
            found.waits = wait_storm(lineup, args.waits, args.wait_runs, interval=2.0)
            log(f"wait storm: {found.waits}")
        if "workers" in args.only:
            measured = extra_gateway(
                processes, work, lineup, "B, 2 workers", args.workers_fragment.read_text(),
                args.workers_concurrency, args.seconds, args.warmup, args.rounds, share=2)
            if isinstance(measured, Refused):
                found.workers = measured
            else:
                (found.workers, found.workers_base, found.workers_share,
                 found.workers_ratios) = measured
            log(f"B, 2 workers: {found.workers}")
            if isinstance(found.workers, list):  # a reference for their ratio
                two, one, found.floor_ratios = floor_processes(
                    processes, lineup, 2, 64, args.seconds, args.warmup, args.rounds)
                found.floor_pair = (two, one)
                log(f"A, 2 processes: {found.floor_pair[0]}")
        for process, _ in lineup.servers.values():
            processes.stop(process)
        processes.stop(lineup.stub.process)
        if "airflow" in args.only:
            for point in real_airflow(processes, work, lineup.pki,
                                      concurrencies=args.airflow_concurrency,
                                      seconds=args.seconds, warmup=min(args.warmup, 2),
                                      log=log):
                found.airflow.append(point)
                log(f"{point.server} c={point.concurrency}: {point.rate:.1f} calls/s, "
                    f"p50 {point.p50_ms:.1f} ms, errors {point.error_count}")


def _machine() -> str:
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split("\n")[0]
    load = os.getloadavg()
    return (f"{os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
            f"at the start; Python {platform.python_version()}; "
            f"wrk {' '.join(wrk.split()[1:3])}")


def write_results(args: argparse.Namespace, found: Findings, machine: str,
                  started: str) -> tuple[list[str], list[str]]:
    """Write bench.md, bench.json and bench.png; return (tables, target lines)."""
    args.results.mkdir(parents=True, exist_ok=True)
    targets = report.target_lines(
        {(p.server, p.concurrency): p for p in found.points}, found.idle, found.storm,
        found.waits, found.workers, found.workers_base, found.floor_pair, found.workers_share,
        found.workers_ratios, found.floor_ratios)
    tables: list[str] = []
    if found.points or found.storm or isinstance(found.workers, list):
        tables += ["## get_dag_run against the stub Airflow", "",
                   *report.table(found.points + ([found.storm] if found.storm else [])
                                 + (found.workers if isinstance(found.workers, list) else [])
                                 + found.workers_share
                                 + ([found.floor_pair[0]] if found.floor_pair else [])),
                   ""]
    if found.idle:
        tables += ["## Idle mutual-TLS connections", "",
                   "| server | wanted | opened | failed | still open | RSS before MB "
                   "| peak RSS MB |", "|---|---|---|---|---|---|---|",
                   *(f"| {i.server} | {i.wanted} | {i.opened} | {i.failed} | {i.still_open} "
                     f"| {i.rss_before_mb:.1f} | {i.peak_rss_mb:.1f} |"
                     for i in found.idle.values()), ""]
    if found.waits:
        w = found.waits
        tables += ["## wait_dag_run storm", "",
                   f"{w.calls} calls on {w.runs} runs; {w.polls} upstream polls; "
                   f"gateway peak RSS {w.peak_rss_mb:.1f} MB, CPU {w.cpu_s:.1f} s", ""]
    if found.airflow:
        tables += ["## Real Airflow 3.3.2 (PostgreSQL): gateway vs direct REST", "",
                   *report.airflow_table(found.airflow), ""]
    document = [f"# txairflowrpc benchmark, {started}", "", machine, "",
                f"Each point: {args.warmup:g} s warm-up, then {args.seconds:g} s measured "
                "(wrk over keep-alive TLS, bearer token; errors = HTTP status, socket errors, "
                "timeouts, XML-RPC faults and unexpected bodies); "
                f"the median of {args.rounds} round(s) by calls/s, the servers measured in "
                "turn within each round, errors counted over all rounds. The 2 workers are "
                "compared with B measured right after them in each round, then with B at half "
                "their connections (one worker's share), the floor with 2 processes with A "
                "likewise.", "",
                *tables, "## Targets", "", *(f"- {t}" for t in targets), ""]
    if found.failure:
        document += ["## Run failed", "", "```", found.failure, "```", ""]
    if found.points:
        report.plot(found.points + (found.workers if isinstance(found.workers, list) else []),
                    args.results / "bench.png")
        document.insert(4, "![calls/s, p99 and CPU per call](bench.png)\n")
    (args.results / "bench.md").write_text("\n".join(document))
    (args.results / "bench.json").write_text(json.dumps({
        "started": started, "machine": machine,
        "points": [attrs.asdict(p) for p in found.points],
        "rounds": [attrs.asdict(p) for p in found.rounds],
        "workers_base": [attrs.asdict(p) for p in found.workers_base],
        "workers_share": [attrs.asdict(p) for p in found.workers_share],
        "workers_ratios": found.workers_ratios,
        "floor_ratios": found.floor_ratios,
        "floor_pair": ([attrs.asdict(p) for p in found.floor_pair] if found.floor_pair
                       else None),
        "storm": attrs.asdict(found.storm) if found.storm else None,
        "idle": {k: attrs.asdict(v) for k, v in found.idle.items()},
        "waits": attrs.asdict(found.waits) if found.waits else None,
        "workers": (found.workers.reason if isinstance(found.workers, Refused)
                    else [attrs.asdict(p) for p in found.workers or []]),
        "airflow": [attrs.asdict(p) for p in found.airflow],
    }, indent=1))
    return tables, targets


def main(argv: list[str] | None = None) -> int:
    args = options(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    _raise_file_limit()
    if shutil.which("wrk") is None:
        raise SystemExit("bench: wrk is missing (make bench installs it)")
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    machine = _machine()
    log(machine)
    work = Path(tempfile.mkdtemp(prefix="txairflowrpc-bench-"))
    found = Findings()
    status = 0
    try:
        run(args, work, found)
    except KeyboardInterrupt:
        found.failure = "interrupted"
        status = 130
    except Exception as e:
        import traceback
        found.failure = traceback.format_exc()
        log(f"the run failed: {e!r}")
        status = 1
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    tables, targets = write_results(args, found, machine, started)
    print()
    print("\n".join(tables))
    if found.failure:
        print(found.failure)
    print(f"results: {args.results / 'bench.md'}, {args.results / 'bench.png'}")
    print("\n".join(targets))
    return status


if __name__ == "__main__":
    sys.exit(main())
