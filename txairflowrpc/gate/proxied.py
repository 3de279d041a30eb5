"""
The PROXY protocol in front of the TLS listener: the real client behind
HAProxy, known before the site counts the connection.

With ``listen.proxy_protocol`` on, HAProxy (``send-proxy-v2``) opens each
connection with a header naming the client's address, then passes the
client's TLS through untouched (mutual TLS stays end to end).  The header
comes before TLS, so the layers are, from the socket in::

    `header_guard` -> PROXY header (Twisted's `proxyEndpoint`) -> `ProxiedFactory`
        -> TLS -> the site

Twisted's wrapper reads the header (v2 or v1) and makes ``getPeer`` answer
the address it names.  What it does not do, `header_guard` and
`ProxiedFactory` add:

- A header may arrive in pieces: Twisted's reader refuses a first read
  shorter than a v2 header's 16 bytes (or v1's 8), so `header_guard` holds
  the first bytes until there are 16, a line end, or bytes no header starts
  with.  Whatever Twisted's reader raises for a header it cannot read (a v1
  port that is no number, an address that is no text: a ValueError, not
  its InvalidProxyHeader) refuses the connection as a bad header does,
  instead of a traceback in the log.  The spec's bare ``PROXY UNKNOWN``
  line, which Twisted's reader refuses, is read as the proxy's own.

- The TLS layer and the site's channel are built as soon as the header is
  in (before the client's first byte: HAProxy sends the header as it
  connects), and the site is handed the client's address: its per-source
  connection cap, the new-connection rate, the eviction at the cap, its
  handshake deadline, the back-off, the audit trail's ``source`` and every
  refusal record name the client, never HAProxy.
- Only a sender in ``listen.proxy_from`` may send a header at all: anyone
  else who could reach the port could claim any address, and with it evade
  the per-source limits and write a false ``source`` into the trail.
- A connection whose first bytes are not a valid header, or whose header
  names no IP address and port (Twisted's v1 reader takes any text; a v2
  header may name a Unix socket), is refused and recorded, kind
  ``proxy_header``, counted per source like every refusal anyone can cause
  (a LOCAL or UNKNOWN header, the proxy's own connection, is taken as from
  the proxy itself); one that has not sent its whole header within
  ``limits.handshake_timeout_seconds`` is dropped and recorded (a v1 line
  longer than the spec's 107 bytes is refused).
- Connections still waiting for their header are at most
  ``limits.max_connections``; more are refused and recorded.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Sequence

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IAddress,
    IListeningPort,
    IProtocol,
    IProtocolFactory,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.haproxy import proxyEndpoint
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from ..config.sections import Network
from .site import GatewaySite, address_text


def trusted(address: IAddress, networks: Sequence[Network]) -> bool:
    """
    Whether ``address`` (the TCP peer) is in one of ``networks``; an IPv4
    peer of a dual-stack listener (``::ffff:127.0.0.1``) as the IPv4 address
    it is (found by review: with ``listen.host = "::"`` a proxy connecting
    over IPv4 was refused, whatever ``listen.proxy_from`` said).
    """
    try:
        ip = ipaddress.ip_address(getattr(address, "host", ""))
    except ValueError:
        return False
    forms = [ip]
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        forms.append(ip.ipv4_mapped)  # a network written either way matches
    return any(form in net for form in forms for net in networks)


def _ip_and_port(address: IAddress) -> bool:
    """
    Whether ``address`` is an IPv4 or IPv6 address with a TCP port: not a
    UDP one (a v2 header's DGRAM), nor an IPv6 address with a zone
    (``fe80::1%...``: any text after the ``%``; found by review).
    """
    if not isinstance(address, (IPv4Address, IPv6Address)) or address.type != "TCP":
        return False
    if "%" in address.host:
        return False
    try:
        ip = ipaddress.ip_address(address.host)
    except ValueError:
        return False
    return ip.version == (4 if isinstance(address, IPv4Address) else 6) and (
        0 <= address.port <= 65535)


#: How a v2 header starts (its signature), and a v1 header.
_V2_START = b"\r\n\r\n\x00\r\nQUIT\n"
_V1_START = b"PROXY "
#: A v1 header naming no addresses, as the spec allows it.
_V1_BARE_UNKNOWN = b"PROXY UNKNOWN\r\n"
#: Bytes Twisted's reader needs in its first read to take a v2 header.
_V2_LEAST = 16
#: The longest v1 header, its CRLF included (the spec's 107 bytes): Twisted's
#: reader takes a longer line given in one read (found by review: 3,000 bytes).
_V1_LONGEST = 107


def _can_judge(head: bytes) -> bool:
    """
    Whether Twisted's reader can be given ``head`` as its first read: it
    holds as much as that reader needs at once, a whole v1 line, or bytes
    no header starts with (refused then, at once).
    """
    if head.startswith(_V1_START):
        return b"\r\n" in head or len(head) >= _V1_LONGEST
    if len(head) >= _V2_LEAST:
        return True
    return not (_V2_START.startswith(head[:12]) or _V1_START.startswith(head))


def _v1_too_long(head: bytes) -> bool:
    """Whether ``head`` starts a v1 header longer than the spec allows."""
    if not head.startswith(_V1_START):
        return False
    end = head.find(b"\r\n", 0, _V1_LONGEST)
    return end < 0


class _HeaderGuard(ProtocolWrapper):
    """
    Outside Twisted's PROXY protocol wrapper: gives it its first read whole
    (see `_can_judge`; a v1 header's whole line), refuses the connection
    when reading the header raises, and has the client's protocol built as
    soon as the header is in.  Once it is, every byte goes straight through.
    """

    _head: bytes | None = b""  # None: the header is in
    #: Whether Twisted's reader has been given the header's start: the rest
    #: goes to it as it comes.
    _started = False

    def dataReceived(self, data: bytes) -> None:
        if self._head is None:
            self.wrappedProtocol.dataReceived(data)
            return
        proxy = self.wrappedProtocol  # Twisted's wrapper
        waiting = proxy.wrappedProtocol  # an _AwaitingHeader (or _Refused)
        head = data
        if not self._started:
            head = self._head + data
            if not _can_judge(head):
                self._head = head  # the handshake deadline bounds the wait
                return
            self._head = b""
            if _v1_too_long(head):
                proxy.loseConnection()  # as Twisted's wrapper does for a bad header
                return
            if head.startswith(_V1_BARE_UNKNOWN):
                # The spec's bare UNKNOWN line, which Twisted's reader refuses
                # (it wants a space after UNKNOWN): the same line with one.
                head = b"PROXY UNKNOWN \r\n" + head[len(_V1_BARE_UNKNOWN):]
            self._started = True
        try:
            proxy.dataReceived(head)
        except Exception:
            if getattr(waiting, "admitted", True):
                raise  # not the header: the layers after it
            proxy.loseConnection()  # as Twisted's wrapper does for a bad header
            return
        if isinstance(waiting, _AwaitingHeader) and getattr(proxy, "_proxyInfo", None):
            # The header is in, though the client may not have spoken yet
            # (HAProxy sends it as it connects): the site takes the
            # connection now, for the client it names (found by review:
            # admitted only at the client's first byte, silent connections
            # through HAProxy were counted by no source, filled the cap on
            # those waiting for a header and locked everyone out).
            waiting.header_in()
        if getattr(waiting, "admitted", True):
            self._head = None


@implementer(IStreamServerEndpoint)
class _GuardedEndpoint:
    """Listens on ``endpoint`` with `_HeaderGuard` around each connection."""

    def __init__(self, endpoint: IStreamServerEndpoint) -> None:
        self._endpoint = endpoint

    def listen(self, factory: IProtocolFactory) -> Deferred[IListeningPort]:
        return self._endpoint.listen(_GuardFactory(factory))


class _GuardFactory(WrappingFactory):
    protocol = _HeaderGuard


def header_guard(endpoint: IStreamServerEndpoint) -> IStreamServerEndpoint:
    """
    ``endpoint`` with the PROXY protocol header read first (Twisted's
    `proxyEndpoint`), through `_HeaderGuard`.
    """
    guarded: IStreamServerEndpoint = proxyEndpoint(_GuardedEndpoint(endpoint))
    return guarded


class _Refused(Protocol):
    """Closes a refused connection at once."""

    def connectionMade(self) -> None:
        self.transport.abortConnection()


class ProxiedFactory(Factory):
    """
    Sits between Twisted's PROXY protocol wrapper and ``inner`` (the TLS
    factory around ``site``): builds ``inner``'s protocol once the header
    is in, for the address it names.

    :param site: the gateway's site: its clock, limits (read at each use, so
        a reload applies) and refusal log.
    :param senders: who may send a header (``listen.proxy_from``).
    """

    def __init__(self, inner: IProtocolFactory, site: GatewaySite,
                 senders: Sequence[Network]) -> None:
        self.inner = inner
        self.site = site
        self.senders = tuple(senders)
        #: Connections waiting for their header (and the first TLS byte).
        self.pending: set[_AwaitingHeader] = set()

    @property
    def waiting(self) -> int:
        return len(self.pending)

    def doStart(self) -> None:
        self.inner.doStart()
        super().doStart()

    def doStop(self) -> None:
        """
        The listener stopped (shutting down): a connection still waiting for
        its header is closed now rather than let in after the drain.
        """
        for conn in list(self.pending):
            conn.drop()
        self.inner.doStop()
        super().doStop()

    def buildProtocol(self, addr: IAddress) -> Protocol:
        if not trusted(addr, self.senders):
            return self.refuse(addr, "connection_refused",
                               "this address may not send a PROXY protocol header "
                               "(listen.proxy_from)")
        if self.waiting >= self.site.limits.max_connections:
            return self.refuse(addr, "connection_refused",
                               "too many connections waiting for their PROXY protocol header")
        return _AwaitingHeader(self, addr)

    def refuse(self, addr: IAddress, kind: str, reason: str) -> Protocol:
        self.site.refused_connections += 1
        self.site.refusals.note(address_text(addr), kind, {"reason": reason})
        return _Refused()


class _AwaitingHeader(Protocol):
    """
    One connection, from its accept until the header is in; then it hands
    every byte to the protocol built for the client.  Its transport is
    Twisted's PROXY protocol wrapper, which passes nothing on before a
    whole, valid header.
    """

    _inner: IProtocol | None = None
    _timer: Any = None
    _done = False

    def __init__(self, factory: ProxiedFactory, sender: IAddress) -> None:
        self._factory = factory
        self._sender = sender

    @property
    def admitted(self) -> bool:
        """Whether the header has been read (and judged): bytes now are the client's."""
        return self._inner is not None or self._done

    def connectionMade(self) -> None:
        site = self._factory.site
        self._factory.pending.add(self)
        self._timer = site.clock.callLater(site.limits.handshake_timeout_seconds, self._too_late)

    def drop(self) -> None:
        """Close the connection before its header is in, recording nothing."""
        self._stop_waiting()
        self._done = True
        self.transport.abortConnection()

    def header_in(self) -> None:
        """The header has been read whole: the client's protocol is built now."""
        if not self.admitted:
            self._admit()

    def dataReceived(self, data: bytes) -> None:
        inner = self._inner
        if inner is None:
            inner = self._admit()
            if inner is None or getattr(inner, "disconnecting", False):
                return  # refused at once (a cap): nothing of it is read
        inner.dataReceived(data)

    def _admit(self) -> IProtocol | None:
        """The header is in: build the client's protocol, for the address it names."""
        self._stop_waiting()
        client = self.transport.getPeer()
        if not _ip_and_port(client):
            # Twisted's v1 reader takes any text for the address, a v2 header
            # may name a Unix socket: no source to count, limit or record.
            self._done = True
            self._factory.site.refusals.note(address_text(self._sender), "proxy_header", {
                "reason": "the PROXY protocol header names no IP address and port: refused"})
            self.transport.abortConnection()
            return None
        inner = self._factory.inner.buildProtocol(client)
        if inner is None:
            self._done = True
            self.transport.abortConnection()
            return None
        self._inner = inner
        inner.makeConnection(self.transport)
        return inner

    def _too_late(self) -> None:
        """The header has not come whole in time (once it has, the site's own deadline runs)."""
        self._timer = None
        self._stop_waiting()
        self._done = True
        site = self._factory.site
        site.slow_dropped += 1
        site.refusals.note(address_text(self._sender), "proxy_header", {
            "reason": "no PROXY protocol header in time: dropped", "http_status": 408})
        self.transport.abortConnection()

    def _stop_waiting(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._factory.pending.discard(self)

    def connectionLost(self, reason: Failure) -> None:
        self._stop_waiting()
        if self._inner is not None:
            self._inner.connectionLost(reason)
            return
        # The wrapper closes (never aborts) a connection whose first bytes
        # are not a valid header; a peer that just connects and hangs up, as
        # a port probe does, is not recorded, as on a listener without the
        # PROXY protocol.
        if not self._done and self.transport.disconnecting:
            self._done = True
            self._factory.site.refusals.note(
                address_text(self.transport.getPeer()), "proxy_header",
                {"reason": "no valid PROXY protocol header: refused"})
