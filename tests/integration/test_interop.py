"""Third-party clients: Perl's RPC::XML::Client over mutual TLS."""

from __future__ import annotations

import secrets
import subprocess
from pathlib import Path

from txairflowrpc.devstack.airflow import EXAMPLE_DAGS

from .conftest import RunningGateway

SCRIPT = Path(__file__).with_name("interop.pl")


def test_perl_rpc_xml_client_with_a_client_certificate(gateway: RunningGateway) -> None:
    run_id = f"perl-{secrets.token_hex(4)}"
    client = gateway.client
    out = subprocess.run(
        ["perl", str(SCRIPT), gateway.url, str(gateway.pki.ca_file), str(client.cert),
         str(client.key), run_id],
        capture_output=True, text=True, timeout=240,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    lines = dict(line.split("=", 1) for line in out.stdout.splitlines())
    assert lines == {
        "ping": "pong",
        "principal": "ci-bot",
        "dags": ",".join(EXAMPLE_DAGS),  # the DAGs of conf/dags, sorted
        "created": "1",
        "state": "success",
        "fault": "404",
        "signatures": "2",
    }
    run = gateway.proxy().get_dag_run("example_hello", run_id)
    assert run["conf"] == {"who": "perl"}


def test_perl_without_a_client_certificate_is_refused(gateway: RunningGateway) -> None:
    script = (
        "use RPC::XML::Client; my $c = RPC::XML::Client->new($ARGV[0], useragent => "
        "[ssl_opts => {SSL_ca_file => $ARGV[1]}]); my $r = $c->send_request('ping'); "
        "print ref($r) ? 'answered' : 'refused', qq(\\n);"
    )
    out = subprocess.run(["perl", "-e", script, gateway.url, str(gateway.pki.ca_file)],
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "refused", out.stdout + out.stderr
