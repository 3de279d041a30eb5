"""
The listener behind HAProxy, in memory: Twisted's PROXY protocol wrapper, the
real TLS and the real site, as `rpc_listener` stacks them; the client's
address, not the proxy's, wherever the gateway names or counts a source.
"""

from __future__ import annotations

import json
import xmlrpc.client
from pathlib import Path
from typing import Any

import attrs
import pytest
from treq.testing import StubTreq
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory
from twisted.internet.ssl import Certificate, PrivateCertificate, optionsForClientTLS
from twisted.internet.testing import MemoryReactorClock
from twisted.protocols.haproxy._wrapper import HAProxyWrappingFactory
from twisted.protocols.tls import TLSMemoryBIOFactory

from txairflowrpc.devstack.pki import ClientFiles, DevPKI
from txairflowrpc.gate.proxied import ProxiedFactory
from txairflowrpc.gate.site import SiteTLSFactory
from txairflowrpc.gate.tls import ReloadableTLS, server_options
from txairflowrpc.identity.authenticate import Gate
from txairflowrpc.service.checked import build_authenticator, load_checked
from txairflowrpc.service.tap import build_site, rpc_listener

from ..fakes import FakeAirflow
from ..proxyproto import header_v2
from .helpers import audit_log
from .test_access import load, pki  # noqa: F401
from .test_tls_memory import Collector as Whoami, Wire

HAPROXY = ("127.0.0.1", 50000)
CLIENT = ("203.0.113.7", 41000)
GATEWAY = ("127.0.0.1", 8443)



@attrs.define
class Connection:
    server: Any  # the outermost protocol: Twisted's PROXY protocol wrapper
    wire: Wire
    client: Any = None  # the client's TLS protocol, once it speaks
    client_wire: Wire | None = None

    @property
    def answer(self) -> bytes:
        return self.client.wrappedProtocol.received if self.client is not None else b""


class Listener:
    """The gateway's listener as `rpc_listener` builds it, on a memory reactor."""

    def __init__(self, tmp_path: Path, pki: DevPKI, **limits: Any) -> None:  # noqa: F811
        cfg = load(tmp_path, pki)
        self.cfg = cfg = attrs.evolve(
            cfg, listen=attrs.evolve(cfg.listen, proxy_protocol=True),
            limits=attrs.evolve(cfg.limits, **limits))
        self.pki = pki
        self.reactor = MemoryReactorClock()
        self.audit = audit_log(str(tmp_path), self.reactor)
        gate = Gate(build_authenticator(load_checked(cfg.source), http=None, clock=self.reactor))
        self.site = build_site(cfg, self.reactor, StubTreq(FakeAirflow()), self.audit,
                               gate.authenticate).site
        self.tls = ReloadableTLS(server_options(cfg.tls, "required"))
        self.listener = rpc_listener(self.reactor, cfg, self.tls, self.site)
        self.listener.startService()
        self.path = tmp_path / "audit.jsonl"

    @property
    def factory(self) -> Any:
        """The outermost factory: `header_guard`'s, around Twisted's PROXY wrapper."""
        (port, factory, _, interface), = self.reactor.tcpServers
        assert (port, interface) == (8443, "127.0.0.1")
        return factory

    @property
    def proxied(self) -> ProxiedFactory:
        proxied: ProxiedFactory = self.factory.wrappedFactory.wrappedFactory
        return proxied

    def accept(self, sender: tuple[str, int] = HAPROXY) -> Connection:
        address = IPv4Address("TCP", *sender)
        server = self.factory.buildProtocol(address)
        wire = Wire(hostAddress=IPv4Address("TCP", *GATEWAY), peerAddress=address)
        server.makeConnection(wire)
        return Connection(server, wire)

    def speak_tls(self, conn: Connection, client: ClientFiles | None, first: bytes = b"") -> None:
        """Start a TLS client on ``conn`` (``first`` goes before its first bytes) and run it."""
        ca = Certificate.loadPEM(self.pki.ca_file.read_bytes())
        identity = None
        if client is not None:
            pem = client.cert.read_bytes() + client.key.read_bytes()
            identity = PrivateCertificate.loadPEM(pem)
        options = optionsForClientTLS("localhost", trustRoot=ca, clientCertificate=identity)
        factory = TLSMemoryBIOFactory(options, True, Factory.forProtocol(Whoami),
                                      clock=self.reactor)
        conn.client = factory.buildProtocol(IPv4Address("TCP", *GATEWAY))
        conn.client_wire = Wire()
        conn.client.makeConnection(conn.client_wire)
        pending = first
        for _ in range(100):  # shuttle bytes both ways until both sides are quiet
            self.reactor.advance(0)
            to_server, to_client = pending + conn.client_wire.value(), conn.wire.value()
            pending = b""
            conn.client_wire.clear()
            conn.wire.clear()
            if not to_server and not to_client:
                break
            if to_server and not conn.wire.disconnecting:
                conn.server.dataReceived(to_server)
            if to_client:
                conn.client.dataReceived(to_client)

    def close(self, conn: Connection) -> None:
        """The transport reports the connection lost (as the reactor would)."""
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure
        conn.server.connectionLost(Failure(ConnectionDone()))

    def records(self, **match: Any) -> list[dict[str, Any]]:
        self.site.refusals.flush()
        lines = self.path.read_text().splitlines() if self.path.exists() else []
        return [r for r in map(json.loads, lines)
                if all(r.get(k) == v for k, v in match.items())]


@pytest.fixture
def gw(tmp_path: Path, pki: DevPKI) -> Listener:  # noqa: F811
    return Listener(tmp_path, pki)


def test_the_listener_reads_the_header_before_tls(gw: Listener) -> None:
    # The guard outermost, then Twisted's PROXY wrapper, then the factory that
    # waits for the header, then TLS, then the site.
    assert isinstance(gw.factory.wrappedFactory, HAProxyWrappingFactory)
    assert isinstance(gw.proxied, ProxiedFactory)
    assert isinstance(gw.proxied.inner, SiteTLSFactory)
    assert gw.proxied.inner.wrappedFactory is gw.site
    assert gw.listener.address == "127.0.0.1:8443 (PROXY protocol)"


def test_without_the_key_the_listener_is_plain_tls(
    tmp_path: Path, pki: DevPKI  # noqa: F811
) -> None:
    cfg = load(tmp_path, pki)
    reactor = MemoryReactorClock()
    site = build_site(cfg, reactor, StubTreq(FakeAirflow()), None, lambda r: None).site
    rpc_listener(reactor, cfg, ReloadableTLS(server_options(cfg.tls, "required")),
                 site).startService()
    (_, factory, _, _), = reactor.tcpServers
    assert isinstance(factory, SiteTLSFactory) and factory.wrappedFactory is site


def test_a_call_through_the_proxy_is_counted_and_recorded_as_the_clients(gw: Listener) -> None:
    conn = gw.accept()
    assert gw.site.open_connections == 0  # not counted before the header says whose it is
    gw.speak_tls(conn, gw.pki.client("ci-bot.example.com"), first=header_v2(CLIENT, GATEWAY))
    assert conn.answer.startswith(b"HTTP/1.1 200"), conn.answer
    (me,), _ = xmlrpc.client.loads(conn.answer.partition(b"\r\n\r\n")[2])
    # Mutual TLS end to end: the client's certificate names the principal.
    assert (me["principal"], me["authenticated_by"]) == ("ci-bot", "client_certificate")
    (call,) = gw.records(kind="call", method="whoami")
    assert call["source"] == "203.0.113.7:41000"
    assert gw.site.connections.sources() == {"203.0.113.7"}


def test_a_failed_handshake_behind_the_proxy_is_recorded_as_the_clients(gw: Listener) -> None:
    conn = gw.accept()
    gw.speak_tls(conn, None, first=header_v2(CLIENT, GATEWAY))  # no client certificate
    assert conn.answer == b"" and conn.wire.disconnecting
    gw.close(conn)
    (refused,) = gw.records(refusal="tls_handshake")
    assert refused["source"] == "203.0.113.7:41000"


def test_tls_without_a_header_is_refused_and_recorded(gw: Listener) -> None:
    conn = gw.accept()
    gw.speak_tls(conn, gw.pki.client("ci-bot.example.com"))  # straight to the port: no header
    assert conn.answer == b"" and conn.wire.disconnecting
    gw.close(conn)
    (refused,) = gw.records(kind="refused")
    assert (refused["refusal"], refused["source"], refused["reason"]) == (
        "proxy_header", "127.0.0.1:50000", "no valid PROXY protocol header: refused")
    assert gw.site.open_connections == 0 and gw.proxied.waiting == 0


def test_a_malformed_header_is_refused_and_recorded(gw: Listener) -> None:
    bad = bytearray(header_v2(CLIENT, GATEWAY))
    bad[12] = 0x31  # protocol version 3
    conn = gw.accept()
    conn.server.dataReceived(bytes(bad))
    assert conn.wire.disconnecting
    gw.close(conn)
    assert [r["refusal"] for r in gw.records(kind="refused")] == ["proxy_header"]


@pytest.mark.parametrize("header", [
    b"PROXY TCP4 not-an-ip 127.0.0.1 1 8443\r\n",
    b"PROXY TCP4 203.0.113.7 127.0.0.1 99999999 8443\r\n",
    b"PROXY TCP6 203.0.113.7 127.0.0.1 1 8443\r\n",
])
def test_a_header_naming_no_ip_address_and_port_is_refused(gw: Listener, header: bytes) -> None:
    """Found by review: Twisted's v1 reader took ``not-an-ip:1`` into the trail as a source."""
    conn = gw.accept()
    conn.server.dataReceived(header + b"\x16\x03\x01")
    assert conn.wire.disconnecting and gw.site.open_connections == 0
    gw.close(conn)
    (refused,) = gw.records(kind="refused")
    assert (refused["refusal"], refused["source"], refused["reason"]) == (
        "proxy_header", "127.0.0.1:50000",
        "the PROXY protocol header names no IP address and port: refused")


def test_a_connection_that_just_hangs_up_is_not_a_refusal(gw: Listener) -> None:
    conn = gw.accept()
    gw.close(conn)  # a port probe: connect, then close, as without the PROXY protocol
    assert gw.records(kind="refused") == []
    assert gw.proxied.waiting == 0


def test_only_proxy_from_may_send_a_header(gw: Listener) -> None:
    conn = gw.accept(("198.51.100.9", 4000))  # not in listen.proxy_from (loopback)
    assert conn.wire.disconnected  # closed before a byte of it is read
    (refused,) = gw.records(kind="refused")
    assert (refused["refusal"], refused["source"]) == ("connection_refused", "198.51.100.9:4000")
    assert "listen.proxy_from" in refused["reason"]
    assert gw.site.refused_connections == 1


def test_the_per_source_cap_counts_clients_not_the_proxy(
    tmp_path: Path, pki: DevPKI  # noqa: F811
) -> None:
    gw = Listener(tmp_path, pki, max_connections_per_source=2)
    a = [gw.accept(("127.0.0.1", 50000 + i)) for i in range(3)]
    for i, conn in enumerate(a):
        conn.server.dataReceived(header_v2(("192.0.2.1", 1000 + i), GATEWAY) + b"\x16\x03\x01")
    assert [c.wire.disconnected for c in a] == [False, False, True]
    other = gw.accept(("127.0.0.1", 50009))  # through the same proxy, another client
    other.server.dataReceived(header_v2(("192.0.2.2", 2000), GATEWAY) + b"\x16\x03\x01")
    assert not other.wire.disconnected
    (refused,) = gw.records(refusal="connection_refused")
    assert refused["source"] == "192.0.2.1:1002"
    assert gw.site.connections.sources() == {"192.0.2.1", "192.0.2.2"}


def test_a_silent_connection_is_dropped_at_the_handshake_deadline(
    tmp_path: Path, pki: DevPKI  # noqa: F811
) -> None:
    gw = Listener(tmp_path, pki, handshake_timeout_seconds=3)
    silent, header_only = gw.accept(), gw.accept(("127.0.0.1", 50001))
    header_only.server.dataReceived(header_v2(CLIENT, GATEWAY))
    gw.reactor.advance(2.9)
    assert not silent.wire.disconnected and not header_only.wire.disconnected
    gw.reactor.advance(0.1)
    assert silent.wire.disconnected and header_only.wire.disconnected
    gw.close(silent), gw.close(header_only)
    found = {(r["refusal"], r["source"]) for r in gw.records(kind="refused")}
    assert found == {("proxy_header", "127.0.0.1:50000"), ("handshake", "203.0.113.7:41000")}
    assert gw.site.slow_dropped == 2 and gw.proxied.waiting == 0


def test_connections_waiting_for_their_header_are_capped(
    tmp_path: Path, pki: DevPKI  # noqa: F811
) -> None:
    gw = Listener(tmp_path, pki, max_connections=2)
    waiting = [gw.accept(("127.0.0.1", 50000 + i)) for i in range(3)]
    assert [c.wire.disconnected for c in waiting] == [False, False, True]
    (refused,) = gw.records(refusal="connection_refused")
    assert "waiting for their PROXY protocol header" in refused["reason"]
    waiting[0].server.dataReceived(header_v2(CLIENT, GATEWAY) + b"\x16\x03\x01")
    assert not gw.accept(("127.0.0.1", 50005)).wire.disconnected  # one left: room again


def test_when_the_listener_stops_connections_waiting_for_a_header_are_closed(
    gw: Listener,
) -> None:
    waiting, admitted = gw.accept(), gw.accept(("127.0.0.1", 50001))
    admitted.server.dataReceived(header_v2(CLIENT, GATEWAY) + b"\x16\x03\x01")
    gw.factory.doStop()  # the port stopped listening: the gateway is shutting down
    assert waiting.wire.disconnected and not admitted.wire.disconnected
    gw.close(waiting)
    assert gw.records(kind="refused") == [] and gw.proxied.waiting == 0


@pytest.mark.parametrize("header", [
    b"PROXY TCP4 203.0.113.7 127.0.0.1 http 8443\r\n",  # int(): ValueError
    b"PROXY TCP4 \xff\xfe.0.113.7 127.0.0.1 1 8443\r\n",  # .decode(): UnicodeDecodeError
])
def test_a_header_twisted_cannot_read_is_refused_without_a_traceback(
    gw: Listener, header: bytes
) -> None:
    """
    Twisted's v1 reader raises a ValueError (not its InvalidProxyHeader) for
    these: it escaped its wrapper, a traceback in the log for each.
    """
    conn = gw.accept()
    conn.server.dataReceived(header + b"\x16\x03\x01")  # raised here before
    assert conn.wire.disconnecting and gw.site.open_connections == 0
    gw.close(conn)
    (refused,) = gw.records(kind="refused")
    assert (refused["refusal"], refused["source"], refused["reason"]) == (
        "proxy_header", "127.0.0.1:50000", "no valid PROXY protocol header: refused")
    assert gw.proxied.waiting == 0


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_a_header_that_arrives_byte_by_byte_is_read(gw: Listener, version: str) -> None:
    """Twisted's wrapper refused a first read shorter than 16 (v2) or 8 (v1) bytes."""
    header = (b"PROXY TCP4 203.0.113.7 127.0.0.1 41000 8443\r\n" if version == "v1"
              else header_v2(CLIENT, GATEWAY))
    conn = gw.accept()
    for i in range(len(header)):
        conn.server.dataReceived(header[i:i + 1])
        assert not conn.wire.disconnecting, i
    gw.speak_tls(conn, gw.pki.client("ci-bot.example.com"))
    assert conn.answer.startswith(b"HTTP/1.1 200"), conn.answer
    (call,) = gw.records(kind="call", method="whoami")
    assert call["source"] == "203.0.113.7:41000"


@pytest.mark.parametrize("first", [b"\x16", b"\x16\x03\x01", b"GET / HTTP/1.1\r\n", b"PROXY\t"])
def test_bytes_no_header_starts_with_are_refused_at_once(gw: Listener, first: bytes) -> None:
    """Held only while they may still be a header: these are refused on arrival."""
    conn = gw.accept()
    conn.server.dataReceived(first)
    assert conn.wire.disconnecting
    gw.close(conn)
    assert [r["refusal"] for r in gw.records(kind="refused")] == ["proxy_header"]


@pytest.mark.parametrize("header", [
    b"PROXY UNKNOWN\r\n",  # the spec's bare form: Twisted's reader alone refused it
    b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n",
    b"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00",  # v2 LOCAL: HAProxy's own health check
])
def test_a_header_naming_no_client_is_the_proxys_own_connection(
    gw: Listener, header: bytes
) -> None:
    conn = gw.accept()
    gw.speak_tls(conn, gw.pki.client("ci-bot.example.com"), first=header)
    assert conn.answer.startswith(b"HTTP/1.1 200"), conn.answer
    (call,) = gw.records(kind="call", method="whoami")
    assert call["source"] == "127.0.0.1:50000"  # the sender's address stands


def test_silent_connections_through_the_proxy_are_counted_for_their_client(
    tmp_path: Path, pki: DevPKI  # noqa: F811
) -> None:
    """
    Found by review: HAProxy sends the header as it connects, but the site
    took a connection only at the client's first byte after it.  A client
    that connects through HAProxy and says nothing was counted by no
    source: 20 such connections from one address, past a per-source cap of
    4, filled the cap on connections waiting for a header and locked
    everyone out.  The site now takes it as soon as the header is in.
    """
    gw = Listener(tmp_path, pki, max_connections=4, max_connections_per_source=2)
    silent = []
    for i in range(6):  # as HAProxy opens them: each with its header, then nothing
        silent.append(conn := gw.accept(("127.0.0.1", 50000 + i)))
        conn.server.dataReceived(header_v2(("192.0.2.66", 3000 + i), GATEWAY))
    assert [c.wire.disconnected for c in silent] == [False, False] + [True] * 4
    assert gw.proxied.waiting == 0 and gw.site.connections.sources() == {"192.0.2.66"}
    refused = gw.records(refusal="connection_refused")
    assert refused and {r["source"].rpartition(":")[0] for r in refused} == {"192.0.2.66"}
    assert gw.site.refused_connections == 4
    other = gw.accept(("127.0.0.1", 50010))  # another client through the same proxy
    gw.speak_tls(other, gw.pki.client("ci-bot.example.com"),
                 first=header_v2(("192.0.2.2", 2000), GATEWAY))
    assert other.answer.startswith(b"HTTP/1.1 200"), other.answer


def test_a_header_naming_no_client_followed_by_nothing_is_the_proxys_slow_handshake(
    tmp_path: Path, pki: DevPKI  # noqa: F811
) -> None:
    """Found by review: a valid LOCAL header was recorded as no header at all."""
    gw = Listener(tmp_path, pki, handshake_timeout_seconds=3)
    conn = gw.accept()
    conn.server.dataReceived(b"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00")  # v2 LOCAL
    assert gw.proxied.waiting == 0 and gw.site.open_connections == 1
    gw.reactor.advance(3)
    assert conn.wire.disconnected
    gw.close(conn)
    (refused,) = gw.records(kind="refused")
    assert (refused["refusal"], refused["source"]) == ("handshake", "127.0.0.1:50000")


def test_an_ipv4_proxy_on_a_dual_stack_listener_is_a_trusted_sender() -> None:
    """Found by review: with listen.host = "::", ::ffff:127.0.0.1 matched no network."""
    import ipaddress

    from twisted.internet.address import IPv6Address

    from txairflowrpc.gate.proxied import trusted

    loopback = [ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")]
    assert trusted(IPv6Address("TCP", "::ffff:127.0.0.1", 5000), loopback)
    assert trusted(IPv6Address("TCP", "::1", 5000), loopback)
    assert not trusted(IPv6Address("TCP", "::ffff:198.51.100.9", 5000), loopback)
    assert not trusted(IPv6Address("TCP", "::ffff:7f00:1", 5000), [])


def _dgram(header: bytes) -> bytes:
    return header[:13] + bytes([header[13] + 1]) + header[14:]  # 0x11 -> 0x12: UDP over IPv4


@pytest.mark.parametrize("header", [
    # Found by review: a zone's text reached the trail as part of a source.
    b'PROXY TCP6 fe80::1%evil"x ::1 7 8443\r\n',
    # Longer than the spec's 107 bytes, taken by Twisted's reader in one read.
    b"PROXY TCP4 203.0.113.7 127.0.0.1 41000 8443" + b" " * 80 + b"\r\n",
    b"PROXY TCP4 203.0.113.7 " + b"1" * 200,  # no line end within 107 bytes: not held
    _dgram(header_v2(CLIENT, GATEWAY)),  # a UDP client is no TCP peer
])
def test_a_header_the_spec_or_tcp_has_no_place_for_is_refused(
    gw: Listener, header: bytes
) -> None:
    conn = gw.accept()
    conn.server.dataReceived(header + b"\x16\x03\x01")
    assert conn.wire.disconnecting and gw.site.open_connections == 0
    gw.close(conn)
    (refused,) = gw.records(kind="refused")
    assert (refused["refusal"], refused["source"]) == ("proxy_header", "127.0.0.1:50000")
    assert "evil" not in json.dumps(gw.records())
    assert gw.proxied.waiting == 0


def test_an_ipv6_client_is_named_one_way_however_it_came() -> None:
    from twisted.internet.address import IPv6Address

    from txairflowrpc.gate.site import address_text

    assert address_text(IPv6Address("TCP", "2001:db8:1:0:0:0:0:5", 10)) == "2001:db8:1::5:10"
    assert address_text(IPv6Address("TCP", "2001:db8:1::5", 10)) == "2001:db8:1::5:10"
    assert address_text(IPv6Address("TCP", "0:0:0:0:0:ffff:c633:641f", 31)) == "198.51.100.31:31"
    assert address_text(IPv4Address("TCP", "203.0.113.7", 41000)) == "203.0.113.7:41000"


def test_an_ipv6_client_through_the_proxy_is_recorded_in_its_short_form(gw: Listener) -> None:
    conn = gw.accept()
    gw.speak_tls(conn, gw.pki.client("ci-bot.example.com"),
                 first=header_v2(("2001:db8:1::5", 41000), ("::1", 8443)))
    assert conn.answer.startswith(b"HTTP/1.1 200"), conn.answer
    (call,) = gw.records(kind="call", method="whoami")
    assert call["source"] == "2001:db8:1::5:41000"


def test_a_proxy_from_network_written_in_the_mapped_form_still_matches() -> None:
    """Found by review: ::ffff:127.0.0.0/104 was how a dual-stack listener was made to work."""
    import ipaddress

    from twisted.internet.address import IPv6Address

    from txairflowrpc.gate.proxied import trusted

    mapped = [ipaddress.ip_network("::ffff:127.0.0.0/104")]
    assert trusted(IPv6Address("TCP", "::ffff:127.0.0.1", 5000), mapped)
