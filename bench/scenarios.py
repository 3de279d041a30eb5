"""
The benchmark's scenarios beyond calls/s at a concurrency:

- `idle_connections`: many idle mutual-TLS connections, and the server's
  peak RSS while they are held;
- `polling_storm`: many clients polling the same few runs (``get_dag_run``),
  and how many upstream requests each client call costs;
- `wait_storm`: many concurrent ``wait_dag_run`` calls on a few runs that
  finish a few seconds later: upstream polls per run per poll interval, and
  whether every call returned when (and not before) its run ended;
- `extra_gateway`: the gateway with a config fragment on top (the "2
  workers" row), or the one line saying why it was not measured; and B
  alone at the share of the connections each worker sees;
- `floor_processes`: the floor (A) served by two processes on one port,
  against one: what two processes of the plainest Twisted server reach on
  this machine, with wrk and the stub on the same cores (a reference for
  the "2 workers" ratio).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import attrs

from clients import hold_idle, many_calls, xmlrpc_body
from gatewayproc import ChainsCalls, Refused, create_token, gateway_config, start_gateway
from lineup import DAG, HERE, Lineup, rpc_target
from loadgen import Point, measure, median_point
from processes import Processes, accepts, free_port, wait_until
from procstat import ProcessTree, RSSSampler


def _port(url: str) -> int:
    return urlsplit(url).port


@attrs.frozen
class IdleResult:
    server: str
    wanted: int
    opened: int
    failed: int
    still_open: int
    rss_before_mb: float
    peak_rss_mb: float


def idle_connections(lineup: Lineup, name: str, count: int, hold: float) -> IdleResult:
    """``count`` idle mutual-TLS connections (the bench client certificate) to ``name``."""
    context = ssl.create_default_context(cafile=str(lineup.pki.ca_file))
    context.load_cert_chain(str(lineup.client.cert), str(lineup.client.key))
    tree = ProcessTree(lineup.pid(name))
    before = tree.rss_bytes()
    with RSSSampler(tree) as rss:
        idle = asyncio.run(hold_idle("127.0.0.1", _port(lineup.target(name).url), context,
                                     count, hold))
    return IdleResult(name, count, idle.opened, idle.failed, idle.still_open,
                      before / 2**20, rss.peak / 2**20)


def polling_storm(lineup: Lineup, clients: int, runs: int, seconds: float,
                  warmup: float) -> Point:
    """``clients`` connections calling ``get_dag_run`` on ``runs`` runs in a loop."""
    bodies = [xmlrpc_body("get_dag_run", DAG, f"storm-run-{i}") for i in range(1, runs + 1)]
    b = lineup.target("B")
    target = rpc_target(f"B, storm {clients}x{runs}", _port(b.url), b.auth, *bodies)
    return measure(target, lineup.pid("B"), clients, seconds=seconds, warmup=warmup,
                   counts=lineup.counts["B"], prefix="storm")


@attrs.frozen
class WaitResult:
    calls: int
    runs: int
    interval: float
    finished_ok: int  # answered finished, state success
    early: int  # answered before its run ended
    failed: list[str]  # what the others answered (a few)
    max_late_s: float  # latest answer after its run ended
    polls: int  # upstream reads of these runs
    polls_per_run_interval: float  # per run, per poll interval it was watched
    peak_rss_mb: float
    cpu_s: float


def wait_storm(lineup: Lineup, calls: int, runs: int, interval: float,
               lead: float = 15.0, spread: float = 1.0) -> WaitResult:
    """
    ``calls`` concurrent ``wait_dag_run`` calls, spread over ``runs`` stub
    runs that finish ``lead`` s from now, ``spread`` s apart (time enough to
    open every connection first).
    """
    start = time.time()
    finish = {f"finish-at-{int((start + lead + k * spread) * 1000)}": start + lead + k * spread
              for k in range(runs)}
    run_ids = list(finish)
    plan = [run_ids[i % runs] for i in range(calls)]
    bodies = [xmlrpc_body("wait_dag_run", DAG, r, 300).encode() for r in plan]
    context = ssl.create_default_context(cafile=str(lineup.pki.ca_file))
    tree = ProcessTree(lineup.pid("B"))
    cpu_before = tree.cpu_seconds()
    with RSSSampler(tree) as rss:
        answers = asyncio.run(many_calls(
            "127.0.0.1", lineup.gateway_port, context, bodies,
            {"Authorization": f"Bearer {lineup.gateway_token}"}, timeout=lead + 120))
    cpu = tree.cpu_seconds() - cpu_before
    polls = lineup.stub.stats()["polls"]
    ok = early = 0
    late = 0.0
    failed: list[str] = []
    watched: dict[str, tuple[float, float]] = {}
    for run_id, answer in zip(plan, answers):
        first, last = watched.get(run_id, (answer.started, answer.ended))
        watched[run_id] = (min(first, answer.started), max(last, answer.ended))
        result = answer.result
        if isinstance(result, dict) and result.get("finished") and \
                result.get("state") == "success":
            ok += 1
        elif len(failed) < 3:
            failed.append(repr(result)[:160])
        if answer.ended < finish[run_id]:
            early += 1
        late = max(late, answer.ended - finish[run_id])
    per_interval = [polls.get(r, 0) / max(1.0, (last - first) / interval)
                    for r, (first, last) in watched.items()]
    return WaitResult(
        calls=calls, runs=runs, interval=interval, finished_ok=ok, early=early,
        failed=failed, max_late_s=late, polls=sum(polls.get(r, 0) for r in run_ids),
        polls_per_run_interval=sum(per_interval) / len(per_interval),
        peak_rss_mb=rss.peak / 2**20, cpu_s=cpu,
    )


def extra_gateway(processes: Processes, work: Path, lineup: Lineup, name: str,
                  fragment: str, concurrencies: tuple[int, ...], seconds: float,
                  warmup: float, rounds: int = 1, share: int = 1,
                  ) -> tuple[list[Point], list[Point], list[Point],
                             dict[int, list[float | None]]] | Refused:
    """
    Another gateway, the benchmark's config with ``fragment`` laid over it,
    measured like B at ``concurrencies``, ``rounds`` times, each time next
    to the lineup's B at the same concurrency, before it in odd rounds and
    after it in even ones (so that both ratios' sides see the same moment of
    a noisy machine, neither always second), and then B at
    ``1/share`` of it (the connections each of ``share`` workers sees, as
    ``B, one worker's share``: a gateway's CPU per call depends on how many
    callers it serves at once); the medians of the three and, by
    concurrency, each round's ratio of its calls/s to B's (measured side by
    side), or `Refused` if twistd would not take the config.  Stopped before
    returning.
    """
    port = free_port()
    directory = work / name.replace(" ", "-").replace(",", "")

    def write(fragments: tuple[str, ...]) -> Path:
        return gateway_config(directory, port=port, tls=lineup.pki.directory,
                              airflow=lineup.stub.url, password="bench-password",
                              fragments=fragments)

    # The token is minted with the plain config (the CLI checks the config
    # too), so that it is twistd's own verdict on the fragment that counts.
    token = create_token(write(()))
    config = write((fragment,))
    gateway = start_gateway(processes, name, config, accepts(port))
    if isinstance(gateway, Refused):
        return gateway
    try:
        body = xmlrpc_body("get_dag_run", DAG, "bench-run-1")
        target = rpc_target(name, port, f"Bearer {token}", body)
        # Its upstream requests per call: each worker shares reads only among its own callers.
        chains = ChainsCalls(directory / "audit")

        def counts() -> tuple[int, int]:
            return lineup.stub.requests(), chains()

        points, base, shares = [], [], []
        ratios: dict[int, list[float | None]] = {}
        alone = lineup.target("B")
        one_share = attrs.evolve(alone, name="B, one worker's share")
        for c in concurrencies:
            theirs, ours, share_of = [], [], []
            for r in range(rounds):
                # Who goes first alternates from round to round, so that neither
                # side always meets the machine as the other left it.
                first, then = (theirs, ours) if r % 2 == 0 else (ours, theirs)
                for side in (first, then):
                    if side is theirs:
                        theirs.append(measure(target, gateway.pid, c, seconds=seconds,
                                              warmup=warmup, counts=counts, prefix=f"x{c}r{r}"))
                    else:
                        ours.append(measure(alone, lineup.pid("B"), c, seconds=seconds,
                                            warmup=warmup, counts=lineup.counts.get("B"),
                                            prefix=f"b{c}r{r}"))
                share_of.append(measure(one_share, lineup.pid("B"), max(1, c // share),
                                        seconds=seconds, warmup=warmup,
                                        counts=lineup.counts.get("B"), prefix=f"s{c}r{r}"))
                ratios.setdefault(c, []).append(  # None: B made no calls, no ratio
                    theirs[-1].rate / ours[-1].rate if ours[-1].rate else None)
                print(f"{name} c={c} round {r + 1}/{rounds}: {theirs[-1].rate:,.0f} vs B's "
                      f"{ours[-1].rate:,.0f} calls/s (B at c={share_of[-1].concurrency}: "
                      f"{share_of[-1].cpu_us_per_call or 0:,.0f} µs/call)", flush=True)
            points.append(median_point(theirs))
            base.append(median_point(ours))
            shares.append(median_point(share_of))
        split = {path.name: sum(1 for line in path.open("rb") if b'"kind":"call"' in line)
                 for path in sorted((directory / "audit").glob("audit.w*.jsonl"))}
        if split:  # how evenly the kernel spread the connections over the workers
            print(f"{name}: calls recorded per worker chain: {split}", flush=True)
        return points, base, shares, ratios
    finally:
        processes.stop(gateway)


def listening(port: int) -> int:
    """How many sockets listen on 127.0.0.1:``port`` (from /proc/net/tcp)."""
    # The address as the kernel prints it: its 32 bits in the host's byte order.
    address = struct.unpack("=I", socket.inet_aton("127.0.0.1"))[0]
    wanted = f"{address:08X}:{port:04X}"
    with open("/proc/net/tcp") as f:
        next(f)
        return sum(1 for fields in map(str.split, f)
                   if fields[1] == wanted and fields[3] == "0A")  # LISTEN


def floor_processes(processes: Processes, lineup: Lineup, count: int, concurrency: int,
                    seconds: float, warmup: float, rounds: int = 1,
                    ) -> tuple[Point, Point, list[float]]:
    """
    The floor served by ``count`` processes (`servers/floor.py` ``--processes``),
    measured at ``concurrency`` ``rounds`` times, each time just before the
    lineup's A; the medians of both and each round's ratio of their calls/s.
    Stopped before returning.
    """
    port = free_port()
    process, log = processes.start(f"A-{count}-processes", [
        sys.executable, str(HERE / "servers" / "floor.py"), "--port", str(port),
        "--tls", str(lineup.pki.directory), "--processes", str(count)])
    try:
        wait_until(lambda: listening(port) == count, 30, f"A with {count} processes",
                   alive=process, log=log)
        one = lineup.target("A")
        target = attrs.evolve(one, name=f"A, {count} processes",
                              url=f"https://127.0.0.1:{port}")
        theirs, ours = [], []
        for r in range(rounds):
            theirs.append(measure(target, process.pid, concurrency, seconds=seconds,
                                  warmup=warmup, prefix=f"fp{r}"))
            ours.append(measure(one, lineup.pid("A"), concurrency, seconds=seconds,
                                warmup=warmup, prefix=f"fa{r}"))
            print(f"A, {count} processes c={concurrency} round {r + 1}/{rounds}: "
                  f"{theirs[-1].rate:,.0f} vs A's {ours[-1].rate:,.0f} calls/s", flush=True)
        ratios = [t.rate / o.rate for t, o in zip(theirs, ours) if o.rate]
        return median_point(theirs), median_point(ours), ratios
    finally:
        processes.stop(process)
