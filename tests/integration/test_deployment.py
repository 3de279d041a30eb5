"""
What the people who run the gateway install: the systemd unit (checked by
systemd's own tools, and its readiness protocol spoken by the real twistd),
and the Prometheus alert rules (checked by promtool).  None of these needs
Airflow: the readiness test stands up a stand-in for its health endpoint,
late on purpose.
"""

from __future__ import annotations

import shlex
import shutil
import signal
import socket
import subprocess
import threading
import time
import tomllib
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml
from twisted.python.reflect import namedAny

from txairflowrpc.devstack.pki import DevPKI
from txairflowrpc.service.supervisor import STOP_MARGIN_SECONDS

from .conftest import TWISTD, RunningGateway, free_port

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "conf" / "airflowrpc.service"
ALERTS = ROOT / "conf" / "airflowrpc-alerts.yml"
INSTALLED_TWISTD = "/opt/airflowrpc/bin/twistd"
INSTALLED_CLI = "/opt/airflowrpc/bin/airflowrpc"
CLI = TWISTD.with_name("airflowrpc")


def unit_lines() -> list[str]:
    return [line for line in UNIT.read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def setting(key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in unit_lines() if line.split("=", 1)[0] == key]


def verifiable_copy(directory: Path, text: str | None = None) -> Path:
    """
    The unit, its ExecStart and ExecReload pointed at this venv's twistd and
    airflowrpc.  ``systemd-analyze verify`` checks that the commands it names
    exist and are executable, and /opt/airflowrpc is where the unit expects the
    gateway installed, not this machine; everything else is the real file, byte
    for byte.
    """
    text = UNIT.read_text() if text is None else text
    copy = directory / "airflowrpc.service"
    copy.write_text(text.replace(f"ExecStart={INSTALLED_TWISTD} ", f"ExecStart={TWISTD} ")
                    .replace(f"ExecReload={INSTALLED_CLI} ", f"ExecReload={CLI} "))
    return copy


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("systemd-analyze")
    assert tool, "systemd-analyze is missing: make apt-deps installs Debian's systemd"
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=60)


def test_the_unit_file_verifies(tmp_path: Path) -> None:
    copy = verifiable_copy(tmp_path)
    changed = [(a, b) for a, b in zip(UNIT.read_text().splitlines(), copy.read_text().splitlines())
               if a != b]
    assert [a.split(" ")[0] for a, _ in changed] == [f"ExecStart={INSTALLED_TWISTD}",
                                                     f"ExecReload={INSTALLED_CLI}"]
    # verify reports a bad value as a warning and still exits 0: any output fails.
    # No --man=no (found by review: a Documentation=man:twistd(1) the venv does not
    # install failed a plain verify): as an operator runs it.
    out = analyze("verify", str(copy))
    assert (out.returncode, out.stdout + out.stderr) == (0, "")
    # ... which it does: a mistyped key and a wrong value are seen.
    broken = verifiable_copy(tmp_path, UNIT.read_text().replace(
        "NoNewPrivileges=yes", "NoNewPrivilege=yes").replace("Type=notify", "Type=notfy"))
    out = analyze("verify", str(broken))
    assert "NoNewPrivilege" in out.stderr and "notfy" in out.stderr, out.stderr


def test_the_unit_is_hardened(tmp_path: Path) -> None:
    # systemd's own score of the sandbox (0 best, 10 worst): "OK" is below 2.0.
    out = analyze("security", "--offline=yes", "--threshold=20", "--no-pager",
                  str(verifiable_copy(tmp_path)))
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr
    loose = "\n".join(line for line in UNIT.read_text().splitlines()
                      if not line.startswith(("Protect", "Private", "Restrict", "SystemCall",
                                              "Capability", "NoNew", "UMask")))
    out = analyze("security", "--offline=yes", "--threshold=20", "--no-pager",
                  str(verifiable_copy(tmp_path, loose)))
    assert out.returncode != 0


def test_the_unit_runs_twistd_as_documented() -> None:
    (command,) = setting("ExecStart")
    argv = shlex.split(command)
    assert argv[0] == INSTALLED_TWISTD
    assert argv[1:3] == ["-n", "--pidfile="]
    assert argv[-3:] == ["airflowrpc", "--config", "/etc/airflowrpc/airflowrpc.toml"]
    # twistd imports the --logger name and calls it with no argument.
    logger = argv[argv.index("--logger") + 1]
    assert callable(namedAny(logger)) and namedAny(logger)() is not None
    assert setting("Type") == ["notify"]
    # The check first, on the file twistd reads: `systemctl reload` fails on a bad config.
    assert setting("ExecReload") == [
        f"{INSTALLED_CLI} config check /etc/airflowrpc/airflowrpc.toml", "/bin/kill -HUP $MAINPID"]
    assert setting("User") == ["airflowrpc"]
    for key, value in {
        "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
        "PrivateTmp": "yes", "CapabilityBoundingSet": "", "SystemCallFilter": "@system-service",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "ReadWritePaths": "/var/lib/airflowrpc /var/log/airflowrpc",
    }.items():
        assert value in setting(key), key


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    assert tool, "promtool is missing: make apt-deps installs Debian's prometheus"
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=60)


def test_the_alert_rules_check_and_fire_when_they_should() -> None:
    out = promtool("check", "rules", str(ALERTS))
    assert out.returncode == 0, out.stdout + out.stderr
    out = promtool("test", "rules", str(Path(__file__).with_name("alerts_test.yml")))
    assert out.returncode == 0, out.stdout + out.stderr
    rules = yaml.safe_load(ALERTS.read_text())["groups"][0]["rules"]
    assert all({"alert", "expr", "labels", "annotations"} <= set(r) for r in rules)


# -- readiness, spoken by the real twistd ---------------------------------------------


class Systemd:
    """The receiving end of ``$NOTIFY_SOCKET``: what systemd would hear, in order."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind(str(path))
        self.heard: list[dict[str, str]] = []

    def listen(self, seconds: float) -> list[dict[str, str]]:
        """Whatever arrives within ``seconds``."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.socket.settimeout(left)
            try:
                data = self.socket.recv(4096)
            except TimeoutError:
                break
            self.heard.append(dict(line.split("=", 1) for line in data.decode().splitlines()))
        return self.heard

    def wait_for(self, key: str, seconds: float) -> dict[str, str]:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for message in self.listen(0.2):
                if key in message:
                    return message
        raise AssertionError(f"no {key} within {seconds} s; heard {self.heard}")


class AirflowHealth:
    """Airflow's health endpoint alone, answering 200, started when the test says."""

    def __init__(self, port: int) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                ok = self.path == "/api/v2/monitor/health"
                self.send_response(200 if ok else 404)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_ready_only_once_it_answers_and_airflow_does_stopping_on_sigterm(
    tmp_path: Path, pki: DevPKI,
) -> None:
    systemd = Systemd(tmp_path / "notify")
    airflow_port = free_port()  # nothing listens there yet: Airflow is "starting"
    stand_in = types.SimpleNamespace(gateway_password="unused",
                                     base_url=f"http://127.0.0.1:{airflow_port}")
    gw = RunningGateway(tmp_path, pki, stand_in,  # type: ignore[arg-type]
                        env={"NOTIFY_SOCKET": str(systemd.path)})
    health: AirflowHealth | None = None
    try:
        gw.start()  # returns once ping answers over TLS: the listener is bound
        heard = systemd.listen(5)  # more than two probes of Airflow, every 2 s
        assert not [m for m in heard if "READY" in m], heard
        assert heard[-1]["STATUS"] == "listening; waiting for Airflow's health endpoint to answer"
        health = AirflowHealth(airflow_port)
        ready = systemd.wait_for("READY", 30)
        assert ready["READY"] == "1"
        assert f"rpc 127.0.0.1:{gw.port}" in ready["STATUS"]
        assert f"admin 127.0.0.1:{gw.health_port}" in ready["STATUS"]
        assert gw.proxy().ping() == "pong"
        assert gw.process is not None
        gw.process.send_signal(signal.SIGTERM)
        stopping = systemd.wait_for("STOPPING", 30)
        # How long the stop may take, past TimeoutStopSec if need be (found by review).
        shutdown = tomllib.loads(gw.config.read_text()).get("limits", {}).get(
            "shutdown_seconds", 10.0)
        assert stopping == {"STOPPING": "1", "STATUS": "stopping", "EXTEND_TIMEOUT_USEC": str(
            int((shutdown + STOP_MARGIN_SECONDS) * 1_000_000))}
        assert gw.process.wait(timeout=30) == 0  # an orderly stop (service.lifecycle)
    finally:
        gw.stop()
        if health is not None:
            health.close()
        systemd.socket.close()
    log = gw.log.read_text()
    assert "not reporting ready" in log and "ready: listening" in log
