"""
One HTTP exchange with Airflow, at the level of twisted.web's `Agent`.

The Airflow client used treq, and on the path every call takes treq cost
about a quarter of the gateway's CPU (py-spy, c=64): parsing each URL with
hyperlink and IDNA, a cookie jar, a redirect agent, a content-decoding
agent, a Content-Type parse per response; and `Agent` itself made a new
endpoint, with its own IDNA encoding of the host, for every request.
Airflow's API needs none of it.  Here the base URL is parsed once, the
endpoint to Airflow is made once (`CachedEndpoints`), no request's URL is
parsed again (`PooledAgent`), the header values are bytes built once per
token, and the body and the query are bytes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlencode

import attrs
from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.ssl import optionsForClientTLS
from twisted.python.failure import Failure
from twisted.web._newclient import Request  # what Agent sends; twisted.web.client uses it too
from twisted.web.client import URI, Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IAgentEndpointFactory, IBodyProducer
from zope.interface import implementer

from ..core import errors
from ..core.bodies import EncodedAnswer, TooLarge, read_capped

#: The largest answer body read from Airflow, in bytes: a log page, a list of
#: 100 runs with their confs, are far smaller.
MAX_ANSWER_BYTES = 16 * 1024 * 1024


@attrs.frozen
class Reply:
    """Airflow's answer: its status and its body, read whole."""

    status: int
    body: bytes
    #: Seconds its ``Retry-After`` asks to wait (a 429 or 503), or None.
    retry_after: float | None = None


@implementer(IBodyProducer)
class _Bytes:
    """A request body that is already all there."""

    def __init__(self, body: bytes) -> None:
        self._body = body
        self.length = len(body)

    def startProducing(self, consumer: Any) -> Deferred[None]:
        consumer.write(self._body)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


@attrs.frozen
class OriginTrust:
    """
    The CAs that verify one https origin's certificate (Airflow's, from
    ``airflow.ca_file``) instead of the system's: only that origin's, so
    that a private CA trusted for Airflow is never trusted for anyone else
    (an OIDC provider's key set, AWS STS).
    """

    #: The origin's base URL, e.g. ``https://airflow.internal:8443``.
    base_url: str
    #: What `twisted.internet.ssl.trustRootFromCertificates` made of the CAs.
    trust_root: Any

    def key(self) -> tuple[bytes, bytes, int]:
        """The (scheme, host, port) of the origin, as `URI` gives them."""
        uri = URI.fromBytes(self.base_url.encode("ascii"))
        return (uri.scheme, uri.host, uri.port)


@implementer(IAgentEndpointFactory)
class CachedEndpoints:
    """
    `Agent`'s endpoints, made once per scheme, host and port rather than
    once per request (a `HostnameEndpoint` encodes its host with IDNA when
    it is made).  An https endpoint verifies the server's certificate and
    host name against the system's CAs, or, for ``trust``'s origin, its own.
    """

    def __init__(self, reactor: Any, trust: OriginTrust | None = None) -> None:
        self._reactor = reactor
        self._made: dict[tuple[bytes, bytes, int], IStreamClientEndpoint] = {}
        self._trusted = (trust.key(), trust.trust_root) if trust is not None else None

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        key = (uri.scheme, uri.host, uri.port)
        endpoint = self._made.get(key)
        if endpoint is None:
            host = uri.host.decode("ascii")
            endpoint = HostnameEndpoint(self._reactor, host, uri.port)
            if uri.scheme == b"https":
                if self._trusted is not None and self._trusted[0] == key:
                    options = optionsForClientTLS(host, trustRoot=self._trusted[1])
                else:
                    options = optionsForClientTLS(host)
                endpoint = wrapClientTLS(options, endpoint)
            endpoint = self._made[key] = endpoint
        return endpoint


#: A URL `PooledAgent` sends as `Agent` would, without parsing it: a
#: scheme, a host part, and a path and query of RFC 3986's characters but
#: ``;`` (``urlparse`` moves empty parameters) and without a fragment.
_PLAIN_URL = re.compile(
    rb"(https?://[A-Za-z0-9._~%!$&'()*+,=:@\[\]-]+)(/[A-Za-z0-9._~%!$&'()*+,=:@/?-]*)\Z")


@implementer(IAgent)
class PooledAgent:
    """
    `Agent` over ``pool`` for the URLs the gateway makes, without parsing
    each one: the scheme and host part is parsed once (the key and endpoint
    of its connections), the rest is sent as it is.  Through `Agent`, the
    URL's parse and its origin form cost about 8 µs of every request on
    this path (twice that under load).  A URL it does not take apart
    plainly (`_PLAIN_URL`; an empty query) and a request without a Host
    header (treq's, for key sets) go through `Agent` itself; the request
    it writes is `Agent`'s, byte for byte (a test compares them), and it
    is made before a connection is taken from the pool.

    :param trust: the CAs for Airflow's https origin (`OriginTrust`), if
        not the system's.
    """

    def __init__(
        self, reactor: Any, pool: HTTPConnectionPool, trust: OriginTrust | None = None,
    ) -> None:
        self._pool = pool
        self._endpoints = CachedEndpoints(reactor, trust)
        self._agent = Agent.usingEndpointFactory(reactor, self._endpoints, pool=pool)
        self._origins: dict[bytes, tuple[tuple[bytes, bytes, int], IStreamClientEndpoint]] = {}

    def request(
        self, method: bytes, uri: bytes, headers: Headers | None = None,
        bodyProducer: IBodyProducer | None = None,
    ) -> Deferred[Any]:
        plain = _PLAIN_URL.match(uri)
        if (plain is None or uri.endswith(b"?") or headers is None
                or not headers.hasHeader(b"host")):
            return self._agent.request(method, uri, headers, bodyProducer)
        base, target = plain.groups()
        origin = self._origins.get(base)
        if origin is None:
            parsed = URI.fromBytes(base)
            if len(self._origins) > 8:
                self._origins.clear()
            origin = self._origins[base] = (
                (parsed.scheme, parsed.host, parsed.port), self._endpoints.endpointForURI(parsed))
        key, endpoint = origin
        # Made first: a bad method raises, as through Agent, holding no connection.
        request = Request(method, target, headers, bodyProducer, self._pool.persistent)
        return self._pool.getConnection(key, endpoint).addCallback(
            lambda protocol: protocol.request(request))


@implementer(IAgent)
class IdentityOnly:
    """
    An `IAgent` that asks for answers as they are and refuses any other:
    for treq's `HTTPClient` (OIDC key sets, AWS STS), which asks for gzip
    and inflates it before a byte is counted.  Found by an attacker's
    review: a 200 KB gzip answer from STS became 200 MB of the gateway's
    memory before the 64 kB cap on its body refused it (four at once: 446
    MB).  Under treq's content decoder, this takes the ``Accept-Encoding``
    it adds off the request, and fails an answer that is encoded anyway,
    closing its connection before its body is read, so the caps on a body
    (`read_capped`) count what comes over the wire.
    """

    def __init__(self, agent: IAgent) -> None:
        self._agent = agent

    def request(
        self, method: bytes, uri: bytes, headers: Headers | None = None,
        bodyProducer: IBodyProducer | None = None,
    ) -> Deferred[Any]:
        headers = Headers() if headers is None else headers.copy()
        headers.removeHeader(b"accept-encoding")
        return self._agent.request(method, uri, headers, bodyProducer).addCallback(
            _identity_only)


def _identity_only(response: Any) -> Any:
    encodings = [e.strip().lower()
                 for value in response.headers.getRawHeaders(b"content-encoding", [])
                 for e in value.split(b",") if e.strip()]
    refused = [e for e in encodings if e != b"identity"]
    if refused:
        read_capped(response, 0).addErrback(lambda _: None)  # its connection closed, unread
        raise EncodedAnswer(b", ".join(refused).decode("latin-1"))
    return response


class Transport:
    """
    HTTP exchanges with one Airflow through an `IAgent` (a `PooledAgent`
    in production, treq's in-memory agent in tests).

    :param base_url: Airflow's base URL, e.g. ``http://127.0.0.1:8080``.
    """

    def __init__(self, agent: IAgent, base_url: str) -> None:
        self._agent = agent
        self._base = base_url.rstrip("/").encode("ascii")
        self._host = URI.fromBytes(self._base).netloc
        self._headers: dict[tuple[bytes, bytes | None, bool], Headers] = {}

    def exchange(
        self, method: bytes, path: str, *, accept: bytes, authorization: bytes | None = None,
        body: bytes | None = None, query: list[tuple[str, str]] | None = None,
    ) -> Deferred[Reply]:
        """
        Send one request and read its whole answer.  Fails as `Agent` and
        `readBody` fail (refused, broken, ...), and with `errors.UpstreamError`
        for an answer larger than `MAX_ANSWER_BYTES`; cancelling it abandons
        the request.
        """
        uri = self._base + path.encode("ascii")
        if query:
            uri += b"?" + urlencode(query).encode("ascii")
        d = self._agent.request(method, uri, self._headers_for(accept, authorization, body),
                                None if body is None else _Bytes(body))
        return d.addCallback(_read)

    def _headers_for(self, accept: bytes, authorization: bytes | None, body: bytes | None) -> Headers:
        """
        The request's headers; the same object for the same values (Agent
        does not change headers that name the Host), rebuilt when the token
        changes.
        """
        key = (accept, authorization, body is not None)
        headers = self._headers.get(key)
        if headers is None:
            if len(self._headers) > 8:  # tokens come and go: keep only the latest
                self._headers.clear()
            raw = {b"Host": [self._host], b"Accept": [accept]}
            if authorization is not None:
                raw[b"Authorization"] = [authorization]
            if body is not None:
                raw[b"Content-Type"] = [b"application/json"]
            headers = self._headers[key] = Headers(raw)
        return headers


def tls_refusal(reasons: Iterable[Failure]) -> str | None:
    """
    Why TLS with the server failed, if that is among the ``reasons`` an
    exchange failed for (`ResponseNeverReceived`'s, say): OpenSSL's words
    (``certificate verify failed``), or that the certificate does not name
    the host; None if TLS is not why.
    """
    for reason in reasons:
        value = reason.value
        if isinstance(value, VerificationError):
            return "its certificate does not name the host in airflow.base_url"
        if isinstance(value, SSL.Error):
            errors_ = value.args[0] if value.args and isinstance(value.args[0], list) else []
            said = [str(e[-1]) for e in errors_ if isinstance(e, tuple) and e and e[-1]]
            return "; ".join(dict.fromkeys(said))[:300] or "the TLS handshake failed"
    return None


def _too_large(failure: Failure) -> Failure:
    failure.trap(TooLarge)
    raise errors.AnswerTooLarge(f"Airflow's answer is larger than {failure.value.cap} bytes")


#: The longest wait a ``Retry-After`` is read as (a larger one is this).
MAX_RETRY_AFTER = 3600.0


def retry_after(response: Any) -> float | None:
    """
    The seconds a 429 or 503 answer's ``Retry-After`` asks for (RFC 9110:
    a number of seconds; an HTTP date is taken as not given), or None.
    """
    if response.code not in (429, 503):
        return None
    values = response.headers.getRawHeaders(b"retry-after") or []
    text = values[0].strip() if values else b""
    if not text.isdigit() or len(text) > 10:
        return None
    return min(float(text), MAX_RETRY_AFTER)


def _read(response: Any, limit: int = MAX_ANSWER_BYTES) -> Deferred[Reply]:
    """Airflow's answer, read whole; at most ``limit`` bytes of body (`core.bodies`)."""
    return read_capped(response, limit).addCallbacks(
        lambda body: Reply(response.code, body, retry_after(response)), _too_large)
