"""`PooledAgent`: the request `Agent` writes, without parsing each URL."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import succeed
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.web._newclient import HTTP11ClientProtocol
from twisted.web.client import URI, Agent, readBody
from twisted.web.http_headers import Headers

from txairflowrpc.upstream.transport import CachedEndpoints, PooledAgent, _Bytes

from .helpers import recorded_tls_options


class Pool:
    """An `HTTPConnectionPool` whose every connection is a protocol over a `StringTransport`."""

    persistent = True

    def __init__(self) -> None:
        self.asked: list[tuple[Any, Any]] = []
        self.protocols: list[tuple[HTTP11ClientProtocol, StringTransport]] = []

    def getConnection(self, key: Any, endpoint: Any) -> Any:
        self.asked.append((key, endpoint))
        protocol, transport = HTTP11ClientProtocol(), StringTransport()
        protocol.makeConnection(transport)
        self.protocols.append((protocol, transport))
        return succeed(protocol)


HOSTED = Headers({b"Host": [b"airflow:8080"], b"Accept": [b"application/json"],
                  b"Authorization": [b"Bearer t"]})


class NoAgent:
    def request(self, *args: Any) -> Any:
        raise AssertionError("a plain URL went through Agent")


def written(agent_for: Any, method: bytes, uri: bytes, headers: Headers | None,
            body: bytes | None, plain: bool = False) -> tuple[bytes, Any]:
    pool = Pool()
    agent = agent_for(MemoryReactorClock(), pool)
    if plain:
        agent._agent = NoAgent()
    agent.request(method, uri, headers, None if body is None else _Bytes(body))
    assert len(pool.protocols) == 1
    return pool.protocols[0][1].value(), pool.asked[0][0]


def agent(reactor: Any, pool: Pool) -> Agent:
    return Agent.usingEndpointFactory(reactor, CachedEndpoints(reactor), pool=pool)


@pytest.mark.parametrize(("method", "uri", "headers", "body", "plain"), [
    (b"GET", b"http://airflow:8080/api/v2/dags/etl/dagRuns/r1", HOSTED, None, True),
    (b"GET", b"http://airflow:8080/api/v2/dags?limit=5&dag_id_pattern=e%25", HOSTED, None, True),
    (b"POST", b"https://airflow/api/v2/dags/etl/dagRuns", HOSTED, b'{"conf":{}}', True),
    (b"GET", b"http://airflow:8080/", HOSTED, None, True),
    (b"GET", b"http://[::1]:8080/api/v2/version", HOSTED, None, True),
    # Taken apart by Agent itself: no Host header, no path, a fragment, an
    # empty query, space around it.
    (b"GET", b"http://airflow:8080/api/v2/version", None, None, False),
    (b"GET", b"http://airflow:8080/api/v2/version", Headers({b"Accept": [b"x"]}), None, False),
    (b"GET", b"http://airflow:8080", HOSTED, None, False),
    (b"GET", b"http://airflow:8080?x=1", HOSTED, None, False),
    (b"GET", b"http://airflow:8080/a#b", HOSTED, None, False),
    (b"GET", b"http://airflow:8080/a?", HOSTED, None, False),
    (b"GET", b" http://airflow:8080/a ", HOSTED, None, False),
    # Empty parameters (urlparse drops the ';'), an empty host, space Agent strips.
    (b"GET", b"http://airflow:8080/api/v2/dags/x;", HOSTED, None, False),
    (b"GET", b"http://airflow:8080/api/v2/dags/x;?limit=5", HOSTED, None, False),
    (b"GET", b"http:///api/v2/version", HOSTED, None, False),
    (b"GET", b"http://airflow:8080/api/v2/dags/x\x0b", HOSTED, None, False),
])
def test_it_writes_the_request_agent_writes(
    method: bytes, uri: bytes, headers: Headers | None, body: bytes | None, plain: bool,
) -> None:
    mine, my_key = written(PooledAgent, method, uri, headers, body, plain)
    agents, agents_key = written(agent, method, uri, headers, body)
    assert mine == agents and my_key == agents_key
    assert mine.startswith(method + b" ")


def test_one_endpoint_per_origin_and_the_answer_read() -> None:
    pool = Pool()
    agent = PooledAgent(MemoryReactorClock(), pool)
    for run in (b"r1", b"r2"):
        d = agent.request(b"GET", b"http://airflow:8080/api/v2/dags/etl/dagRuns/" + run, HOSTED)
        protocol, transport = pool.protocols[-1]
        assert transport.value().startswith(b"GET /api/v2/dags/etl/dagRuns/" + run + b" HTTP/1.1")
        responses: list[Any] = []
        d.addCallback(responses.append)
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
        (response,) = responses
        bodies: list[bytes] = []
        readBody(response).addCallback(bodies.append)
        assert (response.code, bodies) == (200, [b"{}"])
    assert pool.asked[0][0] == (b"http", b"airflow", 8080)
    assert pool.asked[0][1] is pool.asked[1][1]  # the endpoint made once
    other = agent.request(b"GET", b"http://other:9090/x", Headers({b"Host": [b"other:9090"]}))
    assert pool.asked[2][0] == (b"http", b"other", 9090)
    other.cancel()


@pytest.mark.parametrize(("method", "uri"), [
    (b"GET", b"http://airflow:8080/api/v2/dags/a b"),
    (b"GET", b"http://airflow:8080/api/v2/dags/\xc3\xa9"),
    (b"GET", b"http://airflow:8080/api/v2/dags/a\x7f"),
    (b"G T", b"http://airflow:8080/api/v2/dags/a"),
])
def test_what_agent_refuses_is_refused_before_a_connection_is_taken(
    method: bytes, uri: bytes,
) -> None:
    outcomes = []
    for agent_for in (agent, PooledAgent):
        pool = Pool()
        try:
            d = agent_for(MemoryReactorClock(), pool).request(method, uri, HOSTED)
        except ValueError:
            outcomes.append("raised")
        else:
            failures: list[Any] = []
            d.addErrback(failures.append)
            outcomes.append(f"failed {failures[0].type.__name__}" if failures else "pending")
        assert pool.asked == []
    assert outcomes == ["raised", "raised"]


def test_only_airflows_origin_is_verified_with_airflows_own_cas(monkeypatch: Any) -> None:
    from txairflowrpc.upstream.transport import OriginTrust

    made, cas = recorded_tls_options(monkeypatch)
    endpoints = CachedEndpoints(MemoryReactorClock(),
                                OriginTrust("https://airflow.internal:8443", cas))
    endpoints.endpointForURI(URI.fromBytes(b"https://airflow.internal:8443/api/v2/dags"))
    endpoints.endpointForURI(URI.fromBytes(b"https://airflow.internal:8443/api/v2/other"))
    assert made == [("airflow.internal", cas)]  # made once for the origin
    endpoints.endpointForURI(URI.fromBytes(b"https://idp.example.com/jwks"))
    endpoints.endpointForURI(URI.fromBytes(b"https://airflow.internal/other-port"))
    endpoints.endpointForURI(URI.fromBytes(b"http://airflow.internal:8443/plain"))
    assert made[1:] == [("idp.example.com", None), ("airflow.internal", None)]


def test_why_tls_failed_is_told_from_other_failures() -> None:
    from OpenSSL import SSL
    from service_identity import VerificationError
    from twisted.internet.error import ConnectionDone
    from twisted.python.failure import Failure

    from txairflowrpc.upstream.transport import tls_refusal

    verify = SSL.Error([("SSL routines", "", "certificate verify failed")])
    assert tls_refusal([Failure(ConnectionDone()), Failure(verify)]) == "certificate verify failed"
    assert "does not name the host" in str(tls_refusal([Failure(VerificationError(errors=[]))]))
    assert tls_refusal([Failure(SSL.Error())]) == "the TLS handshake failed"
    assert tls_refusal([Failure(ConnectionDone())]) is None
