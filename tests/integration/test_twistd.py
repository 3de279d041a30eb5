"""The real ``twistd airflowrpc`` command: bad configs, daemon mode, Airflow down."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
import xmlrpc.client
from pathlib import Path

import pytest

from txairflowrpc.devstack.gatewayconf import core_config
from txairflowrpc.devstack.pki import DevPKI

from .conftest import TWISTD, client_context, free_port

ACCESS = """
[health]
port = 0
[roles.reader]
scopes = ["dags:read"]
[principals.daemon-test]
roles = ["reader"]
cert_cn = ["daemon-test"]
"""


def write_config(directory: Path, pki: DevPKI, port: int, airflow_port: int) -> Path:
    (directory / "pw").write_text("unused\n")
    path = directory / "airflowrpc.toml"
    path.write_text(core_config(
        port=port, tls=pki.directory, airflow=f"http://127.0.0.1:{airflow_port}",
        password_file=Path("pw"), audit=Path("audit.jsonl"), timeout=5,
    ) + ACCESS)
    return path


def stop_daemon(pid: int, pidfile: Path, seconds: float) -> None:
    """SIGTERM to a daemonized twistd, then wait (``seconds`` at most) for its pid file to go."""
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + seconds
    while pidfile.exists() and time.monotonic() < deadline:
        time.sleep(0.1)


@pytest.mark.parametrize("edit,expected", [
    (lambda t: t + "\n[rpc]\nmax_multical = 3\n", "rpc.max_multical: unknown key"),
    (lambda t: t.replace('"pw"', '"missing-pw"'), "airflow.password_file: cannot read"),
    (lambda t: t.replace("server.pem", "nothing.pem"), "tls.certificate: cannot read"),
    (lambda t: t.replace("timeout_seconds = 5", 'timeout_seconds = "5"'),
     "airflow.timeout_seconds: must be a number"),
])
def test_bad_config_stops_twistd_with_one_line(tmp_path: Path, pki: DevPKI, edit, expected: str) -> None:
    path = write_config(tmp_path, pki, free_port(), free_port())
    path.write_text(edit(path.read_text()))
    out = subprocess.run([str(TWISTD), "-n", "airflowrpc", "--config", str(path)],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 1
    lines = (out.stdout + out.stderr).strip().splitlines()
    assert len(lines) == 1, lines
    assert expected in lines[0] and "Traceback" not in lines[0]


def test_missing_config_file_is_one_line(tmp_path: Path) -> None:
    out = subprocess.run([str(TWISTD), "-n", "airflowrpc", "--config", "nope.toml"],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 1
    assert (out.stdout + out.stderr).strip() == (
        "airflowrpc: nope.toml: cannot read config file nope.toml: No such file or directory")


def test_daemonizes_with_pidfile_and_logfile_and_reports_airflow_down(
    tmp_path: Path, pki: DevPKI
) -> None:
    port = free_port()
    # Nothing listens on this port: Airflow is "down" for this gateway.
    path = write_config(tmp_path, pki, port, free_port())
    pidfile, logfile = tmp_path / "twistd.pid", tmp_path / "twistd.log"
    subprocess.run(
        [str(TWISTD), f"--pidfile={pidfile}", f"--logfile={logfile}", "airflowrpc",
         "--config", str(path)],
        check=True, timeout=60, cwd=tmp_path,
    )
    pid = None
    try:
        deadline = time.monotonic() + 30
        while not pidfile.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        pid = int(pidfile.read_text())
        client = pki.client("daemon-test")
        proxy = xmlrpc.client.ServerProxy(
            f"https://localhost:{port}/RPC2", context=client_context(pki, client))
        while True:
            try:
                assert proxy.ping() == "pong"
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        with pytest.raises(xmlrpc.client.Fault) as e:
            proxy.get_dag("etl_orders")
        assert e.value.faultCode == 503
        assert "Airflow unavailable" in e.value.faultString
        assert "Site (TLS) starting on" in logfile.read_text()
    finally:
        if pid is not None:
            stop_daemon(pid, pidfile, 30)
    assert not pidfile.exists()


@pytest.mark.parametrize("which", ["listener", "admin listener"])
def test_a_port_taken_stops_twistd_with_one_line(tmp_path: Path, pki: DevPKI, which: str) -> None:
    """Before: 'Unhandled Error' with a traceback, and twistd ran on, serving nothing."""
    port, admin = free_port(), free_port()
    path = write_config(tmp_path, pki, port, free_port())
    path.write_text(path.read_text().replace("[health]\nport = 0", f"[health]\nport = {admin}"))
    taken = port if which == "listener" else admin
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", taken))
        squatter.listen()
        out = subprocess.run([str(TWISTD), "-n", "--pidfile=", "airflowrpc", "--config", str(path)],
                             capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 1
    lines = [line for line in (out.stdout + out.stderr).strip().splitlines()
             if "airflowrpc:" in line or "Traceback" in line]
    suffix = " (admin listener)" if which == "admin listener" else ""
    assert lines == [f"airflowrpc: cannot listen on 127.0.0.1:{taken}{suffix}: "
                     "address already in use"], out.stdout + out.stderr


def test_a_port_taken_after_the_pre_check_ends_a_daemonizing_twistd(
    tmp_path: Path, pki: DevPKI,
) -> None:
    """
    Found by review: in daemon mode (no ``-n``), a port taken between the
    pre-check and the bind ended the child with a bare SystemExit, and
    twistd's parent, which holds its status pipe open itself, waited for
    good.  The race is made certain here by passing the pre-check.
    """
    port = free_port()
    path = write_config(tmp_path, pki, port, free_port())
    pidfile, logfile = tmp_path / "twistd.pid", tmp_path / "twistd.log"
    launcher = (
        "import sys\n"
        "import txairflowrpc.service.tap as tap\n"
        "tap.bind_problem = lambda host, port: None  # as if the port were free at the check\n"
        "from twisted.scripts.twistd import run\n"
        "sys.argv = ['twistd', *sys.argv[1:]]\n"
        "run()\n")
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        out = subprocess.run(
            [str(TWISTD.with_name("python")), "-c", launcher, f"--pidfile={pidfile}",
             f"--logfile={logfile}", "airflowrpc", "--config", str(path)],
            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 1, out.stdout + out.stderr
    said = f"airflowrpc: cannot listen on 127.0.0.1:{port}: address already in use"
    assert said in out.stderr
    # The child removes its pid file and logs its line as it exits, which may
    # be just after the parent has been told and exited (CI saw the log read
    # before it was written).
    deadline = time.monotonic() + 30
    while said not in logfile.read_text() or pidfile.exists():
        assert time.monotonic() < deadline, logfile.read_text()
        time.sleep(0.1)
    assert "Traceback" not in out.stderr + logfile.read_text()


def test_a_daemonized_supervisor_keeps_its_workers_log(tmp_path: Path, pki: DevPKI) -> None:
    """
    Found by review: with ``listen.workers = 2`` and no ``-n``, the workers
    wrote to the daemon's /dev/null; their lines now reach the supervisor's
    log file, each naming its worker.
    """
    from .test_workers import free_ports

    port, admin = free_port(), free_ports(3)
    path = write_config(tmp_path, pki, port, free_port())
    path.write_text(path.read_text().replace(f"port = {port}\n", f"port = {port}\nworkers = 2\n", 1)
                    .replace("[health]\nport = 0", f"[health]\nport = {admin}"))
    pidfile, logfile = tmp_path / "twistd.pid", tmp_path / "twistd.log"
    subprocess.run([str(TWISTD), f"--pidfile={pidfile}", f"--logfile={logfile}", "airflowrpc",
                    "--config", str(path)], check=True, timeout=60, cwd=tmp_path)
    pid = None
    try:
        deadline = time.monotonic() + 60
        while not pidfile.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        pid = int(pidfile.read_text())
        while not all(f"worker {k}: " in logfile.read_text() for k in (0, 1)):
            assert time.monotonic() < deadline, logfile.read_text()
            time.sleep(0.2)
    finally:
        if pid is not None:
            stop_daemon(pid, pidfile, 60)
    assert not pidfile.exists()
    text = logfile.read_text()
    for k in (0, 1):  # each worker's own start and its orderly stop
        assert re.search(rf"worker {k}: .*Site \(TLS\) starting on", text), text
        assert re.search(rf"worker {k}: .*stopping: no new connections", text), text
    assert "Traceback" not in text
