"""Starting and stopping in order: a port that cannot be bound, and the drain on SIGTERM."""

from __future__ import annotations

import signal
import socket
from typing import Any

import pytest
from twisted.application import service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock

from txairflowrpc.service.lifecycle import GatewayService, Listener, StopSignals, bind_problem


class Endpoint:
    def __init__(self, result: Any) -> None:
        self.result = result
        self.port = Port()

    def listen(self, factory: Factory) -> Deferred[Any]:
        return fail(self.result) if isinstance(self.result, Exception) else succeed(self.port)


class Port:
    stopped = False

    def stopListening(self) -> None:
        self.stopped = True


def test_a_port_that_cannot_be_bound_is_one_line_and_status_1() -> None:
    error = CannotListenError("127.0.0.1", 8443, OSError(98, "Address already in use"))
    with pytest.raises(SystemExit) as e:
        Listener(Endpoint(error), Factory(), "127.0.0.1:8443").startService()
    assert str(e.value.code) == "airflowrpc: cannot listen on 127.0.0.1:8443: address already in use"
    # What a daemonizing twistd catches to tell its waiting parent (test_twistd shows it live).
    assert isinstance(e.value, Exception)


def test_bind_problem_sees_a_port_in_use() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert bind_problem("127.0.0.1", port) == "address already in use"
    assert bind_problem("127.0.0.1", 0) is None


class Step(service.Service):
    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self._log = name, log

    def stopService(self) -> None:
        super().stopService()
        self._log.append(self.name)


def test_the_stop_goes_in_order_and_ends_with_a_clean_status() -> None:
    steps: list[str] = []
    drained: Deferred[None] = Deferred()
    reactor = Clock()
    reactor._exitSignal = 15  # type: ignore[attr-defined]  # what the SIGTERM handler sets

    def drain() -> Deferred[None]:
        steps.append("drain")
        return drained

    top = GatewayService(reactor, drain=drain,
                         close_connections=lambda: steps.append("close") or succeed(None),
                         before_rest=lambda: steps.append("refusals"))
    Step("audit", steps).setServiceParent(top)
    Step("pool", steps).setServiceParent(top)
    ports = [Endpoint(None), Endpoint(None)]
    for i, endpoint in enumerate(ports):
        top.listen(Listener(endpoint, Factory(), f"127.0.0.1:{i}"))
    top.startService()
    stopped = top.stopService()
    assert all(e.port.stopped for e in ports) and steps == ["drain"]  # no new connection first
    assert not stopped.called  # the calls in flight are still finishing
    drained.callback(None)
    assert steps == ["drain", "close", "refusals", "pool", "audit"]  # the audit trail last
    assert stopped.called and reactor._exitSignal is None  # type: ignore[attr-defined]


def test_if_one_listener_cannot_bind_the_others_are_let_go() -> None:
    good = Endpoint(None)
    bad = Endpoint(CannotListenError("127.0.0.1", 1, OSError(98, "Address already in use")))
    top = GatewayService(Clock(), drain=lambda: succeed(None),
                         close_connections=lambda: succeed(None))
    top.listen(Listener(good, Factory(), "a"))
    top.listen(Listener(bad, Factory(), "b"))
    with pytest.raises(SystemExit):
        top.startService()
    assert good.port.stopped and not top.running


class _Reactor:
    """What `StopSignals` asks of the reactor: runs at once, triggers kept."""

    def __init__(self) -> None:
        self.triggers: list[tuple[str, str, Any]] = []
        self.from_threads: list[tuple[Any, tuple[Any, ...], dict[str, Any]]] = []

    def callWhenRunning(self, f: Any) -> None:
        f()

    def addSystemEventTrigger(self, phase: str, event: str, f: Any) -> None:
        self.triggers.append((phase, event, f))

    def callFromThread(self, f: Any, *args: Any, **kwargs: Any) -> None:
        self.from_threads.append((f, args, kwargs))


@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGINT])
def test_a_second_stop_signal_changes_nothing(number: int) -> None:
    """
    Found by a newcomer: ``kill -TERM -- -PGID`` on make run reached twistd
    twice (from the group, and passed on by the launcher), and Twisted's
    second ``reactor.stop()`` logged a critical ReactorNotRunning.
    """
    twisted_s: list[int] = []
    before = signal.signal(number, lambda n, frame: twisted_s.append(n))
    try:
        reactor = _Reactor()
        signals = StopSignals(reactor)
        signals.startService()
        handler = signal.getsignal(number)
        assert callable(handler)
        handler(number, None)
        handler(number, None)
        assert twisted_s == [number]  # the first to Twisted's handler, the second not
        assert signals.ignored == 1
        (_, _, kwargs), = reactor.from_threads
        assert kwargs == {"signal": signal.Signals(number).name}
    finally:
        signal.signal(number, before)


def test_once_stopping_for_any_reason_a_stop_signal_changes_nothing() -> None:
    twisted_s: list[int] = []
    before = signal.signal(signal.SIGTERM, lambda n, frame: twisted_s.append(n))
    try:
        reactor = _Reactor()
        signals = StopSignals(reactor)
        signals.startService()
        (phase, event, begins), = reactor.triggers
        assert (phase, event) == ("before", "shutdown")
        begins()  # the supervisor went away, say: the reactor stops
        signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)
        assert twisted_s == [] and signals.ignored == 1
    finally:
        signal.signal(signal.SIGTERM, before)
