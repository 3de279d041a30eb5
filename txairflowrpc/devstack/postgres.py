"""
A throwaway PostgreSQL cluster for a local Airflow, on loopback.

Airflow's scheduler on SQLite dies ("database is locked") under concurrent
load; PostgreSQL is what Airflow recommends past development.  A test
cannot count on a cluster started by hand, so `LocalPostgres` makes its
own: ``initdb`` into a fresh temporary directory, ``postgres`` listening on
127.0.0.1 on a free port with its unix socket in that directory, a user and
a database for Airflow, and at the end a fast shutdown by pid and the
directory removed.

PostgreSQL refuses to run as root, so as root every server binary runs as
the ``postgres`` system user (Debian's ``postgresql`` package creates it);
as anyone else it runs as that user.  The binaries are Debian's, under
``/usr/lib/postgresql/<version>/bin`` (the newest found), or wherever
``PG_BIN`` says.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

DATABASE = "airflow"
USER = "airflow"


def pg_bin() -> Path:
    """Where ``initdb`` and ``postgres`` are; `RuntimeError` if nowhere."""
    if os.environ.get("PG_BIN"):
        return Path(os.environ["PG_BIN"])
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                   key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit()
                   else 0)
    if not found:
        raise RuntimeError("PostgreSQL is not installed (Debian: apt-get install postgresql; "
                           "make system-deps does it)")
    return found[-1].parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalPostgres:
    """
    One throwaway cluster.  `start` returns once it accepts connections
    and the database exists; `stop` ends it (fast shutdown, then SIGKILL)
    and removes its directory.  Use it as a context manager, or call
    `stop` in a ``finally``: it is safe to call at any point, and twice.
    """

    def __init__(self, *, port: int | None = None) -> None:
        self.port = port or _free_port()
        self.password = secrets.token_urlsafe(18)
        self.directory: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self._bin = pg_bin()
        self._as: dict[str, Any] = {}
        if os.geteuid() == 0:
            account = pwd.getpwnam("postgres")
            self._as = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}

    @property
    def url(self) -> str:
        """The SQLAlchemy URL Airflow connects with (psycopg2, over TCP)."""
        return (f"postgresql+psycopg2://{USER}:{self.password}"
                f"@127.0.0.1:{self.port}/{DATABASE}")

    @property
    def data(self) -> Path:
        assert self.directory is not None
        return self.directory / "data"

    @property
    def log_path(self) -> Path:
        assert self.directory is not None
        return self.directory / "postgres.log"

    def _run(self, *argv: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, check=True, capture_output=True, text=True,
                              cwd=self.directory, env=self._env(), **self._as, **kwargs)

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C.UTF-8", LANG="C.UTF-8")
        return env

    def start(self, timeout: float = 60.0) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="txairflowrpc-pg-"))
        if self._as:
            os.chown(self.directory, self._as["user"], self._as["group"])
        try:
            self._run(str(self._bin / "initdb"), "-D", str(self.data), "-U", "postgres",
                      "--auth-local=peer" if self._as else "--auth-local=trust",
                      "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync")
            with self.log_path.open("ab") as log:
                if self._as:
                    os.chown(self.log_path, self._as["user"], self._as["group"])
                self.process = subprocess.Popen(
                    [str(self._bin / "postgres"), "-D", str(self.data),
                     "-h", "127.0.0.1", "-p", str(self.port), "-k", str(self.directory),
                     # Throwaway data: durability buys nothing here but time lost.
                     "-c", "fsync=off", "-c", "synchronous_commit=off",
                     "-c", "full_page_writes=off", "-c", "max_connections=200"],
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    cwd=self.directory, env=self._env(), start_new_session=True, **self._as,
                )
            self._wait_ready(timeout)
            self._psql(f"CREATE ROLE {USER} LOGIN PASSWORD '{self.password}'")
            self._psql(f"CREATE DATABASE {DATABASE} OWNER {USER}")
        except BaseException:
            self.stop()
            raise

    def _psql(self, sql: str) -> None:
        self._run(str(self._bin / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1",
                  "-h", str(self.directory), "-p", str(self.port), "-U", "postgres",
                  "-d", "postgres", "-c", sql)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres exited with {self.process.returncode}: "
                                   f"{self.log_path.read_text(errors='replace')[-2000:]}")
            ready = subprocess.run(
                [str(self._bin / "pg_isready"), "-q", "-h", str(self.directory),
                 "-p", str(self.port)], env=self._env())
            if ready.returncode == 0:
                return
            time.sleep(0.2)
        raise RuntimeError(f"postgres not ready after {timeout} s; see {self.log_path}")

    def stop(self) -> None:
        """Fast shutdown (SIGINT to the postmaster), SIGKILL after 20 s; remove the files."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(process.pid, signal.SIGKILL)  # its backends too
                except ProcessLookupError:
                    pass
                process.wait(timeout=10)
        directory, self.directory = self.directory, None
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)

    def __enter__(self) -> "LocalPostgres":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
