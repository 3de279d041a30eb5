"""
One measured point: wrk at a given concurrency against one server, with
the server's process tree watched from /proc.

Server CPU is the user + system time of the server's whole process tree
over the measured run, divided by the good calls: unlike calls/s, it holds
on a machine shared with other work.

`measure` runs a warm-up, then the measured run, and returns a `Point`:
calls/s, latency percentiles, every kind of error (HTTP status, socket
errors, timeouts, XML-RPC faults and bodies that are not the expected
answer, all counted by ``wrk/calls.lua``), the server tree's peak RSS and
CPU per good call, and wrk's own CPU (to show it was not the bottleneck).
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable

import attrs

from procstat import ProcessTree, RSSSampler, machine_cpu

LUA = Path(__file__).resolve().parent / "wrk" / "calls.lua"
#: A request that takes longer than this is a timeout error, not a latency.
WRK_TIMEOUT = "30s"


@attrs.frozen
class Request:
    """What one wrk request line says: method, path and body (no newline)."""

    method: str
    path: str
    body: str = ""

    def line(self) -> str:
        if "\n" in self.body:
            raise ValueError("a wrk request body must be one line")
        return f"{self.method} {self.path} {self.body}".rstrip()


@attrs.frozen
class Target:
    """How to load one server."""

    name: str
    url: str  # scheme://host:port, no path
    requests: tuple[Request, ...]
    auth: str = ""
    content_type: str = "text/xml"
    expect: str = ""
    fault: str = ""


@attrs.frozen
class Point:
    server: str
    concurrency: int
    seconds: float
    requests: int
    good: int
    errors: dict[str, int]
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    peak_rss_mb: float
    cpu_us_per_call: float | None
    server_cpu_pct: float
    wrk_cpu_pct: float
    upstream_per_call: float | None = None
    #: CPU per good call of other process trees watched (e.g. Airflow's).
    also_cpu_us: dict[str, float] = attrs.field(factory=dict)
    #: How busy the whole machine was while measured, in % of one core
    #: (at most 100 x the cores): the server, wrk, the stub, the kernel.
    machine_cpu_pct: float | None = None
    #: The machine's cores (os.cpu_count()), for what was left idle.
    cores: int | None = None
    #: Where a gateway's calls spent their time, by its own /metrics (the
    #: real-Airflow part): ``airflow_ms`` and ``audit_ms``, the mean exchange
    #: with Airflow and audit write; ``audit_per_call``, the writes a call waited for.
    inside: dict[str, float] = attrs.field(factory=dict)

    @property
    def rate(self) -> float:
        return self.good / self.seconds if self.seconds else 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


def median_point(rounds: list[Point]) -> Point:
    """
    The round with the median calls/s (the lower middle one for an even
    count), its errors replaced by those of all rounds: a target's "zero
    errors" holds only if no round had one.
    """
    middle = sorted(rounds, key=lambda p: p.rate)[(len(rounds) - 1) // 2]
    errors = {k: sum(p.errors.get(k, 0) for p in rounds) for k in middle.errors}
    return attrs.evolve(middle, errors=errors)


def _wrk(target: Target, concurrency: int, seconds: float, prefix: str) -> tuple[dict, float]:
    """Run wrk once; its BENCH-RESULT record and its own CPU seconds."""
    with tempfile.NamedTemporaryFile("w", suffix=".req", delete=False) as f:
        f.write("\n".join(r.line() for r in target.requests) + "\n")
        requests_file = f.name
    threads = 1 if concurrency < 16 else 2
    env = dict(os.environ, BENCH_REQUESTS=requests_file, BENCH_AUTH=target.auth,
               BENCH_CTYPE=target.content_type, BENCH_EXPECT=target.expect,
               BENCH_FAULT=target.fault, BENCH_PREFIX=prefix)
    try:
        process = subprocess.Popen(
            ["wrk", "-t", str(threads), "-c", str(concurrency), "-d", f"{max(1, round(seconds))}s",
             "--timeout", WRK_TIMEOUT, "-s", str(LUA), target.url + target.requests[0].path],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
        try:
            output = process.stdout.read()
            _, status, usage = os.wait4(process.pid, 0)
            process.returncode = os.waitstatus_to_exitcode(status)
        except BaseException:
            process.kill()
            process.wait()
            raise
    finally:
        os.unlink(requests_file)
    for line in output.splitlines():
        if line.startswith("BENCH-RESULT "):
            return json.loads(line[len("BENCH-RESULT "):]), usage.ru_utime + usage.ru_stime
    raise RuntimeError(f"wrk gave no result (exit {process.returncode}):\n{output}")


#: () -> (requests the upstream served, calls the server answered), both
#: running totals.
Counts = Callable[[], tuple[int, int]]


def _settled(counts: Counts, quiet: float = 1.0, timeout: float = 15.0) -> tuple[int, int]:
    """
    ``counts()`` once it has not moved for ``quiet`` seconds: the calls
    left in flight (abandoned by wrk) are finished or cancelled by then.
    """
    last, since = counts(), time.monotonic()
    deadline = since + timeout
    while time.monotonic() < deadline and time.monotonic() - since < quiet:
        time.sleep(0.2)
        now = counts()
        if now != last:
            last, since = now, time.monotonic()
    return last


def measure(
    target: Target, server_pid: int, concurrency: int, *, seconds: float, warmup: float,
    counts: Counts | None = None, prefix: str = "u", also: dict[str, int] | None = None,
) -> Point:
    """
    Warm up for ``warmup`` s, then measure ``seconds`` s at ``concurrency``.
    ``counts``, if given, gives the upstream requests per call: read once
    the server is idle before and after the run, so both sides cover the
    same calls (those wrk abandoned at its end included); ``also`` names
    other process trees whose CPU per call is reported too.
    """
    if warmup > 0:
        _wrk(target, concurrency, warmup, prefix + "w")
    before = _settled(counts) if counts else (0, 0)
    tree = ProcessTree(server_pid)
    others = {name: ProcessTree(pid) for name, pid in (also or {}).items()}
    others_before = {name: t.cpu_seconds() for name, t in others.items()}
    cpu_before = tree.cpu_seconds()
    busy_before, all_before = machine_cpu()
    with RSSSampler(tree) as rss:
        result, wrk_cpu = _wrk(target, concurrency, seconds, prefix)
    cpu = tree.cpu_seconds() - cpu_before
    busy_after, all_after = machine_cpu()
    cores = os.cpu_count() or 1
    machine = (100 * cores * (busy_after - busy_before) / (all_after - all_before)
               if all_after > all_before else None)
    others_cpu = {name: t.cpu_seconds() - others_before[name] for name, t in others.items()}
    upstream = None
    if counts:
        after = _settled(counts)
        served = after[1] - before[1]
        upstream = (after[0] - before[0]) / served if served else None
    elapsed = result["duration_us"] / 1e6
    errors = {k: result[k] for k in ("connect", "read", "write", "status", "timeout",
                                     "faults", "unexpected")}
    good = result["requests"] - result["status"] - result["faults"] - result["unexpected"]
    return Point(
        server=target.name, concurrency=concurrency, seconds=elapsed,
        requests=result["requests"], good=good, errors=errors,
        p50_ms=result["p50_us"] / 1000, p90_ms=result["p90_us"] / 1000,
        p99_ms=result["p99_us"] / 1000, max_ms=result["max_us"] / 1000,
        peak_rss_mb=rss.peak / 2**20,
        cpu_us_per_call=cpu / good * 1e6 if good else None,
        server_cpu_pct=100 * cpu / elapsed,
        wrk_cpu_pct=100 * wrk_cpu / elapsed,
        upstream_per_call=upstream,
        also_cpu_us={name: c / good * 1e6 for name, c in others_cpu.items() if good},
        machine_cpu_pct=machine, cores=cores,
    )
