"""
``make run``: a local Airflow 3 with the DAGs from conf/dags, a development
PKI, and the gateway in the foreground in front of them.

Everything it creates lives under var/ (ignored by git): var/tls holds the
CA, the server certificate and a client certificate for "dev-client",
var/airflow is AIRFLOW_HOME.  Ctrl-C stops the gateway, then Airflow.
"""

from __future__ import annotations

import secrets
import signal
import subprocess
import sys
from pathlib import Path

from .airflow import REPO, LocalAirflow
from .pki import DevPKI

VAR = REPO / "var"
CONFIG = REPO / "conf" / "airflowrpc.toml"
AIRFLOW_PORT = 28080  # must match airflow.base_url in conf/airflowrpc.toml
GATEWAY_PORT = 8443  # must match listen.port there

SNIPPET = """
The gateway is starting on https://localhost:{port}/RPC2 in front of Airflow at
{airflow} (UI login "admin", password in {passwords}).  Call it from Python:

    import ssl, xmlrpc.client
    ctx = ssl.create_default_context(cafile="{ca}")
    ctx.load_cert_chain("{cert}", "{key}")
    rpc = xmlrpc.client.ServerProxy("https://localhost:{port}/RPC2", context=ctx)
    print(rpc.whoami())
    run = rpc.trigger_dag("example_hello", {{"who": "me"}}, {{"dag_run_id": "try-1"}})
    print(rpc.wait_dag_run("example_hello", run["dag_run_id"], 120))
    print(rpc.get_task_log("example_hello", run["dag_run_id"], "say_hello"))

Or with the airflowrpc command (exit 0 only if the run succeeded):

    export AIRFLOWRPC_URL=https://localhost:{port}/RPC2 AIRFLOWRPC_CA={ca} \\
           AIRFLOWRPC_CERT={cert} AIRFLOWRPC_KEY={key}
    .venv/bin/airflowrpc trigger example_hello --conf '{{"who": "me"}}' --run-id try-2 --wait
    .venv/bin/airflowrpc call get_dag_run example_hello try-2

The client certificate is principal "dev-client" (role operator). For a token of
the CI bot (role ci: only etl_* DAGs), in another shell:

    .venv/bin/airflowrpc token create --principal ci-bot
    python3 -c 'import ssl, xmlrpc.client; print(xmlrpc.client.ServerProxy(
        "https://localhost:{port}/RPC2", headers=[("Authorization", "Bearer TOKEN")],
        context=ssl.create_default_context(cafile="{ca}")).whoami())'

Ctrl-C stops the gateway and Airflow.
"""


#: How long the gateway may take to stop by itself after a Ctrl-C.
STOP_SECONDS = 30


class Interrupted(KeyboardInterrupt):
    """A SIGINT or SIGTERM reached the launcher."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _interrupt(signum: int, frame: object) -> None:
    raise Interrupted(signum)


def main() -> int:
    # Ctrl-C, or a TERM from a process manager, stops everything, even where
    # the shell started us with SIGINT ignored (a background job).
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    tls = VAR / "tls"
    pki = DevPKI.create(tls)
    client = pki.client("dev-client")
    password_file = VAR / "airflow" / "gateway-password"
    password_file.parent.mkdir(parents=True, exist_ok=True)
    if not password_file.exists():
        password_file.write_text(secrets.token_urlsafe(24) + "\n")
        password_file.chmod(0o600)
    airflow = LocalAirflow(
        VAR / "airflow", AIRFLOW_PORT, password_file.read_text().strip()
    )
    print(f"Starting Airflow 3 on {airflow.base_url} (log: {airflow.log_path}) ...", flush=True)
    try:
        airflow.start()
        airflow.wait_dags()
        print(SNIPPET.format(
            port=GATEWAY_PORT, airflow=airflow.base_url,
            passwords=airflow.home / "simple_auth_manager_passwords.json.generated",
            ca=pki.ca_file, cert=client.cert, key=client.key,
        ), flush=True)
        twistd = Path(sys.executable).parent / "twistd"
        gateway = subprocess.Popen(
            [str(twistd), "-n", "--pidfile=", "airflowrpc", "--config", str(CONFIG)],
            cwd=REPO,
        )
        try:
            return gateway.wait()
        except KeyboardInterrupt as e:
            # Ctrl-C: the terminal sent SIGINT to the whole foreground group,
            # twistd included, and it is already stopping; a second signal
            # would only make Twisted log a ReactorNotRunning traceback.  A
            # SIGTERM may have been meant for the launcher alone: passed on.
            if getattr(e, "signum", None) != signal.SIGINT:
                gateway.terminate()
            try:
                gateway.wait(timeout=STOP_SECONDS)
            except subprocess.TimeoutExpired:
                gateway.terminate()
                gateway.wait()
            return 0  # stopped as asked
    except KeyboardInterrupt:
        return 130
    finally:
        print("Stopping Airflow ...", flush=True)
        airflow.stop()


if __name__ == "__main__":
    sys.exit(main())
