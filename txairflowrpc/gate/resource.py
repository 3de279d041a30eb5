"""
The XML-RPC resource served at ``/RPC2``, and the root resource around it.

`RPCResource` serves XML-RPC over HTTP POST.  It takes nothing of
`twisted.web.xmlrpc.XMLRPC`'s request handling (which reads any body, of
any type, before asking who is calling): the caller is authenticated before
any XML is read, the body is checked for size, type and encoding, parsed by
`wire.parse_call`, and handed to the `Dispatcher`, the pipeline every call
passes through.  Every response carries an ``X-Request-Id`` header.  When
the client goes away, the call's work is cancelled.  Whatever goes wrong
inside, the caller gets an answer: a fault -32603 naming the request id
(or HTTP 500 before the caller is known), never a connection left hanging.

Every refusal (401, 404, 405, 413, 415, a request that is not XML-RPC) is
recorded on the audit trail; a refusal's answer, like a call's, leaves only
once its record is on disk.  The connection-level limits (body size while
it arrives, deadlines, connection cap) are in `txairflowrpc.gate.site`.
"""

from __future__ import annotations

import secrets
from typing import Any, Callable

from twisted.internet.defer import CancelledError, Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.resource import Resource

from ..audit.log import AuditLog
from ..core import errors
from ..core.spec import CallContext
from ..core.timefmt import iso_seconds, utc
from ..identity.authenticate import Unauthenticated
from ..identity.backoff import Backoff
from ..identity.principal import Principal
from . import wire
from .dispatch import Dispatcher
from .site import address_text

_log = Logger()

_XML_TYPES = (b"text/xml", b"application/xml")


def _request_id() -> str:
    return secrets.token_hex(8)


def _peer(request: Any) -> str:
    return address_text(request.getClientAddress())


class Refusals:
    """Records refused requests on the audit trail, then answers them."""

    def __init__(self, audit: AuditLog | None) -> None:
        self._audit = audit

    def record(
        self, request: Any, request_id: str, reason: str, *,
        http_status: int | None = None, fault_code: int | None = None,
        principal: Principal | None = None,
    ) -> Deferred[Any]:
        if self._audit is None:
            return succeed(None)
        fields: dict[str, Any] = {
            "kind": "refused", "request_id": request_id, "source": _peer(request),
            "method": None, "decision": "denied", "reason": reason,
            "http_status": http_status, "fault_code": fault_code,
            "http_method": request.method.decode("latin-1")[:16],
            "path": request.path.decode("latin-1")[:200],
        }
        if principal is not None:
            fields["principal"] = principal.name
            fields["auth"] = principal.audit_identity()
        return self._audit.append({k: v for k, v in fields.items() if v is not None})

    def answer(
        self, request: server.Request, status: int, message: str, *,
        request_id: str | None = None, principal: Principal | None = None,
    ) -> Any:
        """Refuse ``request`` with HTTP ``status`` once the refusal is recorded."""
        request_id = request_id or _request_id()
        request.setHeader(b"X-Request-Id", request_id.encode("ascii"))
        body = _http_error(request, status, message)
        recorded = self.record(
            request, request_id, message, http_status=status, principal=principal
        )
        recorded.addBoth(lambda _: _write(request, body, b"text/plain; charset=utf-8"))
        return server.NOT_DONE_YET


class RPCResource(Resource):
    """
    XML-RPC over HTTP POST, in front of a `Dispatcher`.

    :param authenticate: gives a Deferred of the `Principal` of a request,
        failing with `Unauthenticated`.
    :param backoff: delays the 401 answers to sources that keep failing.
    :param max_body_bytes: larger bodies get HTTP 413.
    """

    def __init__(
        self, dispatcher: Dispatcher, *,
        authenticate: Callable[[Any], "Deferred[Principal]"], max_body_bytes: int,
        clock: IReactorTime, audit: AuditLog | None = None, backoff: Backoff | None = None,
    ) -> None:
        super().__init__()
        self._dispatcher = dispatcher
        self._authenticate = authenticate
        self._max_body = max_body_bytes
        self._clock = clock
        self._backoff = backoff
        self.refusals = Refusals(audit)

    def render(self, request: server.Request) -> Any:
        if request.method != b"POST":
            request.setHeader(b"Allow", b"POST")
            return self.refusals.answer(request, 405, "only POST is allowed on /RPC2")
        return self.render_POST(request)

    def render_POST(self, request: server.Request) -> Any:
        request_id = _request_id()
        request.setHeader(b"X-Request-Id", request_id.encode("ascii"))
        d = maybeDeferred(self._authenticate, request)
        d.addCallbacks(
            self._authenticated, self._unauthenticated,
            (request, request_id), None, (request, request_id),
        )
        d.addErrback(_internal_error, request, request_id)
        return server.NOT_DONE_YET

    def _unauthenticated(self, failure: Failure, request: server.Request, request_id: str) -> None:
        reason = failure.value.reason if failure.check(Unauthenticated) else "authentication failed"
        if not failure.check(Unauthenticated):
            _log.failure("authentication of request {id} failed", failure, id=request_id)
        delay = self._backoff.failed(getattr(request.getClientAddress(), "host", "")) if (
            self._backoff is not None) else 0.0
        if delay:
            self._clock.callLater(
                delay, self.refusals.answer, request, 401, f"unauthenticated: {reason}",
                request_id=request_id,
            )
        else:
            self.refusals.answer(request, 401, f"unauthenticated: {reason}", request_id=request_id)

    def _authenticated(self, principal: Principal, request: server.Request, request_id: str) -> None:
        if principal.expires is not None and principal.expires_within(
            principal.warning_days, utc(self._clock.seconds())
        ):
            request.setHeader(b"X-Credential-Expires", iso_seconds(principal.expires).encode())
        problem = _body_problem(request)
        if problem is not None:
            self.refusals.answer(request, *problem, request_id=request_id, principal=principal)
            return
        request.content.seek(0, 0)
        body = request.content.read(self._max_body + 1)
        if len(body) > self._max_body:
            self.refusals.answer(
                request, 413, f"request body is larger than {self._max_body} bytes",
                request_id=request_id, principal=principal,
            )
            return
        try:
            method, params = wire.parse_call(body, charset=_charset(request))
        except errors.GatewayError as e:
            recorded = self.refusals.record(
                request, request_id, e.message, fault_code=e.code, principal=principal
            )
            content = wire.dump_fault(e.to_fault())
            recorded.addBoth(lambda _: _write(request, content))
            return
        ctx = CallContext(principal=principal, request_id=request_id, peer=_peer(request))
        d = self._dispatcher.call(ctx, method, params)
        gone: list[Failure] = []

        def client_gone(reason: Failure) -> None:
            gone.append(reason)
            d.cancel()

        request.notifyFinish().addErrback(client_gone)
        extensions = wire.extensions_of(request.getHeader(b"x-airflowrpc-extensions"))
        d.addCallbacks(wire.dump_response, self._fault_body, (extensions,), None, (request_id,))
        d.addCallback(lambda content: None if gone else _write(request, content))
        d.addErrback(_internal_error, request, request_id)

    def _fault_body(self, failure: Failure, request_id: str) -> bytes:
        if failure.check(CancelledError):
            # Normally the caller went away and nothing is written; should
            # work be cancelled while the caller still waits, it gets an
            # answer rather than a hang.
            return wire.dump_fault(errors.Cancelled().to_fault())
        return wire.dump_fault(errors.as_fault(failure.value, request_id))


def _internal_error(failure: Failure, request: server.Request, request_id: str) -> None:
    """
    The last resort of a request whose handling failed unexpectedly: log it
    and answer with a fault -32603 naming the request id, so that the
    caller is never left waiting for an answer that will not come.
    """
    _log.failure("request {id} failed", failure, id=request_id)
    _write(request, wire.dump_fault(errors.InternalError(request_id).to_fault()))


def _write(request: Any, content: bytes, content_type: bytes = b"text/xml; charset=utf-8") -> None:
    if request.finished or getattr(request, "_disconnected", False):
        return
    request.setHeader(b"Content-Type", content_type)
    request.setHeader(b"Content-Length", b"%d" % len(content))
    request.write(content)
    request.finish()


def _body_problem(request: server.Request) -> tuple[int, str] | None:
    ctype = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
    if ctype not in _XML_TYPES:
        return 415, "Content-Type must be text/xml"
    encoding = (request.getHeader(b"content-encoding") or b"identity").strip().lower()
    if encoding != b"identity":
        return 415, "Content-Encoding must be identity"
    return None


def _charset(request: server.Request) -> str | None:
    """The ``charset`` parameter of the request's ``Content-Type``, if any."""
    _, _, params = (request.getHeader(b"content-type") or b"").partition(b";")
    for param in params.split(b";"):
        name, _, value = param.partition(b"=")
        if name.strip().lower() == b"charset" and value.strip():
            return value.strip().strip(b'"').decode("latin-1")
    return None


def _http_error(request: server.Request, status: int, message: str) -> bytes:
    request.setResponseCode(status)
    if status == 401:
        request.setHeader(b"WWW-Authenticate", b'Bearer realm="airflowrpc"')
    return (message + "\n").encode("utf-8")


class _NotFound(Resource):
    """Any path but ``/RPC2``: a plain-text 404, recorded."""

    isLeaf = True

    def __init__(self, refusals: Refusals) -> None:
        super().__init__()
        self._refusals = refusals

    def render(self, request: server.Request) -> Any:
        return self._refusals.answer(request, 404, "not found: the XML-RPC endpoint is /RPC2")


class _Root(Resource):
    def __init__(self, refusals: Refusals) -> None:
        super().__init__()
        self._not_found = _NotFound(refusals)

    def getChild(self, path: bytes, request: server.Request) -> Resource:
        return self._not_found

    def render(self, request: server.Request) -> Any:
        return self._not_found.render(request)


def root(rpc: RPCResource) -> Resource:
    """The site's root, with the XML-RPC resource at ``/RPC2``."""
    top = _Root(rpc.refusals)
    top.putChild(b"RPC2", rpc)
    return top
