"""
The site on a StringTransport: who gets their body read, the limits on
connections, bodies and time, exact routing, and every refusal recorded.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import attrs
from OpenSSL import SSL
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from zope.interface.verify import verifyObject

from txairflowrpc.gate.refusals import RefusalLog, target_fields
from txairflowrpc.gate.site import GatewaySite
from txairflowrpc.identity.authenticate import Unauthenticated

from .helpers import CONFIG, OPERATOR, audit_log

PING = (b"<?xml version='1.0'?><methodCall><methodName>ping</methodName>"
        b"<params></params></methodCall>")


class Echo(Resource):
    """Stands for /RPC2: answers with who called and how much body it read."""

    isLeaf = True

    def render(self, request: Any) -> bytes:
        body = request.content.read()
        request.release_body()
        return f"{request.principal.name} read {len(body)}".encode()


class Missing(Resource):
    isLeaf = True

    def render(self, request: Any) -> bytes:
        request.setResponseCode(404)
        return b"not found"


def post(body: bytes = PING, *, headers: bytes = b"", path: bytes = b"/RPC2") -> bytes:
    return (b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml\r\n%s"
            b"Content-Length: %d\r\n\r\n%s" % (path, headers, len(body), body))


class SiteTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.dir = Path(tempfile.mkdtemp())
        self.audit = audit_log(str(self.dir), self.clock)
        self.refusals = RefusalLog(self.audit, self.clock)
        self.authenticated: list[Any] = []
        self.answer: Any = OPERATOR
        self.make()

    def make(self, max_body_bytes: int = 1000, backoff: Any = None, **limits: Any) -> None:
        def authenticate(request: Any) -> Any:
            self.authenticated.append(request)
            if isinstance(self.answer, Exception):
                raise self.answer
            return self.answer

        self.site = GatewaySite(
            Resource(), rpc=Echo(), not_found=Missing(), refusals=self.refusals,
            clock=self.clock, limits=attrs.evolve(CONFIG.limits, **limits),
            max_body_bytes=max_body_bytes, authenticate=authenticate, backoff=backoff,
        )

    def connect(self, host: str = "127.0.0.1", port: int = 1234) -> tuple[Any, StringTransport]:
        address = (IPv6Address if ":" in host else IPv4Address)("TCP", host, port)
        proto = self.site.buildProtocol(address)
        transport = StringTransport(peerAddress=address)
        proto.makeConnection(transport)
        return proto, transport

    def records(self) -> list[dict[str, Any]]:
        self.refusals.flush()
        path = self.dir / "audit.jsonl"
        lines = path.read_text().splitlines() if path.exists() else []
        return [r for r in map(json.loads, lines) if r.get("kind") == "refused"]


class AuthenticationFirstTests(SiteTestCase):
    def test_the_unauthenticated_get_401_before_their_body_is_read(self) -> None:
        self.answer = Unauthenticated("no credentials")
        proto, transport = self.connect()
        proto.dataReceived(post(b"x" * 900, headers=b"Expect: 100-continue\r\n"))
        answer = transport.value()
        self.assertTrue(answer.startswith(b"HTTP/1.1 401 Unauthorized\r\n"), answer)
        self.assertNotIn(b"100 Continue", answer)
        self.assertIn(b"WWW-Authenticate: Bearer", answer)
        self.assertEqual(proto.requests[-1].content.getvalue(), b"")  # never buffered
        self.assertEqual(self.site.bodies.held, 0)
        proto.dataReceived(b"y" * 5000)  # what is still coming is read and dropped
        self.assertEqual(transport.value(), answer)
        (record,) = self.records()
        self.assertEqual((record["http_status"], record["reason"], record["refusal"]),
                         (401, "unauthenticated: no credentials", "unauthenticated"))
        self.clock.advance(3)
        self.assertTrue(transport.disconnecting)  # closed after a short linger

    def test_a_genuine_but_refused_credential_names_who_on_the_record(self) -> None:
        """Found by review: an expired or wrong-audience JWT's refusal said nothing of who."""
        self.answer = Unauthenticated("JWT refused: expired", {
            "oidc_issuer": "https://idp.example.com", "oidc_sub": "mallory"})
        proto, transport = self.connect()
        proto.dataReceived(post())
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 401 "))
        self.assertNotIn(b"mallory", transport.value())  # the caller is told nothing new
        (record,) = self.records()
        self.assertEqual((record["reason"], record["oidc_issuer"], record["oidc_sub"]),
                         ("unauthenticated: JWT refused: expired", "https://idp.example.com",
                          "mallory"))

    def test_each_caller_a_refused_token_named_is_tallied_on_its_own(self) -> None:
        """Found by review: one tally credited all its refusals to the last caller named."""
        for sub in ("alice", "bob", "bob", "bob", "carol"):
            self.answer = Unauthenticated("JWT refused: expired", {
                "oidc_issuer": "https://idp.example.com", "oidc_sub": sub})
            proto, transport = self.connect()
            proto.dataReceived(post())
        self.clock.advance(3600)  # the windows end: the tallies are written
        counted: dict[str, int] = {}
        for record in self.records():
            counted[record["oidc_sub"]] = counted.get(record["oidc_sub"], 0) + record["count"]
        self.assertEqual(counted, {"alice": 1, "bob": 3, "carol": 1})

    def test_continue_is_sent_only_once_authenticated(self) -> None:
        proto, transport = self.connect()
        proto.dataReceived(post(headers=b"Expect: 100-continue\r\n").split(b"\r\n\r\n")[0]
                           + b"\r\n\r\n")
        self.assertEqual(transport.value(), b"HTTP/1.1 100 Continue\r\n\r\n")
        proto.dataReceived(PING)
        self.assertIn(b"ci-bot read %d" % len(PING), transport.value())

    def test_while_authentication_is_pending_the_body_waits(self) -> None:
        pending: Deferred[Any] = Deferred()
        self.answer = None
        self.site.authenticate = lambda request: pending
        proto, transport = self.connect()
        proto.dataReceived(post())
        self.assertTrue(transport.producerState == "paused")
        self.assertEqual(proto.requests[-1].content.getvalue(), b"")
        pending.callback(OPERATOR)
        self.assertEqual(transport.producerState, "producing")
        self.assertIn(b"ci-bot read %d" % len(PING), transport.value())

    def test_a_sign_in_that_ends_after_its_caller_left_does_nothing(self) -> None:
        """From the second reading: it replayed the held body into a dead request (a traceback)."""
        pending: Deferred[Any] = Deferred()
        self.site.authenticate = lambda request: pending
        proto, transport = self.connect()
        proto.dataReceived(post())
        proto.connectionLost(Failure(ConnectionDone()))
        pending.callback(OPERATOR)
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual((self.site.bodies.held, transport.value()), (0, b""))

    def test_a_pending_refusal_reads_nothing_either(self) -> None:
        pending: Deferred[Any] = Deferred()
        self.site.authenticate = lambda request: pending
        proto, transport = self.connect()
        proto.dataReceived(post(b"x" * 900))
        pending.errback(Unauthenticated("expired token"))
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 401"))
        self.assertEqual(proto.requests[-1].content.getvalue(), b"")

    def test_what_follows_a_pending_sign_in_is_held_not_read_as_its_headers(self) -> None:
        """
        Found by review: a request without a body whose sign-in was pending
        (STS, a key set fetch) stayed in line mode, so every blank line after
        it was taken for its end of headers and began another sign-in: 64 KB
        of them began 32,000.
        """
        pending: Deferred[Any] = Deferred()
        calls: list[Any] = []

        def authenticate(request: Any) -> Deferred[Any]:
            calls.append(request)
            return pending

        self.site.authenticate = authenticate
        proto, transport = self.connect()
        proto.dataReceived(b"GET /RPC2 HTTP/1.1\r\nHost: x\r\n\r\n" + b"X-A: 1\r\n\r\n" * 50)
        self.assertEqual(len(calls), 1)
        self.assertIsNone(proto.requests[-1].requestHeaders.getRawHeaders(b"x-a"))
        proto.dataReceived(b"\r\n" * (300 * 1024))  # past what a pending sign-in may hold
        self.assertTrue(transport.disconnecting)  # aborted: held past its bound
        self.assertEqual(len(calls), 1)

    def test_a_request_pipelined_behind_a_pending_sign_in_is_served_after_it(self) -> None:
        pending: Deferred[Any] = Deferred()
        self.site.authenticate = lambda request: pending
        proto, transport = self.connect()
        proto.dataReceived(b"GET /RPC2 HTTP/1.1\r\nHost: x\r\n\r\n" + post())
        self.assertEqual(transport.value(), b"")
        pending.callback(OPERATOR)
        answer = transport.value()
        first, second = answer.split(b"HTTP/1.1 200 OK")[1:]
        self.assertTrue(first.endswith(b"ci-bot read 0"), answer)
        self.assertTrue(second.endswith(b"ci-bot read %d" % len(PING)), answer)  # in its turn

    def test_a_held_body_and_the_requests_after_it_are_all_served(self) -> None:
        """
        Found by the second reader: a body that ended inside what was held
        was answered at once, and the rest, replayed raw into line mode, met
        no body decoder: a traceback, and the next request lost.
        """
        pending: Deferred[Any] = Deferred()
        self.site.authenticate = lambda request: pending
        proto, transport = self.connect()
        head, body = post(b"x" * 10).split(b"\r\n\r\n", 1)
        proto.dataReceived(head + b"\r\n\r\n")
        proto.dataReceived(body + b"GET /RPC2 HTTP/1.1\r\nHost: x\r\n\r\n")
        proto.dataReceived(post(b"z" * 3))
        pending.callback(OPERATOR)
        answers = transport.value()
        self.assertEqual(answers.count(b"HTTP/1.1 200 OK"), 3, answers)
        self.assertTrue(answers.endswith(b"ci-bot read %d" % len(post(b"z" * 3).split(
            b"\r\n\r\n", 1)[1])), answers)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_reading_stays_paused_while_a_sign_in_is_pending(self) -> None:
        """
        Found by the second reader: a drained send buffer resumed reading
        (Twisted resumes whenever no request is being handled), and each
        held chunk summed all the others.
        """
        pending: Deferred[Any] = Deferred()
        self.site.authenticate = lambda request: pending
        proto, transport = self.connect()
        proto.dataReceived(b"GET /RPC2 HTTP/1.1\r\nHost: x\r\n\r\n")
        proto.pauseProducing()  # the transport's send buffer filled ...
        proto.resumeProducing()  # ... and drained
        self.assertEqual(transport.producerState, "paused")
        pending.callback(OPERATOR)
        self.assertEqual(transport.producerState, "producing")

    def test_an_overlong_header_line_is_a_recorded_400(self) -> None:
        """Found by review: LineReceiver dropped the connection without a word or a record."""
        proto, transport = self.connect()
        proto.dataReceived(b"POST /RPC2 HTTP/1.1\r\nX-Long: " + b"a" * 70000 + b"\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 400 Bad Request\r\n"))
        (record,) = self.records()
        self.assertEqual(record["reason"], "request or header line too long")

    def test_two_authorization_headers_are_400(self) -> None:
        proto, transport = self.connect()
        proto.dataReceived(post(headers=b"Authorization: Bearer a\r\nAuthorization: Bearer b\r\n"))
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 400 Bad Request\r\n"))
        self.assertEqual(self.authenticated, [])
        (record,) = self.records()
        self.assertEqual(record["reason"], "more than one Authorization header")


class KeepAliveVerdictTests(SiteTestCase):
    """
    A keep-alive connection's later requests with the same credentials reuse
    its first verdict, until the access rules change or the credential
    expires; anything else is checked afresh.
    """

    def setUp(self) -> None:
        self.version: object = object()
        super().setUp()

    def make(self, max_body_bytes: int = 1000, **limits: Any) -> None:
        super().make(max_body_bytes, **limits)
        self.site.access_version = lambda: (self.version, "keys")

    def call(self, proto: Any, headers: bytes = b"Authorization: Bearer a.b\r\n") -> None:
        proto.dataReceived(post(headers=headers))

    def test_the_same_credentials_are_checked_once(self) -> None:
        proto, transport = self.connect()
        for _ in range(3):
            self.call(proto)
        self.assertEqual(len(self.authenticated), 1)
        self.assertEqual(transport.value().count(b"ci-bot read"), 3)

    def test_other_credentials_are_checked_again(self) -> None:
        proto, transport = self.connect()
        self.call(proto)
        self.answer = Unauthenticated("unknown token")
        self.call(proto, b"Authorization: Bearer c.d\r\n")
        self.assertEqual(len(self.authenticated), 2)
        self.assertIn(b"401 Unauthorized", transport.value())

    def test_no_credentials_after_some_are_checked_again(self) -> None:
        proto, transport = self.connect()
        self.call(proto)
        self.answer = Unauthenticated("no credentials")
        self.call(proto, b"")
        self.assertEqual(len(self.authenticated), 2)
        self.assertIn(b"401 Unauthorized", transport.value())

    def test_a_reload_makes_the_next_request_checked_again(self) -> None:
        proto, transport = self.connect()
        self.call(proto)
        self.version = object()  # a reload: say the token was revoked
        self.answer = Unauthenticated("token t1 was revoked")
        self.call(proto)
        self.assertEqual(len(self.authenticated), 2)
        self.assertIn(b"401 Unauthorized", transport.value())

    def test_an_expired_credential_is_checked_again(self) -> None:
        self.answer = attrs.evolve(OPERATOR, expires=datetime.fromtimestamp(2, timezone.utc))
        proto, transport = self.connect()
        self.call(proto)
        self.clock.advance(1.5)
        self.call(proto)
        self.assertEqual(len(self.authenticated), 1)
        self.clock.advance(0.5)
        self.answer = Unauthenticated("token expired")
        self.call(proto)
        self.assertEqual(len(self.authenticated), 2)
        self.assertIn(b"401 Unauthorized", transport.value())

    def test_a_reload_during_a_slow_sign_in_makes_the_next_request_checked_again(self) -> None:
        """The verdict holds for the rules it was reached under, not those when it came."""
        pending: Deferred[Any] = Deferred()

        def authenticate(request: Any) -> Any:
            self.authenticated.append(request)
            if len(self.authenticated) == 1:
                return pending
            raise self.answer

        self.site.authenticate = authenticate
        proto, transport = self.connect()
        self.call(proto)
        self.version = object()  # a reload while STS is still answering
        pending.callback(OPERATOR)
        self.answer = Unauthenticated("maps to no principal")
        self.call(proto)
        self.assertEqual(len(self.authenticated), 2)
        self.assertIn(b"401 Unauthorized", transport.value())

    def test_a_proof_that_lapses_before_the_credential_is_checked_again(self) -> None:
        """An AWS-IAM signature is accepted for ``max_age_seconds``, whatever STS said."""
        self.answer = attrs.evolve(OPERATOR, proof_until=30.0)
        proto, transport = self.connect()
        self.call(proto)
        self.clock.advance(29)
        self.call(proto)
        self.assertEqual(len(self.authenticated), 1)
        self.clock.advance(1)
        self.answer = Unauthenticated("the request was signed 30 s ago")
        self.call(proto)
        self.assertEqual(len(self.authenticated), 2)
        self.assertIn(b"401 Unauthorized", transport.value())

    def test_a_new_connection_is_checked_afresh(self) -> None:
        first, _ = self.connect()
        self.call(first)
        second, _ = self.connect(port=1235)
        self.call(second)
        self.assertEqual(len(self.authenticated), 2)


class BodyTests(SiteTestCase):
    def test_declared_body_over_the_cap_is_413_before_it_is_read(self) -> None:
        proto, transport = self.connect()
        proto.dataReceived(b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml\r\n"
                           b"Content-Length: 5000000\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 413 Content Too Large\r\n"))
        self.assertEqual(self.records()[0]["http_status"], 413)

    def test_chunked_body_is_cut_at_the_cap(self) -> None:
        proto, transport = self.connect()
        proto.dataReceived(b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml\r\n"
                           b"Transfer-Encoding: chunked\r\n\r\n")
        for _ in range(3):
            proto.dataReceived(b"200\r\n" + b"x" * 0x200 + b"\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 413"))
        self.assertLessEqual(proto.requests[-1].content.tell(), 1000)
        self.assertEqual(self.site.bodies.held, 0)

    def test_an_identified_callers_refusal_is_a_record_of_its_own(self) -> None:
        """
        Found by review: a chunked body over the cap from a known caller was
        counted per source and reason, so a second caller's 413 from the
        same address had no record of its own (its request id nowhere in
        the trail) and its principal was folded into the first one's.
        """
        answers = {}
        for name in ("bot", "nobody", "nobody"):
            self.answer = attrs.evolve(OPERATOR, name=name)
            proto, transport = self.connect(port=2200 + len(answers))
            proto.dataReceived(b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml\r\n"
                               b"Transfer-Encoding: chunked\r\n\r\n")
            proto.dataReceived(b"600\r\n" + b"x" * 0x600 + b"\r\n")
            answer = transport.value()
            self.assertTrue(answer.startswith(b"HTTP/1.1 413"), answer)
            request_id = answer.split(b"X-Request-Id: ")[1].split(b"\r\n")[0].decode()
            answers[request_id] = name
        found = {r["request_id"]: r for r in self.records() if r.get("http_status") == 413}
        self.assertEqual({k: r["principal"] for k, r in found.items()}, answers)
        self.assertTrue(all("count" not in r and r["refusal"] == "too_large"
                            for r in found.values()))

    def test_bodies_in_flight_share_one_budget_and_are_let_go(self) -> None:
        self.make(max_body_memory_bytes=2000)
        half = [self.connect(port=2000 + i) for i in range(3)]
        for i, (proto, _) in enumerate(half):  # three bodies of 900 of 2000: the third does not fit
            self.answer = attrs.evolve(OPERATOR, name=f"bot-{i}")  # each its own caller
            proto.dataReceived(post(b"<" * 900)[:-450])
        answers = [t.value() for _, t in half]
        self.assertEqual(self.site.bodies.held, 1800)
        self.assertTrue(answers[2].startswith(b"HTTP/1.1 503 Service Unavailable\r\n"))
        self.assertIn(b"Retry-After: 1\r\n", answers[2])
        self.assertIn(b"the gateway holds as many request bodies as it may", answers[2])
        for i, (proto, transport) in enumerate(half[:2]):
            proto.dataReceived(b"<" * 450)
            self.assertIn(b"bot-%d read 900" % i, transport.value())
        self.assertEqual(self.site.bodies.held, 0)  # released once read

    def test_one_caller_holds_at_most_its_share_of_the_budget(self) -> None:
        """
        Found by review: any authenticated caller (one with no roles did)
        declared 64 bodies of 1 MiB, sent a byte of each, and held the whole
        budget: every other caller got 503 until the request deadline.
        """
        self.make(max_body_bytes=1000, max_body_memory_bytes=8000)  # a share: 2000
        hog = [self.connect(port=2100 + i) for i in range(3)]
        for proto, _ in hog:
            proto.dataReceived(post(b"<" * 900)[:-899])  # a byte of each
        self.assertEqual(self.site.bodies.held, 1800)
        third = hog[2][1].value()
        self.assertTrue(third.startswith(b"HTTP/1.1 503 "), third)
        self.assertIn(b"this caller holds as many request bodies as it may", third)
        self.answer = attrs.evolve(OPERATOR, name="someone-else")
        proto, transport = self.connect("10.0.0.7")
        proto.dataReceived(post(b"<" * 900))
        self.assertIn(b"someone-else read 900", transport.value())
        for proto, _ in hog[:2]:
            proto.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.site.bodies.held, 0)


class ConnectionTests(SiteTestCase):
    def test_a_slow_request_is_dropped_at_its_deadline(self) -> None:
        self.make(request_deadline_seconds=10)
        proto, transport = self.connect()
        proto.dataReceived(b"POST /RPC2 HTTP/1.1\r\n")
        self.clock.advance(5)
        proto.dataReceived(b"Host: x\r\n")  # slowloris: a byte now and then
        self.assertFalse(transport.disconnecting)
        self.clock.advance(5)
        self.assertTrue(transport.disconnected)
        self.assertEqual(self.site.slow_dropped, 1)

    def test_a_silent_connection_is_dropped_at_the_handshake_deadline(self) -> None:
        self.make(handshake_timeout_seconds=3)
        proto, transport = self.connect()
        self.clock.advance(3)
        self.assertTrue(transport.disconnected)

    def test_no_first_byte_soon_after_the_handshake_is_dropped(self) -> None:
        self.make(handshake_timeout_seconds=10, first_byte_seconds=2, idle_timeout_seconds=60)
        proto, transport = self.connect()
        proto.handshakeCompleted()
        self.clock.advance(2)
        self.assertTrue(transport.disconnected)
        (record,) = self.records()
        self.assertEqual(record["refusal"], "first_byte")

    def test_a_first_byte_deadline_later_than_the_handshakes_holds(self) -> None:
        self.make(handshake_timeout_seconds=3, first_byte_seconds=10, idle_timeout_seconds=60)
        proto, transport = self.connect()
        self.clock.advance(1)
        proto.handshakeCompleted()
        self.clock.advance(9.5)  # past the handshake's deadline, not the first byte's
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.5)
        self.assertTrue(transport.disconnected)
        (record,) = self.records()
        self.assertEqual(record["refusal"], "first_byte")

    def test_a_request_after_the_handshake_stops_the_first_byte_deadline(self) -> None:
        self.make(handshake_timeout_seconds=3, first_byte_seconds=5, idle_timeout_seconds=60)
        proto, transport = self.connect()
        proto.handshakeCompleted()
        proto.dataReceived(b"POST /RPC2 HTTP/1.1\r\n")
        self.clock.advance(6)  # the request deadline (30 s by default) is what runs now
        self.assertFalse(transport.disconnecting)
        self.assertEqual(self.records(), [])

    def test_the_tls_layer_tells_the_channel_its_handshake_is_done(self) -> None:
        # Twisted's TLS protocol calls handshakeCompleted only on a protocol
        # that provides IHandshakeListener; without it every quiet client
        # would be dropped at the handshake deadline, not the first-byte one.
        self.make()
        proto, _ = self.connect()
        verifyObject(IHandshakeListener, proto)

    def test_one_address_may_hold_only_its_share(self) -> None:
        self.make(max_connections=100, max_connections_per_source=3)
        conns = [self.connect(port=3000 + i) for i in range(4)]
        self.assertEqual([t.disconnected for _, t in conns], [False, False, False, True])
        self.assertFalse(self.connect("10.0.0.2")[1].disconnected)
        self.assertEqual(self.site.refused_connections, 1)

    def test_at_the_cap_the_address_holding_the_most_gives_way(self) -> None:
        self.make(max_connections=4, max_connections_per_source=100)
        flood = [self.connect("10.6.6.6", 4000 + i) for i in range(4)]
        again = self.connect("10.6.6.6", 4999)
        self.assertTrue(again[1].disconnected)  # the one holding the most: refused
        other = self.connect("10.0.0.9")
        self.assertFalse(other[1].disconnected)  # anyone else: an idle flooder makes room
        # Closed, an answer still on its way out sent first; cut after a linger.
        self.assertEqual(sum(t.disconnecting for _, t in flood), 1)
        self.assertEqual(sum(t.disconnected for _, t in flood), 0)
        self.clock.advance(2)
        self.assertEqual(sum(t.disconnected for _, t in flood), 1)
        self.assertEqual((self.site.open_connections, self.site.evicted), (4, 1))

    def test_at_the_cap_a_connection_still_sending_its_headers_gives_way(self) -> None:
        """
        Found by review: a request line and nothing more made a connection
        unevictable for the request deadline, so ten addresses holding their
        share that way kept everyone else out at the cap.
        """
        self.make(max_connections=4, max_connections_per_source=2)
        slow = [self.connect(f"10.6.6.{i // 2}", 4100 + i) for i in range(4)]
        for proto, _ in slow:
            proto.dataReceived(b"POST /RPC2 HTTP/1.1\r\n")
        other, transport = self.connect("10.0.0.9")
        self.assertFalse(transport.disconnected)
        self.assertEqual((sum(t.disconnecting for _, t in slow), self.site.evicted), (1, 1))
        other.dataReceived(post())
        self.assertIn(b"ci-bot read", transport.value())
        # A connection whose caller is in, sending its body, is not taken.
        self.make(max_connections=2, max_connections_per_source=2)
        busy = [self.connect("10.6.6.1", 4200 + i) for i in range(2)]
        for proto, _ in busy:
            proto.dataReceived(post(b"<" * 900)[:-10])
        self.assertTrue(self.connect("10.0.0.9")[1].disconnected)
        self.assertFalse(any(t.disconnected for _, t in busy))

    def test_one_principal_sends_at_most_its_in_flight_cap_of_bodies_at_once(self) -> None:
        """
        Found by an attacker's review: a connection whose caller is in, its
        body trickling, may not give way at the cap, so one credential from
        a few addresses (each under its per-source cap) held every connection
        and shut all other callers out for as long as it kept trickling.
        """
        self.make(max_connections=6, max_connections_per_source=2, max_in_flight=3)
        slow = [self.connect(f"10.6.6.{i // 2}", 4300 + i) for i in range(4)]
        for proto, _ in slow:
            proto.dataReceived(post(b"<" * 900)[:-10])  # the body never ends
        answers = [t.value() for _, t in slow]
        self.assertEqual([a.startswith(b"HTTP/1.1 429 Too Many Requests") for a in answers],
                         [False, False, False, True])
        self.assertIn(b"Retry-After: 1", answers[3])
        self.assertIn(b"more than 3 requests of this principal are still sending their bodies",
                      answers[3])
        self.assertEqual((self.site.arriving, self.site.arriving_refused), ({"ci-bot": 3}, 1))
        [refused] = [r for r in self.records() if r.get("http_status") == 429]
        self.assertEqual((refused["principal"], refused["refusal"]), ("ci-bot", "rate_limited"))
        # Another principal is not held back by it.
        self.answer = attrs.evolve(OPERATOR, name="other-bot")
        other, transport = self.connect("10.0.0.9")
        other.dataReceived(post(b"<" * 10))
        self.assertIn(b"other-bot read 10", transport.value())
        # A body that ends, or a connection that goes, frees its place.
        first, _ = slow[0]
        first.dataReceived(b"<" * 10)
        self.assertEqual(self.site.arriving, {"ci-bot": 2})
        slow[1][0].connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.site.arriving, {"ci-bot": 1})
        self.answer = OPERATOR
        again, again_wire = self.connect("10.0.0.10")
        again.dataReceived(post(b"<" * 900)[:-10])
        self.assertFalse(again_wire.value().startswith(b"HTTP/1.1 429"))
        self.assertEqual(self.site.arriving, {"ci-bot": 2})
        # At the request deadline the rest are dropped: nothing stays counted.
        self.clock.advance(self.site.limits.request_deadline_seconds + 3)
        for proto, _ in (slow[2], (again, again_wire)):
            proto.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.site.arriving, {})

    def test_a_body_past_the_cap_after_a_pending_sign_in_is_read_and_dropped(self) -> None:
        """From the second reader: reading stayed paused, and the client met a reset."""
        self.make(max_in_flight=1)
        first, _ = self.connect("10.6.6.1", 4400)
        first.dataReceived(post(b"<" * 900)[:-10])
        pending: Deferred[Any] = Deferred()
        self.site.authenticate = lambda request: pending
        proto, transport = self.connect("10.6.6.2", 4401)
        proto.dataReceived(post(b"<" * 900)[:-10])
        self.assertEqual(transport.producerState, "paused")
        pending.callback(OPERATOR)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 429 Too Many Requests"))
        self.assertEqual(transport.producerState, "producing")
        self.assertIsNone(proto._holding)
        self.assertEqual(self.site.arriving, {"ci-bot": 1})

    def test_an_ipv6_fleet_in_one_64_may_count_by_address(self) -> None:
        """
        From the second reading: a cloud subnet is one /64, so a fleet there
        was one source; limits.ipv6_source_prefix = 128 counts each address.
        """
        self.make(max_connections=100, max_connections_per_source=3, ipv6_source_prefix=128)
        conns = [self.connect(f"2001:db8:1:2::{i:x}", 3000 + i) for i in range(1, 5)]
        self.assertEqual([t.disconnected for _, t in conns], [False] * 4)
        same = [self.connect("2001:db8:1:2::1", 3100 + i) for i in range(3)]
        self.assertEqual([t.disconnected for _, t in same], [False, False, True])
        self.assertEqual(conns[0][0].source, "2001:db8:1:2::1")

    def test_an_identified_callers_refusal_is_answered_even_if_its_record_hangs(self) -> None:
        """From the second reading: a record that never came held the connection forever."""
        self.make(request_deadline_seconds=10)
        self.refusals.record = lambda fields: Deferred()  # type: ignore[method-assign]
        proto, transport = self.connect()
        proto.dataReceived(b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml\r\n"
                           b"Transfer-Encoding: chunked\r\n\r\n")
        # The body's end in the same read: its end must not cancel the fallback.
        proto.dataReceived(b"600\r\n" + b"x" * 0x600 + b"\r\n0\r\n\r\n")
        self.assertEqual(transport.value(), b"")  # waiting for its record
        self.clock.advance(10)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 413"))
        self.clock.advance(2)
        self.assertTrue(transport.disconnecting)  # closed once sent ...
        self.clock.advance(2)
        self.assertTrue(transport.disconnected)  # ... and cut if the peer never closes

    def test_a_refusal_is_answered_once_when_its_record_lands_late(self) -> None:
        late: Deferred[Any] = Deferred()
        self.make(request_deadline_seconds=10, max_body_memory_bytes=1024)
        self.refusals.record = lambda fields: late  # type: ignore[method-assign]
        self.site.bodies.take(500, "someone-else")
        proto, transport = self.connect()
        proto.dataReceived(post(b"x" * 600))  # a budget 503, the whole body in one read
        self.clock.advance(10)
        self.clock.advance(2)
        late.callback(None)
        self.assertEqual(transport.value().count(b"HTTP/1.1 503"), 1)

    def test_an_ipv6_host_is_counted_by_its_64(self) -> None:
        """Found by review: each /128 had its own share, so one /64 filled the whole cap."""
        self.make(max_connections=100, max_connections_per_source=3)
        conns = [self.connect(f"2001:db8:1:2::{i:x}", 3000 + i) for i in range(1, 5)]
        self.assertEqual([t.disconnected for _, t in conns], [False, False, False, True])
        self.assertFalse(self.connect("2001:db8:1:3::1")[1].disconnected)  # another /64

    def test_one_address_opens_only_so_many_connections_a_second(self) -> None:
        """
        Found by measuring: one ``openssl s_time`` loop (new TLS handshakes,
        nothing else) took two thirds of a core; the per-source cap bounds
        connections held, not opened.
        """
        self.make(connection_rate_per_source=2, connection_burst_per_source=3)
        burst = [self.connect(port=3000 + i) for i in range(4)]
        for proto, transport in burst[:3]:
            proto.connectionLost(Failure(ConnectionDone()))  # each closes: the cap is not it
        self.assertEqual([t.disconnected for _, t in burst], [False, False, False, True])
        self.assertFalse(self.connect("10.0.0.2")[1].disconnected)  # another address
        self.clock.advance(0.4)
        self.assertTrue(self.connect(port=3100)[1].disconnected)  # 0.8 of a connection back
        self.clock.advance(0.1)
        self.assertFalse(self.connect(port=3101)[1].disconnected)  # a whole one
        self.assertEqual(self.site.refused_connections, 2)
        records = self.records()  # the first at once, the rest counted per minute
        self.assertEqual(sum(r["count"] for r in records), 2)
        self.assertEqual({(r["refusal"], r["reason"]) for r in records}, {(
            "connection_refused", "too many new connections from this address (over 2 a second)")})
        self.assertEqual(records[0]["source"], "127.0.0.1:3003")

    def test_the_connection_rate_counts_an_ipv6_host_by_its_64_and_follows_a_reload(self) -> None:
        self.make(connection_rate_per_source=1, connection_burst_per_source=2)
        conns = [self.connect(f"2001:db8:1:2::{i:x}", 3000 + i) for i in range(1, 4)]
        self.assertEqual([t.disconnected for _, t in conns], [False, False, True])
        self.assertFalse(self.connect("2001:db8:1:3::1")[1].disconnected)  # another /64
        # A reload swaps the site's limits: the next connection is judged by them.
        self.site.limits = attrs.evolve(self.site.limits, connection_burst_per_source=5)
        self.clock.advance(10)
        again = [self.connect("2001:db8:1:2::9", 3100 + i) for i in range(6)]
        self.assertEqual([t.disconnected for _, t in again], [False] * 5 + [True])

    def test_a_connection_refused_at_the_gateways_cap_costs_its_source_nothing(self) -> None:
        """From the second reading: the gateway's cap drained a source's connection rate."""
        self.make(max_connections=1, connection_rate_per_source=1,
                  connection_burst_per_source=2)
        first, _ = self.connect(port=3000)
        refused = [self.connect(port=3001 + i)[1] for i in range(2)]  # at the gateway's cap
        self.assertTrue(all(t.disconnected for t in refused))
        first.connectionLost(Failure(ConnectionDone()))
        self.assertFalse(self.connect(port=3009)[1].disconnected)  # its second of two

    def test_the_connection_rate_remembers_a_bounded_number_of_sources(self) -> None:
        from txairflowrpc.gate import limits
        self.patch(limits, "MAX_SOURCES", 3)
        rate = limits.ConnectionRate(self.clock)
        self.assertEqual([rate.take("a", 1.0, 1), rate.take("a", 1.0, 1)], [True, False])
        for source in "bcd":  # "a", seen least recently, is forgotten
            rate.take(source, 1.0, 1)
        self.assertEqual(len(rate), 3)
        self.assertTrue(rate.take("a", 1.0, 1))  # forgetting never refuses: a full bucket
        self.assertFalse(rate.take("d", 1.0, 1))  # "b" was forgotten for "a", not "d"
        self.assertTrue(rate.take("b", 1.0, 1))

    def test_a_delayed_401_is_not_cut_by_the_deadline_nor_kept_after_a_hang_up(self) -> None:
        from txairflowrpc.identity.backoff import Backoff

        self.make(backoff=Backoff(self.clock, maximum=60, free=0), request_deadline_seconds=10)
        self.answer = Unauthenticated("unknown token ID")
        for _ in range(5):  # the back-off grows past the request deadline
            proto, transport = self.connect()
            proto.dataReceived(post())
            proto.connectionLost(Failure(ConnectionDone()))
            self.assertEqual(self.clock.getDelayedCalls(), [])  # nothing kept for it
        proto, transport = self.connect()
        proto.dataReceived(post())
        self.clock.advance(30)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 401 "), transport.value())

    def test_a_slow_drop_names_the_caller_once_known(self) -> None:
        self.make(request_deadline_seconds=10)
        proto, transport = self.connect()
        proto.dataReceived(post(b"<" * 900)[:-10])
        self.clock.advance(10)
        self.assertTrue(transport.disconnected)
        (record,) = [r for r in self.records() if r["refusal"] == "too_slow"]
        self.assertEqual(record["principal"], "ci-bot")

    def test_refusals_from_one_ipv6_64_are_tallied_together(self) -> None:
        """Found by review: a record each per /128 let one host fill the refusal table."""
        for i in range(1, 31):
            proto, _ = self.connect(f"2001:db8:1:2::{i:x}", 5000 + i)
            proto.connectionLost(Failure(SSL.Error([("", "", "no certificate")])))
        self.assertEqual([(r["refusal"], r["count"]) for r in self.records()],
                         [("tls_handshake", 1), ("tls_handshake", 29)])

    def test_a_flood_from_many_sources_writes_a_bounded_number_of_records(self) -> None:
        """
        Found by review: 12,000 IPv6 /64s (one /50) sending one bad request
        each wrote 10,000 records at once and 10,000 more a minute later.
        """
        from txairflowrpc.gate.refusals import MAX_AT_ONCE, MAX_SOURCES

        for i in range(MAX_SOURCES + 500):
            self.refusals.note(f"[2001:db8:{i >> 16:x}:{i & 0xffff:x}::1]:5000",
                               "tls_handshake", {"reason": "no certificate"})
        self.refusals.flush()
        records = self.records()
        self.assertEqual(len(records), MAX_AT_ONCE + (MAX_SOURCES - MAX_AT_ONCE) + 1)
        self.assertEqual(sum(r["count"] for r in records), MAX_SOURCES + 500)  # all counted
        self.assertEqual(records[-1]["source"], "*")

    def test_a_failed_handshake_flood_is_one_record_per_source_and_minute(self) -> None:
        for i in range(50):
            proto, _ = self.connect(port=5000 + i)
            proto.connectionLost(Failure(SSL.Error([("", "", "no certificate")])))
        first = self.records()
        self.assertEqual([(r["refusal"], r["count"]) for r in first],
                         [("tls_handshake", 1), ("tls_handshake", 49)])
        self.assertEqual(self.audit.fsyncs, 2)


class RoutingTests(SiteTestCase):
    def test_only_exactly_rpc2_is_served(self) -> None:
        for path in (b"/RPC2/anything", b"/%52PC2", b"/RPC2?x=1", b"*", b"/"):
            proto, transport = self.connect()
            proto.dataReceived(post(path=path))
            self.assertIn(b"404", transport.value().split(b"\r\n")[0], path)
            self.assertNotIn(b"ci-bot read", transport.value())

    def test_options_star_is_not_answered_200(self) -> None:
        proto, transport = self.connect()
        proto.dataReceived(b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 404"), transport.value())

    def test_a_request_target_is_recorded_only_when_it_is_rpc2(self) -> None:
        """
        Found by review, twice: a query, path parameters, an absolute URI's
        ``user:token@`` and a token pasted into the path reached the trail;
        then masking missed ``//user:JWT@``, ``access_token=`` in the path, a
        fragment, ``http:/user:...@``, ``%5F``-encoded tokens and ``%3B``.
        Any target but ``/RPC2`` is now its keyed digest and size.
        """
        key = b"k" * 32
        self.refusals = RefusalLog(self.audit, self.clock, digest_key=key)
        self.make()
        self.answer = Unauthenticated("no credentials")
        token = "arpc_abcdefghij_" + "S" * 32 + "CRC123"
        jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.SIGNATUREsecretPART"
        targets = [
            "/x?password=hunter2",
            f"https://ci-bot:{token}@gw.example/RPC2",
            f"//ci-bot:{jwt}@gw.example/RPC2",
            f"http:/ci-bot:{jwt}@gw/RPC2",
            "/RPC2;jsessionid=hunter2",
            "/RPC2%3Bjsessionid=hunter2",
            f"/RPC2/access_token={jwt}",
            f"/RPC2#access_token={jwt}",
            f"/x/{token.replace('_', '%5F')}/y",
            "http://gw.example/a;s=hunter2?password=hunter2",
        ]
        for target in map(str.encode, targets):
            before = len(self.records())
            proto, transport = self.connect(port=2300)
            proto.dataReceived(post(path=target))
            self.assertTrue(transport.value().startswith(b"HTTP/1.1 401"), target)
            (record,) = self.records()[before:]
            self.assertNotIn("path", record)
            self.assertEqual(record["target"], {
                "hmac_sha256": hmac.new(key, target, hashlib.sha256).hexdigest(),
                "size": len(target)}, target)
        trail = (self.dir / "audit.jsonl").read_text()
        for secret in ("hunter2", "S" * 32, "SIGNATURE", "eyJ"):
            self.assertNotIn(secret, trail)
        # The target the gateway serves is named as it is.
        proto, transport = self.connect(port=2300)
        proto.dataReceived(post())
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 401"))
        record = self.records()[-1]
        self.assertEqual(record["path"], "/RPC2")
        self.assertNotIn("target", record)
        self.assertEqual(target_fields(b"", key), {})  # none read: nothing said of it

    def test_a_method_is_recorded_only_when_it_is_http_s(self) -> None:
        """Found by review: any token the caller chose was recorded as the method."""
        self.answer = Unauthenticated("no credentials")
        for method, recorded in [(b"GWT_0123456789AB", "other"), (b"GET", "GET"),
                                 (b"POST", "POST")]:
            before = len(self.records())
            proto, transport = self.connect(port=2300)
            proto.dataReceived(method + b" /RPC2 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
            self.assertTrue(transport.value().startswith(b"HTTP/1.1 4"), transport.value())
            (record,) = self.records()[before:]
            self.assertEqual(record["http_method"], recorded, method)
        self.assertNotIn("GWT_", (self.dir / "audit.jsonl").read_text())

    def test_twisteds_own_400s_are_recorded(self) -> None:
        cases = [
            b"POST /RPC2 HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST /RPC2 HTTP/1.1\r\n" + b"X-A: b\r\n" * 501 + b"\r\n",
            b"NONSENSE\r\n\r\n",
        ]
        for raw in cases:
            proto, transport = self.connect()
            proto.dataReceived(raw)
            self.assertTrue(transport.value().startswith(b"HTTP/1.1 400"), raw[:40])
        reasons = {r["reason"] for r in self.records()}
        self.assertEqual(reasons, {"malformed HTTP request"})
        self.assertEqual(self.refusals.noted, 3)

    def test_the_date_header_follows_the_sites_clock(self) -> None:
        dates = []
        for moment in (1767225599.2, 1767225599.9, 1767225600.1):
            self.clock.advance(moment - self.clock.seconds())
            proto, transport = self.connect()
            proto.dataReceived(post())
            (date,) = [line for line in transport.value().split(b"\r\n")
                       if line.lower().startswith(b"date: ")]
            dates.append(date[6:])
        self.assertEqual(dates, [b"Wed, 31 Dec 2025 23:59:59 GMT"] * 2
                         + [b"Thu, 01 Jan 2026 00:00:00 GMT"])
