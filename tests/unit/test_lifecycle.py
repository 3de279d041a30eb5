"""Starting and stopping in order: a port that cannot be bound, and the drain on SIGTERM."""

from __future__ import annotations

import socket
from typing import Any

import pytest
from twisted.application import service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock

from txairflowrpc.service.lifecycle import GatewayService, Listener, bind_problem


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
