"""
Backfills through the whole gateway site, in memory, against the fake
Airflow's /backfills (a daily schedule for etl_orders, none for
example_hello, and Airflow 3's refusals in its own words).
"""

from __future__ import annotations

import json
import tempfile
import xmlrpc.client
from typing import Any

import attrs
from treq.testing import RequestTraversalAgent, StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from txairflowrpc.identity.principal import Principal
from txairflowrpc.identity.scopes import Grants, Role, Scope
from txairflowrpc.service.tap import build_site

from ..fakes import NOW as FAKE_NOW
from ..fakes import FakeAirflow
from .helpers import CONFIG, DIGEST_KEY, AuthenticatingRoot, Gateway, audit_log, gateway
from .test_accounts import records
from .test_methods import MethodTestCase

DAYS = ("2026-01-01T00:00:00Z", "2026-01-03T00:00:00Z")  # three daily runs


def _probe(body: Any) -> bool:
    """A dry run of a range's first window: it ends a microsecond short of it."""
    return isinstance(body, dict) and str(body.get("to_date", "")).endswith(".999999Z")


class BackfillTests(MethodTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.gw.clock.advance(FAKE_NOW)  # backfills are of past dates: the fake's now

    def posts(self) -> list[str]:
        """What was asked of Airflow to change or count, the range's probes left out."""
        airflow = self.gw.airflow
        return [p for (m, p), body in zip(airflow.requests, airflow.bodies)
                if p.startswith("/api/v2/") and m in ("POST", "PUT") and not _probe(body)]

    def body(self, path: str) -> Any:
        """The body of the first request to ``path`` that is not a probe."""
        airflow = self.gw.airflow
        return next(b for (m, p), b in zip(airflow.requests, airflow.bodies)
                    if p == path and not _probe(b))

    def probes(self) -> list[dict[str, Any]]:
        """The dry runs of the first hour, day or week of a range (see `_walk_bounded`)."""
        return [b for b in self.gw.airflow.bodies if _probe(b)]

    def test_dry_run_counts_the_runs_and_creates_nothing(self) -> None:
        answer = self.call("create_backfill", "etl_orders", *DAYS, {}, {"dry_run": True})
        self.assertEqual(answer, {
            "dag_id": "etl_orders", "runs": 3, "dry_run": True, "max_runs": 1000,
            "logical_dates": ["2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z",
                              "2026-01-03T00:00:00Z"]})
        self.assertEqual(self.posts(), ["/api/v2/backfills/dry_run"])
        self.assertEqual(self.gw.airflow.backfills, {})

    def test_create_then_read_list_pause_unpause_and_cancel(self) -> None:
        created = self.call("create_backfill", "etl_orders", DAYS[0], "2026-01-03T12:00:00+02:00",
                            {"day": "x"}, {"max_active_runs": 2, "reprocess_behavior": "failed"})
        self.assertEqual((created["dag_id"], created["runs"], created["is_paused"],
                          created["completed"], created["dag_run_conf"]),
                         ("etl_orders", 3, False, False, {"day": "x"}))
        dry = self.body("/api/v2/backfills/dry_run")
        self.assertEqual(dry, {
            "dag_id": "etl_orders", "from_date": DAYS[0], "to_date": "2026-01-03T10:00:00Z",
            "run_backwards": False, "reprocess_behavior": "failed", "dag_run_conf": {"day": "x"}})
        body = self.body("/api/v2/backfills")
        self.assertEqual(body, {**dry, "max_active_runs": 2})
        backfill_id = created["id"]
        self.assertEqual(self.call("get_backfill", "etl_orders", backfill_id)["id"], backfill_id)
        listed = self.call("list_backfills", "etl_orders")
        self.assertEqual(([b["id"] for b in listed["backfills"]], listed["total"]),
                         ([backfill_id], 1))
        self.assertTrue(self.call("pause_backfill", "etl_orders", backfill_id)["is_paused"])
        self.assertFalse(self.call("unpause_backfill", "etl_orders", backfill_id)["is_paused"])
        cancelled = self.call("cancel_backfill", "etl_orders", backfill_id)
        self.assertTrue(cancelled["completed"])
        f = self.fault("cancel_backfill", "etl_orders", backfill_id)
        self.assertEqual((f.faultCode, f.faultString),
                         (409, f"conflict: backfill {backfill_id} has already completed"))

    def test_its_runs_listed_by_run_type_and_logical_date(self) -> None:
        self.call("create_backfill", "etl_orders", *DAYS)
        self.call("trigger_dag", "etl_orders", {}, {"logical_date": "2026-01-02T12:00:00Z"})
        runs = self.call("list_dag_runs", "etl_orders", {
            "run_type": "backfill", "logical_date_from": "2026-01-02T00:00:00+00:00",
            "logical_date_to": DAYS[1]})
        self.assertEqual(sorted(r["logical_date"] for r in runs["dag_runs"]),
                         ["2026-01-02T00:00:00Z", "2026-01-03T00:00:00Z"])
        self.assertEqual(self.gw.airflow.queries[-1], {
            "limit": ["25"], "offset": ["0"], "order_by": ["-run_after"],
            "run_type": ["backfill"], "logical_date_gte": ["2026-01-02T00:00:00Z"],
            "logical_date_lte": ["2026-01-03T00:00:00Z"]})
        # Each value goes once, however often it was given (found by review).
        self.call("list_dag_runs", "etl_orders", {"run_type": ["backfill"] * 100 + ["manual"],
                                                  "state": ["failed", "success"] * 500})
        self.assertEqual((self.gw.airflow.queries[-1]["run_type"],
                          self.gw.airflow.queries[-1]["state"]),
                         (["backfill", "manual"], ["failed", "success"]))
        as_datetime = self.call("list_dag_runs", "etl_orders", {
            "run_type": "backfill",
            "logical_date_from": xmlrpc.client.DateTime("20260102T00:00:00")})
        self.assertEqual(as_datetime["total"], 2)
        both = self.call("list_dag_runs", "etl_orders", {"run_type": ["backfill", "manual"]})
        self.assertEqual(both["total"], 4)
        for filters, words in [({"run_type": "nightly"}, "filters.run_type must be among"),
                               ({"run_type": [1]}, "filters.run_type must be among"),
                               ({"logical_date_from": "yesterday"}, "filters.logical_date_from"),
                               ({"logical_date_to": "2026-01-01"}, "must carry a time zone")]:
            f = self.fault("list_dag_runs", "etl_orders", filters)
            self.assertEqual(f.faultCode, -32602, filters)
            self.assertIn(words, f.faultString)

    def test_a_second_backfill_of_a_dag_is_a_conflict_in_the_gateways_words(self) -> None:
        self.call("create_backfill", "etl_orders", *DAYS)
        f = self.fault("create_backfill", "etl_orders", *DAYS)
        self.assertEqual(f.faultCode, 409)
        self.assertIn("already has a backfill that has not completed", f.faultString)
        self.assertNotIn("There is already", f.faultString)

    def test_airflows_refusals_in_the_gateways_words(self) -> None:
        for args, words in [
            (("example_hello", *DAYS), "'example_hello' has no periodic schedule"),
            # Within the hour the gateway lets a range end past its now: Airflow's.
            (("etl_orders", "2026-11-27T00:10:00Z", "2026-11-27T00:50:00Z"),
             "from_date and to_date are both in the future"),
            (("etl_orders", "2026-01-01T01:00:00Z", "2026-01-01T02:00:00Z"),
             ("the range holds no run of DAG 'etl_orders' to create: none is scheduled "
              "there, or each date has a run already")),
        ]:
            f = self.fault("create_backfill", *args)
            self.assertEqual(f.faultCode, -32602, args)
            self.assertIn(words, f.faultString)
            self.assertNotIn("non-periodic", f.faultString)
        self.assertNotIn("/api/v2/backfills", self.posts())

    def test_bad_arguments_never_reach_airflow(self) -> None:
        for args, words in [
            # Found by review: Airflow walks every interval up to to_date, past or not.
            (("etl_orders", DAYS[0], "2036-01-01T00:00:00Z"),
             "to_date is in the future: a backfill runs the dates that have passed (end the "
             "range by 2026-11-27T01:00Z, an hour from now)"),
            (("etl_orders", DAYS[0], "2026-11-27T01:00:01Z"), "to_date is in the future"),
            (("etl_orders", DAYS[1], DAYS[0]), "from_date is after to_date"),
            (("etl_orders", "2026-01-01T00:00:00", DAYS[1]), "from_date must carry a time zone"),
            (("etl_orders", DAYS[0], "tomorrow"), "to_date must be an ISO-8601 time"),
            (("etl/../x", *DAYS), "dag_id may contain only"),
            (("etl_orders", *DAYS, {}, {"reprocess_behavior": "all"}),
             "options.reprocess_behavior must be one of none, failed, completed"),
            (("etl_orders", *DAYS, {}, {"max_active_runs": 0}), "options.max_active_runs"),
            (("etl_orders", *DAYS, {}, {"run_backwards": "yes"}), "options.run_backwards"),
            (("etl_orders", *DAYS, {"x": "y" * 70_000}), "conf"),
        ]:
            f = self.fault("create_backfill", *args)
            self.assertEqual(f.faultCode, -32602, args)
            self.assertIn(words, f.faultString)
        f = self.fault("get_backfill", "etl_orders", -1)
        self.assertIn("backfill_id must be from 0", f.faultString)
        self.assertEqual(self.gw.airflow.api_requests(), [])

    def test_a_range_over_max_backfill_days_never_reaches_airflow(self) -> None:
        """Found by review: a range from the year 1 made Airflow walk 739,000 intervals."""
        for first, last in (("0001-01-01T00:00:00Z", "2026-01-01T00:00:00Z"),
                            ("2016-01-01T00:00:00Z", "2026-01-08T00:00:01Z")):
            f = self.fault("create_backfill", "etl_orders", first, last, {}, {"dry_run": True})
            self.assertEqual(f.faultCode, -32602)
            self.assertIn("the range spans more than 3660 days (the gateway's "
                          "rpc.max_backfill_days): Airflow walks each of its intervals; split it",
                          f.faultString)
        self.assertEqual(self.posts(), [])
        # 3660 days exactly is within it (a daily DAG: 3661 dates, counted).
        answer = self.call("create_backfill", "etl_orders", "2016-01-01T00:00:00Z",
                           "2026-01-08T00:00:00Z", {}, {"dry_run": True})
        self.assertEqual(answer["runs"], 3661)
        self.assertEqual(self.posts(), ["/api/v2/backfills/dry_run"])
        self.assertEqual(len(self.probes()), 3)  # its first hour, day and week first

    def test_a_range_of_more_intervals_than_it_may_walk_is_refused(self) -> None:
        """
        Found by review: Airflow walks every interval of the range (a query
        each); a dense schedule over years is millions.  The intervals of the
        range's first hour, day, then week tell how many it holds.
        """
        long = ("2025-01-01T00:00:00Z", "2026-01-01T00:00:00Z")  # a daily DAG: 366 dates
        answer = self.call("create_backfill", "etl_orders", *long, {}, {"dry_run": True})
        self.assertEqual(answer["runs"], 366)
        hour, day, week = self.probes()
        for probe, end in ((hour, "2025-01-01T00:59:59.999999Z"),
                           (day, "2025-01-01T23:59:59.999999Z"),
                           (week, "2025-01-07T23:59:59.999999Z")):
            self.assertEqual((probe["from_date"], probe["to_date"],
                              probe["reprocess_behavior"], probe["run_backwards"]),
                             ("2025-01-01T00:00:00Z", end, "completed", False))
        counted = self.body("/api/v2/backfills/dry_run")
        self.assertEqual((counted["to_date"], counted["reprocess_behavior"]),
                         ("2026-01-01T00:00:00Z", "none"))

        def every_minute(n: int) -> None:  # as if the DAG ran every minute
            self.gw.airflow.fail_next[("POST", "/api/v2/backfills/dry_run")] = (200, {
                "backfills": [{"logical_date": "2025-01-01T00:00:00Z", "partition_key": None,
                               "partition_date": None}] * n, "total_entries": n})

        every_minute(60)  # its first hour
        f = self.fault("create_backfill", "etl_orders", *long)
        self.assertEqual(f.faultCode, -32602)
        self.assertIn("the range holds about 516840 intervals of the schedule of DAG "
                      "'etl_orders' (60 in its first hour), each of which Airflow walks to "
                      "count the runs; the gateway allows 4000 (4 x rpc.max_backfill_runs): "
                      "split the range", f.faultString)
        self.assertEqual(len(self.probes()), 4)  # that hour only: the range was never asked
        # Three days, every minute: refused by the first hour too (two would be 2,832).
        every_minute(60)
        f = self.fault("create_backfill", "etl_orders", "2025-03-01T00:00:00Z",
                       "2025-03-04T00:00:00Z")
        self.assertIn("about 4248 intervals", f.faultString)

    def test_runs_under_way_count_as_the_intervals_they_are(self) -> None:
        """
        Found by review: Airflow walks a queued or running run's interval but
        never counts it, whatever the reprocess_behavior: a backfill under way
        hid the range's first week from the probes.  Here its first hour holds
        seven runs every ten minutes, all queued: the probe counts them.
        """
        for day in range(1, 8):  # a week of days, each with runs queued every ten minutes
            for minute in range(0, 60, 10):
                self.gw.airflow.runs[("etl_orders", f"q{day}-{minute}")] = {
                    "dag_id": "etl_orders", "dag_run_id": f"q{day}-{minute}",
                    "state": "queued", "run_type": "backfill",
                    "logical_date": f"2025-01-0{day}T00:{minute:02}:00Z"}
        f = self.fault("create_backfill", "etl_orders", "2025-01-01T00:00:00Z",
                       "2026-01-01T00:00:00Z", {}, {"dry_run": True})
        self.assertIn("intervals of the schedule of DAG 'etl_orders' (7 in its first hour)",
                      f.faultString)
        asked = [q for q in self.gw.airflow.queries if q.get("state")]
        self.assertEqual(asked[0], {"limit": ["1"], "offset": ["0"], "order_by": ["-run_after"],
                                    "state": ["queued", "running"],
                                    "logical_date_gte": ["2025-01-01T00:00:00Z"],
                                    "logical_date_lte": ["2025-01-01T00:59:59.999999Z"]})

    def test_a_backfill_of_another_dag_is_not_found_and_left_alone(self) -> None:
        backfill_id = self.call("create_backfill", "etl_orders", *DAYS)["id"]
        for method in ("get_backfill", "pause_backfill", "cancel_backfill"):
            f = self.fault(method, "example_hello", backfill_id)
            self.assertEqual((f.faultCode, f.faultString),
                             (404, f"not found: backfill {backfill_id} of DAG 'example_hello'"))
        self.assertEqual([p for p in self.posts() if "/pause" in p or "/cancel" in p], [])
        self.assertIsNone(self.gw.airflow.backfills[backfill_id]["completed_at"])
        f = self.fault("get_backfill", "etl_orders", 999)
        self.assertEqual(f.faultString, "not found: backfill 999 of DAG 'etl_orders'")

    def test_scopes_deny_by_default(self) -> None:
        self.gw.principal = Principal(
            "ci", "client_certificate", roles=("r",), grants=Grants((Role("r", (
                Scope.parse("runs:trigger"), Scope.parse("runs:read"),
                Scope.parse("runs:backfill:etl_*"))),)))
        f = self.fault("create_backfill", "example_hello", *DAYS)
        self.assertEqual(f.faultCode, 403)
        self.assertIn("runs:backfill:example_hello", f.faultString)
        self.assertEqual(self.call("create_backfill", "etl_orders", *DAYS)["runs"], 3)
        self.gw.principal = Principal(
            "ci", "client_certificate", roles=("r",),
            grants=Grants((Role("r", (Scope.parse("runs:trigger"), Scope.parse("runs:read"))),)))
        for method, args in [("create_backfill", ("etl_orders", *DAYS)),
                             ("cancel_backfill", ("etl_orders", 1))]:
            self.assertEqual(self.fault(method, *args).faultCode, 403, method)
        self.assertEqual(self.call("get_backfill", "etl_orders", 1)["id"], 1)

    def test_a_range_over_the_gateways_bound_creates_nothing(self) -> None:
        self.gw = gateway(attrs.evolve(CONFIG, rpc=attrs.evolve(CONFIG.rpc, max_backfill_runs=2)))
        self.gw.clock.advance(FAKE_NOW)
        f = self.fault("create_backfill", "etl_orders", *DAYS)
        self.assertEqual(f.faultCode, -32602)
        self.assertIn("would create 3 runs of DAG 'etl_orders', more than the gateway allows "
                      "in one (2)", f.faultString)
        self.assertEqual(self.posts(), ["/api/v2/backfills/dry_run"])
        dry = self.call("create_backfill", "etl_orders", *DAYS, {}, {"dry_run": True})
        self.assertEqual((dry["runs"], len(dry["logical_dates"]), dry["max_runs"]), (3, 2, 2))

    def test_reprocessing_existing_runs_needs_tasks_clear_too(self) -> None:
        """
        With reprocess_behavior failed or completed Airflow clears the range's
        existing runs (anyone's) and gives them the backfill's conf.
        """
        self.gw.principal = Principal(
            "ci", "client_certificate", roles=("r",),
            grants=Grants((Role("r", (Scope.parse("runs:backfill:etl_*"),)),)))
        for reprocess in ("failed", "completed", "FAILED", 1):
            f = self.fault("create_backfill", "etl_orders", *DAYS, {},
                           {"reprocess_behavior": reprocess})
            self.assertEqual((f.faultCode, f.faultString), (403, (
                "forbidden: create_backfill: options.reprocess_behavior other than the "
                "default requires scope tasks:clear:etl_orders")))
        self.assertEqual(self.gw.airflow.api_requests(), [])
        self.assertEqual(self.call("create_backfill", "etl_orders", *DAYS, {},
                                   {"reprocess_behavior": "none"})["runs"], 3)
        self.gw.principal = Principal(
            "ci", "client_certificate", roles=("r",), grants=Grants((Role("r", (
                Scope.parse("runs:backfill:etl_*"), Scope.parse("tasks:clear:etl_*"))),)))
        dry = self.call("create_backfill", "etl_orders", *DAYS, {},
                        {"reprocess_behavior": "failed", "dry_run": True})
        self.assertEqual(dry["runs"], 3)

    def test_a_reprocess_refused_is_recorded_as_denied(self) -> None:
        self.gw.principal = Principal(
            "ci", "client_certificate", roles=("r",),
            grants=Grants((Role("r", (Scope.parse("runs:backfill"),)),)))
        self.fault("create_backfill", "etl_orders", *DAYS, {}, {"reprocess_behavior": "failed"})
        trail = records(self.gw)
        mine = [(r["kind"], r["decision"]) for r in trail if r.get("method") == "create_backfill"]
        self.assertEqual(mine, [("call", "denied")])

    def test_a_dry_run_that_counts_nothing_creates_nothing(self) -> None:
        """Airflow would create an empty backfill, blocking the DAG's next one."""
        self.gw.airflow.fail_next[("POST", "/api/v2/backfills/dry_run")] = (
            200, {"backfills": [], "total_entries": 0})
        # A range of an hour: counted at once (a longer one's first hour is probed first).
        f = self.fault("create_backfill", "etl_orders", DAYS[0], "2026-01-01T01:00:00Z")
        self.assertIn("each date has a run already", f.faultString)
        self.assertEqual(self.posts(), ["/api/v2/backfills/dry_run"])

    def test_the_dry_run_is_asked_once_and_a_huge_one_is_split_the_range(self) -> None:
        self.gw.airflow.hang.append("/api/v2/backfills/dry_run")
        d = self.gw.call_d("create_backfill", "etl_orders", "2017-01-01T00:00:00Z", DAYS[1])
        for _ in range(100):
            self.gw.advance(1)
        _, _, result = self.successResultOf(d)
        self.assertEqual(result.faultCode, 504)
        # The first hour's probe hung: Airflow walks on alone; the range was never asked.
        self.assertEqual((self.posts(), len(self.probes())), ([], 1))
        self.gw = gateway()
        self.gw.clock.advance(FAKE_NOW)
        entry = {"logical_date": "2026-01-01T00:00:00Z", "partition_key": None,
                 "partition_date": None}
        n = 17 * 1024 * 1024 // len(json.dumps(entry)) + 1
        self.gw.airflow.fail_next[("POST", "/api/v2/backfills/dry_run")] = (
            200, {"backfills": [entry] * n, "total_entries": n})
        # A range of an hour (not probed): the range's own dry run answers too much.
        f = self.fault("create_backfill", "etl_orders", DAYS[0], "2026-01-01T01:00:00Z")
        self.assertEqual(self.probes(), [])
        self.assertEqual((f.faultCode, f.faultString), (-32602, (
            "invalid params for create_backfill: the range holds too many runs of DAG "
            "'etl_orders' to list: split it")))

    def test_a_cancel_is_sent_once(self) -> None:
        """Had a lost cancel taken, a retry would answer "already completed"."""
        backfill_id = self.call("create_backfill", "etl_orders", *DAYS)["id"]
        self.gw.airflow.fail_next[("PUT", f"/api/v2/backfills/{backfill_id}/cancel")] = (
            502, {"detail": "bad gateway"})
        d = self.gw.call_d("cancel_backfill", "etl_orders", backfill_id)
        for _ in range(10):
            self.gw.advance(1)
        _, _, result = self.successResultOf(d)
        self.assertEqual(result.faultCode, 502)
        self.assertEqual(self.posts().count(f"/api/v2/backfills/{backfill_id}/cancel"), 1)
        self.gw.airflow.fail_next[("PUT", f"/api/v2/backfills/{backfill_id}/pause")] = (
            503, {"detail": "busy"})
        d = self.gw.call_d("pause_backfill", "etl_orders", backfill_id)
        for _ in range(10):
            self.gw.advance(1)
        self.assertTrue(self.successResultOf(d)[2]["is_paused"])  # a pause is retried

    def test_a_refused_create_leaves_shared_reads_alone(self) -> None:
        self.gw = gateway(attrs.evolve(CONFIG, rpc=attrs.evolve(CONFIG.rpc,
                                                                read_cache_seconds=60)))
        self.gw.clock.advance(FAKE_NOW)
        self.call("create_backfill", "etl_orders", *DAYS)
        self.call("get_dag", "etl_orders")
        self.assertEqual(self.fault("create_backfill", "etl_orders", *DAYS).faultCode, 409)
        self.call("get_dag", "etl_orders")
        gets = self.gw.airflow.api_requests().count(("GET", "/api/v2/dags/etl_orders"))
        self.assertEqual(gets, 1)

    def test_a_conf_refused_by_the_dags_params_whatever_words_it_holds(self) -> None:
        self.gw.airflow.fail_next[("POST", "/api/v2/backfills/dry_run")] = (
            422, {"detail": "Invalid input for param day: 'future dates' is not of type "
                            "'integer'"})
        f = self.fault("create_backfill", "etl_orders", *DAYS, {"day": "future dates"})
        self.assertEqual(f.faultString, "invalid params for create_backfill: the conf does "
                                        "not fit the params of DAG 'etl_orders'")

    def test_dates_may_be_xmlrpc_datetimes_taken_as_utc(self) -> None:
        """Found by review: trigger_dag and list_dag_runs took a dateTime, this did not."""
        first, last = (xmlrpc.client.DateTime(d) for d in ("20260101T00:00:00",
                                                            "20260103T00:00:00"))
        answer = self.call("create_backfill", "etl_orders", first, last, {}, {"dry_run": True})
        self.assertEqual(answer["runs"], 3)
        dry = self.body("/api/v2/backfills/dry_run")
        self.assertEqual((dry["from_date"], dry["to_date"]), DAYS)
        (record,) = [r for r in records(self.gw) if r.get("method") == "create_backfill"]
        self.assertEqual((record["args"]["from_date"], record["args"]["to_date"]),
                         ("20260101T00:00:00", "20260103T00:00:00"))
        # A dateTime element can hold any text: refused, and not recorded as sent.
        odd = xmlrpc.client.DateTime()
        odd.decode("password=hunter2")
        f = self.fault("create_backfill", "etl_orders", odd, last)
        self.assertEqual(f.faultCode, -32602)
        self.assertIn("from_date is not a valid dateTime", f.faultString)
        refused = [r for r in records(self.gw) if r.get("method") == "create_backfill"][-1]
        self.assertEqual(set(refused["args"]["from_date"]), {"hmac_sha256", "size"})
        self.assertNotIn("hunter2", json.dumps(records(self.gw)))

    def test_the_audit_trail_names_the_range_and_the_backfill_made(self) -> None:
        backfill_id = self.call("create_backfill", "etl_orders", DAYS[0],
                                "2026-01-03T02:00:00+02:00")["id"]
        run = self.call("trigger_dag", "etl_orders", {})  # Airflow names the run
        trail = records(self.gw)
        intent, call = [r for r in trail if r.get("method") == "create_backfill"]
        self.assertEqual((intent["kind"], call["kind"]), ("intent", "call"))
        for record in (intent, call):
            self.assertEqual((record["args"]["from_date"], record["args"]["to_date"]),
                             (DAYS[0], "2026-01-03T02:00:00+02:00"))
        self.assertEqual(call["created"], {"backfill_id": backfill_id})
        self.fault("create_backfill", "etl_orders", "password=hunter2", DAYS[1])
        trail = records(self.gw)
        refused = [r for r in trail if r.get("method") == "create_backfill"][-1]
        self.assertEqual(set(refused["args"]["from_date"]), {"hmac_sha256", "size"})
        self.assertEqual(refused["args"]["to_date"], DAYS[1])
        # Kept option members are recorded as given only when they are one word.
        self.fault("create_backfill", "etl_orders", *DAYS, {},
                   {"reprocess_behavior": "password=hunter2 secret"})
        self.fault("list_dag_runs", "etl_orders", {"logical_date_from": "my secret words",
                                                   "run_type": "backfill"})
        trail = records(self.gw)
        backfill, runs = trail[-2]["args"], trail[-1]["args"]
        self.assertEqual(set(backfill["options"]["reprocess_behavior"]), {"hmac_sha256", "size"})
        self.assertEqual(set(runs["filters"]["logical_date_from"]), {"hmac_sha256", "size"})
        self.assertEqual(runs["filters"]["run_type"], "backfill")
        self.assertNotIn("created", intent)
        [triggered] = [r for r in trail if r.get("method") == "trigger_dag"
                       and r["kind"] == "call"]
        self.assertEqual(triggered["created"], {"dag_run_id": run["dag_run_id"]})


class ReloadTests(SynchronousTestCase):
    def test_a_reload_puts_a_new_max_backfill_runs_into_force(self) -> None:
        clock = Clock()
        clock.advance(FAKE_NOW)
        airflow = FakeAirflow()
        audit = audit_log(tempfile.mkdtemp(), clock)
        holder: list[Gateway] = []
        parts = build_site(CONFIG, clock, RequestTraversalAgent(airflow), audit,
                           authenticate=lambda r: holder[0].principal, digest_key=DIGEST_KEY)
        gw = Gateway(clock, airflow, StubTreq(AuthenticatingRoot(parts.site)), audit, parts.site)
        holder.append(gw)
        parts.apply(attrs.evolve(CONFIG, rpc=attrs.evolve(CONFIG.rpc, max_backfill_runs=2)))
        _, _, result = self.successResultOf(gw.call_d("create_backfill", "etl_orders", *DAYS))
        self.assertIsInstance(result, xmlrpc.client.Fault)
        self.assertIn("would create 3 runs of DAG 'etl_orders', more than the gateway allows "
                      "in one (2)", result.faultString)
        parts.apply(attrs.evolve(CONFIG, rpc=attrs.evolve(CONFIG.rpc, max_backfill_days=1)))
        _, _, result = self.successResultOf(gw.call_d("create_backfill", "etl_orders", *DAYS))
        self.assertIn("the range spans more than 1 days", result.faultString)
