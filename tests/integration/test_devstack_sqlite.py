"""
``make run``'s Airflow: the real Airflow 3.3.2 on SQLite, as a newcomer
gets it (the suite's own Airflow runs on PostgreSQL).

Found by running ``make run``'s snippet as a newcomer would: the first
``trigger_dag`` came back "Airflow answered HTTP 500".  Airflow's insert of
its own log entry had waited Python's default 5 s for SQLite's write lock,
held meanwhile by the scheduler's first scheduled run at start-up, then
failed with "database is locked".
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from txairflowrpc.devstack.airflow import GATEWAY_USER, LocalAirflow

from .conftest import free_port

#: Longer than Python's default busy timeout (5 s), well within the devstack's.
HOLD_SECONDS = 8


@pytest.fixture(scope="module")
def sqlite_airflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalAirflow]:
    af = LocalAirflow(tmp_path_factory.mktemp("sqlite-airflow"), free_port(),
                      secrets.token_urlsafe(16))
    # The suite's Airflow holds the default log server ports.
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT", str(free_port()))
        env.setenv("AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT", str(free_port()))
        try:
            af.start()
            af.wait_dags(["example_noop"])
            _wait_for_the_scheduled_run(af)
            yield af
        finally:
            af.stop()


def _wait_for_the_scheduled_run(af: LocalAirflow, timeout: float = 120.0) -> None:
    """
    Until example_daily's run at start-up has ended: its task's writes, held
    up behind the lock the test takes, once kept the trigger from SQLite's
    lock for all of its 30 s (seen in CI).  The test is of one writer
    waiting for another, not of that pile-up.
    """
    token = af.token("admin", af.admin_password)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        request = urllib.request.Request(
            f"{af.base_url}/api/v2/dags/example_daily/dagRuns?run_type=scheduled",
            headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=10) as answer:
            runs = json.load(answer)["dag_runs"]
        if runs and all(r["state"] in ("success", "failed") for r in runs):
            return
        time.sleep(1)
    raise RuntimeError(f"example_daily's scheduled run did not end in {timeout} s")


def _trigger(af: LocalAirflow, token: str, run_id: str, into: dict[str, Any]) -> None:
    request = urllib.request.Request(
        f"{af.base_url}/api/v2/dags/example_noop/dagRuns", method="POST",
        data=json.dumps({"dag_run_id": run_id, "logical_date": None}).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            into["status"], into["body"] = answer.status, json.load(answer)
    except urllib.error.HTTPError as e:
        into["status"], into["body"] = e.code, e.read()[:300]
    into["seconds"] = time.monotonic() - started


def test_a_trigger_waits_for_another_writer_instead_of_failing(
    sqlite_airflow: LocalAirflow,
) -> None:
    af = sqlite_airflow
    token = af.token(GATEWAY_USER, af.gateway_password)
    run_id = f"busy-{secrets.token_hex(4)}"
    database = Path(af.home) / "airflow.db"
    assert database.exists()
    holder = sqlite3.connect(database, timeout=60, isolation_level=None)
    outcome: dict[str, Any] = {}
    try:
        holder.execute("BEGIN IMMEDIATE")  # SQLite's write lock, as a long write holds it
        caller = threading.Thread(target=_trigger, args=(af, token, run_id, outcome))
        caller.start()
        caller.join(HOLD_SECONDS)
        assert caller.is_alive(), f"the trigger ended while the lock was held: {outcome}"
    finally:
        holder.execute("COMMIT")
        holder.close()
    caller.join(60)
    assert not caller.is_alive()
    assert outcome["status"] == 200, outcome
    assert outcome["body"]["dag_run_id"] == run_id
    assert outcome["seconds"] >= HOLD_SECONDS
