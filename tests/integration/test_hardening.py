"""
Bad input, slow and many clients, over the real TLS listener: each gets a
clear answer at once, and the gateway keeps serving.
"""

from __future__ import annotations

import json
import socket
import ssl
import time
import urllib.request
import xmlrpc.client
from typing import Iterator

import pytest

from txairflowrpc.devstack.airflow import LocalAirflow
from txairflowrpc.devstack.pki import DevPKI

from .conftest import RunningGateway, audit_records, client_context


def tls_socket(gw: RunningGateway, timeout: float = 10) -> ssl.SSLSocket:
    ctx = client_context(gw.pki, gw.client)
    raw = socket.create_connection(("127.0.0.1", gw.port), timeout=timeout)
    return ctx.wrap_socket(raw, server_hostname="localhost")


def read_all(sock: ssl.SSLSocket) -> bytes:
    """The response: until its Content-Length is in, or the connection closes."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
            head, sep, body = data.partition(b"\r\n\r\n")
            length = [int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:")]
            if sep and length and len(body) >= length[0]:
                break
    except (ssl.SSLError, ConnectionResetError, socket.timeout):
        pass
    return data


def exchange(gw: RunningGateway, head: bytes, body: bytes = b"") -> tuple[int, bytes, float]:
    """Send one raw request; (status, response body, seconds to the answer)."""
    with tls_socket(gw) as sock:
        started = time.monotonic()
        sock.sendall(head + body)
        answer = read_all(sock)
        elapsed = time.monotonic() - started
    status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0
    return status, answer.partition(b"\r\n\r\n")[2], elapsed


def post(body: bytes, ctype: bytes = b"text/xml", extra: bytes = b"", path: bytes = b"/RPC2",
         method: bytes = b"POST") -> bytes:
    return (method + b" " + path + b" HTTP/1.1\r\nHost: localhost\r\nContent-Type: " + ctype +
            b"\r\nContent-Length: %d\r\nConnection: close\r\n" % len(body) + extra + b"\r\n" + body)


def call(method: str, *params: object) -> bytes:
    return xmlrpc.client.dumps(params, method).encode()


def fault_of(body: bytes) -> int:
    try:
        xmlrpc.client.loads(body)
    except xmlrpc.client.Fault as f:
        return f.faultCode
    return 0


LAUGHS = (b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">'
          + b"".join(b'<!ENTITY %c "%s">' % (98 + i, (b"&" + bytes([97 + i]) + b";") * 10)
                     for i in range(8))
          + b']><methodCall><methodName>ping</methodName><params><param><value><string>&i;'
            b'</string></value></param></params></methodCall>')
XXE = (b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
       b'<methodCall><methodName>get_dag</methodName><params><param><value><string>&e;'
       b'</string></value></param></params></methodCall>')
DEEP = (b"<methodCall><methodName>list_dags</methodName><params><param>"
        + b"<value><array><data>" * 50 + b"</data></array></value>" * 50
        + b"</param></params></methodCall>")

CASES = {
    "text/plain": (post(call("ping"), ctype=b"text/plain"), 415, None),
    "gzip": (post(call("ping"), extra=b"Content-Encoding: gzip\r\n"), 415, None),
    "GET": (b"GET /RPC2 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n", 405, None),
    "other path": (post(call("ping"), path=b"/admin"), 404, None),
    "billion laughs": (post(LAUGHS), 200, -32700),
    "XXE": (post(XXE), 200, -32700),
    "deep nesting": (post(DEEP), 200, -32602),
    "invalid UTF-8": (post(call("get_dag", "x").replace(b">x<", b">\xff\xfe<")), 200, -32700),
    "not XML-RPC": (post(b"<methodResponse/>"), 200, -32600),
    "wrong arity": (post(call("get_dag")), 200, -32602),
    "wrong type": (post(call("get_dag", 7)), 200, -32602),
    "path traversal id": (post(call("get_dag", "x/../../variables")), 200, -32602),
    "10001 values": (post(call("list_dags", list(range(10001)))), 200, -32602),
    "conf over 64 KiB": (post(call("trigger_dag", "etl_orders", {"k": "v" * 70000})), 200, -32602),
    "oversized multicall": (post(call("system.multicall",
                                      [{"methodName": "ping", "params": []}] * 21)), 200, -32602),
    "unknown method": (post(call("system.shutdown")), 200, -32601),
    "400-digit int": (post(call("trigger_dag", "etl_orders", {"n": 1}).replace(
        b"<int>1</int>", b"<int>" + b"9" * 400 + b"</int>")), 200, -32602),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_gets_a_clear_answer_at_once(gateway: RunningGateway, name: str) -> None:
    request, status, fault = CASES[name]
    got_status, body, elapsed = exchange(gateway, request)
    assert got_status == status, body[:200]
    if fault is not None:
        assert fault_of(body) == fault
        assert b"expat" not in body and b"Traceback" not in body
    assert elapsed < 2.0
    assert gateway.proxy().ping() == "pong"


def test_a_declared_oversized_body_is_refused_before_it_is_sent(gateway: RunningGateway) -> None:
    head = (b"POST /RPC2 HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/xml\r\n"
            b"Content-Length: 50000000\r\n\r\n")
    status, body, elapsed = exchange(gateway, head)  # the 50 MB never follow
    assert status == 413 and b"larger than 1048576 bytes" in body and elapsed < 2


def test_a_chunked_body_is_cut_off_at_the_cap(gateway: RunningGateway) -> None:
    head = (b"POST /RPC2 HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/xml\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    chunk = b"10000\r\n" + b"x" * 0x10000 + b"\r\n"
    with tls_socket(gateway) as sock:
        sock.sendall(head)
        sent = 0
        try:
            for _ in range(64):  # up to 4 MiB, bounded
                sock.sendall(chunk)
                sent += 0x10000
        except (ssl.SSLError, OSError):
            pass
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:100]
    assert sent <= 4 * 1024 * 1024


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory, pki: DevPKI,
           airflow: LocalAirflow) -> Iterator[RunningGateway]:
    """A gateway with tight limits, to hit them quickly."""
    gw = RunningGateway(tmp_path_factory.mktemp("strict-gw"), pki, airflow)
    text = gw.config.read_text()
    text = text.replace("rate_per_second = 10000\nburst = 10000\nmax_in_flight = 1000", (
        "rate_per_second = 5\nburst = 5\nmax_in_flight = 1000\nrequest_deadline_seconds = 2\n"
        "handshake_timeout_seconds = 2\nmax_connections = 20\nidle_timeout_seconds = 2"))
    gw.config.write_text(text)
    gw.start()
    yield gw
    gw.stop()


def test_slowloris_is_dropped_at_the_request_deadline(strict: RunningGateway) -> None:
    with tls_socket(strict) as sock:
        sock.sendall(b"POST /RPC2 HTTP/1.1\r\n")
        started = time.monotonic()
        closed_after = None
        for i in range(40):  # a header byte every 0.25 s, for at most 10 s
            try:
                sock.sendall(b"X-Slow-%d: 1\r\n" % i)
            except (OSError, ssl.SSLError):
                closed_after = time.monotonic() - started
                break
            time.sleep(0.25)
            sock.settimeout(0.01)
            try:
                if sock.recv(1) == b"":
                    closed_after = time.monotonic() - started
                    break
            except (socket.timeout, ssl.SSLWantReadError):
                pass
            except (OSError, ssl.SSLError):
                closed_after = time.monotonic() - started
                break
    assert closed_after is not None and closed_after < 4, closed_after
    time.sleep(0.3)
    records = audit_records(strict.audit_path)
    assert any("request not completed in time" in r.get("reason", "") for r in records)


def test_an_idle_keep_alive_connection_is_closed(strict: RunningGateway) -> None:
    time.sleep(1.2)  # a full rate bucket
    body = call("ping")
    with tls_socket(strict) as sock:
        sock.sendall(b"POST /RPC2 HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/xml\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body)
        sock.settimeout(10)
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200") and b"pong" in first
        started = time.monotonic()
        rest = read_all(sock)  # nothing more is sent: the server closes when idle
        idle = time.monotonic() - started
    assert rest == b"" and 1.5 < idle < 6, idle


def test_a_connection_flood_is_capped_and_the_gateway_recovers(strict: RunningGateway) -> None:
    flood = []
    closed = 0
    try:
        for _ in range(60):  # bounded: 60 loopback connections that never handshake
            try:
                flood.append(socket.create_connection(("127.0.0.1", strict.port), timeout=5))
            except (ConnectionResetError, ConnectionRefusedError):
                closed += 1  # refused so fast that connect() itself saw the reset
        time.sleep(0.5)
        for s in flood:
            s.settimeout(0.2)
            try:
                if s.recv(1) == b"":
                    closed += 1
            except socket.timeout:
                pass
            except OSError:
                closed += 1
        assert closed >= 35, closed  # all beyond the cap of 20 (less the probes' own)
        time.sleep(2.5)  # the handshake deadline frees the 20 silent ones
        assert strict.proxy().ping() == "pong"
    finally:
        for s in flood:
            s.close()
    health = json.load(urllib.request.urlopen(
        f"http://127.0.0.1:{strict.health_port}/readyz", timeout=10))
    assert health["counters"]["refused_connections"] >= 35
    assert health["counters"]["slow_clients_dropped"] >= 1


def test_rate_limit_per_principal(strict: RunningGateway, pki: DevPKI) -> None:
    time.sleep(1.2)  # a full bucket of 5
    # Every inner call of a multicall counts against the rate, all spent when
    # it starts: ten from a bucket of five, let in whole (within
    # rpc.max_multicall), the caller owing five, so its next call is refused.
    results = strict.proxy().system.multicall([{"methodName": "ping", "params": []}] * 10)
    assert results == [["pong"]] * 10, results
    with pytest.raises(xmlrpc.client.Fault) as refused:
        strict.proxy().ping()
    assert refused.value.faultCode == 429
    # Past its rate a caller's calls are counted: the first written at once
    # (not waited for: looked for until it is there, for at most 10 s).
    limited: list[dict] = []
    for _ in range(100):
        records = audit_records(strict.audit_path)
        limited = [r for r in records if r.get("refusal") == "rate_limited"]
        if limited:
            break
        time.sleep(0.1)
    assert [(r["principal"], r["method"], r["fault_code"], r["count"]) for r in limited] == [
        ("ci-bot", "ping", 429, 1)], limited
    other = strict.proxy(pki.client("auditor@example.com"))
    assert other.ping() == "pong"  # another principal has its own bucket


def test_health_endpoints(gateway: RunningGateway) -> None:
    base = f"http://127.0.0.1:{gateway.health_port}"
    assert json.load(urllib.request.urlopen(f"{base}/healthz", timeout=10)) == {"alive": True}
    ready = json.load(urllib.request.urlopen(f"{base}/readyz", timeout=10))
    assert ready["ready"] is True
    assert {k: v["ok"] for k, v in ready["checks"].items()} == {
        "airflow": True, "audit": True, "certificates": True}
    assert ready["counters"]["circuit"] == "closed"


def test_the_admin_listener_refuses_a_body_before_reading_it(gateway: RunningGateway) -> None:
    """Found by review: twisted.web spooled any body to a temp file, without a cap."""
    with socket.create_connection(("127.0.0.1", gateway.health_port), timeout=10) as s:
        # The headers alone: the answer comes before a byte of the body is sent.
        s.sendall(b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000000\r\n\r\n")
        answer = b""
        while chunk := s.recv(4096):  # until the gateway closes
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert answer.endswith(b"the admin listener takes no request bodies\r\n")
    base = f"http://127.0.0.1:{gateway.health_port}"
    assert json.load(urllib.request.urlopen(f"{base}/healthz", timeout=10)) == {"alive": True}
