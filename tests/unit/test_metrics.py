"""
The metrics in memory: what the hot path observes (calls, Airflow's answers,
authentication failures, audit writes), what is read from the parts at
scrape time, and that the labels stay bounded and the registry private.
"""

from __future__ import annotations

import io
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import attrs
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from treq.testing import RequestTraversalAgent, StubTreq
from twisted.internet.defer import fail, maybeDeferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from txairflowrpc.core.spec import CallContext
from txairflowrpc.gate.dispatch import Dispatcher
from txairflowrpc.identity.authenticate import Unauthenticated
from txairflowrpc.identity.policy import ScopePolicy
from txairflowrpc.identity.principal import Principal
from txairflowrpc.identity.revocation import RevocationList, Revocations
from txairflowrpc.identity.tokens import TokenRecord, TokenStore
from txairflowrpc.service.metrics import GatewayMetrics, PartsCollector, credential_kind
from txairflowrpc.service.tap import Parts, build_site

from ..fakes import FakeAirflow
from .helpers import (
    CONFIG, DIGEST_KEY, OPERATOR, AuthenticatingRoot, Gateway, audit_log,
)
from .test_admin import certificates, served


def metered_gateway(metrics: GatewayMetrics) -> tuple[Gateway, Parts]:
    clock = Clock()
    airflow = FakeAirflow()
    audit = audit_log(tempfile.mkdtemp(), clock)
    parts = build_site(CONFIG, clock, RequestTraversalAgent(airflow), audit, authenticate=lambda r: OPERATOR,
                       digest_key=DIGEST_KEY, metrics=metrics)
    gw = Gateway(clock, airflow, StubTreq(AuthenticatingRoot(parts.site)), audit, parts.site)
    return gw, parts


def sample(metrics: GatewayMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


class CallMetricsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.metrics = GatewayMetrics()
        self.gw, self.parts = metered_gateway(self.metrics)

    def call(self, method: str, *params: Any) -> Any:
        return self.successResultOf(self.gw.call_d(method, *params))[2]

    def calls(self, method: str, outcome: str = "ok", fault_code: str = "") -> float | None:
        return sample(self.metrics, "airflowrpc_calls_total", method=method, outcome=outcome,
                      fault_code=fault_code)

    def test_calls_are_counted_by_method_and_outcome(self) -> None:
        self.assertIsNone(self.calls("ping"))
        self.call("ping")
        self.call("ping")
        self.assertEqual(self.calls("ping"), 2)
        self.assertEqual(self.call("get_dag", "no_such_dag").faultCode, 404)
        self.assertEqual(self.calls("get_dag", "fault", "404"), 1)
        self.assertEqual(self.call("get_dag", "bad/id").faultCode, -32602)
        self.assertEqual(self.calls("get_dag", "fault", "-32602"), 1)
        self.assertEqual(sample(self.metrics, "airflowrpc_call_duration_seconds_count",
                                method="get_dag"), 2)
        self.assertEqual(sample(self.metrics, "airflowrpc_calls_in_flight"), 0)
        self.assertEqual(sample(self.metrics, "airflowrpc_principal_calls_total",
                                principal="ci-bot", outcome="ok", fault_code=""), 2)

    def test_internal_errors_have_a_counter_there_from_the_start(self) -> None:
        """
        Found by review: the alert read calls_total{fault_code="-32603"}, a series
        that appears with its first error, where increase() sees nothing.
        """
        self.assertEqual(sample(self.metrics, "airflowrpc_internal_errors_total"), 0)
        self.metrics.call_started()
        self.metrics.call_finished("get_dag", None, -32603, False, 0.01)
        self.metrics.call_started()
        self.metrics.call_finished("get_dag", None, 404, False, 0.01)
        self.assertEqual(sample(self.metrics, "airflowrpc_internal_errors_total"), 1)
        self.assertEqual(self.calls("get_dag", "fault", "-32603"), 1)

    def test_an_answer_that_cannot_be_written_is_an_internal_error_too(self) -> None:
        """
        Found by review: the resource's last resort (-32603 when an answer could
        not be written, its call counted ok) never reached the alert's counter.
        """
        from txairflowrpc.gate import wire

        def broken(result: Any, extensions: Any = frozenset()) -> bytes:
            raise RuntimeError("a writer bug")

        self.patch(wire, "dump_response", broken)
        self.assertEqual(self.call("ping").faultCode, -32603)
        self.assertEqual(sample(self.metrics, "airflowrpc_internal_errors_total"), 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_a_name_that_is_no_method_is_unknown(self) -> None:
        for name in ("nope", "drop_table", "x" * 300):
            self.assertEqual(self.call(name).faultCode, -32601)
        self.assertEqual(self.calls("unknown", "fault", "-32601"), 3)
        names = {s.labels["method"] for s in _samples(self.metrics, "airflowrpc_calls")}
        self.assertEqual(names, {"unknown"})

    def test_each_call_of_a_multicall_counts(self) -> None:
        self.call("system.multicall", [{"methodName": "ping", "params": []}] * 3)
        self.assertEqual(self.calls("ping"), 3)
        self.assertEqual(self.calls("system.multicall"), 1)

    def test_a_call_in_flight_is_counted_until_its_outcome(self) -> None:
        self.call("get_dag", "etl_orders")  # logged in
        self.gw.airflow.hang.append("/api/v2/dags/etl_orders")
        d = self.gw.call_d("get_dag", "etl_orders")
        self.assertEqual(sample(self.metrics, "airflowrpc_calls_in_flight"), 1)
        for _ in range(40):  # three tries, each past airflow.timeout_seconds (10 s)
            self.gw.advance(1)
        self.assertEqual(self.successResultOf(d)[2].faultCode, 504)
        self.assertEqual(sample(self.metrics, "airflowrpc_calls_in_flight"), 0)
        self.assertEqual(sample(self.metrics, "airflowrpc_upstream_requests_total",
                                http_method="GET", code="timeout"), 3)

    def test_airflow_answers_are_counted_by_status_and_timed(self) -> None:
        self.call("get_dag", "etl_orders")
        self.call("get_dag", "no_such_dag")
        self.gw.airflow.fail_next[("GET", "/api/v2/dags/etl_orders")] = (503, {})
        d = self.gw.call_d("get_dag", "etl_orders")  # a 503, then its retry
        self.gw.advance(1)
        self.assertEqual(self.successResultOf(d)[2]["dag_id"], "etl_orders")
        upstream = {(s.labels["http_method"], s.labels["code"]): s.value
                    for s in _samples(self.metrics, "airflowrpc_upstream_requests")}
        self.assertEqual(upstream, {("POST", "201"): 1, ("GET", "200"): 2, ("GET", "404"): 1,
                                    ("GET", "503"): 1})
        self.assertEqual(sample(self.metrics, "airflowrpc_upstream_request_duration_seconds_count",
                                http_method="GET"), 4)

    def test_the_service_log_gets_no_line_per_call(self) -> None:
        from twisted.logger import globalLogPublisher

        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.call("ping")
        self.call("get_dag", "no_such_dag")
        self.assertEqual([e.get("log_format") for e in events], [])

    def test_the_gateway_site_writes_no_access_log(self) -> None:
        access_log = io.StringIO()
        self.gw.site._logFile = access_log  # where twisted.web's Site writes a line per request
        self.gw.site.log(DummyRequest([b"RPC2"]))
        self.assertEqual(access_log.getvalue(), "")


class PrincipalLabelTests(SynchronousTestCase):
    def test_oidc_callers_fold_into_their_provider(self) -> None:
        metrics = GatewayMetrics()
        dispatcher = Dispatcher([], policy=ScopePolicy(), max_multicall=5, clock=Clock(),
                                meter=metrics)
        for sub in ("alice", "bob", "carol"):
            who = Principal(f"corp/{sub}", "oidc", oidc_issuer="https://idp.example",
                            oidc_sub=sub)
            ctx = CallContext(principal=who, request_id="r", peer="127.0.0.1:1")
            self.successResultOf(dispatcher.call(ctx, "system.listMethods", ()))
        principals = {s.labels["principal"]: s.value
                      for s in _samples(metrics, "airflowrpc_principal_calls")}
        self.assertEqual(principals, {"oidc:corp": 3})
        self.assertEqual(len(metrics._principal_children), 1)
        # A reload renamed the provider, its issuer kept (found by review: its
        # calls went on counting as oidc:corp until a restart).
        renamed = Principal("staff/alice", "oidc", oidc_issuer="https://idp.example",
                            oidc_sub="alice")
        self.successResultOf(dispatcher.call(
            CallContext(principal=renamed, request_id="r", peer="127.0.0.1:1"),
            "system.listMethods", ()))
        principals = {s.labels["principal"]: s.value
                      for s in _samples(metrics, "airflowrpc_principal_calls")}
        self.assertEqual(principals, {"oidc:corp": 3, "oidc:staff": 1})


class RegistryTests(SynchronousTestCase):
    def test_each_gateway_has_its_own_registry(self) -> None:
        one, two = GatewayMetrics(), GatewayMetrics()
        one.call_finished("ping", OPERATOR, None, False, 0.01)
        self.assertEqual(sample(one, "airflowrpc_calls_total", method="ping", outcome="ok",
                                fault_code=""), 1)
        self.assertIsNone(sample(two, "airflowrpc_calls_total", method="ping", outcome="ok",
                                 fault_code=""))
        self.assertIsNone(REGISTRY.get_sample_value(
            "airflowrpc_calls_total", {"method": "ping", "outcome": "ok", "fault_code": ""}))

    def test_the_exposition_parses_and_names_follow_the_conventions(self) -> None:
        metrics = GatewayMetrics()
        metrics.call_finished("ping", OPERATOR, None, False, 0.01)
        metrics.upstream_answered("GET", 200, 0.02)
        families = list(text_string_to_metric_families(generate_latest(metrics.registry).decode()))
        names = {f.name for f in families}
        self.assertTrue({"airflowrpc_calls", "airflowrpc_call_duration_seconds",
                         "airflowrpc_upstream_request_duration_seconds",
                         "airflowrpc_build_info"} <= names, names)
        for family in families:
            self.assertTrue(family.name.startswith(("airflowrpc_", "process_")), family.name)
            if family.type == "counter":
                self.assertFalse(family.name.endswith("_total"), family.name)  # the parser strips it


class AdminRefusalTests(SynchronousTestCase):
    def test_the_admin_listeners_refusals_are_counted_by_kind(self) -> None:
        """Found by review: a lockout of the admin listener showed only as up == 0."""
        from types import SimpleNamespace

        from txairflowrpc.service.metrics import AdminCollector

        metrics = GatewayMetrics()
        site = SimpleNamespace(refused_connections=3, evicted=2, scrapes_refused=0,
                               probes_refused=4)
        metrics.collect_from(AdminCollector(site))
        site.scrapes_refused = 7  # read at the scrape
        self.assertEqual([sample(metrics, "airflowrpc_admin_refusals_total", kind=k)
                          for k in ("connection", "evicted", "scrape", "probe")], [3, 2, 7, 4])


class WrapperTests(SynchronousTestCase):
    def test_authentication_failures_by_the_credential_tried(self) -> None:
        metrics = GatewayMetrics()
        outcomes = iter([Unauthenticated("x")] * 7 + [RuntimeError("bug")])

        def authenticate(request: Any) -> Any:
            return fail(next(outcomes))

        metered = metrics.authenticating(authenticate)
        for header in (None, b"Bearer arpc_abc_def", b"Basic Y2k6dG9rZW4=", b"Bearer eyJa.b.c",
                       b"Bearer hello", b"Digest x", b"AWS-IAM eyJ4Ijox", b"Bearer arpc_x"):
            request = DummyRequest([b"RPC2"])
            if header is not None:
                request.requestHeaders.setRawHeaders(b"authorization", [header])
            self.failureResultOf(metered(request))
        kinds = {s.labels["credential"]: s.value
                 for s in _samples(metrics, "airflowrpc_auth_failures")}
        self.assertEqual(kinds, {"none": 1, "token": 2, "jwt": 1, "malformed": 2, "aws_iam": 1,
                                 "error": 1})
        principal = self.successResultOf(metrics.authenticating(lambda r: OPERATOR)(
            DummyRequest([b"RPC2"])))
        self.assertIs(principal, OPERATOR)

    def test_a_client_certificate_alone_is_the_certificate_kind(self) -> None:
        request = DummyRequest([b"RPC2"])
        request.transport = attrs.make_class("T", {})()
        request.transport.getPeerCertificate = lambda: object()
        self.assertEqual(credential_kind(request), "certificate")

    def test_audit_writes_are_timed_where_they_run(self) -> None:
        metrics = GatewayMetrics()
        run = metrics.timing_audit_writes(lambda f: maybeDeferred(f))
        self.assertEqual(self.successResultOf(run(lambda: 42)), 42)
        self.failureResultOf(run(lambda: 1 / 0), ZeroDivisionError)
        self.assertEqual(sample(metrics, "airflowrpc_audit_write_duration_seconds_count"), 2)


class CollectorTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.metrics = GatewayMetrics()
        self.gw, self.parts = metered_gateway(self.metrics)
        self.dir = Path(tempfile.mkdtemp())
        self.cfg = CONFIG
        self.served = served(certificates(self.dir, 30))
        self.gw.clock.advance(datetime.now(timezone.utc).timestamp())

    def collector(self, **kw: Any) -> PartsCollector:
        parts = self.parts
        watcher = parts.watcher
        collector = PartsCollector(
            config=lambda: self.cfg, clock=self.gw.clock, site=parts.site, limits=parts.limits,
            breaker=parts.breaker, client=parts.client, audit=self.gw.audit,
            refusals=parts.refusals, watcher=watcher,
            coalescing=parts.coalescing(), certificates=lambda: self.served, **kw)
        self.metrics.collect_from(collector)
        return collector

    def value(self, name: str, **labels: str) -> float | None:
        return sample(self.metrics, name, **labels)

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.gw.clock.seconds(), timezone.utc)

    def test_counters_of_the_parts_are_read_at_scrape_time(self) -> None:
        self.collector()
        site = self.parts.site
        self.assertEqual(self.value("airflowrpc_connections_refused_total"), 0)
        site.refused_connections, site.slow_dropped, site.evicted = 3, 2, 1
        self.parts.limits.refused = 7
        self.assertEqual(self.value("airflowrpc_connections_refused_total"), 3)
        self.assertEqual(self.value("airflowrpc_connections_dropped_total", reason="slow"), 2)
        self.assertEqual(self.value("airflowrpc_connections_dropped_total", reason="evicted"), 1)
        self.assertEqual(self.value("airflowrpc_rate_limited_calls_total"), 7)
        self.assertEqual(self.value("airflowrpc_upstream_circuit_state", state="closed"), 1)
        self.parts.breaker.check = lambda: succeed(False)  # Airflow's health endpoint is down
        for _ in range(CONFIG.airflow.breaker_failures):
            self.parts.breaker.failure()
        self.assertEqual(self.value("airflowrpc_upstream_circuit_state", state="open"), 1)
        self.assertEqual(self.value("airflowrpc_upstream_circuit_state", state="closed"), 0)
        self.assertEqual(self.value("airflowrpc_upstream_circuit_opened_total"), 1)

    def test_audit_and_refusals(self) -> None:
        self.collector()
        self.successResultOf(self.gw.call_d("ping"))
        self.assertEqual(self.value("airflowrpc_audit_records_written_total"), 1)
        self.assertEqual(self.value("airflowrpc_audit_failing"), 0)
        self.assertEqual(self.value("airflowrpc_audit_write_age_seconds"), 0)
        self.successResultOf(self.gw.post(b"x", path="/elsewhere"))
        self.parts.refusals.note("10.0.0.1:5", "tls_handshake", {"reason": "r"})
        self.assertEqual(self.value("airflowrpc_refusals_total", kind="request"), 1)
        self.assertEqual(self.value("airflowrpc_refusals_total", kind="tls_handshake"), 1)

    def test_waits_are_coalesced_and_the_ratio_shows(self) -> None:
        self.collector()
        self.gw.airflow.runs[("etl_orders", "r1")] = {
            "dag_id": "etl_orders", "dag_run_id": "r1", "state": "running"}
        waits = [self.gw.call_d("wait_dag_run", "etl_orders", "r1", 30) for _ in range(4)]
        self.assertEqual(self.value("airflowrpc_watched_runs"), 1)
        self.gw.advance(31)
        for d in waits:
            self.assertFalse(self.successResultOf(d)[2]["finished"])
        callers = self.value("airflowrpc_coalescing_callers_total", kind="wait")
        fetches = self.value("airflowrpc_coalescing_fetches_total", kind="wait")
        self.assertEqual(callers, 4)
        assert fetches is not None and callers is not None
        self.assertLess(fetches, callers * 4)  # 16 polls (one per 2 s) for four, not 64
        self.assertEqual(fetches, self.gw.airflow.api_requests().count(
            ("GET", "/api/v2/dags/etl_orders/dagRuns/r1")))

    def test_reads_are_counted_as_asked_and_as_sent(self) -> None:
        self.collector()
        self.gw.airflow.runs[("etl_orders", "r1")] = {
            "dag_id": "etl_orders", "dag_run_id": "r1", "state": "running"}
        self.gw.airflow.hang.append("/api/v2/dags/etl_orders/dagRuns/r1")
        calls = [self.gw.call_d("get_dag_run", "etl_orders", "r1") for _ in range(3)]
        self.assertEqual(self.value("airflowrpc_coalescing_callers_total", kind="read"), 3)
        self.assertEqual(self.value("airflowrpc_coalescing_fetches_total", kind="read"), 1)
        self.assertEqual(self.gw.airflow.api_requests().count(
            ("GET", "/api/v2/dags/etl_orders/dagRuns/r1")), 1)
        for d in calls:  # the callers hang up; their calls end as failures
            d.cancel()
            self.failureResultOf(d)

    def test_token_and_certificate_expiry(self) -> None:
        now = self.now()

        def token(id: str, principal: str, days: float, **kw: Any) -> TokenRecord:
            return TokenRecord(id=id, sha256="0" * 64, principal=principal, roles=None,
                               created=now, expires=now + timedelta(days=days), **kw)

        records = [token("a", "ci-bot", 10), token("b", "ci-bot", 3),
                   token("c", "ci-bot", 1, rotated_to="a"), token("d", "ci-bot", 2, revoked=now),
                   token("e", "ghost", 1), token("f", "auditor", -1)]
        store = TokenStore(Path("tokens.json"), {r.id: r for r in records})
        access = attrs.make_class("A", {"principals": attrs.field()})(
            {"ci-bot": object(), "auditor": object()})
        due = now + timedelta(hours=6)
        lists = Revocations((RevocationList("O=Corp CA", "a1", 3, now, due),
                             RevocationList("O=Old CA", "b2", 0, now, now - timedelta(days=1)),
                             RevocationList("O=Undated CA", "c3", 0, now, None)), frozenset())
        current = attrs.make_class("C", {"jwks": attrs.field(), "tokens": attrs.field(),
                                         "access": attrs.field(), "revocations": attrs.field()})(
            {}, store, access, lists)
        gate = attrs.make_class("G", {"current": attrs.field()})(current)
        self.collector(gate=gate)
        expiry = {s.labels["principal"]: s.value
                  for s in _samples(self.metrics, "airflowrpc_token_expiry_seconds")}
        # An expired token stays, below zero, until it is revoked: found by review, its
        # alert cleared at the moment its client began to fail.
        self.assertEqual(expiry, {"ci-bot": 3 * 86400, "auditor": -86400})
        # The client CAs' lists by their nextUpdate; one that names none is not reported.
        crls = {s.labels["issuer"]: s.value
                for s in _samples(self.metrics, "airflowrpc_client_crl_next_update_seconds")}
        self.assertEqual(crls, {"O=Corp CA": 6 * 3600, "O=Old CA": -86400})
        leaf = self.value("airflowrpc_certificate_expiry_seconds", certificate="tls.certificate")
        assert leaf is not None
        self.assertTrue(29.9 < leaf / 86400 <= 30, leaf)
        # What the listener holds, not the file: a renewal on disk whose reload was
        # rejected leaves the old certificate in force (found by review).
        (self.dir / "server.pem").unlink()
        self.assertEqual(self.value("airflowrpc_certificate_expiry_seconds",
                                    certificate="tls.certificate"), leaf)
        self.gw.clock.advance(31 * 86400)
        leaf = self.value("airflowrpc_certificate_expiry_seconds", certificate="tls.certificate")
        assert leaf is not None
        self.assertTrue(-1.1 < leaf / 86400 < -0.9, leaf)

    def test_a_token_expired_and_not_revoked_is_reported_until_it_is(self) -> None:
        now = self.now()
        expired = TokenRecord(id="a", sha256="0" * 64, principal="ci-bot", roles=None,
                              created=now - timedelta(days=30), expires=now - timedelta(days=2))
        access = attrs.make_class("A", {"principals": attrs.field()})({"ci-bot": object()})
        current = attrs.make_class("C", {"jwks": attrs.field(), "tokens": attrs.field(),
                                         "access": attrs.field(), "revocations": attrs.field()})(
            {}, TokenStore(Path("tokens.json"), {"a": expired}), access, None)
        gate = attrs.make_class("G", {"current": attrs.field()})(current)
        self.collector(gate=gate)
        self.assertEqual(self.value("airflowrpc_token_expiry_seconds", principal="ci-bot"),
                         -2 * 86400)
        current.tokens = TokenStore(Path("tokens.json"),
                                    {"a": attrs.evolve(expired, revoked=now)})
        self.assertIsNone(self.value("airflowrpc_token_expiry_seconds", principal="ci-bot"))


def _samples(metrics: GatewayMetrics, family: str) -> list[Any]:
    for metric in metrics.registry.collect():
        if metric.name == family:
            return [s for s in metric.samples if not s.name.endswith("_created")]
    return []


def _scrape(accept: str | None, accept_encoding: str | None = None) -> tuple[str, dict, bytes]:
    """The worker's /metrics app, called as the WSGI server calls it."""
    from prometheus_client import CollectorRegistry, Counter

    from txairflowrpc.service.metrics import metrics_app

    registry = CollectorRegistry()
    Counter("airflowrpc_probe", "A counter.", registry=registry).inc()
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/metrics", "QUERY_STRING": ""}
    if accept is not None:
        environ["HTTP_ACCEPT"] = accept
    if accept_encoding is not None:
        environ["HTTP_ACCEPT_ENCODING"] = accept_encoding
    said: list[Any] = []
    body = b"".join(metrics_app(registry)(environ, lambda status, headers: said.extend(
        [status, dict(headers)])))
    return said[0], said[1], body


def test_an_accept_prometheus_client_cannot_read_gets_the_text_format() -> None:
    """
    Found by review: 'version=x' raised TypeError in prometheus_client's
    choose_encoder: a 500 and a logged traceback for each such request.
    """
    for odd in ("application/openmetrics-text; version=x", "text/plain; version=zz"):
        status, headers, body = _scrape(odd)
        assert status == "200 OK", odd
        assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        assert b"airflowrpc_probe_total 1.0" in body
    status, headers, body = _scrape("application/openmetrics-text; version=1.0.0")
    assert headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
    assert body.endswith(b"# EOF\n")


def test_gzip_only_where_its_quality_is_above_0() -> None:
    import gzip

    _, headers, body = _scrape(None, "gzip")
    assert headers.get("Content-Encoding") == "gzip" and b"airflowrpc_probe" in gzip.decompress(
        body)
    for refused in ("gzip;q=0", "gzip; q=0.000", "deflate, gzip;q=0"):
        _, headers, body = _scrape(None, refused)
        assert "Content-Encoding" not in headers and b"airflowrpc_probe" in body, refused
