"""
Telling systemd (``Type=notify``) how the gateway is doing.

``READY=1`` is sent once the gateway can serve: its listeners are bound and
Airflow's health endpoint has answered once (until then ``STATUS=`` says
what it waits for, and the probe is repeated every `RETRY_SECONDS`).
``STOPPING=1`` is sent as soon as the shutdown begins (a "before shutdown"
trigger of the reactor, so before the calls in flight are drained), with
``EXTEND_TIMEOUT_USEC`` for what the stop may take (``TimeoutStopSec=`` is
then the least it is given, not the most); and, when
the unit sets ``WatchdogSec=``, ``WATCHDOG=1`` every half of that period
from the reactor, so that a reactor that stops turning gets the gateway
restarted.

The protocol is a few lines, so no library: one datagram per message to
the ``AF_UNIX`` socket named by ``$NOTIFY_SOCKET`` (``@`` at its start
names an abstract socket).  Without that variable nothing is sent, and the
readiness is only logged.
"""

from __future__ import annotations

import os
import socket
from typing import Any, Callable, Mapping

from twisted.application import service
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IDelayedCall, IListeningPort, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = ["Bound", "Readiness", "SystemdNotifier", "microseconds"]

#: Seconds between two probes of Airflow's health endpoint while not ready.
RETRY_SECONDS = 2.0

_log = Logger()


class SystemdNotifier:
    """Sends ``KEY=value`` messages to systemd's notification socket."""

    def __init__(self, address: str) -> None:
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        # Never wait on systemd: a message that cannot go at once is dropped.
        self._socket.setblocking(False)
        #: Whether the last message could not go (its failure was said).
        self._failing = False

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> "SystemdNotifier | None":
        """The notifier ``$NOTIFY_SOCKET`` names, or None when not run by systemd."""
        address = environ.get("NOTIFY_SOCKET", "")
        return cls(address) if address else None

    def send(self, **fields: str) -> bool:
        """Send one message of ``fields``; False (and a log line) if it could not go."""
        message = "\n".join(f"{key}={value}" for key, value in fields.items())
        try:
            self._socket.sendto(message.encode("utf-8"), self.address)
        except OSError as e:
            # Said when it starts failing, not at every watchdog ping (found
            # by review: 13 lines in 5 s, one every 15 s under the unit).
            if not self._failing:
                _log.warn("systemd notification {fields} not sent: {error} (said once, "
                          "until one goes again)", fields=",".join(fields), error=str(e))
            self._failing = True
            return False
        if self._failing:
            _log.info("systemd notifications go again")
        self._failing = False
        return True

    def close(self) -> None:
        self._socket.close()


def watchdog_interval(environ: Mapping[str, str] = os.environ) -> float | None:
    """
    Seconds between two ``WATCHDOG=1`` (half of ``$WATCHDOG_USEC``), or None
    when systemd set no watchdog for this process.
    """
    usec = environ.get("WATCHDOG_USEC", "")
    pid = environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2e6


def microseconds(seconds: float) -> str:
    """``seconds`` as sd_notify's ``..._USEC`` fields take them."""
    return str(int(seconds * 1_000_000))


class Bound:
    """
    A server endpoint that says when it is listening: `bound` fires with
    the port once ``listen`` succeeded.
    """

    def __init__(self, endpoint: Any, name: str) -> None:
        self._endpoint = endpoint
        self.name = name
        self.port: IListeningPort | None = None
        self._waiting: list[Deferred[IListeningPort]] = []

    def listen(self, factory: Any) -> Deferred[IListeningPort]:
        d: Deferred[IListeningPort] = self._endpoint.listen(factory)
        return d.addCallback(self._bound)

    def _bound(self, port: IListeningPort) -> IListeningPort:
        self.port = port
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(port)
        return port

    def bound(self) -> Deferred[IListeningPort]:
        """Fires with the port once it listens (at once if it does already)."""
        d: Deferred[IListeningPort] = Deferred()
        if self.port is not None:
            d.callback(self.port)
        else:
            self._waiting.append(d)
        return d


class Watchdog:
    """
    ``WATCHDOG=1`` to ``notifier`` every ``seconds`` of ``clock`` from
    `start` to `stop`; nothing at all without a notifier or an interval
    (systemd set no watchdog).
    """

    def __init__(self, clock: IReactorTime, notifier: Any, seconds: float | None) -> None:
        self._loop: LoopingCall | None = None
        self._seconds = seconds or 0.0
        if notifier is not None and seconds:
            self._loop = LoopingCall(notifier.send, WATCHDOG="1")
            self._loop.clock = clock

    def start(self) -> None:
        if self._loop is not None and not self._loop.running:
            self._loop.start(self._seconds, now=True)

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()


class Readiness(service.Service):
    """
    Reports the gateway ready once every listener is bound and Airflow's
    health endpoint answered once: to the log always, to systemd when it
    gave a notifier.  The probe is repeated until then, and stops with the
    service.

    :param reachable: Airflow's health probe; fires True or False, never fails.
    :param stop_seconds: the most a stop may take, said with ``STOPPING=1``
        (None: nothing said).
    """

    def __init__(
        self, clock: IReactorTime, *, listeners: list[Bound],
        reachable: Callable[[], "Deferred[bool]"], notifier: SystemdNotifier | None,
        watchdog_seconds: float | None = None, retry_seconds: float = RETRY_SECONDS,
        stop_seconds: float | None = None,
    ) -> None:
        self._clock = clock
        self._stop_seconds = stop_seconds
        self._listeners = listeners
        self._reachable = reachable
        self._notifier = notifier
        self._retry = retry_seconds
        self._watchdog = Watchdog(clock, notifier, watchdog_seconds)
        self._pending: Deferred[Any] | None = None
        self._next: IDelayedCall | None = None
        self._waited = False
        self._trigger: Any = None
        self._stopping = False
        #: What STATUS says once ready, and a remark after it (`remark`).
        self._ready_status = ""
        self._remark: str | None = None
        #: True once READY was reported.
        self.ready = False

    def startService(self) -> None:
        super().startService()
        add_trigger = getattr(self._clock, "addSystemEventTrigger", None)
        if add_trigger is not None:
            self._trigger = add_trigger("before", "shutdown", self._stop_begins)
        self._watchdog.start()
        self._status("waiting for the listeners to be bound")
        d = self._pending = gatherResults([b.bound() for b in self._listeners],
                                          consumeErrors=True)
        d.addCallbacks(lambda _: self._probe(), self._never_bound)

    def _never_bound(self, failure: Failure) -> None:
        self._pending = None
        if self.running:  # else: cancelled by stopService
            _log.failure("a listener could not be bound: not ready", failure)

    def _probe(self) -> None:
        self._next = None
        if not self.running:
            return
        d = self._pending = self._reachable()
        d.addCallbacks(self._answered, self._probe_failed)

    def _probe_failed(self, failure: Failure) -> None:
        self._pending = None
        if self.running:  # else: cancelled by stopService
            _log.failure("Airflow's health probe failed", failure)
            self._answered(False)

    def _answered(self, ok: bool) -> None:
        self._pending = None
        if not self.running:
            return
        if ok:
            self.ready = True
            listening = ", ".join(f"{b.name} {_where(b.port)}" for b in self._listeners)
            _log.info("ready: listening ({listening}) and Airflow answers", listening=listening)
            self._ready_status = f"ready: {listening}"
            if self._notifier is not None:
                self._notifier.send(READY="1", STATUS=self._with_remark())
            return
        if not self._waited:
            self._waited = True
            _log.warn("Airflow's health endpoint does not answer yet: not reporting ready; "
                      "asking again every {seconds:g} s", seconds=self._retry)
        self._status("listening; waiting for Airflow's health endpoint to answer")
        self._next = self._clock.callLater(self._retry, self._probe)

    def _status(self, text: str) -> None:
        if self._notifier is not None:
            self._notifier.send(STATUS=text)

    def remark(self, text: str | None) -> None:
        """
        Say ``text`` after the ready status (None: nothing), as long as it
        holds: found by review, a config the gateway's own watch rejected
        left ``systemctl status`` saying all was well.
        """
        self._remark = text
        if self.ready and not self._stopping:
            self._status(self._with_remark())

    def _with_remark(self) -> str:
        return self._ready_status + (f"; {self._remark}" if self._remark else "")

    def _stop_begins(self) -> None:
        """Tell systemd once, as early as the shutdown can be seen."""
        self._trigger = None
        if self._notifier is not None and not self._stopping:
            # Found by review: a shutdown_seconds longer than TimeoutStopSec
            # was cut off by systemd's SIGKILL, the calls and the trail's end unrecorded.
            extend = ({"EXTEND_TIMEOUT_USEC": microseconds(self._stop_seconds)}
                      if self._stop_seconds else {})
            self._notifier.send(STOPPING="1", STATUS="stopping", **extend)
        self._stopping = True

    def stopService(self) -> None:
        super().stopService()
        if self._trigger is not None:
            self._clock.removeSystemEventTrigger(self._trigger)  # type: ignore[attr-defined]
        self._stop_begins()
        if self._next is not None and self._next.active():
            self._next.cancel()
        self._next = None
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.cancel()
        self._watchdog.stop()


def _where(port: IListeningPort | None) -> str:
    if port is None:
        return "?"
    address = port.getHost()
    return f"{getattr(address, 'host', '')}:{getattr(address, 'port', '')}"
