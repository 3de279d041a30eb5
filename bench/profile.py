"""
``make profile``: where the gateway's CPU goes under the benchmark's c=64
``get_dag_run`` load (stub Airflow, wrk over TLS, token, audit with fsync).

py-spy samples the running ``twistd`` twice while wrk keeps the load on,
counting only stacks that hold the GIL (CPU spent in Python, and in C
called from it):
once for a flamegraph (``bench/results/profile-gateway.svg``), once for
raw collapsed stacks (``profile-gateway.txt``) from which it prints the
functions that hold the CPU most, by own time and by time including what
they call.  ``--native`` adds C frames (OpenSSL, the XML parser) where
py-spy can see them.  Every server it starts is stopped at the end.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from lineup import start_lineup  # noqa: E402
from loadgen import _wrk  # noqa: E402
from processes import Processes  # noqa: E402

PY_SPY = Path(sys.executable).parent / "py-spy"


def record(pid: int, output: Path, fmt: str, seconds: int, native: bool) -> None:
    argv = [str(PY_SPY), "record", "--pid", str(pid), "--duration", str(seconds),
            "--format", fmt, "--output", str(output), "--rate", "200",
            # Only stacks holding the GIL: where Python burns CPU, not the
            # thread pool's idle workers waiting on their queue.
            "--gil"]
    if native:
        argv.append("--native")
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)


def top(raw: Path, n: int = 25) -> list[str]:
    """The heaviest frames of py-spy's collapsed stacks: own and inclusive share."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        samples = int(count)
        total += samples
        own[frames[-1]] += samples
        for frame in set(frames):
            inclusive[frame] += samples
    lines = [f"{total} samples", "", "own time:"]
    lines += [f"  {100 * c / total:5.1f}%  {f}" for f, c in own.most_common(n)]
    lines += ["", "including callees:"]
    lines += [f"  {100 * c / total:5.1f}%  {f}" for f, c in inclusive.most_common(3 * n)
              if c < total][:2 * n]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--native", action="store_true")
    parser.add_argument("--distinct", action="store_true",
                        help="every call a different run (B/distinct): nothing shared")
    parser.add_argument("--results", type=Path, default=HERE / "results")
    args = parser.parse_args()
    args.results.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="txairflowrpc-profile-"))
    svg = args.results / "profile-gateway.svg"
    raw = args.results / "profile-gateway.txt"
    try:
        with Processes(work) as processes:
            lineup = start_lineup(processes, work)
            target = lineup.target("B/distinct" if args.distinct else "B")
            pid = lineup.pid("B")
            _wrk(target, args.concurrency, 3, "warm")
            for output, fmt in ((svg, "flamegraph"), (raw, "raw")):
                load = threading.Thread(
                    target=_wrk, args=(target, args.concurrency, args.seconds + 2, "prof"),
                    daemon=True)
                load.start()
                record(pid, output, fmt, args.seconds, args.native)
                load.join()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary = top(raw)
    (args.results / "profile-gateway-top.txt").write_text("\n".join(summary) + "\n")
    print("\n".join(summary))
    print(f"\nflamegraph: {svg}\nraw stacks: {raw}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
