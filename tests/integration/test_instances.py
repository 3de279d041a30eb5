"""
Several instances behind HAProxy (README, "Running several instances"): the
real ``haproxy`` (Debian's, in TCP mode, ``send-proxy-v2``, health checks on
each instance's ``/readyz``) in front of two real ``twistd airflowrpc``
against the real Airflow, clients on other loopback addresses than HAProxy's.

What is shown: the gateway sees and records the client's address, not
HAProxy's, with client certificates (mutual TLS end to end) and with tokens;
a connection without a PROXY header is refused and recorded; a revoked token
is refused by every instance (the delay is measured and printed); an instance with
``workers = 2`` reads the header in each worker; a second
gateway cannot take an instance's audit file; and when one instance is
killed under load (SIGKILL), no call is lost beyond those in flight on it,
which the caller sees as connection errors, never as a wrong answer, and a
trigger retried with its run id runs once (the runs are counted in Airflow).

Nothing here skips: without ``haproxy`` on the PATH the module fails
(``make system-deps`` installs it).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.request
import xmlrpc.client
from pathlib import Path
from typing import Any, Iterator, Sequence

import attrs
import pytest

from txairflowrpc.devstack.airflow import LocalAirflow
from txairflowrpc.devstack.pki import ClientFiles, DevPKI

from ..proxyproto import header_v2
from .conftest import TWISTD, RunningGateway, audit_records, client_context, free_port
from .haproxy import HAProxyProcess, haproxy_binary

AIRFLOWRPC = TWISTD.parent / "airflowrpc"
#: Loopback addresses the clients connect from, so that they differ from
#: HAProxy's own (127.0.0.1, which is also what the gateways see it as).
CLIENT_A, CLIENT_B, STRANGER = "127.0.0.2", "127.0.0.3", "127.0.0.4"

#: conf/haproxy.cfg's settings, on loopback ports, with checks every 300 ms.
HAPROXY_CFG = """
global
    maxconn 2000
    stats socket {socket} mode 600 level admin

defaults
    mode tcp
    timeout connect 2s
    timeout client 5m
    timeout server 5m
    # A check may take longer than its interval: /readyz asks Airflow.
    timeout check 5s
    # A connection refused by a dead instance is tried again on another one
    # (at every retry), before its health check has marked it down.
    retries 3
    option redispatch 1

frontend rpc
    bind 127.0.0.1:{port}
    default_backend gateways

backend gateways
    balance leastconn
    # TLS passes through: the instances hold the certificate and check the
    # client's; HAProxy only adds the PROXY v2 header naming the client.
    # Health: the admin listener's /readyz (plain HTTP, no PROXY header).
    option httpchk
    http-check send meth GET uri /readyz ver HTTP/1.1 hdr Host localhost
    http-check expect status 200
    default-server inter 300ms fastinter 200ms downinter 500ms fall 2 rise 2 send-proxy-v2
    # When no instance is ready (Airflow down: /readyz fails everywhere), the
    # same instances unchecked, so that callers get the gateway's 503 faults
    # rather than closed connections.
    option allbackups
{servers}
"""


class Instance(RunningGateway):
    """One ``twistd airflowrpc`` behind HAProxy: PROXY protocol on, its own name and audit."""

    def __init__(self, root: Path, name: str, pki: DevPKI, airflow: LocalAirflow,
                 tokens: Path) -> None:
        directory = root / name
        directory.mkdir()
        super().__init__(directory, pki, airflow, cert_mode="optional")
        self.name = name
        text = self.config.read_text()
        text = text.replace(f"port = {self.port}\n",
                            f"port = {self.port}\nproxy_protocol = true\n", 1)
        text = text.replace("refusal_window_seconds = 1\n",
                            f'refusal_window_seconds = 1\ninstance = "{name}"\n', 1)
        # One token store for every instance, as config management would
        # distribute it (here: the very same file).
        text = text.replace(f'token_store = "{self.token_store}"', f'token_store = "{tokens}"')
        assert text.count("proxy_protocol") == 1 and f'"{name}"' in text
        assert f'"{tokens}"' in text
        self.config.write_text(text)
        self.token_store = tokens

    def start(self) -> None:
        """Start, and wait (bounded) until its admin listener says ready."""
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [str(TWISTD), "-n", "--pidfile=", "airflowrpc", "--config", str(self.config)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()
            try:
                with urllib.request.urlopen(
                        f"http://127.0.0.1:{self.health_port}/readyz", timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"{self.name} never became ready; see {self.log}")

    def kill(self) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for f in sorted(self.audit_path.parent.glob("audit.jsonl*"))
                if not f.name.endswith(".lock")
                for line in f.read_text().splitlines() if line.endswith("}")]


class HAProxy(HAProxyProcess):
    """HAProxy in front of ``instances``, as conf/haproxy.cfg sets it up, with a stats socket."""

    def __init__(self, directory: Path, instances: list[Instance]) -> None:
        self.port = free_port()
        self.socket = directory / "haproxy.sock"
        servers = "".join(
            f"    server {i.name} 127.0.0.1:{i.port} check port {i.health_port}\n"
            f"    server {i.name}-fallback 127.0.0.1:{i.port} backup\n"
            for i in instances)
        super().__init__(directory, "haproxy", HAPROXY_CFG.format(
            port=self.port, socket=self.socket, servers=servers))

    def states(self) -> dict[str, str]:
        """Each server's status as HAProxy sees it (``UP``, ``DOWN``, ...)."""
        return {name: cells["status"] for name, cells in self.stats().items()}

    def stats(self) -> dict[str, dict[str, str]]:
        """Each server's row of HAProxy's ``show stat`` (status, check_status, ...)."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(self.socket))
            s.sendall(b"show stat\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        rows = data.decode().splitlines()
        header = rows[0].lstrip("# ").split(",")
        found = {}
        for row in rows[1:]:
            cells = dict(zip(header, row.split(",")))
            if cells.get("pxname") == "gateways" and cells.get("svname") not in (
                    "BACKEND", "FRONTEND"):
                found[cells["svname"]] = cells
        return found

    def wait_states(self, wanted: dict[str, str], timeout: float = 30) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        states: dict[str, str] = {}
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()
            try:
                states = self.states()
            except OSError:
                states = {}
            if all(states.get(k, "").startswith(v) for k, v in wanted.items()):
                return
            time.sleep(0.1)
        raise AssertionError(f"HAProxy sees {states}, not {wanted}; {self.log.read_text()}")


class ClientTransport(xmlrpc.client.SafeTransport):
    """
    HTTPS from a chosen source address; one attempt per call (xmlrpc.client
    would silently send a call again on a broken keep-alive connection: the
    test wants to see every connection error); remembers, per answer, the
    ``X-Request-Id`` and the local port the call went out from.
    """

    def __init__(self, context: ssl.SSLContext, source: str,
                 headers: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(context=context, headers=list(headers))
        self.source = source
        self.answers: list[tuple[str, int]] = []

    def make_connection(self, host: Any) -> http.client.HTTPSConnection:
        if self._connection and host == self._connection[0]:
            return self._connection[1]
        chost, self._extra_headers, _ = self.get_host_info(host)
        self._connection = host, http.client.HTTPSConnection(
            chost, context=self.context, source_address=(self.source, 0), timeout=60)
        return self._connection[1]

    def request(self, host: Any, handler: Any, request_body: Any, verbose: bool = False) -> Any:
        return self.single_request(host, handler, request_body, verbose)

    def parse_response(self, response: http.client.HTTPResponse) -> Any:
        port = self._connection[1].sock.getsockname()[1]
        self.answers.append((response.getheader("X-Request-Id") or "", port))
        return super().parse_response(response)


class ProxiedHTTPSConnection(http.client.HTTPSConnection):
    """Straight to an instance, sending a PROXY v2 header before TLS, as HAProxy does."""

    def __init__(self, host: str, port: int, *, context: ssl.SSLContext, claim: tuple[str, int],
                 source: str = "127.0.0.1") -> None:
        super().__init__(host, port, context=context, timeout=30)
        self._tls, self._claim, self._source = context, claim, source

    def connect(self) -> None:
        raw = socket.create_connection((self.host, self.port), self.timeout, (self._source, 0))
        raw.sendall(header_v2(self._claim, (self.host, self.port)))
        self.sock = self._tls.wrap_socket(raw, server_hostname="localhost")


def call_direct(instance: Instance, method: str, *params: Any, client: ClientFiles | None = None,
                token: str | None = None, claim: tuple[str, int] = ("198.51.100.7", 1234)) -> Any:
    """One call straight to ``instance``'s listener, behind a PROXY header naming ``claim``."""
    conn = ProxiedHTTPSConnection("127.0.0.1", instance.port, claim=claim,
                                  context=client_context(instance.pki, client))
    headers = {"Content-Type": "text/xml"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    try:
        conn.request("POST", "/RPC2", xmlrpc.client.dumps(params, method).encode(), headers)
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    if response.status != 200:
        return response.status
    return xmlrpc.client.loads(body)[0][0]


@attrs.define
class Cluster:
    root: Path
    pki: DevPKI
    airflow: LocalAirflow
    a: Instance
    b: Instance
    haproxy: HAProxy
    client: ClientFiles

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.haproxy.port}/RPC2"

    def proxy(self, source: str, *, client: ClientFiles | None = None,
              token: str | None = None) -> tuple[xmlrpc.client.ServerProxy, ClientTransport]:
        """A caller through HAProxy from ``source``, by certificate or by token."""
        headers = [("Authorization", f"Bearer {token}")] if token else []
        transport = ClientTransport(client_context(self.pki, client), source, headers)
        return xmlrpc.client.ServerProxy(self.url, transport=transport), transport

    def token(self, command: str, *args: str) -> str:
        out = subprocess.run([str(AIRFLOWRPC), "token", "--config", str(self.a.config),
                              command, *args], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, pki: DevPKI,
            airflow: LocalAirflow) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("instances")
    tokens = root / "tokens.json"
    a = Instance(root, "gw-a", pki, airflow, tokens)
    b = Instance(root, "gw-b", pki, airflow, tokens)
    haproxy = HAProxy(root, [a, b])
    try:
        a.start()
        b.start()
        haproxy.start()
        haproxy.wait_states({"gw-a": "UP", "gw-b": "UP"})
        yield Cluster(root, pki, airflow, a, b, haproxy, pki.client("ci-bot.example.com"))
    finally:
        haproxy.stop()
        a.stop()
        b.stop()


EXAMPLE = Path(__file__).resolve().parents[2] / "conf" / "haproxy.cfg"


def test_the_example_haproxy_config_is_valid_and_is_what_runs_here() -> None:
    example = EXAMPLE.read_text()
    check = subprocess.run([haproxy_binary(), "-c", "-f", str(EXAMPLE)],
                           capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    for setting in ("mode tcp", "timeout check 5s", "retries 3", "option redispatch 1",
                    "balance leastconn", "option httpchk", "http-check expect status 200",
                    "http-check send meth GET uri /readyz ver HTTP/1.1 hdr Host localhost",
                    "send-proxy-v2", "option allbackups"):
        assert setting in example and setting in HAPROXY_CFG, setting


def by_request_id(*instances: Instance) -> dict[str, tuple[str, dict[str, Any]]]:
    """Every call record, by request id, with the instance that wrote it."""
    return {r["request_id"]: (i.name, r) for i in instances for r in i.records()
            if r.get("kind") == "call"}


def test_calls_through_haproxy_are_recorded_with_the_clients_address(cluster: Cluster) -> None:
    # By certificate from one address, by token from another: a connection
    # per call, so that HAProxy's round robin hands them to both instances.
    token = cluster.token("create", "--principal", "ci-bot")
    deadline = time.monotonic() + 20
    for instance in (cluster.a, cluster.b):  # the store is watched once a second
        while call_direct(instance, "ping", token=token) != "pong":
            assert time.monotonic() < deadline, f"{instance.name} never took the token"
            time.sleep(0.2)
    answers: list[tuple[str, str, int]] = []  # (source, request id, local port)
    for source, how in ((CLIENT_A, {"client": cluster.client}), (CLIENT_B, {"token": token})):
        for _ in range(4):
            rpc, transport = cluster.proxy(source, **how)
            me = rpc.whoami()
            expected = "client_certificate" if "client" in how else "token"
            assert (me["principal"], me["authenticated_by"]) == ("ci-bot", expected)
            if "client" in how:  # the client's own certificate reached the gateway
                assert "ci-bot.example.com" in me["certificate"]["subject"]
            answers += [(source, rid, port) for rid, port in transport.answers]
    records = by_request_id(cluster.a, cluster.b)
    served = set()
    for source, request_id, port in answers:
        name, record = records[request_id]
        served.add(name)
        assert record["source"] == f"{source}:{port}", record  # not HAProxy's 127.0.0.1
        assert record["instance"] == name
    assert served == {"gw-a", "gw-b"}


def test_without_a_proxy_header_a_connection_is_refused_and_recorded(cluster: Cluster) -> None:
    # Straight to an instance's TLS port, as a client that bypasses HAProxy.
    context = client_context(cluster.pki, cluster.client)
    with socket.create_connection(("127.0.0.1", cluster.a.port), 10, (STRANGER, 0)) as raw:
        local_port = raw.getsockname()[1]
        with pytest.raises(OSError):  # the handshake meets a closed connection
            context.wrap_socket(raw, server_hostname="localhost")
    deadline = time.monotonic() + 10
    while True:
        refused = [r for r in cluster.a.records() if r.get("refusal") == "proxy_header"]
        if refused:
            break
        assert time.monotonic() < deadline, "the refusal was not recorded"
        time.sleep(0.2)
    assert refused[0]["source"] == f"{STRANGER}:{local_port}"
    assert refused[0]["reason"] == "no valid PROXY protocol header: refused"
    # The same instance, reached with a header: the address it names is recorded.
    assert call_direct(cluster.a, "ping", client=cluster.client, claim=("198.51.100.7", 999)) \
        == "pong"
    assert any(r.get("method") == "ping" and r.get("source") == "198.51.100.7:999"
               for r in cluster.a.records())


def test_a_revoked_token_is_refused_by_every_instance(cluster: Cluster) -> None:
    samples = []
    for _ in range(3):
        samples.append(revocation_delays(cluster))
    print("\nrevocation, from the token store's write to the first refusal: " + "; ".join(
        f"gw-a {s['gw-a']:.2f} s, gw-b {s['gw-b']:.2f} s" for s in samples))


def revocation_delays(cluster: Cluster) -> dict[str, float]:
    """Revoke a token both instances take; how long after the store's write each refuses it."""
    token = cluster.token("create", "--principal", "ci-bot")
    token_id = token.split("_")[1]
    deadline = time.monotonic() + 20
    for instance in (cluster.a, cluster.b):
        while call_direct(instance, "ping", token=token) != "pong":
            assert time.monotonic() < deadline, f"{instance.name} never took the token"
            time.sleep(0.2)
    before = cluster.a.token_store.stat().st_mtime_ns
    cluster.token("revoke", token_id)
    changed = cluster.a.token_store.stat().st_mtime_ns
    assert changed != before
    delays: dict[str, float] = {}
    deadline = time.monotonic() + 20
    while len(delays) < 2:
        assert time.monotonic() < deadline, f"still accepted after 20 s by some of {delays}"
        for instance in (cluster.a, cluster.b):
            if instance.name not in delays and call_direct(instance, "ping", token=token) == 401:
                delays[instance.name] = time.time() - changed / 1e9
        time.sleep(0.05)
    # Through HAProxy too, whichever instance answers.
    rpc, _ = cluster.proxy(CLIENT_B, token=token)
    for _ in range(2):
        with pytest.raises(xmlrpc.client.ProtocolError) as e:
            rpc.ping()
        assert e.value.errcode == 401
    return delays


def test_a_second_gateway_cannot_write_an_instances_audit_file(cluster: Cluster) -> None:
    config = cluster.root / "intruder.toml"
    text = cluster.b.config.read_text()
    text = text.replace(f"port = {cluster.b.port}\n", f"port = {free_port()}\n", 1)
    text = text.replace(f"port = {cluster.b.health_port}\n", f"port = {free_port()}\n", 1)
    text = text.replace('instance = "gw-b"', 'instance = "gw-c"')
    config.write_text(text)
    out = subprocess.run(
        [str(TWISTD), "-n", "--pidfile=", "airflowrpc", "--config", str(config)],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert out.returncode == 1, out.stdout + out.stderr
    assert (f"airflowrpc: audit.path: {cluster.b.audit_path} is written by another running "
            f"gateway (instance gw-b, pid {cluster.b.process.pid}") in out.stderr, out.stderr
    assert all(r.get("instance") != "gw-c" for r in cluster.b.records())


def test_with_airflow_down_callers_get_the_gateways_faults(cluster: Cluster) -> None:
    # /readyz fails on every instance, HAProxy marks them all down, and the
    # unchecked backups (conf/haproxy.cfg) still let the gateways answer:
    # a 503 fault, as from a single gateway, not a connection closed.
    rpc, _ = cluster.proxy(CLIENT_A, client=cluster.client)
    assert rpc.get_dag("example_noop")["dag_id"] == "example_noop"
    cluster.airflow.stop()
    try:
        cluster.haproxy.wait_states({"gw-a": "DOWN", "gw-b": "DOWN"})
        for _ in range(4):  # new connections, to whichever instance
            rpc, _ = cluster.proxy(CLIENT_A, client=cluster.client)
            with pytest.raises(xmlrpc.client.Fault) as e:
                rpc.get_dag("example_noop")
            assert e.value.faultCode in (503, 504), e.value
    finally:
        cluster.airflow.start()
    cluster.haproxy.wait_states({"gw-a": "UP", "gw-b": "UP"}, timeout=60)
    deadline = time.monotonic() + 60
    for instance in (cluster.a, cluster.b):  # each one's circuit closes again by itself
        while True:
            try:
                if call_direct(instance, "get_dag", "example_noop",
                               client=cluster.client)["dag_id"] == "example_noop":
                    break
            except xmlrpc.client.Fault as e:
                assert e.faultCode in (503, 504), e
            assert time.monotonic() < deadline, f"{instance.name} did not recover"
            time.sleep(0.5)


def test_workers_behind_haproxy_read_its_header(
        tmp_path_factory: pytest.TempPathFactory, pki: DevPKI, airflow: LocalAirflow) -> None:
    """
    Found by review: with ``workers = 2`` a worker's adopted listener had no
    PROXY layer, so HAProxy's header went into the TLS handshake (every call
    failed) and a client without one was served.
    """
    from .test_workers import free_ports

    root = tmp_path_factory.mktemp("proxied-workers")
    gw = Instance(root, "gw-w", pki, airflow, root / "tokens.json")
    health = free_ports(3)  # the supervisor's admin listener, then worker K's at +1+K
    text = gw.config.read_text().replace(
        f"port = {gw.port}\n", f"port = {gw.port}\nworkers = 2\n", 1).replace(
        f"[health]\nport = {gw.health_port}\n", f"[health]\nport = {health}\n", 1)
    assert "workers = 2" in text and f"port = {health}" in text
    gw.config.write_text(text)
    gw.health_port = health
    haproxy = HAProxy(root, [gw])
    client = pki.client("ci-bot.example.com")
    try:
        gw.start()
        haproxy.start()
        haproxy.wait_states({"gw-w": "UP"})
        answers: list[tuple[str, int]] = []
        served: set[str] = set()
        for _ in range(40):  # new connections, until the kernel gave both workers some
            transport = ClientTransport(client_context(pki, client), CLIENT_A)
            rpc = xmlrpc.client.ServerProxy(f"https://127.0.0.1:{haproxy.port}/RPC2",
                                            transport=transport)
            assert rpc.whoami()["principal"] == "ci-bot"
            answers += transport.answers
            records = {r["request_id"]: r
                       for f in sorted(gw.audit_path.parent.glob("audit.w*.jsonl"))
                       for r in audit_records(f)
                       if r.get("kind") == "call"}
            served = {records[rid]["instance"] for rid, _ in answers}
            if len(served) == 2:
                break
        assert served == {"gw-w-w0", "gw-w-w1"}
        for request_id, port in answers:
            assert records[request_id]["source"] == f"{CLIENT_A}:{port}"  # not HAProxy's
        # No header: the handshake meets a closed connection.
        with socket.create_connection(("127.0.0.1", gw.port), 10, (STRANGER, 0)) as raw, \
                pytest.raises(OSError):
            client_context(pki, client).wrap_socket(raw, server_hostname="localhost")
    finally:
        haproxy.stop()
        gw.stop()


#: Callers under load that hold one keep-alive connection (two more open one per call).
KEEP_ALIVE = 4


@attrs.define
class Outcome:
    worker: int
    run_id: str
    method: str
    started: float
    ended: float
    result: Any  # the answer, or the exception


def test_one_instance_killed_under_load(cluster: Cluster) -> None:
    prefix = f"ha-{int(time.time())}"
    outcomes: list[Outcome] = []
    stop = threading.Event()
    workers = KEEP_ALIVE + 2

    def attempt(rpc: Any, worker: int, run_id: str, method: str, *args: Any) -> Any:
        started = time.monotonic()
        try:
            result = getattr(rpc, method)(*args)
        except Exception as e:  # a connection error, or a fault: judged below
            result = e
        outcomes.append(Outcome(worker, run_id, method, started, time.monotonic(), result))
        return result

    def load(worker: int) -> None:
        # Most callers hold a keep-alive connection, as a pipeline would; the
        # others open one per call (new connections meet HAProxy's choice
        # while the killed instance is not yet marked down).  After an error
        # a caller retries on a new connection, a trigger with its run id.
        source = (CLIENT_A, CLIENT_B)[worker % 2]
        fresh = worker >= KEEP_ALIVE
        rpc, _ = cluster.proxy(source, client=cluster.client)
        for i in range(10_000):  # bounded; stopped by the flag
            if stop.is_set():
                return
            run_id = f"{prefix}-{worker}-{i}"
            for method, args in (
                    ("trigger_dag", ("example_noop", {"tag": run_id}, {"dag_run_id": run_id})),
                    ("get_dag_run", ("example_noop", run_id))):
                for _ in range(20):  # the caller's own retries, bounded
                    if fresh:
                        rpc, _ = cluster.proxy(source, client=cluster.client)
                    if isinstance(attempt(rpc, worker, run_id, method, *args), dict):
                        break
                    rpc, _ = cluster.proxy(source, client=cluster.client)
                    time.sleep(0.1)

    def successes_since(t: float) -> dict[int, int]:
        counts = {w: 0 for w in range(workers)}
        for o in list(outcomes):
            if o.started > t and isinstance(o.result, dict):
                counts[o.worker] += 1
        return counts

    threads = [threading.Thread(target=load, args=(w,)) for w in range(workers)]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 60
        while min(successes_since(0).values()) < 5:  # every worker under way
            assert time.monotonic() < deadline, "the load did not get going"
            time.sleep(0.2)
        killed_at = time.monotonic()
        cluster.a.kill()
        gone_at = time.monotonic()  # reaped: its sockets are closed
        cluster.haproxy.wait_states({"gw-a": "DOWN", "gw-b": "UP"})
        down_at = time.monotonic()
        deadline = time.monotonic() + 90
        while min(successes_since(down_at).values()) < 10:
            assert time.monotonic() < deadline, successes_since(down_at)
            time.sleep(0.2)
    finally:
        stop.set()
        for t in threads:
            t.join(120)
    assert not any(t.is_alive() for t in threads)

    answers = [o for o in outcomes if isinstance(o.result, dict)]
    failures = [o for o in outcomes if not isinstance(o.result, dict)]
    # Never a wrong answer: every answer is about the run that was asked for.
    for o in answers:
        assert o.result["dag_run_id"] == o.run_id, o
        assert json.loads(o.result["conf_json"]) == {"tag": o.run_id}, o
    # Failures only where a call met the killed instance: connection errors,
    # never a fault, at most one per caller (the connection it held to it,
    # in flight or idle at the kill), none once HAProxy marked it down.
    for o in failures:
        assert isinstance(o.result, (OSError, http.client.HTTPException)), o
        assert not isinstance(o.result, xmlrpc.client.Fault), o
        assert o.ended >= killed_at, o
    assert failures, "the kill cost no call: the load did not reach gw-a"
    per_worker = [sum(o.worker == w for o in failures) for w in range(workers)]
    assert max(per_worker) <= 1, failures
    assert not [o for o in failures if o.started > down_at], failures
    # A new connection after the instance was gone went to the live one
    # (HAProxy redispatches a refused connection): only calls already in
    # flight on it failed for callers that connect per call.
    assert not [o for o in failures if o.worker >= KEEP_ALIVE and o.started > gone_at], failures

    # Every run id asked for was triggered, each exactly once: count in Airflow.
    asked = {o.run_id for o in outcomes}
    runs = runs_with_prefix(cluster.airflow, prefix)
    assert sorted(runs) == sorted(asked)
    assert {run_id: n for run_id, n in runs.items() if n != 1} == {}
    retried = {o.run_id for o in failures if o.method == "trigger_dag"}
    print(f"\nkill under load: {len(answers)} answers, {len(failures)} connection errors "
          f"({len(retried)} triggers retried with their run id), {len(asked)} runs, each once")

    # The audit trails: one chain per instance, gw-a's cut by the kill but whole.
    out = subprocess.run([str(AIRFLOWRPC), "audit", "verify", str(cluster.a.audit_path.parent),
                          str(cluster.b.audit_path.parent)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode in (0, 4), out.stdout + out.stderr  # 4: intents cut off by the kill
    assert "instance gw-a: " in out.stdout and "instance gw-b: " in out.stdout, out.stdout
    assert out.stdout.splitlines()[-1] == "2 chains: 2 whole", out.stdout
    open_intents = [line for line in out.stdout.splitlines() if line.startswith("    seq ")]
    gw_b = out.stdout.index("instance gw-b: ")
    assert all(out.stdout.index(line) < gw_b for line in open_intents), out.stdout
    # Health checks went to the admin listener's /readyz, never to the TLS port:
    # a layer-7 check answered 200 (the TLS port cannot answer plain HTTP).
    # ("* L7OK" is a check under way; the finished one says its status code.)
    deadline = time.monotonic() + 30
    checked = cluster.haproxy.stats()["gw-b"]
    while checked["check_status"].startswith("*") and time.monotonic() < deadline:
        time.sleep(0.2)
        checked = cluster.haproxy.stats()["gw-b"]
    assert (checked["check_status"], checked["check_code"]) == ("L7OK", "200"), checked


def runs_with_prefix(airflow: LocalAirflow, prefix: str) -> dict[str, int]:
    """Ask Airflow directly: how many runs of example_noop carry each of our run ids as tag."""
    token = airflow.token("admin", airflow.admin_password)
    counts: dict[str, int] = {}
    offset = 0
    for _ in range(1000):  # bounded: pages of 100
        req = urllib.request.Request(
            f"{airflow.base_url}/api/v2/dags/example_noop/dagRuns?limit=100&offset={offset}",
            headers={"Authorization": f"Bearer {token}"})
        page = json.load(urllib.request.urlopen(req, timeout=30))
        for run in page["dag_runs"]:
            tag = (run.get("conf") or {}).get("tag", "")
            if tag.startswith(prefix + "-"):
                assert run["dag_run_id"] == tag, run
                counts[tag] = counts.get(tag, 0) + 1
        offset += 100
        if offset >= page["total_entries"]:
            return counts
    raise AssertionError("more than 100,000 runs")
