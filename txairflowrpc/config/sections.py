"""
The sections of the config that the gateway's own machinery reads:
``[listen]``, ``[tls]``, ``[airflow]``, ``[rpc]``, ``[limits]``, ``[health]``
and ``[audit]``, each a frozen value whose ``_keys`` say how it is read.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from pathlib import Path
from typing import Any, Iterable

import attrs

from .keys import ConfigError, Key, at_least, between, port, positive, strings

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Who may send a PROXY protocol header unless ``listen.proxy_from`` says
#: otherwise: this host only.
PROXY_FROM_DEFAULT = ("127.0.0.0/8", "::1/128")


def networks(value: list[Any]) -> None:
    """A check: an array of addresses or networks (``10.0.0.5``, ``10.0.0.0/24``, ``::1``)."""
    strings(value)
    for v in value:
        try:
            ipaddress.ip_network(v, strict=False)
        except ValueError:
            raise ValueError(f"{v!r} is not an IP address or network") from None


#: Most worker processes ``listen.workers`` may ask for.
MAX_WORKERS = 64


def worker_count(value: int) -> None:
    """A check: a number of worker processes."""
    if not 1 <= value <= MAX_WORKERS:
        raise ValueError(f"must be from 1 to {MAX_WORKERS}")


def _as_networks(value: Iterable[str | Network]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(v, strict=False) if isinstance(v, str) else v
                 for v in value)


@attrs.frozen
class ListenConfig:
    """
    Where the TLS listener binds, and whether a PROXY protocol header (v2 or
    v1, as HAProxy's ``send-proxy-v2`` sends it) comes before TLS on each
    connection, from one of the ``proxy_from`` networks, naming the client;
    and how many processes serve it (1: the twistd process itself; more:
    twistd supervises that many workers, see `txairflowrpc.service.supervisor`).
    """

    host: str
    port: int
    proxy_protocol: bool = False
    proxy_from: tuple[Network, ...] = attrs.field(
        default=PROXY_FROM_DEFAULT, converter=_as_networks)
    workers: int = 1

    _keys = {
        "host": Key(str, "127.0.0.1"),
        "port": Key(int, 8443, port),
        "proxy_protocol": Key(bool, False),
        "proxy_from": Key(list, list(PROXY_FROM_DEFAULT), networks),
        "workers": Key(int, 1, worker_count),
    }


@attrs.frozen
class TLSConfig:
    """
    The server's certificate, the CA that signs client certificates and
    the lists of those it has revoked.
    """

    certificate: Path
    private_key: Path
    client_ca: Path
    #: PEM CRLs of ``client_ca``'s CAs (`txairflowrpc.identity.revocation`); None: none.
    client_crl: Path | None = None

    _keys = {
        "certificate": Key(str, is_path=True),
        "private_key": Key(str, is_path=True),
        "client_ca": Key(str, is_path=True),
        "client_crl": Key(str, "", is_path=True, must_exist=False),
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
    #: The CAs that verify Airflow's certificate when ``base_url`` is
    #: https (a PEM bundle); None: the system's trust store.
    ca_file: Path | None = None
    #: What ``ca_file`` held when the config was read (a reload tells a new one).
    ca_pem: bytes = attrs.field(default=b"", repr=False)
    #: An unused connection to Airflow is closed after this long: before
    #: Airflow (120 s) or a proxy in front of it closes it, so that no
    #: request is ever sent on a connection the server is closing.
    idle_connection_seconds: float = 50.0

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
        "ca_file": Key(str, "", is_path=True, must_exist=False),
        "idle_connection_seconds": Key(float, 50.0, positive),
    }


@attrs.frozen
class RPCConfig:
    """Limits of the XML-RPC surface."""

    max_multicall: int
    max_wait_seconds: int
    wait_poll_seconds: float
    max_body_bytes: int
    read_cache_seconds: float = 0.0
    max_backfill_runs: int = 1000
    max_backfill_days: int = 3660

    _keys = {
        "max_multicall": Key(int, 50, at_least(1)),
        "max_wait_seconds": Key(int, 3600, at_least(0)),
        "wait_poll_seconds": Key(float, 2.0, positive),
        "max_body_bytes": Key(int, 1024 * 1024, at_least(1024)),
        "read_cache_seconds": Key(float, 0.0, at_least(0)),
        "max_backfill_runs": Key(int, 1000, at_least(1)),
        "max_backfill_days": Key(int, 3660, between(1, 36600)),
    }


def _prefix_length(value: int) -> None:
    if not 32 <= value <= 128:
        raise ValueError("must be an IPv6 prefix length from 32 to 128")


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
    first_byte_seconds: float = 10.0
    max_connections_per_source: int = 100
    connection_rate_per_source: float = 50.0
    connection_burst_per_source: int = 200
    max_body_memory_bytes: int = 64 * 1024 * 1024
    shutdown_seconds: float = 10.0
    ipv6_source_prefix: int = 64

    _keys = {
        "request_deadline_seconds": Key(float, 30.0, positive),
        "idle_timeout_seconds": Key(float, 60.0, positive),
        "handshake_timeout_seconds": Key(float, 10.0, positive),
        "first_byte_seconds": Key(float, 10.0, positive),
        "max_connections": Key(int, 1000, at_least(1)),
        "max_connections_per_source": Key(int, 100, at_least(1)),
        "connection_rate_per_source": Key(float, 50.0, positive),
        "connection_burst_per_source": Key(int, 200, at_least(1)),
        "max_body_memory_bytes": Key(int, 64 * 1024 * 1024, at_least(1024)),
        "shutdown_seconds": Key(float, 10.0, positive),
        "ipv6_source_prefix": Key(int, 64, _prefix_length),
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
        "port": Key(int, 8081, port),
        "certificate_warning_days": Key(int, 14, at_least(0)),
    }


#: What names an instance: a host name's characters, as a host name may be one.
_INSTANCE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")
#: The name the ``airflowrpc`` command writes its own records under
#: (``txairflowrpc.audit.chain.CLI_INSTANCE``; the config imports nothing of it).
CLI_INSTANCE = "cli"


def instance_name(value: str) -> None:
    """A check: a name for ``audit.instance``."""
    if not _INSTANCE.fullmatch(value):
        raise ValueError("must be 1 to 253 letters, digits, '.', '_' or '-', "
                         "starting with a letter or digit")
    if value == CLI_INSTANCE:
        raise ValueError(f"{CLI_INSTANCE!r} names the airflowrpc command's own records")


def _instance_or_host(value: str) -> str:
    """``audit.instance``, or the host name when it is not set."""
    if value:
        return value
    host = socket.gethostname()
    try:
        instance_name(host)
    except ValueError as e:
        raise ConfigError("audit.instance", f"not set, and the host name {host!r} cannot "
                          f"stand for it: it {e}") from None
    return host


#: Words whose keys' values never reach the audit trail: matched in a key's
#: name case-insensitively, as substrings, with "-" and "_" ignored (so
#: ``db_pass``, ``API-Key``, ``pwd`` and ``authToken`` are all caught).
REDACT_DEFAULT = ("pass", "pwd", "secret", "token", "key", "credential", "auth")


@attrs.frozen
class AuditConfig:
    """
    Where the audit trail goes, how it rotates, and the key that signs its
    checkpoints: checkpoints are on exactly when ``signing_key`` (Ed25519)
    or ``hmac_key_file`` (a shared secret) is set; at most one of them is.
    Only the key files' paths are kept here, never what they hold.
    """

    path: Path
    rotate_bytes: int
    rotate_daily: bool
    fsync: bool
    redact_keys: tuple[str, ...]
    signing_key: Path | None = None
    hmac_key_file: Path | None = None
    checkpoint_records: int = 1000
    checkpoint_seconds: float = 10.0
    #: Refusals anyone can cause are counted into one record per source,
    #: kind and reason over this many seconds.
    refusal_window_seconds: float = 60.0
    #: A write (and its fsync) under way this long is taken as failed: its
    #: callers are answered 507 and calls refused until it ends.
    stall_seconds: float = 10.0
    #: The key of the digests that stand for free-form values (conf, notes)
    #: on the trail; made (32 random bytes, mode 0600) when it is missing.
    digest_key_file: Path | None = None
    #: The name of this gateway in every record it writes (``instance``),
    #: the same across restarts; the host name when not set.
    instance: str = attrs.field(default="", converter=_instance_or_host)

    @property
    def checkpoints(self) -> bool:
        """Whether the trail gets signed checkpoints (a key is set)."""
        return self.signing_key is not None or self.hmac_key_file is not None

    _keys = {
        "path": Key(str, is_path=True, must_exist=False),
        "rotate_bytes": Key(int, 100 * 1024 * 1024, at_least(0)),
        "rotate_daily": Key(bool, True),
        "fsync": Key(bool, True),
        "redact_keys": Key(list, list(REDACT_DEFAULT), strings),
        "signing_key": Key(str, "", is_path=True, must_exist=False),
        "hmac_key_file": Key(str, "", is_path=True, must_exist=False),
        "checkpoint_records": Key(int, 1000, at_least(0)),
        "checkpoint_seconds": Key(float, 10.0, at_least(0)),
        "refusal_window_seconds": Key(float, 60.0, positive),
        "stall_seconds": Key(float, 10.0, positive),
        "digest_key_file": Key(str, "", is_path=True, must_exist=False),
        "instance": Key(str, "", instance_name),
    }


#: Every section above, by its name in the file.
SECTIONS: dict[str, type] = {
    "listen": ListenConfig,
    "tls": TLSConfig,
    "airflow": AirflowConfig,
    "rpc": RPCConfig,
    "audit": AuditConfig,
    "limits": LimitsConfig,
    "health": HealthConfig,
}
