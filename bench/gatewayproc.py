"""
Row B: the real gateway, ``twistd -n airflowrpc``, configured for the
benchmark, and a token to call it with.

`gateway_config` starts from the core config the tests use
(`txairflowrpc.devstack.gatewayconf.core_config`), raises every limit so
that none shapes the load, turns tokens on, and merges optional TOML
fragments on top (the "2 workers" row).  `start_gateway` returns the
running process, or `Refused` with twistd's one-line error when the
gateway will not take the config (an unknown key, for instance).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import attrs
import tomli_w

from processes import Processes, wait_until
from txairflowrpc.devstack.gatewayconf import core_config

BIN = Path(sys.executable).parent
PRINCIPAL = "bench"

#: Limits raised so that the load, not a limit, is what is measured.
BENCH_SETTINGS: dict[str, Any] = {
    "airflow": {"max_connections": 128, "max_in_flight": 2048},
    "rpc": {"max_wait_seconds": 600, "wait_poll_seconds": 2.0},
    "limits": {
        "request_deadline_seconds": 120.0, "idle_timeout_seconds": 300.0,
        "handshake_timeout_seconds": 60.0, "max_connections": 10000,
        "max_connections_per_source": 10000, "connection_rate_per_source": 1e6,
        "connection_burst_per_source": 1000000, "first_byte_seconds": 60.0,
        "rate_per_second": 1e6, "burst": 1000000, "max_in_flight": 100000,
        "call_deadline_seconds": 300.0,
    },
    # One file for the whole run, so that `AuditCalls` can count its lines.
    "audit": {"rotate_bytes": 0, "rotate_daily": False},
    "health": {"port": 0},
    "auth": {"client_certificate": "optional"},
    "roles": {"reader": {"scopes": ["dags:read", "runs:read", "runs:trigger"]}},
    "principals": {PRINCIPAL: {"roles": ["reader"], "cert_cn": [PRINCIPAL]}},
}


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` laid over it, tables merged key by key."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def audit_path(config_directory: Path) -> Path:
    return config_directory / "audit" / "audit.jsonl"


def gateway_config(directory: Path, *, port: int, tls: Path, airflow: str, password: str,
                   fragments: tuple[str, ...] = ()) -> Path:
    """Write the gateway's config into ``directory``; return its path."""
    directory.mkdir(parents=True, exist_ok=True)
    password_file = directory / "airflow-password"
    password_file.write_text(password + "\n")
    password_file.chmod(0o600)
    document = tomllib.loads(core_config(
        port=port, tls=tls, airflow=airflow, password_file=password_file,
        audit=audit_path(directory), audit_extra="fsync = true",
    ))
    document = merge(document, BENCH_SETTINGS)
    document = merge(document, {"auth": {"token_store": str(directory / "tokens.json")}})
    for fragment in fragments:
        document = merge(document, tomllib.loads(fragment))
    path = directory / "airflowrpc.toml"
    path.write_text(tomli_w.dumps(document))
    return path


def create_token(config: Path) -> str:
    out = subprocess.run(
        # --config belongs to "token", so it comes before "create".
        [str(BIN / "airflowrpc"), "token", "--config", str(config), "create",
         "--principal", PRINCIPAL], capture_output=True, text=True, check=True,
    ).stdout
    match = re.search(r"arpc_[A-Za-z0-9_]+", out)
    if match is None:
        raise RuntimeError(f"no token in: {out!r}")
    return match.group(0)


class AuditCalls:
    """
    Counts the calls the gateway answered (its call records, but for those
    whose caller went away first), reading only what is new each time.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._offset = 0
        self._count = 0

    def __call__(self) -> int:
        try:
            with self._path.open("rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return self._count
        complete = data.rfind(b"\n") + 1  # a record being written is counted next time
        for line in data[:complete].splitlines():
            if b'"kind":"call"' in line and b'"outcome":"cancelled"' not in line:
                self._count += 1
        self._offset += complete
        return self._count


class ChainsCalls:
    """`AuditCalls` summed over the worker chains (``audit.w*.jsonl``) in ``directory``."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._chains: dict[Path, AuditCalls] = {}

    def __call__(self) -> int:
        for path in self._directory.glob("audit.w*.jsonl"):
            self._chains.setdefault(path, AuditCalls(path))
        return sum(chain() for chain in self._chains.values())


@attrs.frozen
class Refused:
    """twistd would not start: its one-line reason."""

    reason: str


def start_gateway(processes: Processes, name: str, config: Path,
                  ready, env: dict[str, str] | None = None) -> subprocess.Popen | Refused:
    """Start twistd on ``config`` (with ``env`` added to its environment); wait until ``ready()`` or it exits."""
    process, log = processes.start(
        name, [str(BIN / "twistd"), "-n", "--pidfile=", "airflowrpc", "--config", str(config)],
        env={**os.environ, **(env or {})})
    try:
        wait_until(ready, 60, name, alive=process, log=log)
    except RuntimeError:
        if process.poll() is not None:
            lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
            return Refused(lines[-1] if lines else f"exit status {process.returncode}")
        raise
    return process
