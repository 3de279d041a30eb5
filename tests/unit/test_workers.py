"""
``listen.workers``: the key, each worker's share of the config, and the
supervisor's restarts, reloads and stop on a `Clock` with fake processes.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any, Iterator

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.main import CONNECTION_DONE
from twisted.internet.protocol import Factory, ProcessProtocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure

from txairflowrpc.config import ConfigError, load
from txairflowrpc.service import supervisor as supervisor_module
from txairflowrpc.service.lifecycle import bind_problem
from txairflowrpc.service.supervisor import (
    SharedPort,
    Supervisor,
    WorkerProtocol,
    bind_shared,
    ending,
    worker_argv,
)
from txairflowrpc.service.workers import (
    AdoptedEndpoint,
    PipeNotifier,
    _Lifeline,
    divided,
    for_worker,
    worker_audit_path,
)

from .test_config import GOOD, confdir, pki, write  # noqa: F401

# -- the key and each worker's share ----------------------------------------

def test_workers_defaults_to_one_process(confdir: Path) -> None:  # noqa: F811
    assert load(write(confdir, GOOD)).listen.workers == 1


@pytest.mark.parametrize("value", [0, 65, -1])
def test_workers_out_of_range_names_the_key(confdir: Path, value: int) -> None:  # noqa: F811
    text = GOOD.replace("port = 8443", f"port = 8443\nworkers = {value}")
    with pytest.raises(ConfigError) as e:
        load(write(confdir, text))
    assert str(e.value) == "listen.workers: must be from 1 to 64"


SHARED = GOOD.replace("port = 8443", "port = 8443\nworkers = 3") + """
instance = "gw-a"
[limits]
rate_per_second = 20
burst = 40
max_in_flight = 1
max_connections = 1000
max_connections_per_source = 100
[health]
port = 9100
"""


def test_each_worker_gets_its_share_of_the_limits(confdir: Path) -> None:  # noqa: F811
    cfg = load(write(confdir, SHARED))
    w = for_worker(cfg, 2)
    assert w.limits.rate_per_second == pytest.approx(20 / 3)
    assert (w.limits.burst, w.limits.max_in_flight) == (14, 1)  # rounded up, at least 1
    assert (w.limits.max_connections, w.limits.max_connections_per_source) == (334, 34)
    assert w.limits.max_body_memory_bytes == divided(64 * 1024 * 1024, 3)
    assert w.limits.connection_rate_per_source == pytest.approx(50 / 3)
    assert w.limits.connection_burst_per_source == 67
    assert (w.airflow.max_connections, w.airflow.max_in_flight) == (7, 22)
    # what is not divided stays as it is
    assert w.limits.call_deadline_seconds == cfg.limits.call_deadline_seconds
    assert w.listen == cfg.listen and w.access == cfg.access


def test_each_worker_has_its_own_chain_and_admin_port(confdir: Path) -> None:  # noqa: F811
    cfg = load(write(confdir, SHARED))
    chains = [for_worker(cfg, k).audit for k in range(3)]
    assert [a.path.name for a in chains] == ["audit.w0.jsonl", "audit.w1.jsonl",
                                              "audit.w2.jsonl"]
    assert {a.path.parent for a in chains} == {cfg.audit.path.parent}
    assert [a.instance for a in chains] == ["gw-a-w0", "gw-a-w1", "gw-a-w2"]
    # one digest key for all, so one value has one digest whichever worker saw it
    assert {a.digest_key_file for a in chains} == {cfg.audit.digest_key_file}
    # the supervisor's admin listener on health.port, the workers' after it
    assert [for_worker(cfg, k).health.port for k in range(3)] == [9101, 9102, 9103]
    off = load(write(confdir, SHARED.replace("port = 9100", "port = 0")))
    assert for_worker(off, 1).health.port == 0


def test_worker_audit_path_keeps_the_suffix() -> None:
    assert worker_audit_path(Path("/v/audit.jsonl"), 3) == Path("/v/audit.w3.jsonl")
    assert worker_audit_path(Path("/v/trail"), 0) == Path("/v/trail.w0")


# -- the supervisor ----------------------------------------------------------

class FakeProcess:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.signals: list[str] = []
        self.gone = False

    def signalProcess(self, name: str) -> None:
        if self.gone:
            raise ProcessExitedAlready()
        self.signals.append(name)


class Spawner:
    def __init__(self) -> None:
        self.started: list[tuple[int, FakeProcess, ProcessProtocol]] = []

    def __call__(self, index: int, protocol: ProcessProtocol) -> FakeProcess:
        process = FakeProcess(1000 + len(self.started))
        self.started.append((index, process, protocol))
        return process

    def live(self, index: int) -> tuple[FakeProcess, ProcessProtocol]:
        _, process, protocol = [s for s in self.started if s[0] == index][-1]
        return process, protocol

    def end(self, index: int, reason: Exception) -> None:
        process, protocol = self.live(index)
        process.gone = True
        protocol.processEnded(Failure(reason))

    def ready(self, index: int) -> None:
        self.live(index)[1].childDataReceived(4, b"STATUS=x\nREADY=1\n")


class Notes:
    def __init__(self) -> None:
        self.sent: list[dict[str, str]] = []

    def send(self, **fields: str) -> bool:
        self.sent.append(fields)
        return True


@pytest.fixture
def logged() -> Iterator[list[str]]:
    from twisted.logger import formatEvent
    lines: list[str] = []

    def observe(event: dict) -> None:
        if event.get("log_namespace") == supervisor_module.__name__:
            lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


def supervise(count: int = 2, check: Any = None,
              record: Any = None) -> tuple[Supervisor, Spawner, Clock, Notes, list]:
    clock, spawn, notes, stopped = Clock(), Spawner(), Notes(), []
    sup = Supervisor(clock, count=count, spawn=spawn,
                     check=check or (lambda: succeed(SimpleCfg(count))), stop_seconds=10,
                     notifier=notes, where="127.0.0.1:8443",
                     on_stopped=lambda: stopped.append(True), record=record)
    sup.startService()
    return sup, spawn, clock, notes, stopped


class SimpleCfg:
    def __init__(self, workers: int) -> None:
        self.listen = type("L", (), {"workers": workers})()


def test_ready_goes_to_systemd_once_every_worker_is_ready() -> None:
    sup, spawn, clock, notes, _ = supervise(3)
    assert [s[0] for s in spawn.started] == [0, 1, 2]
    spawn.ready(0)
    spawn.ready(2)
    assert not sup.ready and not any("READY" in n for n in notes.sent)
    spawn.ready(1)
    assert sup.ready
    assert [n for n in notes.sent if "READY" in n] == [
        {"READY": "1", "STATUS": "ready: 3 workers, 127.0.0.1:8443"}]


def test_a_worker_that_cannot_start_gives_its_share_of_connections_to_the_others(
        logged: list[str]) -> None:
    """
    Found by review: with a config on disk its replacements refuse, worker 1
    was started again every 30 s while its socket kept listening: half the
    new connections waited in a backlog no one read.  After a replacement
    dies before it is ready, the socket is closed (the kernel then gives
    every new connection to the open ones) and bound again for each try.
    """
    port = SharedPort("127.0.0.1", 0, 2)
    number = port.sockets[0].getsockname()[1]
    clock, spawn = Clock(), Spawner()
    sup = Supervisor(clock, count=2, check=lambda: succeed(SimpleCfg(2)), stop_seconds=10,
                     spawn=lambda i, p: (port.fileno(i), spawn(i, p))[1],  # as spawner does
                     port=port)
    sup.startService()
    try:
        spawn.ready(0)
        spawn.ready(1)
        spawn.end(1, ProcessTerminated(signal=9))  # a ready worker died: it keeps its socket
        assert port.sockets[1] is not None
        clock.advance(1)
        spawn.end(1, ProcessDone(1))  # its replacement could not start
        assert port.sockets[1] is None
        assert "worker 1 cannot start: its socket is closed until a new one does, and new " \
               "connections go to the other workers" in logged
        clients = [socket.create_connection(("127.0.0.1", number), 5) for _ in range(20)]
        accepted = []
        port.sockets[0].settimeout(5)
        for _ in clients:
            accepted.append(port.sockets[0].accept()[0])  # every one reached the open socket
        for s in clients + accepted:
            s.close()
        clock.advance(2)  # the next try binds it again
        assert port.sockets[1] is not None and port.sockets[1].getsockname()[1] == number
        spawn.ready(1)
        assert sup.workers[1].deaths == 0
    finally:
        port.close_all()


def test_a_dead_worker_is_logged_and_replaced_after_a_back_off(logged: list[str]) -> None:
    sup, spawn, clock, notes, _ = supervise(2)
    spawn.ready(0)
    spawn.ready(1)
    spawn.end(1, ProcessTerminated(signal=9))
    assert "worker 1 (pid 1001) exited unexpectedly: killed by signal 9; starting a new " \
           "one in 1 s" in logged
    assert len(spawn.started) == 2
    clock.advance(0.9)
    assert len(spawn.started) == 2
    clock.advance(0.1)
    assert [s[0] for s in spawn.started] == [0, 1, 1] and sup.restarts == 1
    # dying again before it was ready: the wait doubles, up to the cap
    spawn.end(1, ProcessTerminated(exitCode=1))
    assert logged[-1].endswith("exit status 1; starting a new one in 2 s")
    clock.advance(2)
    for _ in range(10):
        spawn.end(1, ProcessTerminated(exitCode=1))
        clock.advance(supervisor_module.RESTART_MAX_SECONDS)
    assert logged[-2].endswith(f"in {supervisor_module.RESTART_MAX_SECONDS:g} s")
    assert notes.sent[-1] == {"STATUS": "worker 1 exited (exit status 1); restarting"}
    # once a replacement reports ready, the next death waits the shortest again
    spawn.ready(1)
    assert notes.sent[-1] == {"STATUS": "ready: 2 workers, 127.0.0.1:8443"}
    spawn.end(1, ProcessDone(0))
    assert logged[-1].endswith("exit status 0; starting a new one in 1 s")
    # the other worker was never touched
    assert spawn.live(0)[0].signals == []


def test_a_worker_that_ran_and_ended_unexpectedly_is_on_the_supervisors_chain() -> None:
    """
    Found by review: a killed worker's chain just stopped (service.start,
    no service.stop) and nothing said its calls under way ended unrecorded.
    """
    records: list[dict[str, Any]] = []
    sup, spawn, clock, _, _ = supervise(2, record=records.append)
    spawn.ready(1)
    spawn.end(1, ProcessTerminated(signal=9))
    assert records == [{"event": "worker.exited", "worker": 1, "pid": 1001,
                        "how": "killed by signal 9",
                        "note": "calls it had under way have no outcome on its chain"}]
    clock.advance(1)
    spawn.end(1, ProcessTerminated(exitCode=1))  # a replacement that never ran: no calls
    sup.stopService()
    spawn.ready(0)
    spawn.end(0, ProcessDone(0))  # stopping: its own service.stop says so
    assert len(records) == 1


def test_a_worker_that_cannot_be_spawned_is_tried_again(logged: list[str]) -> None:
    sup, spawn, clock, _, _ = supervise(2)
    spawn.ready(0)
    spawn.ready(1)
    real = sup._spawn
    sup._spawn = lambda index, protocol: (_ for _ in ()).throw(OSError(24, "Too many files"))
    spawn.end(0, ProcessTerminated(signal=9))
    clock.advance(1)
    assert logged[-1] == ("worker 0 could not be started: [Errno 24] Too many files; trying "
                          "again in 2 s")
    sup._spawn = real
    clock.advance(2)
    assert [s[0] for s in spawn.started] == [0, 1, 0]


def test_sighup_is_passed_on_only_for_a_good_config(logged: list[str]) -> None:
    results: list[Any] = [ConfigError("limits.burst", "must be at least 1")]
    sup, spawn, clock, notes, _ = supervise(
        2, check=lambda: fail(results.pop()) if results else succeed(SimpleCfg(2)))
    sup.reload("SIGHUP").addCallback(logged.append)
    assert [spawn.live(k)[0].signals for k in (0, 1)] == [[], []]
    assert "config reload (SIGHUP) rejected, the workers keep theirs: limits.burst: must " \
           "be at least 1" in logged
    spawn.live(0)[1].childDataReceived(4, b"STATUS=waiting for the listeners\n")
    sup.reload("SIGHUP")  # worker 1 has not said a word yet: it is still starting
    assert [spawn.live(k)[0].signals for k in (0, 1)] == [["HUP"], []]
    spawn.ready(1)
    sup.reload("SIGHUP")
    assert [spawn.live(k)[0].signals for k in (0, 1)] == [["HUP", "HUP"], ["HUP"]]


def test_a_worker_whose_reactor_stops_turning_is_killed_and_replaced(
        logged: list[str]) -> None:
    """
    Found by review: a worker stopped with SIGSTOP stayed "running" and "ready"
    for good while the supervisor told systemd all was well; half of the new
    connections waited in its backlog.
    """
    recorded: list[dict[str, Any]] = []
    sup, spawn, clock, notes, _ = supervise(2, record=recorded.append)
    ping = supervisor_module.PING_SECONDS
    for k in (0, 1):
        spawn.ready(k)
    # worker 1 never pings (an older worker, or still starting): never taken as hung
    for _ in range(int(supervisor_module.HUNG_SECONDS / ping) * 3):
        spawn.live(0)[1].childDataReceived(4, b"WATCHDOG=1\n")
        clock.advance(ping)
    assert [spawn.live(k)[0].signals for k in (0, 1)] == [[], []]
    spawn.live(1)[1].childDataReceived(4, b"WATCHDOG=1\n")
    for _ in range(int(supervisor_module.HUNG_SECONDS / ping)):
        spawn.live(0)[1].childDataReceived(4, b"WATCHDOG=1\n")
        clock.advance(ping)
    assert [spawn.live(k)[0].signals for k in (0, 1)] == [[], []]  # 30 s: not yet past
    spawn.live(0)[1].childDataReceived(4, b"WATCHDOG=1\n")
    clock.advance(ping)
    assert [spawn.live(k)[0].signals for k in (0, 1)] == [[], ["KILL"]]
    assert "worker 1 (pid 1001) has not reported for 30 s: its reactor does not turn; " \
           "killing it, a new one replaces it" in logged
    clock.advance(ping * 3)
    assert spawn.live(1)[0].signals == ["KILL"]  # once
    spawn.end(1, ProcessTerminated(signal=9))
    assert recorded[-1]["hung"] is True and recorded[-1]["how"] == "killed by signal 9"
    clock.advance(supervisor_module.RESTART_SECONDS)
    assert [s[0] for s in spawn.started] == [0, 1, 1]
    # the replacement starts afresh: silent until it pings, and then watched again
    clock.advance(supervisor_module.HUNG_SECONDS * 2)
    assert spawn.live(1)[0].signals == []


def test_a_clock_stepped_forward_makes_no_worker_look_hung() -> None:
    """
    Found by review: silence was measured by the wall clock; a clock stepped
    forward 60 s (NTP, a VM resumed) had every healthy worker killed at once.
    """
    sup, spawn, clock, notes, _ = supervise(2)
    for k in (0, 1):
        spawn.ready(k)
        spawn.live(k)[1].childDataReceived(4, b"WATCHDOG=1\n")
    clock.advance(supervisor_module.PING_SECONDS)
    clock.advance(supervisor_module.HUNG_SECONDS * 2)  # the step: one late check, not twelve
    assert [spawn.live(k)[0].signals for k in (0, 1)] == [[], []]


def test_no_worker_is_taken_for_hung_while_they_drain() -> None:
    sup, spawn, clock, notes, _ = supervise(2)
    for k in (0, 1):
        spawn.live(k)[1].childDataReceived(4, b"WATCHDOG=1\n")
    clock.advance(supervisor_module.HUNG_SECONDS - 5)
    sup.stopService()  # its own deadline, 10 + STOP_MARGIN_SECONDS from now, still far
    clock.advance(10)
    assert [spawn.live(k)[0].signals for k in (0, 1)] == [["TERM"], ["TERM"]]


def test_a_worker_that_does_not_stop_cleanly_is_an_error_and_on_the_chain(
        logged: list[str]) -> None:
    recorded: list[dict[str, Any]] = []
    sup, spawn, clock, notes, stopped = supervise(2, record=recorded.append)
    for k in (0, 1):
        spawn.ready(k)
    sup.stopService()
    spawn.end(0, ProcessDone(0))
    assert logged[-1] == "worker 0 (pid 1000) stopped: exit status 0" and not recorded
    spawn.end(1, ProcessTerminated(signal=1))  # a SIGHUP killed it as it drained
    assert logged[-1] == ("worker 1 (pid 1001) stopped: killed by signal 1; calls it had "
                          "under way may have no outcome on its chain")
    assert (recorded[-1]["event"], recorded[-1]["worker"], recorded[-1]["stopping"]) == (
        "worker.exited", 1, True)
    assert stopped == [True]


def test_a_reload_checked_while_the_workers_stop_is_not_passed_on(logged: list[str]) -> None:
    """Found by review: a SIGHUP checked as SIGTERM came was sent to draining workers."""
    checked: list[Deferred[Any]] = []

    def check() -> Deferred[Any]:
        checked.append(Deferred())
        return checked[-1]

    sup, spawn, clock, notes, _ = supervise(2, check=check)
    for k in (0, 1):
        spawn.ready(k)
    result = sup.reload("SIGHUP")
    sup.stopService()
    checked[0].callback(SimpleCfg(2))
    assert [spawn.live(k)[0].signals for k in (0, 1)] == [["TERM"], ["TERM"]]
    assert result.result is False
    assert "config reload (SIGHUP): not passed on, the workers are stopping" in logged


def test_sigterm_waits_for_every_worker_then_stops_cleanly() -> None:
    sup, spawn, clock, notes, stopped = supervise(2)
    d = sup.stopService()
    assert [spawn.live(k)[0].signals for k in (0, 1)] == [["TERM"], ["TERM"]]
    # Found by review: a drain longer than TimeoutStopSec was cut off by systemd's SIGKILL.
    assert {"STOPPING": "1", "STATUS": "stopping: workers drain their calls",
            "EXTEND_TIMEOUT_USEC": str(int((10 + supervisor_module.STOP_MARGIN_SECONDS
                                            + supervisor_module.EXIT_MARGIN_SECONDS) * 1e6))
            } in notes.sent
    spawn.end(0, ProcessDone(0))
    assert not d.called and not stopped
    spawn.end(1, ProcessDone(0))
    assert d.called and stopped == [True]
    clock.advance(3600)
    assert len(spawn.started) == 2  # nothing restarted


def test_at_sigterm_the_port_is_closed_at_once_and_new_connections_refused() -> None:
    """
    Found by review: the supervisor held its copies of the listening sockets
    until every worker had drained, so a connection that came meanwhile
    waited in a backlog no worker read, then was reset.
    """
    port = SharedPort("127.0.0.1", 0, 2)
    number = port.sockets[0].getsockname()[1]
    clock, spawn = Clock(), Spawner()
    sup = Supervisor(clock, count=2, check=lambda: succeed(SimpleCfg(2)), stop_seconds=10,
                     spawn=lambda i, p: (port.fileno(i), spawn(i, p))[1], port=port)
    sup.startService()
    try:
        spawn.ready(0)
        spawn.ready(1)
        d = sup.stopService()
        assert not d.called  # the workers drain
        assert port.sockets == [None, None]
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", number), 5)
        spawn.end(0, ProcessDone(0))
        spawn.end(1, ProcessDone(0))
        assert d.called
    finally:
        port.close_all()


def test_a_pending_restart_is_cancelled_and_a_stuck_worker_killed() -> None:
    sup, spawn, clock, notes, stopped = supervise(2)
    spawn.end(0, ProcessTerminated(signal=9))  # waiting to be replaced
    d = sup.stopService()
    clock.advance(10 + supervisor_module.STOP_MARGIN_SECONDS)
    assert spawn.live(1)[0].signals == ["TERM", "KILL"]
    spawn.end(1, ProcessTerminated(signal=9))
    assert d.called and len(spawn.started) == 2


def test_worker_reports_are_read_by_line_across_reads() -> None:
    seen: list[tuple[int, str]] = []
    sup = type("S", (), {"reported": lambda self, i, line: seen.append((i, line))})()
    protocol = WorkerProtocol(sup, 1)  # type: ignore[arg-type]
    protocol.childDataReceived(4, b"REA")
    protocol.childDataReceived(1, b"READY=1\n")  # not the report pipe
    protocol.childDataReceived(4, b"DY=1\nSTATUS=a b\n")
    assert seen == [(1, "READY=1"), (1, "STATUS=a b")]


def test_a_daemonized_supervisor_logs_its_workers_output_line_by_line(
    logged: list[str],
) -> None:
    """Found by review: daemonized, the workers' output went to /dev/null, and their log with it."""
    ended: list[int] = []
    sup = type("S", (), {"ended": lambda self, i, reason: ended.append(i)})()
    protocol = WorkerProtocol(sup, 1)  # type: ignore[arg-type]
    protocol.childDataReceived(1, b"2026-11-29 [txairflowrpc#info] Site (TLS) sta")
    protocol.childDataReceived(1, b"rting\n\n")
    protocol.childDataReceived(2, b"airflowrpc: cannot listen\r\nno newline at the end")
    protocol.childDataReceived(1, b"x" * (supervisor_module.MAX_OUTPUT_LINE + 10))
    assert logged == ["worker 1: 2026-11-29 [txairflowrpc#info] Site (TLS) starting",
                      "worker 1: airflowrpc: cannot listen",
                      "worker 1: " + "x" * supervisor_module.MAX_OUTPUT_LINE + " [cut off]"]
    protocol.processEnded(Failure(ProcessDone(0)))
    assert logged[-1] == "worker 1: no newline at the end" and ended == [1]


def test_a_relayed_line_keeps_the_level_it_says_it_has() -> None:
    """
    Found by review: a daemonized supervisor logged every line of a worker's
    standard output as info, its errors included (``--syslog``'s err filters missed them).
    """
    from twisted.logger import LogLevel

    levels: list[tuple[Any, str]] = []

    def observe(event: dict) -> None:
        if event.get("log_namespace") == supervisor_module.__name__:
            levels.append((event["log_level"], event["line"][:12]))

    globalLogPublisher.addObserver(observe)
    try:
        protocol = WorkerProtocol(type("S", (), {})(), 0)  # type: ignore[arg-type]
        protocol.childDataReceived(1, b"2026-11-29T15:55:29+0000 [txairflowrpc.x#error] bad\n"
                                      b"<4>[w0][txairflowrpc.x] warned\n"
                                      b'{"level": "critical", "message": "m"}\n'
                                      b"plain out\n")
        protocol.childDataReceived(2, b"plain err\n")
    finally:
        globalLogPublisher.removeObserver(observe)
    assert [level for level, _ in levels] == [
        LogLevel.error, LogLevel.warn, LogLevel.critical, LogLevel.info, LogLevel.error]


@pytest.mark.parametrize("nowhere", [True, False])
def test_workers_output_is_read_only_when_the_supervisors_goes_nowhere(
    monkeypatch, nowhere: bool,
) -> None:
    monkeypatch.setattr(supervisor_module, "goes_nowhere", lambda fd: nowhere)
    reactor = MemoryReactor()
    given: list[dict[int, object]] = []
    reactor.spawnProcess = (  # type: ignore[method-assign]
        lambda *a, childFDs, **kw: given.append(childFDs))
    sockets = SharedPort("127.0.0.1", 0, 1)
    try:
        supervisor_module.spawner(reactor, "/etc/a.toml", sockets, None)(0, ProcessProtocol())
    finally:
        sockets.close_all()
    assert (given[0][1], given[0][2]) == (("r", "r") if nowhere else (1, 2))


def test_dev_null_goes_nowhere_and_a_pipe_does_not() -> None:
    read, write = os.pipe()
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        assert supervisor_module.goes_nowhere(null) and not supervisor_module.goes_nowhere(write)
    finally:
        for fd in (read, write, null):
            os.close(fd)
    assert supervisor_module.goes_nowhere(null)  # closed


def test_ending_in_words() -> None:
    assert ending(Failure(ProcessDone(0))) == "exit status 0"
    assert ending(Failure(ProcessTerminated(exitCode=3))) == "exit status 3"
    assert ending(Failure(ProcessTerminated(signal=9))) == "killed by signal 9"


def test_worker_argv_runs_twistd_on_this_python_with_the_logger() -> None:
    argv = worker_argv("/etc/a.toml", 1, "txairflowrpc.service.logs.journal_observer")
    assert argv[0] == os.sys.executable
    assert argv[-7:] == ["--logger", "txairflowrpc.service.logs.journal_observer",
                         "airflowrpc", "--config", "/etc/a.toml", "--worker", "1"]
    assert "--logger" not in worker_argv("/etc/a.toml", 0, None)


def test_each_worker_is_spawned_with_its_index_in_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")  # the supervisor's, not theirs
    reactor = MemoryReactor()
    spawned: list[dict[str, str]] = []
    reactor.spawnProcess = lambda *a, env, **kw: spawned.append(env)  # type: ignore[method-assign]
    sockets = SharedPort("127.0.0.1", 0, 2)
    try:
        spawn = supervisor_module.spawner(reactor, "/etc/a.toml", sockets, None)
        spawn(0, ProcessProtocol())
        spawn(1, ProcessProtocol())
    finally:
        sockets.close_all()
    assert [env["AIRFLOWRPC_WORKER"] for env in spawned] == ["0", "1"]
    assert all("NOTIFY_SOCKET" not in env for env in spawned)


def test_each_worker_gets_its_supervisors_key_and_no_other(monkeypatch) -> None:
    monkeypatch.setenv("AIRFLOWRPC_SUPERVISOR_KEY", "from-outside")  # never passed on
    reactor = MemoryReactor()
    spawned: list[dict[str, str]] = []
    reactor.spawnProcess = lambda *a, env, **kw: spawned.append(env)  # type: ignore[method-assign]
    sockets = SharedPort("127.0.0.1", 0, 1)
    try:
        supervisor_module.spawner(reactor, "/etc/a.toml", sockets, None, key="k3y")(
            0, ProcessProtocol())
        supervisor_module.spawner(reactor, "/etc/a.toml", sockets, None)(0, ProcessProtocol())
    finally:
        sockets.close_all()
    assert spawned[0]["AIRFLOWRPC_SUPERVISOR_KEY"] == "k3y"
    assert "AIRFLOWRPC_SUPERVISOR_KEY" not in spawned[1]


# -- the shared port and the worker's pipes -----------------------------------

def test_shared_sockets_hold_the_port_and_a_taken_port_fails() -> None:
    sockets = bind_shared("127.0.0.1", 0, 1)
    port = sockets[0].getsockname()[1]
    sockets[0].close()
    sockets = bind_shared("127.0.0.1", port, 3)
    try:
        assert {s.getsockname()[1] for s in sockets} == {port}
        # a plain bind (a second gateway, bind_problem) still finds the port taken
        assert bind_problem("127.0.0.1", port) == "address already in use"
    finally:
        for s in sockets:
            s.close()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError):
            bind_shared("127.0.0.1", taken.getsockname()[1], 2)


def test_a_worker_adopts_the_socket_and_closes_its_descriptor() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        fd = os.dup(s.fileno())
        reactor = MemoryReactor()
        factory = Factory()
        AdoptedEndpoint(reactor, fd).listen(factory)
        assert reactor.adoptedPorts == [(fd, socket.AF_INET, factory)]
        with pytest.raises(OSError):
            os.fstat(fd)


def test_reports_go_down_the_pipe_one_line_per_field() -> None:
    r, w = os.pipe()
    try:
        assert PipeNotifier(w).send(READY="1", STATUS="ready:\nlistening")
        assert os.read(r, 100) == b"READY=1\nSTATUS=ready: listening\n"
    finally:
        os.close(r)
        os.close(w)


def test_the_lifeline_ends_when_the_supervisor_does() -> None:
    r, w = os.pipe()
    gone: list[bool] = []
    line = _Lifeline(MemoryReactor(), r, lambda: gone.append(True))
    assert line.doRead() is None  # nothing yet: still alive
    os.close(w)
    assert line.doRead() is CONNECTION_DONE
    line.connectionLost(Failure(CONNECTION_DONE))
    assert gone == [True]
    os.close(r)


# -- twistd's options and a worker's reload ----------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _options(confdir: Path, *extra: str, health: int | None = None) -> Any:
    from txairflowrpc.service.tap import Options
    text = SHARED.replace("port = 8443", f"port = {_free_port()}").replace(
        "port = 9100", f"port = {health if health is not None else 0}")
    options = Options()
    options.parseOptions(["--config", str(write(confdir, text)), *extra])
    return options


def test_a_worker_runs_on_its_share_and_only_of_the_count(confdir: Path) -> None:  # noqa: F811
    options = _options(confdir, "--worker", "1")
    assert options["worker"] == 1
    assert options["checked"].config.audit.instance == "gw-a-w1"
    assert options["checked"].config.limits.burst == 14
    with pytest.raises(SystemExit) as e:
        _options(confdir, "--worker", "3")
    assert str(e.value.code) == "airflowrpc: --worker 3: not a worker of listen.workers = 3"


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_the_supervisor_checks_every_workers_admin_port(confdir: Path) -> None:  # noqa: F811
    for _ in range(20):  # a port whose two below are free (the machine is shared)
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            if not (_free(port - 2) and _free(port - 1)):
                continue
            with pytest.raises(SystemExit) as e:
                _options(confdir, health=port - 2)
            break
    assert str(e.value.code) == (f"airflowrpc: cannot listen on 127.0.0.1:{port} "
                                 "(admin listener): address already in use")


def test_a_workers_reload_keeps_it_on_its_share(confdir: Path) -> None:  # noqa: F811
    from txairflowrpc.gate.tls import ReloadableTLS, server_options
    from txairflowrpc.identity.authenticate import Gate
    from txairflowrpc.service.checked import build_authenticator, load_checked
    from txairflowrpc.service.reload import Reloader
    from txairflowrpc.service.tap import worker_checked

    path = write(confdir, SHARED)
    checked = worker_checked(load_checked(path), 1)
    clock = Clock()
    reloader = Reloader(
        checked.config, gate=Gate(build_authenticator(checked, http=None, clock=clock)),
        tls=ReloadableTLS(server_options(checked.config.tls)), http=None, clock=clock,
        audit=None, derive=lambda c: worker_checked(c, 1))
    write(confdir, SHARED.replace("rate_per_second = 20", "rate_per_second = 30"))
    assert reloader.reload("SIGHUP").result is True
    assert reloader.cfg.limits.rate_per_second == pytest.approx(10)
    assert reloader.cfg.audit.instance == "gw-a-w1"


def test_every_listener_brings_its_own_tls_also_behind_the_proxy_header(
        confdir: Path) -> None:  # noqa: F811
    from txairflowrpc.gate.proxied import ProxiedFactory
    from txairflowrpc.gate.site import SiteTLSFactory
    from txairflowrpc.gate.tls import ReloadableTLS, server_options
    from txairflowrpc.service.tap import rpc_factory

    cfg = load(write(confdir, GOOD))
    tls, site, clock = ReloadableTLS(server_options(cfg.tls)), Factory(), Clock()
    # A bound or an adopted socket alike: TLS that a refused connection never reaches.
    factory = rpc_factory(clock, cfg, tls, site)
    assert isinstance(factory, SiteTLSFactory) and factory.wrappedFactory is site
    proxied = load(write(confdir, GOOD.replace("port = 8443",
                                               "port = 8443\nproxy_protocol = true")))
    behind = rpc_factory(clock, proxied, tls, site)
    assert isinstance(behind, ProxiedFactory) and isinstance(behind.inner, SiteTLSFactory)


def _started_with(monkeypatch: pytest.MonkeyPatch, fingerprint: dict[str, str]) -> None:
    """The supervisor's fingerprint on a pipe, as its spawner gives it to a worker."""
    from txairflowrpc.service import workers as workers_module

    read, write_end = os.pipe()
    os.write(write_end, json.dumps(fingerprint).encode())
    os.close(write_end)
    monkeypatch.setattr(workers_module, "STARTED_WITH_FD", read)
    monkeypatch.setenv(workers_module.STARTED_WITH_ENVIRONMENT, str(read))


def test_a_replacement_refuses_a_config_changed_where_only_a_restart_applies(
        confdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """
    Found by review: a worker started after such a change ran on it beside
    the others (its admin port moved, its chain took a new instance; by the
    code, another Airflow or account too).
    """
    import attrs

    from txairflowrpc.service.reload import restart_fingerprint
    from txairflowrpc.service.tap import Options

    path = write(confdir, SHARED.replace("port = 8443", f"port = {_free_port()}").replace(
        "port = 9100", "port = 0"))
    cfg = load(path)
    started = attrs.evolve(cfg, audit=attrs.evolve(cfg.audit, instance="gw-old"),
                           limits=attrs.evolve(cfg.limits, shutdown_seconds=99.0))
    _started_with(monkeypatch, restart_fingerprint(started))
    with pytest.raises(SystemExit) as e:
        Options().parseOptions(["--config", str(path), "--worker", "1"])
    assert str(e.value.code) == (
        "airflowrpc: worker 1: the config on disk changes audit.instance, "
        "limits.shutdown_seconds since the gateway started, which apply only when the whole "
        "gateway restarts: restart it (the workers running keep theirs)")
    # What a reload applies may differ: the worker starts on the file's.
    started = attrs.evolve(cfg, limits=attrs.evolve(cfg.limits, burst=1))
    _started_with(monkeypatch, restart_fingerprint(started))
    options = Options()
    options.parseOptions(["--config", str(path), "--worker", "1"])
    assert options["checked"].config.limits.burst == 14


def test_a_fingerprint_holds_no_value_and_is_read_only_where_the_supervisor_says(
        confdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    from txairflowrpc.service import workers as workers_module
    from txairflowrpc.service.reload import restart_fingerprint

    cfg = load(write(confdir, SHARED))
    fingerprint = restart_fingerprint(cfg)
    assert "airflow.password_file (its content)" in fingerprint
    assert cfg.airflow.password not in json.dumps(fingerprint)
    read, write_end = os.pipe()
    try:
        monkeypatch.setattr(workers_module, "STARTED_WITH_FD", read)
        monkeypatch.delenv(workers_module.STARTED_WITH_ENVIRONMENT, raising=False)
        assert workers_module.started_with() is None  # not said: nothing read, nothing closed
        os.fstat(read)
    finally:
        os.close(read)
        os.close(write_end)


def test_each_worker_is_given_the_fingerprint_on_its_own_pipe(monkeypatch) -> None:
    from txairflowrpc.service.workers import STARTED_WITH_ENVIRONMENT, STARTED_WITH_FD

    monkeypatch.setenv(STARTED_WITH_ENVIRONMENT, "9")  # never the supervisor's own to pass on
    reactor = MemoryReactor()
    seen: list[Any] = []

    class Transport:
        def writeToChild(self, fd: int, data: bytes) -> None:
            seen.append(("write", fd, json.loads(data)))

        def closeChildFD(self, fd: int) -> None:
            seen.append(("close", fd))

    def spawn_process(*a: Any, env: dict[str, str], childFDs: dict[int, Any],
                      **kw: Any) -> Transport:
        seen.append((env[STARTED_WITH_ENVIRONMENT], childFDs[STARTED_WITH_FD]))
        return Transport()

    reactor.spawnProcess = spawn_process  # type: ignore[method-assign]
    sockets = SharedPort("127.0.0.1", 0, 1)
    try:
        supervisor_module.spawner(reactor, "/etc/a.toml", sockets, None, (),
                                  {"audit.instance": "ab12"})(0, ProcessProtocol())
    finally:
        sockets.close_all()
    assert seen == [(str(STARTED_WITH_FD), "w"),
                    ("write", STARTED_WITH_FD, {"audit.instance": "ab12"}),
                    ("close", STARTED_WITH_FD)]


def test_a_relative_config_path_gives_the_workers_the_supervisors_fingerprint(
        confdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """
    Found by review: the supervisor loaded ``conf/airflowrpc.toml`` and its
    workers the absolute path, so every path in the config differed and
    every worker refused its first start.
    """
    from txairflowrpc.service.reload import restart_fingerprint
    from txairflowrpc.service.tap import Options

    path = write(confdir, SHARED.replace("port = 8443", f"port = {_free_port()}").replace(
        "port = 9100", "port = 0"))
    monkeypatch.chdir(path.parent.parent)
    relative = Path(path.parent.name) / path.name
    supervisors = load(relative)
    assert not supervisors.airflow.password_file.is_absolute()
    _started_with(monkeypatch, restart_fingerprint(supervisors))
    options = Options()
    options.parseOptions(["--config", str(relative.absolute()), "--worker", "0"])
    assert options["worker"] == 0


def test_a_fingerprint_that_cannot_be_read_stops_the_worker(
        confdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    from txairflowrpc.service.tap import Options

    path = write(confdir, SHARED.replace("port = 8443", f"port = {_free_port()}").replace(
        "port = 9100", "port = 0"))
    _started_with(monkeypatch, {})
    with pytest.raises(SystemExit) as e:
        Options().parseOptions(["--config", str(path), "--worker", "0"])
    assert str(e.value.code) == ("airflowrpc: worker 0: what the gateway started with holds "
                                 "no fingerprint; a worker is started by the supervisor")


def test_a_worker_waits_for_its_chain_while_a_predecessor_drains(tmp_path: Path) -> None:
    """
    Found by review: after the supervisor was killed, its workers drained on;
    a new gateway's workers found their chains held, exited at once, twice,
    and had their sockets closed: the port refused connections for seconds.
    """
    from types import SimpleNamespace

    from txairflowrpc.audit.owner import claim
    from txairflowrpc.service.tap import CLAIM_POLL_SECONDS, claim_chain

    path = tmp_path / "audit.w0.jsonl"
    held = claim(path, "gw-w0")  # the predecessor, draining
    cfg = SimpleNamespace(path=path, instance="gw-w0")
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds
        if now[0] >= 3:
            held.release()  # it ended

    got = claim_chain(cfg, 30, sleep=sleep, clock=lambda: now[0])  # type: ignore[arg-type]
    assert 3 <= now[0] < 3 + 2 * CLAIM_POLL_SECONDS
    # One that never ends: the wait has an end, and the line says who holds it.
    again = claim(tmp_path / "audit.w1.jsonl", "gw-w1")
    now[0] = 0.0
    with pytest.raises(SystemExit) as e:
        claim_chain(SimpleNamespace(path=tmp_path / "audit.w1.jsonl", instance="gw-w1"),  # type: ignore[arg-type]
                    5, sleep=lambda s: now.__setitem__(0, now[0] + s), clock=lambda: now[0])
    assert "written by another running gateway" in str(e.value.code)
    assert now[0] >= 5
    got.release()
    again.release()


@pytest.mark.parametrize("extra", ["", "\nworkers = 2"])
def test_an_admin_port_that_is_the_rpc_port_is_a_config_error(
        confdir: Path, extra: str) -> None:  # noqa: F811
    """
    Found by review: config check said OK; twistd failed to bind one of the
    two (as a daemon it hung, a stale pidfile left).
    """
    text = GOOD.replace("port = 8443", "port = 8443" + extra) + "[health]\nport = 8443\n"
    with pytest.raises(ConfigError, match=r"health.port is listen.port \(8443\): each needs"):
        load(write(confdir, text))
    text = GOOD.replace("port = 8443", "port = 8443\nworkers = 2") + "[health]\nport = 8441\n"
    with pytest.raises(ConfigError, match="a worker's admin port"):
        load(write(confdir, text))  # worker 1 listens on 8441 + 1 + 1


def test_a_digest_key_that_cannot_be_made_is_a_value_error(tmp_path: Path) -> None:
    """Found by review: a 37-line traceback at start (a read-only /etc under the unit)."""
    from txairflowrpc.audit.summary import load_digest_key

    gone = tmp_path / "gone"
    gone.symlink_to(tmp_path / "nowhere")  # a directory that is a dangling link: no mkdir
    with pytest.raises(ValueError, match="cannot create"):
        load_digest_key(gone / "digest.key")
