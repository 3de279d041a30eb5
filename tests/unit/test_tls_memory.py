"""
The gateway's TLS in memory: the real site behind the real server options,
a TLS client on the other side, bytes carried between them by the test.
"""

from __future__ import annotations

import ctypes
import datetime
import gc
import xmlrpc.client
from pathlib import Path
from typing import Any

import attrs
import pytest
from OpenSSL import SSL
from OpenSSL._util import ffi as _ffi
from treq.testing import RequestTraversalAgent
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import Certificate, PrivateCertificate, optionsForClientTLS
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory
from twisted.python.failure import Failure

from txairflowrpc.devstack.pki import ClientFiles, DevPKI
from txairflowrpc.gate.site import SiteTLSFactory
from txairflowrpc.gate.tls import (
    ReloadableTLS,
    certificate_refusal,
    release_buffers,
    server_options,
)
from txairflowrpc.identity.authenticate import Gate
from txairflowrpc.service.checked import build_authenticator, load_checked
from txairflowrpc.service.tap import build_site

from ..fakes import FakeAirflow
from .test_access import load, pki  # noqa: F401

ADDRESS = IPv4Address("TCP", "127.0.0.1", 4443)


class Wire(StringTransport):
    """A TCP-like transport in memory."""

    def setTcpNoDelay(self, enabled: bool) -> None:
        pass


class _KeepAlive(Protocol):
    """A client that writes what it is told and keeps what it gets."""

    def connectionMade(self) -> None:
        self.received = b""

    def dataReceived(self, data: bytes) -> None:
        self.received += data


class Collector(_KeepAlive):
    """A client that asks whoami once, on a connection it closes."""

    def connectionMade(self) -> None:
        super().connectionMade()
        body = xmlrpc.client.dumps((), "whoami").encode()
        self.transport.write(
            b"POST /RPC2 HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/xml\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)


def _shuttle(clock: Clock, server_side: Any, server_wire: Wire, client_side: Any,
             client_wire: Wire) -> None:
    """Carry bytes both ways, a reactor turn at a time, until both sides are quiet."""
    for _ in range(100):
        clock.advance(0)
        to_server, to_client = client_wire.value(), server_wire.value()
        client_wire.clear()
        server_wire.clear()
        if not to_server and not to_client:
            return
        if to_server:
            server_side.dataReceived(to_server)
        if to_client:
            client_side.dataReceived(to_client)


def _tls_server(
    cfg: Any, clock: Clock, mode: str = "optional",
    authenticate: Any = lambda request: None,
) -> SiteTLSFactory:
    """
    The real site of ``cfg`` behind TLS (client certificates ``mode``),
    driven by ``clock``; its site is the factory's ``wrappedFactory``.
    """
    site = build_site(cfg, clock, RequestTraversalAgent(FakeAirflow()), None, authenticate).site
    return SiteTLSFactory(ReloadableTLS(server_options(cfg.tls, mode)), False, site, clock=clock)


def _connect(
    tmp_path: Path, pki: DevPKI, client: ClientFiles | None,  # noqa: F811
    protocol: type[Protocol],
) -> tuple[Clock, Any, Wire, Any, Wire]:
    """
    The real site behind TLS (client certificates required) and a TLS
    client running ``protocol``, connected but not yet shuttled: the clock,
    then each side's TLS protocol and wire.
    """
    cfg = load(tmp_path, pki)
    clock = Clock()
    gate = Gate(build_authenticator(load_checked(cfg.source), http=None, clock=clock))
    # TLS batches small writes with the clock: the same Clock runs both sides.
    server = _tls_server(cfg, clock, "required", gate.authenticate)
    ca = Certificate.loadPEM(pki.ca_file.read_bytes())
    identity = None
    if client is not None:
        identity = PrivateCertificate.loadPEM(client.cert.read_bytes() + client.key.read_bytes())
    options = optionsForClientTLS("localhost", trustRoot=ca, clientCertificate=identity)
    client_factory = TLSMemoryBIOFactory(options, True, Factory.forProtocol(protocol),
                                         clock=clock)
    server_side, client_side = server.buildProtocol(ADDRESS), client_factory.buildProtocol(ADDRESS)
    server_wire, client_wire = Wire(), Wire()
    server_side.makeConnection(server_wire)
    client_side.makeConnection(client_wire)
    return clock, server_side, server_wire, client_side, client_wire


def exchange(
    tmp_path: Path, pki: DevPKI, client: ClientFiles | None  # noqa: F811
) -> tuple[Collector, Wire]:
    """One whoami over TLS in memory: what the client got, and the server's wire."""
    clock, server_side, server_wire, client_side, client_wire = _connect(
        tmp_path, pki, client, Collector)
    _shuttle(clock, server_side, server_wire, client_side, client_wire)
    return client_side.wrappedProtocol, server_wire


def refused_handshake(
    tmp_path: Path, pki: DevPKI, client: ClientFiles | None  # noqa: F811
) -> dict[str, Any]:
    """
    A handshake the server refuses, and what the site noted of it (the fields
    of its ``tls_handshake`` refusal), once the connection is gone.
    """
    clock, server_side, server_wire, client_side, client_wire = _connect(
        tmp_path, pki, client, Collector)
    noted: list[tuple[str, dict[str, Any]]] = []
    refusals = server_side.factory.wrappedFactory.refusals
    refusals.note = lambda source, kind, fields, **_: noted.append((kind, fields))
    _shuttle(clock, server_side, server_wire, client_side, client_wire)
    assert client_side.wrappedProtocol.received == b""  # no HTTP answer at all
    assert server_wire.disconnecting  # the server closed the connection
    server_side.connectionLost(Failure(ConnectionDone()))
    (kind, fields), = noted
    assert kind == "tls_handshake"
    return fields


def test_a_client_certificate_from_the_ca_gets_in(tmp_path: Path, pki: DevPKI) -> None:  # noqa: F811
    answer, _ = exchange(tmp_path, pki, pki.client("ci-bot.example.com"))
    assert answer.received.startswith(b"HTTP/1.1 200")
    (me,), _ = xmlrpc.client.loads(answer.received.partition(b"\r\n\r\n")[2])
    assert (me["principal"], me["authenticated_by"]) == ("ci-bot", "client_certificate")


def test_no_client_certificate_fails_the_handshake(tmp_path: Path, pki: DevPKI) -> None:  # noqa: F811
    fields = refused_handshake(tmp_path, pki, None)
    assert fields["tls_error"] == "peer did not return a certificate"
    assert fields["tls_certificate"] is None  # none was presented: nothing to explain


def test_a_certificate_from_another_ca_fails_the_handshake_and_says_why(
    tmp_path: Path, pki: DevPKI  # noqa: F811
) -> None:
    stranger = DevPKI.create(tmp_path / "other").client("ci-bot.example.com")
    fields = refused_handshake(tmp_path, pki, stranger)
    assert fields["tls_error"] == "certificate verify failed"
    refused = fields["tls_certificate"]
    assert (refused["error"], refused["depth"]) == ("unable to get local issuer certificate", 0)
    assert refused["subject"].startswith("CN=ci-bot.example.com,")


def test_an_expired_certificate_fails_the_handshake_and_says_so(
    tmp_path: Path, pki: DevPKI  # noqa: F811
) -> None:
    """
    Found by ops: a refused certificate's record said only "certificate
    verify failed"; which certificate, and why, had to be guessed.
    """
    past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=1)
    expired = pki.client("etl-bot-expired", not_after=past)
    fields = refused_handshake(tmp_path, pki, expired)
    assert fields["tls_error"] == "certificate verify failed"
    assert fields["tls_certificate"]["error"] == "certificate has expired"
    assert fields["tls_certificate"]["depth"] == 0
    assert fields["tls_certificate"]["subject"].startswith("CN=etl-bot-expired,")


def test_the_verify_callback_keeps_the_verdict_of_openssl(
    tmp_path: Path, pki: DevPKI  # noqa: F811
) -> None:
    """A certificate that passes gets in, and its connection holds no refusal."""
    clock, server_side, server_wire, client_side, client_wire = _connect(
        tmp_path, pki, pki.client("ci-bot.example.com"), Collector)
    _shuttle(clock, server_side, server_wire, client_side, client_wire)
    assert client_side.wrappedProtocol.received.startswith(b"HTTP/1.1 200")
    assert certificate_refusal(server_side) is None



def test_a_connection_the_site_refuses_gets_no_tls_at_all(
    tmp_path: Path, pki: DevPKI  # noqa: F811
) -> None:
    """
    Found by measuring: refusing through a TLS protocol (built, started,
    aborted, shut down) cost about 0.5 ms per connection; a flood of bare
    connects took 70% of a core.  Now the reactor just closes the socket.
    """
    cfg = load(tmp_path, pki)
    cfg = attrs.evolve(cfg, limits=attrs.evolve(cfg.limits, max_connections_per_source=1))
    clock = Clock()
    refusals: list[tuple[str, str]] = []
    server = _tls_server(cfg, clock, "required")
    site = server.wrappedFactory
    site.refusals.note = lambda source, kind, fields: refusals.append((source, kind))
    first = server.buildProtocol(ADDRESS)
    assert first is not None and first.wrappedProtocol.source == ADDRESS.host
    assert server.buildProtocol(ADDRESS) is None  # over its cap: tcp.Port closes the socket
    assert refusals == [(f"{ADDRESS.host}:{ADDRESS.port}", "connection_refused")]
    assert site.refused_connections == 1 and site.open_connections == 1


def _carry(one: SSL.Connection, other: SSL.Connection) -> None:
    """Move whatever each side wrote to the other, in one chunk each way."""
    for source, sink in ((one, other), (other, one)):
        try:
            sink.bio_write(source.bio_read(1 << 17))
        except SSL.WantReadError:
            pass


def test_a_client_cannot_renegotiate(tmp_path: Path, pki: DevPKI) -> None:  # noqa: F811
    """
    The certificate a connection proved at its handshake is its certificate
    for good (keep-alive requests reuse the verdict): a TLS 1.2 client's
    renegotiation, which could present another one, is refused.  OpenSSL 3
    refuses it by default; the gateway's context says so itself, whatever
    OpenSSL the cryptography wheel brings.
    """
    cfg = load(tmp_path, pki)
    server = ReloadableTLS(server_options(cfg.tls, "optional")).serverConnectionForTLS(None)
    server.set_accept_state()
    context = SSL.Context(SSL.TLS_METHOD)
    context.set_max_proto_version(SSL.TLS1_2_VERSION)
    client = SSL.Connection(context, None)
    client.set_connect_state()

    def step(action: Any) -> Any:
        try:
            return action()
        except SSL.WantReadError:
            return None
        except SSL.Error as e:
            return e

    for _ in range(5):
        step(client.do_handshake)
        _carry(client, server)
        step(server.do_handshake)
        _carry(client, server)
    assert client.get_protocol_version_name() == "TLSv1.2"
    assert client.renegotiate()
    outcomes = []
    for _ in range(3):
        outcomes.append(step(client.do_handshake))
        _carry(client, server)
        step(lambda: server.recv(1))
        _carry(client, server)
    assert "no renegotiation" in repr([o for o in outcomes if o is not None])
    assert server.total_renegotiations() == 0


def _garbage_of(scenario: Any) -> list[Any]:
    """
    The failures and OpenSSL connections that ``scenario()`` leaves to the
    cyclic collector (unreachable, kept alive only by cycles).
    """
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        scenario()
        gc.collect()
        return [o for o in gc.garbage if isinstance(o, (Failure, SSL.Connection))]
    finally:
        gc.set_debug(0)
        del gc.garbage[:]
        gc.enable()


@pytest.mark.parametrize("close", ["bare connect", "client hello", "after handshake",
                                   "corrupt record"])
def test_a_closed_connection_leaves_no_cycle(
    tmp_path: Path, pki: DevPKI, close: str  # noqa: F811
) -> None:
    """
    Found by an attacker's review: Twisted's TLS layer makes the reason a
    connection ends a `Failure` held by the frame its own traceback holds,
    and that cycle kept the OpenSSL connection and its last read buffer
    (65-250 KB) until the cyclic collector ran; a bare connect and close
    from anyone, before any handshake, made one.  `SiteTLSFactory`'s
    protocol cleans that failure, so reference counting frees it all.
    """
    clock = Clock()
    server = _tls_server(load(tmp_path, pki), clock)
    ca = Certificate.loadPEM(pki.ca_file.read_bytes())
    client_factory = TLSMemoryBIOFactory(optionsForClientTLS("localhost", trustRoot=ca), True,
                                         Factory.forProtocol(Protocol), clock=clock)

    def scenario() -> None:
        server_side, server_wire = server.buildProtocol(ADDRESS), Wire()
        server_side.makeConnection(server_wire)
        if close != "bare connect":
            client_side, client_wire = client_factory.buildProtocol(ADDRESS), Wire()
            client_side.makeConnection(client_wire)
            hello = client_wire.value()
            client_wire.clear()
            server_side.dataReceived(hello)
        if close in ("after handshake", "corrupt record"):
            _shuttle(clock, server_side, server_wire, client_side, client_wire)
            assert server_side._handshakeDone
        if close == "corrupt record":
            client_side.write(b"POST /RPC2 HTTP/1.1\r\nX-Pad: " + b"a" * 20000)
            clock.advance(0)
            record = bytearray(client_wire.value())
            record[-1] ^= 1
            server_side.dataReceived(bytes(record))
        server_side.connectionLost(Failure(ConnectionLost()))
        clock.advance(60)

    assert _garbage_of(scenario) == []


def test_the_closing_failure_and_the_exceptions_chained_to_it_lose_their_frames(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from twisted.protocols.tls import TLSMemoryBIOProtocol

    from txairflowrpc.gate.site import _TLSWithoutCycles

    passed_on: list[Failure] = []
    monkeypatch.setattr(TLSMemoryBIOProtocol, "_tlsShutdownFinished",
                        lambda self, reason: passed_on.append(reason))
    context = KeyError("earlier")
    try:
        raise context
    except KeyError:
        pass  # its traceback now holds this frame
    error = SSL.Error("then this")
    error.__context__ = context
    try:
        raise error
    except SSL.Error:
        failure = Failure()
    assert failure.tb is not None and context.__traceback__ is not None
    _TLSWithoutCycles._tlsShutdownFinished(object.__new__(_TLSWithoutCycles), failure)
    assert passed_on == [failure]
    assert failure.tb is None and failure.value.__traceback__ is None
    assert failure.value.__context__ is context and context.__traceback__ is None
    assert failure.check(SSL.Error) and "then this" in failure.getTraceback()


def test_an_answer_leaves_in_one_tls_record(tmp_path: Path, pki: DevPKI) -> None:  # noqa: F811
    """
    The site's TLS protocol is Twisted's buffering one: the headers and the
    body written in one reactor turn leave as one record, not one each (a
    client reading one record got the headers without the body when the
    cycle fix first subclassed the unbuffered protocol).
    """
    clock = Clock()
    server = _tls_server(load(tmp_path, pki), clock)
    proto = server.buildProtocol(ADDRESS)
    assert isinstance(proto, BufferingTLSTransport)
    records: list[bytes] = []
    proto.makeConnection(Wire())
    proto._aggregator._write = records.append  # what would reach OpenSSL, write by write
    proto.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n")
    proto.write(b"pong")
    assert records == []
    clock.advance(0)  # the next reactor turn
    assert records == [b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\npong"]


def _used_heap() -> int:
    """Bytes the C allocator has handed out (glibc's ``mallinfo2``)."""
    info = ctypes.CDLL("libc.so.6").mallinfo2
    info.restype = _MallInfo2
    now = info()
    return now.uordblks + now.hblkhd


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def _mutual_tls_pair(tmp_path: Path, pki: DevPKI) -> tuple[SSL.Connection, SSL.Connection]:  # noqa: F811
    """A server connection of the gateway's TLS and a client with a certificate, shaken hands."""
    tls = ReloadableTLS(server_options(load(tmp_path, pki).tls, "required"))
    files = pki.client("ci-bot.example.com")
    context = SSL.Context(SSL.TLS_METHOD)
    context.use_certificate_file(str(files.cert))
    context.use_privatekey_file(str(files.key))
    context.load_verify_locations(str(pki.ca_file))
    server, client = tls.serverConnectionForTLS(None), SSL.Connection(context, None)
    server.set_accept_state()
    client.set_connect_state()
    for _ in range(5):
        for side in (client, server):
            try:
                side.do_handshake()
            except SSL.WantReadError:
                pass
        _carry(client, server)
    assert server.get_peer_certificate() is not None
    return server, client


def _read_all(connection: SSL.Connection) -> bytes:
    got = b""
    while True:
        try:
            got += connection.recv(1 << 16)
        except SSL.WantReadError:
            return got


def test_release_buffers_gives_the_room_back(tmp_path: Path, pki: DevPKI) -> None:  # noqa: F811
    """
    A memory BIO keeps the room of the most it ever held: a 60 KB read left
    a connection holding about 80 KB for as long as it stayed open.
    `release_buffers` hands it back, and the connection goes on as before.
    """
    pairs = [_mutual_tls_pair(tmp_path, pki) for _ in range(40)]
    for server, client in pairs:
        client.sendall(b"x" * 60_000)
        _carry(client, server)  # one 60 KB chunk, as one socket read brings it
        assert _read_all(server) == b"x" * 60_000
    before = _used_heap()
    assert all(release_buffers(server) for server, _ in pairs)
    freed_each = (before - _used_heap()) / len(pairs)
    assert freed_each > 60_000
    for server, client in pairs:
        client.send(b"ping")
        _carry(client, server)
        assert _read_all(server) == b"ping"
        server.send(b"pong")
        _carry(server, client)
        assert _read_all(client) == b"pong"


def test_release_buffers_leaves_bytes_still_to_be_read(tmp_path: Path, pki: DevPKI) -> None:  # noqa: F811
    server, client = _mutual_tls_pair(tmp_path, pki)
    client.send(b"not yet read")
    _carry(client, server)
    assert not release_buffers(server)
    assert _read_all(server) == b"not yet read"
    assert release_buffers(server)


def _bios(protocol: Any) -> tuple[int, int]:
    connection = protocol._tlsConnection
    return (int(_ffi.cast("uintptr_t", connection._into_ssl)),
            int(_ffi.cast("uintptr_t", connection._from_ssl)))


def test_the_site_releases_tls_buffers_after_the_handshake_and_big_chunks(
    tmp_path: Path, pki: DevPKI  # noqa: F811
) -> None:
    """
    The site's TLS protocol renews its memory BIOs once the handshake is
    done and after a chunk of more than `BIG_CHUNK` bytes, not after every
    small call; calls on the connection go on through it all.
    """
    clock, server_side, server_wire, client_side, client_wire = _connect(
        tmp_path, pki, pki.client("ci-bot.example.com"), _KeepAlive)
    client = client_side.wrappedProtocol
    at_start = _bios(server_side)

    def call(padding: int) -> bytes:
        body = xmlrpc.client.dumps(("p" * padding,), "ping").encode()
        client.received = b""
        client.transport.write(
            b"POST /RPC2 HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/xml\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body)
        _shuttle(clock, server_side, server_wire, client_side, client_wire)
        return client.received

    _shuttle(clock, server_side, server_wire, client_side, client_wire)
    assert server_side._handshakeDone
    after_handshake = _bios(server_side)
    assert set(after_handshake).isdisjoint(at_start)
    assert call(10).startswith(b"HTTP/1.1 200")
    assert _bios(server_side) == after_handshake  # a small call: kept
    assert call(60_000).startswith(b"HTTP/1.1 200")
    after_big = _bios(server_side)
    assert set(after_big).isdisjoint(after_handshake)
    assert call(10).startswith(b"HTTP/1.1 200")
    assert _bios(server_side) == after_big


def test_the_site_keeps_its_bios_once_the_peer_is_gone(tmp_path: Path, pki: DevPKI) -> None:  # noqa: F811
    """
    Found by an attacker's review: once Twisted told the read BIO the
    stream ended (``bio_shutdown``, in ``connectionLost``), a new BIO would
    have forgotten it.  Nothing writes then today; the protocol refuses anyway.
    """
    clock, server_side, server_wire, client_side, client_wire = _connect(
        tmp_path, pki, pki.client("ci-bot.example.com"), _KeepAlive)
    _shuttle(clock, server_side, server_wire, client_side, client_wire)
    connection = server_side._tlsConnection
    seen: list[tuple[tuple[int, int], tuple[int, int]]] = []
    shutdown = connection.bio_shutdown

    def then_try_to_release() -> None:
        shutdown()
        before = _bios(server_side)
        server_side._bios_grown = True
        server_side._release_buffers()
        seen.append((before, _bios(server_side)))

    connection.bio_shutdown = then_try_to_release
    server_side.connectionLost(Failure(ConnectionLost()))
    assert len(seen) == 1 and seen[0][0] == seen[0][1]
