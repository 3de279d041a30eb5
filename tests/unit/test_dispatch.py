"""
The dispatcher on its own: the pipeline every call passes through, driven
by the method specs alone.

A provider defined here adds methods with nothing but a handler and its
spec; the policy, the deadline and the audit record follow from the spec.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from txairflowrpc.audit.summary import Summarizer
from txairflowrpc.core import errors
from txairflowrpc.core.spec import CallContext, Param, rpc_method
from txairflowrpc.gate.dispatch import Dispatcher
from txairflowrpc.identity.policy import ScopePolicy
from txairflowrpc.identity.principal import Principal
from txairflowrpc.identity.scopes import ConfRule, Grants, Role, Scope

from .helpers import audit_log


class Provider:
    """Methods that exist only in this test."""

    def __init__(self) -> None:
        self.held: Deferred[str] | None = None
        self.cancelled = 0
        self.echoed = 0

    @rpc_method(
        "launch", "struct",
        Param("pipeline", "string", "which DAG", id="dag_id"),
        Param("settings", "struct", "the run's conf", required=False),
        Param("extras", "struct", "options", required=False, keeps=("label", "dag_run_id")),
        scope="runs:trigger", dag="pipeline", conf="settings", changes=True,
        dry_run="extras.rehearse",
    )
    def launch(self, call: CallContext, pipeline: str, settings: Any = None,
               extras: Any = None) -> Any:
        """Start something."""
        if (extras or {}).get("slow"):
            self.held = Deferred(lambda d: setattr(self, "cancelled", self.cancelled + 1))
            return self.held
        return {"started": pipeline}

    @rpc_method(
        "linger", "string",
        Param("pipeline", "string", "which DAG", id="dag_id"),
        Param("patience", "int", "seconds", required=False, default=100),
        scope="runs:read", dag="pipeline", deadline="patience",
    )
    def linger(self, call: CallContext, pipeline: str, patience: int = 100) -> Deferred[str]:
        """Wait for a while."""
        self.held = Deferred(lambda d: setattr(self, "cancelled", self.cancelled + 1))
        return self.held

    @rpc_method("echo", "string", Param("size", "int", "how many characters"), scope="")
    def echo(self, call: CallContext, size: int) -> str:
        """A string of ``size`` characters: an answer as large as asked."""
        self.echoed += 1
        return "x" * size

    @rpc_method("deadline", "double", scope="")
    def deadline(self, call: CallContext) -> float:
        """When this call's deadline runs out, as the Airflow client sees it."""
        from txairflowrpc.core import calltrace

        trace = calltrace.current.get()
        return -1.0 if trace is None or trace.deadline is None else trace.deadline

    @rpc_method("explode", "string", scope="")
    def explode(self, call: CallContext) -> str:
        """Fail in a way nobody planned."""
        raise RuntimeError("password=hunter2")


def principal(*scopes: str, conf: dict[str, Any] | None = None) -> Principal:
    rules = tuple(ConfRule.build(g, s) for g, s in (conf or {}).items())
    role = Role("r", tuple(Scope.parse(s) for s in scopes), rules)
    return Principal("bot", "token", roles=("r",), grants=Grants((role,)))


class DispatcherCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.dir = Path(tempfile.mkdtemp())
        self.audit = audit_log(str(self.dir), self.clock)
        self.provider = Provider()
        self.dispatcher = Dispatcher(
            [self.provider], policy=ScopePolicy(), max_multicall=5, clock=self.clock,
            audit=self.audit, summarizer=Summarizer(("password",), b"k" * 32), deadline=10,
            max_wait=50,
        )

    def call(self, who: Principal, name: str, *args: Any) -> Deferred[Any]:
        return self.dispatcher.call(CallContext(who, "req1", "127.0.0.1:1"), name, args)

    def records(self) -> list[dict[str, Any]]:
        path = self.dir / "audit.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()]


class AnswerBudgetTests(DispatcherCase):
    """Found by review: 50 task logs in one multicall made one answer of 800 MB."""

    def test_a_multicall_answers_at_most_its_budget(self) -> None:
        self.dispatcher.max_answer = 1000
        who = principal("runs:trigger")
        ctx = CallContext(who, "req1", "127.0.0.1:1")
        results = self.successResultOf(self.dispatcher.call(ctx, "system.multicall", ([
            {"methodName": "echo", "params": [600]},   # fits: about 368 left
            {"methodName": "echo", "params": [600]},   # would not: a fault in its place
            {"methodName": "echo", "params": [300]},   # fits: about 36 left
            {"methodName": "launch", "params": ["etl_a"]},  # a change: charged, never refused
            {"methodName": "echo", "params": [1]},     # nothing left: refused before it runs
        ],)))
        self.assertEqual([len(r[0]) for r in (results[0], results[2])], [600, 300])
        self.assertEqual(results[3], [{"started": "etl_a"}])
        self.assertEqual([results[1]["faultCode"], results[4]["faultCode"]], [-32602, -32602])
        self.assertIn("would take the multicall's answer past 1000 bytes; make this call "
                      "on its own", results[1]["faultString"])
        self.assertIn("reached 1000 bytes", results[4]["faultString"])
        self.assertEqual(self.provider.echoed, 3)  # the last never ran
        inner = sorted((r for r in self.records()
                        if r.get("kind") == "call" and r.get("multicall_index") is not None),
                       key=lambda r: r["multicall_index"])
        self.assertEqual([(r["decision"], r["outcome"]) for r in inner],
                         [("allowed", "ok"), ("allowed", "fault"), ("allowed", "ok"),
                          ("allowed", "ok"), ("denied", "fault")])
        self.assertEqual(inner[4]["reason"], "the multicall's answer is full")

    def test_two_task_logs_at_their_cap_fit(self) -> None:
        """Found by the final read: the second capped log (with its first line) did not."""
        from txairflowrpc.gate.answers import AnswerBudget, AnswersTooLarge
        from txairflowrpc.upstream.client import MAX_LOG_CHARACTERS
        log = ("[earlier lines left out: an answer holds at most its last "
               f"{MAX_LOG_CHARACTERS}]\n" + "x" * MAX_LOG_CHARACTERS)
        budget = AnswerBudget()
        budget.charge(log, False)
        budget.charge(log, False)
        self.assertRaises(AnswersTooLarge, budget.charge, "x" * 200_000, False)

    def test_answer_size_is_about_the_bytes_written(self) -> None:
        """Found by review: text was counted before escaping and encoding (x5 for "&")."""
        from txairflowrpc.gate.answers import answer_size
        from txairflowrpc.gate.wire import dump_response
        for value in ({"a": "x" * 10_000}, {"a": "&" * 10_000}, {"a": "\r<>" * 3_000},
                      ["\u20ac" * 5_000, "\U0001d11e" * 2_000], [{"a": 1, "b": "c"}] * 300):
            written = len(dump_response(value))
            self.assertGreaterEqual(answer_size(value), written * 0.9, value)
            self.assertLessEqual(answer_size(value), written * 1.5 + 100, value)


class DispatcherTests(DispatcherCase):
    def test_a_new_method_is_authorised_from_its_spec(self) -> None:
        allowed = principal("runs:trigger:etl_*")
        self.assertEqual(self.successResultOf(self.call(allowed, "launch", "etl_a")),
                         {"started": "etl_a"})
        refused = self.failureResultOf(self.call(allowed, "launch", "ml_a"), errors.Forbidden)
        self.assertIn("requires scope runs:trigger:ml_a", refused.value.message)

    def test_the_conf_rule_applies_to_the_parameter_the_spec_names(self) -> None:
        who = principal("runs:trigger", conf={"*": {"type": "object",
                                                    "properties": {"day": {"type": "string"}}}})
        self.successResultOf(self.call(who, "launch", "etl_a", {"day": "monday"}))
        refused = self.failureResultOf(self.call(who, "launch", "etl_a", {"day": 3}),
                                       errors.Forbidden)
        self.assertIn("conf.day", refused.value.message)

    def test_the_audit_record_follows_the_spec(self) -> None:
        who = principal("runs:trigger")
        self.successResultOf(self.call(
            who, "launch", "etl_a", {"password": "x", "day": "monday"},
            {"label": "nightly", "note": "free text", "dag_run_id": "r-1"},
        ))
        (record,) = [r for r in self.records() if r.get("kind") == "call"]
        self.assertEqual(record["dag_id"], "etl_a")  # the id parameter, by its kind
        self.assertEqual(record["dag_run_id"], "r-1")  # an option member the spec keeps, an id kind
        extras = record["args"]["extras"]
        self.assertEqual(extras["label"], "nightly")  # kept: the spec says so
        self.assertEqual(set(extras["note"]), {"hmac_sha256", "size"})  # digested
        self.assertEqual(set(record["args"]["settings"]), {"hmac_sha256", "size"})
        self.assertNotIn("monday", json.dumps(record))

    def test_the_deadline_grows_by_the_parameter_the_spec_names(self) -> None:
        who = principal("runs:read")
        d = self.call(who, "linger", "etl_a", 30)
        self.clock.advance(39)  # 10 s deadline + 30 s of patience
        self.assertNoResult(d)
        self.clock.advance(1.5)
        self.assertEqual(self.failureResultOf(d, errors.CallTimeout).value.code, 504)
        self.assertEqual(self.provider.cancelled, 1)

    def test_the_extension_is_capped_and_defaults_from_the_spec(self) -> None:
        who = principal("runs:read")
        capped = self.call(who, "linger", "etl_a", 10_000)
        self.clock.advance(59)  # capped at max_wait = 50
        self.assertNoResult(capped)
        self.clock.advance(2)
        self.failureResultOf(capped, errors.CallTimeout)
        default = self.call(who, "linger", "etl_a")  # default patience 100, capped to 50
        self.clock.advance(59)
        self.assertNoResult(default)
        self.clock.advance(2)
        self.failureResultOf(default, errors.CallTimeout)

    def test_a_call_and_a_multicall_s_calls_know_their_deadline(self) -> None:
        self.clock.advance(100)
        self.assertEqual(self.successResultOf(self.call(principal(), "deadline")), 110.0)
        (entry,), = self.successResultOf(self.call(
            principal(), "system.multicall", [{"methodName": "deadline", "params": []}]))
        self.assertEqual(entry, 110.0)  # the multicall's

    def test_an_unplanned_error_is_an_internal_fault_without_its_text(self) -> None:
        failure = self.failureResultOf(self.call(principal(), "explode"), errors.InternalError)
        self.assertIn("req1", failure.value.message)
        self.assertNotIn("hunter2", failure.value.message)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        (record,) = [r for r in self.records() if r.get("kind") == "call"]
        self.assertEqual((record["outcome"], record["fault_code"]), ("fault", -32603))

    def test_unknown_methods_and_bad_arity_are_refused_before_the_policy(self) -> None:
        nobody = principal()
        self.failureResultOf(self.call(nobody, "launch.__class__"), errors.MethodNotFound)
        bad = self.failureResultOf(self.call(nobody, "launch"), errors.InvalidParams)
        self.assertIn("expects 1 to 3 parameter(s)", bad.value.message)
        decisions = [r["decision"] for r in self.records() if r.get("kind") == "call"]
        self.assertEqual(decisions, ["invalid", "invalid"])

    def test_the_introspection_lists_the_providers_methods(self) -> None:
        names = self.successResultOf(self.call(principal(), "system.listMethods"))
        self.assertIn("launch", names)
        self.assertIn("system.multicall", names)
        help_text = self.successResultOf(self.call(principal(), "system.methodHelp", "launch"))
        self.assertIn("Needs scope runs:trigger", help_text)


class ChangeTests(DispatcherCase):
    def test_a_change_on_its_way_runs_on_when_the_caller_leaves(self) -> None:
        d = self.call(principal("runs:trigger"), "launch", "etl_a", {}, {"slow": True})
        d.cancel()  # the caller went away
        self.failureResultOf(d)
        self.assertEqual(self.provider.cancelled, 0)
        self.provider.held.callback({"started": "etl_a"})
        (record,) = [r for r in self.records() if r.get("kind") == "call"]
        self.assertEqual(record["outcome"], "ok")  # what really happened

    def test_a_dry_run_and_a_read_are_cancelled_as_before(self) -> None:
        d = self.call(principal("runs:trigger"), "launch", "etl_a", {},
                      {"slow": True, "rehearse": True})
        d.cancel()
        self.failureResultOf(d)
        self.assertEqual(self.provider.cancelled, 1)
        read = self.call(principal("runs:read"), "linger", "etl_a", 5)
        read.cancel()
        self.failureResultOf(read)
        self.assertEqual(self.provider.cancelled, 2)
        outcomes = [r["outcome"] for r in self.records() if r.get("kind") == "call"]
        self.assertEqual(outcomes, ["cancelled", "cancelled"])


class DrainTests(DispatcherCase):
    def test_calls_in_flight_finish_then_the_drain_fires(self) -> None:
        d = self.call(principal("runs:read"), "linger", "etl_a", 5)
        drained = self.dispatcher.drain(10)
        self.assertNoResult(drained)
        self.provider.held.callback("done")
        self.assertEqual(self.successResultOf(d), "done")
        self.clock.advance(0)
        self.successResultOf(drained)

    def test_at_the_deadline_they_are_cut_off_answered_503_and_recorded(self) -> None:
        wait = self.call(principal("runs:read"), "linger", "etl_a", 1000)
        change = self.call(principal("runs:trigger"), "launch", "etl_a", {}, {"slow": True})
        drained = self.dispatcher.drain(5)  # sooner than the calls' own deadline (10 s)
        self.clock.advance(4)
        self.assertNoResult(drained)
        self.clock.advance(1)
        for d in (wait, change):  # the change too: the shutdown deadline is the last word
            self.assertEqual(self.failureResultOf(d, errors.ShuttingDown).value.code, 503)
        self.clock.advance(0)
        self.successResultOf(drained)
        outcomes = [(r["method"], r["outcome"], r.get("fault_code")) for r in self.records()
                    if r.get("kind") == "call"]
        self.assertEqual(sorted(outcomes), [("launch", "fault", 503), ("linger", "fault", 503)])
        self.assertEqual(self.provider.cancelled, 2)

    def test_a_change_inside_a_multicall_is_waited_for_and_recorded(self) -> None:
        """
        Found by review: the drain knew only top-level calls; a multicall's
        trigger, cut off with its multicall, ran on unseen, made its run, and
        the log closed before its outcome was written.
        """
        multi = self.dispatcher.call(
            CallContext(principal("runs:trigger"), "req1", "127.0.0.1:1"), "system.multicall",
            ([{"methodName": "launch", "params": ["etl_a", {}, {"slow": True}]}],))
        drained = self.dispatcher.drain(5)
        self.clock.advance(5)  # the multicall is cut off: its change with it, as a 503
        if multi.called and isinstance(multi.result, list):  # its change cut off first
            self.assertEqual(self.successResultOf(multi)[0]["faultCode"], 503)
        else:
            self.failureResultOf(multi, errors.ShuttingDown)
        self.clock.advance(0)
        self.successResultOf(drained)
        (inner,) = [r for r in self.records()
                    if r.get("kind") == "call" and r.get("multicall_index") == 0]
        self.assertEqual((inner["method"], inner["outcome"], inner.get("fault_code")),
                         ("launch", "fault", 503))

    def test_nothing_in_flight_drains_at_once(self) -> None:
        self.successResultOf(self.dispatcher.drain(10))

    def test_a_call_that_comes_in_during_the_drain_is_503(self) -> None:
        self.successResultOf(self.dispatcher.drain(10))
        d = self.call(principal(), "system.listMethods")
        self.assertEqual(self.failureResultOf(d, errors.ShuttingDown).value.code, 503)
        (record,) = [r for r in self.records() if r.get("kind") == "call"]
        self.assertEqual((record["decision"], record["fault_code"]), ("denied", 503))
