"""
The real HAProxy (Debian's) as a test runs it: ``haproxy -f CFG -db`` in
the foreground, a child of the test, its config checked with ``-c`` first,
stopped by its own pid.  Nothing skips: without ``haproxy`` on the PATH the
tests that need it fail (``make system-deps`` installs it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path


def haproxy_binary() -> str:
    found = shutil.which("haproxy") or next(
        (p for p in ("/usr/sbin/haproxy", "/sbin/haproxy") if os.access(p, os.X_OK)), None)
    assert found, "haproxy is not installed: run `make system-deps` (Debian package haproxy)"
    return found


class HAProxyProcess:
    """One HAProxy with ``config`` (written to ``<directory>/<name>.cfg``, its output to ``.log``)."""

    def __init__(self, directory: Path, name: str, config: str) -> None:
        self.config = directory / f"{name}.cfg"
        self.log = directory / f"{name}.log"
        self.config.write_text(config)
        self.binary = haproxy_binary()
        check = subprocess.run([self.binary, "-c", "-f", str(self.config)],
                               check=False, capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, check.stdout + check.stderr
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen([self.binary, "-f", str(self.config), "-db"],
                                            stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # this pid only: the one the test started
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
