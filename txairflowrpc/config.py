"""
The gateway's configuration: one TOML file, parsed once into frozen values.

`load` checks everything it can before the service starts: unknown keys,
missing keys, types, ranges, and that every file it names can be read.  A
problem is a `ConfigError` that names the key, which twistd prints as one
line.  Relative paths are relative to the directory of the config file, so
a config works from any working directory.

The sections and keys are documented in ``conf/airflowrpc.toml`` and in
the README.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

import attrs


@attrs.define(auto_exc=True, str=False)
class ConfigError(Exception):
    """The config cannot be used; ``key`` is the dotted key at fault."""

    key: str
    problem: str

    def __str__(self) -> str:
        return f"{self.key}: {self.problem}" if self.key else self.problem


def _port(value: int) -> None:
    if not 0 <= value <= 65535:
        raise ValueError("must be a port number from 0 to 65535")


def positive(value: float) -> None:
    if value <= 0:
        raise ValueError("must be greater than 0")


def strings(value: list[Any]) -> None:
    if not all(isinstance(v, str) and v for v in value):
        raise ValueError("must be an array of non-empty strings")


def at_least(n: int) -> Callable[[int], None]:
    def check(value: int) -> None:
        if value < n:
            raise ValueError(f"must be at least {n}")

    return check


_REQUIRED = object()


@attrs.frozen
class Key:
    """How one key is read: its TOML type, default, and an extra check."""

    type: type
    default: Any = _REQUIRED
    check: Callable[[Any], None] | None = None
    is_path: bool = False
    #: For paths: must the file exist (and be readable) at start?
    must_exist: bool = True


@attrs.frozen
class ListenConfig:
    """Where the TLS listener binds."""

    host: str
    port: int

    _keys = {
        "host": Key(str, "127.0.0.1"),
        "port": Key(int, 8443, _port),
    }


@attrs.frozen
class TLSConfig:
    """The server's certificate and the CA that signs client certificates."""

    certificate: Path
    private_key: Path
    client_ca: Path

    _keys = {
        "certificate": Key(str, is_path=True),
        "private_key": Key(str, is_path=True),
        "client_ca": Key(str, is_path=True),
    }


@attrs.frozen
class AirflowConfig:
    """How the gateway reaches Airflow, and as whom."""

    base_url: str
    username: str
    password_file: Path
    password: str = attrs.field(repr=False)
    timeout_seconds: float
    max_connections: int
    max_in_flight: int
    retries: int
    breaker_failures: int
    breaker_reset_seconds: float

    _keys = {
        "base_url": Key(str),
        "username": Key(str),
        "password_file": Key(str, is_path=True),
        "timeout_seconds": Key(float, 30.0, positive),
        "max_connections": Key(int, 20, at_least(1)),
        "max_in_flight": Key(int, 64, at_least(1)),
        "retries": Key(int, 2, at_least(0)),
        "breaker_failures": Key(int, 5, at_least(1)),
        "breaker_reset_seconds": Key(float, 10.0, positive),
    }


@attrs.frozen
class RPCConfig:
    """Limits of the XML-RPC surface."""

    max_multicall: int
    max_wait_seconds: int
    wait_poll_seconds: float
    max_body_bytes: int

    _keys = {
        "max_multicall": Key(int, 50, at_least(1)),
        "max_wait_seconds": Key(int, 3600, at_least(0)),
        "wait_poll_seconds": Key(float, 2.0, positive),
        "max_body_bytes": Key(int, 1024 * 1024, at_least(1024)),
    }


@attrs.frozen
class LimitsConfig:
    """What protects the gateway from slow, many and greedy clients."""

    request_deadline_seconds: float
    idle_timeout_seconds: float
    handshake_timeout_seconds: float
    max_connections: int
    rate_per_second: float
    burst: int
    max_in_flight: int
    call_deadline_seconds: float

    _keys = {
        "request_deadline_seconds": Key(float, 30.0, positive),
        "idle_timeout_seconds": Key(float, 60.0, positive),
        "handshake_timeout_seconds": Key(float, 10.0, positive),
        "max_connections": Key(int, 1000, at_least(1)),
        "rate_per_second": Key(float, 20.0, positive),
        "burst": Key(int, 40, at_least(1)),
        "max_in_flight": Key(int, 20, at_least(1)),
        "call_deadline_seconds": Key(float, 60.0, positive),
    }


@attrs.frozen
class HealthConfig:
    """The plain-HTTP admin listener for liveness and readiness probes."""

    host: str
    port: int
    certificate_warning_days: int

    _keys = {
        "host": Key(str, "127.0.0.1"),
        "port": Key(int, 8081, _port),
        "certificate_warning_days": Key(int, 14, at_least(0)),
    }


@attrs.frozen
class AuditConfig:
    """Where the audit trail goes and how it rotates."""

    path: Path
    rotate_bytes: int
    rotate_daily: bool
    fsync: bool
    redact_keys: tuple[str, ...]

    _keys = {
        "path": Key(str, is_path=True, must_exist=False),
        "rotate_bytes": Key(int, 100 * 1024 * 1024, at_least(0)),
        "rotate_daily": Key(bool, True),
        "fsync": Key(bool, True),
        "redact_keys": Key(list, ["password", "passwd", "secret", "token", "api_key",
                                   "apikey", "credentials", "private_key"], strings),
    }


@attrs.frozen
class Config:
    """The whole configuration, as loaded from ``source``."""

    source: Path
    listen: ListenConfig
    tls: TLSConfig
    airflow: AirflowConfig
    rpc: RPCConfig
    audit: AuditConfig
    limits: LimitsConfig
    health: HealthConfig
    access: "access.AccessConfig"


_SECTIONS: dict[str, type] = {
    "listen": ListenConfig,
    "tls": TLSConfig,
    "airflow": AirflowConfig,
    "rpc": RPCConfig,
    "audit": AuditConfig,
    "limits": LimitsConfig,
    "health": HealthConfig,
}

_TOML_TYPE_NAMES = {
    str: "a string", int: "an integer", float: "a number", bool: "true or false",
    list: "an array", dict: "a table",
}


def read_table(
    name: str, table: object, base: Path, keys: dict[str, Key] | None = None
) -> dict[str, Any]:
    """
    Check one TOML table against its keys: unknown and missing keys, types,
    checks, readable paths.  ``name`` is its dotted name for messages.
    """
    if not isinstance(table, dict):
        raise ConfigError(name, "must be a table ([%s])" % name)
    if keys is None:
        keys = _SECTIONS[name]._keys
    for key in table:
        if key not in keys:
            raise ConfigError(f"{name}.{key}", "unknown key")
    values: dict[str, Any] = {}
    for key, spec in keys.items():
        dotted = f"{name}.{key}"
        if key not in table:
            if spec.default is _REQUIRED:
                raise ConfigError(dotted, "missing (required)")
            values[key] = spec.default
            continue
        value = table[key]
        if spec.type is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, spec.type) or (
            spec.type is int and isinstance(value, bool)
        ):
            raise ConfigError(dotted, f"must be {_TOML_TYPE_NAMES[spec.type]}")
        if spec.check is not None:
            try:
                spec.check(value)
            except ValueError as e:
                raise ConfigError(dotted, str(e)) from None
        if spec.is_path:
            value = _readable(dotted, base / value) if spec.must_exist else base / value
        values[key] = value
    return values


def _readable(key: str, path: Path) -> Path:
    try:
        with path.open("rb") as f:
            f.read(1)
    except OSError as e:
        raise ConfigError(key, f"cannot read {path}: {e.strerror}") from None
    return path


def _check_base_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError("airflow.base_url", "must be an http:// or https:// URL")
    if parts.query or parts.fragment:
        raise ConfigError("airflow.base_url", "must not have a query or fragment")
    return url.rstrip("/")


def parse(document: dict[str, Any], source: Path) -> Config:
    """Build a `Config` from an already parsed TOML document."""
    base = source.parent
    for name in document:
        if name not in _SECTIONS and name not in access.SECTIONS:
            raise ConfigError(name, "unknown section")
    sections = {
        name: read_table(name, document.get(name, {}), base) for name in _SECTIONS
    }
    airflow = sections["airflow"]
    airflow["base_url"] = _check_base_url(airflow["base_url"])
    try:
        password = airflow["password_file"].read_text("utf-8").strip()
    except (OSError, UnicodeDecodeError):
        raise ConfigError("airflow.password_file", "cannot read it as UTF-8 text") from None
    if not password:
        raise ConfigError("airflow.password_file", "is empty")
    airflow["password"] = password
    return Config(
        source=source,
        listen=ListenConfig(**sections["listen"]),
        tls=TLSConfig(**sections["tls"]),
        airflow=AirflowConfig(**airflow),
        rpc=RPCConfig(**sections["rpc"]),
        audit=_audit(sections["audit"]),
        limits=LimitsConfig(**sections["limits"]),
        health=HealthConfig(**sections["health"]),
        access=access.parse(document, base),
    )


def _audit(values: dict[str, Any]) -> AuditConfig:
    path: Path = values["path"]
    if path.is_dir():
        raise ConfigError("audit.path", f"{path} is a directory; name the log file")
    directory = path.parent
    if directory.exists() and not os.access(directory, os.W_OK):
        raise ConfigError("audit.path", f"cannot write in {directory}")
    values["redact_keys"] = tuple(k.lower() for k in values["redact_keys"])
    return AuditConfig(**values)


def load(path: str | Path) -> Config:
    """
    Read and check the config file at ``path``.

    Raises `ConfigError` naming the key at fault; never anything else for
    a bad file.
    """
    source = Path(path)
    try:
        raw = source.read_bytes()
    except OSError as e:
        raise ConfigError("", f"cannot read config file {source}: {e.strerror}") from None
    try:
        document = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError("", f"config file {source} is not UTF-8") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("", f"config file {source} is not valid TOML: {e}") from None
    return parse(document, source)


from . import access  # noqa: E402  (access builds on the helpers above)
