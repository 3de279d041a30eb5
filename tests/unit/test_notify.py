"""
Readiness for systemd, against a real AF_UNIX datagram socket standing in
for systemd's, with the listeners and Airflow's health probe under the
test's control and time on a Clock.
"""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from txairflowrpc.service.notify import (
    RETRY_SECONDS, Bound, Readiness, SystemdNotifier, watchdog_interval,
)


class Endpoint:
    """A server endpoint whose ``listen`` the test completes."""

    def __init__(self) -> None:
        self.listening: Deferred[Any] = Deferred()

    def listen(self, factory: Any) -> Deferred[Any]:
        return self.listening


class Port:
    def getHost(self) -> Any:
        return type("Address", (), {"host": "127.0.0.1", "port": 8443})()


class ShuttingDownClock(Clock):
    """A Clock with the reactor's system event triggers, enough for "before shutdown"."""

    def __init__(self) -> None:
        super().__init__()
        self.triggers: list[tuple[str, str, Any]] = []

    def addSystemEventTrigger(self, phase: str, event: str, f: Any) -> Any:
        trigger = (phase, event, f)
        self.triggers.append(trigger)
        return trigger

    def removeSystemEventTrigger(self, trigger: Any) -> None:
        self.triggers.remove(trigger)

    def shut_down(self) -> None:
        for trigger in list(self.triggers):
            if trigger[:2] == ("before", "shutdown"):
                self.triggers.remove(trigger)  # a fired trigger is gone, as in the reactor
                trigger[2]()


class Systemd:
    """The receiving end of ``$NOTIFY_SOCKET``."""

    def __init__(self, address: str | None = None) -> None:
        self.path = address or str(Path(tempfile.mkdtemp()) / "notify")
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind(self.path.replace("@", "\0", 1) if self.path.startswith("@") else self.path)
        self.socket.setblocking(False)

    def messages(self) -> list[dict[str, str]]:
        found = []
        while True:
            try:
                data = self.socket.recv(4096)
            except BlockingIOError:
                return found
            found.append(dict(line.split("=", 1) for line in data.decode().splitlines()))

    def close(self) -> None:
        self.socket.close()


class ReadinessTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.systemd = Systemd()
        self.addCleanup(self.systemd.close)
        self.notifier = SystemdNotifier(self.systemd.path)
        self.addCleanup(self.notifier.close)
        self.endpoints = [Endpoint(), Endpoint()]
        self.listeners = [Bound(e, name) for e, name in zip(self.endpoints, ("rpc", "admin"))]
        self.answers: list[bool] = []
        self.probes = 0

    def reachable(self) -> Deferred[bool]:
        self.probes += 1
        return succeed(self.answers.pop(0))

    def readiness(self, **kw: Any) -> Readiness:
        return Readiness(self.clock, listeners=self.listeners, reachable=self.reachable,
                         notifier=self.notifier, **kw)

    def bind_all(self) -> None:
        for listener, endpoint in zip(self.listeners, self.endpoints):
            listener.listen(object())
            endpoint.listening.callback(Port())

    def test_ready_only_once_bound_and_airflow_answered(self) -> None:
        service = self.readiness()
        service.startService()
        self.clock.advance(10)
        self.assertEqual(self.probes, 0)  # not bound: Airflow is not even asked
        self.answers = [False, False, True]
        self.listeners[0].listen(object())
        self.endpoints[0].listening.callback(Port())
        self.assertEqual(self.probes, 0)  # one of two listeners
        self.listeners[1].listen(object())
        self.endpoints[1].listening.callback(Port())
        self.assertEqual(self.probes, 1)
        sent = self.systemd.messages()
        self.assertNotIn("READY", {k for m in sent for k in m})
        self.assertEqual(sent[-1]["STATUS"],
                         "listening; waiting for Airflow's health endpoint to answer")
        self.clock.advance(RETRY_SECONDS)
        self.assertFalse(service.ready)
        self.clock.advance(RETRY_SECONDS)
        self.assertTrue(service.ready)
        ready = self.systemd.messages()
        self.assertEqual(ready[-1]["READY"], "1")
        self.assertIn("rpc 127.0.0.1:8443", ready[-1]["STATUS"])
        self.clock.advance(60)
        self.assertEqual(self.probes, 3)  # asked no more once ready
        service.stopService()
        self.assertEqual(self.systemd.messages(), [{"STOPPING": "1", "STATUS": "stopping"}])

    def test_stopping_is_told_as_the_shutdown_begins(self) -> None:
        reactor = ShuttingDownClock()
        self.answers = [True]
        self.bind_all()
        service = Readiness(reactor, listeners=self.listeners, reachable=self.reachable,
                            notifier=self.notifier)
        service.startService()
        self.systemd.messages()
        reactor.shut_down()  # what twistd's reactor does first on SIGTERM
        self.assertEqual(self.systemd.messages(), [{"STOPPING": "1", "STATUS": "stopping"}])
        service.stopService()  # much later, after the drain: said once is enough
        self.assertEqual(self.systemd.messages(), [])
        self.assertEqual(reactor.triggers, [])

    def test_stopping_says_how_long_the_stop_may_take(self) -> None:
        """
        Found by review: a limits.shutdown_seconds longer than the unit's
        TimeoutStopSec was cut off by systemd's SIGKILL, the calls in flight and
        the trail's shutdown checkpoint unrecorded.
        """
        reactor = ShuttingDownClock()
        service = Readiness(reactor, listeners=self.listeners, reachable=self.reachable,
                            notifier=self.notifier, stop_seconds=90.5)
        service.startService()
        self.systemd.messages()
        reactor.shut_down()
        self.assertEqual(self.systemd.messages(), [
            {"STOPPING": "1", "STATUS": "stopping", "EXTEND_TIMEOUT_USEC": "90500000"}])
        service.stopService()

    def test_a_remark_follows_the_ready_status_while_it_holds(self) -> None:
        """Found by review: a rejected reload left STATUS saying all was well."""
        service = self.readiness()
        self.answers = [True]
        service.remark("the config on disk is not in force: x")  # before ready: kept
        service.startService()
        self.systemd.messages()
        self.bind_all()
        ready = self.systemd.messages()[-1]
        self.assertTrue(ready["STATUS"].startswith("ready: rpc "))
        self.assertTrue(ready["STATUS"].endswith("; the config on disk is not in force: x"))
        service.remark(None)
        self.assertNotIn(";", self.systemd.messages()[-1]["STATUS"])
        service.stopService()
        self.systemd.messages()
        service.remark("late")  # stopping: nothing more is said
        self.assertEqual(self.systemd.messages(), [])

    def test_stopping_before_ready_stops_asking(self) -> None:
        service = self.readiness()
        self.answers = [False]
        service.startService()
        self.bind_all()
        service.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.systemd.messages()[-1], {"STOPPING": "1", "STATUS": "stopping"})
        self.assertEqual(self.probes, 1)

    def test_a_listener_already_bound_counts(self) -> None:
        self.answers = [True]
        self.bind_all()
        service = self.readiness()
        service.startService()
        self.assertTrue(service.ready)

    def test_watchdog_pings_while_the_reactor_turns(self) -> None:
        self.answers = [True]
        service = self.readiness(watchdog_seconds=5)
        service.startService()
        self.clock.advance(5)
        self.clock.advance(5)
        pings = [m for m in self.systemd.messages() if m.get("WATCHDOG") == "1"]
        self.assertEqual(len(pings), 3)
        service.stopService()
        self.clock.advance(20)
        self.assertEqual([m for m in self.systemd.messages() if "WATCHDOG" in m], [])

    def test_an_abstract_socket_address(self) -> None:
        systemd = Systemd(f"@airflowrpc-test-{os.getpid()}")
        self.addCleanup(systemd.close)
        notifier = SystemdNotifier(systemd.path)
        self.addCleanup(notifier.close)
        self.assertTrue(notifier.send(READY="1"))
        self.assertEqual(systemd.messages(), [{"READY": "1"}])

    def test_nobody_listening_is_a_warning_not_a_failure(self) -> None:
        notifier = SystemdNotifier(str(Path(tempfile.mkdtemp()) / "nobody"))
        self.addCleanup(notifier.close)
        self.assertFalse(notifier.send(READY="1"))


class EnvironmentTests(SynchronousTestCase):
    def test_no_socket_no_notifier(self) -> None:
        self.assertIsNone(SystemdNotifier.from_environment({}))
        notifier = SystemdNotifier.from_environment({"NOTIFY_SOCKET": "/run/x"})
        assert notifier is not None
        self.addCleanup(notifier.close)
        self.assertEqual(notifier.address, "/run/x")

    def test_watchdog_interval_is_half_the_period_for_this_process(self) -> None:
        self.assertIsNone(watchdog_interval({}))
        self.assertEqual(watchdog_interval({"WATCHDOG_USEC": "30000000"}), 15.0)
        self.assertEqual(watchdog_interval(
            {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}), 15.0)
        self.assertIsNone(watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}))
        self.assertIsNone(watchdog_interval({"WATCHDOG_USEC": "0"}))


class BrokenSocketTests(SynchronousTestCase):
    def test_a_socket_that_is_not_there_is_said_once_not_at_every_ping(self) -> None:
        """Found by review: a warning at every watchdog ping, for good."""
        from twisted.logger import globalLogPublisher

        from txairflowrpc.service.notify import SystemdNotifier

        seen: list[str] = []

        def observer(event: dict[str, Any]) -> None:
            text = event.get("log_format") or ""
            if "systemd notification" in text:
                seen.append(text)

        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        notifier = SystemdNotifier(tempfile.mktemp(prefix="no-such-socket-"))
        self.addCleanup(notifier.close)
        results = [notifier.send(WATCHDOG="1") for _ in range(5)]
        self.assertEqual(results, [False] * 5)
        self.assertEqual(len(seen), 1)
