"""
Starting and stopping the gateway in order.

`Listener` binds a port when the service starts; if it cannot, twistd stops
at once with one line on stderr and exit status 1
(``airflowrpc: cannot listen on 127.0.0.1:8443: address already in use``),
instead of logging a traceback and running on without serving anything,
which a supervisor would take for healthy.

`GatewayService` owns the listeners and the rest of the service.  It starts
the listeners first (so a port that cannot be bound stops the start before
anything else runs), and stops in this order on SIGTERM:

1. the listeners: no new connection;
2. the calls in flight may finish, up to ``limits.shutdown_seconds``; those
   still running then are cancelled and answered 503, and every one of them
   is recorded;
3. the connections are closed once their answers are written;
4. the counted refusals are written, then the other services stop, the
   audit trail last (flushed and fsynced, with its shutdown checkpoint);
5. twistd exits 0: the drain is done (Twisted would otherwise re-raise the
   SIGTERM and exit with it).

A SIGTERM or SIGINT that comes while it stops is logged and changes nothing
(`StopSignals`).
"""

from __future__ import annotations

import signal
import socket
from types import FrameType
from typing import Any, Callable

from twisted.application import service
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import (
    IListeningPort,
    IReactorCore,
    IReactorFromThreads,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

_log = Logger()


def bind_problem(host: str, port: int) -> str | None:
    """
    Why ``host:port`` cannot be listened on now (``"address already in
    use"``), or None.  Checked when twistd reads its options, before it
    logs a line, so that the usual case is one clean line on stderr; the
    real bind at start (`Listener`) still decides.
    """
    if not port:
        return None
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Twisted binds
            probe.bind((host, port))
    except OSError as e:
        return (e.strerror or str(e)).lower()
    except OverflowError:
        return "not a port number"
    return None


class CannotListen(SystemExit, Exception):
    """
    A port that cannot be had as the service starts: the process ends with
    its one line and status 1, as a `SystemExit` does.  An `Exception` too,
    so that a daemonizing twistd (no ``-n``) hands the line to its parent,
    which waits for the start: Twisted's parent keeps the write end of that
    pipe open itself, so a child gone with a bare `SystemExit` (a port taken
    between the pre-check and the bind) left it waiting for good.
    """

    # Its name alone before the line the parent prints (Twisted passes 100 bytes).
    __module__ = "builtins"


class Listener(service.Service):
    """A listening port, bound when the service starts; the start fails if it cannot be."""

    def __init__(self, endpoint: IStreamServerEndpoint, factory: Factory, address: str) -> None:
        self.endpoint = endpoint
        self._factory = factory
        self.address = address
        self._port: IListeningPort | None = None

    def startService(self) -> None:
        """Bind now; `CannotListen` (one line, status 1) if the port cannot be had."""
        outcome: list[Any] = []
        self.endpoint.listen(self._factory).addBoth(outcome.append)
        if outcome and isinstance(outcome[0], Failure):
            error = outcome[0].value
            reason = getattr(getattr(error, "socketError", None), "strerror", None) or (
                str(error) if not isinstance(error, CannotListenError) else "cannot bind")
            raise CannotListen(f"airflowrpc: cannot listen on {self.address}: {reason.lower()}")
        if not outcome:  # an endpoint that binds later: its failure ends the process
            raise CannotListen(f"airflowrpc: cannot listen on {self.address}: not bound at start")
        self._port = outcome[0]
        super().startService()

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        port, self._port = self._port, None
        return maybeDeferred(port.stopListening) if port is not None else None


class GatewayService(service.MultiService):
    """
    The whole gateway: listeners started first and stopped first, then the
    calls in flight drained, then everything else (see the module doc).

    :param drain: fires once the calls in flight have ended and been recorded.
    :param close_connections: fires once the open connections are closed.
    :param before_rest: what must happen after the drain and before the
        other services stop (the counted refusals are written).
    """

    def __init__(
        self, reactor: Any, *, drain: Callable[[], "Deferred[None]"],
        close_connections: Callable[[], "Deferred[None]"],
        before_rest: Callable[[], None] = lambda: None,
    ) -> None:
        super().__init__()
        self._reactor = reactor
        self._drain = drain
        self._close_connections = close_connections
        self._before_rest = before_rest
        self.listeners: list[Listener] = []

    def listen(self, listener: Listener) -> None:
        self.listeners.append(listener)

    def startService(self) -> None:
        started: list[Listener] = []
        try:
            for listener in self.listeners:
                listener.startService()
                started.append(listener)
        except SystemExit:
            for listener in started:
                listener.stopService()
            raise
        super().startService()

    def stopService(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        _log.info("stopping: no new connections; letting the calls in flight finish")
        await gatherResults([maybeDeferred(l.stopService) for l in self.listeners],
                            consumeErrors=True)
        await self._drain()
        await self._close_connections()
        self._before_rest()
        await super().stopService()
        exit_zero(self._reactor)()


def exit_zero(reactor: Any) -> Callable[[], None]:
    """
    What makes twistd exit 0 after an orderly stop.  Twisted re-raises the
    signal that stopped the reactor once it has stopped, so the exit status
    would say "killed by SIGTERM"; the shutdown was orderly and complete
    (one gateway's, or a supervisor's with all its workers), so it says 0.
    """
    def clear() -> None:
        if hasattr(reactor, "_exitSignal"):
            reactor._exitSignal = None
    return clear


class StopSignals(service.Service):
    """
    While running, a SIGTERM or SIGINT that comes once the reactor is
    stopping (for whatever reason) is logged and otherwise ignored; the
    first goes to Twisted's own handler as before.  Twisted's handler would
    call ``reactor.stop()`` again, which raises `ReactorNotRunning` inside
    the reactor: a critical traceback in the log of an orderly shutdown.
    Found by a newcomer: ``kill -TERM -- -PGID`` reaches twistd both from the
    process group and from ``make run``'s launcher, which passes it on; a
    worker, likewise, from its group and from its supervisor.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, reactor: Any) -> None:
        self._reactor: IReactorCore = reactor
        self._from_threads: IReactorFromThreads = reactor
        self.stopping = False
        #: Signals ignored, for tests.
        self.ignored = 0

    def startService(self) -> None:
        super().startService()
        # Twisted installs its handlers as the reactor starts: wrapped after.
        self._reactor.callWhenRunning(self._install)
        self._reactor.addSystemEventTrigger("before", "shutdown", self._stop_begins)

    def _stop_begins(self) -> None:
        self.stopping = True

    def _install(self) -> None:
        for number in self.SIGNALS:
            first = signal.getsignal(number)
            if callable(first):
                signal.signal(number, self._once(first))

    def _once(self, first: Callable[[int, FrameType | None], Any],
              ) -> Callable[[int, FrameType | None], None]:
        def handler(number: int, frame: FrameType | None) -> None:
            if self.stopping:
                self.ignored += 1
                self._from_threads.callFromThread(
                    _log.info, "{signal} while stopping: the shutdown goes on",
                    signal=signal.Signals(number).name)
                return
            self.stopping = True
            first(number, frame)
        return handler
