"""
A real Airflow 3 (``airflow standalone``) on loopback, for the integration
tests, the benchmark and ``make run``.

`LocalAirflow` prepares an ``AIRFLOW_HOME`` with the DAGs from
``conf/dags`` and fixed passwords, starts ``airflow standalone`` in its own
session, waits until ``/api/v2/monitor/health`` answers, and stops it by
killing its process group.  Its metadata database is SQLite in
``AIRFLOW_HOME`` unless ``database`` names another (a SQLAlchemy URL, e.g.
`txairflowrpc.devstack.postgres.LocalPostgres.url`): SQLite is enough for
a person trying things, not for concurrent load.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DAGS = REPO / "conf" / "dags"
#: The DAGs in `DAGS`: each file holds one, named after the file.
EXAMPLE_DAGS = tuple(sorted(path.stem for path in DAGS.glob("*.py")))
#: Where the Makefile installs Airflow 3.3.2.
AIRFLOW_VENV = Path(os.environ.get("AIRFLOW_VENV", REPO / ".airflow-venv"))

GATEWAY_USER = "gateway"
#: Airflow accounts of callers, for ``[principals.NAME] airflow_user``: one
#: that may only read (SimpleAuthManager role "viewer"), one that may trigger
#: runs ("user"), as the gateway's own account may.
READER_USER = "reader"
BUILDER_USER = "builder"
ACCOUNT_ROLES = {READER_USER: "viewer", BUILDER_USER: "user"}
#: How long a write to the SQLite database waits for another's to end, in seconds.
SQLITE_BUSY_SECONDS = 30


class LocalAirflow:
    def __init__(
        self, home: Path, port: int, gateway_password: str, *, database: str | None = None
    ) -> None:
        self.home = Path(home)
        self.port = port
        self.database = database
        self.gateway_password = gateway_password
        self.admin_password = "admin-" + gateway_password
        #: The callers' Airflow accounts (`ACCOUNT_ROLES`) -> their passwords.
        self.account_passwords = {user: f"{user}-{gateway_password}" for user in ACCOUNT_ROLES}
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def sqlite_url(self) -> str:
        """
        The SQLite database in ``home``, where a write waits up to
        `SQLITE_BUSY_SECONDS` for another to end.  With Python's default of
        5 s, a caller's first ``trigger_dag`` under ``make run`` was answered
        HTTP 500 by Airflow ("database is locked" on its own log insert)
        while the scheduler ran the first scheduled run at start-up.
        """
        return f"sqlite:///{self.home.resolve() / 'airflow.db'}?timeout={SQLITE_BUSY_SECONDS}"

    @property
    def log_path(self) -> Path:
        return self.home / "standalone.log"

    def prepare(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        dags = self.home / "dags"
        dags.mkdir(exist_ok=True)
        for dag in DAGS.glob("*.py"):
            shutil.copy(dag, dags / dag.name)
        passwords = {"admin": self.admin_password, GATEWAY_USER: self.gateway_password,
                     **self.account_passwords}
        (self.home / "simple_auth_manager_passwords.json.generated").write_text(
            json.dumps(passwords)
        )

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "AIRFLOW_HOME": str(self.home),
            "PATH": f"{AIRFLOW_VENV / 'bin'}:{env.get('PATH', '')}",
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.home / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(
                [f"admin:admin,{GATEWAY_USER}:user",
                 *(f"{user}:{role}" for user, role in ACCOUNT_ROLES.items())]),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.base_url}/execution/",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "10",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
        })
        env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = self.database or self.sqlite_url
        env.pop("VIRTUAL_ENV", None)
        return env

    def start(self, timeout: float = 240.0) -> None:
        self.prepare()
        airflow = AIRFLOW_VENV / "bin" / "airflow"
        if not airflow.exists():
            raise RuntimeError(f"{airflow} is missing: run `make airflow` first")
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [str(airflow), "standalone"], env=self.environment(), cwd=self.home,
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.wait_healthy(timeout)

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"airflow standalone exited with {self.process.returncode}; see {self.log_path}"
                )
            if self.healthy():
                return
            time.sleep(1)
        raise RuntimeError(f"Airflow not healthy after {timeout} s; see {self.log_path}")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.base_url}/api/v2/monitor/health", timeout=2) as r:
                health = json.load(r)
        except (OSError, ValueError):
            return False
        return all(
            health.get(part, {}).get("status") == "healthy"
            for part in ("metadatabase", "scheduler")
        )

    def wait_dags(self, dag_ids: Iterable[str] = EXAMPLE_DAGS, timeout: float = 120.0) -> None:
        """Block until Airflow has parsed every DAG in ``dag_ids`` (default: conf/dags')."""
        token = self.token("admin", self.admin_password)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            req = urllib.request.Request(
                f"{self.base_url}/api/v2/dags?limit=100",
                headers={"Authorization": f"Bearer {token}"},
            )
            with urllib.request.urlopen(req, timeout=5) as r:
                found = {d["dag_id"] for d in json.load(r)["dags"]}
            if set(dag_ids) <= found:
                return
            time.sleep(1)
        raise RuntimeError(f"Airflow did not parse {dag_ids} in {timeout} s")

    def write_password_file(self, user: str, path: Path) -> Path:
        """Write the password of the callers' account ``user`` to ``path`` (mode 0600)."""
        path.write_text(self.account_passwords[user] + "\n")
        path.chmod(0o600)
        return path

    def token(self, user: str, password: str) -> str:
        req = urllib.request.Request(
            f"{self.base_url}/auth/token", method="POST",
            data=json.dumps({"username": user, "password": password}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.load(r)["access_token"]

    def stop(self) -> None:
        """
        Stop standalone and everything it started: SIGTERM to its process
        group, then, after the parent is gone (or 30 s), SIGKILL to whatever
        of the group is left (the scheduler and its workers outlive a
        SIGTERM to the group).
        """
        if self.process is None:
            return
        group = self.process.pid
        try:
            os.killpg(group, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.killpg(group, signal.SIGKILL)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        if self.process.poll() is None:
            self.process.wait(timeout=10)
