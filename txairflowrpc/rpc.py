"""
The XML-RPC resource served at ``/RPC2``.

It builds on `twisted.web.xmlrpc.XMLRPC` for the HTTP side (POST only,
405 otherwise) and replaces its request handling: the caller is
authenticated before any XML is read, the body is checked for size, type
and encoding, parsed by `wire.parse_call`, and handed to the `Dispatcher`,
the pipeline every call passes through.  Every response carries an
``X-Request-Id`` header.  When the client goes away, the call's work is
cancelled.
"""

from __future__ import annotations

import secrets
from typing import Any, Callable

from twisted.internet.defer import CancelledError
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.resource import Resource
from twisted.web.xmlrpc import XMLRPC, NoSuchFunction

from . import errors, wire
from .auth import Principal, Unauthenticated
from .dispatch import Dispatcher
from .spec import CallContext

_log = Logger()

_XML_TYPES = (b"text/xml", b"application/xml")


def _request_id() -> str:
    return secrets.token_hex(8)


class RPCResource(XMLRPC):
    """
    XML-RPC over HTTP POST, in front of a `Dispatcher`.

    :param authenticate: gives the `Principal` of a request or raises
        `Unauthenticated`.
    :param max_body_bytes: larger bodies get HTTP 413.
    """

    def __init__(
        self, dispatcher: Dispatcher, *, authenticate: Callable[[Any], Principal],
        max_body_bytes: int,
    ) -> None:
        super().__init__(allowNone=False, useDateTime=False)
        self._dispatcher = dispatcher
        self._authenticate = authenticate
        self._max_body = max_body_bytes

    def lookupProcedure(self, procedurePath: str) -> Any:
        # Only registered methods; never Twisted's attribute lookup.
        spec = self._dispatcher.methods.get(procedurePath)
        if spec is None:
            raise NoSuchFunction(errors.METHOD_NOT_FOUND, "method not found")
        return spec.handler

    def listProcedures(self) -> list[str]:
        return sorted(self._dispatcher.methods)

    def render(self, request: server.Request) -> Any:
        if request.method != b"POST":
            request.setHeader(b"Allow", b"POST")
            return _http_error(request, 405, "only POST is allowed on /RPC2")
        return self.render_POST(request)

    def render_POST(self, request: server.Request) -> Any:
        request_id = _request_id()
        request.setHeader(b"X-Request-Id", request_id.encode("ascii"))
        try:
            principal = self._authenticate(request)
        except Unauthenticated as e:
            return _http_error(request, 401, f"unauthenticated: {e.reason}")
        problem = _body_problem(request)
        if problem is not None:
            return _http_error(request, *problem)
        request.content.seek(0, 0)
        body = request.content.read(self._max_body + 1)
        if len(body) > self._max_body:
            return _http_error(
                request, 413, f"request body is larger than {self._max_body} bytes"
            )
        peer = request.getClientAddress()
        ctx = CallContext(
            principal=principal, request_id=request_id,
            peer=f"{getattr(peer, 'host', '')}:{getattr(peer, 'port', '')}",
        )
        try:
            method, params = wire.parse_call(body)
        except errors.GatewayError as e:
            self._write(request, wire.dump_fault(e.to_fault()))
            return server.NOT_DONE_YET
        d = self._dispatcher.call(ctx, method, params)
        gone: list[Failure] = []

        def client_gone(reason: Failure) -> None:
            gone.append(reason)
            d.cancel()

        request.notifyFinish().addErrback(client_gone)
        d.addCallbacks(wire.dump_response, self._fault_body, errbackArgs=(request_id,))
        d.addCallback(lambda content: None if gone else self._write(request, content))
        d.addErrback(lambda f: None if f.check(CancelledError) else _log.failure("", f))
        return server.NOT_DONE_YET

    def _fault_body(self, failure: Failure, request_id: str) -> bytes:
        if failure.check(CancelledError):
            return failure  # type: ignore[return-value]
        return wire.dump_fault(errors.as_fault(failure.value, request_id))

    def _write(self, request: server.Request, content: bytes) -> None:
        request.setHeader(b"Content-Type", b"text/xml; charset=utf-8")
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


def _http_error(request: server.Request, status: int, message: str) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
    if status == 401:
        request.setHeader(b"WWW-Authenticate", b'Bearer realm="airflowrpc"')
    return (message + "\n").encode("utf-8")


class _Root(Resource):
    """``/RPC2`` and nothing else: any other path is a plain-text 404."""

    def getChild(self, path: bytes, request: server.Request) -> Resource:
        return _NotFound()

    def render(self, request: server.Request) -> bytes:
        return _http_error(request, 404, "not found: the XML-RPC endpoint is /RPC2")


class _NotFound(Resource):
    isLeaf = True

    def render(self, request: server.Request) -> bytes:
        return _http_error(request, 404, "not found: the XML-RPC endpoint is /RPC2")


def root(rpc: RPCResource) -> Resource:
    """The site's root, with the XML-RPC resource at ``/RPC2``."""
    top = _Root()
    top.putChild(b"RPC2", rpc)
    return top
