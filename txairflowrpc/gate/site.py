"""
The HTTP site and its connection-level limits.

twisted.web gives almost none of these by default, so `GatewaySite`,
`GatewayChannel` and `GatewayRequest` add them, each costing the gateway
next to nothing for a misbehaving client:

- a request body larger than ``rpc.max_body_bytes`` gets 413 as soon as its
  ``Content-Length`` says so, or, for a chunked body, as soon as the cap is
  passed; the body is never buffered past the cap (and never to a temp file);
- a request that is not fully received within ``limits.request_deadline_seconds``
  of its first byte is dropped (slowloris), and so is a connection whose TLS
  handshake is not done within ``limits.handshake_timeout_seconds``;
- idle keep-alive connections close after ``limits.idle_timeout_seconds``;
- at most ``limits.max_connections`` connections are open; more are closed at
  once and counted.

Refusals are recorded on the audit trail, including failed TLS handshakes.
"""

from __future__ import annotations

import io
import secrets
from typing import Any

from OpenSSL import SSL
from twisted.internet.interfaces import IHandshakeListener, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.resource import Resource
from zope.interface import implementer

from ..audit.log import AuditLog
from ..config import LimitsConfig

_log = Logger()

_REASONS = {408: b"Request Timeout", 413: b"Content Too Large"}


def address_text(address: Any) -> str:
    """``host:port`` of a peer address, for the audit trail and the log."""
    return f"{getattr(address, 'host', '')}:{getattr(address, 'port', '')}"


class GatewayRequest(server.Request):
    """A request whose body is capped while it arrives."""

    _refused = False
    _received = 0

    def gotLength(self, length: int | None) -> None:
        cap = self.channel.site.max_body_bytes
        self.content = io.BytesIO()  # capped, so memory; never a temp file
        if length is not None and length > cap:
            self._refuse(cap)

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._received += len(data)
        cap = self.channel.site.max_body_bytes
        if self._received > cap:
            self._refuse(cap)
            return
        self.content.write(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._refused:
            return  # answered already; the connection is closing
        super().requestReceived(command, path, version)

    def _refuse(self, cap: int) -> None:
        self._refused = True
        self.channel.refuse(413, f"request body is larger than {cap} bytes")


@implementer(IHandshakeListener)
class GatewayChannel(http.HTTPChannel):
    """An HTTP channel with a handshake deadline and a per-request deadline."""

    _handshake_timer: Any = None
    _request_timer: Any = None
    _sawRequest = False
    _counted = False

    def connectionMade(self) -> None:
        super().connectionMade()
        self._counted = True
        site: GatewaySite = self.site
        self._handshake_timer = site.clock.callLater(
            site.limits.handshake_timeout_seconds, self._too_slow, "TLS handshake"
        )

    def handshakeCompleted(self) -> None:
        self._cancel("_handshake_timer")

    def dataReceived(self, data: bytes) -> None:
        self._cancel("_handshake_timer")
        if self._request_timer is None and not self._handlingRequest:
            self._request_timer = self.site.clock.callLater(
                self.site.limits.request_deadline_seconds, self._too_slow, "request"
            )
        super().dataReceived(data)

    def allHeadersReceived(self) -> None:
        self._sawRequest = True
        super().allHeadersReceived()

    def allContentReceived(self) -> None:
        self._cancel("_request_timer")
        super().allContentReceived()

    def _cancel(self, name: str) -> None:
        timer = getattr(self, name)
        if timer is not None and timer.active():
            timer.cancel()
        setattr(self, name, None)

    def _too_slow(self, what: str) -> None:
        setattr(self, "_handshake_timer" if what == "TLS handshake" else "_request_timer", None)
        self.site.slow_dropped += 1
        self.site.record_refusal(self.transport, f"{what} not completed in time: dropped",
                                 http_status=408)
        self.transport.abortConnection()

    def refuse(self, status: int, message: str) -> None:
        """Answer ``status`` at once, bypassing the resource, and close."""
        self._cancel("_request_timer")
        body = (message + "\n").encode("utf-8")
        request_id = secrets.token_hex(8)
        self.transport.write(
            b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: %d\r\nX-Request-Id: %s\r\nConnection: close\r\n\r\n%s"
            % (status, _REASONS.get(status, b"Error"), len(body), request_id.encode(), body)
        )
        self.site.record_refusal(self.transport, message, http_status=status,
                                 request_id=request_id)
        self.loseConnection()

    def connectionLost(self, reason: Failure) -> None:
        self._cancel("_handshake_timer")
        self._cancel("_request_timer")
        if self._counted:
            self._counted = False
            self.site.open_connections -= 1
        if not self._sawRequest and reason.check(SSL.Error):
            self.site.record_refusal(self.transport, "TLS handshake failed",
                                     tls_error=_tls_reason(reason.value))
        super().connectionLost(reason)


class _Excess(Protocol):
    """Closes a connection over the cap at once."""

    def connectionMade(self) -> None:
        self.transport.abortConnection()


class GatewaySite(server.Site):
    """The gateway's `Site`: limits on connections and requests, audited refusals."""

    protocol = GatewayChannel
    requestFactory = GatewayRequest

    def __init__(
        self, resource: Resource, *, audit: AuditLog | None, clock: IReactorTime,
        limits: LimitsConfig, max_body_bytes: int,
    ) -> None:
        super().__init__(resource, reactor=clock, timeout=limits.idle_timeout_seconds)
        self.displayTracebacks = False
        self.clock = clock
        self.limits = limits
        self.max_body_bytes = max_body_bytes
        self._audit = audit
        self.open_connections = 0
        #: Counters, for the health endpoint and tests.
        self.refused_connections = 0
        self.slow_dropped = 0

    def buildProtocol(self, addr: Any) -> Any:
        if self.open_connections >= self.limits.max_connections:
            self.refused_connections += 1
            if self.refused_connections in (1, 10, 100) or self.refused_connections % 1000 == 0:
                _log.warn("connection cap {cap} reached: {n} connections refused so far",
                          cap=self.limits.max_connections, n=self.refused_connections)
            return _Excess()
        self.open_connections += 1
        return super().buildProtocol(addr)

    def record_refusal(self, transport: Any, reason: str, **fields: Any) -> None:
        if self._audit is None:
            return
        record = {"kind": "refused", "decision": "denied", "reason": reason,
                  "source": address_text(transport.getPeer()), **fields}
        self._audit.append(record).addErrback(lambda f: None)


def _tls_reason(error: BaseException) -> str:
    """OpenSSL's short reason, e.g. 'peer did not return a certificate'."""
    try:
        return str(error.args[0][0][2])[:200]
    except (IndexError, TypeError):
        return type(error).__name__
