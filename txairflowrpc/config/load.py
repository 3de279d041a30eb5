"""
Loading the config: one TOML file, parsed once into frozen values.

`load` checks everything the config itself can check before the service
starts: unknown sections and keys, missing keys, types, ranges, and that
every file it names can be read.  A problem is a `ConfigError` naming the
key, which twistd prints as one line.  Relative paths are relative to the
directory of the config file, so a config works from any working directory.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs

from . import access
from .keys import ConfigError, read_table
from .sections import (
    SECTIONS,
    AirflowConfig,
    AuditConfig,
    HealthConfig,
    LimitsConfig,
    ListenConfig,
    RPCConfig,
    TLSConfig,
)


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
    access: access.AccessConfig


def _check_base_url(url: str) -> str:
    if not url.isascii():
        raise ConfigError("airflow.base_url", "must be ASCII (a host name in its xn-- form)")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError("airflow.base_url", "must be an http:// or https:// URL")
    if parts.query or parts.fragment:
        raise ConfigError("airflow.base_url", "must not have a query or fragment")
    if "@" in parts.netloc:
        # A password there would be printed wherever the URL is; it goes in
        # airflow.password_file, the user name in airflow.username.
        raise ConfigError("airflow.base_url", "must not hold a user name or password")
    return url.rstrip("/")


def parse(document: dict[str, Any], source: Path) -> Config:
    """Build a `Config` from an already parsed TOML document."""
    base = source.parent
    for name in document:
        if name not in SECTIONS and name not in access.SECTIONS:
            raise ConfigError(name, "unknown section")
    sections = {
        name: read_table(name, document.get(name, {}), base, SECTIONS[name]._keys)
        for name in SECTIONS
    }
    tls = sections["tls"]
    tls["client_crl"] = None if tls["client_crl"] in ("", base / "") else tls["client_crl"]
    airflow = sections["airflow"]
    airflow["base_url"] = _check_base_url(airflow["base_url"])
    airflow["ca_file"] = None if airflow["ca_file"] in ("", base / "") else airflow["ca_file"]
    if airflow["ca_file"] is not None:
        if urlsplit(airflow["base_url"]).scheme != "https":
            raise ConfigError("airflow.ca_file", "verifies an https:// airflow.base_url; "
                              f"{airflow['base_url']} is not one")
        try:
            airflow["ca_pem"] = airflow["ca_file"].read_bytes()
        except OSError as e:
            raise ConfigError("airflow.ca_file",
                              f"cannot read {airflow['ca_file']}: {e.strerror}") from None
    try:
        password = airflow["password_file"].read_text("utf-8").strip()
    except (OSError, UnicodeDecodeError):
        raise ConfigError("airflow.password_file", "cannot read it as UTF-8 text") from None
    if not password:
        raise ConfigError("airflow.password_file", "is empty")
    airflow["password"] = password
    access_config = access.parse(document, base)
    for entry in access_config.principals.values():
        if entry.airflow_user == airflow["username"] and entry.airflow_password != password:
            raise ConfigError(f"principals.{entry.name}.airflow_password_file",
                              f"Airflow account {entry.airflow_user!r} is the gateway's own "
                              "(airflow.username), with another password")
    workers, health = sections["listen"]["workers"], sections["health"]["port"]
    if health and workers > 1 and health + workers > 65535:
        raise ConfigError("health.port", f"with listen.workers = {workers}, worker K listens on "
                          f"health.port + 1 + K: at most {65535 - workers}")
    rpc = sections["listen"]["port"]
    admin = [health] + ([health + 1 + k for k in range(workers)] if workers > 1 else [])
    if health and rpc and rpc in admin:
        # Found by review: config check said OK; twistd then failed to bind
        # one of them (as a daemon, it hung with a stale pidfile).
        what = "health.port" if rpc == health else "a worker's admin port (health.port + 1 + K)"
        raise ConfigError("health.port", f"{what} is listen.port ({rpc}): each needs its own")
    return Config(
        source=source,
        listen=ListenConfig(**sections["listen"]),
        tls=TLSConfig(**sections["tls"]),
        airflow=AirflowConfig(**airflow),
        rpc=RPCConfig(**sections["rpc"]),
        audit=_audit(sections["audit"], base),
        limits=LimitsConfig(**sections["limits"]),
        health=HealthConfig(**sections["health"]),
        access=access_config,
    )


def _audit(values: dict[str, Any], base: Path) -> AuditConfig:
    # The real file, symbolic links followed: two gateways naming one chain
    # by two names must meet at one owner lock (the second is refused).
    try:
        path: Path = values["path"].resolve()
    except (OSError, RuntimeError):  # a loop of links (RuntimeError before Python 3.13)
        raise ConfigError("audit.path", f"{values['path']} cannot be resolved "
                          "(a loop of symbolic links?)") from None
    values["path"] = path
    if path.is_dir():
        raise ConfigError("audit.path", f"{path} is a directory; name the log file")
    directory = path.parent
    if directory.exists() and not os.access(directory, os.W_OK):
        raise ConfigError("audit.path", f"cannot write in {directory}")
    if path.exists() and not os.access(path, os.W_OK):
        raise ConfigError("audit.path", f"cannot write {path}")
    values["redact_keys"] = tuple(
        k.lower().replace("-", "").replace("_", "") for k in values["redact_keys"])
    if values["digest_key_file"] in ("", base / ""):
        values["digest_key_file"] = path.with_name(".digest.key")
    for key in ("signing_key", "hmac_key_file"):
        values[key] = None if values[key] in ("", base / "") else values[key]
    if values["signing_key"] is not None and values["hmac_key_file"] is not None:
        raise ConfigError("audit.hmac_key_file", "set audit.signing_key or audit.hmac_key_file, "
                          "not both")
    return AuditConfig(**values)


def open_secrets(cfg: Config) -> list[str]:
    """
    The secret files the config names that others may read (any of the
    mode's "other" bits), as ``key: path is open to others (mode 0644)``:
    a warning for the start and ``config check``, not an error (the signing
    keys, which are refused so, are checked where they are read).
    """
    named: list[tuple[str, Path | None]] = [
        ("tls.private_key", cfg.tls.private_key),
        ("airflow.password_file", cfg.airflow.password_file),
        ("auth.token_store", cfg.access.auth.token_store),
        ("audit.digest_key_file", cfg.audit.digest_key_file),
        *((f"principals.{name}.airflow_password_file", entry.airflow_password_file)
          for name, entry in cfg.access.principals.items()),
    ]
    found = []
    for key, path in named:
        try:
            mode = os.stat(path).st_mode if path is not None else 0
        except OSError:
            continue  # not there yet (made at start), or reported where it is read
        if mode & 0o007:
            found.append(f"{key}: {path} is open to others (mode {mode & 0o777:04o}); "
                         f"chmod o-rwx it")
    return found


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
    except RecursionError:
        raise ConfigError("", f"config file {source} nests too deeply to be read") from None
    return parse(document, source)
