"""
What the people who run the gateway watch, against the real twistd and a
real Airflow: ``/metrics`` on the admin listener (parsed with
prometheus_client's own parser) moving as calls are made, every metric the
alert rules name present in a real scrape, and a service log of events (JSON
Lines here) with no line per call and no secret in it.
"""

from __future__ import annotations

import json
import re
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
import xmlrpc.client
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from txairflowrpc.devstack.airflow import LocalAirflow
from txairflowrpc.devstack.pki import DevPKI

from ..jwt_helpers import Signer, jwks
from .conftest import RunningGateway, client_context

AIRFLOWRPC = Path(sys.executable).parent / "airflowrpc"
ALERTS = Path(__file__).resolve().parents[2] / "conf" / "airflowrpc-alerts.yml"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(gw: RunningGateway) -> Samples:
    return scrape_port(gw.health_port)


def scrape_port(port: int) -> Samples:
    """An admin listener's /metrics (text format), read with prometheus_client's parser."""
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=15) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        body = response.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def refused_status(call: Any) -> int:
    try:
        call()
    except xmlrpc.client.ProtocolError as e:
        return e.errcode
    return 0


def test_metrics_move_as_calls_are_made(gateway: RunningGateway,
                                        rpc: xmlrpc.client.ServerProxy) -> None:
    before = scrape(gateway)
    assert rpc.ping() == "pong"
    with pytest.raises(xmlrpc.client.Fault) as fault:
        rpc.get_dag("no_such_dag_for_metrics")
    assert fault.value.faultCode == 404
    assert rpc.get_dag("example_hello")["dag_id"] == "example_hello"
    after = scrape(gateway)
    calls = "airflowrpc_calls_total"
    assert moved(before, after, calls, method="ping", outcome="ok", fault_code="") == 1
    assert moved(before, after, calls, method="get_dag", outcome="fault", fault_code="404") == 1
    assert moved(before, after, calls, method="get_dag", outcome="ok", fault_code="") == 1
    assert moved(before, after, "airflowrpc_call_duration_seconds_count", method="get_dag") == 2
    assert moved(before, after, "airflowrpc_principal_calls_total", principal="ci-bot",
                 outcome="fault", fault_code="404") == 1
    upstream = "airflowrpc_upstream_requests_total"
    assert moved(before, after, upstream, http_method="GET", code="404") == 1
    assert moved(before, after, upstream, http_method="GET", code="200") >= 1
    assert moved(before, after, "airflowrpc_upstream_request_duration_seconds_count",
                 http_method="GET") >= 2
    assert moved(before, after, "airflowrpc_audit_records_written_total") >= 3
    assert moved(before, after, "airflowrpc_audit_write_duration_seconds_count") >= 1
    assert value(after, "airflowrpc_calls_in_flight") == 0
    assert value(after, "airflowrpc_upstream_circuit_state", state="closed") == 1
    assert value(after, "airflowrpc_build_info", version="0.1.0") == 1
    assert value(after, "process_resident_memory_bytes") > 0


def test_refused_callers_show(gateway: RunningGateway, pki: DevPKI) -> None:
    before = scrape(gateway)
    stranger = gateway.proxy(pki.client("stranger.example.com"))
    assert refused_status(stranger.ping) == 401
    bare = xmlrpc.client.ServerProxy(gateway.url, context=client_context(pki, None))
    with pytest.raises((ssl.SSLError, OSError, xmlrpc.client.ProtocolError)):
        bare.ping()  # a certificate is required: the handshake fails
    deadline = time.monotonic() + 10
    while True:
        after = scrape(gateway)
        if moved(before, after, "airflowrpc_refusals_total", kind="tls_handshake") >= 1:
            break
        assert time.monotonic() < deadline, "no tls_handshake refusal counted"
        time.sleep(0.2)
    assert moved(before, after, "airflowrpc_auth_failures_total", credential="certificate") == 1
    assert moved(before, after, "airflowrpc_refusals_total", kind="unauthenticated") == 1


def test_every_metric_the_alert_rules_name_is_in_a_real_scrape(
    gateway: RunningGateway, rpc: xmlrpc.client.ServerProxy, pki: DevPKI,
) -> None:
    # What makes the series that exist only once something happened: a token
    # (its expiry), an Airflow call, a refusal.
    out = subprocess.run([str(AIRFLOWRPC), "token", "--config", str(gateway.config), "create",
                          "--principal", "ci-bot"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    rpc.get_dag("example_hello")
    refused_status(gateway.proxy(pki.client("stranger.example.com")).ping)
    deadline = time.monotonic() + 10
    while not value(samples := scrape(gateway), "airflowrpc_token_expiry_seconds",
                    principal="ci-bot"):
        assert time.monotonic() < deadline, "the new token's expiry never showed"
        time.sleep(0.2)
    labels_of: dict[str, set[str]] = {}
    for name, labels in samples:
        labels_of.setdefault(name, set()).update(k for k, _ in labels)
    # Prometheus adds these to every series it scrapes; `up` is its own.
    added, synthetic = {"job", "instance"}, {"up"}
    # Only a supervisor (listen.workers > 1) has these: test_workers.py checks them;
    # and only a gateway given the file a metric is about (test_tls.py: tls.client_crl).
    supervisor = set(SUPERVISOR_METRICS) | set(OPTIONAL_METRICS)
    rules = yaml.safe_load(ALERTS.read_text())["groups"][0]["rules"]
    named = set()
    for rule in rules:
        expr = str(rule["expr"])
        for name, selector in re.findall(r"\b([a-z_][a-z0-9_]*)\s*(\{[^}]*\})?", expr):
            if not name.startswith(("airflowrpc_", "process_")) and name not in synthetic:
                continue
            if name in synthetic or name in supervisor:
                continue
            named.add(name)
            assert name in labels_of, f"{rule['alert']}: {name} is not in the scrape"
            used = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", selector or ""))
            assert used - added <= labels_of[name], f"{rule['alert']}: {name}{selector}"
    assert len(named) >= 12, named


#: Metrics of an optional file, by the test that scrapes a gateway given it.
OPTIONAL_METRICS = {"airflowrpc_client_crl_next_update_seconds": "test_tls.py"}

#: The supervisor's own metrics, with their labels (test_workers.py scrapes them).
SUPERVISOR_METRICS = {"airflowrpc_worker_restarts_total": {"worker"},
                      "airflowrpc_worker_ready": {"worker"}, "airflowrpc_worker_up": {"worker"}}


def alert_metric_names() -> set[str]:
    """Every airflowrpc_* metric the alert rules name."""
    rules = yaml.safe_load(ALERTS.read_text())["groups"][0]["rules"]
    return {name for rule in rules
            for name in re.findall(r"\b(airflowrpc_[a-z0-9_]*)", str(rule["expr"]))}


SIGNER = Signer("RS256", "ops-key")
ISSUER = "https://idp.ops.test"


def test_the_service_log_holds_events_not_calls_and_no_secret(
    tmp_path: Path, pki: DevPKI, airflow: LocalAirflow,
) -> None:
    jwks_path = tmp_path / "jwks.json"
    jwks_path.write_text(json.dumps(jwks(SIGNER)))
    extra = f"""
[oidc.corp]
issuer = "{ISSUER}"
audience = "airflowrpc"
jwks_file = "{jwks_path}"
claim_roles = {{ "airflow-ci" = ["ci"] }}
"""
    gw = RunningGateway(tmp_path, pki, airflow, cert_mode="optional", extra=extra,
                        twistd_args=("--logger", "txairflowrpc.service.logs.json_observer"))
    now = int(time.time())
    good_jwt = SIGNER.sign({"iss": ISSUER, "aud": "airflowrpc", "sub": "alice", "iat": now,
                            "exp": now + 600, "scope": "openid airflow-ci"})
    expired_jwt = SIGNER.sign({"iss": ISSUER, "aud": "airflowrpc", "sub": "bob",
                               "iat": now - 7200, "exp": now - 3600})
    forged_jwt = good_jwt[:-8] + ("AAAAAAAA" if not good_jwt.endswith("AAAAAAAA") else "BBBBBBBB")
    secrets = [airflow.gateway_password, good_jwt, expired_jwt, forged_jwt,
               good_jwt.rsplit(".", 1)[1], expired_jwt.rsplit(".", 1)[1]]
    try:
        gw.start()
        out = subprocess.run([str(AIRFLOWRPC), "token", "--config", str(gw.config), "create",
                              "--principal", "etl-bot"], capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 0, out.stderr
        token = out.stdout.strip()
        secrets += [token, token.rsplit("_", 1)[1]]

        def by(header: str) -> xmlrpc.client.ServerProxy:
            return xmlrpc.client.ServerProxy(gw.url, context=client_context(pki, None),
                                             headers=[("Authorization", header)])

        deadline = time.monotonic() + 10
        while refused_status(by(f"Bearer {token}").ping):  # the store is re-read within 1 s
            assert time.monotonic() < deadline
            time.sleep(0.2)
        settled = len(gw.log.read_text().splitlines())
        for _ in range(20):
            assert by(f"Bearer {token}").ping() == "pong"
        assert by(f"Bearer {token}").get_dag("etl_orders")["dag_id"] == "etl_orders"
        assert by(f"Bearer {good_jwt}").whoami()["principal"] == "corp/alice"
        with pytest.raises(xmlrpc.client.Fault):
            by(f"Bearer {good_jwt}").get_dag("no_such_dag")
        for refused in (f"Bearer {expired_jwt}", f"Bearer {forged_jwt}",
                        f"Bearer {token[:-4]}abcd", f"Bearer {token}x",
                        "Basic " + __import__("base64").b64encode(
                            f"etl-bot:{token}x".encode()).decode()):
            assert refused_status(by(refused).ping) == 401
        time.sleep(1)
        calls = gw.log.read_text().splitlines()[settled:]
        assert calls == [], calls  # 28 calls and 5 refusals: no line
        assert gw.process is not None
        gw.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "config reloaded (SIGHUP)" not in gw.log.read_text():
            assert time.monotonic() < deadline, "no reload event"
            time.sleep(0.2)
    finally:
        gw.stop()
    lines = gw.log.read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    messages = [r["message"] for r in records]
    assert any(m.startswith("ready: listening") for m in messages), messages
    assert all({"time", "level", "namespace", "message"} <= set(r) for r in records)
    text = "\n".join(lines)
    leaked = [s[:12] + "..." for s in secrets if s in text]
    assert leaked == [], leaked
