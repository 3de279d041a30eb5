"""The listener is TLS 1.2+ only and demands a client certificate from our CA."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import subprocess
import time
import urllib.request
import xmlrpc.client
from pathlib import Path
from typing import Any

import pytest

from txairflowrpc.devstack.pki import DevPKI

from .conftest import RunningGateway, audit_records, client_context


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
