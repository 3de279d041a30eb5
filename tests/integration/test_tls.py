"""The listener is TLS 1.2+ only and demands a client certificate from our CA."""

from __future__ import annotations

import contextlib
import datetime as dt
import http.client
import socket
import ssl
import subprocess
import time
import urllib.request
import xmlrpc.client
from pathlib import Path
from typing import Any

import pytest

from txairflowrpc.devstack.airflow import LocalAirflow
from txairflowrpc.devstack.pki import ClientFiles, DevPKI

from .conftest import RunningGateway, audit_records, client_context
from .test_operations import scrape_port


def handshake(gateway: RunningGateway, ctx: ssl.SSLContext) -> str:
    """Complete a handshake and one call; the outcome in words."""
    proxy = xmlrpc.client.ServerProxy(gateway.url, context=ctx)
    try:
        return proxy.ping()
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError, OSError) as e:
        return f"refused: {type(e).__name__}"


def test_no_client_certificate_is_refused(gateway: RunningGateway) -> None:
    assert handshake(gateway, client_context(gateway.pki, None)).startswith("refused")


def test_certificate_from_another_ca_is_refused(gateway: RunningGateway, tmp_path: Path) -> None:
    other = DevPKI.create(tmp_path / "other")
    stranger = other.client("stranger.example.com")
    ctx = client_context(gateway.pki, None)
    ctx.load_cert_chain(str(stranger.cert), str(stranger.key))
    assert handshake(gateway, ctx).startswith("refused")
    # The trail says which certificate, and why (within the refusal window).
    assert refused_certificate(gateway, "CN=stranger.example.com,") == {
        "error": "unable to get local issuer certificate", "depth": 0}


def test_an_expired_certificate_is_refused_and_the_trail_says_so(
    gateway: RunningGateway,
) -> None:
    past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1)
    expired = gateway.pki.client("expired.example.com", not_after=past)
    assert handshake(gateway, client_context(gateway.pki, expired)).startswith("refused")
    assert refused_certificate(gateway, "CN=expired.example.com,") == {
        "error": "certificate has expired", "depth": 0}


def refused_certificate(gateway: RunningGateway, subject: str) -> dict[str, Any]:
    """What the trail says of the refused certificate of ``subject`` (waits for its record)."""
    deadline = time.monotonic() + 15
    while True:
        for record in audit_records(gateway.audit_path):
            refused = record.get("tls_certificate") or {}
            if record.get("refusal") == "tls_handshake" and str(
                    refused.get("subject", "")).startswith(subject):
                assert record["tls_error"] == "certificate verify failed"
                return {k: v for k, v in refused.items() if k != "subject"}
        assert time.monotonic() < deadline, f"no tls_handshake record names {subject}"
        time.sleep(0.2)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_tls_1_1_is_refused_by_the_server(gateway: RunningGateway) -> None:
    ctx = client_context(gateway.pki, gateway.client)
    ctx.minimum_version = ssl.TLSVersion.TLSv1
    ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    ctx.set_ciphers("ALL:@SECLEVEL=0")
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as raw:
        with pytest.raises(ssl.SSLError) as e:
            ctx.wrap_socket(raw, server_hostname="localhost")
    # The server's protocol_version alert, not a client that could not offer 1.1.
    assert "ALERT_PROTOCOL_VERSION" in str(e.value)


def test_tls_1_2_and_1_3_work(gateway: RunningGateway) -> None:
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        ctx = client_context(gateway.pki, gateway.client)
        ctx.minimum_version = ctx.maximum_version = version
        assert handshake(gateway, ctx) == "pong"


def test_plaintext_http_gets_no_answer(gateway: RunningGateway) -> None:
    with pytest.raises((OSError, urllib.error.URLError)):
        urllib.request.urlopen(f"http://127.0.0.1:{gateway.port}/RPC2", timeout=5).read()


@pytest.mark.parametrize("offered,version,negotiated", [
    (["h2", "http/1.1"], b"HTTP/1.1", "http/1.1"),
    (["http/1.0"], b"HTTP/1.0", "http/1.0"),  # what curl -0 offers
    (["h2"], b"HTTP/1.1", None),  # nothing fits: the handshake goes on without ALPN
])
def test_alpn_offering_clients_are_served(
    gateway: RunningGateway, offered: list[str], version: bytes, negotiated: str | None,
) -> None:
    ctx = client_context(gateway.pki, gateway.client)
    ctx.set_alpn_protocols(offered)
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.selected_alpn_protocol() == negotiated
            body = xmlrpc.client.dumps((), "ping").encode()
            tls.sendall(b"POST /RPC2 %s\r\nHost: localhost\r\nContent-Type: text/xml\r\n"
                        b"Content-Length: %d\r\nConnection: close\r\n\r\n"
                        % (version, len(body)) + body)
            answer = b""
            while chunk := tls.recv(65536):
                answer += chunk
    assert answer.startswith(version + b" 200") and b"pong" in answer


def test_curl_with_http_1_0_is_served(gateway: RunningGateway, tmp_path: Path) -> None:
    """curl -0 offers only http/1.0 in ALPN: Twisted's own callback failed its handshake."""
    body = tmp_path / "ping.xml"
    body.write_bytes(xmlrpc.client.dumps((), "ping").encode())
    result = subprocess.run(
        ["curl", "-sS", "-0", "--cacert", str(gateway.pki.ca_file),
         "--cert", str(gateway.client.cert), "--key", str(gateway.client.key),
         "-H", "Content-Type: text/xml", "--data-binary", f"@{body}", gateway.url],
        capture_output=True, timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert b"pong" in result.stdout


def issued(pki: DevPKI, directory: Path, name: str, dns: str) -> ClientFiles:
    """A client certificate for ``dns`` in ``directory`` (not the suite's shared files)."""
    leaf = pki.ca.issue_cert(dns, common_name=dns)
    files = ClientFiles(name, directory / f"{name}.pem", directory / f"{name}.key")
    leaf.cert_chain_pems[0].write_to_path(str(files.cert))
    leaf.private_key_pem.write_to_path(str(files.key))
    return files


def ping_status(conn: http.client.HTTPSConnection) -> int:
    conn.request("POST", "/RPC2", xmlrpc.client.dumps((), "ping").encode(),
                 {"Content-Type": "text/xml"})
    answer = conn.getresponse()
    answer.read()
    return answer.status


def test_a_certificate_its_ca_revoked_is_refused_on_a_connection_already_open(
    tmp_path: Path, pki: DevPKI, airflow: LocalAirflow,
) -> None:
    """
    ``tls.client_crl``: a certificate on its CA's list gets a 401 that says so, and
    the trail records it; a list renewed while the gateway runs reaches a keep-alive
    connection that was let in before; the principal's other certificate stays in.
    """
    crl = pki.write_crl(tmp_path / "crl.pem")  # nothing revoked yet
    (tmp_path / "gw").mkdir()
    gateway = RunningGateway(tmp_path / "gw", pki, airflow)
    text = gateway.config.read_text()
    assert text.count("client_ca = ") == 1
    gateway.config.write_text(text.replace("client_ca = ", f'client_crl = "{crl}"\nclient_ca = '))
    stolen = issued(pki, tmp_path, "stolen", "ci-bot.example.com")
    renewed = issued(pki, tmp_path, "renewed", "ci-bot.example.com")
    with contextlib.ExitStack() as stack:
        stack.enter_context(contextlib.contextmanager(gateway.serving)())
        kept_open = http.client.HTTPSConnection(
            "localhost", gateway.port, timeout=30, context=client_context(pki, stolen))
        stack.callback(kept_open.close)
        assert ping_status(kept_open) == 200
        sock = kept_open.sock
        pki.write_crl(crl, (stolen,))
        deadline = time.monotonic() + 15
        while (status := ping_status(kept_open)) == 200:
            assert kept_open.sock is sock, "the connection was not kept open"
            assert time.monotonic() < deadline, "the new list was not taken"
            time.sleep(0.2)
        assert status == 401
        assert gateway.proxy(renewed).ping() == "pong"
        fresh = http.client.HTTPSConnection(
            "localhost", gateway.port, timeout=30, context=client_context(pki, stolen))
        stack.callback(fresh.close)
        assert ping_status(fresh) == 401
        deadline = time.monotonic() + 15
        while not any("revoked by its CA" in str(r.get("reason", ""))
                      for r in audit_records(gateway.audit_path)):
            assert time.monotonic() < deadline, "no refusal on the trail says why"
            time.sleep(0.2)
        # The list's nextUpdate (a week ahead) on /metrics, as the alert rules read it.
        (due,) = [(dict(labels), seconds) for (name, labels), seconds
                  in scrape_port(gateway.health_port).items()
                  if name == "airflowrpc_client_crl_next_update_seconds"]
        assert "txairflowrpc dev CA" in due[0]["issuer"] and 6 * 86400 < due[1] <= 7 * 86400
