"""The service log's formats for ``twistd --logger``: journal lines and JSON Lines."""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path
from typing import Any

from twisted.logger import Logger, LogLevel
from twisted.trial.unittest import SynchronousTestCase

from txairflowrpc.service.logs import (
    WORKER_ENVIRONMENT,
    fatal,
    is_chatter,
    journal_observer,
    json_observer,
)
from txairflowrpc.service.tap import Options


def emit(observer: object, namespace: str = "txairflowrpc.test") -> Logger:
    return Logger(namespace=namespace, observer=observer)  # type: ignore[arg-type]


class JSONTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.out = io.StringIO()
        self.log = emit(json_observer(self.out))

    def records(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.out.getvalue().splitlines()]

    def test_one_object_per_line_with_the_fields_shippers_read(self) -> None:
        self.log.warn("config reload ({trigger}) rejected: {error}", trigger="SIGHUP",
                      error="rpc.x: unknown key\nsecond line", count=3, obj=object())
        (record,) = self.records()
        self.assertEqual(record["level"], "warn")
        self.assertEqual(record["namespace"], "txairflowrpc.test")
        self.assertEqual(record["message"],
                         "config reload (SIGHUP) rejected: rpc.x: unknown key\nsecond line")
        self.assertEqual((record["trigger"], record["count"]), ("SIGHUP", 3))
        self.assertNotIn("obj", record)
        self.assertRegex(str(record["time"]), r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
        self.assertEqual(len(self.out.getvalue().splitlines()), 1)

    def test_a_failure_carries_its_traceback(self) -> None:
        try:
            1 / 0
        except ZeroDivisionError:
            self.log.failure("request {id} failed", id="abc")
        (record,) = self.records()
        self.assertEqual((record["level"], record["message"], record["id"]),
                         ("critical", "request abc failed", "abc"))
        self.assertIn("ZeroDivisionError", str(record["traceback"]))

    def test_chatter_about_connections_is_left_out(self) -> None:
        factory = emit(json_observer(self.out), "twisted.web.client._HTTP11ClientFactory")
        factory.info("Starting factory {factory!r}", factory=object())
        factory.info("Stopping factory {factory!r}", factory=object())
        emit(json_observer(self.out), "twisted.web.http").info("Timing out client: {peer}",
                                                               peer="x")
        self.assertEqual(self.out.getvalue(), "")
        factory.error("Starting factory failed")  # not chatter: an error
        self.assertEqual(len(self.records()), 1)


class JournalTests(SynchronousTestCase):
    def test_priority_prefix_on_every_line(self) -> None:
        out = io.StringIO()
        log = emit(journal_observer(out), "txairflowrpc.upstream.breaker")
        log.info("Airflow answers again: circuit closed")
        log.warn("Airflow failed {n} times in a row: circuit open", n=5)
        try:
            raise ValueError("boom")
        except ValueError:
            log.failure("probe failed")
        lines = out.getvalue().splitlines()
        self.assertEqual(lines[:3], [
            "<6>[txairflowrpc.upstream.breaker] Airflow answers again: circuit closed",
            "<4>[txairflowrpc.upstream.breaker] Airflow failed 5 times in a row: circuit open",
            "<2>[txairflowrpc.upstream.breaker] probe failed",
        ])
        self.assertTrue(all(line.startswith("<2>[") for line in lines[3:]))
        self.assertIn("ValueError: boom", lines[-1])

    def test_legacy_events(self) -> None:
        out = io.StringIO()
        observer = journal_observer(out)
        self.assertFalse(is_chatter({"log_level": LogLevel.warn, "log_format": "Timing out client"}))
        event = {"log_level": LogLevel.info, "log_namespace": "log_legacy",
                 "log_format": "{log_text}", "log_text": "Site starting on 8081",
                 "log_time": 0.0, "isError": 0}
        observer(event)
        self.assertEqual(out.getvalue(), "<6>[log_legacy] Site starting on 8081\n")


class WorkerTests(SynchronousTestCase):
    """A worker's lines name it; the supervisor's and a lone gateway's do not."""

    def as_worker(self, value: str | None) -> None:
        before = os.environ.get(WORKER_ENVIRONMENT)
        if value is None:
            os.environ.pop(WORKER_ENVIRONMENT, None)
        else:
            os.environ[WORKER_ENVIRONMENT] = value

        def restore() -> None:
            if before is None:
                os.environ.pop(WORKER_ENVIRONMENT, None)
            else:
                os.environ[WORKER_ENVIRONMENT] = before

        self.addCleanup(restore)

    def lines(self, factory: Any) -> list[str]:
        out = io.StringIO()
        emit(factory(out), "txairflowrpc.service.reload").info("config reloaded")
        return out.getvalue().splitlines()

    def test_worker_k_is_named_in_both_formats(self) -> None:
        self.as_worker("1")
        self.assertEqual(self.lines(journal_observer),
                         ["<6>[w1][txairflowrpc.service.reload] config reloaded"])
        (record,) = map(json.loads, self.lines(json_observer))
        self.assertEqual((record["worker"], record["message"]), (1, "config reloaded"))

    def test_no_worker_no_name(self) -> None:
        for value in (None, "", "x1"):
            self.as_worker(value)
            self.assertEqual(self.lines(journal_observer),
                             ["<6>[txairflowrpc.service.reload] config reloaded"])
            (record,) = map(json.loads, self.lines(json_observer))
            self.assertNotIn("worker", record)


class FatalLineTests(SynchronousTestCase):
    """
    Found by review: the one line a start-up failure prints (a config error, a port
    taken) comes before twistd's log begins, and journald stored it at priority info,
    so ``journalctl -p warning`` did not show why the gateway would not start.
    """

    def setUp(self) -> None:
        self.stderr = open(self.mktemp(), "w+")  # noqa: SIM115 -- closed by its cleanup
        self.addCleanup(self.stderr.close)
        st = os.fstat(self.stderr.fileno())
        self.journal = f"{st.st_dev}:{st.st_ino}"

    def environment(self, journal_stream: str | None) -> None:
        environ = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
        if journal_stream is not None:
            environ["JOURNAL_STREAM"] = journal_stream
        self.patch(os, "environ", environ)

    def test_a_bad_config_is_an_error_line_in_the_journal(self) -> None:
        config = Path(self.mktemp() + ".toml")
        config.write_text("[listen]\nport = 8443\nbogus = 1\n")
        self.environment(self.journal)
        self.patch(sys, "stderr", self.stderr)
        with self.assertRaises(SystemExit) as caught:
            Options().parseOptions(["--config", str(config)])
        self.assertEqual(caught.exception.code,
                         f"<3>airflowrpc: {config}: listen.bogus: unknown key")

    def test_the_units_config_check_says_a_rejected_reload_as_an_error(self) -> None:
        """
        Found by review: ``ExecReload=``'s ``airflowrpc config check`` printed its
        line without a priority: ``journalctl -p warning`` did not say why a reload
        was refused.
        """
        from txairflowrpc.service.cli import main

        config = Path(self.mktemp() + ".toml")
        config.write_text("[listen]\nport = 8443\nbogus = 1\n")
        self.environment(self.journal)
        self.patch(sys, "stderr", self.stderr)
        self.assertEqual(main(["config", "check", str(config)]), 1)
        self.stderr.seek(0)
        self.assertEqual(self.stderr.read(),
                         f"<3>airflowrpc: {config}: listen.bogus: unknown key\n")

    def test_no_prefix_unless_the_stream_is_the_journals(self) -> None:
        self.environment(None)  # a terminal, a container's log
        self.assertEqual(fatal("airflowrpc: x", self.stderr).code, "airflowrpc: x")
        self.environment("1:2")  # inherited from a service, with a stream of its own
        self.assertEqual(fatal("airflowrpc: x", self.stderr).code, "airflowrpc: x")
        self.environment(self.journal)
        self.assertEqual(fatal("airflowrpc: x", self.stderr).code, "<3>airflowrpc: x")
        self.assertEqual(fatal("airflowrpc: x", io.StringIO()).code, "airflowrpc: x")
