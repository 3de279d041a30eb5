"""
The supervisor's admin listener (``listen.workers`` > 1) on ``health.port``:
one address that speaks for every worker, so that a prober, a load
balancer's check and a Prometheus job each need one target whatever
``workers`` is.  Each worker keeps its own listener on ``health.port + 1 +
K`` (`txairflowrpc.service.workers.worker_admin_port`); the supervisor asks
them over loopback HTTP, all at once, each within `ASK_SECONDS`:

- ``GET /healthz``: 200 while the supervisor's reactor runs (it replaces
  dead workers itself), with each worker as the supervisor sees it.
- ``GET /readyz``: 200 if at least one worker answers its own ``/readyz``
  with 200 and so does every worker whose listening socket is open (new
  connections wait for that one: a worker being replaced is not ready);
  503 otherwise (and for a probe in flight at SIGTERM, when the listener
  closes, as a single gateway's does).  The body holds each worker's answer.
  The workers' answers are reused for `admin.READINESS_REUSE_SECONDS`
  while the same workers run, as each worker reuses Airflow's (found by
  review: a loop of probes cost the supervisor about 2.5 ms of CPU each,
  taken from the workers' cores).
- ``GET /metrics``: every worker's metrics, each sample labelled
  ``worker="K"``, merged family by family, and the supervisor's own
  (`supervisor_families`, and its own process's ``process_*`` samples with
  no ``worker`` label, beside the workers' in the same families).  The text format, or OpenMetrics when asked;
  gzip when accepted (prometheus_client's own encoders).  A worker that
  does not answer is left out and its ``airflowrpc_worker_up`` is 0; a
  replaced worker's counters start again from zero, which Prometheus'
  ``rate()`` handles per series.  The workers' answers are reused for
  `METRICS_REUSE_SECONDS`, and so is the merge of them and the body
  written for a scraper's Accept and Accept-Encoding (found by review: each
  scrape parsed every worker's text again, about 12 ms of CPU against one
  gateway's 2 ms, at 10 scrapes a second allowed per address).

Nothing here is a secret the workers' own listeners do not already show.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from prometheus_client.process_collector import ProcessCollector
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.error import TimeoutError as NoAnswerInTime
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent
from twisted.web.resource import Resource

from ..core.bodies import TooLarge, read_capped
from ..core.singleflight import SingleFlight
from .admin import (
    READINESS_REUSE_SECONDS,
    SUPERVISOR_HEADER,
    finish,
    head_without_body,
    may_probe,
    may_scrape,
    metrics_head,
    too_many_probes,
    too_many_scrapes,
)
from .negotiation import gzip_wanted, usable_accept
from .supervisor import WorkerState

__all__ = ["ASK_SECONDS", "Answer", "GatheredHealth", "WorkerAdmins", "loopback_host",
           "merged_families", "supervisor_families", "with_own"]

#: How long a worker's admin listener may take to answer the supervisor.
ASK_SECONDS = 5.0
#: How long the workers' metrics, and what is written of them, serve scrapes again.
METRICS_REUSE_SECONDS = 1.0
#: The most bodies kept for those (one per Accept, encoding and ``name[]`` asked).
MAX_BODIES_KEPT = 32
#: A worker's answer larger than this is not read (its /metrics is far smaller).
MAX_ANSWER_BYTES = 32 * 1024 * 1024
#: What the supervisor asks a worker's /metrics for: the format that keeps
#: every family's type (counters, info, histograms) through a parse.
OPENMETRICS = b"application/openmetrics-text; version=1.0.0"

_JSON = ((b"Content-Type", b"application/json"),)

_log = Logger()


@attrs.frozen
class Answer:
    """One worker's answer: its HTTP status (None: no answer) and body."""

    index: int
    status: int | None
    body: bytes = b""
    problem: str = ""


def loopback_host(host: str) -> str:
    """Where the supervisor reaches a listener bound to ``host`` (a wildcard: loopback)."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


class WorkerAdmins:
    """
    Asks the workers' admin listeners, over loopback HTTP, within
    `ASK_SECONDS` each.  ``agent`` is a plain `Agent` (treq's client would
    ask for gzip and inflate it here, on the reactor).
    """

    def __init__(self, clock: IReactorTime, agent: IAgent, host: str,
                 ports: list[int], running: Callable[[], Sequence[bool]] | None = None,
                 key: bytes | None = None) -> None:
        self._clock = clock
        self._agent = agent
        #: What each question carries, so that the worker does not count it
        #: against this host's address (`admin.from_supervisor`).
        self._key = key
        #: Which workers' processes run now: the others are not asked.
        self._running = running
        self._asking: dict[tuple[str, bytes], SingleFlight[list[Answer]]] = {}
        #: The last answers to each question: when it was asked, which
        #: workers ran then, and what they said.
        self._kept: dict[tuple[str, bytes], tuple[float, list[bool], list[Answer]]] = {}
        host = loopback_host(host)
        self._base = [f"http://[{host}]:{p}" if ":" in host else f"http://{host}:{p}"
                      for p in ports]

    def ask(self, path: str, accept: bytes, reuse: float = 0.0) -> Deferred[list[Answer]]:
        """
        Every worker's answer to ``GET path``, in worker order; never fails.
        Probes and scrapes that come while the workers are being asked
        share those answers: a flood of them costs the workers no more.
        With ``reuse``, answers asked for less than ``reuse`` seconds ago
        are given again, as long as the same workers run.
        """
        key = (path, accept)
        running = self._asked()
        kept = self._kept.get(key)
        if reuse and kept is not None and kept[1] == running and (
                0 <= self._clock.seconds() - kept[0] < reuse):
            return succeed(kept[2])

        def work() -> Deferred[list[Answer]]:
            asked_at, asked = self._clock.seconds(), self._asked()

            def keep(answers: list[Answer]) -> list[Answer]:
                self._kept[key] = (asked_at, asked, answers)
                return answers

            return gatherResults([self._ask_one(k, path, accept, run)
                                  for k, run in enumerate(asked)]).addCallback(keep)

        return self._asking.setdefault(key, SingleFlight()).run(work)

    def _asked(self) -> list[bool]:
        """
        Whether each worker runs, so that it is asked: one that does not is
        answered for at once (found by review: the supervisor holds its admin
        socket, so a question to it waited `ASK_SECONDS` unanswered, and every
        probe with it).
        """
        if self._running is None:
            return [True] * len(self._base)
        running = list(self._running())
        return [k < len(running) and running[k] for k in range(len(self._base))]

    def _ask_one(self, index: int, path: str, accept: bytes, asked: bool) -> Deferred[Answer]:
        if not asked:
            return succeed(Answer(index, None, problem="its process is not running"))
        d = Deferred.fromCoroutine(self._get(index, path, accept))
        # However the cancelled request ends (Agent: ResponseNeverReceived), it is a timeout.
        d.addTimeout(ASK_SECONDS, self._clock, onTimeoutCancel=_no_answer_in_time)
        return d.addErrback(lambda f: Answer(index, None, problem=_problem(f)))

    async def _get(self, index: int, path: str, accept: bytes) -> Answer:
        headers = Headers({b"Accept": [accept]})
        if self._key is not None:
            headers.setRawHeaders(SUPERVISOR_HEADER, [self._key])
        response = await self._agent.request(
            b"GET", (self._base[index] + path).encode("ascii"), headers)
        return Answer(index, response.code, await read_capped(response, MAX_ANSWER_BYTES))


def _no_answer_in_time(result: Any, timeout: float) -> Any:
    raise NoAnswerInTime()


def _problem(failure: Failure) -> str:
    if failure.check(TooLarge):
        return str(failure.value)
    if failure.check(NoAnswerInTime):
        return f"no answer within {ASK_SECONDS:g} s"
    return f"no answer: {type(failure.value).__name__}"


def merged_families(answers: Iterable[Answer]) -> tuple[list[Metric], set[int]]:
    """
    The workers' metric families (OpenMetrics texts) as one set: a family
    holds every worker's samples, each labelled ``worker="K"``.  Also which
    workers' texts were read whole (a text that does not parse is left out).
    """
    merged: dict[str, Metric] = {}
    read: set[int] = set()
    for answer in answers:
        if answer.status != 200:
            continue
        try:
            families = list(text_string_to_metric_families(answer.body.decode("utf-8")))
        except (ValueError, UnicodeDecodeError) as e:
            _log.warn("worker {index}'s /metrics could not be read: {error}",
                      index=answer.index, error=str(e))
            continue
        read.add(answer.index)
        worker = str(answer.index)
        for family in families:
            into = merged.get(family.name)
            if into is None:
                into = merged[family.name] = Metric(family.name, family.documentation,
                                                    family.type, family.unit)
            elif into.type != family.type:
                continue  # workers of one gateway run the same code: never so
            into.samples.extend(
                s._replace(labels={**s.labels, "worker": worker}) for s in family.samples)
    return list(merged.values()), read


def supervisor_families(states: list[WorkerState], up: set[int]) -> list[Metric]:
    """The supervisor's own metrics: its workers, which answered, are ready, were replaced."""
    workers = GaugeMetricFamily("airflowrpc_workers", "Worker processes configured "
                                "(listen.workers)", value=len(states))
    answered = GaugeMetricFamily("airflowrpc_worker_up", "1 if the worker's /metrics "
                                 "answered this scrape", labels=["worker"])
    ready = GaugeMetricFamily("airflowrpc_worker_ready", "1 if the worker runs and reported "
                              "ready", labels=["worker"])
    restarts = CounterMetricFamily("airflowrpc_worker_restarts", "Times the worker was "
                                   "replaced after it exited unexpectedly", labels=["worker"])
    for state in states:
        worker = str(state.index)
        answered.add_metric([worker], 1 if state.index in up else 0)
        ready.add_metric([worker], 1 if state.ready else 0)
        restarts.add_metric([worker], state.restarts)
    return [workers, answered, ready, restarts]


def with_own(families: list[Metric], own: Iterable[Metric]) -> list[Metric]:
    """
    ``families`` with the supervisor's own samples (no ``worker`` label)
    added: into the workers' family of the same name, else as families of
    their own.  A family of the workers' name but another type is left out
    (one name, one family: never so for one gateway's code).  A new list:
    ``families`` and their samples are left as they are (found by review:
    changed in place, the merge reused for a second's bodies gathered the
    supervisor's samples again in each, duplicate series for Prometheus).
    """
    merged = list(families)  # the workers' families are not changed: they serve many bodies
    index = {f.name: i for i, f in enumerate(merged)}
    for family in own:
        at = index.get(family.name)
        if at is None:
            merged.append(family)
        elif merged[at].type == family.type:
            into = merged[at]
            merged[at] = Metric(into.name, into.documentation, into.type, into.unit)
            merged[at].samples = [*into.samples, *family.samples]
    return merged


class _Families:
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> list[Metric]:
        return self._families


#: An answer's body and headers.
Encoded = tuple[bytes, tuple[tuple[bytes, bytes], ...]]


def exposition(families: list[Metric], accept: str, accept_encoding: str,
               names: Iterable[str] = ()) -> Encoded:
    """
    ``families`` encoded as the scraper asked: body and headers; only the
    samples named in ``names`` if it names any (``?name[]=``, as
    prometheus_client's own exposition does for one process).
    """
    wanted = set(names)
    registry = CollectorRegistry(auto_describe=bool(wanted))
    registry.register(_Families(families))
    encoder, content_type = choose_encoder(usable_accept(accept))
    body = encoder(registry.restricted_registry(wanted) if wanted else registry)
    headers = ((b"Content-Type", content_type.encode()),)
    if gzip_wanted(accept_encoding):
        return gzip.compress(body), (*headers, (b"Content-Encoding", b"gzip"))
    return body, headers


#: Runs a function off the reactor (its thread pool), firing with its result.
OffReactor = Callable[..., Deferred[Any]]


class GatheredHealth(Resource):
    """
    ``/healthz``, ``/readyz`` and ``/metrics`` for all the workers (see the
    module doc); ``states`` and ``stopping`` are the supervisor's.  Merging
    and encoding the metrics is done by ``off_reactor``.
    """

    isLeaf = True

    def __init__(self, *, admins: WorkerAdmins, states: Callable[[], list[WorkerState]],
                 stopping: Callable[[], bool], off_reactor: OffReactor,
                 own: Callable[[], Iterable[Metric]] | None = None) -> None:
        super().__init__()
        self._off_reactor = off_reactor
        #: The supervisor's own process metrics (read from /proc at each scrape).
        self._own = own if own is not None else ProcessCollector(registry=None).collect
        self._admins = admins
        self._states = states
        self._stopping = stopping
        #: The workers' last answers to /metrics, the bodies written of them (by
        #: what was asked), and their families merged (written off the reactor,
        #: read by the next write of the same answers).
        self._answers: list[Answer] | None = None
        self._written: dict[tuple[Any, ...], SingleFlight[Encoded] | Encoded] = {}
        self._merged: tuple[list[Answer], list[Metric], set[int]] | None = None

    def render(self, request: server.Request) -> Any:
        if request.method == b"HEAD" and request.path == b"/metrics":
            return metrics_head(request)
        if request.path != b"/metrics" and not may_probe(request):
            return head_without_body(request, too_many_probes(request))
        return head_without_body(request, super().render(request))

    def render_GET(self, request: server.Request) -> Any:
        request.setHeader(b"Cache-Control", b"no-store")
        if request.path == b"/healthz":
            return _json(request, 200, {"alive": True, "workers": [
                attrs.asdict(s) for s in self._states()]})
        if request.path == b"/readyz":
            d = self._admins.ask("/readyz", b"application/json", READINESS_REUSE_SECONDS)
            d.addCallback(self._ready, request)
        elif request.path == b"/metrics":
            if not may_scrape(request):
                return too_many_scrapes(request)
            d = self._admins.ask("/metrics", OPENMETRICS, METRICS_REUSE_SECONDS)
            accept = (request.getHeader(b"accept") or b"").decode("latin-1")
            encoding = (request.getHeader(b"accept-encoding") or b"").decode("latin-1")
            states = self._states()  # now, on the reactor's thread
            names = [n.decode("utf-8", "replace") for n in request.args.get(b"name[]", [])]
            d.addCallback(self._body, states, accept, encoding, names)
            d.addCallback(self._send, request)
        else:
            return _json(request, 404, {"error": "not found: /healthz, /readyz or /metrics"})
        d.addErrback(self._failed, request)
        return server.NOT_DONE_YET

    def _ready(self, answers: list[Answer], request: server.Request) -> None:
        states = self._states()
        workers = {}
        for answer, state in zip(answers, states):
            entry: dict[str, Any] = {"status": answer.status, "accepting": state.accepting,
                                     "restarts": state.restarts}
            if answer.problem:
                entry["problem"] = answer.problem
            else:
                try:
                    entry["answer"] = json.loads(answer.body)
                except ValueError:
                    entry["problem"] = "its answer is not JSON"
            workers[str(answer.index)] = entry
        ok = [a.status == 200 for a in answers]
        ready = (not self._stopping() and any(ok)
                 and all(good or not s.accepting for good, s in zip(ok, states)))
        body = {"ready": ready, "workers": workers}
        if self._stopping():
            body["detail"] = "stopping: the workers drain their calls"
        finish(request, 200 if ready else 503, json.dumps(body).encode() + b"\n", _JSON)

    def _body(self, answers: list[Answer], states: list[WorkerState], accept: str,
              encoding: str, names: list[str]) -> Deferred[Encoded]:
        """
        What ``answers`` (the workers', reused for `METRICS_REUSE_SECONDS`)
        make for this scraper: written once for all who ask the same of them
        (those who ask while it is written share it: `SingleFlight`).
        """
        if self._answers is not answers:  # new answers: what was written of the old goes
            self._answers, self._written = answers, {}
        written = self._written
        key = (tuple(states), usable_accept(accept), gzip_wanted(encoding), tuple(names))
        kept = written.get(key)
        if isinstance(kept, tuple):
            return succeed(kept)
        if kept is None:
            if len(written) >= MAX_BODIES_KEPT:
                written.clear()
            kept = written[key] = SingleFlight()
        flight = kept

        def write() -> Deferred[Encoded]:
            def keep(encoded: Encoded) -> Encoded:
                if written.get(key) is flight:
                    written[key] = encoded
                return encoded

            return self._off_reactor(
                self._metrics, answers, states, accept, encoding, names).addCallback(keep)

        return flight.run(write)

    def _metrics(self, answers: list[Answer], states: list[WorkerState], accept: str,
                 encoding: str, names: list[str]) -> Encoded:
        """Off the reactor: the workers' families merged (once per answers) and written."""
        merged = self._merged
        if merged is not None and merged[0] is answers:
            families, read = merged[1], merged[2]
        else:
            families, read = merged_families(answers)
            self._merged = (answers, families, read)
        return exposition(with_own(families, self._own()) + supervisor_families(states, read),
                          accept, encoding, names)

    @staticmethod
    def _send(encoded: Encoded, request: server.Request) -> None:
        finish(request, 200, *encoded)

    @staticmethod
    def _failed(failure: Failure, request: server.Request) -> None:
        """A probe or scrape that broke is answered, never left open: HTTP 500."""
        _log.failure("admin listener: gathering the workers' answers failed", failure)
        finish(request, 500, b'{"error": "internal error"}\n', _JSON)


def _json(request: server.Request, status: int, body: dict[str, Any]) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json")
    return json.dumps(body).encode() + b"\n"
