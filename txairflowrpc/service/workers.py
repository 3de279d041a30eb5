"""
One of the ``listen.workers`` processes, as the supervisor
(`txairflowrpc.service.supervisor`) starts it: ``twistd -n airflowrpc
--config FILE --worker K``.

A worker is the whole gateway on `for_worker`'s view of the config: its own
audit chain (``audit.w<K>.jsonl``, instance ``<instance>-w<K>``), its share
of the per-principal and connection limits, its own admin listener
(``health.port + 1 + K``: ``health.port`` is the supervisor's, which speaks for
them all, `txairflowrpc.service.gathered`).  What it gets from the supervisor, by file
descriptor:

- `LISTENER_FD`: a listening socket bound by the supervisor (with
  ``SO_REUSEPORT``, one per worker: the kernel spreads new connections over
  them), adopted instead of binding the port;
- `ADMIN_FD`: its admin listener's socket (``health.port + 1 + K``), bound
  by the supervisor and kept while the worker is replaced, so that no other
  process can take the port the supervisor asks (found by review: one that
  did, while a worker was down, fed the supervisor its metrics and readiness
  and kept the replacement from listening);
- `REPORT_FD`: a pipe on which it reports ``READY=1`` as it would to systemd
  (`PipeNotifier`);
- `STARTED_WITH_FD`: a pipe with the supervisor's `restart_fingerprint` of the
  config it started with: a worker whose config on disk differs in a key
  that applies only at a restart refuses to start (`started_with`);
- ``0``: a pipe from the supervisor that it never writes to; its end is
  the supervisor's life, so a worker whose supervisor is gone (even
  ``kill -9``) stops as at SIGTERM (`ParentWatch`).
"""

from __future__ import annotations

import json
import math
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable

import attrs
from twisted.application import service
from twisted.internet import abstract, fdesc
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.error import ReactorNotRunning
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.logger import Logger
from zope.interface import implementer

from .. import config as config_module
from ..audit.chain import worker_chain

__all__ = ["ADMIN_FD", "LISTENER_FD", "REPORT_FD", "STARTED_WITH_ENVIRONMENT", "STARTED_WITH_FD",
           "AdoptedEndpoint", "ParentWatch", "PipeNotifier", "for_worker", "started_with",
           "worker_admin_port", "worker_admin_ports", "worker_audit_path"]

#: The listening socket a worker adopts.
LISTENER_FD = 3
#: Where a worker writes its readiness reports.
REPORT_FD = 4
#: The environment variable by which the supervisor gives each worker the key
#: its requests to the worker's admin listener carry (`admin.SUPERVISOR_HEADER`).
SUPERVISOR_KEY_ENVIRONMENT = "AIRFLOWRPC_SUPERVISOR_KEY"
#: How often a worker reports ``WATCHDOG=1`` there from its reactor, as a
#: single gateway tells systemd: the supervisor replaces one that goes silent.
PING_SECONDS = 5.0
#: The admin listener's socket a worker adopts.
ADMIN_FD = 5
#: Where a worker reads what the gateway started with (`started_with`), and
#: the variable by which the supervisor says it gave it.
STARTED_WITH_FD = 6
STARTED_WITH_ENVIRONMENT = "AIRFLOWRPC_STARTED_WITH_FD"
#: The most a worker reads there.
_STARTED_WITH_BYTES = 64 * 1024
#: Where a worker finds the supervisor's end of its lifeline.
PARENT_FD = 0

_log = Logger()


def worker_audit_path(path: Path, index: int) -> Path:
    """Worker ``index``'s audit file: ``audit.jsonl`` becomes ``audit.w<index>.jsonl``."""
    return worker_chain(path, index)


def worker_admin_port(health_port: int, index: int) -> int:
    """Worker ``index``'s admin port: the one after the supervisor's, then one each; 0 if off."""
    return health_port + 1 + index if health_port else 0


def worker_admin_ports(cfg: config_module.Config) -> list[int]:
    """Every worker's admin port: none with one process or with the admin listener off."""
    if cfg.listen.workers == 1:
        return []
    return [worker_admin_port(cfg.health.port, k) for k in range(cfg.listen.workers)
            if cfg.health.port]


def started_with(environ: Mapping[str, str] = os.environ) -> dict[str, str] | None:
    """
    The supervisor's fingerprint of the config the gateway started with,
    read whole from the descriptor `STARTED_WITH_ENVIRONMENT` names
    (blocking: at start, before the reactor), or None if it names none (a
    worker started by hand: no descriptor of someone else's is read).
    ValueError if it names one that holds no fingerprint: the check fails
    closed.
    """
    if environ.get(STARTED_WITH_ENVIRONMENT) != str(STARTED_WITH_FD):
        return None
    fd = STARTED_WITH_FD
    data = b""
    try:
        while len(data) <= _STARTED_WITH_BYTES:
            chunk = os.read(fd, 8192)
            if not chunk:
                break
            data += chunk
    except OSError as e:
        raise ValueError(f"cannot be read: {e.strerror}") from None
    finally:
        try:
            os.close(fd)
        except OSError:
            pass
    try:
        found = json.loads(data)
    except ValueError:
        found = None
    if not isinstance(found, dict) or not found:
        raise ValueError("holds no fingerprint")
    return {str(k): str(v) for k, v in found.items()}


def divided(value: int, count: int, least: int = 1) -> int:
    """One worker's share of ``value`` among ``count``: rounded up, at least ``least``."""
    return max(least, math.ceil(value / count))


def for_worker(cfg: config_module.Config, index: int) -> config_module.Config:
    """
    The config worker ``index`` of ``cfg.listen.workers`` runs on: its own
    audit chain and admin port; each limit that counts per process (per
    principal, per source, connections, body memory, Airflow connections
    and requests in flight) divided among the workers, so that all of them
    together keep to the configured one.
    """
    n = cfg.listen.workers
    limits = attrs.evolve(
        cfg.limits,
        rate_per_second=cfg.limits.rate_per_second / n,
        burst=divided(cfg.limits.burst, n),
        max_in_flight=divided(cfg.limits.max_in_flight, n),
        max_connections=divided(cfg.limits.max_connections, n),
        max_connections_per_source=divided(cfg.limits.max_connections_per_source, n),
        connection_rate_per_source=cfg.limits.connection_rate_per_source / n,
        connection_burst_per_source=divided(cfg.limits.connection_burst_per_source, n),
        max_body_memory_bytes=divided(cfg.limits.max_body_memory_bytes, n, least=1024),
    )
    airflow = attrs.evolve(
        cfg.airflow,
        max_connections=divided(cfg.airflow.max_connections, n),
        max_in_flight=divided(cfg.airflow.max_in_flight, n),
    )
    audit = attrs.evolve(cfg.audit, path=worker_audit_path(cfg.audit.path, index),
                         instance=f"{cfg.audit.instance}-w{index}")
    health = attrs.evolve(cfg.health, port=worker_admin_port(cfg.health.port, index))
    return attrs.evolve(cfg, limits=limits, airflow=airflow, audit=audit, health=health)


@implementer(IStreamServerEndpoint)
class AdoptedEndpoint:
    """
    A server endpoint on a listening socket this process was handed (by
    file descriptor) rather than one it binds.
    """

    def __init__(self, reactor: Any, fd: int) -> None:
        self._reactor = reactor
        self._fd = fd

    def listen(self, factory: Any) -> Deferred[IListeningPort]:
        def adopt() -> IListeningPort:
            probe = socket.socket(fileno=self._fd)  # learns the address family
            family = probe.family
            probe.detach()
            fdesc.setNonBlocking(self._fd)
            port = self._reactor.adoptStreamPort(self._fd, family, factory)
            os.close(self._fd)  # the port holds its own duplicate
            return port

        return maybeDeferred(adopt)


class PipeNotifier:
    """
    Reports to the supervisor on a pipe, as `SystemdNotifier` reports to
    systemd: one ``KEY=value`` line per field.  Never blocks: a report that
    cannot go at once is dropped (the supervisor reads them as they come).
    """

    def __init__(self, fd: int = REPORT_FD) -> None:
        self._fd = fd
        fdesc.setNonBlocking(fd)

    def send(self, **fields: str) -> bool:
        text = "".join(f"{k}={' '.join(v.split())}\n" for k, v in fields.items())
        try:
            os.write(self._fd, text.encode("utf-8"))
        except OSError:
            return False
        return True

    def close(self) -> None:
        os.close(self._fd)


class _Lifeline(abstract.FileDescriptor):
    """The read end of a pipe nobody writes to: it ends when the writer's process does."""

    def __init__(self, reactor: Any, fd: int, gone: Callable[[], None]) -> None:
        super().__init__(reactor)
        self._fd = fd
        self._gone = gone
        fdesc.setNonBlocking(fd)

    def fileno(self) -> int:
        return self._fd

    def doRead(self) -> Any:
        return fdesc.readFromFD(self._fd, lambda data: None)

    def connectionLost(self, reason: Any) -> None:
        super().connectionLost(reason)
        self._gone()


class ParentWatch(service.Service):
    """While running, stops the reactor (an orderly shutdown) once the supervisor is gone."""

    def __init__(self, reactor: Any, fd: int = PARENT_FD) -> None:
        self._reactor = reactor
        self._fd = fd
        self._line: _Lifeline | None = None

    def startService(self) -> None:
        super().startService()
        self._line = _Lifeline(self._reactor, self._fd, self._gone)
        self._line.startReading()

    def _gone(self) -> None:
        self._line = None
        if self.running:
            _log.warn("the supervisor is gone: stopping")
            self._reactor.callWhenRunning(self._stop)

    def _stop(self) -> None:
        try:
            self._reactor.stop()
        except ReactorNotRunning:  # already stopping
            pass

    def stopService(self) -> None:
        super().stopService()
        line, self._line = self._line, None
        if line is not None:
            line.stopReading()
