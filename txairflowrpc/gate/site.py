"""
The HTTP site: connections and requests, with their limits, up to the
moment the caller is known.

twisted.web gives almost none of these by default, so `GatewaySite`,
`GatewayChannel` and `GatewayRequest` add them, each costing the gateway
next to nothing for a misbehaving client:

- The caller is authenticated as soon as the request's headers are in (the
  certificate is known from the handshake, a token or JWT is a header),
  before a byte of the body is read: an unauthenticated request gets 401
  without its body ever reaching memory, and never a ``100 Continue``.  Two
  ``Authorization`` headers are a 400.
- Bodies: larger than ``rpc.max_body_bytes`` is 413 as soon as
  ``Content-Length`` says so, or as soon as a chunked body passes it; all
  bodies in flight together hold at most ``limits.max_body_memory_bytes``,
  one caller's at most a quarter of it (past either, 503 with
  ``Retry-After``), and a body is let go as soon as it is parsed.
- Time: the TLS handshake within ``limits.handshake_timeout_seconds``, the
  first request byte within ``limits.first_byte_seconds`` of it, a whole
  request within ``limits.request_deadline_seconds`` of its first byte
  (slowloris), idle keep-alive connections closed after
  ``limits.idle_timeout_seconds``.
- Connections: at most ``limits.max_connections`` open, at most
  ``limits.max_connections_per_source`` from one address (an IPv6 host: its
  network, ``limits.ipv6_source_prefix``); at the global cap a new
  connection from the address holding the most is refused, and one from
  anyone else takes the place of a connection of that address that holds
  no caller's work (idle, or its request's headers not all in).  One
  address opens at most ``limits.connection_rate_per_source`` new
  connections a second (bursts of ``limits.connection_burst_per_source``):
  more are closed before their TLS handshake costs anything.
- Only ``POST /RPC2``, spelt exactly so, reaches the XML-RPC resource.

Every refusal is recorded (see `txairflowrpc.gate.refusals`): what anyone
can cause at will is counted per source and minute, the rest is on disk
before its answer leaves.
"""

from __future__ import annotations

import io
import ipaddress
from typing import Any, Callable

from OpenSSL import SSL
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IHandshakeListener, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.resource import Resource
from zope.interface import implementer

from ..config import LimitsConfig
from ..core.spec import new_request_id
from ..identity.authenticate import Unauthenticated
from ..identity.backoff import Backoff, source_key
from ..identity.principal import Principal
from .connections import BySource
from .limits import ConnectionRate
from .refusals import RPC_TARGET, RefusalLog, method_field
from .tls import certificate_refusal, release_buffers

_log = Logger()

_REASONS = {
    400: b"Bad Request", 401: b"Unauthorized", 408: b"Request Timeout",
    413: b"Content Too Large", 429: b"Too Many Requests", 503: b"Service Unavailable",
}
#: Bytes read and dropped after a refusal, so the client can read its answer
#: rather than meet a reset while it is still sending; then the connection closes.
_LINGER_SECONDS = 2.0
#: Body bytes that may arrive while the caller is being authenticated
#: (the read is paused at once; this is what was already on its way).
_HOLD_BYTES = 256 * 1024


def address_text(address: Any) -> str:
    """
    ``host:port`` of a peer address, for the audit trail and the log; an
    IPv6 host in its one short form, an IPv4 one mapped into IPv6 (a
    dual-stack listener's) as the IPv4 address it is.  Found by review: the
    same client was ``2001:db8:1::5`` when it connected and
    ``2001:db8:1:0:0:0:0:5`` through HAProxy (Twisted's v2 reader), and a
    search of the trail for one missed the other.
    """
    host = getattr(address, "host", "")
    if ":" in host:
        try:
            ip = ipaddress.IPv6Address(host)
        except ValueError:
            pass
        else:
            host = str(ip.ipv4_mapped or ip)
    return f"{host}:{getattr(address, 'port', '')}"


class BodyBudget:
    """
    The bytes of request bodies held in memory, across all connections, and
    by each caller: one caller holds at most a quarter of them (or one body
    of ``largest`` bytes, if that is more), so that a caller who declares
    large bodies and sends them a byte at a time cannot hold them all and
    leave every other caller 503.
    """

    def __init__(self, limit: int, largest: int = 0) -> None:
        self.limit = limit
        #: The largest body a request may have (``rpc.max_body_bytes``).
        self.largest = largest
        self.held = 0
        self._by: dict[str, int] = {}

    @property
    def share(self) -> int:
        """The most one caller may hold."""
        return max(self.limit // 4, self.largest)

    def take(self, n: int, who: str) -> str | None:
        """
        Hold ``n`` more bytes for ``who``; None if the budget allows, else
        why not.
        """
        mine = self._by.get(who, 0)
        if mine + n > self.share:
            return "this caller holds as many request bodies as it may"
        if self.held + n > self.limit:
            return "the gateway holds as many request bodies as it may"
        self.held += n
        self._by[who] = mine + n
        return None

    def give(self, n: int, who: str) -> None:
        self.held -= n
        left = self._by.get(who, 0) - n
        if left > 0:
            self._by[who] = left
        else:
            self._by.pop(who, None)


class GatewayRequest(server.Request):
    """
    A request whose body is capped, budgeted and let go early, and which is
    routed to the XML-RPC resource only at exactly ``/RPC2``.
    """

    _refused = False
    _received = 0
    _declared = 0
    _held = 0
    #: Whether all the request's headers are in (it is being, or has been, let in).
    _headers_in = False

    #: The authenticated caller, set by the channel once the headers are in.
    principal: Principal | None = None

    @property
    def _holder(self) -> str:
        """Whose share of the body budget this request's body counts against."""
        return self.principal.name if self.principal is not None else ""

    def gotLength(self, length: int | None) -> None:
        cap = self.channel.site.max_body_bytes
        self.content = io.BytesIO()  # capped and budgeted, so memory; never a temp file
        self._declared = length or 0
        if length is not None and length > cap:
            self.refuse(413, f"request body is larger than {cap} bytes")

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        site: GatewaySite = self.channel.site
        self._received += len(data)
        if self._received > site.max_body_bytes:
            self.refuse(413, f"request body is larger than {site.max_body_bytes} bytes")
            return
        if self._received > self._held:
            # The whole declared body is budgeted with its first byte.
            wanted = max(self._received, self._declared) - self._held
            full = site.bodies.take(wanted, self._holder)
            if full is not None:
                site.budget_refused += 1
                self.refuse(503, f"{full}; retry in a moment", {b"Retry-After": b"1"})
                return
            self._held += wanted
        self.content.write(data)

    def release_body(self) -> None:
        """Let the body go (it has been parsed, or the request is over)."""
        if self._held:
            self.channel.site.bodies.give(self._held, self._holder)
            self._held = 0
        self.content = io.BytesIO()

    def refuse(self, status: int, message: str, headers: dict[bytes, bytes] | None = None) -> None:
        self._refused = True
        self.release_body()
        self.channel.refuse(status, message, headers)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._refused:
            return  # answered already; the connection is closing
        super().requestReceived(command, path, version)

    def process(self) -> None:
        """
        Render ``/RPC2`` (spelt exactly: no ``/RPC2/x``, no ``/%52PC2``, no
        query) or, for anything else, the not-found resource.  No ``Server``
        header: the gateway does not advertise its software.
        """
        self.site = self.channel.site
        self.setHeader(b"Date", _http_date(int(self.site.clock.seconds())))
        self.prepath, self.postpath = [], []
        try:
            self.render(self.site.resource_for(self))
        except BaseException:
            self.processingFailed(Failure())

    def finish(self) -> None:
        self.release_body()
        super().finish()

    def connectionLost(self, reason: Failure) -> None:
        self.release_body()
        super().connectionLost(reason)


#: The last second's ``Date`` header: the same for every answer within it.
_last_date: tuple[int, bytes] = (-1, b"")


def _http_date(second: int) -> bytes:
    """The ``Date`` header for a whole POSIX second (made once per second)."""
    global _last_date
    cached = _last_date
    if cached[0] != second:
        cached = _last_date = (second, http.datetimeToString(second))
    return cached[1]


def _same(a: object, b: object) -> bool:
    """Whether two access versions are the same: equal tuples of the same objects."""
    if a is b:
        return True
    if type(a) is not tuple or type(b) is not tuple or len(a) != len(b):
        return False
    for x, y in zip(a, b):  # a loop, not all(...): this runs on every request
        if x is not y:
            return False
    return True


@implementer(IHandshakeListener)
class GatewayChannel(http.HTTPChannel):
    """An HTTP channel with deadlines, early authentication and audited refusals."""

    _handshake_timer: Any = None
    _first_byte_timer: Any = None
    _request_timer: Any = None
    _linger_timer: Any = None
    #: A failed sign-in's 401, delayed by the back-off.
    _refusal_timer: Any = None
    #: Refused already: a second refusal (a timer, a later chunk) adds nothing.
    _refused_once = False
    #: The refusal's answer is sent (it is sent once, whichever comes first).
    _answered = False
    #: An identified caller's refusal answered at the latest at the request deadline.
    _answer_timer: Any = None
    #: The connection is gone (Twisted keeps ``transport`` set after it).
    _lost = False
    _sawRequest = False
    _counted = False
    #: What arrived while the caller was being authenticated (its body, or the
    #: requests pipelined after a request without one), at most `_HOLD_BYTES`.
    _holding: list[bytes] | None = None
    #: Their size (kept as they come: summing them per chunk was quadratic).
    _held_bytes = 0
    _content_waiting = False
    #: The principal whose request's body is on its way here, counted in
    #: `GatewaySite.arriving` until it is in (or the request is over).
    _arriving_for: str | None = None
    #: Answered with a refusal: what still comes is read and dropped.
    _refusing = False
    #: (access rules version, Authorization headers, principal) of the last
    #: request this connection let in.
    _admitted: tuple[Any, Any, Principal] | None = None
    source = ""

    #: This end's address: it cannot change on a connection, and twisted.web
    #: asks for it on every request (a getsockname each time otherwise).
    _host: Any = None

    @property
    def gateway(self) -> "GatewaySite":
        return self.site  # type: ignore[no-any-return]

    def getHost(self) -> Any:
        if self._host is None:
            self._host = super().getHost()
        return self._host

    def connectionMade(self) -> None:
        super().connectionMade()
        site = self.gateway
        self._handshake_timer = site.clock.callLater(
            site.limits.handshake_timeout_seconds, self._too_slow, "_handshake_timer",
            "handshake", "TLS handshake not completed in time: dropped",
        )

    def handshakeCompleted(self) -> None:
        self._cancel("_handshake_timer")
        if not self._sawRequest and self._first_byte_timer is None:
            self._first_byte_timer = self.gateway.clock.callLater(
                self.gateway.limits.first_byte_seconds, self._too_slow, "_first_byte_timer",
                "first_byte", "no request within the first-byte deadline after the handshake",
            )

    def dataReceived(self, data: bytes) -> None:
        if self._refusing:
            return  # answered already: read and dropped until the connection closes
        self._cancel("_handshake_timer")
        self._cancel("_first_byte_timer")
        if self._request_timer is None and not self._handlingRequest:
            self._request_timer = self.gateway.clock.callLater(
                self.gateway.limits.request_deadline_seconds, self._too_slow, "_request_timer",
                "too_slow", "request not completed in time: dropped",
            )
        super().dataReceived(data)

    def rawDataReceived(self, data: bytes) -> None:
        if self._refusing:
            return
        if self._holding is not None:
            self._holding.append(data)
            self._held_bytes += len(data)
            if self._held_bytes > _HOLD_BYTES:
                self.transport.abortConnection()
            return
        super().rawDataReceived(data)

    def allHeadersReceived(self) -> None:
        self._sawRequest = True
        req: GatewayRequest = self.requests[-1]
        if req._headers_in:  # never so since a pending sign-in holds what follows; kept shut
            self.refuse(400, "malformed HTTP request")
            return
        req._headers_in = True
        if len(req.requestHeaders.getRawHeaders(b"authorization", [])) > 1:
            self.refuse(400, "more than one Authorization header")
            return
        expect = req.requestHeaders.getRawHeaders(b"expect")
        req.requestHeaders.removeHeader(b"expect")  # 100 Continue only once authenticated
        super().allHeadersReceived()
        if req._refused:
            return
        principal = self._admitted_before(req)
        if principal is not None:
            self._let_in(principal, req, expect)
            return
        # The rules the verdict is reached under: a reload while a slow
        # sign-in (STS, a key set fetch) is under way must not be taken for
        # the version it was checked against.
        version = self.gateway.access_version()
        d = maybeDeferred(self.gateway.authenticate, req)
        d.addCallback(self._remember, req, version)
        if not d.called:
            self._holding, self._held_bytes = [], 0
            self._networkProducer.pauseProducing()
        d.addCallbacks(self._let_in, self._keep_out, (req, expect), None, (req,))
        d.addErrback(lambda f: _log.failure("admitting a request failed", f))

    def _admitted_before(self, req: GatewayRequest) -> Principal | None:
        """
        The principal of an earlier request on this connection, if this one
        carries the very same credentials (the certificate cannot change on
        a connection), no reload has swapped the access rules or the token
        store since it was checked, and its proof has not lapsed meanwhile
        (the credential's expiry, an AWS-IAM signature's age limit): then it
        need not be checked again (a keep-alive client's every call paid a
        hash, a store look-up, or a JWT's signature otherwise).
        """
        admitted = self._admitted
        if admitted is None:
            return None
        version, credentials, principal = admitted
        if (not _same(version, self.gateway.access_version())
                or credentials != req.requestHeaders.getRawHeaders(b"authorization")):
            return None
        lapses = principal.proof_lapses()
        if lapses is not None and lapses <= self.gateway.clock.seconds():
            self._admitted = None
            return None
        return principal

    def _remember(self, principal: Principal, req: GatewayRequest, version: Any) -> Principal:
        self._admitted = (version, req.requestHeaders.getRawHeaders(b"authorization"), principal)
        return principal

    def allContentReceived(self) -> None:
        if self._holding is not None:
            # A request without a body, still being authenticated.  What comes
            # next (a pipelined request) is held like a body, bounded, until
            # the verdict: found by review, in line mode each blank line was
            # taken for this request's end of headers and began another
            # sign-in (32,000 from 64 KB while STS was being asked).
            self._content_waiting = True
            self.setRawMode()
            return
        self._cancel("_request_timer")
        self._body_in()
        super().allContentReceived()

    def _let_in(self, principal: Principal, req: GatewayRequest, expect: list[bytes] | None) -> None:
        req.principal = principal
        if self._refusing or self._lost:  # a slow sign-in's caller may have gone meanwhile
            return
        if self.length != 0 and not self._content_waiting and not self._body_coming(principal):
            # Refused: what a pending sign-in held goes, and reading resumes
            # so that the body is read and dropped while the 429 goes out.
            self._holding = None
            if not self._waitingForTransport:
                self._networkProducer.resumeProducing()
            return
        if expect and expect[0].lower() == b"100-continue" and self._version == b"HTTP/1.1":
            self._send100Continue()
        held, self._holding = self._holding, None
        if held is None:
            return
        if not self._waitingForTransport:
            self._networkProducer.resumeProducing()
        if self._content_waiting:
            # The request is whole: it is handled, and what was held after it
            # is the next requests', buffered by Twisted until this one is done.
            self._content_waiting = False
            self.allContentReceived()
        # Through the parser in whatever mode it is in by then: a body that
        # ends inside the held bytes may be answered at once, and what
        # follows it is a next request's, in line mode (found by review:
        # replayed raw, it met no body decoder and was lost).
        for data in held:
            self.dataReceived(data)

    def resumeProducing(self) -> None:
        """
        The transport drained its send buffer.  While a sign-in is pending
        reading stays paused (Twisted's resumes it whenever no request is
        being handled, and a pending sign-in's request is not yet): what is
        held stays bounded by the pause, not only by `_HOLD_BYTES`.
        """
        if self._holding is None:
            super().resumeProducing()
            return
        self._waitingForTransport = False
        if self._requestProducer is not None:
            self._requestProducer.resumeProducing()

    def _body_coming(self, principal: Principal) -> bool:
        """
        Count the body now to come for ``principal``; False (and a 429) if
        `LimitsConfig.max_in_flight` of its requests are receiving theirs
        already.  Found by an attacker's review: a connection whose caller
        is in may not give way at the connection cap, so one credential
        trickling bodies from a few addresses held the cap and shut every
        other caller out.
        """
        site = self.gateway
        name = principal.name
        cap = site.limits.max_in_flight
        if site.arriving.get(name, 0) >= cap:
            site.arriving_refused += 1
            self.refuse(429, f"more than {cap} requests of this principal are still sending "
                             f"their bodies; retry in a moment", {b"Retry-After": b"1"})
            return False
        site.arriving[name] = site.arriving.get(name, 0) + 1
        self._arriving_for = name
        return True

    def _body_in(self) -> None:
        """The counted body is in, or will never be (`_body_coming`)."""
        name, self._arriving_for = self._arriving_for, None
        if name is None:
            return
        arriving = self.gateway.arriving
        left = arriving.get(name, 0) - 1
        if left > 0:
            arriving[name] = left
        else:
            arriving.pop(name, None)

    def _keep_out(self, failure: Failure, req: GatewayRequest) -> None:
        self._holding = None
        req._refused = True
        claimed: dict[str, str] = {}
        if failure.check(Unauthenticated):
            reason, claimed = failure.value.reason, failure.value.claimed
        else:
            _log.failure("authenticating a request failed", failure)
            reason = "authentication failed"
        site = self.gateway
        delay = site.backoff.failed(self.source) if site.backoff is not None else 0.0
        if self._lost:  # a slow sign-in failed after its caller left: counted, not answered
            return
        message = f"unauthenticated: {reason}"
        headers = {b"WWW-Authenticate": b'Bearer realm="airflowrpc"'}
        self._refusing = True  # the body is never read
        if not self._waitingForTransport:
            self._networkProducer.resumeProducing()
        if delay:
            # The 401 comes at its time, not the request deadline's drop
            # (which may be sooner than the back-off's delay).
            self._cancel("_request_timer")
            self._cancel("_refusal_timer")
            self._refusal_timer = site.clock.callLater(delay, self._refuse_late, message, headers,
                                                       claimed)
        else:
            self.refuse(401, message, headers, claimed)

    def _refuse_late(self, message: str, headers: dict[bytes, bytes],
                     claimed: dict[str, str]) -> None:
        self._refusal_timer = None
        self.refuse(401, message, headers, claimed)

    @property
    def holds_no_work(self) -> bool:
        """
        Whether this connection may give way at the connection cap without
        losing a caller's work: it is idle (an answer still on its way out
        is sent first: `evict`), or its request is not in (its headers still
        coming, its sign-in refused), so it has no authenticated caller yet.
        """
        if not self._handlingRequest and not self.requests:
            return True
        req = self.requests[-1] if self.requests else None
        return self._refusing or (
            req is not None and req.principal is None and not req._headers_in)

    def _respondToBadRequestAndDisconnect(self) -> None:
        """Twisted's own 400 (a malformed request line or header, smuggling), recorded."""
        self.refuse(400, "malformed HTTP request")

    def lineLengthExceeded(self, line: bytes) -> None:
        """
        A request or header line past ``MAX_LENGTH``: a recorded 400, where
        LineReceiver would drop the connection without a word (found by review).
        """
        self.refuse(400, "request or header line too long")

    def refuse(self, status: int, message: str, headers: dict[bytes, bytes] | None = None,
               claimed: dict[str, str] | None = None) -> None:
        """
        Answer ``status`` at once, bypassing the resource, record it (counted
        per source: anyone can cause these), and close after a short linger.
        ``claimed``: who a genuine but refused credential names, recorded.
        """
        if self._lost or self._refused_once:
            return
        self._refused_once = True
        self._body_in()
        self._cancel("_request_timer")
        request_id = new_request_id()
        req = self.requests[-1] if self.requests else None
        principal = req.principal if req is not None else None
        kind = _KINDS.get(status, "http")
        fields = {
            "reason": message, "http_status": status, "request_id": request_id,
            "http_method": method_field(getattr(self, "_command", b"")),
            **self.gateway.refusals.target_fields(getattr(self, "_path", b"")),
            **(claimed or {}),
        }
        self._refusing = True
        if req is not None:
            req._refused = True
        self.setRawMode()  # whatever else is buffered is dropped, not parsed
        self.setTimeout(None)
        body = (message + "\n").encode("utf-8")
        extra = b"".join(b"%s: %s\r\n" % item for item in (headers or {}).items())
        answer = (
            b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: %d\r\nX-Request-Id: %s\r\n%sConnection: close\r\n\r\n%s"
            % (status, _REASONS.get(status, b"Error"), len(body), request_id.encode(), extra,
               body)
        )
        if principal is None:  # anyone can cause it: counted per source
            self.gateway.refusals.note(self._peer(), kind, fields)
            self._answer_refusal(answer)
            return
        # An identified caller's refusal (a body over the cap, the budget):
        # a record of its own, on disk before its answer, as at /RPC2 -- but
        # never a connection held open past the request deadline by a write
        # that hangs (an fsync on a stuck disk): it is answered then anyway.
        recorded = self.gateway.refusals.record({
            **fields, "source": self._peer(), "refusal": kind, "principal": principal.name,
            "auth": principal.audit_identity()})
        self._answer_timer = self.gateway.clock.callLater(
            self.gateway.limits.request_deadline_seconds, self._answer_refusal, answer)
        recorded.addCallback(lambda _: self._answer_refusal(answer))

    def _answer_refusal(self, answer: bytes) -> None:
        """Send a refusal's answer (once), then close after a short linger."""
        self._cancel("_answer_timer")
        if self._lost or self._answered:
            return
        self._answered = True
        self.transport.write(answer)
        self._linger_timer = self.gateway.clock.callLater(_LINGER_SECONDS, self._close)

    def evict(self) -> None:
        """
        Close for another address at the connection cap: an answer still on
        its way out is sent first (a finished request leaves the connection
        idle before its last bytes are), for at most a linger's time.
        """
        self._refusing = True  # nothing more is read
        self._cancel("_linger_timer")
        self._close()

    def _close(self) -> None:
        """
        Close once what is written is sent (the channel's own close: it lets
        go of the TLS layer's producer first, or TLS would wait for it), and
        abort a linger later: a peer that never answers TLS's close_notify
        does not hold the connection.
        """
        self._linger_timer = None
        if self._lost:
            return
        self.loseConnection()
        self._linger_timer = self.gateway.clock.callLater(_LINGER_SECONDS, self._abort)

    def _abort(self) -> None:
        self._linger_timer = None
        if not self._lost:
            self.transport.abortConnection()

    def _peer(self) -> str:
        return address_text(self.transport.getPeer()) if self.transport else self.source

    def _cancel(self, name: str) -> None:
        timer = getattr(self, name)
        if timer is not None and timer.active():
            timer.cancel()
        setattr(self, name, None)

    def _too_slow(self, timer: str, kind: str, message: str) -> None:
        setattr(self, timer, None)
        self.gateway.slow_dropped += 1
        req = self.requests[-1] if self.requests else None
        self.gateway.refusals.note(self._peer(), kind, {
            "reason": message, "http_status": 408,
            "principal": req.principal.name if req is not None and req.principal else None,
        })
        self.transport.abortConnection()

    def connectionLost(self, reason: Failure) -> None:
        self._lost = True
        self._body_in()
        self._holding = None  # nobody will read it: freed before a slow sign-in ends
        for name in ("_handshake_timer", "_first_byte_timer", "_request_timer", "_linger_timer",
                     "_refusal_timer", "_answer_timer"):
            self._cancel(name)
        if self._counted:
            self._counted = False
            self.gateway.left(self)
        if not self._sawRequest and reason.check(SSL.Error):
            refused = certificate_refusal(self.transport)  # the TLS protocol
            self.gateway.refusals.note(self._peer(), "tls_handshake", {
                "reason": "TLS handshake failed", "tls_error": _tls_reason(reason.value),
                "tls_certificate": refused.to_json() if refused is not None else None,
            })
        super().connectionLost(reason)


_KINDS = {400: "bad_request", 401: "unauthenticated", 413: "too_large",
          429: "rate_limited", 503: "busy"}


class _Excess(Protocol):
    """Closes a connection over a cap at once."""

    def connectionMade(self) -> None:
        self.transport.abortConnection()


class _TLSWithoutCycles(BufferingTLSTransport):
    """
    Twisted's TLS protocol (`BufferingTLSTransport`, the factory's own: small
    writes of one reactor turn go out as one TLS record), except that the
    failure that ends a connection leaves no reference cycle behind.

    `TLSMemoryBIOProtocol` makes the reason of nearly every close (an EOF
    without ``close_notify``, a bad record: whatever its read loop meets) a
    `Failure` held by a local of the very frame its traceback holds: a cycle
    that keeps the frame, the OpenSSL connection and the last 32 KiB read
    buffer (65-250 KB a connection) until the cyclic collector runs, and that
    a bare connect and close, before any handshake, makes too.  Here that
    failure's frames
    become strings (`Failure.cleanFailure`: its type, value and text stay)
    before Twisted passes it on (and those of the exceptions chained to it),
    so reference counting frees it all when the connection goes.
    ``_tlsShutdownFinished`` is private to Twisted; a test
    (``test_tls_memory.test_a_closed_connection_leaves_no_cycle``) fails if it
    stops being the way in.  Airflow's side of the gateway (trusted peers,
    `upstream.transport`) keeps Twisted's own protocol: the collector's
    per-second collections free those.

    And it keeps no more buffer room than an idle connection needs: after
    the handshake, and after a read or a write of more than `BIG_CHUNK`
    bytes, its memory BIOs are renewed once empty (`tls.release_buffers`),
    so an idle connection holds about 5 KB less, and one that once carried
    a large request not the 80 KB its BIO grew to.
    """

    #: A read or write bigger than this leaves that much room in a BIO.  A
    #: renewal costs about 1.3 µs, a read of 4-64 KB about 10 µs: a sender
    #: makes them only in proportion to the bytes it sends.
    BIG_CHUNK = 4096
    #: The handshake's flights grew the BIOs: renewed once it is done.
    _bios_grown = True
    #: Set once the connection is lost: Twisted then tells the read BIO the
    #: stream ended (``bio_shutdown``), which a new BIO would not know.
    _ending = False

    def dataReceived(self, data: bytes) -> None:
        if len(data) > self.BIG_CHUNK:
            self._bios_grown = True
        super().dataReceived(data)
        if self._bios_grown:
            self._release_buffers()

    def _write(self, data: bytes) -> None:
        super()._write(data)
        if len(data) > self.BIG_CHUNK:
            self._bios_grown = True
            self._release_buffers()

    def _release_buffers(self) -> None:
        connection = self._tlsConnection
        if (self._handshakeDone and not self._lostTLSConnection and not self._ending
                and connection is not None and release_buffers(connection)):
            self._bios_grown = False

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._ending = True
        super().connectionLost(reason)

    def _tlsShutdownFinished(self, reason: Failure | None) -> None:
        if reason is not None:
            reason.cleanFailure()
            chained = reason.value.__cause__ or reason.value.__context__
            for _ in range(8):  # a bounded walk: a chain may loop
                if chained is None:
                    break
                chained.__traceback__ = None
                chained = chained.__cause__ or chained.__context__
        super()._tlsShutdownFinished(reason)


class SiteTLSFactory(TLSMemoryBIOFactory):
    """
    TLS around a `GatewaySite`, for a connection the site admits: one it
    refuses (a cap, the new-connection rate) gets no TLS at all, and the
    reactor closes its socket at once.  Refusing through a TLS protocol
    (built, started, aborted, shut down) cost about 0.5 ms of the reactor
    per connection: a flood of bare connects, which cost their sender next
    to nothing, took 70% of a core without a single handshake.
    """

    protocol = _TLSWithoutCycles

    def buildProtocol(self, addr: Any) -> Any:
        inner = self.wrappedFactory.buildProtocol(addr)
        if isinstance(inner, _Excess):
            return None  # refused, and recorded, by the site
        return self.protocol(self, inner)


class GatewaySite(server.Site):
    """
    The gateway's `Site`: connection and request limits, early
    authentication, audited refusals.

    :param root: the root resource, for `twisted.web`'s own traversal.
    :param rpc: what ``/RPC2`` gets, and ``not_found`` what any other path gets.
    :param authenticate: the `Principal` of a request whose headers are in,
        or a failure with `Unauthenticated`.
    :param access_version: changes whenever the rules ``authenticate``
        applies change (a reload, a new token store).
    """

    protocol = GatewayChannel
    requestFactory = GatewayRequest

    def __init__(
        self, root: Resource, *, rpc: Resource, not_found: Resource, refusals: RefusalLog,
        clock: IReactorTime, limits: LimitsConfig, max_body_bytes: int,
        authenticate: Callable[[Any], "Deferred[Principal] | Principal"],
        backoff: Backoff | None = None,
        access_version: Callable[[], object] = lambda: None,
    ) -> None:
        # The body is XML-RPC, never a form: Twisted need not parse the
        # Content-Type (with the email package) of every request to find out.
        super().__init__(root, reactor=clock, timeout=limits.idle_timeout_seconds,
                         parsePOSTFormSubmission=False)
        self.displayTracebacks = False
        self.clock = clock
        self.limits = limits
        self.max_body_bytes = max_body_bytes
        self.authenticate = authenticate
        self.backoff = backoff
        #: What changes whenever a reload swaps the rules that authenticate
        #: (the current `Authenticator`): a connection's earlier verdict holds
        #: only while it stays the same.
        self.access_version = access_version
        self.refusals = refusals
        self.bodies = BodyBudget(limits.max_body_memory_bytes, max_body_bytes)
        self.rpc = rpc
        self._not_found = not_found
        self.connections: BySource[GatewayChannel] = BySource()
        self.connection_rate = ConnectionRate(clock)
        self._all_closed: list[Deferred[None]] = []
        #: Counters, for the admin listener and tests.
        self.refused_connections = 0
        self.slow_dropped = 0
        self.evicted = 0
        self.budget_refused = 0
        #: Requests let in whose bodies are still on their way, by principal
        #: (at most ``limits.max_in_flight`` each), and those refused past that.
        self.arriving: dict[str, int] = {}
        self.arriving_refused = 0

    def log(self, request: server.Request) -> None:
        """No access log: the audit trail records every request, the service log events."""

    def resource_for(self, request: server.Request) -> Resource:
        """The XML-RPC resource at exactly ``/RPC2``; the not-found one elsewhere."""
        return self.rpc if request.uri == RPC_TARGET else self._not_found

    def buildProtocol(self, addr: Any) -> Any:
        # One source for every per-source limit: an IPv6 host by its network
        # (limits.ipv6_source_prefix); the back-off and the sign-ins use it too.
        limits = self.limits
        source = source_key(getattr(addr, "host", ""), limits.ipv6_source_prefix)
        if self.connections.holds(source) >= limits.max_connections_per_source:
            return self._excess(source, addr, "too many connections from this address")
        if not self.connection_rate.take(source, limits.connection_rate_per_source,
                                         limits.connection_burst_per_source):
            return self._excess(source, addr, "too many new connections from this address "
                                f"(over {limits.connection_rate_per_source:g} a second)")
        if self.open_connections >= limits.max_connections and not self._make_room(source):
            # The gateway's cap, not the source's doing: its connection is given back.
            self.connection_rate.refund(source)
            return self._excess(source, addr, "the gateway is at its connection cap")
        channel: GatewayChannel = super().buildProtocol(addr)
        channel.source = source
        channel._counted = True
        self.connections.add(source, channel)
        return channel

    @property
    def open_connections(self) -> int:
        return len(self.connections)

    def left(self, channel: GatewayChannel) -> None:
        """A counted connection closed."""
        self.connections.remove(channel.source, channel)
        if not self.connections and self._all_closed:
            waiters, self._all_closed = self._all_closed, []
            for waiter in waiters:
                waiter.callback(None)

    def close_connections(self, grace: float = 2.0) -> Deferred[None]:
        """
        Close every open connection once what it has to send is written;
        fires when all are closed, or after ``grace`` seconds (the rest are
        then aborted).  For the end of a shutdown.
        """
        channels = self.connections.all()
        if not channels:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._all_closed.append(waiter)
        for channel in channels:
            channel.loseConnection()

        def abort() -> None:
            for channel in self.connections.all():
                if channel.transport is not None:
                    channel.transport.abortConnection()

        timer = self.clock.callLater(grace, abort)
        return waiter.addBoth(lambda r: (timer.cancel() if timer.active() else None, r)[1])

    def _make_room(self, source: str) -> bool:
        """
        At the cap: close an idle connection of the address holding the most,
        unless the newcomer's own address is that one.  True if room was made.
        """
        channel = self.connections.giving_way(
            source, lambda c: not c._lost and c.holds_no_work)
        if channel is None:
            return False
        self.evicted += 1
        self.refusals.note(address_text(channel.transport.getPeer()), "evicted", {
            "reason": "idle or unauthenticated connection closed for another address "
                      "at the connection cap",
        })
        self.left(channel)
        channel._counted = False
        channel.evict()
        return True

    def _excess(self, source: str, addr: Any, reason: str) -> Protocol:
        self.refused_connections += 1
        if self.refused_connections in (1, 10, 100) or self.refused_connections % 1000 == 0:
            _log.warn("connections refused so far: {n} ({reason})",
                      n=self.refused_connections, reason=reason)
        self.refusals.note(address_text(addr), "connection_refused", {"reason": reason})
        return _Excess()


def _tls_reason(error: BaseException) -> str:
    """OpenSSL's short reason, e.g. 'peer did not return a certificate'."""
    try:
        return str(error.args[0][0][2])[:200]
    except (IndexError, TypeError):
        return type(error).__name__
