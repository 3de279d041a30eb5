"""
``airflowrpc call``, ``trigger`` and ``backfill`` as a CI job runs them,
against the real ``twistd airflowrpc`` in front of a real Airflow: a run
that succeeds, one that fails (``example_fail``) with its log tail, the
same job run again reusing its run (and its backfill), a token without the scope, a missing
DAG, and conf with nulls and big integers coming back exact.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
import xmlrpc.client
from collections.abc import Iterator
from typing import Any

import attrs
import pytest

from txairflowrpc.devstack.airflow import LocalAirflow
from txairflowrpc.devstack.pki import DevPKI

from .conftest import RunningGateway

AIRFLOWRPC = os.path.join(os.path.dirname(sys.executable), "airflowrpc")
#: Variables of the machine's own CI that would change the derived run id.
CI_VARIABLES = ("AIRFLOWRPC_", "CI_", "GITLAB_", "GITHUB_", "JENKINS_", "BUILD_")


@attrs.frozen
class Result:
    status: int
    out: str
    err: str

    @property
    def json(self) -> Any:
        return json.loads(self.out)

    def __str__(self) -> str:
        return f"exit {self.status}\nstdout: {self.out}\nstderr: {self.err}"


def run(args: list[str], env: dict[str, str]) -> Result:
    done = subprocess.run([AIRFLOWRPC, *args], env=env, capture_output=True, text=True,
                          timeout=420, stdin=subprocess.DEVNULL)
    return Result(done.returncode, done.stdout, done.stderr)


def base_env(gateway: RunningGateway) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(CI_VARIABLES)}
    env.update(AIRFLOWRPC_URL=gateway.url, AIRFLOWRPC_CA=str(gateway.pki.ca_file))
    return env


def with_cert(gateway: RunningGateway) -> dict[str, str]:
    return {**base_env(gateway), "AIRFLOWRPC_CERT": str(gateway.client.cert),
            "AIRFLOWRPC_KEY": str(gateway.client.key)}


def gitlab_job(pipeline: str, job: str = "deploy") -> dict[str, str]:
    """What GitLab CI sets for a job (the part the client reads)."""
    return {"GITLAB_CI": "true", "CI_PIPELINE_ID": pipeline, "CI_JOB_NAME": job,
            "CI_JOB_ID": str(secrets.randbelow(10**6)),
            "CI_JOB_URL": f"https://gitlab.example/acme/etl/-/jobs/{pipeline}"}


def test_trigger_wait_succeeds_and_the_same_job_again_reuses_the_run(
    gateway: RunningGateway,
) -> None:
    pipeline = str(secrets.randbelow(10**9))
    env = {**with_cert(gateway), **gitlab_job(pipeline)}
    args = ["trigger", "example_hello", "--conf", '{"who": "the cli"}', "--wait",
            "--timeout", "300", "--progress-every", "2"]
    first = run(args, env)
    assert first.status == 0, first
    run_id = f"gitlab-{pipeline}-deploy"
    assert {k: first.json[k] for k in ("dag_run_id", "state", "created", "finished")} == {
        "dag_run_id": run_id, "state": "success", "created": True, "finished": True}
    assert json.loads(first.json["conf_json"]) == {"who": "the cli"}
    assert f"run id {run_id} (from CI_PIPELINE_ID, CI_JOB_NAME)" in first.err
    assert f"run {run_id} of example_hello: success after" in first.err
    progress = [line for line in first.err.splitlines() if f"run {run_id} of" in line]
    assert len(progress) <= 4, first.err  # on state changes, not once per wait call
    rpc = gateway.proxy()
    runs_before = rpc.list_dag_runs("example_hello", {"limit": 1})["total"]
    assert rpc.get_dag_run("example_hello", run_id)["note"].endswith(
        f"CI job: https://gitlab.example/acme/etl/-/jobs/{pipeline}")

    # The job retried (a new CI_JOB_ID, the same pipeline and job name).
    again = run(args, {**env, "CI_JOB_ID": "1"})
    assert again.status == 0, again
    assert (again.json["dag_run_id"], again.json["created"], again.json["state"]) == (
        run_id, False, "success")
    assert "already existed with this conf" in again.err
    assert rpc.list_dag_runs("example_hello", {"limit": 1})["total"] == runs_before

    log = run(["call", "get_task_log", "example_hello", run_id, "say_hello"], env)
    assert log.status == 0 and "hello from txairflowrpc to the cli" in log.json


def test_a_failed_run_exits_1_and_shows_the_failed_tasks_log_tail(
    gateway: RunningGateway,
) -> None:
    why = f"test-{secrets.token_hex(4)}"
    env = {**with_cert(gateway), "AIRFLOWRPC_RUN_ID": f"fail-{why}"}
    got = run(["trigger", "example_fail", "--conf", json.dumps({"why": why}), "--wait",
               "--timeout", "300", "--log-lines", "20"], env)
    assert got.status == 1, got
    assert (got.json["state"], got.json["finished"]) == ("failed", True)
    assert "----- task fail_on_purpose failed (try 1): last " in got.err
    assert f"failing on purpose for {why}" in got.err
    # Airflow's log groups are shown, not handed to the CI runner as commands.
    assert not [line for line in got.err.splitlines() if line.startswith("::")]
    assert "----- end of task fail_on_purpose -----" in got.err
    assert "not run because an upstream task failed: never_runs" in got.err
    assert f"run 'fail-{why}' of DAG 'example_fail' ended failed" in got.err


def test_a_python_tasks_exception_is_in_the_tail_with_its_cause(
    gateway: RunningGateway,
) -> None:
    """
    Found by trying it: Airflow 3.3.2 keeps a Python task's exception only in
    its log entry's error_detail, which the log text left out, so a pipeline
    saw "Task failed with exception" and not which.
    """
    env = {**with_cert(gateway), "AIRFLOWRPC_RUN_ID": f"raise-{secrets.token_hex(4)}"}
    got = run(["trigger", "example_raise", "--wait", "--timeout", "300", "--log-lines", "12"],
              env)
    assert got.status == 1, got
    assert "----- task load_rows failed (try 1): last 12 of " in got.err
    tail = [line for line in got.err.splitlines() if line.startswith("| ")]
    assert "| RuntimeError: example_raise: cannot load 'many' rows" in tail, got.err
    log = gateway.proxy().get_task_log("example_raise", got.json["dag_run_id"], "load_rows")
    assert "ValueError: invalid literal for int() with base 10: 'many'" in log
    assert "The above exception was the direct cause of the following exception:" in log
    assert log.index("ValueError: invalid literal") < log.index("RuntimeError: example_raise")


def test_a_mapped_tasks_failed_instance_shows_its_own_log(gateway: RunningGateway) -> None:
    """Dynamic task mapping: each instance's log is reached by its map_index."""
    run_id = f"mapped-{secrets.token_hex(4)}"
    env = {**with_cert(gateway), "AIRFLOWRPC_RUN_ID": run_id}
    got = run(["trigger", "example_mapped", "--conf", json.dumps({"fail_item": "1"}), "--wait",
               "--timeout", "300"], env)
    assert got.status == 1, got
    assert "----- task count[1] failed (try 1): last " in got.err
    assert "example_mapped: item 1" in got.err
    assert "example_mapped: item 0" not in got.err and "item 2" not in got.err
    rpc = gateway.proxy(allow_none=True)
    tis = rpc.list_task_instances("example_mapped", run_id)
    assert sorted((t["map_index"], t["state"]) for t in tis) == [
        (0, "success"), (1, "failed"), (2, "success")]
    assert "example_mapped: item 2" in rpc.get_task_log("example_mapped", run_id, "count", None, 2)
    assert "example_mapped: item 0" in rpc.get_task_log("example_mapped", run_id, "count", 1, 0)
    with pytest.raises(xmlrpc.client.Fault) as e:
        rpc.get_task_log("example_mapped", run_id, "count")
    assert e.value.faultCode == 404 and "needs a map_index" in e.value.faultString


def test_backfill_wait_succeeds_and_the_same_job_again_follows_it(
    gateway: RunningGateway,
) -> None:
    args = ["backfill", "example_daily", "2026-05-01T00:00:00Z", "2026-05-02T00:00:00Z",
            "--conf", '{"who": "the cli"}', "--max-active-runs", "1", "--wait",
            "--timeout", "300", "--progress-every", "2"]
    first = run(args, with_cert(gateway))
    assert first.status == 0, first
    assert {k: first.json[k] for k in ("created", "runs", "succeeded", "failed",
                                       "completed")} == {
        "created": True, "runs": 2, "succeeded": 2, "failed": 0, "completed": True}, first
    assert f"created backfill {first.json['id']} of example_daily: 2 runs" in first.err
    assert f"backfill {first.json['id']} of example_daily: completed after" in first.err
    again = run(args, with_cert(gateway))  # a retried job: every date has its run now
    assert again.status == 0, again
    assert (again.json["id"], again.json["created"], again.json["failed"]) == (
        first.json["id"], False, 0), again
    assert "already existed (an earlier try made it)" in again.err


def test_backfill_of_a_partitioned_dag_tells_its_runs_by_partition(
    gateway: RunningGateway,
) -> None:
    """
    Found by review: a partitioned DAG's runs have no logical date, so the
    count over the range found none and a backfill whose runs all succeeded
    exited 1; found again by a retried job, it had 0 runs and exited 0.
    """
    args = ["backfill", "example_partitioned", "2026-05-01T00:00:00Z", "2026-05-02T00:00:00Z",
            "--wait", "--timeout", "300", "--progress-every", "2"]
    first = run(args, with_cert(gateway))
    assert first.status == 0, first
    assert {k: first.json[k] for k in ("created", "runs", "succeeded", "failed")} == {
        "created": True, "runs": 2, "succeeded": 2, "failed": 0}, first
    again = run(args, with_cert(gateway))  # a retried job: it meets the first
    assert again.status == 0, again
    assert {k: again.json[k] for k in ("id", "created", "runs", "succeeded")} == {
        "id": first.json["id"], "created": False, "runs": 2, "succeeded": 2}, again
    runs = gateway.proxy().list_dag_runs("example_partitioned", {"run_type": "backfill"})
    assert sorted(r["partition_key"] for r in runs["dag_runs"]) == [
        "2026-05-01T00:00:00", "2026-05-02T00:00:00"], runs
    assert all("logical_date" not in r for r in runs["dag_runs"]), runs


def test_call_on_a_missing_dag_exits_4_and_a_present_one_prints_json(
    gateway: RunningGateway,
) -> None:
    missing = run(["call", "get_dag", "no_such_dag"], with_cert(gateway))
    assert (missing.status, missing.out) == (4, ""), missing
    assert "get_dag: fault 404: not found" in missing.err and "request id" in missing.err
    present = run(["call", "get_dag", "example_fail"], with_cert(gateway))
    assert present.status == 0 and present.json["dag_id"] == "example_fail"
    bad = run(["call", "get_dag", "../etc"], with_cert(gateway))
    assert bad.status == 2 and "fault -32602" in bad.err


def test_conf_with_nulls_and_big_integers_comes_back_exact(gateway: RunningGateway) -> None:
    conf = {"big": 9007199254740993, "none": None, "list": [1, None, "x"], "nested": {"n": None}}
    run_id = f"exact-{secrets.token_hex(4)}"
    got = run(["call", "trigger_dag", "example_noop", json.dumps(conf),
               json.dumps({"dag_run_id": run_id})], with_cert(gateway))
    assert got.status == 0, got
    assert got.json["conf"] == conf and json.loads(got.json["conf_json"]) == conf
    read = run(["call", "get_dag_run", "example_noop", run_id], with_cert(gateway))
    assert read.json["conf"] == conf


@pytest.fixture(scope="module")
def token_gateway(tmp_path_factory: pytest.TempPathFactory, pki: DevPKI,
                  airflow: LocalAirflow) -> Iterator[RunningGateway]:
    """A gateway on which a token may stand in for a client certificate."""
    gw = RunningGateway(tmp_path_factory.mktemp("cli-token-gw"), pki, airflow,
                        cert_mode="optional")
    gw.start()
    yield gw
    gw.stop()


def test_a_token_without_the_scope_exits_3_and_is_never_printed(
    token_gateway: RunningGateway,
) -> None:
    # role ci: etl_* DAGs only; returned once the gateway's watch of the store took it
    token = token_gateway.new_token("etl-bot")
    env = {**base_env(token_gateway), "AIRFLOWRPC_TOKEN": token,
           "AIRFLOWRPC_RUN_ID": f"scope-{secrets.token_hex(4)}"}
    refused = run(["trigger", "-v", "example_hello", "--wait"], env)
    assert refused.status == 3, refused
    assert "trigger_dag: fault 403: forbidden: trigger_dag: requires scope runs:trigger" \
        in refused.err
    allowed = run(["call", "-v", "get_dag", "etl_orders"], env)
    assert allowed.status == 0, allowed
    assert "token from AIRFLOWRPC_TOKEN" in allowed.err
    bogus = run(["call", "ping"], {**env, "AIRFLOWRPC_TOKEN": token[:-4] + "AAAA"})
    assert bogus.status == 3 and "HTTP 401" in bogus.err, bogus
    nothing = run(["call", "ping"], base_env(token_gateway))
    assert nothing.status == 3 and "no token or client certificate was given" in nothing.err
    for result in (refused, allowed, bogus):
        assert token not in result.out + result.err
        assert token[-12:] not in result.out + result.err


@pytest.fixture
def restartable(tmp_path_factory: pytest.TempPathFactory, pki: DevPKI,
                airflow: LocalAirflow) -> Iterator[RunningGateway]:
    """A gateway of this test's own, so that stopping it disturbs no other."""
    gw = RunningGateway(tmp_path_factory.mktemp("cli-restart-gw"), pki, airflow)
    gw.start()
    yield gw
    gw.stop()


def test_the_wait_survives_a_gateway_restart(restartable: RunningGateway) -> None:
    run_id = f"restart-{secrets.token_hex(4)}"
    env = {**with_cert(restartable), "AIRFLOWRPC_RUN_ID": run_id}
    cli = subprocess.Popen(
        [AIRFLOWRPC, "trigger", "example_hello", "--wait", "--timeout", "300",
         "--progress-every", "2"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        stdin=subprocess.DEVNULL)
    try:
        assert cli.stderr is not None
        seen = []
        for line in cli.stderr:  # ends at the latest when the command does
            seen.append(line)
            if "triggered run" in line:
                break
        assert any("triggered run" in line for line in seen), "".join(seen)
        restartable.stop()  # the wait in flight is cut; new connections are refused
        time.sleep(2)
        restartable.start()
        out, rest = cli.communicate(timeout=300)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    err = "".join(seen) + rest
    assert cli.returncode == 0, f"exit {cli.returncode}\n{out}\n{err}"
    assert json.loads(out)["state"] == "success"
    assert "wait_dag_run: gateway unreachable" in err and "trying again in" in err, err


def test_a_certificate_gateway_without_a_certificate_is_not_let_in(
    gateway: RunningGateway,
) -> None:
    got = run(["call", "ping"], base_env(gateway))
    # TLS 1.3: the refusal is an alert (3) or, when the hang-up wins the race,
    # a cut connection (5) that says a certificate may be missing.
    assert got.status in (3, 5), got
    assert ("refused our client certificate" in got.err
            or "if the gateway requires a client certificate, give one" in got.err), got
