from __future__ import annotations

import queue
import threading
from typing import Any, Callable

import pytest
from twisted.python.failure import Failure

from txairflowrpc.audit.thread import AuditThread, WriterStopped


class FromThreads:
    """callFromThread into a queue, run by the test on its own thread: the reactor's part."""

    def __init__(self) -> None:
        self.calls: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...]]] = (
            queue.SimpleQueue())

    def callFromThread(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.calls.put((f, args))

    def run(self, n: int) -> None:
        for _ in range(n):
            f, args = self.calls.get(timeout=10)
            f(*args)


def results(d: Any) -> list[Any]:
    got: list[Any] = []
    d.addBoth(got.append)
    return got


def test_work_runs_in_order_on_one_thread_and_each_result_comes_back_on_the_reactor() -> None:
    reactor = FromThreads()
    thread = AuditThread(reactor)
    ran: list[tuple[int, int]] = []
    thread.start()
    outcomes = [results(thread(lambda i=i: ran.append((i, threading.get_ident())) or i * 10))
                for i in range(5)]
    thread.stop()
    assert [i for i, _ in ran] == [0, 1, 2, 3, 4]
    idents = {ident for _, ident in ran}
    assert len(idents) == 1 and threading.get_ident() not in idents
    assert outcomes == [[], [], [], [], []]  # nothing fires off the reactor
    reactor.run(5)
    assert outcomes == [[0], [10], [20], [30], [40]]


def test_a_failure_reaches_the_deferred_as_itself() -> None:
    reactor = FromThreads()
    thread = AuditThread(reactor)
    thread.start()

    def disk_full() -> None:
        raise OSError(28, "No space left on device")

    got = results(thread(disk_full))
    after = results(thread(lambda: "still running"))
    thread.stop()
    reactor.run(2)
    assert isinstance(got[0], Failure) and got[0].check(OSError)
    assert got[0].value.strerror == "No space left on device"
    assert after == ["still running"]


def test_work_given_before_start_runs_once_started() -> None:
    reactor = FromThreads()
    thread = AuditThread(reactor)
    got = results(thread(lambda: "early"))
    thread.start()
    thread.stop()
    reactor.run(1)
    assert got == ["early"]


def test_stop_waits_for_what_was_given_and_later_work_fails() -> None:
    reactor = FromThreads()
    thread = AuditThread(reactor)
    release = threading.Event()
    finished: list[str] = []
    thread.start()
    slow = results(thread(lambda: release.wait(10) and finished.append("slow") or "slow"))
    queued = results(thread(lambda: finished.append("queued") or "queued"))
    threading.Timer(0.05, release.set).start()
    thread.stop()
    assert finished == ["slow", "queued"]  # stop returned only once both had run
    reactor.run(2)
    assert slow == ["slow"] and queued == ["queued"]
    late = results(thread(lambda: pytest.fail("ran after stop")))
    assert isinstance(late[0], Failure) and late[0].check(WriterStopped)
    thread.stop()  # a second stop is harmless
