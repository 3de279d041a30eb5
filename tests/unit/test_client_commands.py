"""
``airflowrpc call`` and ``airflowrpc trigger`` as a script or a pipeline
runs them: exit statuses, stdout and stderr, run ids reused across
retries, the failed tasks' log tails, and never a secret on the screen.

The trigger flow runs against the in-memory fake gateway on a fake clock;
what only the wire shows (headers, ``<i8>`` and ``<nil/>``, HTTP refusals,
TLS trust and client certificates) runs against the same fake served over
real TLS on loopback.
"""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import time
import xmlrpc.client
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from txairflowrpc.client import commands, failures
from txairflowrpc.client.console import Console
from txairflowrpc.client.deadline import GRACE
from txairflowrpc.client.errors import FaultReply, HTTPRefused, Unreachable
from txairflowrpc.devstack.pki import DevPKI
from txairflowrpc.service.cli import main, parser

from ..sts_stub import Identity, StubSTS
from .fake_gateway import FAILING_TASK, LOG_LINES, FakeGateway, InMemory, TLSServer
from .test_client_wait import FakeClock

TOKEN = "arpc_t0ken1d_s3cretpart0fthet0ken"
GITLAB = {"GITLAB_CI": "true", "CI_PIPELINE_ID": "9001", "CI_JOB_NAME": "deploy",
          "CI_JOB_ID": "555", "CI_JOB_URL": "https://gitlab.example/g/p/-/jobs/555"}


@attrs.frozen
class Outcome:
    status: int
    out: str
    err: str

    @property
    def json(self) -> Any:
        return json.loads(self.out)


def run_in_memory(argv: list[str], gateway: FakeGateway, env: dict[str, str] | None = None,
                  clock: FakeClock | None = None, caller: InMemory | None = None) -> Outcome:
    """The command, with the fake gateway (or ``caller``) behind it and time on a fake clock."""
    out, err = io.StringIO(), io.StringIO()
    clock = clock or FakeClock()
    environ = {"AIRFLOWRPC_URL": "https://gw.test/RPC2", "AIRFLOWRPC_TOKEN": TOKEN,
               **(env if env is not None else GITLAB)}
    status = commands.run(parser().parse_args(argv), environ=environ,
                          console=Console(out, err), clock=clock, sleep=clock.sleep,
                          rand=lambda: 0.5, connect=lambda s, **kw: caller or InMemory(gateway))
    return Outcome(status, out.getvalue(), err.getvalue())


# -- trigger -----------------------------------------------------------------

def test_trigger_and_wait_for_success() -> None:
    gateway = FakeGateway()
    got = run_in_memory(["trigger", "example_hello", "--conf", '{"who": "ci"}', "--wait"],
                        gateway)
    assert got.status == 0, got.err
    assert {k: got.json[k] for k in ("dag_run_id", "state", "created", "finished")} == {
        "dag_run_id": "gitlab-9001-deploy", "state": "success", "created": True,
        "finished": True}
    (trigger,) = gateway.calls_of("trigger_dag")
    assert trigger == ("example_hello", {"who": "ci"}, {
        "dag_run_id": "gitlab-9001-deploy",
        "note": "CI job: https://gitlab.example/g/p/-/jobs/555"})
    assert "run id gitlab-9001-deploy (from CI_PIPELINE_ID, CI_JOB_NAME)" in got.err
    assert "run gitlab-9001-deploy of example_hello: success after" in got.err


def test_a_failed_run_exits_1_with_the_failed_tasks_log_tail() -> None:
    gateway = FakeGateway()
    got = run_in_memory(["trigger", "example_fail", "--wait", "--log-lines", "5"], gateway)
    assert got.status == 1
    assert got.json["state"] == "failed"
    lines = got.err.splitlines()
    start = lines.index(f"----- task {FAILING_TASK} failed (try 1): last 5 of 100 log "
                        f"lines -----")
    assert lines[start + 1:start + 7] == [*(f"| {line}" for line in LOG_LINES[-5:]),
                                          f"----- end of task {FAILING_TASK} -----"]
    assert "log line 95" not in got.err
    assert "not run because an upstream task failed: after_it" in got.err
    assert "airflowrpc: run 'gitlab-9001-deploy' of DAG 'example_fail' ended failed" in got.err


def test_a_failed_mapped_instance_shows_its_own_log(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tail of a mapped task's failed instance is asked for by its map_index."""
    gateway = FakeGateway()
    monkeypatch.setattr(gateway, "list_task_instances", lambda *a: [
        {"task_id": "count", "map_index": 0, "state": "success", "try_number": 1},
        {"task_id": "count", "map_index": 1, "state": "failed", "try_number": 1},
        {"task_id": "count", "map_index": 2, "state": "failed", "try_number": 0}])
    got = run_in_memory(["trigger", "example_fail", "--wait"], gateway)
    assert got.status == 1
    assert gateway.calls_of("get_task_log") == [
        ("example_fail", "gitlab-9001-deploy", "count", 1, 1),
        ("example_fail", "gitlab-9001-deploy", "count", None, 2)]
    assert "----- task count[1] failed (try 1): last 50 of 100 log lines -----" in got.err
    assert "map_index" not in got.err


def test_a_task_log_cannot_command_the_ci_runner(monkeypatch: pytest.MonkeyPatch) -> None:
    gateway = FakeGateway()
    hostile = ["::add-mask::nothing", "  ::stop-commands::x", "\x1b[0Ksection_start:1:x",
               "::group::Pre Execute", "::group::x ::add-mask::y", "tab\there"]
    monkeypatch.setattr(gateway, "get_task_log", lambda *a: "\n".join(hostile))
    got = run_in_memory(["trigger", "example_fail", "--wait"], gateway)
    shown = got.err.splitlines()
    for line in ("| ::add-mask::nothing", "|   ::stop-commands::x", "| ?[0Ksection_start:1:x",
                 "| tab\there"):
        assert line in shown
    assert "::group::" not in got.err  # a group marker is left out, never passed on
    assert not [line for line in shown if line.lstrip().startswith("::") or "\x1b" in line]


def test_a_task_log_line_is_shown_cut_to_its_first_2000_characters(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by review: one 16-million-character line was 16 MB of the job's log."""
    gateway = FakeGateway()
    monkeypatch.setattr(gateway, "get_task_log",
                        lambda *a: "short\n" + "x" * 16_000_000 + "\n\u061cbidi")
    got = run_in_memory(["trigger", "example_fail", "--wait", "--log-lines", "3"], gateway)
    assert got.status == 1
    assert max(len(line) for line in got.err.splitlines()) < 2100
    assert f"| {'x' * 2000}... (15,998,000 more characters)" in got.err.splitlines()
    assert "| ?bidi" in got.err.splitlines()  # ARABIC LETTER MARK shown as ? too


def test_answers_of_another_shape_are_bad_answers_never_a_client_bug(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Found by review: a string where a struct was due, runs or a total that
    were no count, a naive time against an aware one, all ended in exit 70,
    "a bug in the client"; and a negative runs made a backfill a success.
    """
    gateway = FakeGateway()
    monkeypatch.setattr(gateway, "trigger_dag", lambda *a: "oops")
    got = run_in_memory(["trigger", "example_hello"], gateway)
    assert got.status == 5 and "trigger_dag: the gateway's answer cannot be used: a string " \
        "where a struct was due" in got.err
    gateway = FakeGateway()
    monkeypatch.setattr(gateway, "list_task_instances", lambda *a: ["x", {"task_id": 1}])
    assert run_in_memory(["trigger", "example_fail", "--wait"], gateway).status == 1
    for runs in ("two", -5, True):
        gateway = FakeGateway()
        create = gateway.create_backfill
        monkeypatch.setattr(gateway, "create_backfill",
                            lambda *a, runs=runs, create=create: {**create(*a), "runs": runs})
        got = run_in_memory([*FEB, "--wait"], gateway)
        assert got.status == 5 and "its runs are not a count" in got.err, runs
    gateway = FakeGateway()
    listing = gateway.list_dag_runs
    monkeypatch.setattr(gateway, "list_dag_runs", lambda *a: {**listing(*a), "total": "many"})
    got = run_in_memory([*FEB, "--wait"], gateway)
    assert got.status == 5 and "its total is not a count" in got.err
    gateway = FakeGateway()
    plain = gateway._backfill_runs
    gateway._backfill_runs = lambda b: [  # type: ignore[method-assign]
        {**r, "queued_at": "2026-11-27T10:00:05"} for r in plain(b)]  # no zone
    got = run_in_memory([*FEB, "--wait"], gateway)
    assert got.status == 1 and "only 0 of the 3 runs" in got.err
    gateway = FakeGateway()
    plain = gateway._backfill_runs
    gateway._backfill_runs = lambda b: [  # type: ignore[method-assign]
        {**r, "dag_run_id": [r["dag_run_id"]]} for r in plain(b)]  # unhashable
    assert run_in_memory([*FEB, "--wait"], gateway).status == 0
    gateway = FakeGateway()
    create = gateway.create_backfill
    monkeypatch.setattr(gateway, "create_backfill", lambda *a: {
        k: v for k, v in create(*a).items() if k != "id"})
    got = run_in_memory([*FEB, "--wait"], gateway)
    assert got.status == 5 and "the backfill has no id" in got.err
    gateway = FakeGateway()
    assert run_in_memory([*FEB], gateway).status == 0
    monkeypatch.setattr(gateway, "list_backfills", lambda *a: {"backfills": ["x"]})
    # A 409, and no struct among the backfills: none of its own found, the 409 told.
    assert run_in_memory([*FEB], gateway).status == 4


def test_a_count_stops_paging_at_a_bound_whatever_total_it_is_told(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by review: a total of 2**31-1 kept `backfill` paging for ever."""
    from txairflowrpc.client import backfilling

    monkeypatch.setattr(backfilling, "MAX_PAGES", 7)
    gateway = FakeGateway()
    listing = gateway.list_dag_runs
    # The same page again and again: the runs of it counted once each.
    monkeypatch.setattr(gateway, "list_dag_runs", lambda dag_id, filters: {
        **listing(dag_id, {**filters, "offset": 0}), "total": 2**31 - 1})
    got = run_in_memory([*FEB, "--wait"], gateway)
    assert got.status == 0, got.err
    assert (got.json["runs"], got.json["succeeded"]) == (3, 3)
    assert len(gateway.calls_of("list_dag_runs")) == 7


#: The end of a failed task's log from Airflow 3.3.2 as the gateway gives it
#: (txairflowrpc.upstream.shapes.format_log_content): the log server's own
#: header group has no timestamp or level, the task runner's groups do.
AIRFLOW_FAILED_LOG = [
    "::group::Log message source details",
    "sources=[\"/opt/airflow/logs/dag_id=example_fail/run_id=r1/task_id=boom/attempt=1.log\"]",
    "::endgroup::",
    "2026-05-01T10:00:00.100000Z [info] DAG bundles loaded: dags-folder",
    "2026-05-01T10:00:00.200000Z [info] ::group::Pre Execute",
    "2026-05-01T10:00:00.300000Z [info] ::endgroup::",
    "2026-05-01T10:00:00.400000Z [info] about to fail",
    "2026-05-01T10:00:00.500000Z [error] ValueError: the input file is empty",
    "2026-05-01T10:00:00.600000Z [error] Task failed with exception",
    "2026-05-01T10:00:00.700000Z [info] ::group::Post Execute",
    "2026-05-01T10:00:00.800000Z [info] ::endgroup::",
    "::group::Post Execute",
    "::endgroup::",
]


def test_a_failed_tasks_log_tail_leaves_out_airflows_group_markers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``--log-lines 2`` shows the error, not the markers that end an Airflow 3 task's log."""
    gateway = FakeGateway()
    monkeypatch.setattr(gateway, "get_task_log", lambda *a: "\n".join(AIRFLOW_FAILED_LOG) + "\n")
    got = run_in_memory(["trigger", "example_fail", "--wait", "--log-lines", "2"], gateway)
    assert got.status == 1
    lines = got.err.splitlines()
    start = lines.index(f"----- task {FAILING_TASK} failed (try 1): last 2 of 5 log "
                        f"lines -----")
    assert lines[start + 1:start + 4] == [
        "| 2026-05-01T10:00:00.500000Z [error] ValueError: the input file is empty",
        "| 2026-05-01T10:00:00.600000Z [error] Task failed with exception",
        f"----- end of task {FAILING_TASK} -----"]
    assert "group::" not in got.err
    whole = run_in_memory(["trigger", "example_fail", "--wait", "--log-lines", "50"], gateway)
    assert f"task {FAILING_TASK} failed (try 1): last 5 of 5 log lines" in whole.err
    assert "| sources=[" in whole.err and "group::" not in whole.err


def test_what_a_group_holds_stays_in_the_tail(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the marker lines go: a failure callback's output inside Post Execute is kept."""
    gateway = FakeGateway()
    log = ["[error] Task failed with exception", "[info] ::group::Post Execute",
           "[info] paging the on-call engineer", "[info] ::endgroup::"]
    monkeypatch.setattr(gateway, "get_task_log", lambda *a: "\n".join(log))
    got = run_in_memory([*FEB, "--conf", '{"fail": 2}', "--wait", "--log-lines", "2"], gateway)
    assert got.status == 1, got.err
    assert ("last 2 of 2 log lines -----\n| [error] Task failed with exception\n"
            "| [info] paging the on-call engineer\n----- end of task") in got.err


@pytest.mark.parametrize("line", [
    "::group::Post Execute", "::group::", "::endgroup::", "::endgroup::  ",
    "[info] ::endgroup::", "2026-05-01T10:00:00Z [info] ::group::Pre Execute",
    "2026-05-01T10:00:00+00:00 ::endgroup::"])
def test_a_group_marker_is_only_a_marker(line: str) -> None:
    assert failures.is_group_marker(line)


@pytest.mark.parametrize("line", [
    "", "::endgroup:: but then an error", "::add-mask::x", "  ::endgroup::",
    "printed ::endgroup::", "[info] ::endgroup::x", "2026-05-01T10:00:00Z [error] ::groupie::"])
def test_a_line_with_more_than_a_marker_is_not_one(line: str) -> None:
    assert not failures.is_group_marker(line)


def test_what_the_failure_report_takes_from_the_gateway_cannot_command_it_either() -> None:
    """The log lines were cleaned; the fault texts and task ids beside them were not."""
    gateway = FakeGateway()
    gateway.fail_next["get_task_log"] = [
        xmlrpc.client.Fault(403, "forbidden\n::add-mask::x \x1b[2J")]
    got = run_in_memory(["trigger", "example_fail", "--wait"], gateway)
    assert got.status == 1
    assert "its log: get_task_log: fault 403: forbidden?::add-mask::x ?[2J" in got.err
    assert not [line for line in got.err.splitlines()
                if line.lstrip().startswith("::") or "\x1b" in line]


def test_the_failure_report_shows_no_bidi_override_or_line_separator() -> None:
    """A log line or fault text cannot reorder or split what the report shows."""
    gateway = FakeGateway()
    gateway.fail_next["get_task_log"] = [
        xmlrpc.client.Fault(403, "forbidden \u202edenied\u2028::add-mask::x")]
    got = run_in_memory(["trigger", "example_fail", "--wait"], gateway)
    assert "its log: get_task_log: fault 403: forbidden ?denied?::add-mask::x" in got.err
    gateway = FakeGateway()
    gateway.fail_next["trigger_dag"] = [xmlrpc.client.Fault(409, "conflict\u2066x\u2069")]
    got = run_in_memory(["trigger", "example_hello"], gateway)
    assert "airflowrpc: trigger_dag: fault 409: conflict x " in got.err
    assert not any(c in got.err for c in "\u2066\u2069\u202e\u2028")


#: Azure Pipelines' logging commands and GitHub's older form, which the
#: runners obey wherever they stand in a line, in either case for Azure's.
RUNNER_COMMANDS = ["##vso[task.setvariable variable=DEPLOY_TARGET]prod",
                   "done. ##vso[task.uploadfile]/etc/passwd",
                   "##VSO[task.prependpath]/tmp/evil", "x ##[add-mask]y"]


def _obeyed(text: str) -> list[str]:
    return [line for line in text.splitlines()
            if "##vso[" in line.lower() or "##[" in line]


def test_a_task_log_cannot_give_a_runner_a_command_anywhere_in_a_line(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Found by review: `| ` before a log line keeps GitHub's `::` commands from
    its start, but Azure's agent obeys `##vso[` anywhere in a line of stdout
    or stderr (and GitHub's runner its older `##[`): shown as the agent
    shows them itself, `**vso[`.
    """
    gateway = FakeGateway()
    monkeypatch.setattr(gateway, "get_task_log", lambda *a: "\n".join(RUNNER_COMMANDS))
    got = run_in_memory(["trigger", "example_fail", "--wait"], gateway)
    assert got.status == 1
    shown = got.err.splitlines()
    for line in ("| **vso[task.setvariable variable=DEPLOY_TARGET]prod",
                 "| done. **vso[task.uploadfile]/etc/passwd",
                 "| **VSO[task.prependpath]/tmp/evil", "| x **[add-mask]y"):
        assert line in shown
    assert _obeyed(got.err) == []


def test_a_fault_string_or_a_result_cannot_give_a_runner_a_command_either() -> None:
    gateway = FakeGateway()
    gateway.fail_next["trigger_dag"] = [
        xmlrpc.client.Fault(409, "conflict ##vso[task.setvariable variable=A]b")]
    got = run_in_memory(["trigger", "example_hello"], gateway)
    assert got.status == 4
    assert "airflowrpc: trigger_dag: fault 409: conflict **vso[task.setvariable" in got.err
    assert _obeyed(got.err) == []
    conf = {"note": RUNNER_COMMANDS}
    got = run_in_memory(["trigger", "example_hello", "--conf", json.dumps(conf)], FakeGateway())
    assert got.status == 0
    assert _obeyed(got.out) == []
    assert json.loads(got.out)["conf"] == conf  # the same value to jq


def test_a_fault_string_cannot_start_a_line_either() -> None:
    gateway = FakeGateway()
    gateway.fail_next["trigger_dag"] = [xmlrpc.client.Fault(409, "conflict\n::add-mask::x")]
    got = run_in_memory(["trigger", "example_hello"], gateway)
    assert got.status == 4
    assert "airflowrpc: trigger_dag: fault 409: conflict ::add-mask::x" in got.err
    assert not [line for line in got.err.splitlines() if line.startswith("::")]


def test_the_same_command_again_in_the_same_job_reuses_the_run() -> None:
    gateway = FakeGateway()
    first = run_in_memory(["trigger", "example_hello", "--wait"], gateway)
    retried = run_in_memory(["trigger", "example_hello", "--wait"],
                            gateway, env={**GITLAB, "CI_JOB_ID": "556"})  # a retried job
    assert (first.status, retried.status) == (0, 0)
    assert (first.json["created"], retried.json["created"]) == (True, False)
    assert len(gateway.runs) == 1
    assert "already existed with this conf" in retried.err


def test_a_retried_job_finds_its_failed_run_and_says_how_to_run_it_again() -> None:
    gateway = FakeGateway()
    run_in_memory(["trigger", "example_fail", "--wait"], gateway)
    again = run_in_memory(["trigger", "example_fail", "--wait"], gateway)
    assert again.status == 1 and len(gateway.runs) == 1
    assert "clear its failed tasks" in again.err


def test_without_a_ci_job_the_id_is_fresh_and_says_so() -> None:
    gateway = FakeGateway()
    got = run_in_memory(["trigger", "example_hello"], gateway, env={})
    assert got.status == 0
    assert got.json["dag_run_id"].startswith("airflowrpc-") and got.json["created"] is True
    assert "running this command again will start another run" in got.err
    assert gateway.calls_of("wait_dag_run") == []
    (trigger,) = gateway.calls_of("trigger_dag")
    assert "note" not in trigger[2]


def test_a_transient_failure_of_the_trigger_is_retried_with_the_same_run_id() -> None:
    gateway = FakeGateway()
    gateway.fail_next["trigger_dag"] = [Unreachable("trigger_dag", "reset"),
                                        xmlrpc.client.Fault(503, "Airflow unavailable")]
    got = run_in_memory(["trigger", "example_hello", "--run-id", "r-7"], gateway)
    assert got.status == 0 and len(gateway.runs) == 1
    assert [c[2]["dag_run_id"] for c in gateway.calls_of("trigger_dag")] == ["r-7"] * 3
    assert got.err.count("trying again in") == 2


@pytest.mark.parametrize("fault, status", [(403, 3), (404, 4), (409, 4), (-32602, 2),
                                           (502, 5), (-32603, 5)])
def test_a_refused_trigger_exits_by_class(fault: int, status: int) -> None:
    gateway = FakeGateway()
    gateway.fail_next["trigger_dag"] = [xmlrpc.client.Fault(fault, "no")]
    got = run_in_memory(["trigger", "example_hello", "--wait"], gateway)
    assert got.status == status
    assert f"trigger_dag: fault {fault}: no" in got.err
    assert len(gateway.calls_of("trigger_dag")) == 1 and not gateway.calls_of("wait_dag_run")


def test_conf_from_a_file(tmp_path: Path) -> None:
    (tmp_path / "conf.json").write_text('{"day": "2026-01-01", "n": null}')
    gateway = FakeGateway()
    got = run_in_memory(["trigger", "example_hello", "--conf", f"@{tmp_path}/conf.json"],
                        gateway)
    assert got.status == 0
    assert gateway.calls_of("trigger_dag")[0][1] == {"day": "2026-01-01", "n": None}


def test_another_conf_for_the_same_run_id_is_a_conflict() -> None:
    gateway = FakeGateway()
    assert run_in_memory(["trigger", "example_hello", "--conf", '{"a": 1}'], gateway).status == 0
    got = run_in_memory(["trigger", "example_hello", "--conf", '{"a": 2}'], gateway)
    assert got.status == 4 and "already exists with a different conf" in got.err


def test_a_wait_that_times_out_exits_6_and_prints_the_run() -> None:
    gateway = FakeGateway()
    got = run_in_memory(["trigger", "slow", "--wait", "--timeout", "30"], gateway)
    assert got.status == 6
    assert got.json["state"] == "running" and got.json["created"] is True
    assert "is still running after 30 s; it goes on in Airflow" in got.err


def test_logs_that_cannot_be_read_do_not_change_the_outcome() -> None:
    gateway = FakeGateway()
    gateway.fail_next["get_task_log"] = [xmlrpc.client.Fault(403, "forbidden: logs:read")]
    got = run_in_memory(["trigger", "example_fail", "--wait"], gateway)
    assert got.status == 1
    assert f"task {FAILING_TASK} failed (try 1); its log: get_task_log: fault 403" in got.err


@pytest.mark.parametrize("argv, says", [
    (["trigger", "example_hello", "--timeout", "5"], "--timeout needs --wait"),
    (["trigger", "example_hello", "--conf", "[1]"], "--conf must be a JSON object"),
    (["trigger", "example_hello", "--conf", "{nope"], "--conf is not valid JSON"),
    (["trigger", "example_hello", "--run-id", "a b"], "may contain only"),
    (["trigger", "example_hello", "--conf", "@/nonexistent/conf.json"], "--conf: cannot read"),
])
def test_trigger_usage_errors_send_nothing(argv: list[str], says: str) -> None:
    gateway = FakeGateway()
    got = run_in_memory(argv, gateway)
    assert got.status == 2 and says in got.err and gateway.calls == []


def test_a_too_short_token_exits_2_saying_how_long_a_token_is() -> None:
    gateway = FakeGateway()
    got = run_in_memory(["call", "ping"], gateway, env={"AIRFLOWRPC_TOKEN": "arpc_x"})
    assert got.status == 2 and gateway.calls == []
    assert ("the token from AIRFLOWRPC_TOKEN cannot be sent: a token is 8 to 8192 characters "
            "of printable ASCII without spaces (a gateway token or a JWT), and it is shorter "
            "than 8 characters") in got.err
    assert "arpc_x" not in got.err + got.out


# -- over real TLS -----------------------------------------------------------

@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPKI:
    return DevPKI.create(tmp_path_factory.mktemp("client-pki"))


@pytest.fixture
def server(pki: DevPKI) -> Iterator[TLSServer]:
    srv = TLSServer(FakeGateway(), str(pki.directory / "server.pem"),
                    str(pki.directory / "server.key"))
    yield srv
    srv.close()


def run_main(argv: list[str], env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
             capsys: pytest.CaptureFixture[str]) -> Outcome:
    for name in [n for n in __import__("os").environ if n.startswith(("AIRFLOWRPC_", "CI_",
                                                                       "GITLAB", "GITHUB"))]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    status = main(argv)
    out, err = capsys.readouterr()
    return Outcome(status, out, err)


def tls_env(server: TLSServer, pki: DevPKI, **more: str) -> dict[str, str]:
    return {"AIRFLOWRPC_URL": server.url, "AIRFLOWRPC_CA": str(pki.ca_file), **more}


def test_call_prints_json_and_sends_the_token_and_extensions(
    server: TLSServer, pki: DevPKI, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    got = run_main(["call", "get_dag", "example_hello"],
                   tls_env(server, pki, AIRFLOWRPC_TOKEN=TOKEN), monkeypatch, capsys)
    assert (got.status, got.json, got.err) == (
        0, {"dag_id": "example_hello", "is_paused": False}, "")
    headers, body = server.requests[0]
    assert headers["authorization"] == f"Bearer {TOKEN}"
    assert headers["x-airflowrpc-extensions"] == "nil, i8"
    assert xmlrpc.client.loads(body) == (("example_hello",), "get_dag")


def test_big_integers_and_nulls_go_out_and_come_back_exact(
    server: TLSServer, pki: DevPKI, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    answer = (b"<?xml version='1.0'?><methodResponse><params><param><value><struct>"
              b"<member><name>big</name><value><i8>9007199254740993</i8></value></member>"
              b"<member><name>none</name><value><nil/></value></member>"
              b"</struct></value></param></params></methodResponse>")
    server.respond = lambda headers, body: (200, "text/xml", answer)
    got = run_main(["call", "echo", '{"big": 9007199254740993, "none": null}', "null", "7"],
                   tls_env(server, pki, AIRFLOWRPC_TOKEN=TOKEN), monkeypatch, capsys)
    assert got.status == 0
    assert got.out == '{"big": 9007199254740993, "none": null}\n'
    body = server.requests[0][1].decode()
    assert "<i8>9007199254740993</i8>" in body and body.count("<nil/>") == 2
    assert "<int>7</int>" in body
    params, _ = xmlrpc.client.loads(server.requests[0][1])
    assert params == ({"big": 9007199254740993, "none": None}, None, 7)


def test_a_fault_goes_to_stderr_with_its_exit_status(
    server: TLSServer, pki: DevPKI, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    got = run_main(["call", "get_dag", "no_such_dag"],
                   tls_env(server, pki, AIRFLOWRPC_TOKEN=TOKEN), monkeypatch, capsys)
    assert (got.status, got.out) == (4, "")
    assert got.err == ("airflowrpc: get_dag: fault 404: not found: DAG 'no_such_dag' "
                       "(request id req-42)\n")
    got = run_main(["call", "no_such_method"], tls_env(server, pki, AIRFLOWRPC_TOKEN=TOKEN),
                   monkeypatch, capsys)
    assert got.status == 2


def test_a_401_exits_3_with_the_gateways_reason(
    server: TLSServer, pki: DevPKI, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server.respond = lambda h, b: (401, "text/plain; charset=utf-8",
                                   b"unauthenticated: no valid credential\n")
    got = run_main(["call", "ping"], tls_env(server, pki, AIRFLOWRPC_TOKEN=TOKEN),
                   monkeypatch, capsys)
    assert got.status == 3
    assert got.err == ("airflowrpc: ping: HTTP 401 Unauthorized (request id req-42); "
                       "unauthenticated: no valid credential\n")
    got = run_main(["call", "ping"], tls_env(server, pki), monkeypatch, capsys)
    assert got.status == 3 and "no token or client certificate was given" in got.err


@pytest.mark.parametrize("status, reason", [(503, "Service Unavailable"), (413, "Too Large"),
                                            (200, "garbage")])
def test_other_http_answers_exit_5(
    server: TLSServer, pki: DevPKI, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], status: int, reason: str,
) -> None:
    server.respond = lambda h, b: (status, "text/html", b"<html>oops</html>")
    got = run_main(["call", "ping"], tls_env(server, pki, AIRFLOWRPC_TOKEN=TOKEN),
                   monkeypatch, capsys)
    assert got.status == 5 and got.out == ""
    assert "oops" not in got.err


def test_a_busy_gateways_retry_after_is_heeded(
    server: TLSServer, pki: DevPKI, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The HTTP 503 a gateway answers when busy says when to come back: the pause is that."""
    answers = iter([(503, "text/plain", b"busy", {"Retry-After": "2"})])
    server.respond = lambda h, b: next(answers, None)
    got = run_main(["trigger", "example_hello", "--run-id", "busy-1"],
                   tls_env(server, pki, AIRFLOWRPC_TOKEN=TOKEN), monkeypatch, capsys)
    assert got.status == 0, got.err
    assert "HTTP 503 Service Unavailable" in got.err and "trying again in 2.0 s" in got.err
    server.respond = None


def test_nothing_secret_is_printed_even_verbose(
    server: TLSServer, pki: DevPKI, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:
    # A gateway that (wrongly) echoes the Authorization header in a fault.
    def echo(headers: dict[str, str], body: bytes) -> tuple[int, str, bytes]:
        fault = xmlrpc.client.Fault(403, f"forbidden for {headers['authorization']}")
        return 200, "text/xml", xmlrpc.client.dumps(fault, methodresponse=True).encode()

    server.respond = echo
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    for env, extra in [(tls_env(server, pki, AIRFLOWRPC_TOKEN=TOKEN), []),
                       (tls_env(server, pki), ["--token-file", str(token_file)])]:
        got = run_main(["call", "-v", "ping", *extra], env, monkeypatch, capsys)
        assert got.status == 3
        assert "-> ping (" in got.err and "<- HTTP 200" in got.err  # it did trace
        assert "forbidden for Bearer [redacted]" in got.err
        secret = TOKEN.split("_", 2)[2]
        assert secret not in got.err and secret not in got.out
    # Nor when the token cannot be sent, nor in a trigger's notes.
    got = run_main(["call", "ping"], tls_env(server, pki, AIRFLOWRPC_TOKEN=TOKEN + " x"),
                   monkeypatch, capsys)
    assert got.status == 2 and TOKEN not in got.err
    server.respond = None
    got = run_main(["trigger", "-v", "example_fail", "--wait", "--progress-every", "1"],
                   tls_env(server, pki, AIRFLOWRPC_TOKEN=TOKEN, AIRFLOWRPC_RUN_ID="v-1"),
                   monkeypatch, capsys)
    assert got.status == 1 and TOKEN.split("_", 2)[2] not in got.err + got.out


def test_an_untrusted_gateway_certificate_is_usage(
    server: TLSServer, pki: DevPKI, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    got = run_main(["call", "ping"], {"AIRFLOWRPC_URL": server.url, "AIRFLOWRPC_TOKEN": TOKEN},
                   monkeypatch, capsys)
    assert got.status == 2 and "certificate is not trusted" in got.err
    assert server.requests == []


def test_mutual_tls_presents_the_client_certificate(
    pki: DevPKI, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    srv = TLSServer(FakeGateway(), str(pki.directory / "server.pem"),
                    str(pki.directory / "server.key"), client_ca=str(pki.ca_file), tls12=True)
    try:
        client = pki.client("ci-bot.example.com")
        ok = run_main(["call", "ping"], tls_env(srv, pki, AIRFLOWRPC_CERT=str(client.cert),
                                                AIRFLOWRPC_KEY=str(client.key)),
                      monkeypatch, capsys)
        assert (ok.status, ok.out) == (0, '"pong"\n')
        refused = run_main(["call", "ping"], tls_env(srv, pki), monkeypatch, capsys)
        assert refused.status == 3, refused.err
        assert "refused our client certificate" in refused.err
    finally:
        srv.close()


def test_a_connection_cut_after_the_handshake_hints_at_a_missing_certificate(
    pki: DevPKI, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    # What TLS 1.3 may show instead of the alert: the server checks our
    # certificate after our side of the handshake is done, then hangs up.
    import ssl
    import threading

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(pki.directory / "server.pem"), str(pki.directory / "server.key"))
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def hang_up_after_handshake() -> None:
        conn, _ = listener.accept()
        with ctx.wrap_socket(conn, server_side=True):
            pass

    thread = threading.Thread(target=hang_up_after_handshake, daemon=True)
    thread.start()
    try:
        got = run_main(["call", "ping"], {"AIRFLOWRPC_URL": f"https://localhost:{port}/RPC2",
                                          "AIRFLOWRPC_CA": str(pki.ca_file)},
                       monkeypatch, capsys)
    finally:
        thread.join(timeout=10)
        listener.close()
    assert got.status == 5, got.err
    assert "if the gateway requires a client certificate, give one" in got.err


def test_no_gateway_there_exits_5(
    pki: DevPKI, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    got = run_main(["call", "ping"], {"AIRFLOWRPC_URL": f"https://localhost:{port}/RPC2",
                                      "AIRFLOWRPC_CA": str(pki.ca_file)}, monkeypatch, capsys)
    assert got.status == 5 and f"connection to localhost:{port} refused" in got.err


def test_an_answer_that_trickles_in_ends_at_the_timeout_in_all(
    server: TLSServer, pki: DevPKI, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each read had the timeout: a byte every 0.1 s held a call for ever."""
    import threading

    from txairflowrpc.client.errors import Unreachable
    from txairflowrpc.client.settings import read
    from txairflowrpc.client.transport import Gateway

    sent_all = threading.Event()

    def trickle(handler: Any) -> None:
        handler.rfile.read(int(handler.headers.get("Content-Length", "0")))
        handler.send_response(200)
        handler.send_header("Content-Type", "text/xml")
        handler.send_header("Content-Length", "100")
        handler.end_headers()
        try:
            for _ in range(100):  # 10 s at most
                handler.wfile.write(b" ")
                handler.wfile.flush()
                time.sleep(0.1)
        except OSError:
            return  # the client went away
        sent_all.set()

    monkeypatch.setattr(server.server.RequestHandlerClass, "do_POST", trickle)
    gw = Gateway(read(tls_env(server, pki, AIRFLOWRPC_TOKEN=TOKEN)))
    with pytest.raises(Unreachable) as e:
        gw.call("ping", timeout=1.0)
    assert "no complete answer from" in str(e.value) and "within 1 s" in str(e.value)
    assert not sent_all.is_set()  # it gave up while the answer was still coming


def test_an_expiring_credential_is_mentioned_once(
    server: TLSServer, pki: DevPKI, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from txairflowrpc.client.settings import read
    from txairflowrpc.client.transport import Gateway

    told: list[str] = []
    original = server.server.RequestHandlerClass.end_headers

    def end_headers(handler: Any) -> None:
        handler.send_header("X-Credential-Expires", "2026-12-01T00:00:00Z")
        original(handler)

    monkeypatch.setattr(server.server.RequestHandlerClass, "end_headers", end_headers)
    gw = Gateway(read(tls_env(server, pki, AIRFLOWRPC_TOKEN=TOKEN)), on_expiry=told.append)
    assert gw.call("ping") == "pong" and gw.call("ping") == "pong"
    assert told == ["2026-12-01T00:00:00Z"]


# --- --aws: the credential is an STS request signed by botocore -------------

def aws_env(monkeypatch: pytest.MonkeyPatch, identity: Identity | None) -> None:
    """botocore's credential chain sees only ``identity`` (or nothing at all)."""
    for name in [n for n in __import__("os").environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    if identity is not None:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", identity.access_key)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", identity.secret_key)


DEPLOYER = Identity("AKIADEPLOYER00000001", "deployer-secret-key-0000000000000000000",
                    "arn:aws:sts::111122223333:assumed-role/deployer/ci-run-42",
                    "AROADEPLOYER:ci-run-42")


def test_call_with_aws_sends_a_request_sts_accepts(
    server: TLSServer, pki: DevPKI, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    aws_env(monkeypatch, DEPLOYER)
    got = run_main(["call", "--aws", "--aws-sts-endpoint", "https://sts.eu-west-1.amazonaws.com",
                    "get_dag", "example_hello"], tls_env(server, pki), monkeypatch, capsys)
    assert got.status == 0, got.err
    headers, _ = server.requests[0]
    scheme, _, packed = headers["authorization"].partition(" ")
    assert scheme == "AWS-IAM"
    signed = json.loads(base64.b64decode(packed))
    assert signed["url"] == "https://sts.eu-west-1.amazonaws.com/"
    assert signed["headers"]["X-Airflowrpc-Server-ID"] == "localhost"  # the URL's host
    # What STS would say of it: the signature holds, for the deployer, in eu-west-1.
    sts = StubSTS([DEPLOYER], region="eu-west-1")
    status, _, answer = sts.answer(signed["method"], "/", {
        k.lower(): v for k, v in signed["headers"].items()}, signed["body"].encode())
    assert status == 200 and DEPLOYER.arn.encode() in answer, answer
    assert "eu-west-1/sts/aws4_request" in signed["headers"]["Authorization"]
    assert DEPLOYER.secret_key not in got.out + got.err


def test_aws_without_credentials_exits_2_and_sends_nothing(
    server: TLSServer, pki: DevPKI, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    aws_env(monkeypatch, None)
    got = run_main(["call", "--aws", "ping"], tls_env(server, pki), monkeypatch, capsys)
    assert got.status == 2
    assert "no usable AWS credentials" in got.err
    assert server.requests == []


def test_aws_and_a_token_are_one_credential_too_many(
    server: TLSServer, pki: DevPKI, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    aws_env(monkeypatch, DEPLOYER)
    got = run_main(["call", "ping"], tls_env(server, pki, AIRFLOWRPC_TOKEN=TOKEN,
                                             AIRFLOWRPC_AWS="1"), monkeypatch, capsys)
    assert got.status == 2 and "choose one" in got.err and TOKEN not in got.err
    assert server.requests == []


# -- backfill ----------------------------------------------------------------

FEB = ["backfill", "example_daily", "2026-02-01T00:00:00Z", "2026-02-03T00:00:00Z"]
FEB5 = ["backfill", "example_daily", "2026-02-01T00:00:00Z", "2026-02-05T00:00:00Z"]
MAR = ["backfill", "example_daily", "2026-03-01T00:00:00Z", "2026-03-03T00:00:00Z"]
LONG = ["backfill", "example_daily", "2026-02-01T00:00:00Z", "2026-02-20T00:00:00Z"]


def completed(gateway: FakeGateway, backfill_id: int) -> None:
    """Let a backfill of the fake run to its end."""
    while not gateway.backfills[backfill_id]["completed"]:
        gateway.get_backfill("example_daily", backfill_id)


def test_backfill_dry_run_only_counts() -> None:
    gateway = FakeGateway()
    got = run_in_memory([*FEB, "--dry-run"], gateway)
    assert got.status == 0, got.err
    assert (got.json["runs"], got.json["dry_run"]) == (3, True)
    assert gateway.backfills == {}
    assert run_in_memory([*FEB, "--dry-run", "--wait"], gateway).status == 2


def test_backfill_and_wait_until_every_run_succeeded() -> None:
    gateway = FakeGateway()
    clock = FakeClock()
    got = run_in_memory([*FEB, "--conf", '{"who": "ci"}', "--max-active-runs", "2",
                         "--reprocess", "failed", "--wait"], gateway, clock=clock)
    assert got.status == 0, got.err
    assert {k: got.json[k] for k in ("id", "created", "runs", "succeeded", "failed",
                                     "completed")} == {
        "id": 1, "created": True, "runs": 3, "succeeded": 3, "failed": 0, "completed": True}
    (create,) = gateway.calls_of("create_backfill")
    assert create == ("example_daily", "2026-02-01T00:00:00Z", "2026-02-03T00:00:00Z",
                      {"who": "ci"}, {"reprocess_behavior": "failed", "max_active_runs": 2})
    assert "created backfill 1 of example_daily: 3 runs" in got.err
    assert "backfill 1 of example_daily: running (0s)" in got.err
    assert "backfill 1 of example_daily: completed after 30s" in got.err
    assert clock.slept == [15, 15]


def test_backfill_with_a_failed_run_exits_1_with_its_failed_tasks() -> None:
    gateway = FakeGateway()
    got = run_in_memory([*FEB, "--conf", '{"fail": 2}', "--wait", "--log-lines", "3"],
                        gateway)
    assert got.status == 1, got.err
    assert (got.json["succeeded"], got.json["failed"]) == (2, 1)
    assert "failed runs: backfill__2026-02-02T00:00:00Z\n" in got.err
    assert f"task {FAILING_TASK} failed" in got.err and "log line 100" in got.err
    assert ("backfill 1 of DAG 'example_daily' completed, but 1 of its 3 runs did not "
            "succeed") in got.err


def test_an_older_backfills_runs_on_the_range_are_not_this_ones() -> None:
    """Airflow skips dates that have a run; an older failed one is not this backfill's."""
    gateway = FakeGateway()
    assert run_in_memory([*FEB, "--conf", '{"fail": 2}', "--wait"], gateway).status == 1
    got = run_in_memory([*FEB5, "--wait"], gateway)  # makes Feb 4 and 5 only
    assert got.status == 0, got.err
    assert (got.json["runs"], got.json["succeeded"], got.json["failed"]) == (2, 2, 0)


def test_a_backfill_completed_before_its_runs_ended_did_not_succeed() -> None:
    """Cancelled: Airflow completes it at once; its running runs go on."""
    gateway = FakeGateway()
    plain = gateway.get_backfill

    def cancelled_at_once(dag_id: str, backfill_id: int) -> dict[str, Any]:
        answer = plain(dag_id, backfill_id)
        gateway.backfills[backfill_id]["looks"] = 0  # nothing ran
        return {**answer, "completed": True}

    gateway.get_backfill = cancelled_at_once  # type: ignore[method-assign]
    got = run_in_memory([*FEB, "--wait"], gateway)
    assert got.status == 1, got.err
    assert "3 of its 3 runs did not succeed" in got.err


def test_backfill_again_follows_the_first_tries_backfill() -> None:
    """A retried CI job meets its earlier try's backfill: running, then completed."""
    gateway = FakeGateway()
    first = run_in_memory([*FEB, "--conf", '{"who": "ci"}'], gateway)
    assert (first.status, first.json["created"]) == (0, True), first.err
    again = run_in_memory([*FEB, "--conf", '{"who": "ci"}', "--wait"], gateway)
    assert again.status == 0, again.err
    assert (again.json["id"], again.json["created"], again.json["runs"]) == (1, False, 3)
    assert "already existed (an earlier try made it), so none was created" in again.err
    later = run_in_memory([*FEB, "--conf", '{"who": "ci"}'], gateway)  # every date has a run
    assert (later.status, later.json["id"], later.json["created"]) == (0, 1, False), later.err
    assert len(gateway.backfills) == 1


def test_backfill_not_someone_elses() -> None:
    """Only a backfill the same command would have made is followed."""
    gateway = FakeGateway()
    assert run_in_memory([*FEB, "--conf", '{"full": 1}'], gateway).status == 0
    for other in (['{"full": true}'], ['{"full": 1}', "--reprocess", "completed"],
                  ['{"full": 1}', "--max-active-runs", "3"]):
        got = run_in_memory([*FEB, "--conf", *other], gateway)
        assert got.status == 4 and "fault 409" in got.err, (other, got.err)
    same = run_in_memory([*FEB, "--conf", '{"full": 1.0}'], gateway)  # 1.0 is 1 in JSON
    assert (same.status, same.json["created"]) == (0, False), same.err
    completed(gateway, 1)
    assert run_in_memory(MAR, gateway).status == 0  # another range runs now
    got = run_in_memory([*FEB, "--conf", '{"full": 1}'], gateway)  # 409, not the old one
    assert got.status == 4 and "fault 409" in got.err, got.err


def test_backfill_whose_answer_was_lost_finds_it() -> None:
    gateway = FakeGateway()

    def lose_the_answer(method: str, params: tuple[Any, ...]) -> None:
        if method == "create_backfill" and not gateway.backfills:
            gateway.create_backfill(*params)  # made in Airflow; the answer never comes
            raise Unreachable("create_backfill", "connection lost")

    gateway.on_call = lose_the_answer
    got = run_in_memory([*FEB, "--wait"], gateway)
    assert got.status == 0, got.err
    # The running one found after a lost answer is taken to be this try's (as a run is).
    assert (got.json["id"], got.json["created"], got.json["runs"]) == (1, True, 3)
    assert "(the lost answer's): following it" in got.err
    assert len(gateway.calls_of("create_backfill")) == 1 and len(gateway.backfills) == 1
    gateway = FakeGateway()
    gateway.fail_next["create_backfill"] = [Unreachable("create_backfill", "no route")]
    got = run_in_memory(FEB, gateway)
    assert got.status == 5 and "no route" in got.err  # none made: nothing to follow


def test_a_refused_create_is_told_as_it_was() -> None:
    gateway = FakeGateway()
    assert run_in_memory([*FEB, "--wait"], gateway).status == 0  # completed, same range
    gateway.fail_next["create_backfill"] = [
        FaultReply("create_backfill", 429, "rate limited: retry after 1 s")] * 8
    got = run_in_memory(FEB, gateway)  # never made (8 tries): no search, no old backfill
    assert got.status == 5 and "fault 429" in got.err, got.err
    assert len(gateway.calls_of("create_backfill")) == 1 + 8
    assert gateway.calls_of("list_backfills") == []
    gateway.fail_next["create_backfill"] = [xmlrpc.client.Fault(
        409, "conflict: DAG 'example_daily' already has a backfill that has not completed")]
    gateway.fail_next["list_backfills"] = [xmlrpc.client.Fault(
        403, "forbidden: list_backfills: requires scope runs:read:example_daily")]
    got = run_in_memory(FEB, gateway)  # the search failed: the create's own answer
    assert got.status == 4 and "fault 409" in got.err and "403" not in got.err, got.err


def test_a_create_refused_before_it_ran_is_made_again() -> None:
    """A 429 (the caller's rate or calls in flight) was refused before Airflow was asked."""
    gateway = FakeGateway()
    clock = FakeClock()
    gateway.fail_next["create_backfill"] = [
        FaultReply("create_backfill", 429,
                   "rate limited: 20 calls in flight for this principal; retry later"),
        FaultReply("create_backfill", 429, "rate limited: retry after 1 s")]
    got = run_in_memory(FEB, gateway, clock=clock)
    assert got.status == 0, got.err
    assert (got.json["id"], got.json["created"]) == (1, True)
    assert len(gateway.calls_of("create_backfill")) == 3 and len(gateway.backfills) == 1
    assert got.err.count("; trying again in") == 2 and "20 calls in flight" in got.err
    assert len(clock.slept) == 2
    # Any other failure of a create is not retried: it may have been made.
    gateway = FakeGateway()
    gateway.fail_next["create_backfill"] = [
        FaultReply("create_backfill", 503, "Airflow cannot be reached")]
    assert run_in_memory(FEB, gateway).status == 5
    assert len(gateway.calls_of("create_backfill")) == 1


def test_backfill_not_completed_within_timeout_prints_it_and_exits_6() -> None:
    for timeout, looks in ((40, [0, 15, 30, 40]), (10, [0, 10])):
        gateway = FakeGateway()
        clock = FakeClock()
        seen: list[float] = []

        def look(method: str, params: tuple[Any, ...], seen: list[float] = seen,
                 clock: FakeClock = clock) -> None:
            if method == "get_backfill":
                seen.append(clock.now - 1000.0)

        gateway.on_call = look
        got = run_in_memory([*LONG, "--wait", "--timeout", str(timeout)], gateway, clock=clock)
        assert got.status == 6, got.err
        assert seen == looks  # every --progress-every seconds, and a last look at the end
        assert (got.json["id"], got.json["created"], got.json["completed"]) == (1, True, False)
        assert (f"backfill 1 of DAG 'example_daily': running after {timeout} s; it goes on "
                "in Airflow") in got.err


def test_a_transient_failure_while_telling_the_runs_is_retried() -> None:
    gateway = FakeGateway()
    hiccups: list[str] = []

    def hiccup(method: str, params: tuple[Any, ...]) -> None:
        if method == "list_dag_runs" and not hiccups:
            hiccups.append(method)
            raise Unreachable("list_dag_runs", "connection reset")

    gateway.on_call = hiccup
    got = run_in_memory([*FEB, "--conf", '{"fail": 2}', "--wait"], gateway)
    assert got.status == 1, got.err
    assert hiccups and "connection reset; trying again" in got.err


def test_backfill_whose_answer_a_proxy_lost_finds_it() -> None:
    """An HTTP 504 from HAProxy in front: the gateway may have made it all the same."""
    gateway = FakeGateway()

    def proxy_gives_up(method: str, params: tuple[Any, ...]) -> None:
        if method == "create_backfill" and not gateway.backfills:
            gateway.create_backfill(*params)
            raise HTTPRefused("create_backfill", 504, "Gateway Time-out")

    gateway.on_call = proxy_gives_up
    got = run_in_memory(FEB, gateway)
    assert (got.status, got.json["created"], got.json["runs"]) == (0, True, 3), got.err


# -- found by review ---------------------------------------------------------

class Hanging(InMemory):
    """
    A gateway whose next calls of some methods hang until the socket
    timeout the client gave them (on the fake clock), then fail as a
    timeout does: what a stalled gateway or proxy does to a pipeline.
    """

    def __init__(self, gateway: FakeGateway, clock: FakeClock, hangs: dict[str, int]) -> None:
        super().__init__(gateway)
        self.clock, self.hangs = clock, hangs

    def call(self, method: str, *params: Any, timeout: float = 120.0) -> Any:
        if self.hangs.get(method, 0) > 0:
            self.hangs[method] -= 1
            self.timeouts.append(timeout)
            self.clock.now += timeout
            raise Unreachable(method, f"no answer from gw.test:443 within {timeout:g} s")
        return super().call(method, *params, timeout=timeout)


def test_the_timeout_bounds_the_triggers_retries() -> None:
    """Found by review: 8 tries of 120 s each took 991 s under --timeout 60."""
    gateway, clock = FakeGateway(), FakeClock()
    caller = Hanging(gateway, clock, {"trigger_dag": 7})
    got = run_in_memory(["trigger", "slow", "--wait", "--timeout", "60"], gateway, clock=clock,
                        caller=caller)
    assert got.status == 6, got.err
    assert clock.now - 1000 <= 60 and caller.timeouts == [60]
    assert "--timeout ran out before it could be tried again" in got.err
    assert got.out == ""  # no run is known to exist: nothing to print


def test_the_timeout_bounds_the_failed_tasks_log_tails() -> None:
    """Found by review: ten log tails of 120 s each ran 20 minutes past --timeout 60."""
    gateway, clock = FakeGateway(), FakeClock()
    gateway.list_task_instances = lambda d, r: [  # type: ignore[method-assign]
        {"task_id": f"t{n}", "state": "failed", "try_number": 1, "map_index": -1}
        for n in range(10)]
    caller = Hanging(gateway, clock, {"get_task_log": 10})
    got = run_in_memory(["trigger", "example_fail", "--wait", "--timeout", "60"], gateway,
                        clock=clock, caller=caller)
    assert got.status == 1, got.err  # the run's outcome is known: it failed
    assert got.json["state"] == "failed"
    assert clock.now - 1000 <= 60 + GRACE
    assert "--timeout ran out before it could be called" in got.err


def test_the_timeout_bounds_the_count_of_a_backfills_runs() -> None:
    gateway, clock = FakeGateway(), FakeClock()
    caller = Hanging(gateway, clock, {"list_dag_runs": 8})
    got = run_in_memory([*FEB, "--wait", "--timeout", "100"], gateway, clock=clock,
                        caller=caller)
    assert got.status == 6, got.err
    assert clock.now - 1000 <= 100 + GRACE
    assert (got.json["id"], got.json["completed"], got.json["runs"]) == (1, True, 3)


def test_an_outage_when_the_timeout_comes_is_a_timeout() -> None:
    """Found by review: 503s near the deadline ended it with exit 5 and an empty stdout."""
    gateway, clock = FakeGateway(), FakeClock()

    def down_after_50_s(method: str, params: tuple[Any, ...]) -> None:
        if method == "wait_dag_run" and clock.now - 1000 > 50:
            raise xmlrpc.client.Fault(503, "upstream unavailable: Airflow cannot be reached")

    gateway.on_call = down_after_50_s
    got = run_in_memory(["trigger", "slow", "--wait", "--timeout", "60"], gateway, clock=clock)
    assert got.status == 6, got.err
    assert (got.json["state"], got.json["created"]) == ("running", True)
    assert ("is still running after 60 s; it goes on in Airflow: run the same command again "
            "to wait for it (the run id makes that safe) (the last look failed: wait_dag_run: "
            "fault 503: upstream unavailable") in got.err


def test_an_error_after_the_trigger_still_prints_the_run() -> None:
    """Found by review: a 403 on the wait left stdout empty though the run existed."""
    gateway = FakeGateway()
    gateway.fail_next["wait_dag_run"] = [xmlrpc.client.Fault(403, "forbidden: needs runs:read")]
    got = run_in_memory(["trigger", "example_hello", "--wait"], gateway)
    assert got.status == 3
    assert (got.json["dag_run_id"], got.json["state"], got.json["created"]) == (
        "gitlab-9001-deploy", "queued", True)
    assert got.out.count("\n") == 1


def test_a_run_a_lost_try_of_this_command_made_was_created_by_it() -> None:
    """Found by review: the retry found it and the command said it existed before."""
    gateway = FakeGateway()

    def lose_the_first_answer(method: str, params: tuple[Any, ...]) -> None:
        if method == "trigger_dag" and not gateway.runs:
            gateway.trigger_dag(*params)
            raise Unreachable("trigger_dag", "gw.test:443 closed the connection")

    gateway.on_call = lose_the_first_answer
    got = run_in_memory(["trigger", "example_fail", "--wait"], gateway)
    assert got.status == 1 and got.json["created"] is True
    assert "this command's earlier try, whose answer was lost" in got.err
    assert "existed before this command" not in got.err
    # A try refused before it ran (429) made nothing: the run found is an earlier job's.
    again = FakeGateway()
    again.trigger_dag("example_hello", {}, {"dag_run_id": "gitlab-9001-deploy"})
    again.fail_next["trigger_dag"] = [xmlrpc.client.Fault(429, "rate limited")]
    got = run_in_memory(["trigger", "example_hello"], again)
    assert (got.status, got.json["created"]) == (0, False), got.err


def test_a_507_after_the_trigger_may_have_made_it() -> None:
    """The gateway's 507: Airflow made the run, but its outcome could not be recorded."""
    gateway = FakeGateway()

    def unrecorded(method: str, params: tuple[Any, ...]) -> None:
        if method == "trigger_dag" and not gateway.runs:
            gateway.trigger_dag(*params)
            raise xmlrpc.client.Fault(507, "audit unavailable")

    gateway.on_call = unrecorded
    got = run_in_memory(["trigger", "example_hello"], gateway)
    assert (got.status, got.json["created"]) == (0, True), got.err


def test_a_507_after_create_backfill_finds_it() -> None:
    """Found by review: the 507 was told as an outage (exit 5) though the backfill existed."""
    gateway = FakeGateway()

    def unrecorded(method: str, params: tuple[Any, ...]) -> None:
        if method == "create_backfill" and not gateway.backfills:
            gateway.create_backfill(*params)
            raise xmlrpc.client.Fault(507, "audit unavailable: the outcome was not recorded")

    gateway.on_call = unrecorded
    got = run_in_memory([*FEB, "--wait"], gateway)
    assert got.status == 0, got.err
    # The running one found after a lost answer is taken to be this try's (as a run is).
    assert (got.json["id"], got.json["created"], got.json["runs"]) == (1, True, 3)
    assert "(the lost answer's): following it" in got.err
    assert len(gateway.calls_of("create_backfill")) == 1


def test_a_count_that_misses_the_backfills_runs_is_no_success() -> None:
    """Found by review: a count that saw none of its runs made 0 == 0, exit 0."""
    gateway = FakeGateway()
    plain = gateway._backfill_runs
    gateway._backfill_runs = lambda b: [  # type: ignore[method-assign]
        {**r, "queued_at": "2026-11-27T10:00:00.999Z", "state": "failed"} for r in plain(b)]
    got = run_in_memory([*FEB, "--wait"], gateway)
    assert got.status == 1, got.err
    assert {k: got.json[k] for k in ("runs", "succeeded", "failed")} == {
        "runs": 3, "succeeded": 0, "failed": 0}
    assert "only 0 of the 3 runs of backfill 1 were found" in got.err
    assert "3 of its 3 runs did not succeed" in got.err


def test_a_partitioned_dags_backfill_is_told_by_its_runs_without_logical_dates() -> None:
    """
    Found by review: a partitioned DAG's runs have no logical date, so the
    count over the range found none: every run succeeded and it exited 1.
    """
    gateway = FakeGateway()
    gateway.partitioned.add("example_daily")
    got = run_in_memory([*FEB, "--wait"], gateway)
    assert got.status == 0, got.err
    assert {k: got.json[k] for k in ("runs", "succeeded", "failed")} == {
        "runs": 3, "succeeded": 3, "failed": 0}
    failing = run_in_memory([*MAR, "--conf", '{"fail": 2}', "--wait", "--log-lines", "1"],
                            gateway)
    assert failing.status == 1, failing.err
    assert "failed runs: backfill__2026-03-02T00:00:00Z\n" in failing.err
    assert "1 of its 3 runs did not succeed" in failing.err


def test_a_partitioned_dags_backfill_found_again_is_no_success_over_a_failed_run() -> None:
    """Found by review: found again, it had 0 runs, so 0 of 0 failed: exit 0."""
    gateway = FakeGateway()
    gateway.partitioned.add("example_daily")
    first = run_in_memory([*FEB, "--conf", '{"fail": 2}'], gateway)
    assert first.status == 0, first.err
    again = run_in_memory([*FEB, "--conf", '{"fail": 2}', "--wait"], gateway)
    assert again.status == 1, again.err
    assert {k: again.json[k] for k in ("id", "created", "runs", "succeeded", "failed")} == {
        "id": 1, "created": False, "runs": 3, "succeeded": 2, "failed": 1}


def test_a_partitioned_dags_later_backfill_is_not_counted_as_an_earlier_ones() -> None:
    """Its runs are those queued while it ran: not a later backfill's, queued after."""
    gateway = FakeGateway()
    gateway.partitioned.add("example_daily")
    assert run_in_memory([*FEB, "--wait"], gateway).status == 0
    assert run_in_memory([*FEB5, "--conf", '{"fail": 1}', "--wait"], gateway).status == 1
    again = run_in_memory([*FEB, "--wait"], gateway)  # every date has a run: the first's
    assert again.status == 0, again.err
    assert {k: again.json[k] for k in ("id", "runs", "succeeded", "failed")} == {
        "id": 1, "runs": 3, "succeeded": 3, "failed": 0}


def test_a_backfill_found_again_without_runs_found_is_no_success() -> None:
    gateway = FakeGateway()
    assert run_in_memory([*FEB], gateway).status == 0
    gateway._backfill_runs = lambda b: []  # type: ignore[method-assign]
    got = run_in_memory([*FEB, "--wait"], gateway)
    assert got.status == 1, got.err
    assert (got.json["runs"], got.json["succeeded"]) == (0, 0)
    assert ("backfill 1 of DAG 'example_daily' completed, but none of its runs was found: "
            "their outcome is unknown") in got.err


def test_backfill_without_conf_sends_none_so_reprocessed_runs_keep_theirs() -> None:
    """Found by review: {} was sent, and Airflow gives a reprocessed run the conf sent."""
    gateway = FakeGateway()
    assert run_in_memory([*FEB, "--reprocess", "failed", "--wait"], gateway).status == 0
    assert run_in_memory([*MAR, "--conf", "{}", "--wait"], gateway).status == 0
    assert [params[3] for params in gateway.calls_of("create_backfill")] == [None, {}]
    # A try that sent {} and one that sent none made the same backfill.
    again = run_in_memory([*FEB, "--reprocess", "failed", "--conf", "{}", "--wait"], gateway)
    assert (again.status, again.json["id"], again.json["created"]) == (0, 1, False), again.err


@pytest.mark.parametrize("conf, says", [
    (r'{"msg": "bell\u0007"}', '["msg"]: the string holds U+0007'),
    (r'{"msg": "half \ud83d"}', '["msg"]: the string holds U+D83D'),
    (r'{"form\u000cfeed": 1}', r'["form\ffeed"]: the key holds U+000C'),
    (r'{"a": [1, "\uffff"]}', '["a"][1]: the string holds U+FFFF'),
])
def test_characters_xml_cannot_carry_are_usage_and_send_nothing(conf: str, says: str) -> None:
    """Found by review: the gateway refused them as not XML (-32700, exit 5: retried)."""
    gateway = FakeGateway()
    got = run_in_memory(["trigger", "example_hello", "--conf", conf], gateway)
    assert got.status == 2 and f"--conf {says}, which XML-RPC cannot carry" in got.err
    assert gateway.calls == []


def test_a_bare_word_xml_cannot_carry_is_usage_too() -> None:
    """An undecodable byte of the command line arrives as a lone surrogate (surrogateescape)."""
    gateway = FakeGateway()
    for argv, says in ((["call", "get_dag", "etl\udcff"], "argument 1"),
                       (["trigger", "etl\x07"], "DAG"),
                       (["trigger", "example_hello", "--note", "a\x1bb"], "--note")):
        got = run_in_memory(argv, gateway)
        assert got.status == 2 and f"{says}: the string holds U+" in got.err, got.err
    assert gateway.calls == []


@pytest.mark.parametrize("interrupt, status, says", [
    (KeyboardInterrupt, 130, "interrupted: a run already triggered"),
    ("SIGTERM", 143, "terminated (SIGTERM): a run already triggered"),
])
def test_ctrl_c_and_sigterm_print_the_run_and_say_it_goes_on(
    interrupt: Any, status: int, says: str,
) -> None:
    """
    Found by review: SIGTERM (a CI job cancelled) killed the command
    silently.  It ends as Ctrl-C does now, with the run as last seen on
    stdout; the handler is the command's only while it runs.
    """
    gateway = FakeGateway()

    def cancel_the_job(method: str, params: tuple[Any, ...]) -> None:
        if method == "wait_dag_run" and gateway.runs[("slow", "gitlab-9001-deploy")]["step"] == 3:
            if interrupt == "SIGTERM":
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(1)  # the handler runs before this ends
            raise interrupt()

    class NotOurs(Exception):
        pass

    def test_s_own(signum: int, frame: Any) -> None:
        raise NotOurs()  # before the fix: the command's SIGTERM met this handler

    gateway.on_call = cancel_the_job
    previous = signal.signal(signal.SIGTERM, test_s_own)
    try:
        got = run_in_memory(["trigger", "slow", "--wait"], gateway)
        assert signal.getsignal(signal.SIGTERM) is test_s_own
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert got.status == status, got.err
    assert (got.json["state"], got.json["created"]) == ("running", True)
    assert got.err.splitlines()[-1] == (f"airflowrpc: {says} or a backfill already created "
                                        f"goes on in Airflow")


class _TermOnWrite(io.StringIO):
    """stdout that gets a SIGTERM as the result is being written (a job cancelled then)."""

    armed = False

    def write(self, text: str) -> int:
        if self.armed:
            self.armed = False
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.2)  # the handler runs before this returns
        return super().write(text)


@pytest.mark.parametrize("fail_the_wait, status", [(False, 0), (True, 3)])
def test_a_sigterm_as_the_command_ends_cuts_nothing(fail_the_wait: bool, status: int) -> None:
    """
    Found by the second reader: a SIGTERM while the result was written left
    stdout empty (exit 143), and one while an error was wound down escaped
    the command as a traceback (exit 1).  Once it is ending, it ends as it
    would have.
    """
    gateway = FakeGateway()
    out, err = _TermOnWrite(), io.StringIO()
    out.armed = True

    def forbid(method: str, params: tuple[Any, ...]) -> None:
        if method == "wait_dag_run":
            raise xmlrpc.client.Fault(403, "forbidden")

    if fail_the_wait:
        gateway.on_call = forbid
    previous = signal.getsignal(signal.SIGTERM)
    clock = FakeClock()
    try:
        got = commands.run(
            parser().parse_args(["trigger", "example_hello", "--wait"]),
            environ={"AIRFLOWRPC_URL": "https://gw.test/RPC2", "AIRFLOWRPC_TOKEN": TOKEN,
                     **GITLAB},
            console=Console(out, err), clock=clock, sleep=clock.sleep, rand=lambda: 0.5,
            connect=lambda s, **kw: InMemory(gateway))
    finally:
        assert signal.getsignal(signal.SIGTERM) is previous
    assert got == status, err.getvalue()
    assert json.loads(out.getvalue())["dag_run_id"] == "gitlab-9001-deploy"


def test_the_last_look_is_not_cut_by_the_deadline() -> None:
    """
    Found by the second reader: the last wait asked for all the time left
    while the deadline capped its socket at that, so it always timed out
    and the exit 6 blamed an outage ("the last look failed").
    """
    gateway = FakeGateway()
    clock = FakeClock()

    class Timed(InMemory):
        def call(self, method: str, *params: Any, timeout: float = 120.0) -> Any:
            took = params[2] + 0.3 if method == "wait_dag_run" else 0.1
            if took > timeout:
                clock.now += timeout
                raise Unreachable(method, f"no complete answer within {timeout:g} s")
            clock.now += took
            return super().call(method, *params, timeout=timeout)

    got = run_in_memory(["trigger", "slow", "--wait", "--timeout", "40"], gateway, clock=clock,
                        caller=Timed(gateway))
    assert got.status == 6, got.err
    assert "the last look failed" not in got.err
    assert got.json["state"] == "running"
