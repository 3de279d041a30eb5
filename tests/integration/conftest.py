"""
Fixtures for the integration tests: a real Airflow 3.3.2 (``airflow
standalone`` on a throwaway PostgreSQL), the real ``twistd airflowrpc`` over real mutual TLS on
loopback, and the development PKI.  Nothing here skips: a missing Airflow,
twistd or Perl fails the run.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import time
import xmlrpc.client
from pathlib import Path
from typing import Any, Iterator

import pytest

from txairflowrpc.devstack.airflow import LocalAirflow
from txairflowrpc.devstack.gatewayconf import core_config
from txairflowrpc.devstack.pki import ClientFiles, DevPKI
from txairflowrpc.devstack.postgres import LocalPostgres

TWISTD = Path(sys.executable).parent / "twistd"


def audit_records(path: Path, **loads: Any) -> list[dict[str, Any]]:
    """
    The records of an audit file the gateway may be writing: its whole
    lines only.  A reader can see a record half written (a write to a file
    is not atomic for a reader), and a test reading the trail while the
    gateway appends must not fail on it (a CI run once did).  ``loads``
    goes to `json.loads` (``parse_constant``, say).
    """
    return [json.loads(line, **loads) for line in path.read_text().split("\n")[:-1]]


#: Ports `free_port` has handed out in this run: never handed out twice.
_GIVEN: set[int] = set()


def free_port() -> int:
    """
    A port free now that no earlier call gave: the kernel may give a port
    just closed again, and a gateway once got the same one for its TLS and
    its admin listener ("address already in use", found in CI).
    """
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if port not in _GIVEN:
            _GIVEN.add(port)
            return port


def client_context(pki: DevPKI, client: ClientFiles | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca_file))
    if client is not None:
        ctx.load_cert_chain(str(client.cert), str(client.key))
    return ctx


ACCESS = """
[auth]
client_certificate = "{cert_mode}"
token_store = "{tokens}"
rotation_overlap_seconds = 3
# The suite fails to authenticate on purpose, many times, from one address.
failure_backoff_max_seconds = 0.2
[limits]
# The suite drives load as one principal; the limits have tests of their own.
rate_per_second = 10000
burst = 10000
max_in_flight = 1000
[health]
port = {health_port}
[roles.operator]
scopes = ["dags:read", "dags:pause", "runs:trigger", "runs:read", "runs:write",
          "runs:backfill", "tasks:clear", "logs:read"]
[roles.ci]
scopes = ["dags:read:etl_*", "runs:trigger:etl_*", "runs:read:etl_*", "logs:read:etl_*"]
[roles.ci.conf."etl_*"]
type = "object"
additionalProperties = false
properties.day = {{ type = "string", pattern = "^[0-9]{{4}}-[0-9]{{2}}-[0-9]{{2}}$" }}
[roles.auditor]
scopes = ["dags:read", "runs:read", "logs:read"]
[principals.ci-bot]
roles = ["operator"]
cert_dns = ["ci-bot.example.com"]
[principals.etl-bot]
roles = ["ci"]
cert_cn = ["etl-bot"]
[principals.auditor]
roles = ["auditor"]
cert_email = ["auditor@example.com"]
"""

RPC = """
[rpc]
max_multicall = 20
max_wait_seconds = 600
wait_poll_seconds = 1.0
"""


class RunningGateway:
    """
    A ``twistd -n airflowrpc`` process and how to call it; ``twistd_args`` go
    before the subcommand (``--logger ...``), ``env`` is added to its environment.
    """

    def __init__(
        self, directory: Path, pki: DevPKI, airflow: LocalAirflow, *,
        cert_mode: str = "required", extra: str = "", twistd_args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.twistd_args = twistd_args
        self.env = env
        self.pki = pki
        self.port = free_port()
        self.url = f"https://localhost:{self.port}/RPC2"
        password_file = directory / "airflow-password"
        password_file.write_text(airflow.gateway_password + "\n")
        password_file.chmod(0o600)  # as deployed: the gateway warns of one open to others
        self.audit_path = directory / "audit" / "audit.jsonl"
        self.token_store = directory / "tokens.json"
        self.health_port = free_port()
        self.config = directory / "airflowrpc.toml"
        self.config.write_text(core_config(
            port=self.port, tls=pki.directory, airflow=airflow.base_url,
            password_file=password_file, audit=self.audit_path,
            # Refusals anyone can cause are counted per second here, not per
            # minute, so that a test sees the counts soon.  No rotation at
            # midnight: tests read the records of `audit_path` alone, and a run
            # that spans midnight would find the earlier ones rotated away.
            audit_extra="refusal_window_seconds = 1\nrotate_daily = false",
        ) + RPC + ACCESS.format(
            cert_mode=cert_mode, tokens=self.token_store, health_port=self.health_port,
        ) + extra)
        self.log = directory / "twistd.log"
        self.client = pki.client("ci-bot.example.com")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [str(TWISTD), "-n", "--pidfile=", *self.twistd_args, "airflowrpc",
                 "--config", str(self.config)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, env={**os.environ, **(self.env or {})},
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()
            try:
                if self.proxy().ping() == "pong":
                    return
            except (OSError, xmlrpc.client.ProtocolError):
                time.sleep(0.2)
        raise RuntimeError(f"gateway did not answer; see {self.log}")

    def new_token(self, principal: str, *extra: str) -> str:
        """
        Mint a token with ``airflowrpc token create``, and wait (bounded) until
        the gateway takes it: the store is watched once a second.
        """
        out = subprocess.run(
            [str(TWISTD.parent / "airflowrpc"), "token", "--config", str(self.config), "create",
             "--principal", principal, *extra],
            capture_output=True, text=True, timeout=60,
        )
        assert out.returncode == 0, out.stderr
        token = out.stdout.strip()
        proxy = xmlrpc.client.ServerProxy(self.url, context=client_context(self.pki, None),
                                          headers=[("Authorization", f"Bearer {token}")])
        deadline = time.monotonic() + 15
        while True:
            try:
                proxy.ping()
                return token
            except xmlrpc.client.ProtocolError:
                assert time.monotonic() < deadline, "the gateway never took the new token"
                time.sleep(0.2)

    def proxy(
        self, client: ClientFiles | None = None, *, allow_none: bool = False
    ) -> xmlrpc.client.ServerProxy:
        ctx = client_context(self.pki, client or self.client)
        return xmlrpc.client.ServerProxy(self.url, context=ctx, allow_none=allow_none)

    def serving(self) -> Iterator[RunningGateway]:
        """Start it, yield it, and stop it however the user ends: for fixtures (`yield from`)."""
        try:
            self.start()
            yield self
        finally:
            self.stop()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPKI:
    return DevPKI.create(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def airflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalAirflow]:
    """
    Airflow 3.3.2 on its own throwaway PostgreSQL cluster: on SQLite its
    scheduler dies ("database is locked") under the suite's concurrent load.
    """
    with LocalPostgres() as database:
        af = LocalAirflow(tmp_path_factory.mktemp("airflow-home"), free_port(),
                          secrets.token_urlsafe(16), database=database.url)
        try:
            af.start()
            af.wait_dags()
            yield af
        finally:
            af.stop()


@pytest.fixture(scope="session")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, pki: DevPKI, airflow: LocalAirflow
) -> Iterator[RunningGateway]:
    yield from RunningGateway(tmp_path_factory.mktemp("gateway"), pki, airflow).serving()


@pytest.fixture
def rpc(gateway: RunningGateway) -> xmlrpc.client.ServerProxy:
    return gateway.proxy()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in item.nodeid.split("::")[0]:
            item.add_marker(pytest.mark.integration)
