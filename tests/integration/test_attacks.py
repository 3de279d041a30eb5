"""
What a determined attacker tried, against the real ``twistd airflowrpc`` over
real TLS on loopback, in front of the real Airflow: every test asserts on
refusals, records and memory, never on speed.
"""

from __future__ import annotations

import http.client
import json
import secrets
import socket
import ssl
import time
import xmlrpc.client
from pathlib import Path
from typing import Any, Iterator

import pytest

from txairflowrpc.devstack.airflow import LocalAirflow
from txairflowrpc.devstack.pki import ClientFiles, DevPKI

from .conftest import RunningGateway, audit_records, client_context

EXTRA = """
[roles.trigger_only]
scopes = ["runs:trigger:example_*"]
[principals.trigger-only]
roles = ["trigger_only"]
cert_cn = ["trigger-only"]
[principals.nobody]
roles = []
cert_cn = ["nobody"]
"""


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, pki: DevPKI,
       airflow: LocalAirflow) -> Iterator[RunningGateway]:
    """Certificates optional (so that the unauthenticated can get as far as HTTP)."""
    gateway = RunningGateway(tmp_path_factory.mktemp("attacks-gw"), pki, airflow,
                             cert_mode="optional", extra=EXTRA)
    text = gateway.config.read_text().replace(
        "max_in_flight = 1000", "max_in_flight = 1000\nmax_body_memory_bytes = 4194304\n"
        "max_connections_per_source = 400")
    gateway.config.write_text(text)
    gateway.start()
    yield gateway
    gateway.stop()


def rss_mb(gateway: RunningGateway) -> float:
    assert gateway.process is not None
    for line in Path(f"/proc/{gateway.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def tls(gateway: RunningGateway, client: ClientFiles | None = None, source: str = "127.0.0.1",
        timeout: float = 20) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", gateway.port), timeout=timeout,
                                   source_address=(source, 0))
    return client_context(gateway.pki, client).wrap_socket(raw, server_hostname="localhost")


def status_line(sock: ssl.SSLSocket) -> bytes:
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.split(b"\r\n", 1)[0]


def call_raw(gateway: RunningGateway, body: bytes, client: ClientFiles | None = None) -> Any:
    """POST a hand-written methodCall; its result, or raise its Fault."""
    conn = http.client.HTTPSConnection(
        "localhost", gateway.port, timeout=60,
        context=client_context(gateway.pki, client or gateway.client))
    try:
        conn.request("POST", "/RPC2", body, {"Content-Type": "text/xml"})
        answer = conn.getresponse().read()
    finally:
        conn.close()
    return xmlrpc.client.loads(answer)[0][0]


def audit(gateway: RunningGateway) -> list[dict[str, Any]]:
    return audit_records(gateway.audit_path)


def wait_for(check: Any, seconds: float = 20) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, "not reached in time"
        time.sleep(0.2)


# -- availability -------------------------------------------------------------


def test_bodies_of_the_unauthenticated_never_reach_memory(gw: RunningGateway) -> None:
    """200 connections without credentials, each sending a 1 MiB body and holding on."""
    before = rss_mb(gw)
    head = (b"POST /RPC2 HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/xml\r\n"
            b"Content-Length: 1048576\r\nExpect: 100-continue\r\n\r\n")
    body = b"<" * (1024 * 1024)
    held, peak, statuses = [], before, []
    try:
        for i in range(200):
            sock = tls(gw)
            sock.sendall(head)
            statuses.append(status_line(sock))  # 401 at once: no 100 Continue, no body read
            try:
                sock.sendall(body)
            except OSError:
                pass  # the gateway may close before all of it is read
            held.append(sock)
            if i % 20 == 0:
                peak = max(peak, rss_mb(gw))
        peak = max(peak, rss_mb(gw))
    finally:
        for sock in held:
            sock.close()
    assert set(statuses) == {b"HTTP/1.1 401 Unauthorized"}
    # 200 MiB of bodies were sent; the gateway held next to none of them.
    assert peak - before < 40, (before, peak)
    after = wait_for(lambda: rss_mb(gw) if rss_mb(gw) - before < 40 else None)
    assert after - before < 40


def test_bodies_in_flight_share_a_budget_past_which_it_is_503(
    gw: RunningGateway, pki: DevPKI,
) -> None:
    """An authenticated burst: bodies past max_body_memory_bytes (4 MiB) wait for a 503."""
    client = pki.client("nobody")
    head = (b"POST /RPC2 HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/xml\r\n"
            b"Content-Length: 1000000\r\n\r\n")
    socks, answers = [], []
    try:
        for _ in range(8):
            sock = tls(gw, client)
            sock.sendall(head + b"<" * 1000)  # the first bytes take the whole body's budget
            socks.append(sock)
        for sock in socks[4:]:
            answers.append(status_line(sock))
    finally:
        for sock in socks:
            sock.close()
    assert answers == [b"HTTP/1.1 503 Service Unavailable"] * 4
    assert gw.proxy(client).ping() == "pong"  # the budget came back


@pytest.fixture(scope="module")
def crowded(tmp_path_factory: pytest.TempPathFactory, pki: DevPKI,
            airflow: LocalAirflow) -> Iterator[RunningGateway]:
    gateway = RunningGateway(tmp_path_factory.mktemp("crowded-gw"), pki, airflow)
    text = gateway.config.read_text().replace(
        "max_in_flight = 1000",
        "max_in_flight = 1000\nmax_connections = 30\nmax_connections_per_source = 20\n"
        "first_byte_seconds = 15\nidle_timeout_seconds = 60")
    gateway.config.write_text(text)
    gateway.start()
    yield gateway
    gateway.stop()


def closed_at_once(gateway: RunningGateway) -> bool:
    """Whether a new connection is closed by the gateway (not left waiting)."""
    try:
        sock = tls(gateway, gateway.client, timeout=15)
    except (ssl.SSLError, ConnectionError):
        return True  # closed before the handshake could finish
    with sock:
        try:
            return sock.recv(1) == b""
        except (ssl.SSLError, ConnectionError):
            return True
        except socket.timeout:
            return False


def test_one_address_cannot_lock_everyone_out(crowded: RunningGateway) -> None:
    silent: list[ssl.SSLSocket] = []
    try:
        for _ in range(20):  # handshake (with a good certificate), then send nothing
            silent.append(tls(crowded, crowded.client))
        assert closed_at_once(crowded)  # its 21st: over its own cap
        for _ in range(10):  # another address fills the gateway to its cap of 30
            silent.append(tls(crowded, crowded.client, source="127.0.0.2"))
        # At the cap, a third address still gets in: an idle connection of the
        # address holding the most makes room for it.
        with tls(crowded, crowded.client, source="127.0.0.3") as sock:
            body = xmlrpc.client.dumps((), "ping").encode()
            sock.sendall(b"POST /RPC2 HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/xml"
                         b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            assert status_line(sock) == b"HTTP/1.1 200 OK"
        # The silent ones are dropped at the first-byte deadline (15 s), by themselves.
        for sock in silent:
            sock.settimeout(60)
            try:
                assert sock.recv(1) == b""
            except (ssl.SSLError, ConnectionResetError):
                pass
    finally:
        for sock in silent:
            sock.close()
    refusals = {r.get("refusal") for r in audit(crowded) if r.get("kind") == "refused"}
    assert {"connection_refused", "evicted", "first_byte"} <= refusals



@pytest.fixture(scope="module")
def rationed(tmp_path_factory: pytest.TempPathFactory, pki: DevPKI,
             airflow: LocalAirflow) -> Iterator[RunningGateway]:
    gateway = RunningGateway(tmp_path_factory.mktemp("rationed-gw"), pki, airflow)
    text = gateway.config.read_text().replace(
        "max_in_flight = 1000",
        "max_in_flight = 1000\nconnection_rate_per_source = 1\nconnection_burst_per_source = 5")
    gateway.config.write_text(text)
    gateway.start()
    yield gateway
    gateway.stop()


def test_one_address_cannot_spend_the_gateway_on_handshakes(rationed: RunningGateway) -> None:
    """
    Found by measuring: one ``openssl s_time`` loop of new handshakes took
    two thirds of a core and halved everyone's calls.  Past its rate an
    address's connections are closed before TLS: no handshake to pay for.
    """
    served = refused = 0
    start = time.monotonic()
    for _ in range(60):  # a bounded flood of handshakes from one address
        try:
            tls(rationed, rationed.client, source="127.0.0.5", timeout=15).close()
            served += 1
        except (ssl.SSLEOFError, ConnectionResetError):
            refused += 1  # closed before the server said a word of TLS
    elapsed = time.monotonic() - start
    # The bucket's own bound (5 at once, then 1 a second), not a speed.
    assert served <= 5 + elapsed + 1 and refused == 60 - served and refused > 0
    # Everyone else is served meanwhile.
    with tls(rationed, rationed.client, source="127.0.0.6") as sock:
        body = xmlrpc.client.dumps((), "ping").encode()
        sock.sendall(b"POST /RPC2 HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/xml"
                     b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        assert status_line(sock) == b"HTTP/1.1 200 OK"
    records = wait_for(lambda: [r for r in audit(rationed) if r.get("refusal") ==
                                "connection_refused" and r["source"].startswith("127.0.0.5:")])
    assert records[0]["reason"] == "too many new connections from this address (over 1 a second)"


def test_bare_containers_are_refused_and_others_are_served(gw: RunningGateway,
                                                          pki: DevPKI) -> None:
    body = (b"<methodCall><methodName>list_dags</methodName><params><param><value><array>"
            b"<data>" + b"<array/>" * 131_000 + b"</data></array></value></param></params>"
            b"</methodCall>")
    with pytest.raises(xmlrpc.client.Fault) as e:
        call_raw(gw, body, pki.client("nobody"))
    assert e.value.faultCode == -32600
    assert gw.proxy().ping() == "pong"


# -- authorization and what is echoed ------------------------------------------


def test_a_trigger_only_principal_learns_nothing_of_anothers_run(gw: RunningGateway,
                                                                pki: DevPKI) -> None:
    run_id = f"theirs-{secrets.token_hex(4)}"
    gw.proxy().trigger_dag("example_noop", {"pin": "1234"}, {"dag_run_id": run_id})
    trigger_only = gw.proxy(pki.client("trigger-only"))
    for guess in ({"pin": "1234"}, {"pin": "0000"}):
        with pytest.raises(xmlrpc.client.Fault) as e:
            trigger_only.trigger_dag("example_noop", guess, {"dag_run_id": run_id})
        assert e.value.faultCode == 409
        assert e.value.faultString == (
            f"conflict: run '{run_id}' of DAG 'example_noop' already exists")
    mine = f"mine-{secrets.token_hex(4)}"
    assert trigger_only.trigger_dag("example_noop", {}, {"dag_run_id": mine})["created"]
    assert trigger_only.trigger_dag("example_noop", {}, {"dag_run_id": mine}) == {
        "dag_id": "example_noop", "dag_run_id": mine, "created": False}


def test_an_unchecked_id_is_refused_before_authorisation_and_never_echoed(
    gw: RunningGateway, pki: DevPKI,
) -> None:
    nobody = gw.proxy(pki.client("nobody"))
    before = gw.audit_path.stat().st_size
    with pytest.raises(xmlrpc.client.Fault) as e:
        nobody.get_dag("\u4e00" * 262_000)
    assert e.value.faultCode == -32602 and len(e.value.faultString) < 200
    grown = wait_for(lambda: gw.audit_path.stat().st_size - before)
    assert grown < 4096  # not a 1.5 MB record


def test_audit_digests_are_keyed_and_secrets_redacted(gw: RunningGateway) -> None:
    import hashlib

    run_id = f"keyed-{secrets.token_hex(4)}"
    conf = {"pin": "1234", "db_pass": "p", "api-key": "k", "pwd": "w", "authToken": "t"}
    gw.proxy().trigger_dag("example_noop", conf, {"dag_run_id": run_id})
    record = next(r for r in audit(gw) if r.get("dag_run_id") == run_id
                  and r.get("kind") == "call")
    digest = record["args"]["conf"]
    assert set(digest) == {"hmac_sha256", "size"}
    redacted = {**{k: "[redacted]" for k in conf}, "pin": "1234"}
    plain = json.dumps(redacted, sort_keys=True, separators=(",", ":")).encode()
    assert digest["hmac_sha256"] != hashlib.sha256(plain).hexdigest()  # no guessing offline
    key = (gw.audit_path.parent / ".digest.key").read_bytes()
    import hmac

    assert digest["hmac_sha256"] == hmac.new(key, plain, hashlib.sha256).hexdigest()
    assert oct((gw.audit_path.parent / ".digest.key").stat().st_mode & 0o777) == "0o600"


# -- protocol strictness --------------------------------------------------------


def raw_request(gateway: RunningGateway, request: bytes) -> bytes:
    with tls(gateway, gateway.client) as sock:
        sock.sendall(request)
        return status_line(sock)


def test_two_authorization_headers_are_400_and_recorded(gw: RunningGateway) -> None:
    body = xmlrpc.client.dumps((), "ping").encode()
    answer = raw_request(gw, (
        b"POST /RPC2 HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/xml\r\n"
        b"Authorization: Bearer a\r\nAuthorization: Bearer b\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)) + body)
    assert answer == b"HTTP/1.1 400 Bad Request"
    wait_for(lambda: [r for r in audit(gw)
                      if r.get("reason") == "more than one Authorization header"])


def test_a_struct_member_without_a_string_name_is_minus_32600(gw: RunningGateway) -> None:
    body = (b"<methodCall><methodName>list_dags</methodName><params><param><value><struct>"
            b"<member><value><int>5</int></value><value><string>x</string></value></member>"
            b"</struct></value></param></params></methodCall>")
    with pytest.raises(xmlrpc.client.Fault) as e:
        call_raw(gw, body)
    assert e.value.faultCode == -32600


def test_nan_is_refused_and_every_audit_line_is_strict_json(gw: RunningGateway) -> None:
    body = (b"<methodCall><methodName>wait_dag_run</methodName><params>"
            b"<param><value>example_noop</value></param><param><value>x</value></param>"
            b"<param><value><double>nan</double></value></param></params></methodCall>")
    with pytest.raises(xmlrpc.client.Fault) as e:
        call_raw(gw, body)
    assert e.value.faultCode == -32602

    def strict(constant: str) -> Any:
        raise ValueError(constant)

    audit_records(gw.audit_path, parse_constant=strict)


@pytest.mark.parametrize("request_bytes,expected", [
    (b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
     b"HTTP/1.1 400 Bad Request"),
    (b"POST /RPC2 HTTP/1.1\r\n" + b"X-A: b\r\n" * 501 + b"\r\n", b"HTTP/1.1 400 Bad Request"),
    (b"GARBAGE\r\n\r\n", b"HTTP/1.1 400 Bad Request"),
    (b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", b"HTTP/1.1 404 Not Found"),
    (b"POST * HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", b"HTTP/1.1 404 Not Found"),
    (b"POST /RPC2/anything HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
     b"HTTP/1.1 404 Not Found"),
    (b"POST /%52PC2 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", b"HTTP/1.1 404 Not Found"),
])
def test_every_refusal_is_recorded(gw: RunningGateway, request_bytes: bytes,
                                   expected: bytes) -> None:
    before = len(audit(gw))
    assert raw_request(gw, request_bytes) == expected
    status = int(expected.split()[1])
    wait_for(lambda: [r for r in audit(gw)[before:]
                      if r.get("kind") == "refused" and r.get("http_status") == status])


def test_a_certificate_naming_two_principals_is_refused(gw: RunningGateway, pki: DevPKI,
                                                        tmp_path: Path) -> None:
    """A SAN of one principal (ci-bot) and the CN of another (trigger-only)."""
    both = pki.ca.issue_cert("ci-bot.example.com", common_name="trigger-only")
    files = ClientFiles("both", tmp_path / "both.pem", tmp_path / "both.key")
    both.cert_chain_pems[0].write_to_path(str(files.cert))
    both.private_key_pem.write_to_path(str(files.key))
    with pytest.raises(xmlrpc.client.ProtocolError) as e:
        gw.proxy(files).ping()
    assert e.value.errcode == 401
    wait_for(lambda: "matches principals" in gw.log.read_text())


def test_a_trigger_whose_caller_hangs_up_is_recorded_as_it_ended(gw: RunningGateway) -> None:
    run_id = f"hangup-{secrets.token_hex(4)}"
    body = xmlrpc.client.dumps(("example_noop", {}, {"dag_run_id": run_id}),
                               "trigger_dag").encode()
    with tls(gw, gw.client) as sock:
        sock.sendall(b"POST /RPC2 HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/xml\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body)
    # The caller is gone a moment after sending: the run is made all the same,
    # and its record says so.
    record = wait_for(lambda: next((r for r in audit(gw) if r.get("dag_run_id") == run_id
                                    and r.get("kind") == "call"), None), 60)
    assert (record["outcome"], record["airflow_status"]) == ("ok", 200)
    assert gw.proxy().get_dag_run("example_noop", run_id)["dag_run_id"] == run_id
