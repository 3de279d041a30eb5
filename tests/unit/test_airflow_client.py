"""The Airflow client against an in-memory Airflow (treq.testing.RequestTraversalAgent)."""

from __future__ import annotations

from random import Random
from typing import Any

from OpenSSL import SSL
from treq.testing import RequestTraversalAgent
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionLost, ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseNeverReceived

from txairflowrpc.core import errors
from txairflowrpc.upstream.breaker import CircuitBreaker
from txairflowrpc.upstream.client import AirflowClient

from ..fakes import FakeAirflow


def client_for(http: Any, clock: Clock, timeout: float = 10.0, retries: int = 0,
               breaker: CircuitBreaker | None = None) -> AirflowClient:
    return AirflowClient(
        agent=http, clock=clock, base_url="http://airflow.test", username="gateway",
        password="pw", timeout=timeout, retries=retries, breaker=breaker, max_in_flight=4,
        random=Random(7),
    )


class LoginTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.airflow = FakeAirflow(token_lifetime=3600)
        self.client = client_for(RequestTraversalAgent(self.airflow), self.clock)

    def test_token_is_cached_across_calls(self) -> None:
        for _ in range(5):
            self.successResultOf(self.client.get_dag("example_hello"))
        self.assertEqual(self.airflow.logins(), 1)

    def test_token_is_renewed_before_it_expires(self) -> None:
        self.successResultOf(self.client.get_dag("example_hello"))
        self.clock.advance(3600 - 30)  # inside the last minute of its life
        self.successResultOf(self.client.get_dag("example_hello"))
        self.assertEqual(self.airflow.logins(), 2)

    def test_401_gets_one_new_token_and_retries(self) -> None:
        self.successResultOf(self.client.get_dag("example_hello"))
        self.airflow.valid_tokens.clear()  # e.g. Airflow restarted with a new secret
        dag = self.successResultOf(self.client.get_dag("example_hello"))
        self.assertEqual(dag["dag_id"], "example_hello")
        self.assertEqual(self.airflow.logins(), 2)
        # first call, the refused one, and its single retry
        self.assertEqual(
            self.airflow.api_requests().count(("GET", "/api/v2/dags/example_hello")), 3)

    def test_persistent_401_is_an_upstream_error_not_a_loop(self) -> None:
        self.successResultOf(self.client.get_dag("example_hello"))
        self.airflow.fail_next[("GET", "/api/v2/dags")] = (401, {"detail": "Not authenticated"})
        self.airflow.valid_tokens.clear()
        self.airflow.password = "changed"
        f = self.failureResultOf(self.client.get_dag("example_hello"), errors.UpstreamError)
        self.assertIn("rejected the gateway's own credentials", f.value.message)
        self.assertNotIn("pw", f.value.message)
        self.assertEqual(self.airflow.logins(), 2)

    def test_concurrent_calls_share_one_login(self) -> None:
        pending: list[Deferred[Any]] = []

        class SlowLogin:
            """Holds the login answer until released, like a real network."""

            def __init__(self, real: RequestTraversalAgent) -> None:
                self.real = real

            def request(self, method: bytes, url: bytes, headers: Any = None, body: Any = None) -> Deferred[Any]:
                d = self.real.request(method, url, headers, body)
                if url.endswith(b"/auth/token"):
                    gate: Deferred[Any] = Deferred()
                    pending.append(gate)
                    return gate.addCallback(lambda _: d).addCallback(lambda r: r)
                return d

        client = client_for(SlowLogin(RequestTraversalAgent(self.airflow)), self.clock)
        calls = [client.get_dag("example_hello") for _ in range(3)]
        self.assertEqual(len(pending), 1)
        pending[0].callback(None)
        for d in calls:
            self.assertEqual(self.successResultOf(d)["dag_id"], "example_hello")
        self.assertEqual(self.airflow.logins(), 1)


class ErrorMappingTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.airflow = FakeAirflow()
        self.client = client_for(RequestTraversalAgent(self.airflow), self.clock)

    def test_404_names_the_object(self) -> None:
        f = self.failureResultOf(self.client.get_dag("nope"), errors.NotFound)
        self.assertEqual(f.value.message, "not found: DAG 'nope'")
        self.assertEqual(f.value.code, 404)

    def test_409_with_object_detail_is_a_conflict(self) -> None:
        kw = dict(dag_run_id="r1", conf={}, logical_date=None, note=None)
        self.successResultOf(self.client.trigger_dag_run("example_hello", **kw))
        f = self.failureResultOf(self.client.trigger_dag_run("example_hello", **kw), errors.Conflict)
        self.assertNotIn("INSERT", f.value.message)
        self.assertNotIn("UNIQUE", f.value.message)

    def test_422_names_fields_not_messages(self) -> None:
        self.airflow.fail_next[("POST", "/api/v2/dags/example_hello/dagRuns")] = (
            422, {"detail": [{"type": "x", "loc": ["body", "logical_date"],
                              "msg": "secret internals", "input": "x"}]})
        f = self.failureResultOf(
            self.client.trigger_dag_run("example_hello", dag_run_id=None, conf={},
                                        logical_date=None, note=None),
            errors.InvalidParams)
        self.assertIn("logical_date", f.value.message)
        self.assertNotIn("secret internals", f.value.message)

    def test_5xx_is_an_upstream_error_without_airflow_text(self) -> None:
        self.airflow.fail_next[("GET", "/api/v2/dags/example_hello")] = (
            500, {"detail": "Traceback: sqlalchemy.exc.OperationalError password=hunter2"})
        f = self.failureResultOf(self.client.get_dag("example_hello"), errors.UpstreamError)
        self.assertEqual(f.value.code, 502)
        self.assertEqual(f.value.message, "Airflow error: Airflow answered HTTP 500")

    def test_503_is_upstream_unavailable(self) -> None:
        self.airflow.fail_next[("GET", "/api/v2/dags/example_hello")] = (503, b"busy")
        f = self.failureResultOf(self.client.get_dag("example_hello"), errors.UpstreamUnavailable)
        self.assertEqual(f.value.code, 503)

    def test_garbage_body_is_an_upstream_error(self) -> None:
        self.airflow.fail_next[("GET", "/api/v2/dags/example_hello")] = (200, b"<html>oops")
        f = self.failureResultOf(self.client.get_dag("example_hello"), errors.UpstreamError)
        self.assertIn("not JSON", f.value.message)

    def test_unexpected_document_is_an_upstream_error(self) -> None:
        self.airflow.fail_next[("GET", "/api/v2/dags")] = (200, {"something": "else"})
        self.failureResultOf(
            self.client.list_dags(pattern=None, tags=[], paused=None, limit=10, offset=0),
            errors.UpstreamError)

    def test_refused_connection_is_upstream_unavailable(self) -> None:
        class Refusing:
            def request(self, *a: Any, **kw: Any) -> Deferred[Any]:
                return fail(ConnectionRefusedError())

        client = client_for(Refusing(), self.clock)
        f = self.failureResultOf(client.get_dag("example_hello"), errors.UpstreamUnavailable)
        self.assertEqual(f.value.code, 503)

    def test_a_failed_tls_handshake_says_so_and_is_logged_once_a_minute(self) -> None:
        said = [("SSL routines", "", "certificate verify failed")]

        class Untrusted:
            def request(self, *a: Any, **kw: Any) -> Deferred[Any]:
                return fail(ResponseNeverReceived([Failure(SSL.Error(said))]))

        logged: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        client = client_for(Untrusted(), self.clock)
        for _ in range(3):
            f = self.failureResultOf(client.get_dag("example_hello"), errors.UpstreamUnavailable)
            self.assertEqual(f.value.code, 503)
            self.assertIn("TLS with Airflow failed", f.value.message)
        tls = [formatEvent(e) for e in logged if "TLS with Airflow" in formatEvent(e)]
        self.assertEqual(len(tls), 1)
        self.assertIn("certificate verify failed", tls[0])
        self.assertIn("http://airflow.test", tls[0])
        self.clock.advance(60)
        self.failureResultOf(client.get_dag("example_hello"), errors.UpstreamUnavailable)
        self.assertEqual(sum("TLS with Airflow" in formatEvent(e) for e in logged), 2)

    def test_tls_failures_are_logged_each_reason_once_a_minute_and_few_in_all(self) -> None:
        from txairflowrpc.upstream.client import TLS_LOG_LINES, TLSFailures

        logged: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        failures = TLSFailures(self.clock, "https://airflow.test", ca_file=None)
        for n in range(3 * TLS_LOG_LINES):  # a server that varies its alerts
            failures.failed(f"alert {n % (2 * TLS_LOG_LINES)}")
        said = [formatEvent(e) for e in logged if "TLS with Airflow" in formatEvent(e)]
        self.assertEqual(len(said), TLS_LOG_LINES)
        self.assertIn("the system's CAs", said[0])
        self.clock.advance(60)
        failures.failed("alert 0")
        self.assertEqual(sum("TLS with Airflow" in formatEvent(e) for e in logged),
                         TLS_LOG_LINES + 1)

    def test_a_broken_connection_is_not_called_tls(self) -> None:
        class Broken:
            def request(self, *a: Any, **kw: Any) -> Deferred[Any]:
                return fail(ResponseNeverReceived([Failure(ConnectionLost())]))

        client = client_for(Broken(), self.clock)
        f = self.failureResultOf(client.get_dag("example_hello"), errors.UpstreamUnavailable)
        self.assertIn("connection to Airflow broke", f.value.message)

    def silent_client(self, timeout: float = 10) -> tuple[AirflowClient, list[str]]:
        """
        A client whose logins work but whose API calls never get an answer;
        the list says which of those requests were cancelled.
        """
        sent: list[str] = []
        login = RequestTraversalAgent(self.airflow)

        class Silent:
            def request(self, method: bytes, url: bytes, headers: Any = None, body: Any = None) -> Deferred[Any]:
                if url.endswith(b"/auth/token"):
                    return login.request(method, url, headers, body)
                sent.append("pending")
                index = len(sent) - 1
                return Deferred(lambda _: sent.__setitem__(index, "cancelled"))

        return client_for(Silent(), self.clock, timeout=timeout), sent

    def test_silent_airflow_times_out_and_the_request_is_cancelled(self) -> None:
        client, sent = self.silent_client(timeout=7)
        d = client.get_dag("example_hello")
        self.assertNoResult(d)
        self.clock.advance(6.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        f = self.failureResultOf(d, errors.UpstreamTimeout)
        self.assertEqual(f.value.code, 504)
        self.assertEqual(sent, ["cancelled"])  # not left pending

    def test_cancelling_a_call_abandons_the_request(self) -> None:
        client, sent = self.silent_client()
        d = client.get_dag("example_hello")
        self.assertEqual(len(sent), 1)
        d.cancel()
        self.failureResultOf(d)
        self.assertEqual(sent, ["cancelled"])
        self.assertEqual(self.clock.getDelayedCalls(), [])


class ShapeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.airflow = FakeAirflow()
        self.client = client_for(RequestTraversalAgent(self.airflow), Clock())

    def test_dag_keeps_only_public_fields_and_flattens_tags(self) -> None:
        dag = self.successResultOf(self.client.get_dag("etl_orders"))
        self.assertEqual(dag["tags"], ["etl"])
        self.assertNotIn("fileloc", dag)
        self.assertNotIn("file_token", dag)
        self.assertNotIn("description", dag)  # None in Airflow: omitted, never nil

    def test_a_partitioned_dags_run_keeps_its_partition(self) -> None:
        """Airflow 3.2+: a partition key and date, and no logical date (null: omitted)."""
        self.airflow.runs[("example_hello", "backfill__p1")] = {
            "dag_id": "example_hello", "dag_run_id": "backfill__p1", "state": "success",
            "logical_date": None, "partition_key": "2026-05-01T00:00:00",
            "partition_date": "2026-05-01T00:00:00Z", "run_after": "2026-05-01T00:00:00Z"}
        run = self.successResultOf(self.client.get_dag_run("example_hello", "backfill__p1"))
        self.assertEqual((run["partition_key"], run["partition_date"]),
                         ("2026-05-01T00:00:00", "2026-05-01T00:00:00Z"))
        self.assertNotIn("logical_date", run)

    def test_ids_are_percent_encoded_in_paths(self) -> None:
        self.airflow.runs[("example_hello", "manual__2026-01-01T00:00:00+00:00")] = {
            "dag_id": "example_hello", "dag_run_id": "manual__2026-01-01T00:00:00+00:00",
            "state": "success"}
        run = self.successResultOf(
            self.client.get_dag_run("example_hello", "manual__2026-01-01T00:00:00+00:00"))
        self.assertEqual(run["state"], "success")

    def test_a_log_keeps_its_last_characters_up_to_the_cap(self) -> None:
        """
        Found by review: each page was capped, not the whole: 50 pages of a
        chatty task's log (up to 800 MiB) were joined and escaped on the
        reactor.  The answer keeps the end of the log, where a failure is.
        """
        import txairflowrpc.upstream.client as client_module

        self.patch(client_module, "MAX_LOG_CHARACTERS", 100)
        self.successResultOf(self.client.trigger_dag_run(
            "example_hello", dag_run_id="r1", conf={}, logical_date=None, note=None))
        pages = [{"content": [{"event": f"page {p} line {n:02}"} for n in range(10)],
                  "continuation_token": f"p{p + 1}" if p < 3 else None} for p in range(4)]
        self.airflow.logs[("example_hello", "r1", "say_hello", 1)] = pages
        text = self.successResultOf(self.client.get_task_log("example_hello", "r1", "say_hello", 1))
        first, *kept = text.splitlines()  # 40 lines of 15 characters: the last 6 fit
        self.assertEqual(first, "[txairflowrpc: the first 510 characters of this log are left "
                                "out: an answer holds at most its last 100]")
        self.assertEqual(kept, [f"page 3 line {n:02}" for n in range(4, 10)])
        self.assertLessEqual(len(text) - len(first) - 1, 100)

    def test_log_entries_become_text_lines_across_pages(self) -> None:
        self.successResultOf(self.client.trigger_dag_run(
            "example_hello", dag_run_id="r1", conf={}, logical_date=None, note=None))
        self.airflow.logs[("example_hello", "r1", "say_hello", 1)] = {
            "content": [{"timestamp": "2026-01-01T00:00:00Z", "level": "info", "event": "hello"},
                        {"event": "::endgroup::"}],
            "continuation_token": None,
        }
        text = self.successResultOf(self.client.get_task_log("example_hello", "r1", "say_hello", 1))
        self.assertEqual(text, "2026-01-01T00:00:00Z [info] hello\n::endgroup::\n")
