"""Every XML-RPC method through the whole gateway site, in memory."""

from __future__ import annotations

import json
import xmlrpc.client
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from .helpers import Big, gateway


class MethodTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.gw = gateway()

    def call(self, method: str, *params: Any, headers: dict[str, str] | None = None) -> Any:
        status, headers, result = self.successResultOf(
            self.gw.call_d(method, *params, headers=headers))
        self.assertEqual(status, 200)
        self.assertTrue(headers.getRawHeaders("x-request-id"))
        return result

    def fault(self, method: str, *params: Any) -> xmlrpc.client.Fault:
        result = self.call(method, *params)
        self.assertIsInstance(result, xmlrpc.client.Fault, f"expected a fault, got {result!r}")
        return result


class SurfaceTests(MethodTestCase):
    def test_ping_and_whoami(self) -> None:
        self.assertEqual(self.call("ping"), "pong")
        me = self.call("whoami")
        self.assertEqual((me["principal"], me["authenticated_by"], me["roles"]),
                         ("ci-bot", "client_certificate", ["operator"]))
        self.assertIn("runs:trigger", me["scopes"])

    def test_list_dags_with_filters(self) -> None:
        result = self.call("list_dags", {"pattern": "etl", "limit": 10})
        self.assertEqual([d["dag_id"] for d in result["dags"]], ["etl_orders"])
        self.assertEqual(result["total"], 1)
        self.assertIn(("GET", "/api/v2/dags"), self.gw.airflow.api_requests())

    def test_list_dags_rejects_bad_filters(self) -> None:
        for filters, words in [
            ({"limit": 0}, "filters.limit"), ({"limit": 101}, "filters.limit"),
            ({"pattern": "a/b"}, "filters.pattern"), ({"paused": "yes"}, "filters.paused"),
            ({"sort": "x"}, "unknown key 'sort'"), ({"tags": [1]}, "filters.tags"),
            ({"offset": -1}, "filters.offset"), ({"offset": 10_000_001}, "filters.offset"),
        ]:
            f = self.fault("list_dags", filters)
            self.assertEqual(f.faultCode, -32602)
            self.assertIn(words, f.faultString)

    def test_pause_and_unpause_return_the_dag_after_the_change(self) -> None:
        self.assertTrue(self.call("pause_dag", "etl_orders")["is_paused"])
        self.assertTrue(self.call("get_dag", "etl_orders")["is_paused"])
        self.assertFalse(self.call("unpause_dag", "etl_orders")["is_paused"])

    def test_unknown_dag_is_404(self) -> None:
        f = self.fault("get_dag", "no_such_dag")
        self.assertEqual((f.faultCode, f.faultString), (404, "not found: DAG 'no_such_dag'"))

    def test_traversal_ids_never_reach_airflow(self) -> None:
        for method, params in [
            ("get_dag", ("x/../../variables",)), ("get_dag", ("..",)),
            ("get_dag_run", ("etl_orders", "../../config")),
            ("get_task_log", ("etl_orders", "r", "a/../../b")),
            ("clear_task_instances", ("etl_orders", "r", {"task_ids": ["../x"]})),
            ("trigger_dag", ("etl_orders", {}, {"dag_run_id": "a/b"})),
        ]:
            before = len(self.gw.airflow.requests)
            f = self.fault(method, *params)
            self.assertEqual(f.faultCode, -32602)
            self.assertEqual(len(self.gw.airflow.requests), before, method)

    def test_trigger_get_and_list_runs(self) -> None:
        run = self.call("trigger_dag", "etl_orders", {"day": "2026-01-01"},
                        {"dag_run_id": "ci-1", "note": "from CI",
                         "logical_date": "2026-01-01T10:00:00+02:00"})
        self.assertTrue(run["created"])
        self.assertEqual(run["conf"], {"day": "2026-01-01"})
        self.assertEqual(self.gw.airflow.bodies[-1]["logical_date"], "2026-01-01T08:00:00Z")
        self.assertEqual(self.call("get_dag_run", "etl_orders", "ci-1")["dag_run_id"], "ci-1")
        listed = self.call("list_dag_runs", "etl_orders", {"state": ["queued"]})
        self.assertEqual(listed["total"], 1)
        self.assertEqual(self.call("list_dag_runs", "etl_orders", {"state": "success"})["total"], 0)

    def test_a_datetime_is_read_as_each_stock_client_writes_it(self) -> None:
        """Found by review: Java's aXMLRPC (no colons) and a zone were refused."""
        for i, (text, sent) in enumerate([
                ("20260102T030405", "2026-01-02T03:04:05Z"),
                ("20260102T03:04:05+01:00", "2026-01-02T02:04:05Z"),
                ("2026-01-02T03:04:05.5Z", "2026-01-02T03:04:05.500000Z")]):
            when = xmlrpc.client.DateTime()
            when.decode(text)
            self.call("trigger_dag", "etl_orders", {}, {"dag_run_id": f"dt-{i}",
                                                        "logical_date": when})
            self.assertEqual(self.gw.airflow.bodies[-1]["logical_date"], sent, text)

    def test_trigger_without_options_sends_a_null_logical_date(self) -> None:
        run = self.call("trigger_dag", "example_hello")
        self.assertTrue(run["created"])
        body = self.gw.airflow.bodies[-1]
        self.assertEqual((body["logical_date"], body["conf"]), (None, {}))
        self.assertRegex(body["note"], r"^Triggered through txairflowrpc by ci-bot "
                                       r"\(request [0-9a-f]{16}\)$")

    def test_trigger_note_keeps_the_callers_note_below_the_attribution(self) -> None:
        status, headers, run = self.successResultOf(self.gw.call_d(
            "trigger_dag", "example_hello", {}, {"note": "nightly retrain"}))
        request_id = headers.getRawHeaders("x-request-id")[0]
        self.assertEqual(run["note"], f"Triggered through txairflowrpc by ci-bot "
                                      f"(request {request_id})\n\nnightly retrain")

    def test_trigger_retry_with_same_id_and_conf_is_idempotent(self) -> None:
        first = self.call("trigger_dag", "etl_orders", {"a": 1}, {"dag_run_id": "ci-2"})
        again = self.call("trigger_dag", "etl_orders", {"a": 1}, {"dag_run_id": "ci-2"})
        self.assertEqual((first["created"], again["created"]), (True, False))
        self.assertEqual(again["dag_run_id"], "ci-2")
        self.assertEqual(len(self.gw.airflow.runs), 1)

    def test_trigger_same_id_other_conf_is_a_conflict(self) -> None:
        self.call("trigger_dag", "etl_orders", {"a": 1}, {"dag_run_id": "ci-3"})
        f = self.fault("trigger_dag", "etl_orders", {"a": 2}, {"dag_run_id": "ci-3"})
        self.assertEqual(f.faultCode, 409)
        self.assertIn("different conf", f.faultString)

    def test_a_run_made_before_airflow_answered_an_error_is_found_and_said_made(
            self) -> None:
        """
        Found by review: Airflow (or a proxy in front of it) answered 500 or
        502 after making the run: the trigger failed (exit 5 in a pipeline)
        for a run that existed, and its retry said "already existed, none
        was started".  With a dag_run_id the run is looked for first.
        """
        for status in (500, 502, 504):
            run_id = f"made-{status}"
            self.gw.airflow.fail_after[("POST", "/api/v2/dags/etl_orders/dagRuns")] = (
                status, {"detail": "upstream trouble"})
            d = self.gw.call_d("trigger_dag", "etl_orders", {"a": 1}, {"dag_run_id": run_id})
            self.gw.advance(5)  # a 502 or 504 is retried by the gateway first
            _, _, run = self.successResultOf(d)
            self.assertEqual((run["dag_run_id"], run["created"]), (run_id, True), status)
            # A later try of the same run (the client's, or a CI re-run) made nothing.
            again = self.call("trigger_dag", "etl_orders", {"a": 1}, {"dag_run_id": run_id})
            self.assertFalse(again["created"])
        self.assertEqual(len(self.gw.airflow.runs), 3)

    def test_an_error_with_no_run_made_stays_an_error(self) -> None:
        self.gw.airflow.fail_next[("POST", "/api/v2/dags/etl_orders/dagRuns")] = (
            500, {"detail": "boom"})
        f = self.fault("trigger_dag", "etl_orders", {"a": 1}, {"dag_run_id": "not-made"})
        self.assertEqual(f.faultCode, 502)
        self.assertEqual(self.gw.airflow.runs, {})
        # Without a run id nothing can be looked for: the caller is told it may exist.
        self.gw.airflow.fail_after[("POST", "/api/v2/dags/etl_orders/dagRuns")] = (
            500, {"detail": "boom"})
        f = self.fault("trigger_dag", "etl_orders", {"a": 1})
        self.assertIn("may", f.faultString)

    def test_a_retry_inside_the_gateway_that_meets_its_own_run_says_made(self) -> None:
        """Found by review: a 503 after the run was made, retried into a 409: created false."""
        self.gw.airflow.fail_after[("POST", "/api/v2/dags/etl_orders/dagRuns")] = (
            503, {"detail": "busy"})
        d = self.gw.call_d("trigger_dag", "etl_orders", {"a": 1}, {"dag_run_id": "retried"})
        self.gw.advance(5)  # the gateway's back-off before its own retry
        _, _, run = self.successResultOf(d)
        self.assertEqual((run["dag_run_id"], run["created"]), ("retried", True))
        posts = [r for r in self.gw.airflow.api_requests()
                 if r == ("POST", "/api/v2/dags/etl_orders/dagRuns")]
        self.assertEqual(len(posts), 2)
        self.assertEqual(len(self.gw.airflow.runs), 1)

    def test_two_entries_of_one_multicall_for_one_run_make_it_once(self) -> None:
        """Found by review: they share a request id, and both said created."""
        entry = {"methodName": "trigger_dag",
                 "params": ["etl_orders", {"a": 1}, {"dag_run_id": "mc"}]}
        first, second = self.call("system.multicall", [entry, entry])
        self.assertEqual((first[0]["created"], second[0]["created"]), (True, False))
        self.assertEqual(len(self.gw.airflow.runs), 1)

    def test_a_refusal_by_airflow_is_not_followed_by_a_lookup(self) -> None:
        """Found by review: a 403 from Airflow made nothing, and a GET followed it."""
        self.gw.airflow.fail_next[("POST", "/api/v2/dags/etl_orders/dagRuns")] = (
            403, {"detail": "forbidden"})
        before = len(self.gw.airflow.api_requests())
        f = self.fault("trigger_dag", "etl_orders", {"a": 1}, {"dag_run_id": "no"})
        self.assertEqual(f.faultCode, 502)
        self.assertEqual(self.gw.airflow.api_requests()[before:],
                         [("POST", "/api/v2/dags/etl_orders/dagRuns")])

    def test_the_same_run_id_with_another_logical_date_is_a_conflict(self) -> None:
        """Found by review: only the conf was compared; another date was "already made"."""
        self.call("trigger_dag", "etl_orders", {"a": 1},
                  {"dag_run_id": "ld", "logical_date": "2026-01-01T00:00:00Z"})
        f = self.fault("trigger_dag", "etl_orders", {"a": 1},
                       {"dag_run_id": "ld", "logical_date": "2026-06-30T00:00:00Z"})
        self.assertEqual(f.faultCode, 409)
        self.assertIn("another logical_date", f.faultString)
        # The same instant written in another zone is the same date.
        again = self.call("trigger_dag", "etl_orders", {"a": 1},
                          {"dag_run_id": "ld", "logical_date": "2026-01-01T01:00:00+01:00"})
        self.assertFalse(again["created"])
        # No date asked for: any date will do (the CLI sends none).
        self.assertFalse(self.call("trigger_dag", "etl_orders", {"a": 1},
                                   {"dag_run_id": "ld"})["created"])

    def test_trigger_rejects_bad_options(self) -> None:
        for params, words in [
            (({}, {"logical_date": "yesterday"}), "ISO-8601"),
            (({}, {"logical_date": "2026-01-01T00:00:00"}), "time zone"),
            # Before the year 1, or past 9999, once in UTC: was an internal error.
            (({}, {"logical_date": "0001-01-01T00:00:00+01:00"}), "out of range"),
            (({}, {"logical_date": "9999-12-31T23:59:59-01:00"}), "out of range"),
            (({}, {"note": "x" * 701}), "options.note"),
            (({"a": xmlrpc.client.Binary(b"x")},), "conf may hold only"),
            (({"k": "v" * 70000},), "larger than"),
        ]:
            f = self.fault("trigger_dag", "etl_orders", *params)
            self.assertEqual(f.faultCode, -32602)
            self.assertIn(words, f.faultString)

    def test_wait_dag_run_returns_when_the_run_finishes(self) -> None:
        self.call("trigger_dag", "example_hello", {}, {"dag_run_id": "w1"})
        d = self.gw.call_d("wait_dag_run", "example_hello", "w1", 60)
        self.assertNoResult(d)
        self.gw.airflow.runs[("example_hello", "w1")]["state"] = "success"
        self.gw.advance(2)
        _, _, run = self.successResultOf(d)
        self.assertEqual((run["state"], run["finished"]), ("success", True))

    def test_wait_dag_run_timeout_is_capped_by_config(self) -> None:
        self.call("trigger_dag", "example_hello", {}, {"dag_run_id": "w2"})
        d = self.gw.call_d("wait_dag_run", "example_hello", "w2", 10**6)
        self.gw.advance(300)  # rpc.max_wait_seconds in the test config
        _, _, run = self.successResultOf(d)
        self.assertFalse(run["finished"])

    def test_every_task_instance_of_a_large_run_is_listed(self) -> None:
        """Airflow answers 100 a page: a run of 350 mapped tasks was cut to 100."""
        self.call("trigger_dag", "etl_orders", {}, {"dag_run_id": "big"})
        self.gw.airflow.task_instances[("etl_orders", "big")] = [
            {"task_id": "map", "map_index": n, "state": "success"} for n in range(350)]
        tis = self.call("list_task_instances", "etl_orders", "big")
        self.assertEqual([t["map_index"] for t in tis], list(range(350)))

    def test_a_run_with_more_task_instances_than_are_listed_is_a_clear_fault(self) -> None:
        from txairflowrpc.upstream.client import MAX_TASK_INSTANCES
        self.call("trigger_dag", "etl_orders", {}, {"dag_run_id": "huge"})
        self.gw.airflow.task_instances[("etl_orders", "huge")] = [
            {"task_id": "map", "map_index": n} for n in range(MAX_TASK_INSTANCES + 1)]
        f = self.fault("list_task_instances", "etl_orders", "huge")
        self.assertEqual(f.faultCode, 502)
        self.assertIn(f"at most {MAX_TASK_INSTANCES} are listed", f.faultString)

    def test_a_wait_inside_a_multicall_ends_as_it_would_alone(self) -> None:
        """It was a 504 for the whole multicall at the base deadline (60 s): results lost."""
        d = self.gw.call_d("system.multicall", [
            {"methodName": "trigger_dag", "params": ["example_hello", {}, {"dag_run_id": "m1"}]},
            {"methodName": "wait_dag_run", "params": ["example_hello", "m1", 120]}])
        self.gw.advance(100)
        self.assertNoResult(d)
        self.gw.advance(30)
        _, _, (created, waited) = self.successResultOf(d)
        self.assertTrue(created[0]["created"])
        self.assertFalse(waited[0]["finished"])

    def test_set_state_task_instances_clear_and_log(self) -> None:
        self.call("trigger_dag", "etl_orders", {}, {"dag_run_id": "t1"})
        self.assertEqual(self.call("set_dag_run_state", "etl_orders", "t1", "failed")["state"],
                         "failed")
        f = self.fault("set_dag_run_state", "etl_orders", "t1", "running")
        self.assertEqual(f.faultCode, -32602)
        tis = self.call("list_task_instances", "etl_orders", "t1")
        self.assertEqual(sorted(t["task_id"] for t in tis), ["extract", "load"])
        self.assertNotIn("hostname", tis[0])
        cleared = self.call("clear_task_instances", "etl_orders", "t1", {"task_ids": ["load"]})
        self.assertEqual((cleared["total"], cleared["dry_run"]), (1, False))
        self.assertEqual(self.gw.airflow.bodies[-1],
                         {"dag_run_id": "t1", "dry_run": False, "only_failed": False,
                          "task_ids": ["load"]})
        f = self.fault("get_task_log", "etl_orders", "t1", "extract")
        self.assertEqual(f.faultCode, 404)
        self.assertIn("has not run yet", f.faultString)
        self.gw.airflow.task_instances[("etl_orders", "t1")][0]["try_number"] = 2
        self.gw.airflow.logs[("etl_orders", "t1", "extract", 2)] = {"content": ["line one"]}
        self.assertEqual(self.call("get_task_log", "etl_orders", "t1", "extract"), "line one\n")
        f = self.fault("get_task_log", "etl_orders", "t1", "extract", 0)
        self.assertEqual(f.faultCode, -32602)


class MappedTaskTests(MethodTestCase):
    """A mapped task's instances are told apart by map_index, as Airflow does."""

    def setUp(self) -> None:
        super().setUp()
        self.gw.airflow.runs[("etl_orders", "m1")] = {"dag_id": "etl_orders", "dag_run_id": "m1"}
        self.gw.airflow.task_instances[("etl_orders", "m1")] = [
            {"task_id": "count", "map_index": n, "state": "success", "try_number": n + 1}
            for n in range(3)]
        for n in range(3):
            for t in range(1, n + 2):
                self.gw.airflow.logs[("etl_orders", "m1", "count", t, n)] = {
                    "content": [f"item {n} try {t}"]}

    def test_the_latest_try_of_one_instance(self) -> None:
        self.assertEqual(self.call("get_task_log", "etl_orders", "m1", "count", None, 2),
                         "item 2 try 3\n")
        self.assertIn(("GET", "/api/v2/dags/etl_orders/dagRuns/m1/taskInstances/count/2"),
                      self.gw.airflow.api_requests())
        self.assertEqual(self.gw.airflow.queries[-1]["map_index"], ["2"])

    def test_a_given_try_of_one_instance(self) -> None:
        self.assertEqual(self.call("get_task_log", "etl_orders", "m1", "count", 1, 1),
                         "item 1 try 1\n")

    def test_without_map_index_airflows_answer_is_a_404(self) -> None:
        f = self.fault("get_task_log", "etl_orders", "m1", "count")
        self.assertEqual(f.faultCode, 404)
        self.assertIn("mapped", f.faultString)

    def test_a_map_index_out_of_range_is_invalid(self) -> None:
        for bad in (-1, -5):
            f = self.fault("get_task_log", "etl_orders", "m1", "count", None, bad)
            self.assertEqual(f.faultCode, -32602)
            self.assertIn("map_index must be from 0", f.faultString)
        f = self.fault("get_task_log", "etl_orders", "m1", "count", None, 7)
        self.assertEqual(f.faultCode, 404)
        self.assertIn("task 'count' (map_index 7) in run 'm1'", f.faultString)

    def test_a_try_number_out_of_range_is_invalid(self) -> None:
        """Found by review: a 4,000-digit try_number went to Airflow as a path segment."""
        before = len(self.gw.airflow.requests)
        for bad in (0, -1):
            f = self.fault("get_task_log", "etl_orders", "m1", "count", bad, 0)
            self.assertEqual(f.faultCode, -32602)
            self.assertIn("try_number must be from 1 to 2147483647", f.faultString)
        for wide in (2**31, 2**62):  # past XML-RPC's int: an i8 (the stdlib sends no i8)
            body = xmlrpc.client.dumps(("etl_orders", "m1", "count", 1, 0), "get_task_log")
            answer = self.successResultOf(self.gw.post(
                body.replace("<int>1</int>", f"<i8>{wide}</i8>").encode()))
            text = self.successResultOf(answer.content()).decode()
            self.assertIn("try_number must be from 1 to 2147483647", text)
        self.assertEqual(len(self.gw.airflow.requests), before)


class UnexpectedDocumentTests(MethodTestCase):
    """An answer not shaped as Airflow's API says is a 502, never an internal error."""

    def answer(self, path: str, document: Any) -> None:
        import json
        self.gw.airflow.fail_next[("GET", path)] = (200, json.dumps(document).encode())

    def test_tags_that_are_not_a_list(self) -> None:
        self.answer("/api/v2/dags/etl_orders", {"dag_id": "etl_orders", "tags": 5})
        self.assertEqual(self.fault("get_dag", "etl_orders").faultCode, 502)

    def test_a_try_number_that_is_not_a_number(self) -> None:
        self.gw.airflow.runs[("etl_orders", "r1")] = {"dag_id": "etl_orders", "dag_run_id": "r1"}
        self.answer("/api/v2/dags/etl_orders/dagRuns/r1/taskInstances/load",
                    {"task_id": "load", "try_number": "3"})
        self.assertEqual(self.fault("get_task_log", "etl_orders", "r1", "load").faultCode, 502)

    def test_a_dag_without_its_id_in_a_list(self) -> None:
        from txairflowrpc.identity.principal import Principal
        from txairflowrpc.identity.scopes import Grants, Role, Scope
        self.gw.principal = Principal(
            "p", "client_certificate", roles=("r",),
            grants=Grants((Role("r", (Scope.parse("dags:read:etl_*"),)),)))
        self.answer("/api/v2/dags", {"dags": [{"is_paused": False}], "total_entries": 1})
        self.assertEqual(self.fault("list_dags").faultCode, 502)


class InteropTests(MethodTestCase):
    """What stock clients send and read: nothing in the middle, lossless conf, the right fault."""

    CONF = {"a": [1, None, 2], "x": None, "big": Big(12345678901), "s": "t"}

    def test_nil_conf_keeps_the_run_id(self) -> None:
        run = self.call("trigger_dag", "example_hello", None, {"dag_run_id": "keep-me"})
        self.assertEqual((run["dag_run_id"], run["created"]), ("keep-me", True))
        self.assertEqual(self.gw.airflow.runs[("example_hello", "keep-me")]["conf"], {})

    def test_an_empty_array_is_an_empty_conf(self) -> None:
        run = self.call("trigger_dag", "example_hello", [], {"dag_run_id": "php"})
        self.assertEqual((run["dag_run_id"], run["conf"]), ("php", {}))
        again = self.call("trigger_dag", "example_hello", [], {"dag_run_id": "php"})
        self.assertFalse(again["created"])

    def test_the_conf_limit_counts_utf8_bytes(self) -> None:
        """Found by review: a non-ASCII character counted as its 6-byte JSON escape."""
        fits = {"text": "日本" * 10_000}  # 60,013 bytes of UTF-8 (6 in a \\u escape: 120,013)
        run = self.call("trigger_dag", "example_hello", fits, {"dag_run_id": "kanji"})
        self.assertEqual(run["conf"], fits)
        f = self.fault("trigger_dag", "example_hello", {"text": "日本" * 11_000})
        self.assertEqual(f.faultCode, -32602)
        self.assertIn("conf is larger than 65536 bytes", f.faultString)

    def test_conf_comes_back_without_loss(self) -> None:
        nil_i8 = {"X-Airflowrpc-Extensions": "nil, i8"}
        run = self.call("trigger_dag", "example_hello", self.CONF, {"dag_run_id": "exact"},
                        headers=nil_i8)
        self.assertEqual(run["conf"], self.CONF)
        self.assertEqual(self.gw.airflow.runs[("example_hello", "exact")]["conf"], self.CONF)
        portable = self.call("get_dag_run", "example_hello", "exact")
        self.assertEqual(json.loads(portable["conf_json"]), self.CONF)
        # Without the extensions no element moves and no null is invented:
        # what XML-RPC cannot carry is left out, conf_json has all of it.
        self.assertEqual(portable["conf"], {"big": "12345678901", "s": "t"})
        self.assertEqual(self.call("get_dag_run", "example_hello", "exact", headers=nil_i8)["conf"],
                         self.CONF)

    def test_conf_json_is_ascii_and_exact_where_xml_cannot_carry_a_character(self) -> None:
        """
        Found by review: U+FFFE, U+FFFF and lone surrogates were dropped from
        conf_json (XML cannot carry them), so it was not what Airflow holds.
        """
        conf = {"odd": "a\ufffeb\uffff\ud800c", "emoji": "\U0001F680", "e": "\u00e9"}
        self.call("trigger_dag", "example_hello", {}, {"dag_run_id": "odd"})
        self.gw.airflow.runs[("example_hello", "odd")]["conf"] = conf  # as Airflow may hold it
        run = self.call("get_dag_run", "example_hello", "odd")
        self.assertTrue(run["conf_json"].isascii())
        self.assertEqual(json.loads(run["conf_json"]), conf)

    def test_idempotency_compares_conf_as_json(self) -> None:
        self.call("trigger_dag", "example_hello", self.CONF, {"dag_run_id": "same"})
        again = self.call("trigger_dag", "example_hello", dict(reversed(self.CONF.items())),
                          {"dag_run_id": "same"})
        self.assertFalse(again["created"])
        floats = self.call("trigger_dag", "example_hello", {"n": 1.0}, {"dag_run_id": "num"})
        self.assertTrue(floats["created"])
        self.assertFalse(self.call("trigger_dag", "example_hello", {"n": 1},
                                   {"dag_run_id": "num"})["created"])
        self.assertEqual(self.fault("trigger_dag", "example_hello", {"n": True},
                                    {"dag_run_id": "num"}).faultCode, 409)

    def test_a_logical_date_clash_is_409_naming_the_date(self) -> None:
        when = "2026-01-31T00:00:00Z"
        self.call("trigger_dag", "example_hello", {}, {"dag_run_id": "a", "logical_date": when})
        with_id = self.fault("trigger_dag", "example_hello", {},
                             {"dag_run_id": "b", "logical_date": when})
        without_id = self.fault("trigger_dag", "example_hello", {}, {"logical_date": when})
        for fault in (with_id, without_id):
            self.assertEqual(fault.faultCode, 409)
            self.assertIn(f"already has a run with logical_date {when}", fault.faultString)
            self.assertNotIn("dag_run_id", fault.faultString)


class ProtocolTests(MethodTestCase):
    def test_every_method_has_real_signatures_and_help(self) -> None:
        methods = self.call("system.listMethods")
        for name in ["ping", "whoami", "list_dags", "get_dag", "pause_dag", "unpause_dag",
                     "trigger_dag", "get_dag_run", "list_dag_runs", "wait_dag_run",
                     "set_dag_run_state", "list_task_instances", "clear_task_instances",
                     "get_task_log", "system.multicall", "system.getCapabilities",
                     "system.methodHelp", "system.methodSignature", "system.listMethods"]:
            self.assertIn(name, methods)
        for name in methods:
            signatures = self.call("system.methodSignature", name)
            self.assertIsInstance(signatures, list)
            self.assertTrue(signatures and all(isinstance(s, list) and s for s in signatures))
            help_text = self.call("system.methodHelp", name)
            self.assertTrue(help_text.startswith(name + "("), help_text)
        self.assertEqual(self.call("system.methodSignature", "trigger_dag"),
                         [["struct", "string"], ["struct", "string", "struct"],
                          ["struct", "string", "struct", "struct"]])

    def test_date_parameters_are_signed_as_string_and_as_datetime(self) -> None:
        signatures = self.call("system.methodSignature", "create_backfill")
        both = ("string", "dateTime.iso8601")
        self.assertEqual([s[1:4] for s in signatures if len(s) == 4],
                         [["string", a, b] for a in both for b in both])
        self.assertTrue(all(s[0] == "struct" for s in signatures))

    def test_capabilities_advertise_interop_faults(self) -> None:
        caps = self.call("system.getCapabilities")
        self.assertEqual(caps["faults_interop"]["specVersion"], 20010516)

    def test_unknown_method_and_attribute_walking(self) -> None:
        for name in ["nope", "system.nope", "_client", "ping.__class__", "__init__",
                     "system._spec", "lookupProcedure"]:
            f = self.fault(name)
            self.assertEqual(f.faultCode, -32601, name)

    def test_wrong_arity_and_types_name_the_parameter(self) -> None:
        f = self.fault("get_dag")
        self.assertEqual(f.faultCode, -32602)
        self.assertIn("expects 1 parameter(s) (dag_id), got 0", f.faultString)
        f = self.fault("get_dag", 5)
        self.assertIn("'dag_id' must be a string", f.faultString)
        f = self.fault("wait_dag_run", "a", "b", True)
        self.assertIn("'timeout_seconds' must be an int", f.faultString)
        f = self.fault("ping", "extra")
        self.assertIn("expects 0 parameter(s)", f.faultString)

    def test_multicall_runs_each_call_with_faults_in_place(self) -> None:
        results = self.call("system.multicall", [
            {"methodName": "ping", "params": []},
            {"methodName": "get_dag", "params": ["nope"]},
            {"methodName": "system.multicall", "params": [[]]},
            {"methodName": "get_dag", "params": ["etl_orders"]},
            {"params": []},
        ])
        self.assertEqual(results[0], ["pong"])
        self.assertEqual(results[1]["faultCode"], 404)
        self.assertEqual(results[2]["faultCode"], -32602)
        self.assertIn("cannot be nested", results[2]["faultString"])
        self.assertEqual(results[3][0]["dag_id"], "etl_orders")
        self.assertEqual(results[4]["faultCode"], -32602)

    def test_a_multicall_of_task_logs_answers_at_most_two_capped_logs(self) -> None:
        """Found by review: 50 get_task_log calls made an answer of 50 logs (800 MB at most)."""
        import attrs

        from .helpers import CONFIG
        self.gw = gateway(attrs.evolve(CONFIG, rpc=attrs.evolve(CONFIG.rpc, max_multicall=50)))
        self.gw.airflow.runs[("etl_orders", "r1")] = {"dag_id": "etl_orders", "dag_run_id": "r1"}
        self.gw.airflow.task_instances[("etl_orders", "r1")] = [
            {"task_id": "extract", "state": "failed", "try_number": 1, "map_index": -1}]
        line = "x" * 1023
        self.gw.airflow.logs[("etl_orders", "r1", "extract", 1)] = {
            "content": [line] * 4096}  # 4 MiB
        calls = [{"methodName": "get_task_log", "params": ["etl_orders", "r1", "extract", 1]}]
        results = self.call("system.multicall", calls * 10)
        logs = [r for r in results if isinstance(r, list)]
        self.assertEqual(len(logs), 8)  # 8 x 4 MiB fit in 32 MiB and 128 KiB, the ninth not
        self.assertEqual({r["faultCode"] for r in results[8:]}, {-32602})
        self.assertIn("make this call on its own", results[8]["faultString"])
        self.assertEqual(len(logs[0][0]), 4096 * 1024)

    def test_multicall_is_capped(self) -> None:
        f = self.fault("system.multicall", [{"methodName": "ping", "params": []}] * 6)
        self.assertEqual(f.faultCode, -32602)
        self.assertIn("at most 5 calls", f.faultString)

    def test_internal_errors_hide_their_text(self) -> None:
        self.gw.airflow.fail_next[("GET", "/api/v2/dags/etl_orders")] = (200, [1, 2])
        f = self.fault("get_dag", "etl_orders")
        self.assertEqual(f.faultCode, 502)
        boom = RuntimeError("secret=hunter2")

        def explode(*a: Any) -> None:
            raise boom

        site_methods = self.gw  # the dispatcher is reachable only through the site
        del site_methods
        from txairflowrpc.upstream import client as airflow

        original = airflow.shape_dag
        airflow.shape_dag = explode
        try:
            f = self.fault("get_dag", "etl_orders")
        finally:
            airflow.shape_dag = original
        self.assertEqual(f.faultCode, -32603)
        self.assertNotIn("hunter2", f.faultString)
        self.assertIn("request id", f.faultString)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


def test_a_run_belongs_to_the_whole_name_not_its_first_200_characters() -> None:
    """Found by review: two OIDC subjects sharing 200 characters were one run's owner."""
    from txairflowrpc.core.spec import CallContext
    from txairflowrpc.gate.methods import _triggered_by, attribution

    prefix = "corp/" + "a" * 250
    owner = CallContext(principal=type("P", (), {"name": prefix + "-owner"})(),
                        request_id="0123456789abcdef")
    other = CallContext(principal=type("P", (), {"name": prefix + "-other"})(),
                        request_id="fedcba9876543210")
    run = {"note": attribution(owner, None)}
    assert _triggered_by(run, owner)
    assert not _triggered_by(run, other)


def test_a_run_belongs_to_the_whole_line_not_a_name_it_starts_with() -> None:
    """
    Found by review: an OIDC subject may hold " (request ", and a note's
    first line was only checked to start like the caller's: runs of
    ``corp/x (request y`` counted as ``corp/x``'s own.
    """
    from txairflowrpc.core.spec import CallContext
    from txairflowrpc.gate.methods import _triggered_by, attribution

    def caller(name: str) -> CallContext:
        return CallContext(principal=type("P", (), {"name": name})(),
                           request_id="0123456789abcdef")

    for name in ("corp/x (request y", "corp/x (request 0123456789abcdef)",
                 "corp/x (request 0123456789abcdef) "):
        run = {"note": attribution(caller(name), "their note")}
        assert _triggered_by(run, caller(name)), name
        assert not _triggered_by(run, caller("corp/x")), name
    assert _triggered_by({"note": attribution(caller("corp/x"), None)}, caller("corp/x"))


def test_the_note_airflow_gets_fits_its_1000_characters_whatever_the_name() -> None:
    """Found by review: a 320-character OIDC name and a 700-character note made 1,083 (a 500)."""
    from txairflowrpc.core.spec import CallContext
    from txairflowrpc.gate.methods import (
        AIRFLOW_NOTE_LENGTH, MAX_NOTE_LENGTH, _triggered_by, attribution,
    )

    caller = CallContext(principal=type("P", (), {"name": "corp/" + "s" * 255})(),
                         request_id="0123456789abcdef")
    note = attribution(caller, "n" * MAX_NOTE_LENGTH)
    assert len(note) == AIRFLOW_NOTE_LENGTH and note.endswith("n\u2026")
    assert _triggered_by({"note": note}, caller)
    short = CallContext(principal=type("P", (), {"name": "ci-bot"})(), request_id="r")
    assert attribution(short, "n" * MAX_NOTE_LENGTH).endswith("\n\n" + "n" * MAX_NOTE_LENGTH)
