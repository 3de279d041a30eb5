"""
The supervisor's admin listener on its own: every worker's metrics merged
under a ``worker`` label (checked by prometheus_client's parser and by
Prometheus' own, promtool), readiness across the workers, and workers that
do not answer.  The workers here are twisted.web resources behind StubTreq;
test_workers.py asks real ones.
"""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families
from treq.testing import RequestTraversalAgent, StubTreq
from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web import server
from twisted.web.resource import Resource

from txairflowrpc.service.gathered import (
    ASK_SECONDS,
    OPENMETRICS,
    Answer,
    GatheredHealth,
    WorkerAdmins,
    exposition,
    loopback_host,
    merged_families,
    supervisor_families,
)
from txairflowrpc.service.metrics import GatewayMetrics, PartsCollector
from txairflowrpc.service.supervisor import WorkerState

from .helpers import CONFIG
from .test_admin import certificates, served
from .test_metrics import metered_gateway

PORTS = [9101, 9102]


def worker_exposition(calls: int, reload_ok: bool = True) -> bytes:
    """
    A worker's /metrics as OpenMetrics: a whole gateway's registry after ``calls`` pings,
    its last reload accepted or not (``reload_ok``).
    """
    metrics = GatewayMetrics()
    gw, parts = metered_gateway(metrics)
    certs = served(certificates(Path(tempfile.mkdtemp()), 30))
    reloader = SimpleNamespace(reloads=1, rejected=0 if reload_ok else 1,
                               last_reload_successful=reload_ok)
    metrics.collect_from(PartsCollector(
        config=lambda: CONFIG, clock=gw.clock, site=parts.site, limits=parts.limits,
        breaker=parts.breaker, client=parts.client, audit=gw.audit, refusals=parts.refusals,
        watcher=parts.watcher, coalescing=parts.coalescing(), reloader=reloader,
        certificates=lambda: certs))
    for _ in range(calls):
        gw.call_d("ping")
    metrics.upstream_answered("GET", 200, 0.02)
    return openmetrics_latest(metrics.registry)


class Workers(Resource):
    """Both workers' admin listeners, told apart by the port in the Host header."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.answers: dict[int, dict[bytes, tuple[int, bytes]]] = {}
        self.held: list[server.Request] = []
        self.accepts: list[bytes] = []
        self.keys: list[bytes | None] = []

    def render_GET(self, request: server.Request) -> Any:
        port = int((request.getHeader(b"host") or b"").rpartition(b":")[2])
        self.accepts.append(request.getHeader(b"accept") or b"")
        self.keys.append(request.getHeader(b"x-airflowrpc-supervisor"))
        answer = self.answers.get(port, {}).get(request.path)
        if answer is None:
            self.held.append(request)
            return server.NOT_DONE_YET  # never answers
        request.setResponseCode(answer[0])
        return answer[1]


def state(index: int, *, ready: bool = True, accepting: bool = True,
          restarts: int = 0) -> WorkerState:
    return WorkerState(index=index, pid=4242 + index, running=ready, ready=ready,
                       accepting=accepting, restarts=restarts)


class GatheredTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.workers = Workers()
        self.workers_http = RequestTraversalAgent(self.workers)
        self.states = [state(0), state(1, restarts=2)]
        self.stopping = False
        resource = GatheredHealth(
            admins=WorkerAdmins(self.clock, self.workers_http, "127.0.0.1", PORTS,
                                key=b"k3y"),
            states=lambda: self.states, stopping=lambda: self.stopping,
            off_reactor=lambda f, *a: succeed(f(*a)), own=self.own)
        self.resource = resource
        self.http = StubTreq(resource)

    @staticmethod
    def own() -> list[Metric]:
        """The supervisor's own process metrics, as ProcessCollector names them."""
        return [GaugeMetricFamily("process_resident_memory_bytes", "Resident memory size "
                                  "in bytes.", value=12345678),
                GaugeMetricFamily("process_open_fds", "Number of open file descriptors.",
                                  value=17)]

    def answer(self, index: int, path: bytes, status: int, body: bytes) -> None:
        self.workers.answers.setdefault(PORTS[index], {})[path] = (status, body)

    def flush(self) -> None:
        for _ in range(5):  # a worker's answer, then the supervisor's
            self.workers_http.flush()
            self.http.flush()

    def get(self, path: str, headers: dict[bytes, list[bytes]] | None = None) -> tuple[Any, bytes]:
        d = self.http.get(f"http://127.0.0.1:9100{path}", headers=headers)
        self.flush()
        response = self.successResultOf(d)
        return response, self.successResultOf(response.content())

    def test_the_supervisors_metrics_are_rendered_at_most_so_often_for_one_address(
        self,
    ) -> None:
        """
        From the second reader: the supervisor's /metrics had no limit, and
        each scrape merged every worker's (on its thread pool) and asked them.
        """
        from twisted.internet.address import IPv4Address
        from twisted.internet.testing import StringTransport

        from txairflowrpc.service.admin import SCRAPE_BURST, AdminSite

        for k in range(2):
            self.answer(k, b"/metrics", 200, worker_exposition(1))
        site = AdminSite(self.resource,
                         reactor=self.clock)
        statuses = []
        for i in range(SCRAPE_BURST + 2):
            address = IPv4Address("TCP", "10.0.0.5", 6000 + i)
            proto = site.buildProtocol(address)
            wire = StringTransport(peerAddress=address)
            proto.makeConnection(wire)
            proto.dataReceived(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            self.flush()
            statuses.append(wire.value()[:12])
            proto.connectionLost(None)
        self.assertEqual(statuses.count(b"HTTP/1.1 200"), SCRAPE_BURST)
        self.assertEqual(statuses[SCRAPE_BURST:], [b"HTTP/1.1 429"] * 2)
        # Each worker asked once: within METRICS_REUSE_SECONDS its answer is reused.
        self.assertEqual(len(self.workers.accepts), 2)
        # Each question carries the key by which the worker does not count it.
        self.assertEqual(self.workers.keys, [b"k3y", b"k3y"])

    def test_scrapes_within_a_second_share_one_merge_and_one_body(self) -> None:
        """
        Found by review: each supervisor scrape parsed every worker's text again,
        about 12 ms of CPU against one gateway's 2 ms.
        """
        from txairflowrpc.service import gathered

        merges: list[int] = []
        real = gathered.merged_families
        self.patch(gathered, "merged_families", lambda a: (merges.append(1), real(a))[1])
        for k in range(2):
            self.answer(k, b"/metrics", 200, worker_exposition(1))
        first = self.get("/metrics")[1]
        self.assertEqual(self.get("/metrics")[1], first)
        om = self.get("/metrics", {b"accept": [b"application/openmetrics-text; version=1.0.0"]})[1]
        self.assertTrue(om.endswith(b"# EOF\n") and not first.endswith(b"# EOF\n"))
        named = self.get("/metrics?name[]=process_open_fds")[1]
        # Found by review: each body after the first gathered the supervisor's own
        # samples again into the shared merge: duplicate series.
        for body in (first, om, named):
            samples = [line for line in body.splitlines() if not line.startswith(b"#")]
            self.assertEqual(len(samples), len(set(samples)), body)
        self.assertEqual(named.count(b"process_open_fds 17.0"), 1)
        self.assertEqual((len(merges), len(self.workers.accepts)), (1, 2))
        self.assertEqual(self.get("/metrics")[1], first)  # the same body again
        self.clock.advance(gathered.METRICS_REUSE_SECONDS)
        for k in range(2):
            self.answer(k, b"/metrics", 200, worker_exposition(2))
        again = self.get("/metrics")[1]
        self.assertEqual((len(merges), len(self.workers.accepts)), (2, 4))
        self.assertNotEqual(again, first)  # asked and merged again

    def test_every_workers_metrics_under_its_worker_label(self) -> None:
        self.answer(0, b"/metrics", 200, worker_exposition(2, reload_ok=False))
        self.answer(1, b"/metrics", 200, worker_exposition(3))
        response, body = self.get("/metrics")
        self.assertTrue(response.headers.getRawHeaders(b"content-type")[0].startswith(
            b"text/plain"))
        self.assertEqual(set(self.workers.accepts), {OPENMETRICS})
        families = {f.name: f for f in text_string_to_metric_families(body.decode())}
        calls = {s.labels["worker"]: s.value for s in families["airflowrpc_calls"].samples
                 if s.name == "airflowrpc_calls_total" and s.labels["method"] == "ping"}
        self.assertEqual(calls, {"0": 2.0, "1": 3.0})
        reloaded = {s.labels["worker"]: s.value
                    for s in families["airflowrpc_config_last_reload_successful"].samples}
        self.assertEqual(reloaded, {"0": 0.0, "1": 1.0})
        buckets = [s for s in families["airflowrpc_upstream_request_duration_seconds"].samples
                   if s.name.endswith("_bucket") and s.labels["le"] == "+Inf"]
        self.assertEqual(sorted(s.labels["worker"] for s in buckets), ["0", "1"])
        for family in families.values():  # every worker's sample names its worker
            if family.name != "airflowrpc_workers":
                for s in family.samples:
                    if "worker" not in s.labels:  # the supervisor's own process
                        self.assertIn(s.name, ("process_resident_memory_bytes",
                                               "process_open_fds"), s)
        memory = {s.labels.get("worker"): s.value
                  for s in families["process_resident_memory_bytes"].samples}
        self.assertEqual(memory[None], 12345678.0)
        self.assertEqual(set(memory) - {None}, {"0", "1"}, "and each worker's, labelled")
        up = {s.labels["worker"]: s.value for s in families["airflowrpc_worker_up"].samples}
        self.assertEqual(up, {"0": 1.0, "1": 1.0})
        restarts = {s.labels["worker"]: s.value
                    for s in families["airflowrpc_worker_restarts"].samples
                    if s.name == "airflowrpc_worker_restarts_total"}
        self.assertEqual(restarts, {"0": 0.0, "1": 2.0})
        self.assertEqual(families["airflowrpc_workers"].samples[0].value, 2.0)

    def test_prometheus_reads_the_text_format_and_openmetrics_when_asked(self) -> None:
        promtool = shutil.which("promtool")
        self.assertTrue(promtool, "promtool is missing: make apt-deps installs Debian's prometheus")
        self.answer(0, b"/metrics", 200, worker_exposition(1))
        self.answer(1, b"/metrics", 200, worker_exposition(1))
        _, text = self.get("/metrics")
        response, om = self.get("/metrics", {b"Accept": [OPENMETRICS]})
        self.assertTrue(response.headers.getRawHeaders(b"content-type")[0].startswith(
            b"application/openmetrics-text"))
        worker_names = {f.name for f in openmetrics_families(worker_exposition(1).decode())}
        self.assertEqual({f.name for f in openmetrics_families(om.decode())},
                         worker_names | {"airflowrpc_workers", "airflowrpc_worker_up",
                                         "airflowrpc_worker_ready", "airflowrpc_worker_restarts"})
        # promtool reads the text format (Prometheus' own parser); it exits 1 on
        # a parse error or a lint hint, naming each.
        checked = subprocess.run([promtool, "check", "metrics"], input=text.decode(),
                                 capture_output=True, text=True, timeout=60, check=False)
        self.assertEqual((checked.returncode, checked.stdout + checked.stderr), (0, ""))

    def test_the_supervisors_own_process_by_default(self) -> None:
        """Without ``own``, the supervisor's process as prometheus_client reads it from /proc."""
        resource = GatheredHealth(
            admins=WorkerAdmins(self.clock, self.workers_http, "127.0.0.1", PORTS),
            states=lambda: self.states, stopping=lambda: False,
            off_reactor=lambda f, *a: succeed(f(*a)))
        self.http = StubTreq(resource)
        self.answer(0, b"/metrics", 200, worker_exposition(1))
        self.answer(1, b"/metrics", 200, worker_exposition(1))
        _, body = self.get("/metrics")
        families = {f.name: f for f in text_string_to_metric_families(body.decode())}
        started = [s for s in families["process_start_time_seconds"].samples
                   if "worker" not in s.labels]
        self.assertEqual(len(started), 1)
        self.assertGreater(started[0].value, 0)

    def test_only_the_samples_a_scrape_names(self) -> None:
        """``?name[]=``, as one process's exposition (prometheus_client's) honours it."""
        self.answer(0, b"/metrics", 200, worker_exposition(2))
        self.answer(1, b"/metrics", 200, worker_exposition(3))
        _, body = self.get("/metrics?name[]=airflowrpc_calls_total&name[]=airflowrpc_worker_up"
                           "&name[]=process_open_fds")
        families = {f.name: f for f in text_string_to_metric_families(body.decode())}
        self.assertEqual(set(families), {"airflowrpc_calls", "airflowrpc_worker_up",
                                         "process_open_fds"})
        self.assertEqual({s.name for s in families["airflowrpc_calls"].samples},
                         {"airflowrpc_calls_total"})  # not its _created samples
        self.assertEqual(sorted(s.labels.get("worker", "") for s in
                                families["airflowrpc_worker_up"].samples), ["0", "1"])
        _, everything = self.get("/metrics")
        self.assertIn(b"airflowrpc_workers ", everything)
        _, nothing = self.get("/metrics?name[]=no_such_metric")
        self.assertEqual(nothing, b"")

    def test_gzip_when_accepted(self) -> None:
        families = supervisor_families([state(0)], {0})
        body, headers = exposition(families, "", "deflate, gzip;q=0.5")
        self.assertIn((b"Content-Encoding", b"gzip"), headers)
        self.assertIn(b"airflowrpc_worker_up", gzip.decompress(body))
        body, headers = exposition(families, "", "")
        self.assertEqual([name for name, _ in headers], [b"Content-Type"])
        self.assertIn(b"airflowrpc_worker_up", body)

    def test_gzip_refused_with_quality_0_is_not_sent(self) -> None:
        """Found by review: prometheus_client takes gzip;q=0 for gzip."""
        families = supervisor_families([state(0)], {0})
        for refused in ("gzip;q=0", "gzip; q=0.0", "identity, gzip;q=0", "gzip;q=nope"):
            _, headers = exposition(families, "", refused)
            self.assertEqual([name for name, _ in headers], [b"Content-Type"], refused)

    def test_an_accept_prometheus_client_cannot_read_gets_the_text_format(self) -> None:
        """
        Found by review: a version it cannot parse raised TypeError in
        prometheus_client, a 500 and a traceback in the log per request.
        """
        families = supervisor_families([state(0)], {0})
        for odd in ("application/openmetrics-text; version=x", "text/plain; version=zz",
                    "application/openmetrics-text; version=1.x.0"):
            body, headers = exposition(families, odd, "")
            self.assertIn((b"Content-Type", b"text/plain; version=0.0.4; charset=utf-8"),
                          headers, odd)
            self.assertIn(b"airflowrpc_worker_up", body)
        self.answer(0, b"/metrics", 200, worker_exposition(1))
        self.answer(1, b"/metrics", 200, worker_exposition(1))
        response, text = self.get("/metrics", {b"Accept": [b"text/plain; version=zz"]})
        self.assertEqual(response.code, 200)
        self.assertIn(b"airflowrpc_worker_up", text)

    def test_a_worker_that_does_not_answer_is_left_out_and_shown_down(self) -> None:
        self.answer(1, b"/metrics", 200, worker_exposition(1))
        d = self.http.get("http://127.0.0.1:9100/metrics")
        self.flush()
        self.assertNoResult(d)
        self.clock.advance(ASK_SECONDS)
        self.flush()
        body = self.successResultOf(self.successResultOf(d).content()).decode()
        families = {f.name: f for f in text_string_to_metric_families(body)}
        workers = {s.labels["worker"] for s in families["airflowrpc_calls"].samples}
        self.assertEqual(workers, {"1"})
        up = {s.labels["worker"]: s.value for s in families["airflowrpc_worker_up"].samples}
        self.assertEqual(up, {"0": 0.0, "1": 1.0})

    def test_a_worker_whose_process_is_not_running_is_not_asked(self) -> None:
        """
        Found by review: the supervisor holds a dead worker's admin socket,
        so a question to it waited ASK_SECONDS unanswered, and each probe
        with it (HAProxy's check gives up after 5 s).
        """
        running = [True, False]
        self.resource._admins = WorkerAdmins(self.clock, self.workers_http, "127.0.0.1", PORTS,
                                             running=lambda: running)
        self.states = [state(0), state(1, ready=False, accepting=False)]
        self.answer(0, b"/readyz", 200, b'{"ready": true}')
        d = self.http.get("http://127.0.0.1:9100/readyz")
        self.flush()  # no clock advanced: nothing waits for worker 1
        response = self.successResultOf(d)
        body = json.loads(self.successResultOf(response.content()))
        self.assertEqual((response.code, body["workers"]["1"]["problem"]),
                         (200, "its process is not running"))
        self.assertEqual(len(self.workers.accepts), 1)  # worker 0 alone was asked
        self.assertEqual(self.workers.held, [])

    def test_a_head_of_metrics_is_405_and_asks_no_worker(self) -> None:
        response = self.successResultOf(self.http.head("http://127.0.0.1:9100/metrics"))
        self.assertEqual(response.code, 405)
        self.assertEqual(self.workers.accepts, [])

    def test_a_worker_text_that_does_not_parse_is_left_out(self) -> None:
        families, read = merged_families([
            Answer(0, 200, b"not metrics {{{"), Answer(1, 200, worker_exposition(1)),
            Answer(2, 503, b"")])
        self.assertEqual(read, {1})
        self.assertTrue(families)

    def ready(self) -> tuple[int, dict[str, Any]]:
        d = self.http.get("http://127.0.0.1:9100/readyz")
        self.flush()
        self.clock.advance(ASK_SECONDS)  # for a worker that does not answer
        self.flush()
        response = self.successResultOf(d)
        return response.code, json.loads(self.successResultOf(response.content()))

    def test_ready_when_every_worker_that_takes_connections_is(self) -> None:
        good = json.dumps({"ready": True}).encode()
        bad = json.dumps({"ready": False}).encode()
        self.answer(0, b"/readyz", 200, good)
        self.answer(1, b"/readyz", 200, good)
        code, body = self.ready()
        self.assertEqual((code, body["ready"]), (200, True))
        self.assertEqual(body["workers"]["1"]["answer"], {"ready": True})
        # One not ready while its socket takes connections: they would wait.
        self.answer(1, b"/readyz", 503, bad)
        code, body = self.ready()
        self.assertEqual((code, body["ready"], body["workers"]["1"]["status"]), (503, False, 503))
        # One that cannot start has its socket closed: the others take its share.
        self.states = [state(0), state(1, ready=False, accepting=False)]
        self.assertEqual(self.ready()[0], 200)
        # None ready: not ready, whatever the sockets.
        self.answer(0, b"/readyz", 503, bad)
        self.states = [state(0, accepting=False), state(1, ready=False, accepting=False)]
        self.assertEqual(self.ready()[0], 503)

    def test_not_ready_when_a_worker_does_not_answer_or_while_stopping(self) -> None:
        self.answer(0, b"/readyz", 200, b'{"ready": true}')
        code, body = self.ready()
        self.assertEqual(code, 503)
        self.assertEqual(body["workers"]["1"],
                         {"status": None, "accepting": True, "restarts": 2,
                          "problem": f"no answer within {ASK_SECONDS:g} s"})
        self.answer(1, b"/readyz", 200, b'{"ready": true}')
        self.stopping = True
        code, body = self.ready()
        self.assertEqual((code, body["ready"]), (503, False))
        self.assertIn("stopping", body["detail"])

    def test_probes_reuse_the_workers_answers_for_a_second(self) -> None:
        """
        Found by review: every /readyz asked each worker again, about 2.5 ms
        of the supervisor's CPU each, taken from the workers' cores.  Now a
        second's answers are reused, as a worker reuses Airflow's, unless a
        worker started or stopped meanwhile.
        """
        running = [True, True]
        self.resource._admins = WorkerAdmins(self.clock, self.workers_http, "127.0.0.1", PORTS,
                                             running=lambda: running)
        self.answer(0, b"/readyz", 200, b'{"ready": true}')
        self.answer(1, b"/readyz", 200, b'{"ready": true}')
        codes = []
        for _ in range(20):  # 20 probes over 5 s
            d = self.http.get("http://127.0.0.1:9100/readyz")
            self.flush()
            codes.append(self.successResultOf(d).code)
            self.clock.advance(0.25)
        self.assertEqual(codes, [200] * 20)
        self.assertEqual(len(self.workers.accepts), 2 * 5)  # each worker once a second
        # Their answers follow: a worker not ready is seen within the second.
        self.answer(1, b"/readyz", 503, b'{"ready": false}')
        self.clock.advance(1.0)
        self.assertEqual(self.ready()[0], 503)
        # A worker that stopped is seen at once, whatever was kept.
        self.answer(1, b"/readyz", 200, b'{"ready": true}')
        d = self.http.get("http://127.0.0.1:9100/readyz")
        self.flush()
        self.assertEqual(self.successResultOf(d).code, 200)
        asked = len(self.workers.accepts)
        running[1] = False
        self.states = [state(0), state(1, ready=False, accepting=False)]
        d = self.http.get("http://127.0.0.1:9100/readyz")
        self.flush()  # no time has passed
        response = self.successResultOf(d)
        body = json.loads(self.successResultOf(response.content()))
        self.assertEqual((response.code, body["workers"]["1"]["problem"]),
                         (200, "its process is not running"))
        self.assertEqual(len(self.workers.accepts), asked + 1)  # worker 0 asked again

    def test_liveness_names_each_worker_and_other_paths_are_404(self) -> None:
        response, body = self.get("/healthz")
        self.assertEqual(response.code, 200)
        self.assertEqual(json.loads(body)["workers"][1],
                         {"index": 1, "pid": 4243, "running": True, "ready": True,
                          "accepting": True, "restarts": 2})
        self.assertEqual(self.workers.accepts, [])  # the supervisor alone answers it
        response, _ = self.get("/RPC2")
        self.assertEqual(response.code, 404)


class LoopbackTests(SynchronousTestCase):
    def test_a_wildcard_address_is_reached_on_loopback(self) -> None:
        self.assertEqual(loopback_host("0.0.0.0"), "127.0.0.1")
        self.assertEqual(loopback_host("::"), "::1")
        self.assertEqual(loopback_host("10.1.2.3"), "10.1.2.3")
        admins = WorkerAdmins(Clock(), RequestTraversalAgent(Resource()), "::", [1, 2])
        self.assertEqual(admins._base, ["http://[::1]:1", "http://[::1]:2"])




class SharedAskTests(SynchronousTestCase):
    def test_scrapes_that_come_together_ask_the_workers_once(self) -> None:
        workers = Workers()
        agent = RequestTraversalAgent(workers)
        clock = Clock()
        admins = WorkerAdmins(clock, agent, "127.0.0.1", PORTS)
        first = admins.ask("/metrics", OPENMETRICS)
        second = admins.ask("/metrics", OPENMETRICS)
        agent.flush()
        self.assertEqual(len(workers.held), 2)  # one request per worker, not per scrape
        clock.advance(ASK_SECONDS)
        agent.flush()
        self.assertEqual(self.successResultOf(first), self.successResultOf(second))
        admins.ask("/metrics", OPENMETRICS)  # the next asks again
        agent.flush()
        self.assertEqual(len(workers.held), 4)
