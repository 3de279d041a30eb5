"""
The gateway's connections to the real Airflow 3.3.2: an unused one is
closed by the gateway after ``airflow.idle_connection_seconds``, before
Airflow (120 s) would close it, so that the gateway is the side that ends
it (its socket, not Airflow's, goes through TIME_WAIT), and the next call
opens a new one.  Read from ``/proc/net/tcp``: loopback only.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from txairflowrpc.devstack.airflow import LocalAirflow
from txairflowrpc.devstack.pki import DevPKI

from .conftest import RunningGateway

ESTABLISHED, TIME_WAIT = "01", "06"


def _sockets_of(pid: int) -> set[str]:
    """The inodes of the sockets process ``pid`` holds."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = fd.readlink().name
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    return inodes


def _port(field: str) -> int:
    return int(field.split(":")[1], 16)


def _to_airflow(port: int) -> list[tuple[int, str, str]]:
    """(local port, state, inode) of every IPv4 TCP socket whose peer is 127.0.0.1:``port``."""
    loopback = f"{struct.unpack('=I', socket.inet_aton('127.0.0.1'))[0]:08X}"
    found = []
    with open("/proc/net/tcp") as f:
        next(f)
        for fields in map(str.split, f):
            if fields[2] == f"{loopback}:{port:04X}":
                found.append((_port(fields[1]), fields[3], fields[9]))
    return found


@pytest.fixture(scope="module")
def quick_to_close(tmp_path_factory: pytest.TempPathFactory, pki: DevPKI,
                   airflow: LocalAirflow) -> Iterator[RunningGateway]:
    gw = RunningGateway(tmp_path_factory.mktemp("gw-idle"), pki, airflow)
    text = gw.config.read_text()
    line = f'base_url = "{airflow.base_url}"\n'
    assert text.count(line) == 1
    gw.config.write_text(text.replace(line, f"{line}idle_connection_seconds = 1\n"))
    yield from gw.serving()


def test_an_idle_connection_to_airflow_is_closed_by_the_gateway(
    quick_to_close: RunningGateway, airflow: LocalAirflow,
) -> None:
    assert quick_to_close.process is not None
    pid = quick_to_close.process.pid
    rpc = quick_to_close.proxy()

    def open_ones() -> set[int]:
        ours = _sockets_of(pid)
        return {local for local, state, inode in _to_airflow(airflow.port)
                if state == ESTABLISHED and inode in ours}

    assert rpc.get_dag("etl_orders")["dag_id"] == "etl_orders"
    used = open_ones()
    assert used, "the call left no connection to Airflow open for the next one"
    deadline = time.monotonic() + 30
    while open_ones() & used:
        assert time.monotonic() < deadline, "the gateway kept an idle connection past 30 s"
        time.sleep(0.2)
    # The gateway ended them: its side of each is in TIME_WAIT (the closer's state).
    waiting = {local for local, state, _ in _to_airflow(airflow.port) if state == TIME_WAIT}
    assert used <= waiting, (used, _to_airflow(airflow.port))
    # And the next call simply opens another.
    assert rpc.get_dag("etl_orders")["dag_id"] == "etl_orders"
    assert open_ones() - used
