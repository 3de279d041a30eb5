"""The site's connection-level limits, on a StringTransport: body caps, deadlines, the connection cap."""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from txairflowrpc.gate.site import GatewaySite

from .helpers import CONFIG


def channel(**limits: Any) -> tuple[Any, StringTransport, Clock, GatewaySite]:
    import attrs
    from twisted.web.resource import Resource

    clock = Clock()
    cfg = attrs.evolve(CONFIG.limits, **limits)
    site = GatewaySite(Resource(), audit=None, clock=clock, limits=cfg, max_body_bytes=1000)
    proto = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1234))
    transport = StringTransport()
    proto.makeConnection(transport)
    return proto, transport, clock, site


class SiteLimitTests(SynchronousTestCase):
    def test_declared_body_over_the_cap_is_413_before_it_is_read(self) -> None:
        proto, transport, _, _ = channel()
        proto.dataReceived(b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml\r\n"
                           b"Content-Length: 5000000\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 413 Content Too Large\r\n"))
        self.assertTrue(transport.disconnecting)

    def test_chunked_body_is_cut_at_the_cap(self) -> None:
        proto, transport, _, _ = channel()
        proto.dataReceived(b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml\r\n"
                           b"Transfer-Encoding: chunked\r\n\r\n")
        for _ in range(3):
            proto.dataReceived(b"200\r\n" + b"x" * 0x200 + b"\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 413"))
        self.assertLessEqual(proto.requests[-1].content.tell(), 1000)

    def test_a_slow_request_is_dropped_at_its_deadline(self) -> None:
        proto, transport, clock, site = channel(request_deadline_seconds=10)
        proto.dataReceived(b"POST /RPC2 HTTP/1.1\r\n")
        clock.advance(5)
        proto.dataReceived(b"Host: x\r\n")  # slowloris: a byte now and then
        self.assertFalse(transport.disconnecting)
        clock.advance(5)
        self.assertTrue(transport.disconnected)
        self.assertEqual(site.slow_dropped, 1)

    def test_a_silent_connection_is_dropped_at_the_handshake_deadline(self) -> None:
        proto, transport, clock, site = channel(handshake_timeout_seconds=3)
        clock.advance(3)
        self.assertTrue(transport.disconnected)

    def test_connections_over_the_cap_are_closed_at_once_and_counted(self) -> None:
        _, _, _, site = channel(max_connections=1)
        extra = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1235))
        transport = StringTransport()
        extra.makeConnection(transport)
        self.assertTrue(transport.disconnected)
        self.assertEqual(site.refused_connections, 1)
