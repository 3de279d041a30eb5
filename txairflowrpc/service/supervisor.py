"""
``[listen] workers = N`` (N > 1): the twistd process supervises N worker
processes and serves nothing itself.

- **The port**: the supervisor binds one listening socket per worker, each
  with ``SO_REUSEPORT`` (`bind_shared`), before any worker starts; worker K
  gets socket K as a file descriptor and adopts it.  So a port that cannot
  be had stops ``twistd airflowrpc`` once, with one line and status 1, as
  with one process; the kernel spreads new connections evenly over the N
  sockets (by their addresses' hash; one shared socket would let whichever
  worker wakes first accept a whole burst); and a worker's socket stays
  open while it is replaced, so connections arriving for it meanwhile
  wait in its backlog instead of being refused -- unless its replacement
  dies before it is ready: then the socket is closed until one starts
  (`SharedPort`), and its share goes to the workers that serve.
- **Workers**: started with ``reactor.spawnProcess`` (the same Python,
  ``twistd -n ... airflowrpc --config FILE --worker K``, the supervisor's
  ``--logger``, standard output and error shared; a daemonized supervisor,
  whose own are ``/dev/null``, reads them and puts each line in its log,
  ``worker K: ...``), each watched by a `WorkerProtocol`.  One that exits
  while the supervisor is not stopping is logged (index, pid, how it
  ended) and started again after a back-off that doubles from
  `RESTART_SECONDS` up to `RESTART_MAX_SECONDS`, back to the shortest once
  the new one reports ready.
- **Readiness**: each worker reports ``READY=1`` on a pipe when it would
  tell systemd; the supervisor sends ``READY=1`` to systemd once every
  worker has, ``STOPPING=1`` at SIGTERM (with ``EXTEND_TIMEOUT_USEC``: what
  the drain may take), and ``WATCHDOG=1`` from its own reactor.
- **Liveness**: each worker reports ``WATCHDOG=1`` on the pipe every
  `PING_SECONDS` from its reactor; one silent for `HUNG_SECONDS` after it
  did (a reactor that stopped turning, a ``SIGSTOP``) is killed and
  replaced, as systemd's watchdog would a single gateway.
- **SIGHUP**: the supervisor checks the config whole first (off the
  reactor); a broken one is logged and not passed on, so the workers keep
  theirs; otherwise every worker gets SIGHUP and reloads as a single
  gateway does.
- **SIGTERM**: passed to every worker; each drains its calls as a single
  gateway does; the supervisor exits 0 once they all have (a worker still
  running `STOP_MARGIN_SECONDS` past ``limits.shutdown_seconds`` is killed).
  Workers stop on their own when the supervisor is gone.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import sys
from collections.abc import Mapping, Sequence
from typing import Any, Callable

import attrs
from twisted.application import service
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.interfaces import IDelayedCall, IProcessTransport, IReactorTime
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from .. import config as config_module
from .logs import WORKER_ENVIRONMENT, level_of_line
from .notify import Watchdog, microseconds
from .workers import (
    ADMIN_FD,
    LISTENER_FD,
    PING_SECONDS,
    REPORT_FD,
    STARTED_WITH_ENVIRONMENT,
    STARTED_WITH_FD,
    SUPERVISOR_KEY_ENVIRONMENT,
)

__all__ = ["SharedPort", "Supervisor", "WorkerProtocol", "WorkerState", "bind_listening",
           "bind_shared", "worker_argv"]

#: First wait before a dead worker is replaced; doubled for each death in a row.
RESTART_SECONDS = 1.0
#: Longest wait before a dead worker is replaced.
RESTART_MAX_SECONDS = 30.0
#: How long past ``limits.shutdown_seconds`` a worker may take to stop at SIGTERM.
STOP_MARGIN_SECONDS = 20.0
#: A worker that reported its reactor turning (``WATCHDOG=1``, every `PING_SECONDS`) and
#: then fell silent this long is hung: killed and replaced.
HUNG_SECONDS = 30.0
#: What the supervisor itself may take after its last worker is gone, at a stop.
EXIT_MARGIN_SECONDS = 10.0
#: Environment a worker must not inherit: systemd talks to the supervisor alone, and only
#: the supervisor says which descriptor holds what the gateway started with.
PRIVATE_ENVIRONMENT = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS",
                       "LISTEN_PID", "LISTEN_FDNAMES", STARTED_WITH_ENVIRONMENT,
                       SUPERVISOR_KEY_ENVIRONMENT)

_log = Logger()

Spawn = Callable[[int, ProcessProtocol], IProcessTransport]


def bind_listening(host: str, port: int, backlog: int = 50, *,
                   reuse_port: bool = False) -> socket.socket:
    """
    A non-blocking socket listening on ``host:port``, for a worker to adopt;
    with ``reuse_port`` (``SO_REUSEPORT``) others of this user may listen
    there too.  OSError if the port cannot be had; nothing stays open then.
    """
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind((host, port))
        s.listen(backlog)
        s.setblocking(False)
    except OSError:
        s.close()
        raise
    return s


def bind_shared(host: str, port: int, count: int, backlog: int = 50) -> list[socket.socket]:
    """
    ``count`` sockets listening on ``host:port`` together (``SO_REUSEPORT``),
    non-blocking, for the workers to adopt.  OSError if the port cannot be
    had; nothing stays open then.
    """
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sockets.append(bind_listening(host, port, backlog, reuse_port=True))
    except OSError:
        for s in sockets:
            s.close()
        raise
    return sockets


class SharedPort:
    """
    The workers' listening sockets on one port (`bind_shared`).  Socket K
    stays open while worker K is replaced, so connections that arrive
    meanwhile wait for the replacement; but while worker K cannot start
    (a config on disk its replacements refuse, say) its socket is closed,
    so that the kernel gives its share of new connections to the workers
    that serve, rather than to a backlog no one reads; it is bound again
    for each new try.
    """

    def __init__(self, host: str, port: int, count: int, backlog: int = 50) -> None:
        self._host, self._backlog = host, backlog
        self.sockets: list[socket.socket | None] = list(bind_shared(host, port, count, backlog))
        first = self.sockets[0]
        self._port = first.getsockname()[1] if first is not None else port

    def fileno(self, index: int) -> int:
        """Socket ``index``'s descriptor, bound again if it was closed; OSError if it cannot be."""
        sock = self.sockets[index]
        if sock is None:
            sock = self.sockets[index] = bind_shared(self._host, self._port, 1, self._backlog)[0]
        return sock.fileno()

    def close(self, index: int) -> None:
        sock, self.sockets[index] = self.sockets[index], None
        if sock is not None:
            sock.close()

    def close_all(self) -> None:
        for index in range(len(self.sockets)):
            self.close(index)


def worker_argv(config_path: str, index: int, logger: str | None) -> list[str]:
    """The command line of worker ``index``: twistd in the foreground, this Python."""
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
            "-n", "--pidfile=", *(["--logger", logger] if logger else []),
            "airflowrpc", "--config", config_path, "--worker", str(index)]


def spawner(reactor: Any, config_path: str, sockets: SharedPort,
            logger: str | None, admin: Sequence[socket.socket] = (),
            started_with: Mapping[str, str] | None = None, key: str | None = None) -> Spawn:
    """
    How the supervisor starts worker K: with socket K, its admin socket
    (``admin[K]``, if the admin listener is on), a report pipe, its
    lifeline, ``started_with`` (the `restart_fingerprint` of the config
    the gateway started with) on a pipe of its own, and the ``key`` its
    questions to the worker's admin listener carry.
    """
    env = {k: v for k, v in os.environ.items() if k not in PRIVATE_ENVIRONMENT}
    fingerprint = json.dumps(dict(started_with or {})).encode("utf-8")

    def spawn(index: int, protocol: ProcessProtocol) -> IProcessTransport:
        # Daemonized, the supervisor's own output goes nowhere: the workers'
        # is read and logged instead (found by review: their log was lost).
        outputs: list[int | str] = ["r" if goes_nowhere(fd) else fd for fd in (1, 2)]
        fds: dict[int, int | str] = {0: "w", 1: outputs[0], 2: outputs[1],
                                     LISTENER_FD: sockets.fileno(index), REPORT_FD: "r"}
        if admin:
            fds[ADMIN_FD] = admin[index].fileno()
        told = {WORKER_ENVIRONMENT: str(index)}  # its log lines name it
        if key is not None:
            told[SUPERVISOR_KEY_ENVIRONMENT] = key
        if started_with is not None:
            fds[STARTED_WITH_FD] = "w"
            told[STARTED_WITH_ENVIRONMENT] = str(STARTED_WITH_FD)
        transport = reactor.spawnProcess(
            protocol, sys.executable, worker_argv(config_path, index, logger),
            env={**env, **told}, childFDs=fds)
        if started_with is not None:
            transport.writeToChild(STARTED_WITH_FD, fingerprint)
            transport.closeChildFD(STARTED_WITH_FD)
        return transport

    return spawn


def goes_nowhere(fd: int) -> bool:
    """Whether this process's ``fd`` is ``/dev/null`` (a daemonized twistd's 1 and 2), or closed."""
    try:
        st, null = os.fstat(fd), os.stat(os.devnull)
    except OSError:
        return True
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == null.st_rdev


#: The longest line of a worker's output logged whole; the rest of a longer one is cut off.
MAX_OUTPUT_LINE = 16384


def ending(reason: Failure) -> str:
    """How a process ended, in words: ``exit status 1``, ``killed by signal 9``."""
    value = reason.value
    if isinstance(value, ProcessTerminated) and value.signal is not None:
        return f"killed by signal {value.signal}"
    if isinstance(value, (ProcessDone, ProcessTerminated)):
        return f"exit status {value.exitCode}"
    return str(value)


class WorkerProtocol(ProcessProtocol):
    """Watches one worker: its reports (one ``KEY=value`` per line) and its end."""

    def __init__(self, supervisor: "Supervisor", index: int) -> None:
        self._supervisor = supervisor
        self._index = index
        self._buffer = b""
        #: What came of a line not yet ended on its standard output and error
        #: (read only when the supervisor is daemonized: `spawner`).
        self._output = {1: b"", 2: b""}

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD in self._output:
            self._relay(childFD, data)
            return
        if childFD != REPORT_FD:
            return
        *lines, self._buffer = (self._buffer + data).split(b"\n")
        self._buffer = self._buffer[-4096:]
        for line in lines:
            self._supervisor.reported(self._index, line.decode("utf-8", "replace"))

    def _relay(self, fd: int, data: bytes) -> None:
        """The worker's output, into the supervisor's log, a line at a time."""
        *lines, rest = (self._output[fd] + data).split(b"\n")
        if len(rest) > MAX_OUTPUT_LINE:  # no line waits for its end without bound
            lines.append(rest)
            rest = b""
        self._output[fd] = rest
        for line in lines:
            self._log_line(fd, line)

    def _log_line(self, fd: int, line: bytes) -> None:
        text = line[:MAX_OUTPUT_LINE].decode("utf-8", "replace").rstrip("\r")
        if len(line) > MAX_OUTPUT_LINE:
            text += " [cut off]"
        if not text.strip():
            return
        # At the level the line says it has (found by review: a worker's errors,
        # written to its standard output, came out as info); else standard error
        # is where a worker's last words go (a start that fails).
        level = level_of_line(text) or (LogLevel.error if fd == 2 else LogLevel.info)
        _log.emit(level, "worker {index}: {line}", index=self._index, line=text)

    def processEnded(self, reason: Failure) -> None:
        for fd, rest in self._output.items():
            if rest:
                self._log_line(fd, rest)
        self._output = {1: b"", 2: b""}
        self._supervisor.ended(self._index, reason)


@attrs.define
class _Worker:
    index: int
    transport: IProcessTransport | None = None
    pid: int | None = None
    heard: bool = False  # it reported: its SIGHUP handler is in place
    ready: bool = False
    deaths: int = 0  # in a row, without a ready report between
    pinged: bool = False  # it reported WATCHDOG=1 once: it is watched
    silent: int = 0  # liveness checks since its last WATCHDOG=1
    hung: bool = False  # killed for falling silent
    restarts: int = 0  # replaced after an unexpected exit, since the supervisor started
    restart: IDelayedCall | None = None


@attrs.frozen
class WorkerState:
    """What the supervisor knows of one worker, for its admin listener."""

    index: int
    pid: int | None
    #: Its process runs.
    running: bool
    #: It reported ready (as it would to systemd) and runs.
    ready: bool
    #: Its listening socket is open: new connections wait for it (a worker
    #: that cannot start has its socket closed, its share going to the others).
    accepting: bool
    #: Times it was replaced after an unexpected exit.
    restarts: int


class Supervisor(service.Service):
    """
    Starts ``count`` workers with ``spawn`` and keeps them running (see the
    module doc).

    :param check: reads and checks the config whole (off the reactor);
        fires with the new `Config`, or fails with `ConfigError`.
    :param notifier: systemd's (`SystemdNotifier`), or None.
    :param record: puts a record on the supervisor's audit chain: a worker
        that ends unexpectedly after it ran (reported) is one, since the
        calls it had under way have no outcome on its own chain.
    """

    def __init__(
        self, clock: IReactorTime, *, count: int, spawn: Spawn,
        check: Callable[[], "Deferred[config_module.Config]"],
        stop_seconds: float, notifier: Any = None, watchdog_seconds: float | None = None,
        where: str = "", on_stopped: Callable[[], None] = lambda: None,
        port: SharedPort | None = None,
        record: Callable[[dict[str, Any]], object] | None = None,
    ) -> None:
        self._clock = clock
        self._record = record
        self._port = port
        self._spawn = spawn
        self._check = check
        self._stop_seconds = stop_seconds
        self._notifier = notifier
        self._where = where
        self._on_stopped = on_stopped
        self.workers = [_Worker(i) for i in range(count)]
        self._watchdog = Watchdog(clock, notifier, watchdog_seconds)
        self._liveness = LoopingCall(self._find_hung)
        self._liveness.clock = clock
        self._stopping = False
        self._stopped: Deferred[None] | None = None
        self._kill: IDelayedCall | None = None
        #: True once every worker reported ready (and READY=1 went to systemd).
        self.ready = False

    def startService(self) -> None:
        super().startService()
        self._watchdog.start()
        self._liveness.start(PING_SECONDS, now=False)
        self._status(f"starting {len(self.workers)} workers")
        for worker in self.workers:
            self._start(worker)

    def _start(self, worker: _Worker) -> None:
        worker.restart = None
        worker.ready = worker.heard = worker.hung = worker.pinged = False
        worker.silent = 0
        try:
            worker.transport = self._spawn(worker.index, WorkerProtocol(self, worker.index))
        except OSError as e:  # no process at all (out of processes, of descriptors)
            delay = self._next_delay(worker)
            _log.error("worker {index} could not be started: {error}; trying again in "
                       "{delay:g} s", index=worker.index, error=str(e), delay=delay)
            worker.restart = self._clock.callLater(delay, self._start, worker)
            return
        worker.pid = worker.transport.pid
        _log.info("worker {index} started (pid {pid})", index=worker.index, pid=worker.pid)

    def reported(self, index: int, line: str) -> None:
        """Worker ``index`` said ``line`` on its report pipe."""
        worker = self.workers[index]
        worker.heard = True
        if line == "WATCHDOG=1":
            worker.pinged, worker.silent = True, 0
            return
        if line != "READY=1" or worker.transport is None or self._stopping:
            return
        worker.ready = True
        worker.deaths = 0
        status = f"ready: {len(self.workers)} workers, {self._where}"
        if self.ready:
            _log.info("worker {index} (pid {pid}) ready", index=index, pid=worker.pid)
            if all(w.ready for w in self.workers):
                self._status(status)  # no longer "restarting"
            return
        if all(w.ready for w in self.workers):
            self.ready = True
            pids = ", ".join(str(w.pid) for w in self.workers)
            _log.info("ready: {count} workers serving {where} (pids {pids})",
                      count=len(self.workers), where=self._where, pids=pids)
            if self._notifier is not None:
                self._notifier.send(READY="1", STATUS=status)

    def _find_hung(self) -> None:
        """
        Kill each worker silent for `HUNG_SECONDS` after it reported (its end
        replaces it).  Silence is counted in these checks, every
        `PING_SECONDS`, not by the wall clock: found by review, a clock stepped
        forward (NTP, a VM resumed) made every healthy worker look silent at
        once, and all were killed together.
        """
        if self._stopping:  # a stop has its own deadline (`_kill_rest`)
            return
        for worker in self.workers:
            if worker.transport is None or not worker.pinged or worker.hung:
                continue
            worker.silent += 1
            if worker.silent * PING_SECONDS <= HUNG_SECONDS:
                continue
            worker.hung = True
            _log.error("worker {index} (pid {pid}) has not reported for {silent:g} s: its "
                       "reactor does not turn; killing it, a new one replaces it",
                       index=worker.index, pid=worker.pid, silent=HUNG_SECONDS)
            self._signal(worker, "KILL")

    def ended(self, index: int, reason: Failure) -> None:
        """Worker ``index``'s process ended: replace it, unless the supervisor is stopping."""
        worker = self.workers[index]
        pid = worker.pid
        worker.transport = None
        worker.ready = False
        if self._stopping:
            clean = isinstance(reason.value, ProcessDone)
            # Found by review: a worker killed at the stop (its deadline, a
            # signal) was logged as info, as if it had drained and closed its chain.
            (_log.info if clean else _log.error)(
                "worker {index} (pid {pid}) stopped: {how}{note}", index=index, pid=pid,
                how=ending(reason),
                note="" if clean else "; calls it had under way may have no outcome on "
                                      "its chain")
            if not clean:
                self._record_exit(worker, pid, reason, stopping=True,
                                  note="calls it had under way may have no outcome on its chain")
            if all(w.transport is None for w in self.workers):
                self._all_stopped()
            return
        failed_start = worker.deaths > 0  # it died again before it was ever ready
        delay = self._next_delay(worker)
        worker.restarts += 1
        _log.error("worker {index} (pid {pid}) exited unexpectedly: {how}; "
                   "starting a new one in {delay:g} s",
                   index=index, pid=pid, how=ending(reason), delay=delay)
        # Found by review: its chain just stopped (a service.start and no
        # service.stop), its calls under way ended without a record.
        self._record_exit(worker, pid, reason, **({"hung": True} if worker.hung else {}),
                          note="calls it had under way have no outcome on its chain")
        if failed_start and self._port is not None and self._port.sockets[index] is not None:
            self._port.close(index)
            _log.error("worker {index} cannot start: its socket is closed until a new one "
                       "does, and new connections go to the other workers", index=index)
        self._status(f"worker {index} exited ({ending(reason)}); restarting")
        worker.restart = self._clock.callLater(delay, self._start, worker)

    def _record_exit(self, worker: _Worker, pid: int | None, reason: Failure,
                     **fields: Any) -> None:
        """``worker.exited`` on the supervisor's chain, for a worker that ran (reported)."""
        if worker.heard and self._record is not None:
            self._record({"event": "worker.exited", "worker": worker.index, "pid": pid,
                          "how": ending(reason), **fields})

    @property
    def restarts(self) -> int:
        """Workers replaced after an unexpected exit, all together."""
        return sum(w.restarts for w in self.workers)

    @property
    def stopping(self) -> bool:
        """SIGTERM came: the workers are draining."""
        return self._stopping

    def states(self) -> list[WorkerState]:
        """Each worker as the supervisor sees it now."""
        return [
            WorkerState(
                index=w.index, pid=w.pid if w.transport is not None else None,
                running=w.transport is not None, ready=w.ready and w.transport is not None,
                accepting=self._port is None or self._port.sockets[w.index] is not None,
                restarts=w.restarts,
            )
            for w in self.workers
        ]

    def _next_delay(self, worker: _Worker) -> float:
        """The back-off before ``worker`` is started again: doubling with each death in a row."""
        delay = min(RESTART_MAX_SECONDS, RESTART_SECONDS * 2 ** min(worker.deaths, 16))
        worker.deaths += 1
        return delay

    def reload(self, trigger: str) -> Deferred[bool]:
        """
        Check the config; if it is good, pass SIGHUP on to every worker.
        Fires True if it was passed on.
        """
        def good(cfg: config_module.Config) -> bool:
            if self._stopping:  # checked while SIGTERM came: the workers are draining
                _log.info("config reload ({trigger}): not passed on, the workers are "
                          "stopping", trigger=trigger)
                return False
            if cfg.listen.workers != len(self.workers):
                _log.warn("config reload: listen.workers changed, but that needs a restart "
                          "to apply")
            sent = 0
            for worker in self.workers:
                # One still starting reads the config as it starts (and a SIGHUP
                # before its handler is in place would end it).
                if worker.transport is not None and worker.heard and \
                        self._signal(worker, "HUP"):
                    sent += 1
            _log.info("config reload ({trigger}): the config is good; passed on to "
                      "{sent} workers", trigger=trigger, sent=sent)
            return True

        def bad(failure: Failure) -> bool:
            failure.trap(config_module.ConfigError)  # whatever went wrong (load_checked)
            _log.error("config reload ({trigger}) rejected, the workers keep theirs: {error}",
                       trigger=trigger, error=str(failure.value))
            return False

        return self._check().addCallbacks(good, bad)

    def _signal(self, worker: _Worker, name: str) -> bool:
        try:
            worker.transport.signalProcess(name)  # type: ignore[union-attr]
        except (OSError, ProcessExitedAlready) as e:  # its end is on its way
            _log.warn("worker {index}: SIG{name} not delivered: {error}",
                      index=worker.index, name=name, error=repr(e))
            return False
        return True

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self._stopping = True
        if self._liveness.running:
            self._liveness.stop()
        if self._notifier is not None:
            # Longer than TimeoutStopSec if the drain may be (found by review: a
            # shutdown_seconds past it was cut off by systemd's SIGKILL, unrecorded).
            budget = self._stop_seconds + STOP_MARGIN_SECONDS + EXIT_MARGIN_SECONDS
            self._notifier.send(STOPPING="1", STATUS="stopping: workers drain their calls",
                                EXTEND_TIMEOUT_USEC=microseconds(budget))
        for worker in self.workers:
            if worker.restart is not None and worker.restart.active():
                worker.restart.cancel()
            worker.restart = None
        live = [w for w in self.workers if w.transport is not None]
        _log.info("stopping: SIGTERM to {count} workers; they finish their calls in flight",
                  count=len(live))
        self._stopped = Deferred()
        for worker in live:
            self._signal(worker, "TERM")
        if self._port is not None:
            # The workers stop accepting as they drain: a connection that came
            # now would wait in a backlog no one reads and be reset at the
            # end (found by review: a TLS handshake hung 4 s, then a reset).
            # Refused at once instead, as by one process that stops.
            self._port.close_all()
        if all(w.transport is None for w in self.workers):
            self._all_stopped()
        else:
            self._kill = self._clock.callLater(self._stop_seconds + STOP_MARGIN_SECONDS,
                                               self._kill_rest)
        return self._stopped

    def _kill_rest(self) -> None:
        self._kill = None
        for worker in self.workers:
            if worker.transport is not None:
                _log.error("worker {index} (pid {pid}) did not stop in time: killing it",
                           index=worker.index, pid=worker.pid)
                self._signal(worker, "KILL")

    def _all_stopped(self) -> None:
        if self._kill is not None and self._kill.active():
            self._kill.cancel()
        self._kill = None
        self._watchdog.stop()
        stopped, self._stopped = self._stopped, None
        self._on_stopped()
        if stopped is not None:
            stopped.callback(None)

    def _status(self, text: str) -> None:
        if self._notifier is not None:
            self._notifier.send(STATUS=text)
