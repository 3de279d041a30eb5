"""
What a server's process tree costs, read from /proc (Linux only).

`ProcessTree` finds a process and all its descendants at the moment it is
asked (so worker processes started later are counted too), and reports
their summed CPU time (user + system, in seconds) and resident memory.
`RSSSampler` samples the tree's summed RSS in a background thread and
keeps the peak, because a tree's peak is not the sum of its members'
``VmHWM`` (those peak at different moments).  Neither ever raises for a
process that exits while it is being read.  `machine_cpu` reads the whole
machine's busy and total CPU time (every process and the kernel's own
threads), so that a run can say how much of the machine was left over.
"""

from __future__ import annotations

import os
import threading

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read().decode("ascii", "replace")
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces.
    return text[text.rindex(")") + 2:].split()


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = _stat_fields(int(name))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(name))
    return children


def machine_cpu() -> tuple[float, float]:
    """
    CPU seconds the whole machine has been busy and in all, summed over its
    cores, since boot (the ``cpu`` line of /proc/stat): busy is everything
    but idle and iowait (user, nice, system, irq, softirq, steal).
    """
    with open("/proc/stat", "rb") as f:
        fields = [int(x) for x in f.readline().split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = fields
    busy = user + nice + system + irq + softirq + steal
    return busy / _TICKS, (busy + idle + iowait) / _TICKS


class ProcessTree:
    """A process and its descendants, looked up afresh on every read."""

    def __init__(self, root: int) -> None:
        self.root = root

    def pids(self) -> list[int]:
        children = _children_map()
        found, todo = [], [self.root]
        while todo:
            pid = todo.pop()
            found.append(pid)
            todo.extend(children.get(pid, ()))
        return found

    def cpu_seconds(self) -> float:
        """User + system CPU of the live members (their threads included)."""
        total = 0
        for pid in self.pids():
            fields = _stat_fields(pid)
            if fields is not None:
                total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / _TICKS

    def rss_bytes(self) -> int:
        total = 0
        for pid in self.pids():
            try:
                with open(f"/proc/{pid}/statm", "rb") as f:
                    total += int(f.read().split()[1]) * _PAGE
            except (OSError, ValueError, IndexError):
                pass
        return total


class RSSSampler:
    """
    Samples a tree's RSS every ``interval`` seconds between `start` and
    `stop`; `stop` returns the peak seen (bytes).  A context manager.
    """

    def __init__(self, tree: ProcessTree, interval: float = 0.2) -> None:
        self._tree = tree
        self._interval = interval
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.peak = 0

    def _run(self) -> None:
        while True:
            self.peak = max(self.peak, self._tree.rss_bytes())
            if self._done.wait(self._interval):
                return

    def start(self) -> "RSSSampler":
        self._thread.start()
        return self

    def stop(self) -> int:
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, self._tree.rss_bytes())
        return self.peak

    def __enter__(self) -> "RSSSampler":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
