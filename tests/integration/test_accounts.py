"""
Airflow sees the real caller: principals mapped to Airflow accounts of
their own (``[principals.NAME] airflow_user``) reach the real Airflow 3.3.2
as those accounts.  Airflow's own roles are a second gate (a viewer may
read, not trigger), and Airflow names the real user as the run's
``triggering_user_name`` and in its own audit log.
"""

from __future__ import annotations

import json
import secrets
import urllib.error
import urllib.parse
import urllib.request
import xmlrpc.client
from pathlib import Path
from typing import Any, Iterator

import pytest

from txairflowrpc.devstack.airflow import BUILDER_USER, GATEWAY_USER, READER_USER, LocalAirflow
from txairflowrpc.devstack.pki import DevPKI

from .conftest import RunningGateway, audit_records


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, pki: DevPKI,
       airflow: LocalAirflow) -> Iterator[RunningGateway]:
    directory = tmp_path_factory.mktemp("accounts-gw")
    reader = airflow.write_password_file(READER_USER, directory / "reader-password")
    builder = airflow.write_password_file(BUILDER_USER, directory / "builder-password")
    # Both principals have every gateway scope: only Airflow tells them apart.
    extra = f"""
[principals.reader-bot]
roles = ["operator"]
cert_cn = ["reader-bot"]
airflow_user = "{READER_USER}"
airflow_password_file = "{reader}"
[principals.builder-bot]
roles = ["operator"]
cert_cn = ["builder-bot"]
airflow_user = "{BUILDER_USER}"
airflow_password_file = "{builder}"
"""
    gateway = RunningGateway(directory, pki, airflow, extra=extra)
    gateway.start()
    yield gateway
    gateway.stop()


def airflow_get(airflow: LocalAirflow, path: str, **params: Any) -> tuple[int, Any]:
    """GET Airflow's REST API directly, as its admin."""
    token = airflow.token("admin", airflow.admin_password)
    query = f"?{urllib.parse.urlencode(params, doseq=True)}" if params else ""
    req = urllib.request.Request(f"{airflow.base_url}/api/v2/{path}{query}",
                                 headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, None


def records(path: Path) -> list[dict[str, Any]]:
    return audit_records(path)


def call_record(gw: RunningGateway, principal: str, method: str) -> dict[str, Any]:
    found = [r for r in records(gw.audit_path)
             if r.get("kind") == "call" and r.get("principal") == principal
             and r.get("method") == method]
    assert found, f"no record of {method} by {principal}"
    return found[-1]


def test_a_viewer_account_reads_but_airflow_refuses_its_trigger(
    gw: RunningGateway, pki: DevPKI, airflow: LocalAirflow
) -> None:
    reader = gw.proxy(pki.client("reader-bot"))
    assert reader.get_dag("example_noop")["dag_id"] == "example_noop"
    assert call_record(gw, "reader-bot", "get_dag")["airflow_user"] == READER_USER
    run_id = "accounts-reader-" + secrets.token_hex(4)
    with pytest.raises(xmlrpc.client.Fault) as e:
        reader.trigger_dag("example_noop", {}, {"dag_run_id": run_id})
    assert e.value.faultCode == 403
    assert "forbidden by Airflow" in e.value.faultString
    assert f"'{READER_USER}'" in e.value.faultString
    # Nothing was triggered.
    assert airflow_get(airflow, f"dags/example_noop/dagRuns/{run_id}")[0] == 404
    record = call_record(gw, "reader-bot", "trigger_dag")
    assert record["decision"] == "allowed"  # the gateway allowed it; Airflow did not
    assert (record["outcome"], record["fault_code"]) == ("fault", 403)
    assert (record["airflow_status"], record["airflow_user"]) == (403, READER_USER)


def test_a_user_account_triggers_and_airflow_names_it(
    gw: RunningGateway, pki: DevPKI, airflow: LocalAirflow
) -> None:
    builder = gw.proxy(pki.client("builder-bot"))
    run_id = "accounts-builder-" + secrets.token_hex(4)
    run = builder.trigger_dag("example_noop", {}, {"dag_run_id": run_id})
    assert run["created"] is True
    assert run["triggering_user_name"] == BUILDER_USER
    # Airflow's own word, read from its REST API directly, not through the gateway.
    status, stored = airflow_get(airflow, f"dags/example_noop/dagRuns/{run_id}")
    assert status == 200
    assert stored["triggering_user_name"] == BUILDER_USER
    record = call_record(gw, "builder-bot", "trigger_dag")
    assert (record["outcome"], record["airflow_user"]) == ("ok", BUILDER_USER)
    # Airflow's audit log names the real user too.
    status, logs = airflow_get(airflow, "eventLogs", dag_id="example_noop",
                               owner=BUILDER_USER, limit=100)
    assert status == 200
    assert {entry.get("owner") for entry in logs["event_logs"]} == {BUILDER_USER}, logs
    assert any("trigger" in (entry.get("event") or "") for entry in logs["event_logs"]), logs

    # A principal without an account of its own still triggers as the gateway.
    other_id = "accounts-gateway-" + secrets.token_hex(4)
    other = gw.proxy().trigger_dag("example_noop", {}, {"dag_run_id": other_id})
    assert other["triggering_user_name"] == GATEWAY_USER
    assert call_record(gw, "ci-bot", "trigger_dag")["airflow_user"] == GATEWAY_USER


def test_each_account_waits_for_its_run_on_its_own(
    gw: RunningGateway, pki: DevPKI
) -> None:
    builder = gw.proxy(pki.client("builder-bot"))
    reader = gw.proxy(pki.client("reader-bot"))
    run_id = "accounts-wait-" + secrets.token_hex(4)
    builder.trigger_dag("example_noop", {}, {"dag_run_id": run_id})
    # The viewer may read the builder's run in Airflow: a wait as either works.
    done = builder.wait_dag_run("example_noop", run_id, 120)
    assert done["finished"] is True and done["state"] == "success"
    seen = reader.wait_dag_run("example_noop", run_id, 30)
    assert seen["state"] == "success"
    assert call_record(gw, "reader-bot", "wait_dag_run")["airflow_user"] == READER_USER
