"""
Every server the benchmark starts, and the promise that it stops them.

`Processes` starts each command in its own session (so it and its
children form one process group) and, when the ``with`` block ends --
normally, on an error or on Ctrl-C -- sends SIGTERM to each group, waits,
then SIGKILLs what is left.  It never signals anything it did not start.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(ready: Callable[[], bool], timeout: float, what: str,
               alive: subprocess.Popen | None = None, log: Path | None = None) -> None:
    """Poll ``ready`` until it is true; fail if ``alive`` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if alive is not None and alive.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log else ""
            raise RuntimeError(f"{what} exited with {alive.returncode}\n{tail}")
        if ready():
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} not ready after {timeout} s")


def accepts(port: int) -> Callable[[], bool]:
    def check() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            return False
    return check


class Processes:
    """The process groups this benchmark started."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._started: list[subprocess.Popen] = []

    def start(self, name: str, argv: list[str], **kwargs) -> tuple[subprocess.Popen, Path]:
        log = self._directory / f"{name}.log"
        with log.open("ab") as out:
            process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True,
                                       **kwargs)
        self._started.append(process)
        return process, log

    def stop(self, process: subprocess.Popen, timeout: float = 15) -> None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(process.pid, signal.SIGKILL)  # whatever of the group is left
        except ProcessLookupError:
            pass
        process.wait()
        if process in self._started:
            self._started.remove(process)

    def __enter__(self) -> "Processes":
        return self

    def __exit__(self, *exc: object) -> None:
        # Ctrl-C again while stopping must not leave servers behind.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            for process in reversed(list(self._started)):
                self.stop(process)
        finally:
            signal.signal(signal.SIGINT, previous)
