"""The admin listener's probes on their own: liveness, readiness, and a probe that breaks."""

from __future__ import annotations

import json
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import trustme
from cryptography import x509
from treq.testing import StubTreq
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from txairflowrpc.config import TLSConfig
from txairflowrpc.gate.tls import server_options
from txairflowrpc.service.admin import (
    IDLE_SECONDS,
    LINGER_SECONDS,
    MAX_CONNECTIONS,
    MAX_PER_SOURCE,
    PROBE_BURST,
    READY_WAIT_SECONDS,
    REQUEST_SECONDS,
    SCRAPE_BURST,
    SCRAPES_PER_SECOND,
    SETTLE_SECONDS,
    AdminSite,
    HealthResource,
)
from txairflowrpc.service.checked import served_certificates

from .helpers import CONFIG, audit_log


def certificates(directory: Path, days: int) -> TLSConfig:
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost",
                         not_after=datetime.now(timezone.utc) + timedelta(days=days))
    leaf.cert_chain_pems[0].write_to_path(str(directory / "server.pem"))
    leaf.private_key_pem.write_to_path(str(directory / "server.key"))
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    return TLSConfig(certificate=directory / "server.pem", private_key=directory / "server.key",
                     client_ca=directory / "ca.pem")


def served(tls: TLSConfig) -> dict[str, list[x509.Certificate]]:
    """The certificates a listener holds once it has loaded ``tls``'s files."""
    return served_certificates(server_options(tls, "optional"))


def test_the_client_cas_are_found_whether_certificates_are_required_or_optional() -> None:
    """
    Found by the second reader: with them required (the default) the CAs are
    only in the trust root, under a private name, and no test covered it; a
    rename would have dropped the tls.client_ca series without a word.
    """
    tls = certificates(Path(tempfile.mkdtemp()), 30)
    ca = x509.load_pem_x509_certificate(tls.client_ca.read_bytes())
    for mode in ("required", "optional"):
        found = served_certificates(server_options(tls, mode))
        assert found["tls.client_ca"] == [ca], mode
        assert len(found["tls.certificate"]) == 1, mode


class HealthTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(tempfile.mkdtemp())
        self.clock = Clock()
        self.clock.advance(datetime.now(timezone.utc).timestamp())
        self.audit = audit_log(str(self.dir), self.clock)
        self.config = CONFIG
        self.served = served(certificates(self.dir, 400))
        self.airflow: Any = lambda: succeed(True)
        resource = HealthResource(
            config=lambda: self.config, airflow_reachable=lambda: self.airflow(),
            audit=self.audit, counters=lambda: {"open_connections": 3}, clock=self.clock,
            certificates=lambda: self.served,
        )
        self.http = StubTreq(resource)

    def get(self, path: str) -> tuple[int, dict[str, Any]]:
        response = self.successResultOf(self.http.get("http://admin.test" + path))
        return response.code, json.loads(self.successResultOf(response.content()))

    def test_liveness(self) -> None:
        self.assertEqual(self.get("/healthz"), (200, {"alive": True}))

    def test_ready_names_every_check_and_the_counters(self) -> None:
        code, body = self.get("/readyz")
        self.assertEqual(code, 200)
        self.assertTrue(body["ready"])
        self.assertEqual(set(body["checks"]), {"airflow", "audit", "certificates"})
        self.assertEqual(body["counters"], {"open_connections": 3})

    def test_not_ready_when_airflow_is_down_or_the_audit_log_fails(self) -> None:
        self.airflow = lambda: succeed(False)
        code, body = self.get("/readyz")
        self.assertEqual((code, body["checks"]["airflow"]["ok"]), (503, False))
        self.airflow = lambda: succeed(True)
        self.audit.failed = "No space left on device"
        code, body = self.get("/readyz")
        self.assertEqual((code, body["checks"]["audit"]["detail"]), (503, "No space left on device"))

    def test_a_certificate_that_expires_soon_is_named_but_fails_nothing(self) -> None:
        """
        Found by review: a certificate within health.certificate_warning_days failed
        readiness, so every instance sharing it left its load balancer on the same day,
        weeks before it expired.
        """
        self.served = served(certificates(self.dir, 3))
        code, body = self.get("/readyz")
        self.assertEqual((code, body["ready"], body["checks"]["certificates"]["ok"]),
                         (200, True, True))
        self.assertIn("expires in 3.0 days", body["checks"]["certificates"]["detail"][0])

    def test_not_ready_once_the_served_certificate_has_expired(self) -> None:
        self.served = served(certificates(self.dir, 3))
        self.clock.advance(4 * 86400)
        code, body = self.get("/readyz")
        self.assertEqual((code, body["checks"]["certificates"]["ok"]), (503, False))
        self.assertIn("expired 1.0 days ago", body["checks"]["certificates"]["detail"][0])

    def test_an_expired_client_ca_is_named_but_fails_nothing(self) -> None:
        """Token and OIDC callers still get in; the CA bundle's expiry has its alert."""
        ca = served(certificates(self.dir, 3))["tls.certificate"]
        self.served = {**self.served, "tls.client_ca": ca}
        self.clock.advance(4 * 86400)
        code, body = self.get("/readyz")
        self.assertEqual((code, body["checks"]["certificates"]["ok"]), (200, True))
        self.assertIn("tls.client_ca", body["checks"]["certificates"]["detail"][0])

    def test_an_expired_certificate_further_up_the_chain_fails_nothing(self) -> None:
        """
        Found by the second reader: a chain may carry an expired cross-signed
        root on purpose (clients with a current store pass over it); only the
        listener's own certificate failing makes every handshake fail.
        """
        old = served(certificates(self.dir, 3))["tls.certificate"]
        self.served = {**self.served,
                       "tls.certificate": [*self.served["tls.certificate"], *old]}
        self.clock.advance(4 * 86400)
        code, body = self.get("/readyz")
        self.assertEqual((code, body["checks"]["certificates"]["ok"]), (200, True))
        self.assertIn("expired 1.0 days ago", body["checks"]["certificates"]["detail"][0])

    def test_a_probe_that_breaks_is_answered_500_not_left_open(self) -> None:
        self.airflow = lambda: fail(RuntimeError("the probe itself broke"))
        code, body = self.get("/readyz")
        self.assertEqual((code, body["ready"]), (500, False))
        self.assertNotIn("broke", json.dumps(body))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_probes_that_come_together_share_one_request_to_airflow(self) -> None:
        """Each hit asked Airflow anew: a tight probe loop was a loop on Airflow."""
        asked: list[Deferred[bool]] = []
        self.airflow = lambda: asked.append(Deferred()) or asked[-1]
        pending = [self.http.get("http://admin.test/readyz") for _ in range(5)]
        self.assertEqual(len(asked), 1)
        asked[0].callback(True)
        self.http.flush()
        for d in pending:
            self.assertEqual(self.successResultOf(d).code, 200)
        self.http.get("http://admin.test/readyz")
        self.assertEqual(len(asked), 1)  # within a second of its asking: its verdict
        self.clock.advance(1)
        self.http.get("http://admin.test/readyz")
        self.assertEqual(len(asked), 2)  # a second on, a probe asks again

    def test_a_probe_waits_for_a_hung_airflow_a_while_only(self) -> None:
        """
        Found by review: with Airflow hung, each /readyz held its connection for
        airflow.timeout_seconds, and 64 such probes held the admin listener.
        """
        asked: list[Deferred[bool]] = []
        self.airflow = lambda: asked.append(Deferred()) or asked[-1]
        pending = self.http.get("http://admin.test/readyz")
        self.clock.advance(READY_WAIT_SECONDS - 0.1)
        self.assertNoResult(pending)
        self.clock.advance(0.1)
        self.http.flush()
        response = self.successResultOf(pending)
        body = json.loads(self.successResultOf(response.content()))
        self.assertEqual((response.code, body["checks"]["airflow"]), (503, {
            "ok": False, "detail": "no answer from its health endpoint within 2 s"}))
        later = self.http.get("http://admin.test/readyz")  # the one ask goes on meanwhile
        self.assertEqual(len(asked), 1)
        asked[0].callback(True)
        self.http.flush()
        self.assertEqual(self.successResultOf(later).code, 200)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_probe_loop_asks_airflow_at_most_once_a_second(self) -> None:
        """Found by review: 1,400 probes a second, each one a request to Airflow."""
        asked: list[int] = []
        self.airflow = lambda: asked.append(1) or succeed(len(asked) % 2 == 1)
        codes = []
        for _ in range(20):
            codes.append(self.get("/readyz")[0])
            self.clock.advance(0.25)
        self.assertEqual(len(asked), 5)
        self.assertEqual(codes, [200] * 4 + [503] * 4 + [200] * 4 + [503] * 4 + [200] * 4)

    def test_head_is_answered_without_a_body_or_a_log_line(self) -> None:
        """Found by review: each HEAD logged its URI (up to 16 KB) as a warning."""
        from twisted.logger import globalLogPublisher

        seen: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(seen.append)
        try:
            response = self.successResultOf(self.http.head("http://admin.test/healthz?" + "x" * 900))
        finally:
            globalLogPublisher.removeObserver(seen.append)
        self.assertEqual(response.code, 200)
        self.assertEqual(self.successResultOf(response.content()), b"")
        self.assertEqual([e for e in seen if "HEAD" in str(e.get("log_format", ""))], [])

    def test_other_paths_are_404(self) -> None:
        self.assertEqual(self.get("/metricz")[0], 404)


class AdminListenerTests(SynchronousTestCase):
    """
    Found by review: no cap on connections and Twisted's 12-hour idle
    timeout; then, from the second reading, one address holding the whole
    cap of 64 with a byte a minute each (Twisted's idle timer restarts with
    every byte), so that liveness probes were refused and the gateway
    restarted by its orchestrator.
    """

    def setUp(self) -> None:
        from twisted.web.pages import notFound

        self.clock = Clock()
        self.site = AdminSite(notFound(), reactor=self.clock)

    def connect(self, port: int, host: str = "10.0.0.1") -> tuple[Any, StringTransport]:
        address = IPv4Address("TCP", host, port)
        proto = self.site.buildProtocol(address)
        transport = StringTransport(peerAddress=address)
        if proto is not None:
            proto.makeConnection(transport)
        return proto, transport

    def test_one_address_holds_a_few_connections_and_all_together_a_few_more(self) -> None:
        from twisted.web.resource import Resource
        from twisted.web.server import NOT_DONE_YET

        class Hang(Resource):
            isLeaf = True

            def render_GET(self, request: Any) -> Any:
                return NOT_DONE_YET  # an answer on its way: not to be evicted

        self.site = AdminSite(Hang(), reactor=self.clock)
        mine = [self.connect(1000 + i) for i in range(MAX_PER_SOURCE)]
        for proto, _ in mine:
            proto.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        # At its own cap, every one answering: refused.
        mine.append(self.connect(1000 + MAX_PER_SOURCE))
        self.assertEqual([p is None for p, _ in mine], [False] * MAX_PER_SOURCE + [True])
        others = [self.connect(2000, f"10.1.{i // 250}.{i % 250}")
                  for i in range(MAX_CONNECTIONS - MAX_PER_SOURCE)]
        for proto, _ in others:
            proto.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        # At the cap, every connection answering (found by review: eight addresses
        # asking each connection again as it was answered, or waiting on a hung
        # Airflow's readiness, kept every scrape out): the address holding the most
        # gives one up, its answer lost.
        self.assertIsNotNone(self.connect(3000, "10.9.9.9")[0])
        cut = [t for _, t in mine[:MAX_PER_SOURCE] if t.disconnecting]
        self.assertEqual((len(cut), self.site.refused_connections, self.site.evicted), (1, 1, 1))
        self.assertIsNone(self.connect(3001)[0])  # it holds the most still: it is refused
        self.assertIsNotNone(self.connect(3002, "10.1.0.1")[0])  # holding 1, it takes a 2nd
        self.assertEqual(len([t for _, t in mine[:MAX_PER_SOURCE] if t.disconnecting]), 2)
        mine[-2][0].connectionLost(Failure(ConnectionDone()))  # one not cut
        self.assertIsNotNone(self.connect(3003)[0])  # room again, for that address too
        self.assertEqual(self.site.open_connections, MAX_CONNECTIONS)

    def test_at_its_own_cap_an_address_s_idle_connection_gives_way_to_its_newest(self) -> None:
        """
        Found by review: any local process holding eight idle connections to a
        worker's listener kept out the supervisor's questions, which come from
        the same address, and the whole gateway reported not ready.
        """
        held = [self.connect(1000 + i, "127.0.0.1") for i in range(MAX_PER_SOURCE)]
        self.clock.advance(SETTLE_SECONDS)
        newest, wire = self.connect(2000, "127.0.0.1")
        self.assertIsNotNone(newest)
        self.assertEqual([t.disconnecting for _, t in held],
                         [True] + [False] * (MAX_PER_SOURCE - 1))  # its oldest at rest went
        newest.dataReceived(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertIn(b"HTTP/1.1 404", wire.value())  # answered (this site serves nothing)
        self.assertEqual(self.site.connections.holds("127.0.0.1"), MAX_PER_SOURCE)

    def test_addresses_holding_one_each_give_up_no_answer_under_way(self) -> None:
        from twisted.web.resource import Resource
        from twisted.web.server import NOT_DONE_YET

        class Hang(Resource):
            isLeaf = True

            def render_GET(self, request: Any) -> Any:
                return NOT_DONE_YET

        self.site = AdminSite(Hang(), reactor=self.clock)
        crowd = [self.connect(2000, f"10.1.{i // 250}.{i % 250}") for i in range(MAX_CONNECTIONS)]
        for proto, _ in crowd:
            proto.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.clock.advance(SETTLE_SECONDS)
        self.assertIsNone(self.connect(3000, "10.9.9.9")[0])  # a scraper's one scrape is kept
        self.assertEqual(self.site.evicted, 0)

    def test_at_the_cap_an_idle_connection_of_the_address_holding_the_most_gives_way(
        self,
    ) -> None:
        """
        From the second reading: eight addresses holding eight idle
        connections each (reopened as they are closed) kept the kubelet out.
        """
        crowd = [self.connect(1000 + i, f"10.2.0.{i // MAX_PER_SOURCE}")
                 for i in range(MAX_CONNECTIONS)]
        self.clock.advance(SETTLE_SECONDS)
        probes = [self.connect(4001 + i, f"10.3.0.{i + 1}") for i in range(20)]  # a burst
        self.assertTrue(all(p is not None for p, _ in probes))
        # Each newcomer closed another connection, gracefully, and none twice:
        # the gateway holds its cap (found by review: a burst went to 123).
        closing = [t for _, t in crowd if t.disconnecting]
        self.assertEqual((len(closing), self.site.evicted), (20, 20))
        self.assertEqual(self.site.open_connections, MAX_CONNECTIONS)
        self.assertFalse(any(t.disconnected for t in closing))
        self.clock.advance(LINGER_SECONDS)  # a peer that does not read is cut
        self.assertTrue(all(t.disconnected for t in closing))

    def test_connections_at_rest_give_way_first_and_a_written_answer_still_goes_out(
        self,
    ) -> None:
        """
        From a reading: the oldest connection, its answer still in Twisted's
        buffer, went.  One at rest goes first; failing that, one just answered,
        whose answer is sent before it closes.
        """
        crowd = [self.connect(1000 + i, f"10.2.0.{i // MAX_PER_SOURCE}")
                 for i in range(MAX_CONNECTIONS)]
        self.clock.advance(SETTLE_SECONDS)
        crowd[0][0].dataReceived(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")  # answered now
        self.assertIsNotNone(self.connect(4000, "10.3.0.1")[0])
        self.assertEqual([t.disconnecting for _, t in crowd[:2]], [False, True])  # at rest first
        for proto, _ in crowd[2:]:
            proto.dataReceived(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")  # each answered now
        self.assertIsNotNone(self.connect(4001, "10.3.0.2")[0])
        gone = [t for _, t in crowd[2:] if t.disconnecting]
        self.assertEqual(len(gone), 1)
        self.assertIn(b"HTTP/1.1 404", gone[0].value())  # its answer, written before it closed
        self.assertFalse(gone[0].disconnected)  # closing after what is on its way

    def test_a_request_must_come_whole_within_its_time_not_a_byte_a_minute(self) -> None:
        slow, slow_wire = self.connect(1000)
        for _ in range(3):
            slow.dataReceived(b"G")  # a byte now and then: restarts Twisted's idle timer
            self.clock.advance(REQUEST_SECONDS / 3 - 0.01)
        self.assertFalse(slow_wire.disconnected)
        self.clock.advance(0.1)
        self.assertTrue(slow_wire.disconnected)
        # Headers in time, then the body a byte at a time: the same.
        body, body_wire = self.connect(1001)
        body.dataReceived(b"POST /nowhere HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\n")
        self.clock.advance(REQUEST_SECONDS)
        self.assertTrue(body_wire.disconnected)
        # A probe that asks in time is answered, and kept alive; its next
        # request's time starts with that request's first byte.
        proto, transport = self.connect(1002)
        self.clock.advance(REQUEST_SECONDS - 1)
        proto.dataReceived(b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertIn(b"404", transport.value())
        self.clock.advance(IDLE_SECONDS - 1)  # idle between requests: Twisted's timer
        self.assertFalse(transport.disconnecting)
        proto.dataReceived(b"GET /nowhere HTTP/1.1\r\n")
        self.clock.advance(REQUEST_SECONDS)
        self.assertTrue(transport.disconnected)
        for closed in (slow, body, proto):  # the reactor reports them lost
            closed.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.site.open_connections, 0)

    def test_a_request_with_a_body_is_refused_before_a_byte_of_it_is_read(self) -> None:
        """
        Found by review: a POST declaring 100 GB was spooled by twisted.web to
        a temp file, without a cap (2.85 GB in 9 s from four connections).
        """
        for head in (b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000000\r\n",
                     b"POST /metrics HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n",
                     (b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                      b"Expect: 100-continue\r\n")):
            proto, transport = self.connect(1000)
            proto.dataReceived(head + b"\r\n" + b"x" * 70000)
            for _ in range(20):
                proto.dataReceived(b"x" * 65536)  # more follows, read by nobody
            answer = transport.value()
            self.assertTrue(answer.startswith(b"HTTP/1.1 413 Content Too Large\r\n"), answer)
            self.assertEqual(answer.count(b"HTTP/1.1"), 1)  # no 100 Continue after it
            self.assertTrue(transport.disconnecting)
            self.assertEqual([r.content.getvalue() for r in proto.requests], [b""])
            self.clock.advance(LINGER_SECONDS)  # a peer that does not read is cut
            self.assertTrue(transport.disconnected)
            proto.connectionLost(Failure(ConnectionDone()))
        # Without a body (or an empty one), as probes ask: answered as before.
        proto, transport = self.connect(1001)
        proto.dataReceived(b"GET /x HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        self.assertIn(b"HTTP/1.1 404", transport.value())
        self.assertFalse(transport.disconnecting)

    def test_scrapes_past_their_rate_from_one_address_are_429(self) -> None:
        """
        Found by review: connections asking for /metrics without pause
        (about 2 ms of CPU a render) took a core from the calls.
        """
        from twisted.web.resource import Resource

        class Metrics(Resource):
            isLeaf = True
            renders = 0

            def render_GET(self, request: Any) -> bytes:
                Metrics.renders += 1
                return b"up 1\n"

        health = HealthResource(
            config=lambda: CONFIG, airflow_reachable=lambda: succeed(True),
            audit=audit_log(tempfile.mkdtemp(), self.clock), counters=dict, clock=self.clock,
            certificates=dict, metrics=Metrics())
        self.site = AdminSite(health, reactor=self.clock)
        proto, transport = self.connect(1000)
        scrape = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
        proto.dataReceived(scrape * (SCRAPE_BURST + 3))
        answers = transport.value()
        self.assertEqual(answers.count(b"HTTP/1.1 200"), SCRAPE_BURST)
        self.assertEqual(answers.count(b"HTTP/1.1 429"), 3)
        self.assertIn(b"Retry-After: 1", answers)
        self.assertEqual((Metrics.renders, self.site.scrapes_refused), (SCRAPE_BURST, 3))
        # Another address has its own; liveness and readiness are not counted,
        # nor a HEAD, which nothing renders (found by review: it took a scrape).
        other, other_wire = self.connect(1001, "10.0.0.2")
        other.dataReceived(b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * (SCRAPE_BURST + 5)
                           + scrape + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 30)
        self.assertEqual(other_wire.value().count(b"HTTP/1.1 405"), SCRAPE_BURST + 5)
        self.assertEqual(other_wire.value().count(b"HTTP/1.1 429"), 0)
        self.assertEqual(other_wire.value().count(b"HTTP/1.1 200"), 31)
        self.assertEqual(Metrics.renders, SCRAPE_BURST + 1)
        # A second later, the address may scrape again at the rate.
        transport.clear()
        self.clock.advance(1)
        proto.dataReceived(scrape * int(SCRAPES_PER_SECOND + 1))
        self.assertEqual(transport.value().count(b"HTTP/1.1 200"), SCRAPES_PER_SECOND)
        self.assertEqual(transport.value().count(b"HTTP/1.1 429"), 1)
        # Each address has its own: a few flooding ones do not keep a scraper
        # out (found by review of a cap for all addresses together).
        for k in range(6):
            fleet, _ = self.connect(5100 + k, f"10.0.1.{k}")
            fleet.dataReceived(scrape * SCRAPE_BURST)
        prometheus, prometheus_wire = self.connect(5200, "10.0.2.1")
        prometheus.dataReceived(scrape)
        self.assertIn(b"HTTP/1.1 200", prometheus_wire.value())
        # A worker's listener does not count its supervisor's fan-out, which
        # carries the supervisor's key; anyone else's it counts, from this very
        # host too (found by review: every local process went uncounted).
        self.site = AdminSite(health, reactor=self.clock, supervisor_key=b"k3y")
        host = IPv4Address("TCP", "10.0.0.7", 8082)
        for peer, key, served in (("10.0.0.7", b"k3y", SCRAPE_BURST + 5),
                                  ("10.0.0.7", b"", SCRAPE_BURST),
                                  ("10.0.0.8", b"k3z", SCRAPE_BURST)):
            address = IPv4Address("TCP", peer, 5000)
            proto = self.site.buildProtocol(address)
            wire = StringTransport(hostAddress=host, peerAddress=address)
            proto.makeConnection(wire)
            keyed = (b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Airflowrpc-Supervisor: " + key
                     + b"\r\n\r\n")
            proto.dataReceived((keyed if key else scrape) * (SCRAPE_BURST + 5))
            self.assertEqual(wire.value().count(b"HTTP/1.1 200"), served, (peer, key))

    def test_other_requests_past_their_rate_from_one_address_are_429(self) -> None:
        """
        Found by review: /readyz and /healthz had no rate at all: 2,400 a second
        from one address took half a core of the supervisor.
        """
        health = HealthResource(
            config=lambda: CONFIG, airflow_reachable=lambda: succeed(True),
            audit=audit_log(tempfile.mkdtemp(), self.clock), counters=dict, clock=self.clock,
            certificates=dict)
        self.site = AdminSite(health, reactor=self.clock)
        proto, transport = self.connect(1000)
        probes = (b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * PROBE_BURST
                  + b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n" * 3)
        proto.dataReceived(probes)
        answers = transport.value()
        self.assertEqual((answers.count(b"HTTP/1.1 200"), answers.count(b"HTTP/1.1 429")),
                         (PROBE_BURST, 3))
        self.assertIn(b"Retry-After: 1", answers)
        self.assertEqual(self.site.probes_refused, 3)
        other, other_wire = self.connect(1001, "10.0.0.2")  # its own
        other.dataReceived(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertIn(b"HTTP/1.1 200", other_wire.value())
        transport.clear()
        self.clock.advance(1)  # a second later: at the rate again
        proto.dataReceived(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 51)
        self.assertEqual(transport.value().count(b"HTTP/1.1 429"), 1)

    def test_pipelined_requests_each_get_their_own_time(self) -> None:
        """From the second reading: a pipelined request's timer was lost, another cut it."""
        proto, transport = self.connect(1000)
        proto.dataReceived(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
                           b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(transport.value().count(b"HTTP/1.1 404"), 2)
        self.assertEqual([c for c in self.clock.getDelayedCalls()
                          if c.func.__name__ == "_too_slow" and c.active()], [])
        self.clock.advance(REQUEST_SECONDS * 3)
        self.assertFalse(transport.disconnecting)

    def test_a_request_after_one_answered_in_the_same_read_gets_its_time(self) -> None:
        """
        From a reading: the second request of one read never passed through
        dataReceived, so its headers could come a byte a minute, for good.
        """
        proto, transport = self.connect(1000)
        proto.dataReceived(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\nGET /y HTTP/1.1\r\n")
        self.assertEqual(transport.value().count(b"HTTP/1.1 404"), 1)
        for _ in range(3):
            self.clock.advance(REQUEST_SECONDS / 3 - 0.01)
            proto.dataReceived(b"H")
        self.clock.advance(0.1)
        self.assertTrue(transport.disconnected)
