"""
The XML-RPC resource served at ``/RPC2``, and the root resource around it.

`RPCResource` serves XML-RPC over HTTP POST.  It takes nothing of
`twisted.web.xmlrpc.XMLRPC`'s request handling (which reads any body, of
any type, before asking who is calling): the site has authenticated the
caller before any of the body was read (`txairflowrpc.gate.site`); here the
body is checked for type and encoding, parsed by `wire.parse_call` and let
go, and the call handed to the `Dispatcher`, the pipeline every call passes
through.  Every response carries an ``X-Request-Id`` header.  When the
client goes away, the call's work is cancelled (a change already on its way
to Airflow finishes and is recorded).  Whatever goes wrong inside, the
caller gets an answer: a fault -32603 naming the request id, never a
connection left hanging.

Every refusal of an authenticated caller (404, 405, 413, 415, a request
that is not XML-RPC) is recorded on the audit trail; its answer, like a
call's, leaves only once its record is on disk.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.resource import Resource

from ..core import errors
from ..core.spec import CallContext, new_request_id
from ..core.timefmt import iso_seconds, utc
from ..identity.principal import Principal
from . import wire
from .dispatch import Dispatcher
from .refusals import RPC_TARGET, RefusalLog, method_field
from .site import address_text

_log = Logger()

_XML_TYPES = (b"text/xml", b"application/xml")

#: The largest response body kept for the next caller of the same result.
_KEEP_ANSWER_BYTES = 64 * 1024


def _peer(request: Any) -> str:
    return address_text(request.getClientAddress())


class RPCResource(Resource):
    """
    XML-RPC over HTTP POST, in front of a `Dispatcher`.

    The caller was authenticated by the site before the body was read
    (`GatewayRequest.principal`); a request without a principal is refused
    (deny by default), whatever brought it here.

    :param max_body_bytes: larger bodies get HTTP 413.
    """

    isLeaf = True

    def __init__(
        self, dispatcher: Dispatcher, *, refusals: RefusalLog, max_body_bytes: int,
        clock: IReactorTime,
    ) -> None:
        super().__init__()
        self._dispatcher = dispatcher
        self.max_body_bytes = max_body_bytes
        self._clock = clock
        self.refusals = refusals
        #: The last result answered, the caller's extensions and its body.
        self._last_answer: tuple[Any, Any, bytes] = (None, None, b"")

    def render(self, request: server.Request) -> Any:
        request_id = new_request_id()
        request.setHeader(b"X-Request-Id", request_id.encode("ascii"))
        principal = getattr(request, "principal", None)
        if principal is None:
            return refuse(self.refusals, request, request_id, 401,
                          "unauthenticated: no credentials were checked")
        if request.method != b"POST":
            request.setHeader(b"Allow", b"POST")
            return refuse(self.refusals, request, request_id, 405,
                          "only POST is allowed on /RPC2", principal)
        try:
            self._serve(request, request_id, principal)
        except Exception:
            self._internal_error(Failure(), request, request_id)
        return server.NOT_DONE_YET

    def _serve(self, request: server.Request, request_id: str, principal: Principal) -> None:
        if principal.expires is not None and principal.expires_within(
            principal.warning_days, utc(self._clock.seconds())
        ):
            request.setHeader(b"X-Credential-Expires", iso_seconds(principal.expires).encode())
        problem = _body_problem(request)
        if problem is not None:
            refuse(self.refusals, request, request_id, *problem, principal)
            return
        request.content.seek(0, 0)
        body = request.content.read(self.max_body_bytes + 1)
        release = getattr(request, "release_body", None)
        if release is not None:
            release()  # parsed below; nothing needs the bytes after that
        if len(body) > self.max_body_bytes:
            refuse(self.refusals, request, request_id, 413,
                   f"request body is larger than {self.max_body_bytes} bytes", principal)
            return
        ctx = CallContext(principal=principal, request_id=request_id, peer=_peer(request))
        extensions = wire.extensions_of(request.getHeader(b"x-airflowrpc-extensions"),
                                        request.getHeader(b"user-agent"))
        charged = False
        try:
            # A large body's parse is paid for first; past the caller's rate
            # it is refused unread (its refusal counted, as the rate's are).
            charged = self._dispatcher.charge_body(ctx, len(body))
            method, params = wire.parse_call(body, charset=_charset(request))
        except errors.GatewayError as e:
            if charged:
                self._dispatcher.settle(ctx)
            recorded = self.refusals.record(_fields(
                self.refusals, request, request_id, e.message, principal, fault_code=e.code),
                charged=charged)
            content = wire.dump_fault(e.to_fault(), extensions)
            recorded.addBoth(lambda _: _write(request, content))
            return
        except BaseException:
            if charged:
                self._dispatcher.settle(ctx)
            raise
        del body
        d = self._dispatcher.call(ctx, method, params, charged=charged)
        gone: list[Failure] = []

        def client_gone(reason: Failure) -> None:
            gone.append(reason)
            d.cancel()

        request.notifyFinish().addErrback(client_gone)
        d.addCallbacks(self._answer_body, self._fault_body, (extensions,), None,
                       (request_id, extensions))
        d.addCallback(lambda content: None if gone else _write(request, content))
        d.addErrback(self._internal_error, request, request_id)

    def _answer_body(self, result: Any, extensions: frozenset[str]) -> bytes:
        """
        The response body of ``result``.  The callers of one shared read get
        the very same result (`txairflowrpc.upstream.client`): the last body
        written is kept with the result it was written from (held, so no
        other object can take its id) and given to the next caller of that
        object with the same extensions, written once for a whole polling
        storm.  It relies on what every handler does: a result is not
        changed once its call has been answered.
        """
        last = self._last_answer
        if last[0] is result and last[1] == extensions:
            return last[2]
        content = wire.dump_response(result, extensions)
        if len(content) <= _KEEP_ANSWER_BYTES:
            self._last_answer = (result, extensions, content)
        return content

    def _internal_error(self, failure: Failure, request: server.Request,
                        request_id: str) -> None:
        """
        The last resort of a request whose handling failed unexpectedly: log
        it, count it (`CallMeter.answer_failed`) and answer with a fault
        -32603 naming the request id, so that the caller is never left
        waiting for an answer that will not come.
        """
        _log.failure("request {id} failed", failure, id=request_id)
        self._dispatcher.meter.answer_failed()
        _write(request, wire.dump_fault(errors.InternalError(request_id).to_fault()))

    def _fault_body(self, failure: Failure, request_id: str,
                    extensions: frozenset[str]) -> bytes:
        if failure.check(CancelledError):
            # Normally the caller went away and nothing is written; should
            # work be cancelled while the caller still waits, it gets an
            # answer rather than a hang.
            return wire.dump_fault(errors.Cancelled().to_fault(), extensions)
        return wire.dump_fault(errors.as_fault(failure.value, request_id), extensions)


def _fields(
    refusals: RefusalLog, request: Any, request_id: str, reason: str,
    principal: Principal | None, **extra: Any,
) -> dict[str, Any]:
    """What the record of a refused request says."""
    fields: dict[str, Any] = {
        "request_id": request_id, "source": _peer(request), "method": None, "reason": reason,
        "http_method": method_field(request.method),
        **refusals.target_fields(request.uri), **extra,
    }
    if principal is not None:
        fields["principal"] = principal.name
        fields["auth"] = principal.audit_identity()
    return fields


def refuse(
    refusals: RefusalLog, request: server.Request, request_id: str, status: int, message: str,
    principal: Principal | None = None,
) -> Any:
    """Refuse ``request`` with HTTP ``status`` once the refusal is on disk."""
    request.setHeader(b"X-Request-Id", request_id.encode("ascii"))
    request.setResponseCode(status)
    if status == 401:
        request.setHeader(b"WWW-Authenticate", b'Bearer realm="airflowrpc"')
    body = (message + "\n").encode("utf-8")
    recorded = refusals.record(_fields(refusals, request, request_id, message, principal,
                                       http_status=status))
    recorded.addBoth(lambda _: _write(request, body, b"text/plain; charset=utf-8"))
    return server.NOT_DONE_YET


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


class NotFound(Resource):
    """Any path but exactly ``/RPC2``: a plain-text 404, recorded."""

    isLeaf = True

    def __init__(self, refusals: RefusalLog) -> None:
        super().__init__()
        self._refusals = refusals

    def render(self, request: server.Request) -> Any:
        return refuse(self._refusals, request, new_request_id(), 404,
                      "not found: the XML-RPC endpoint is /RPC2",
                      getattr(request, "principal", None))


class Root(Resource):
    """
    The root for `twisted.web`'s own traversal (the gateway's site routes
    by `GatewaySite.resource_for` instead): ``/RPC2`` spelt exactly, and
    nothing below it.
    """

    def __init__(self, rpc: RPCResource, not_found: NotFound) -> None:
        super().__init__()
        self._rpc = rpc
        self._not_found = not_found

    def getChildWithDefault(self, path: bytes, request: server.Request) -> Resource:
        return self._rpc if request.uri == RPC_TARGET else self._not_found

    def render(self, request: server.Request) -> Any:
        return self._not_found.render(request)
