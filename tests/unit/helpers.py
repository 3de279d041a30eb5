"""The whole gateway site in memory: StubTreq on both sides, a Clock for time."""

from __future__ import annotations

import re
import tempfile
import xmlrpc.client
from pathlib import Path
from typing import Any

import attrs
from treq.testing import RequestTraversalAgent, StubTreq
from twisted.internet.defer import maybeDeferred
from twisted.internet.task import Clock

from txairflowrpc.audit.log import AuditLog
from txairflowrpc.config.sections import REDACT_DEFAULT
from txairflowrpc.config import (
    AccessConfig,
    AirflowConfig,
    AuditConfig,
    AuthSettings,
    Config,
    HealthConfig,
    LimitsConfig,
    ListenConfig,
    RPCConfig,
    TLSConfig,
)
from txairflowrpc.identity.authenticate import Unauthenticated
from txairflowrpc.identity.principal import Principal
from txairflowrpc.identity.scopes import SCOPES, Grants, Role, Scope
from twisted.web.resource import Resource

from txairflowrpc.gate.resource import refuse
from txairflowrpc.gate.site import GatewaySite
from txairflowrpc.service.tap import build_site

from ..fakes import FakeAirflow

CONFIG = Config(
    source=Path("test.toml"),
    listen=ListenConfig(host="127.0.0.1", port=0),
    tls=TLSConfig(certificate=Path("x"), private_key=Path("x"), client_ca=Path("x")),
    airflow=AirflowConfig(base_url="http://airflow.test", username="gateway",
                          password_file=Path("pw"), password="pw", timeout_seconds=10,
                          max_connections=4, max_in_flight=8, retries=2, breaker_failures=5,
                          breaker_reset_seconds=10),
    rpc=RPCConfig(max_multicall=5, max_wait_seconds=300, wait_poll_seconds=2,
                  max_body_bytes=256 * 1024),
    audit=AuditConfig(path=Path("unused"), rotate_bytes=0, rotate_daily=False, fsync=False,
                      redact_keys=REDACT_DEFAULT),
    limits=LimitsConfig(request_deadline_seconds=30, idle_timeout_seconds=60,
                        handshake_timeout_seconds=10, max_connections=100, rate_per_second=1000,
                        burst=1000, max_in_flight=100, call_deadline_seconds=60),
    health=HealthConfig(host="127.0.0.1", port=0, certificate_warning_days=14),
    access=AccessConfig(
        auth=AuthSettings(client_certificate="required", require_token=False, token_store=None,
                          token_days=90, rotation_overlap_seconds=60, expiry_warning_days=14,
                          failure_backoff_max_seconds=30),
        roles={}, principals={}, oidc={}),
)


@attrs.define
class Gateway:
    clock: Clock
    airflow: FakeAirflow
    client: StubTreq
    audit: AuditLog
    site: GatewaySite
    principal: Principal | None = attrs.field(factory=lambda: OPERATOR)

    def advance(self, seconds: float) -> None:
        """Let time pass, then deliver any response written meanwhile."""
        self.clock.advance(seconds)
        self.client.flush()

    def post(self, body: bytes, headers: dict[str, str] | None = None, path: str = "/RPC2") -> Any:
        hdrs = {"Content-Type": "text/xml"}
        hdrs.update(headers or {})
        return self.client.post("https://gw.test" + path, data=body, headers=hdrs)

    def call_d(self, method: str, *params: Any, headers: dict[str, str] | None = None) -> Any:
        """The Deferred of (status, headers, parsed result or Fault)."""
        d = self.post(dumps(params, method), headers)

        async def read(response: Any) -> Any:
            body = await response.content()
            try:
                (result,), _ = xmlrpc.client.loads(body)
            except xmlrpc.client.Fault as fault:
                result = fault
            return response.code, response.headers, result

        from twisted.internet.defer import Deferred

        return d.addCallback(lambda r: Deferred.fromCoroutine(read(r)))


class Big(int):
    """An integer beyond 32 bits, sent as ``<i8>`` (Python's xmlrpc.client will not)."""


def dumps(params: tuple[Any, ...], method: str) -> bytes:
    """A methodCall like xmlrpc.client's, with nils allowed and `Big` ints as <i8>."""

    def mark(value: Any) -> Any:
        if isinstance(value, Big):
            return f"\x01big:{int(value)}"
        if isinstance(value, dict):
            return {k: mark(v) for k, v in value.items()}
        if isinstance(value, list):
            return [mark(v) for v in value]
        return value

    text = xmlrpc.client.dumps(tuple(mark(p) for p in params), method, allow_none=True)
    return re.sub("<string>\x01big:(-?[0-9]+)</string>", r"<i8>\1</i8>", text).encode()


#: The key of the in-memory gateway's audit digests.
DIGEST_KEY = b"d" * 32

#: A role with every scope on every DAG.
EVERYTHING = Role("operator", tuple(Scope.parse(name) for name in SCOPES))
OPERATOR = Principal("ci-bot", "client_certificate", roles=("operator",),
                     grants=Grants((EVERYTHING,)))


class AuthenticatingRoot(Resource):
    """
    Stands in, for StubTreq (which brings its own `Site`), for what the
    gateway's `GatewaySite` does once a request's headers are in: set the
    request's principal, or refuse it with 401.
    """

    def __init__(self, site: GatewaySite) -> None:
        super().__init__()
        self._site = site

    def getChildWithDefault(self, path: bytes, request: Any) -> Resource:
        try:
            request.principal = self._site.authenticate(request)
        except Unauthenticated as e:
            return _Refused(self._site.refusals, f"unauthenticated: {e.reason}")
        return self._site.resource.getChildWithDefault(path, request)


class _Refused(Resource):
    isLeaf = True

    def __init__(self, refusals: Any, message: str) -> None:
        super().__init__()
        self._refusals, self._message = refusals, message

    def render(self, request: Any) -> Any:
        return refuse(self._refusals, request, "0" * 16, 401, self._message)


def audit_log(directory: str, clock: Clock, **kw: Any) -> AuditLog:
    """An audit log that writes synchronously, for tests."""
    log = AuditLog(Path(directory) / "audit.jsonl", clock=clock,
                   run_blocking=lambda f: maybeDeferred(f), instance="test", **kw)
    log.open()
    return log


def gateway(
    config: Config = CONFIG, audit_dir: str | None = None, clock: Clock | None = None,
    audit: AuditLog | None = None,
) -> Gateway:
    clock = clock or Clock()
    airflow = FakeAirflow()
    audit = audit or audit_log(audit_dir or tempfile.mkdtemp(), clock)
    holder: list[Gateway] = []

    def authenticate(request: Any) -> Principal:
        if holder[0].principal is None:
            raise Unauthenticated("a client certificate is required")
        return holder[0].principal

    site = build_site(config, clock, RequestTraversalAgent(airflow), audit, authenticate=authenticate,
                      digest_key=DIGEST_KEY).site
    gw = Gateway(clock, airflow, StubTreq(AuthenticatingRoot(site)), audit, site)
    holder.append(gw)
    return gw


def recorded_tls_options(monkeypatch: Any) -> tuple[list[tuple[str, Any]], Any]:
    """
    Record each ``optionsForClientTLS(host, trustRoot)`` the upstream
    transport asks for (the real options are still made), and a trust root
    of a new CA to give it: (the records, that trust root).
    """
    import trustme
    from twisted.internet import ssl

    from txairflowrpc.upstream import transport

    made: list[tuple[str, Any]] = []
    real = transport.optionsForClientTLS

    def recording(host: str, trustRoot: Any = None) -> Any:
        made.append((host, trustRoot))
        return real(host) if trustRoot is None else real(host, trustRoot=trustRoot)

    monkeypatch.setattr(transport, "optionsForClientTLS", recording)
    cas = ssl.trustRootFromCertificates([ssl.Certificate.loadPEM(trustme.CA().cert_pem.bytes())])
    return made, cas
