"""
What a benchmark run found, as a markdown table, the target lines and a
PNG plot.  Nothing here measures; it only reads `Point`s and the scenario
results, and says "met" or "NOT met" with the value next to its limit.
"""

from __future__ import annotations

import os
import statistics
from pathlib import Path
from typing import Iterable

from gatewayproc import Refused
from loadgen import Point
from scenarios import IdleResult, WaitResult

IDLE_RSS_LIMIT_MB = 150


def _n(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}"


def _errors(point: Point) -> str:
    if not point.error_count:
        return "0"
    parts = ", ".join(f"{k} {v}" for k, v in point.errors.items() if v)
    return f"{point.error_count} ({parts})"


HEADER = ("| server | c | calls/s | p50 ms | p90 ms | p99 ms | errors | peak RSS MB "
          "| CPU µs/call | server CPU % | wrk CPU % | upstream req/call |")


def point_row(p: Point) -> str:
    return (f"| {p.server} | {p.concurrency} | {_n(p.rate)} | {_n(p.p50_ms, 2)} "
            f"| {_n(p.p90_ms, 1)} | {_n(p.p99_ms, 1)} | {_errors(p)} | {_n(p.peak_rss_mb, 1)} "
            f"| {_n(p.cpu_us_per_call)} | {_n(p.server_cpu_pct)} | {_n(p.wrk_cpu_pct)} "
            f"| {_n(p.upstream_per_call, 3)} |")


def table(points: Iterable[Point]) -> list[str]:
    rule = "|" + "|".join("---" for _ in range(HEADER.count("|") - 1)) + "|"
    return [HEADER, rule, *(point_row(p) for p in points)]


AIRFLOW_HEADER = ("| call: via | c | calls/s | p50 ms | p90 ms | p99 ms | errors "
                  "| Airflow requests per call | Airflow's answer, mean ms "
                  "| audit writes per call | audit write, mean ms "
                  "| gateway CPU µs/call | Airflow CPU µs/call |")


def airflow_table(points: Iterable[Point]) -> list[str]:
    """
    The real-Airflow part, one row per point.  For the gateway, its own
    account (its /metrics, read before and after the point): per call, how
    many exchanges with Airflow and audit writes it waited for, and each
    one's mean duration -- what of a call is Airflow's and what the
    gateway's.  (wrk's percentiles are corrected for coordinated omission;
    these means are not.)
    """
    rows = [AIRFLOW_HEADER, "|" + "|".join("---" for _ in range(AIRFLOW_HEADER.count("|") - 1))
            + "|"]
    for p in points:
        gateway_cpu = None if "REST" in p.server else p.cpu_us_per_call
        rows.append(f"| {p.server} | {p.concurrency} | {_n(p.rate, 1)} | {_n(p.p50_ms, 1)} "
                    f"| {_n(p.p90_ms, 1)} | {_n(p.p99_ms, 1)} | {_errors(p)} "
                    f"| {_n(p.upstream_per_call, 2)} | {_n(p.inside.get('airflow_ms'), 1)} "
                    f"| {_n(p.inside.get('audit_per_call'), 2)} "
                    f"| {_n(p.inside.get('audit_ms'), 2)} "
                    f"| {_n(gateway_cpu)} | {_n(p.also_cpu_us.get('Airflow'))} |")
    return rows


#: What 2 workers should reach, in calls/s, against one (issue 9).
WORKERS_RATIO = 1.7


def _verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def load_generator_line(points: Iterable[Point]) -> str | None:
    """How busy wrk itself was at its busiest point: it must not be the bottleneck."""
    busiest = max(points, key=lambda p: p.wrk_cpu_pct, default=None)
    if busiest is None:
        return None
    return (f"report: load generator: wrk used at most {busiest.wrk_cpu_pct:.0f}% of one core "
            f"(against {busiest.server} at c={busiest.concurrency}, whose server used "
            f"{busiest.server_cpu_pct:.0f}%); the machine has {os.cpu_count()} cores")


def target_lines(points: dict[tuple[str, int], Point], idle: dict[str, IdleResult],
                 storm: Point | None, waits: WaitResult | None,
                 workers: list[Point] | Refused | None,
                 workers_base: list[Point] | None = None,
                 floor_pair: tuple[Point, Point] | None = None,
                 workers_share: list[Point] | None = None,
                 workers_ratios: dict[int, list[float | None]] | None = None,
                 floor_ratios: list[float] | None = None) -> list[str]:
    """One line per target: met / NOT met (value vs limit); "report:" where there is no limit."""
    lines = []
    generator = load_generator_line(points.values())
    if generator:
        lines.append(generator)
    a, b = points.get(("A", 64)), points.get(("B", 64))
    if a and b:
        ratio = b.rate / a.rate if a.rate else 0.0
        lines.append(
            f"target: B ≥ 0.5x A's calls/s at c=64, zero errors: "
            f"{_verdict(ratio >= 0.5 and b.error_count == 0)} "
            f"({ratio:.2f}x: B {_n(b.rate)} vs A {_n(a.rate)} calls/s, limit ≥ 0.50x; "
            f"B errors {b.error_count})")
        if a.cpu_us_per_call and b.cpu_us_per_call:
            cpu = b.cpu_us_per_call / a.cpu_us_per_call
            lines.append(
                f"target: B's CPU per call ≤ 2x A's (c=64): {_verdict(cpu <= 2)} "
                f"({cpu:.1f}x: B {_n(b.cpu_us_per_call)} µs vs A {_n(a.cpu_us_per_call)} µs, "
                f"limit ≤ 2.0x = {_n(2 * a.cpu_us_per_call)} µs)")
    for c in (1, 64, 512):
        a, x = points.get(("A", c)), points.get(("B/distinct", c))
        if a and x and a.rate and a.cpu_us_per_call and x.cpu_us_per_call:
            lines.append(
                f"report: B with nothing shared (every call a different run) at c={c}: "
                f"{x.rate / a.rate:.2f}x A's calls/s ({_n(x.rate)} vs {_n(a.rate)}), CPU per "
                f"call {x.cpu_us_per_call / a.cpu_us_per_call:.1f}x A's "
                f"({_n(x.cpu_us_per_call)} µs vs {_n(a.cpu_us_per_call)} µs), "
                f"{_n(x.upstream_per_call, 3)} upstream requests per call, "
                f"errors {x.error_count}")
    b, c = points.get(("B", 512)), points.get(("C", 512))
    if b and c:
        ratio = b.rate / c.rate if c.rate else 0.0
        lines.append(
            f"target: B ≥ 2x C's calls/s at c=512, zero errors: "
            f"{_verdict(ratio >= 2 and b.error_count == 0)} "
            f"({ratio:.2f}x: B {_n(b.rate)} vs C {_n(c.rate)} calls/s, limit ≥ 2.00x; "
            f"B errors {b.error_count})")
        lines.append(
            f"target: B's p99 ≤ half of C's at c=512: {_verdict(b.p99_ms <= c.p99_ms / 2)} "
            f"({_n(b.p99_ms)} ms vs limit ≤ {_n(c.p99_ms / 2)} ms = C's {_n(c.p99_ms)} ms / 2)")
    b, d = points.get(("B", 1)), points.get(("D", 1))
    if b and d:
        lines.append(
            f"target: B's p50 ≤ D's p50 + 1 ms at c=1: {_verdict(b.p50_ms <= d.p50_ms + 1)} "
            f"({_n(b.p50_ms, 2)} ms vs limit ≤ {_n(d.p50_ms + 1, 2)} ms = D's "
            f"{_n(d.p50_ms, 2)} ms + 1)")
    if "B" in idle:
        i = idle["B"]
        held = i.opened == i.wanted and i.still_open == i.wanted
        other = (f"; A for comparison: {_n(idle['A'].peak_rss_mb, 1)} MB"
                 if "A" in idle else "")
        lines.append(
            f"target: {i.wanted:,} idle mutual-TLS connections to B, peak RSS ≤ "
            f"{IDLE_RSS_LIMIT_MB} MB: {_verdict(i.peak_rss_mb <= IDLE_RSS_LIMIT_MB and held)} "
            f"({_n(i.peak_rss_mb, 1)} MB vs ≤ {IDLE_RSS_LIMIT_MB} MB, from "
            f"{_n(i.rss_before_mb, 1)} MB; {i.opened:,} opened, {i.still_open:,} still open "
            f"at the end{other})")
    if storm is not None:
        lines.append(
            f"report: polling storm ({storm.server}): "
            f"{_n(storm.upstream_per_call, 3)} upstream requests per client call "
            f"({_n(storm.rate)} calls/s, p99 {_n(storm.p99_ms)} ms, errors {storm.error_count})")
    if waits is not None:
        w = waits
        all_ok = w.finished_ok == w.calls and w.early == 0 and w.max_late_s <= w.interval + 1
        lines.append(
            f"report: {w.calls:,} concurrent wait_dag_run on {w.runs} runs: "
            f"{w.polls_per_run_interval:.2f} upstream polls per run per {w.interval:g} s poll "
            f"interval ({w.polls} polls in all)")
        lines.append(
            f"target: every wait_dag_run returns when its run ends: {_verdict(all_ok)} "
            f"({w.finished_ok:,}/{w.calls:,} finished with state success, {w.early} before "
            f"their run ended, the latest {w.max_late_s:.2f} s after it, limit ≤ "
            f"{w.interval + 1:g} s = one poll interval + 1 s"
            + (f"; others: {'; '.join(w.failed)}" if w.failed else "") + ")")
    if isinstance(workers, Refused):
        lines.append(f"B, 2 workers: not measured: the gateway refused the config "
                     f"({workers.reason})")
    elif workers:
        one = {p.concurrency: p for p in (points.get(("B", c)) for c in (64, 512)) if p}
        one.update({p.concurrency: p for p in workers_base or ()})  # measured alongside
        shares = dict(zip((p.concurrency for p in workers), workers_share or ()))
        for p in workers:
            base = one.get(p.concurrency)
            if p.concurrency == 64 and base and base.rate:
                # Each round's two sides saw the same minute of a noisy machine:
                # the verdict is on the median of the rounds' ratios, not on the
                # ratio of two medians that may come from different rounds.
                # The lower middle of an even count, as the medians of the series.
                rounds = (workers_ratios or {}).get(64) or [p.rate / base.rate]
                missing = [str(k + 1) for k, r in enumerate(rounds) if r is None]
                ratio = statistics.median_low([r for r in rounds if r is not None] or [0.0])
                said = ", ".join("B made no calls" if r is None else f"{r:.3f}x" for r in rounds)
                lines.append(
                    f"target: B with 2 workers ≥ 1.7x B's calls/s at c=64, zero errors: "
                    f"{_verdict(ratio >= WORKERS_RATIO and p.error_count == 0 and not missing)} "
                    f"({ratio:.3f}x, the median of the rounds' {said}"
                    + (f" (no verdict: round {', '.join(missing)} has no ratio)"
                       if missing else "")
                    + ", each the workers against B "
                    f"measured next to them; the medians: {_n(p.rate)} vs B's "
                    f"{_n(base.rate)} calls/s = {p.rate / base.rate:.3f}x; limit ≥ "
                    f"{WORKERS_RATIO:.2f}x; errors {p.error_count}; CPU "
                    f"{_n(p.cpu_us_per_call)} vs {_n(base.cpu_us_per_call)} µs/call; upstream "
                    f"{_n(p.upstream_per_call, 3)} vs {_n(base.upstream_per_call, 3)} "
                    f"requests per call)")
                lines.extend(_machine_line(p, base))
                lines.extend(_share_line(p, base, shares.get(p.concurrency)))
                lines.extend(_reference_line(floor_pair, floor_ratios))
                continue
            versus = f" = {p.rate / base.rate:.2f}x B's {_n(base.rate)}" if base and base.rate else ""
            rounds = [r for r in (workers_ratios or {}).get(p.concurrency, []) if r is not None]
            if rounds:
                versus += (f" (by the rounds {statistics.median_low(rounds):.2f}x: "
                           f"{', '.join(f'{r:.3f}x' for r in rounds)})")
            lines.append(f"report: B, 2 workers at c={p.concurrency}: {_n(p.rate)} calls/s"
                         f"{versus}, CPU {_n(p.cpu_us_per_call)} µs/call, errors "
                         f"{p.error_count}")
            lines.extend(_machine_line(p, None))
            lines.extend(_share_line(p, base, shares.get(p.concurrency)))
    return lines


def _share_line(p: Point, base: Point | None, share: Point | None) -> list[str]:
    """
    B alone at the connections each worker saw (``share``) beside the
    workers' CPU per call and B's at all of them: how much of the workers'
    extra CPU per call B pays too when it serves that many callers at once
    (fewer records per audit fsync, fewer callers per shared read).
    """
    if share is None or not share.rate:
        return []
    line = (f"report: B alone at c={share.concurrency} (one worker's share of c="
            f"{p.concurrency}): CPU {_n(share.cpu_us_per_call)} µs/call, upstream "
            f"{_n(share.upstream_per_call, 3)} requests per call, {_n(share.rate)} calls/s, errors "
            f"{share.error_count}; the 2 workers at c={p.concurrency}: {_n(p.cpu_us_per_call)} "
            f"µs/call")
    if base is not None:
        line += f"; B at c={base.concurrency}: {_n(base.cpu_us_per_call)} µs/call"
    return [line]


def _reference_line(floor_pair: tuple[Point, Point] | None,
                    rounds: list[float] | None = None) -> list[str]:
    """
    What two processes of the floor (A) reached against one, measured in
    turn like the workers against B: a reference for the workers' ratio on
    this machine, with wrk and the stub on the same cores.  Not a bound: a
    server whose calls cost more CPU than A's leaves wrk a smaller share
    and could scale a little better.
    """
    if not floor_pair or not floor_pair[1].rate:
        return []
    two, one = floor_pair
    rounds = rounds or [two.rate / one.rate]
    line = (f"report: for reference, A (twisted.web + TLS, fixed reply) served by 2 processes "
            f"made {statistics.median_low(rounds):.3f}x one A at c={two.concurrency} (the median of "
            f"the rounds' {', '.join(f'{r:.3f}x' for r in rounds)}; the medians: {_n(two.rate)} vs "
            f"{_n(one.rate)} calls/s; CPU {_n(two.cpu_us_per_call)} vs "
            f"{_n(one.cpu_us_per_call)} µs/call; wrk {two.wrk_cpu_pct:.0f}% vs "
            f"{one.wrk_cpu_pct:.0f}%; errors {two.error_count} and {one.error_count})")
    return [line]


def _machine_line(p: Point, base: Point | None) -> list[str]:
    """
    Where the machine's CPU went while ``p`` (the workers) was measured, and,
    given the ``base`` it is compared with, what ``WORKERS_RATIO`` x ``base``
    would have taken at ``p``'s CPU per call and at ``base``'s: the ceiling
    the cores put on the ratio, measured rather than argued.
    """
    if p.machine_cpu_pct is None or not p.cores:
        return []
    total = 100 * p.cores
    rest = max(0.0, p.machine_cpu_pct - p.server_cpu_pct - p.wrk_cpu_pct)
    line = (f"report: while B, 2 workers ran at c={p.concurrency} the machine was "
            f"{p.machine_cpu_pct / p.cores:.0f}% busy ({p.machine_cpu_pct:.0f}% of "
            f"{total}%: the workers {p.server_cpu_pct:.0f}%, wrk {p.wrk_cpu_pct:.0f}%, the rest "
            f"(stub, kernel, others) {rest:.0f}%)")
    if base and base.rate and p.cpu_us_per_call and base.cpu_us_per_call:
        wanted = WORKERS_RATIO * base.rate
        line += (f"; {WORKERS_RATIO:.1f}x B ({_n(wanted)} calls/s) would take "
                 f"{wanted * p.cpu_us_per_call / 1e4:.0f}% for the workers at their CPU per "
                 f"call, {wanted * base.cpu_us_per_call / 1e4:.0f}% at one worker's; the others left "
                 f"{total - p.wrk_cpu_pct - rest:.0f}%")
    return [line]


LABELS = {"A": "A twisted.web + TLS, fixed reply", "B": "B txairflowrpc",
          "B/distinct": "B txairflowrpc, every call a different run",
          "C": "C stdlib threads", "D": "D stub REST over TLS"}


def plot(points: list[Point], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    servers: dict[str, list[Point]] = {}
    for p in points:
        servers.setdefault(p.server, []).append(p)
    fig, axes = plt.subplots(1, 3, figsize=(16, 5))
    panels = [("calls/s (log)", lambda p: p.rate, True),
              ("p99 latency, ms (log)", lambda p: p.p99_ms, True),
              ("server CPU per call, µs (log)", lambda p: p.cpu_us_per_call, True)]
    for ax, (title, value, log) in zip(axes, panels):
        for name, series in servers.items():
            series = sorted(series, key=lambda p: p.concurrency)
            ax.plot([p.concurrency for p in series], [value(p) for p in series],
                    marker="o", label=LABELS.get(name, name))
        ax.set_xscale("log", base=2)
        if log:
            ax.set_yscale("log")
        ax.set_xlabel("concurrent connections (wrk -c)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("get_dag_run against a stub Airflow, wrk over keep-alive TLS", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
