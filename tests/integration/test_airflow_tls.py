"""
Airflow over https: ``airflow.base_url`` an https URL, as when Airflow sits
behind a TLS-terminating proxy with a certificate from the company's own CA.

The real HAProxy (Debian's) terminates TLS in front of the real Airflow
3.3.2 with a certificate the dev CA issued for localhost; one real
``twistd airflowrpc`` trusts that CA for Airflow (``airflow.ca_file``),
another only the system's CAs, which never vouch for it.  Nothing here
skips: without ``haproxy`` on the PATH the module fails (``make
system-deps`` installs it).
"""

from __future__ import annotations

import datetime
import secrets
import socket
import time
import types
import xmlrpc.client
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import pytest

from txairflowrpc.devstack.airflow import LocalAirflow
from txairflowrpc.devstack.pki import DevPKI

from .conftest import RunningGateway, audit_records, free_port
from .haproxy import HAProxyProcess

HAPROXY_TLS = """
global
    maxconn 256
defaults
    mode tcp
    timeout connect 5s
    timeout client 120s
    timeout server 120s
frontend airflow_tls
    bind 127.0.0.1:{port} ssl crt {pem}
    # The same certificate (for localhost and 127.0.0.1) on an address it does not name.
    bind 127.0.0.2:{port} ssl crt {pem}
    default_backend airflow
backend airflow
    server airflow 127.0.0.1:{airflow_port}
"""


class TLSProxy(HAProxyProcess):
    """HAProxy terminating TLS for Airflow with the dev CA's localhost certificate."""

    def __init__(self, directory: Path, pki: DevPKI, airflow: LocalAirflow) -> None:
        self.port = free_port()
        pem = directory / "airflow-tls.pem"  # HAProxy's crt: the chain, then the key
        pem.write_bytes((pki.directory / "server.pem").read_bytes()
                        + (pki.directory / "server.key").read_bytes())
        pem.chmod(0o600)
        super().__init__(directory, "haproxy-tls", HAPROXY_TLS.format(
            port=self.port, pem=pem, airflow_port=airflow.port))

    def start(self) -> None:
        """Start, and wait (bounded) until it listens."""
        super().start()
        assert self.process is not None
        deadline = time.monotonic() + 30
        while True:
            assert self.process.poll() is None, self.log.read_text()
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=2).close()
                return
            except OSError:
                assert time.monotonic() < deadline, f"haproxy never listened; see {self.log}"
                time.sleep(0.2)


@pytest.fixture(scope="module")
def tls_airflow(tmp_path_factory: pytest.TempPathFactory, pki: DevPKI,
                airflow: LocalAirflow) -> Iterator[TLSProxy]:
    proxy = TLSProxy(tmp_path_factory.mktemp("airflow-tls"), pki, airflow)
    try:
        proxy.start()
        yield proxy
    finally:
        proxy.stop()


def gateway_via(directory: Path, pki: DevPKI, airflow: LocalAirflow, proxy: TLSProxy,
                ca_file: Path | None, host: str = "localhost") -> Iterator[RunningGateway]:
    """
    A running gateway whose Airflow is ``https://HOST:PORT`` (the proxy),
    with ``ca_file``; stopped when the fixture using it ends.
    """
    https = f"https://{host}:{proxy.port}"
    seen_as = types.SimpleNamespace(base_url=https, gateway_password=airflow.gateway_password)
    gw = RunningGateway(directory, pki, seen_as)  # type: ignore[arg-type]
    text = gw.config.read_text()
    line = f'base_url = "{https}"\n'
    assert text.count(line) == 1
    if ca_file is not None:
        text = text.replace(line, f'{line}ca_file = "{ca_file}"\n')
    gw.config.write_text(text)
    yield from gw.serving()


@pytest.fixture(scope="module")
def trusting(tmp_path_factory: pytest.TempPathFactory, pki: DevPKI, airflow: LocalAirflow,
             tls_airflow: TLSProxy) -> Iterator[RunningGateway]:
    yield from gateway_via(tmp_path_factory.mktemp("gw-ca"), pki, airflow, tls_airflow,
                           pki.ca_file)


@pytest.fixture(scope="module")
def misnamed(tmp_path_factory: pytest.TempPathFactory, pki: DevPKI, airflow: LocalAirflow,
             tls_airflow: TLSProxy) -> Iterator[RunningGateway]:
    """Trusts the CA, but reaches Airflow at an address its certificate does not name."""
    yield from gateway_via(tmp_path_factory.mktemp("gw-misnamed"), pki, airflow, tls_airflow,
                           pki.ca_file, host="127.0.0.2")


@pytest.fixture(scope="module")
def untrusting(tmp_path_factory: pytest.TempPathFactory, pki: DevPKI, airflow: LocalAirflow,
               tls_airflow: TLSProxy) -> Iterator[RunningGateway]:
    yield from gateway_via(tmp_path_factory.mktemp("gw-system-cas"), pki, airflow, tls_airflow,
                           None)


def test_every_kind_of_call_reaches_an_https_airflow_its_ca_file_vouches_for(
    trusting: RunningGateway,
) -> None:
    rpc = trusting.proxy()
    assert rpc.get_dag("etl_orders")["dag_id"] == "etl_orders"
    run_id = f"it-tls-{secrets.token_hex(4)}"
    run = rpc.trigger_dag("example_hello", {"via": "tls"}, {"dag_run_id": run_id})
    assert run["created"] is True and run["dag_run_id"] == run_id
    assert rpc.get_dag_run("example_hello", run_id)["conf"] == {"via": "tls"}
    done = rpc.wait_dag_run("example_hello", run_id, 180)
    assert done["finished"] is True and done["state"] == "success"
    records = [r for r in audit_records(trusting.audit_path)
               if r.get("kind") == "call" and r.get("method") == "trigger_dag"]
    assert [r["outcome"] for r in records] == ["ok"]
    assert "TLS with Airflow" not in trusting.log.read_text()


def test_an_airflow_certificate_no_trusted_ca_vouches_for_is_refused_and_said_so(
    trusting: RunningGateway, tls_airflow: TLSProxy, untrusting: RunningGateway,
) -> None:
    rpc = untrusting.proxy()
    assert rpc.ping() == "pong"  # the gateway itself serves
    with pytest.raises(xmlrpc.client.Fault) as e:
        rpc.get_dag("etl_orders")
    assert e.value.faultCode == 503
    assert "TLS with Airflow failed" in e.value.faultString
    # A second call (retried, as a trigger with a run id is) fails the same
    # way, or is refused at once once the circuit breaker has opened.
    run_id = f"it-untrusted-{secrets.token_hex(4)}"
    with pytest.raises(xmlrpc.client.Fault) as e:
        rpc.trigger_dag("example_hello", {}, {"dag_run_id": run_id})
    assert e.value.faultCode == 503
    # Why, for ops: OpenSSL's reason in the service log, naming the key to set;
    # once a minute (its readiness probe, every 2 s since it started, fails alike).
    lines = [line for line in untrusting.log.read_text().splitlines()
             if f"TLS with Airflow (https://localhost:{tls_airflow.port})" in line]
    assert lines
    assert all("certificate verify failed" in line and "airflow.ca_file" in line
               for line in lines)
    times = [datetime.datetime.strptime(line[:24], "%Y-%m-%dT%H:%M:%S%z") for line in lines]
    assert all((later - earlier).total_seconds() >= 59 for earlier, later in pairwise(times))
    # Each call is on the trail as a fault, and the trigger made no run.
    calls = [r for r in audit_records(untrusting.audit_path) if r.get("kind") == "call"
             and r.get("method") in ("get_dag", "trigger_dag")]
    assert [(r["method"], r["outcome"], r["fault_code"]) for r in calls] == [
        ("get_dag", "fault", 503), ("trigger_dag", "fault", 503)]
    with pytest.raises(xmlrpc.client.Fault) as e:
        trusting.proxy().get_dag_run("example_hello", run_id)
    assert e.value.faultCode == 404


def test_a_certificate_its_ca_issued_for_another_name_is_refused(
    trusting: RunningGateway, tls_airflow: TLSProxy, misnamed: RunningGateway,
) -> None:
    """The host name is checked too, with airflow.ca_file's CAs: a trusted CA is not enough."""
    rpc = misnamed.proxy()
    run_id = f"it-misnamed-{secrets.token_hex(4)}"
    with pytest.raises(xmlrpc.client.Fault) as e:
        rpc.trigger_dag("example_hello", {}, {"dag_run_id": run_id})
    assert e.value.faultCode == 503 and "TLS with Airflow failed" in e.value.faultString
    lines = [line for line in misnamed.log.read_text().splitlines()
             if f"TLS with Airflow (https://127.0.0.2:{tls_airflow.port})" in line]
    assert lines and all("does not name the host" in line for line in lines), lines
    with pytest.raises(xmlrpc.client.Fault) as e:
        trusting.proxy().get_dag_run("example_hello", run_id)
    assert e.value.faultCode == 404
