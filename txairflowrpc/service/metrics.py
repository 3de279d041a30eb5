"""
The gateway's metrics for Prometheus: ``GET /metrics`` on the admin listener.

`GatewayMetrics` owns a registry of its own (never prometheus_client's
process-global one), so that tests, and several gateways in one process,
never share a count.  What is in it comes two ways:

- Observed as it happens: the dispatcher and the Airflow client are handed
  this object as their meter (`txairflowrpc.core.meters`) and call it once per
  call or exchange; authentication failures and the audit thread's writes are
  observed by wrappers put around the authenticator and the audit thread's
  runner (`authenticating`, `timing_audit_writes`), so that neither the site
  nor the audit log changes for them.  Labelled children are looked up once
  and cached: a call costs a few dict lookups, a histogram observation and
  two counter increments, no string formatting.
- Read when Prometheus scrapes (`PartsCollector`): the counters the parts
  already keep as plain integers (connections, the limits, the circuit
  breaker, the run watcher, the audit log, refusals, logins, JWKS fetches,
  reloads), and what is cheap to compute then but not worth watching all the
  time (token and certificate expiry).  Those integers sit on the hottest
  paths of the site and the client, which other work changes too; an int
  increment is the cheapest counter there is, and reading it at scrape time
  keeps every one of those files as it is.

Labels are bounded: ``method`` is a registered method or ``unknown``;
``fault_code`` one of the gateway's codes; ``principal`` a configured
principal, an OIDC caller being ``oidc:PROVIDER`` whatever its subject.

The scrape is rendered by prometheus_client's Twisted resource on the
reactor's thread pool, so `PartsCollector` runs off the reactor: it only
reads attributes, copies small dicts of str keys and reads immutable token
stores, never iterating a container the reactor is changing.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Iterator

from cryptography import x509
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web.resource import IResource
from twisted.web.wsgi import WSGIResource

from .. import __version__
from ..audit.log import AuditLog, RunBlocking
from ..config import Config
from ..core.errors import INTERNAL_ERROR
from ..identity import aws, oidc, tokens
from ..identity.authenticate import Gate, Unauthenticated
from .negotiation import gzip_wanted, usable_accept

__all__ = ["AdminCollector", "GatewayMetrics", "PartsCollector", "admin_families",
           "credential_kind", "metrics_resource"]

#: Calls last from a millisecond (ping) to an hour (wait_dag_run).
CALL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800,
                3600)
#: One exchange with Airflow is bounded by airflow.timeout_seconds.
UPSTREAM_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
#: One batch written and fsynced on the audit thread.
AUDIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)

#: Outcomes of an exchange with Airflow that are not an HTTP status.
UPSTREAM_FAILURES = ("timeout", "unreachable", "error", "cancelled")


class GatewayMetrics:
    """
    The instruments of one gateway, in a registry of its own (`registry`).

    It is the `CallMeter` of the dispatcher and the `UpstreamMeter` of the
    Airflow client; only the reactor thread calls those methods.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self._calls = Counter(
            "airflowrpc_calls", "XML-RPC calls (each inner call of a multicall too), by "
            "method and outcome (ok, fault with its fault_code, cancelled)",
            ["method", "outcome", "fault_code"], registry=r)
        # Its own series, there at 0 from the start: the first -32603 of a method
        # would be a new child of airflowrpc_calls, which increase() cannot see
        # (found by review: AirflowRPCInternalErrors never fired for a lone bug).
        self._internal_errors = Counter(
            "airflowrpc_internal_errors", "Calls answered -32603 (internal error): a bug, "
            "whose traceback is in the service log", registry=r)
        self._call_seconds = Histogram(
            "airflowrpc_call_duration_seconds", "Time from a call's start to its outcome "
            "(its audit record's write comes after)", ["method"], buckets=CALL_BUCKETS,
            registry=r)
        self._in_flight = Gauge(
            "airflowrpc_calls_in_flight", "Calls started and without an outcome yet",
            registry=r)
        self._principal_calls = Counter(
            "airflowrpc_principal_calls", "Calls by configured principal (OIDC callers as "
            "oidc:PROVIDER) and outcome", ["principal", "outcome", "fault_code"], registry=r)
        self._upstream = Counter(
            "airflowrpc_upstream_requests", "Requests to Airflow's API by HTTP method and "
            "outcome: the HTTP status, or timeout, unreachable, error, cancelled",
            ["http_method", "code"], registry=r)
        self._upstream_seconds = Histogram(
            "airflowrpc_upstream_request_duration_seconds", "Time of one exchange with "
            "Airflow's API, body included (cancelled ones are not observed)",
            ["http_method"], buckets=UPSTREAM_BUCKETS, registry=r)
        self._auth_failures = Counter(
            "airflowrpc_auth_failures", "Requests refused with 401, by the credential they "
            "tried: certificate, token, jwt, aws_iam, none, malformed; error if checking "
            "failed",
            ["credential"], registry=r)
        self._audit_seconds = Histogram(
            "airflowrpc_audit_write_duration_seconds", "Time to write and fsync one batch "
            "of audit records, on the audit thread", buckets=AUDIT_BUCKETS, registry=r)
        Info("airflowrpc_build", "The gateway's version", registry=r).info(
            {"version": __version__})
        ProcessCollector(registry=r)
        self._call_children: dict[tuple[Any, ...], tuple[Any, Any]] = {}
        self._principal_children: dict[tuple[Any, ...], Any] = {}
        self._upstream_children: dict[tuple[str, Any], tuple[Any, Any]] = {}

    # -- CallMeter -----------------------------------------------------------

    def call_started(self) -> None:
        self._in_flight.inc()

    def call_finished(
        self, method: str | None, principal: object, fault: int | None, cancelled: bool,
        seconds: float,
    ) -> None:
        self._in_flight.dec()
        key = (method, fault, cancelled)
        children = self._call_children.get(key)
        if children is None:
            name = method or "unknown"
            outcome, code = _outcome(fault, cancelled)
            children = self._call_children[key] = (
                self._calls.labels(name, outcome, code), self._call_seconds.labels(name))
        count, duration = children
        count.inc()
        duration.observe(seconds)
        if fault == INTERNAL_ERROR:
            self._internal_errors.inc()
        # An OIDC caller is keyed by its label (one per provider), so that its
        # subjects, which nobody bounds, never reach the cache or a label; not by
        # its issuer (found by review: a provider renamed by a reload, its issuer
        # kept, went on counting under the old name until a restart).
        who = (getattr(principal, "name", None) if getattr(principal, "oidc_issuer", None) is None
               else principal_label(principal))
        pkey = (who, fault, cancelled)
        child = self._principal_children.get(pkey)
        if child is None:
            outcome, code = _outcome(fault, cancelled)
            child = self._principal_children[pkey] = self._principal_calls.labels(
                principal_label(principal), outcome, code)
        child.inc()

    def answer_failed(self) -> None:
        # Found by review: the resource's last resort (a bug in writing an answer,
        # its call counted as ok already) was no internal error to the alert.
        self._internal_errors.inc()

    # -- UpstreamMeter -------------------------------------------------------

    def upstream_answered(self, http_method: str, outcome: int | str, seconds: float) -> None:
        key = (http_method, outcome)
        children = self._upstream_children.get(key)
        if children is None:
            code = str(outcome) if isinstance(outcome, int) and 100 <= outcome < 600 else (
                outcome if outcome in UPSTREAM_FAILURES else "error")
            children = self._upstream_children[key] = (
                self._upstream.labels(http_method, code),
                self._upstream_seconds.labels(http_method))
        count, duration = children
        count.inc()
        if outcome != "cancelled":
            duration.observe(seconds)

    # -- wrappers --------------------------------------------------------------

    def authenticating(
        self, authenticate: Callable[[Any], "Deferred[Any]"],
    ) -> Callable[[Any], "Deferred[Any]"]:
        """``authenticate``, with its failures counted by the credential tried."""

        def failed(failure: Failure, request: Any) -> Failure:
            kind = credential_kind(request) if failure.check(Unauthenticated) else "error"
            self._auth_failures.labels(kind).inc()
            return failure

        def metered(request: Any) -> Deferred[Any]:
            return maybeDeferred(authenticate, request).addErrback(failed, request)

        return metered

    def timing_audit_writes(self, run_blocking: RunBlocking) -> RunBlocking:
        """``run_blocking`` (the audit thread), each write timed where it runs."""
        seconds = self._audit_seconds

        def timed(work: Callable[[], Any]) -> Deferred[Any]:
            def run() -> Any:
                started = time.perf_counter()
                try:
                    return work()
                finally:
                    seconds.observe(time.perf_counter() - started)

            return run_blocking(run)

        return timed

    def collect_from(self, collector: "PartsCollector | AdminCollector") -> None:
        """Have ``collector`` read its parts at every scrape."""
        self.registry.register(collector)


class AdminCollector:
    """
    The admin listener's own refusals, read at scrape time from its site
    (`txairflowrpc.service.admin.AdminSite`): found by review, a lockout of
    the listener showed only as ``up == 0``.
    """

    def __init__(self, site: Any) -> None:
        self._site = site

    def collect(self) -> list[Metric]:
        return admin_families(self._site)


def admin_families(site: Any) -> list[Metric]:
    """``airflowrpc_admin_refusals_total`` of an admin listener's ``site``, by kind."""
    family = CounterMetricFamily(
        "airflowrpc_admin_refusals", "The admin listener's refusals: connections closed at "
        "once at its caps (connection), closed to make room for another address's "
        "(evicted), /metrics past an address's rate (scrape, 429), other requests past an "
        "address's rate (probe, 429)", labels=["kind"])
    family.add_metric(["connection"], site.refused_connections)
    family.add_metric(["evicted"], site.evicted)
    family.add_metric(["scrape"], site.scrapes_refused)
    family.add_metric(["probe"], site.probes_refused)
    return [family]


def metrics_resource(registry: CollectorRegistry, reactor: Any) -> IResource:
    """
    ``/metrics``: prometheus_client's exposition (text format, or OpenMetrics
    when asked; gzip when accepted), rendered on ``reactor``'s thread pool.

    This is what ``prometheus_client.twisted.MetricsResource`` is, except that
    it takes the reactor it is given: that one binds the global reactor when
    it is imported, which the gateway never does (tests hand it a fake one).
    """
    return WSGIResource(reactor, reactor.getThreadPool(), metrics_app(registry))


def metrics_app(registry: CollectorRegistry) -> Callable[..., Any]:
    """
    prometheus_client's WSGI app, asked only what it can answer
    (`txairflowrpc.service.negotiation`): an odd ``Accept`` gets the text format.
    """
    app = make_wsgi_app(registry)

    def negotiated(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        environ = dict(environ, HTTP_ACCEPT=usable_accept(environ.get("HTTP_ACCEPT")))
        if not gzip_wanted(environ.get("HTTP_ACCEPT_ENCODING")):
            environ.pop("HTTP_ACCEPT_ENCODING", None)
        return app(environ, start_response)

    return negotiated


def _outcome(fault: int | None, cancelled: bool) -> tuple[str, str]:
    if cancelled:
        return "cancelled", ""
    if fault is None:
        return "ok", ""
    return "fault", str(fault)


def principal_label(principal: object) -> str:
    """A principal as a label: its name, or ``oidc:PROVIDER`` for an OIDC caller."""
    name = getattr(principal, "name", None)
    if name is None:
        return ""
    if getattr(principal, "oidc_issuer", None) is not None:
        return "oidc:" + name.partition("/")[0]
    return str(name)


def credential_kind(request: Any) -> str:
    """
    What a refused request tried to authenticate with: ``token`` (bearer
    ``arpc_`` or basic), ``jwt``, ``aws_iam`` (an ``AWS-IAM`` signed request),
    ``malformed`` (another scheme, or a bearer value that is neither),
    ``certificate`` (no header, a certificate) or ``none``.
    """
    header = request.getHeader(b"authorization")
    if header is None:
        get = getattr(getattr(request, "transport", None), "getPeerCertificate", None)
        return "certificate" if get is not None and get() is not None else "none"
    scheme, _, value = header.strip().partition(b" ")
    scheme, value = scheme.lower(), value.strip()
    if scheme == b"basic":
        return "token"
    if scheme == aws.SCHEME.lower().encode():
        return "aws_iam"
    if scheme == b"bearer":
        text = value.decode("latin-1")
        if text.startswith(tokens.PREFIX):
            return "token"
        if oidc.looks_like_jwt(text):
            return "jwt"
    return "malformed"


class PartsCollector:
    """
    Reads, at each scrape, the counters the gateway's parts keep as plain
    integers, and the expiry of tokens and certificates.

    Every argument but ``config`` and ``clock`` may be None (that part is
    then not reported).  ``coalescing`` maps a kind of shared upstream work
    (``wait``: the run watcher's polls shared by waiters) to two callables:
    how many callers asked, and how many upstream requests served them; a
    new kind (reads) is one more entry.  ``certificates`` gives the
    listener's certificates in force (`checked.served_certificates`).
    """

    def __init__(
        self, *, config: Callable[[], Config], clock: IReactorTime, site: Any = None,
        limits: Any = None, breaker: Any = None, client: Any = None, audit: AuditLog | None = None,
        refusals: Any = None, gate: Gate | None = None, reloader: Any = None,
        watcher: Any = None,
        coalescing: dict[str, tuple[Callable[[], int], Callable[[], int]]] | None = None,
        certificates: Callable[[], Mapping[str, Sequence[x509.Certificate]]] | None = None,
    ) -> None:
        self._config = config
        self._clock = clock
        self._site = site
        self._limits = limits
        self._breaker = breaker
        self._client = client
        self._audit = audit
        self._refusals = refusals
        self._gate = gate
        self._reloader = reloader
        self._watcher = watcher
        self.coalescing = dict(coalescing or {})
        self._certificates = certificates

    def describe(self) -> Iterable[Metric]:
        # Registered by name, so two collectors of one gateway cannot clash;
        # collecting to describe is cheap (attributes, two small files).
        return list(self.collect())

    def collect(self) -> Iterator[Metric]:
        yield from self._site_metrics()
        yield from self._upstream_metrics()
        yield from self._audit_metrics()
        yield from self._identity_metrics()
        yield from self._certificate_metrics()

    def _site_metrics(self) -> Iterator[Metric]:
        site = self._site
        if site is not None:
            yield GaugeMetricFamily("airflowrpc_connections_open",
                                    "TLS connections open now", value=site.open_connections)
            yield CounterMetricFamily(
                "airflowrpc_connections_refused", "Connections closed at once, before TLS: "
                "over limits.max_connections, limits.max_connections_per_source or "
                "limits.connection_rate_per_source",
                value=site.refused_connections)
            dropped = CounterMetricFamily(
                "airflowrpc_connections_dropped", "Connections dropped: slow (a handshake, "
                "first byte or request past its deadline) or evicted (idle, to make room "
                "at the connection cap)", labels=["reason"])
            dropped.add_metric(["slow"], site.slow_dropped)
            dropped.add_metric(["evicted"], site.evicted)
            yield dropped
            yield CounterMetricFamily(
                "airflowrpc_body_budget_refusals", "Requests answered 503 because the bodies "
                "in flight held limits.max_body_memory_bytes", value=site.budget_refused)
        if self._limits is not None:
            yield CounterMetricFamily(
                "airflowrpc_rate_limited_calls", "Calls refused with fault 429 (a "
                "principal's rate or calls in flight)", value=self._limits.refused)
        if self._refusals is not None:
            refusals = CounterMetricFamily(
                "airflowrpc_refusals", "Refusals put on the audit trail, by kind (request: "
                "an authenticated caller's 404, 405, 413, 415 or non-XML-RPC body)",
                labels=["kind"])
            for kind, count in sorted(dict(self._refusals.kinds).items()):
                refusals.add_metric([kind], count)
            yield refusals

    def _upstream_metrics(self) -> Iterator[Metric]:
        breaker = self._breaker
        if breaker is not None:
            state = GaugeMetricFamily(
                "airflowrpc_upstream_circuit_state", "The circuit breaker in front of "
                "Airflow: 1 for its current state", labels=["state"])
            now = breaker.state
            for name in ("closed", "open", "half-open"):
                state.add_metric([name], 1 if name == now else 0)
            yield state
            yield CounterMetricFamily(
                "airflowrpc_upstream_circuit_opened", "Times the circuit opened",
                value=breaker.opened)
            yield CounterMetricFamily(
                "airflowrpc_upstream_failed_fast", "Requests failed at once (503) while the "
                "circuit was open", value=breaker.rejected)
            yield CounterMetricFamily(
                "airflowrpc_upstream_failures_dismissed", "Runs of airflow.breaker_failures "
                "failed requests in a row after which Airflow's health endpoint answered "
                "(the circuit stayed closed: the failures were those requests' own)",
                value=breaker.dismissed)
        if self._client is not None:
            yield CounterMetricFamily("airflowrpc_upstream_logins",
                                      "Logins to Airflow: of the gateway's own account "
                                      "and of the callers' own accounts together",
                                      value=self._client.logins)
        if self._watcher is not None:
            yield GaugeMetricFamily("airflowrpc_watched_runs",
                                    "DAG runs being polled now for waiters",
                                    value=self._watcher.watched)
        callers = CounterMetricFamily(
            "airflowrpc_coalescing_callers", "Callers of shared upstream work, by kind "
            "(wait: wait_dag_run waiters; read: reads of Airflow, shared while in flight or cached)",
            labels=["kind"])
        fetches = CounterMetricFamily(
            "airflowrpc_coalescing_fetches", "Upstream requests made for those callers "
            "(fetches / callers: 1 means nothing was shared)", labels=["kind"])
        for kind, (asked, fetched) in sorted(self.coalescing.items()):
            callers.add_metric([kind], asked())
            fetches.add_metric([kind], fetched())
        yield callers
        yield fetches

    def _audit_metrics(self) -> Iterator[Metric]:
        audit = self._audit
        if audit is None:
            return
        yield CounterMetricFamily("airflowrpc_audit_records_written",
                                  "Records written (and fsynced) to the audit trail",
                                  value=audit.written)
        yield CounterMetricFamily("airflowrpc_audit_writes",
                                  "Batches written to the audit trail (one fsync each)",
                                  value=audit.fsyncs)
        yield CounterMetricFamily(
            "airflowrpc_audit_records_dropped", "Refusal records counted but not written "
            "while the audit trail failed", value=audit.dropped_total)
        yield GaugeMetricFamily(
            "airflowrpc_audit_failing", "1 while the audit trail cannot be written (calls "
            "are refused with 507)", value=0 if audit.failed is None else 1)
        yield GaugeMetricFamily(
            "airflowrpc_audit_write_age_seconds", "How long the audit write under way has "
            "run (0: none is); past audit.stall_seconds the trail is failing",
            value=audit.writing_for())

    def _identity_metrics(self) -> Iterator[Metric]:
        if self._reloader is not None:
            reloads = CounterMetricFamily("airflowrpc_config_reloads",
                                          "Config reloads, by result", labels=["result"])
            reloads.add_metric(["accepted"], self._reloader.reloads)
            reloads.add_metric(["rejected"], self._reloader.rejected)
            yield reloads
            yield GaugeMetricFamily(
                "airflowrpc_config_last_reload_successful", "1 if the config's last load or "
                "reload was accepted, 0 if it was rejected (the file on disk is not the config "
                "in force)", value=1 if self._reloader.last_reload_successful else 0)
        if self._gate is None:
            return
        current = self._gate.current
        fetches = CounterMetricFamily("airflowrpc_jwks_fetches",
                                      "Fetches of an OIDC provider's JWKS URL",
                                      labels=["provider"])
        for name, keyset in sorted(current.jwks.items()):
            fetches.add_metric([name], keyset.fetches)
        yield fetches
        expiry = GaugeMetricFamily(
            "airflowrpc_token_expiry_seconds", "Seconds until the earliest gateway token of "
            "a principal expires, negative once it has: until it is revoked (rotated tokens "
            "left out: their successor is there)", labels=["principal"])
        store = current.tokens
        if store is not None:
            now = datetime.fromtimestamp(self._clock.seconds(), timezone.utc)
            earliest: dict[str, datetime] = {}
            for record in store.records.values():
                # An expired token stays until someone acts on it, so that its alert does
                # not clear at the moment its client starts to fail.
                if (record.principal not in current.access.principals
                        or record.revoked is not None or record.rotated_to is not None):
                    continue
                if record.principal not in earliest or record.expires < earliest[record.principal]:
                    earliest[record.principal] = record.expires
            for principal, expires in sorted(earliest.items()):
                expiry.add_metric([principal], (expires - now).total_seconds())
        yield expiry
        lists = GaugeMetricFamily(
            "airflowrpc_client_crl_next_update_seconds", "Seconds until each revocation list "
            "of tls.client_crl is due for renewal (its nextUpdate), negative once it is: a "
            "certificate revoked since is not known", labels=["issuer"])
        if current.revocations is not None:
            for crl in current.revocations.lists:
                if crl.next_update is not None:
                    lists.add_metric([crl.issuer[:200]],
                                     crl.next_update.timestamp() - self._clock.seconds())
        yield lists

    def _certificate_metrics(self) -> Iterator[Metric]:
        if self._certificates is None:
            return
        expiry = GaugeMetricFamily(
            "airflowrpc_certificate_expiry_seconds", "Seconds until the earliest certificate "
            "the listener holds expires, negative once it has (tls.certificate: the chain it "
            "sends; tls.client_ca: the CAs it verifies clients against); those in force, "
            "not the files: a renewal counts once a reload has put it in force",
            labels=["certificate"])
        now = self._clock.seconds()
        for key, certs in self._certificates().items():
            if certs:
                earliest = min(c.not_valid_after_utc.timestamp() for c in certs)
                expiry.add_metric([key], earliest - now)
        yield expiry
