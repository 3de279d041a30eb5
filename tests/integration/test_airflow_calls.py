"""
Every call against a real Airflow 3.3.2, through the real ``twistd
airflowrpc`` over mutual TLS, with Python's own ``xmlrpc.client``.
"""

from __future__ import annotations

import http.client
import json
import secrets
import threading
import time
import xmlrpc.client
from typing import Any

import pytest

from .conftest import RunningGateway, client_context


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def test_ping_and_whoami_name_the_certificate(rpc: xmlrpc.client.ServerProxy) -> None:
    assert rpc.ping() == "pong"
    me = rpc.whoami()
    assert me["principal"] == "ci-bot"
    assert me["authenticated_by"] == "client_certificate"
    assert len(me["certificate"]["fingerprint_sha256"]) == 64


def test_list_and_get_dags(rpc: xmlrpc.client.ServerProxy) -> None:
    listed = rpc.list_dags()
    assert {"example_hello", "etl_orders"} <= {d["dag_id"] for d in listed["dags"]}
    assert listed["total"] >= 2
    etl = rpc.list_dags({"tags": ["etl"]})
    assert [d["dag_id"] for d in etl["dags"]] == ["etl_orders"]
    assert [d["dag_id"] for d in rpc.list_dags({"pattern": "hello"})["dags"]] == ["example_hello"]
    dag = rpc.get_dag("etl_orders")
    assert dag["tags"] == ["etl"] and "fileloc" not in dag


def test_trigger_wait_and_read_the_log(rpc: xmlrpc.client.ServerProxy) -> None:
    who = unique("caller")
    run_id = unique("it-run")
    run = rpc.trigger_dag("example_hello", {"who": who}, {"dag_run_id": run_id, "note": "it"})
    assert run["created"] is True and run["dag_run_id"] == run_id
    assert run["conf"] == {"who": who}
    done = rpc.wait_dag_run("example_hello", run_id, 180)
    assert done["finished"] is True and done["state"] == "success"
    tis = rpc.list_task_instances("example_hello", run_id)
    assert [(t["task_id"], t["state"], t["try_number"]) for t in tis] == [("say_hello", "success", 1)]
    log = rpc.get_task_log("example_hello", run_id, "say_hello")
    assert f"hello from txairflowrpc to {who}" in log
    runs = rpc.list_dag_runs("example_hello", {"state": "success", "limit": 100})
    assert run_id in [r["dag_run_id"] for r in runs["dag_runs"]]


def test_clear_reruns_the_task(rpc: xmlrpc.client.ServerProxy) -> None:
    run_id = unique("it-clear")
    rpc.trigger_dag("example_hello", {"who": "first"}, {"dag_run_id": run_id})
    assert rpc.wait_dag_run("example_hello", run_id, 180)["state"] == "success"
    dry = rpc.clear_task_instances("example_hello", run_id, {"dry_run": True})
    assert dry["dry_run"] is True and [t["task_id"] for t in dry["task_instances"]] == ["say_hello"]
    assert rpc.list_task_instances("example_hello", run_id)[0]["try_number"] == 1
    cleared = rpc.clear_task_instances("example_hello", run_id, {"task_ids": ["say_hello"]})
    assert cleared["total"] == 1 and cleared["dry_run"] is False
    done = rpc.wait_dag_run("example_hello", run_id, 180)
    assert done["finished"] and done["state"] == "success"
    ti = rpc.list_task_instances("example_hello", run_id)[0]
    assert (ti["state"], ti["try_number"]) == ("success", 2)
    assert "hello from txairflowrpc to first" in rpc.get_task_log("example_hello", run_id, "say_hello", 2)
    assert "hello from txairflowrpc to first" in rpc.get_task_log("example_hello", run_id, "say_hello", 1)


def test_pause_unpause_and_set_run_state(rpc: xmlrpc.client.ServerProxy) -> None:
    assert rpc.pause_dag("etl_orders")["is_paused"] is True
    try:
        assert rpc.get_dag("etl_orders")["is_paused"] is True
        run_id = unique("it-paused")
        run = rpc.trigger_dag("etl_orders", {}, {"dag_run_id": run_id})
        assert run["state"] == "queued"  # a paused DAG accepts the trigger but does not run it
        waited = rpc.wait_dag_run("etl_orders", run_id, 2)
        assert waited["finished"] is False and waited["state"] == "queued"
        assert rpc.set_dag_run_state("etl_orders", run_id, "failed")["state"] == "failed"
        assert rpc.get_dag_run("etl_orders", run_id)["state"] == "failed"
    finally:
        assert rpc.unpause_dag("etl_orders")["is_paused"] is False
    assert rpc.get_dag("etl_orders")["is_paused"] is False


def test_trigger_is_idempotent_on_dag_run_id(rpc: xmlrpc.client.ServerProxy) -> None:
    run_id = unique("it-idem")
    conf = {"day": "2026-01-01", "n": 3}
    first = rpc.trigger_dag("etl_orders", conf, {"dag_run_id": run_id})
    again = rpc.trigger_dag("etl_orders", conf, {"dag_run_id": run_id})
    assert (first["created"], again["created"]) == (True, False)
    with pytest.raises(xmlrpc.client.Fault) as e:
        rpc.trigger_dag("etl_orders", {"day": "other"}, {"dag_run_id": run_id})
    assert e.value.faultCode == 409
    runs = rpc.list_dag_runs("etl_orders", {"limit": 100})["dag_runs"]
    assert [r["dag_run_id"] for r in runs].count(run_id) == 1
    rpc.wait_dag_run("etl_orders", run_id, 180)


def test_faults_for_bad_calls(rpc: xmlrpc.client.ServerProxy) -> None:
    cases = [
        (lambda: rpc.get_dag("no_such_dag"), 404),
        (lambda: rpc.get_dag("x/../../variables"), -32602),
        (lambda: rpc.get_dag_run("example_hello", "no-such-run"), 404),
        (lambda: rpc.no_such_method(), -32601),
        (lambda: rpc.get_dag(), -32602),
        (lambda: rpc.trigger_dag("example_hello", {}, {"logical_date": "2026-01-01"}), -32602),
    ]
    for call, code in cases:
        with pytest.raises(xmlrpc.client.Fault) as e:
            call()
        assert e.value.faultCode == code
        assert "Traceback" not in e.value.faultString


def test_multicall_and_introspection(rpc: xmlrpc.client.ServerProxy) -> None:
    multi = xmlrpc.client.MultiCall(rpc)
    multi.ping()
    multi.get_dag("etl_orders")
    multi.get_dag("no_such_dag")
    results = multi()
    assert results[0] == "pong"
    assert results[1]["dag_id"] == "etl_orders"
    with pytest.raises(xmlrpc.client.Fault) as e:
        results[2]
    assert e.value.faultCode == 404
    assert "trigger_dag" in rpc.system.listMethods()
    assert rpc.system.methodSignature("get_task_log") == [
        ["string", "string", "string", "string"], ["string", "string", "string", "string", "int"],
        ["string", "string", "string", "string", "int", "int"]]
    assert "dag_run_id" in rpc.system.methodHelp("trigger_dag")


def test_many_waiters_do_not_block_other_calls(gateway: RunningGateway) -> None:
    rpc = gateway.proxy()
    run_id = unique("it-waiters")
    rpc.trigger_dag("example_hello", {"who": "waiters"}, {"dag_run_id": run_id})
    results: list[dict] = []
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            results.append(gateway.proxy().wait_dag_run("example_hello", run_id, 180))
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=wait) for _ in range(20)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    started = time.monotonic()
    assert rpc.ping() == "pong"
    assert time.monotonic() - started < 5  # answered while 20 calls are held open
    for t in threads:
        t.join(200)
    assert not errors
    assert len(results) == 20 and all(r["finished"] and r["state"] == "success" for r in results)


def raw_call(gateway: RunningGateway, body: bytes, extensions: str = "") -> Any:
    """POST a hand-written methodCall (what Python's client will not send) and read the answer."""
    headers = {"Content-Type": "text/xml"}
    if extensions:
        headers["X-Airflowrpc-Extensions"] = extensions
    conn = http.client.HTTPSConnection(
        "localhost", gateway.port, context=client_context(gateway.pki, gateway.client),
        timeout=60)
    try:
        conn.request("POST", "/RPC2", body, headers)
        answer = conn.getresponse().read()
    finally:
        conn.close()
    (result,), _ = xmlrpc.client.loads(answer)
    return result


def test_conf_with_nulls_and_big_integers_round_trips_through_airflow(
    gateway: RunningGateway,
) -> None:
    """What Node sends (<nil/>, <int> beyond 32 bits) comes back exactly, and retries match."""
    run_id = unique("it-conf")
    exact = {"a": [1, None, 2], "x": None, "big": 12345678901, "s": "t"}
    body = (
        "<?xml version='1.0'?><methodCall><methodName>trigger_dag</methodName><params>"
        "<param><value><string>example_hello</string></value></param>"
        "<param><value><struct>"
        "<member><name>a</name><value><array><data><value><int>1</int></value>"
        "<value><nil/></value><value><int>2</int></value></data></array></value></member>"
        "<member><name>x</name><value><nil/></value></member>"
        "<member><name>big</name><value><int>12345678901</int></value></member>"
        "<member><name>s</name><value><string>t</string></value></member>"
        "</struct></value></param>"
        f"<param><value><struct><member><name>dag_run_id</name><value><string>{run_id}"
        "</string></value></member></struct></value></param></params></methodCall>"
    ).encode()
    first = raw_call(gateway, body, "nil, i8")
    assert (first["created"], first["conf"]) == (True, exact)
    read = gateway.proxy().get_dag_run("example_hello", run_id)
    assert json.loads(read["conf_json"]) == exact  # what Airflow holds, exactly
    assert read["conf"] == {"big": "12345678901", "s": "t"}  # portable: nothing moved
    again = raw_call(gateway, body)
    assert (again["created"], again["dag_run_id"]) == (False, run_id)
    gateway.proxy().wait_dag_run("example_hello", run_id, 180)


def test_a_logical_date_clash_is_409_naming_the_date(rpc: xmlrpc.client.ServerProxy) -> None:
    when = f"2001-01-01T00:{secrets.randbelow(60):02d}:{secrets.randbelow(60):02d}Z"
    first = unique("it-ld")
    rpc.trigger_dag("example_noop", {}, {"dag_run_id": first, "logical_date": when})
    for options in ({"dag_run_id": unique("it-ld")}, {}):
        with pytest.raises(xmlrpc.client.Fault) as e:
            rpc.trigger_dag("example_noop", {}, {**options, "logical_date": when})
        assert e.value.faultCode == 409
        assert f"logical_date {when}" in e.value.faultString
    rpc.wait_dag_run("example_noop", first, 180)


def test_backfill_a_scheduled_dag(rpc: xmlrpc.client.ServerProxy) -> None:
    """
    create_backfill against Airflow 3.3.2's /backfills: counted first (dry
    run), created, listed, paused and unpaused, its runs run with the conf
    given, and it completes; a second one meanwhile is a conflict, the same
    range again has nothing to create; a DAG with no schedule is refused in
    the gateway's words; cancel fails what is queued.
    """
    dag = "example_daily"
    first, last = "2026-02-01T00:00:00Z", "2026-02-03T00:00:00Z"
    dry = rpc.create_backfill(dag, first, last, {}, {"dry_run": True})
    assert (dry["runs"], dry["dry_run"]) == (3, True)
    assert [d[:10] for d in dry["logical_dates"]] == ["2026-02-01", "2026-02-02", "2026-02-03"]
    assert rpc.list_backfills(dag)["total"] == 0  # a dry run creates nothing
    # Over a week: the gateway asks for the first week's intervals first (a
    # microsecond short of its end), Airflow counts every day of the range.
    year = rpc.create_backfill(dag, "2025-06-01T00:00:00Z", "2025-12-31T00:00:00Z", {},
                               {"dry_run": True})
    assert (year["runs"], year["logical_dates"][0][:10]) == (214, "2025-06-01")

    who = unique("backfill")
    created = rpc.create_backfill(dag, first, last, {"who": who}, {"max_active_runs": 1})
    backfill_id = created["id"]
    assert (created["runs"], created["completed"], created["max_active_runs"]) == (3, False, 1)
    assert created["dag_run_conf"] == {"who": who}
    with pytest.raises(xmlrpc.client.Fault) as second:  # another range, meanwhile
        rpc.create_backfill(dag, "2026-04-01T00:00:00Z", "2026-04-02T00:00:00Z")
    assert second.value.faultCode == 409
    assert "already has a backfill that has not completed" in second.value.faultString
    with pytest.raises(xmlrpc.client.Fault) as same:  # Airflow's dry run counts none now
        rpc.create_backfill(dag, first, last)
    assert same.value.faultCode == -32602
    assert "each date has a run already" in same.value.faultString
    assert rpc.pause_backfill(dag, backfill_id)["is_paused"] is True
    assert rpc.unpause_backfill(dag, backfill_id)["is_paused"] is False
    assert [b["id"] for b in rpc.list_backfills(dag)["backfills"]] == [backfill_id]

    runs = rpc.list_dag_runs(dag, {"run_type": "backfill", "logical_date_from": first,
                                   "logical_date_to": last})["dag_runs"]
    assert sorted(r["logical_date"][:10] for r in runs) == ["2026-02-01", "2026-02-02", "2026-02-03"]
    assert rpc.list_dag_runs(dag, {"run_type": "backfill", "logical_date_from": last,
                                   "logical_date_to": last})["total"] == 1
    for run in runs:
        done = rpc.wait_dag_run(dag, run["dag_run_id"], 240)
        assert (done["finished"], done["state"], done["conf"]) == (True, "success", {"who": who})
    log = rpc.get_task_log(dag, runs[0]["dag_run_id"], "report")
    assert f"report for {runs[0]['logical_date'][:10]} ({who})" in log
    deadline = time.monotonic() + 120  # the scheduler marks it completed after its runs
    while not rpc.get_backfill(dag, backfill_id)["completed"]:
        assert time.monotonic() < deadline, "the backfill never completed"
        time.sleep(2)

    with pytest.raises(xmlrpc.client.Fault) as unscheduled:
        rpc.create_backfill("example_hello", first, last)
    assert unscheduled.value.faultCode == -32602
    assert unscheduled.value.faultString == (
        "invalid params for create_backfill: DAG 'example_hello' has no periodic schedule: "
        "only a scheduled DAG can be backfilled")

    paused = rpc.create_backfill(dag, "2026-03-01T00:00:00Z", "2026-03-10T00:00:00Z", {},
                                 {"max_active_runs": 1})
    rpc.pause_backfill(dag, paused["id"])
    cancelled = rpc.cancel_backfill(dag, paused["id"])
    assert cancelled["completed"] is True
    states = {r["state"] for r in rpc.list_dag_runs(dag, {"limit": 100})["dag_runs"]
              if r.get("run_type") == "backfill" and r["logical_date"].startswith("2026-03")}
    assert "queued" not in states and "failed" in states
    with pytest.raises(xmlrpc.client.Fault) as again:
        rpc.cancel_backfill(dag, paused["id"])
    assert again.value.faultCode == 409
