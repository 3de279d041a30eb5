"""
The admin listener: plain HTTP, loopback by default, for probes.

``GET /healthz`` answers 200 while the reactor runs (liveness).
``GET /readyz`` answers 200 only if Airflow's health endpoint answers and
does not say its metadata database is unhealthy (one request at a time,
shared by the probes that come meanwhile), the
audit log is writable and the certificate the listener serves (its chain,
as in force) has not expired; otherwise 503.  A certificate of the
listener (its chain or the client CA bundle) that expires within
``health.certificate_warning_days`` is named in the body but fails nothing:
instances that share a certificate would all go unready on the same day.
Both bodies are JSON and name each check, plus the
counters of the limits (connections refused, slow clients dropped, calls
rate-limited, circuit breaker state).  No secret is ever in them.
``GET /metrics`` is the Prometheus text format (`txairflowrpc.service.metrics`),
rendered at most `SCRAPES_PER_SECOND` times a second for one address (bursts
of `SCRAPE_BURST`; past that 429): a render costs about 2 ms of CPU, and a
few connections asking without pause took a core from the calls.  A
worker's listener (``listen.workers`` > 1) does not count what comes from
its own host's address: the supervisor asks it for every scrape of its own
listener, which is counted there (a relay on the same host, a port forward,
would not be counted either, as the supervisor is not).

Probes send no body: a request that declares one (or is chunked) is answered
413 before a byte of it is read (twisted.web would have spooled it to a temp
file, without a cap: found by review, 2.85 GB in 9 s from four connections).

The listener writes no access log: probes every few seconds would bury the
service log's events.
"""

from __future__ import annotations

import hmac
import io
import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any, Callable

from cryptography import x509
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.resource import IResource, Resource

from ..audit.log import AuditLog
from ..config import Config
from ..core.singleflight import SingleFlight
from ..gate.connections import BySource
from ..gate.limits import ConnectionRate
from ..identity.backoff import source_key

_log = Logger()


#: The certificates a listener holds now, by config key (`checked.served_certificates`).
Served = Callable[[], Mapping[str, Sequence[x509.Certificate]]]


def certificate_check(served: Mapping[str, Sequence[x509.Certificate]], days: int,
                      now: datetime) -> dict[str, Any]:
    """
    ``/readyz``'s check of the certificates in force: not ok once the listener's own
    certificate (the first of ``tls.certificate``'s chain) has expired, since clients then
    refuse every handshake.  Those that expire within ``days``, and the chain's other
    certificates and client CAs that expired, are named in its detail and fail nothing
    (a chain may carry an expired cross-signed root on purpose, which clients with a
    current trust store pass over): the metric and its alert warn of them.
    """
    problems, ok = [], True
    for key, certs in served.items():
        for index, cert in enumerate(certs):
            left = (cert.not_valid_after_utc - now).total_seconds() / 86400
            name = f"{key}: {cert.subject.rfc4514_string()}"
            if left <= 0:
                problems.append(f"{name} expired {-left:.1f} days ago")
                if key == "tls.certificate" and index == 0:
                    ok = False
            elif left < days:
                problems.append(f"{name} expires in {left:.1f} days")
    return {"ok": ok, "detail": problems or "none expiring soon"}


#: Connections the admin listener holds open at most, and from one address
#: (an IPv6 host: its network, ``limits.ipv6_source_prefix``); more are
#: closed at once, but at the first cap a connection of the address holding
#: the most that is idle or still sending its request gives way to anyone
#: else.  Probes and scrapers need a
#: few; its file descriptors are the process's.
MAX_CONNECTIONS = 64
MAX_PER_SOURCE = 8
#: A request (its headers and body) must have come whole within this many
#: seconds of the connection opening, or of its own first byte; else the
#: connection is closed.  Twisted's idle timer restarts with every byte, so
#: one byte a minute held a connection for good.
REQUEST_SECONDS = 10.0
#: Twisted's idle timeout, between requests (its default is 12 hours).
IDLE_SECONDS = 60.0


#: Scrapes of ``/metrics`` rendered per second for one address, and its burst.
#: Not for all addresses together: a few addresses using up such a cap kept
#: Prometheus' scrape out (found by review), worse than the CPU it saves.
SCRAPES_PER_SECOND = 10.0
#: How long Airflow's answer to the readiness probe is reused: at most one
#: health request to Airflow a second however often ``/readyz`` is asked
#: (found by review: 1,400 a second, each one to Airflow).
READINESS_REUSE_SECONDS = 1.0
#: How long one ``/readyz`` waits for Airflow's health endpoint: past it the
#: probe is answered not ready, while the one request to Airflow goes on for
#: later probes.  Found by review: with Airflow hung, each probe held its
#: connection for airflow.timeout_seconds, and 64 of them held the listener.
READY_WAIT_SECONDS = 2.0
SCRAPE_BURST = 20
#: Every other request (``/healthz``, ``/readyz``, anything else) per second
#: for one address, and its burst: far above what probers send (one a second
#: or so each).  Found by review: 2,400 ``/readyz`` a second from one
#: address took half a core of the supervisor.
PROBES_PER_SECOND = 50.0
PROBE_BURST = 100
_NO_BODY = (b"HTTP/1.1 413 Content Too Large\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: 44\r\nConnection: close\r\n\r\n"
            b"the admin listener takes no request bodies\r\n")


#: A connection younger than this, or that finished an answer more recently,
#: is not closed to make room (its request may still be in the kernel's
#: buffer, its answer in Twisted's).
SETTLE_SECONDS = 1.0
#: An evicted connection's answer on its way out may take this long.
LINGER_SECONDS = 2.0


class _AdminRequest(server.Request):
    """A request to the admin listener: one with a body is refused before its body is read."""

    def gotLength(self, length: int | None) -> None:
        self.content = io.BytesIO()  # never a temp file
        if length != 0:  # declared, or chunked (None)
            self.channel.refuse_body()

    def handleContentChunk(self, data: bytes) -> None:
        pass  # nothing of a body is kept: a request with one is refused

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if not self.channel.refusing:
            super().requestReceived(command, path, version)


class _AdminChannel(http.HTTPChannel):
    _deadline: IDelayedCall | None = None
    _linger: IDelayedCall | None = None
    _since = 0.0  # when it opened, or last finished an answer
    _answering = False
    #: Closed to make room: already out of the site's counts.
    evicted = False
    #: A request came with a body: answered 413, nothing more is read.
    refusing = False
    source = ""

    def refuse_body(self) -> None:
        """Answer 413 and close: whatever else comes on the connection is dropped unread."""
        self.refusing = True
        self._stop_waiting()
        self.setRawMode()
        self.transport.write(_NO_BODY)
        self.transport.loseConnection()
        self._linger = self.callLater(LINGER_SECONDS, self.transport.abortConnection)

    def rawDataReceived(self, data: bytes) -> None:
        if not self.refusing:
            super().rawDataReceived(data)

    def _send100Continue(self) -> None:
        if not self.refusing:  # after a 413, nothing more is sent
            super()._send100Continue()

    def connectionMade(self) -> None:
        super().connectionMade()
        self._since = self.site.reactor.seconds()
        self._expect_request()

    def dataReceived(self, data: bytes) -> None:
        if self.refusing:
            return
        # The first byte of a request after the last one ended starts its
        # time (a request line read in the same chunk: `lineReceived`).
        if data and self._deadline is None and not self._answering:
            self._expect_request()
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        # A request that follows one answered within the same read never
        # passes through `dataReceived` again: its first line starts its time.
        if line and self._deadline is None and not self._answering:
            self._expect_request()
        super().lineReceived(line)

    def allContentReceived(self) -> None:
        self._stop_waiting()
        self._answering = True
        super().allContentReceived()

    def requestDone(self, request: Any) -> None:
        self._answering = False
        self._since = self.site.reactor.seconds()
        super().requestDone(request)

    @property
    def answering(self) -> bool:
        """A request of it is being answered."""
        return self._answering

    @property
    def evictable(self) -> bool:
        """
        Not answering a request (idle, or still receiving one), and neither
        just opened nor just done with an answer.
        """
        return (not self._answering and not self.evicted
                and self.site.reactor.seconds() - self._since >= SETTLE_SECONDS)

    def evict(self) -> None:
        """Close to make room: what is on its way out is sent, for a while."""
        self.evicted = True
        self._stop_waiting()
        self.transport.loseConnection()
        self._linger = self.callLater(LINGER_SECONDS, self.transport.abortConnection)

    def _expect_request(self) -> None:
        self._deadline = self.callLater(REQUEST_SECONDS, self._too_slow)

    def _too_slow(self) -> None:
        self._deadline = None
        self.transport.abortConnection()

    def _stop_waiting(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def connectionLost(self, reason: Failure) -> None:
        self._stop_waiting()
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        super().connectionLost(reason)
        self.site.left(self)


def _open(channel: _AdminChannel) -> bool:
    """Whether ``channel`` is connected and not already closing to make room."""
    return channel.transport is not None and not channel.evicted


class AdminSite(server.Site):
    """
    The admin listener's site: no access log (probes and scrapes are not
    events), at most `MAX_CONNECTIONS` open and `MAX_PER_SOURCE` from one
    address, each closed unless a request comes whole within
    `REQUEST_SECONDS`.
    """

    protocol = _AdminChannel
    requestFactory = _AdminRequest

    def __init__(self, resource: IResource, *, reactor: IReactorTime,
                 ipv6_prefix: int = 64, supervisor_key: bytes | None = None) -> None:
        super().__init__(resource, reactor=reactor, timeout=IDLE_SECONDS)
        self.ipv6_prefix = ipv6_prefix
        #: A worker's listener: requests carrying its supervisor's key
        #: (`SUPERVISOR_HEADER`) are not counted, the supervisor's fan-out.
        #: Found by review: every request from this host's own address was
        #: exempt, so any local process could have /metrics rendered unbounded.
        self.supervisor_key = supervisor_key
        self.connections: BySource[_AdminChannel] = BySource()
        #: Renders of ``/metrics`` per address (`SCRAPES_PER_SECOND`).
        self.scrapes = ConnectionRate(reactor)
        #: Other requests per address (`PROBES_PER_SECOND`), and those refused 429.
        self.probes = ConnectionRate(reactor)
        self.probes_refused = 0
        #: Scrapes refused 429 past that rate, for tests.
        self.scrapes_refused = 0
        #: Connections closed at once at a cap, and idle ones closed to make
        #: room, for tests and the log.
        self.refused_connections = 0
        self.evicted = 0

    def buildProtocol(self, addr: Any) -> Any:
        source = source_key(getattr(addr, "host", ""), self.ipv6_prefix)
        if ((self.connections.holds(source) >= MAX_PER_SOURCE and not self._room_within(source))
                or (self.open_connections >= MAX_CONNECTIONS and not self._make_room(source))):
            self.refused_connections += 1
            if self.refused_connections in (1, 10, 100) or self.refused_connections % 1000 == 0:
                _log.warn("admin listener: connections refused so far at its caps "
                          "({cap} open, {per} from one address): {n}", cap=MAX_CONNECTIONS,
                          per=MAX_PER_SOURCE, n=self.refused_connections)
            return None  # the reactor closes the socket
        channel: _AdminChannel = super().buildProtocol(addr)
        channel.source = source
        self.connections.add(source, channel)
        return channel

    @property
    def open_connections(self) -> int:
        return len(self.connections)

    def _room_within(self, source: str) -> bool:
        """
        At ``source``'s own cap: close its oldest connection that is not being
        answered (one at rest first), so that its newest may come in.  Found by
        review: any local process holding eight idle connections to a worker's
        listener kept the supervisor's questions (from the same address) out,
        and the whole gateway reported not ready.
        """
        held = [c for c in self.connections.of(source) if _open(c)]
        return self._gives_way(next((c for c in held if c.evictable), None)
                               or next((c for c in held if not c.answering), None))

    def _make_room(self, source: str) -> bool:
        """
        At the cap: close the oldest connection of the address holding the
        most (and more than the newcomer's) that is idle or still sending its
        request (`evictable`); failing that, one just opened or just done
        with an answer (which still goes out: `evict`); failing that, if that
        address holds several, one answering.  Found by review: eight
        addresses holding eight connections each, each asking every 0.8 s
        (or each waiting on a hung Airflow's readiness), were never
        `evictable`, and kept every scrape and probe out.
        """
        return self._gives_way(
            self.connections.giving_way(source, lambda c: c.evictable and _open(c))
            or self.connections.giving_way(source, lambda c: not c.answering and _open(c))
            or self.connections.giving_way(source, _open, at_least=2))

    def _gives_way(self, channel: _AdminChannel | None) -> bool:
        """Close ``channel`` to make room, if there is one; whether there was."""
        if channel is None:
            return False
        self.evicted += 1
        channel.evict()
        self.left(channel)  # at once: the next newcomer counts without it
        return True

    def left(self, channel: _AdminChannel) -> None:
        self.connections.remove(channel.source, channel)  # once: evicted, it is gone already

    def log(self, request: server.Request) -> None:
        pass


class HealthResource(Resource):
    """
    ``/healthz``, ``/readyz`` and, given a ``metrics`` resource (prometheus_client's
    Twisted resource), ``/metrics``.  ``certificates`` gives the listener's certificates
    in force (`Served`), never read from the files, which a rejected reload leaves out
    of force.
    """

    isLeaf = True

    def __init__(
        self, *, config: Callable[[], Config], airflow_reachable: Callable[[], Deferred[bool]],
        audit: AuditLog, counters: Callable[[], dict[str, Any]], clock: IReactorTime,
        certificates: Served, metrics: IResource | None = None,
    ) -> None:
        super().__init__()
        self._metrics = metrics
        self._config = config
        self._certificates = certificates
        self._reachable = airflow_reachable
        self._asking = SingleFlight[bool]()
        #: When Airflow's last verdict was asked for, and what it was.
        self._verdict: tuple[float, bool] | None = None
        self._audit = audit
        self._counters = counters
        self._clock = clock

    def render(self, request: server.Request) -> Any:
        if request.path == b"/metrics" and self._metrics is not None:
            if request.method == b"HEAD":
                return metrics_head(request)
            if request.method == b"GET" and not may_scrape(request):
                return head_without_body(request, too_many_scrapes(request))
            return head_without_body(request, self._metrics.render(request))
        if not may_probe(request):
            return head_without_body(request, too_many_probes(request))
        return head_without_body(request, super().render(request))

    def render_GET(self, request: server.Request) -> Any:
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Cache-Control", b"no-store")
        if request.path == b"/healthz":
            return json.dumps({"alive": True}).encode() + b"\n"
        if request.path != b"/readyz":
            request.setResponseCode(404)
            return b'{"error": "not found: /healthz, /readyz or /metrics"}\n'
        verdict: Deferred[bool | None] = Deferred()  # this probe's: Airflow's ask is shared

        def answered(result: Any) -> None:
            if timer.active():
                timer.cancel()
            if not verdict.called:
                verdict.callback(result)  # a Failure: errback

        timer = self._clock.callLater(READY_WAIT_SECONDS, answered, None)
        self._airflow_ok().addBoth(answered)
        verdict.addCallback(self._ready, request)
        verdict.addErrback(self._failed, request)
        return server.NOT_DONE_YET

    def _airflow_ok(self) -> Deferred[bool]:
        """Airflow's verdict: asked once for probes that come together, kept a second."""
        now = self._clock.seconds()
        if self._verdict is not None and 0 <= now - self._verdict[0] < READINESS_REUSE_SECONDS:
            return succeed(self._verdict[1])

        def keep(ok: bool) -> bool:
            self._verdict = (now, ok)
            return ok

        return self._asking.run(self._reachable).addCallback(keep)

    def _ready(self, airflow_ok: bool | None, request: server.Request) -> None:
        """``airflow_ok`` None: Airflow's health endpoint has not answered in time."""
        cfg = self._config()
        now = datetime.fromtimestamp(self._clock.seconds(), timezone.utc)
        certs = certificate_check(self._certificates(), cfg.health.certificate_warning_days, now)
        airflow = ("reachable" if airflow_ok else "no answer from its health endpoint"
                   if airflow_ok is not None else
                   f"no answer from its health endpoint within {READY_WAIT_SECONDS:g} s")
        checks = {
            "airflow": {"ok": bool(airflow_ok), "detail": airflow},
            "audit": {"ok": self._audit.failed is None,
                      "detail": self._audit.failed or "writable"},
            "certificates": certs,
        }
        ready = all(c["ok"] for c in checks.values())
        body = {"ready": ready, "checks": checks, "counters": self._counters()}
        _answer(request, 200 if ready else 503, body)

    def _failed(self, failure: Failure, request: server.Request) -> None:
        """A probe that broke is answered, never left open: HTTP 500."""
        _log.failure("readiness probe failed", failure)
        _answer(request, 500, {"ready": False, "error": "internal error in the probe"})


def may_scrape(request: server.Request) -> bool:
    """Whether the address asking may have ``/metrics`` rendered now (`SCRAPES_PER_SECOND`)."""
    return _within_rate(request, "scrapes", SCRAPES_PER_SECOND, SCRAPE_BURST)


def may_probe(request: server.Request) -> bool:
    """Whether the address asking may have any other request answered now (`PROBES_PER_SECOND`)."""
    return _within_rate(request, "probes", PROBES_PER_SECOND, PROBE_BURST)


def _within_rate(request: server.Request, kind: str, rate: float, burst: int) -> bool:
    """
    Spend one of the asking address's ``kind`` (``scrapes`` or ``probes``:
    the site's rate of that name); False, counted in ``<kind>_refused``, if
    it has none left.  The supervisor's questions to its worker are not counted.
    """
    channel = request.channel
    site = getattr(channel, "site", None)
    if not isinstance(site, AdminSite):
        return True  # not served by the admin listener (a test's resource alone)
    if from_supervisor(request, site):
        return True
    if getattr(site, kind).take(channel.source, rate, burst):
        return True
    setattr(site, f"{kind}_refused", getattr(site, f"{kind}_refused") + 1)
    return False


def too_many_probes(request: server.Request) -> bytes:
    """The 429 of a request past `PROBES_PER_SECOND` (`may_probe`)."""
    return _too_many(request, b"more than %d requests a second from one address\n"
                     % PROBES_PER_SECOND)


def too_many_scrapes(request: server.Request) -> bytes:
    """The 429 of a scrape past `SCRAPES_PER_SECOND` (`may_scrape`)."""
    return _too_many(request, b"more than %d scrapes a second from one address\n"
                     % SCRAPES_PER_SECOND)


def _too_many(request: server.Request, body: bytes) -> bytes:
    request.setResponseCode(429)
    request.setHeader(b"Retry-After", b"1")
    request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
    return body


#: The header by which a supervisor's requests to its workers' listeners carry
#: its key (`AdminSite.supervisor_key`).
SUPERVISOR_HEADER = b"x-airflowrpc-supervisor"


def from_supervisor(request: server.Request, site: AdminSite) -> bool:
    """Whether ``request`` carries the key of the supervisor of this worker's listener."""
    if site.supervisor_key is None:
        return False
    return hmac.compare_digest(request.getHeader(SUPERVISOR_HEADER) or b"", site.supervisor_key)


def metrics_head(request: server.Request) -> bytes:
    """
    A HEAD of ``/metrics``: 405, as prometheus_client answers it, nothing
    rendered and no scrape used up (found by review: a HEAD, never
    rendered, took one); a worker's listener and the supervisor's alike.
    """
    request.setResponseCode(405)
    request.setHeader(b"Allow", b"OPTIONS,GET")
    return b""


def head_without_body(request: server.Request, body: Any) -> Any:
    """
    What ``render`` returns: for a HEAD, the GET's status and headers
    without its body.  twisted.web would drop the body itself, but log each
    such request (with its URI) as a warning -- a flood of the service log
    for anyone.
    """
    if request.method == b"HEAD" and isinstance(body, bytes):
        return b""
    return body


def finish(request: server.Request, status: int, body: bytes,
           headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
    """Answer a request left open (`server.NOT_DONE_YET`), unless its client has gone."""
    if request.finished or getattr(request, "_disconnected", False):
        return
    request.setResponseCode(status)
    for name, value in headers:
        request.setHeader(name, value)
    request.write(body)
    request.finish()


def _answer(request: server.Request, status: int, body: dict[str, Any]) -> None:
    finish(request, status, json.dumps(body).encode() + b"\n")
