"""
Backfills through the whole gateway site, in memory, against the fake
Airflow's /backfills (a daily schedule for etl_orders, none for
example_hello, and Airflow 3's refusals in its own words).
"""

from __future__ import annotations

import attrs

from txairflowrpc.identity.principal import Principal
from txairflowrpc.identity.scopes import Grants, Role, Scope

from .helpers import CONFIG, gateway
from .test_methods import MethodTestCase

DAYS = ("2026-01-01T00:00:00Z", "2026-01-03T00:00:00Z")  # three daily runs


class BackfillTests(MethodTestCase):
    def posts(self) -> list[str]:
        return [p for m, p in self.gw.airflow.api_requests() if m in ("POST", "PUT")]

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
        body = self.gw.airflow.bodies[self.gw.airflow.requests.index(("POST", "/api/v2/backfills"))]
        self.assertEqual(body, {
            "dag_id": "etl_orders", "from_date": DAYS[0], "to_date": "2026-01-03T10:00:00Z",
            "run_backwards": False, "reprocess_behavior": "failed", "dag_run_conf": {"day": "x"},
            "max_active_runs": 2})
        backfill_id = created["id"]
        self.assertEqual(self.call("get_backfill", "etl_orders", backfill_id)["id"], backfill_id)
        listed = self.call("list_backfills", "etl_orders")
        self.assertEqual(([b["id"] for b in listed["backfills"]], listed["total"]), ([backfill_id], 1))
        self.assertTrue(self.call("pause_backfill", "etl_orders", backfill_id)["is_paused"])
        self.assertFalse(self.call("unpause_backfill", "etl_orders", backfill_id)["is_paused"])
        cancelled = self.call("cancel_backfill", "etl_orders", backfill_id)
        self.assertTrue(cancelled["completed"])
        f = self.fault("cancel_backfill", "etl_orders", backfill_id)
        self.assertEqual((f.faultCode, f.faultString),
                         (409, f"conflict: backfill {backfill_id} has already completed"))

    def test_a_second_backfill_of_a_dag_is_a_conflict_in_the_gateways_words(self) -> None:
        self.call("create_backfill", "etl_orders", *DAYS)
        f = self.fault("create_backfill", "etl_orders", *DAYS)
        self.assertEqual(f.faultCode, 409)
        self.assertIn("already has a backfill that has not completed", f.faultString)
        self.assertNotIn("There is already", f.faultString)

    def test_airflows_refusals_in_the_gateways_words(self) -> None:
        for args, words in [
            (("example_hello", *DAYS), "'example_hello' has no periodic schedule"),
            (("etl_orders", "2027-01-01T00:00:00Z", "2027-01-02T00:00:00Z"),
             "from_date and to_date are both in the future"),
            (("etl_orders", "2026-01-01T01:00:00Z", "2026-01-01T02:00:00Z"),
             "the range holds no run of DAG 'etl_orders' to create"),
        ]:
            f = self.fault("create_backfill", *args)
            self.assertEqual(f.faultCode, -32602, args)
            self.assertIn(words, f.faultString)
            self.assertNotIn("non-periodic", f.faultString)
        # Only the empty range is Airflow's to refuse (a dry run counts only
        # the runs it would create: none also when each has run).
        self.assertEqual(self.posts().count("/api/v2/backfills"), 1)
        self.assertEqual(self.gw.airflow.backfills, {})

    def test_bad_arguments_never_reach_airflow(self) -> None:
        for args, words in [
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
        f = self.fault("create_backfill", "etl_orders", *DAYS)
        self.assertEqual(f.faultCode, -32602)
        self.assertIn("would create 3 runs of DAG 'etl_orders', more than the gateway allows "
                      "in one (2)", f.faultString)
        self.assertEqual(self.posts(), ["/api/v2/backfills/dry_run"])
        dry = self.call("create_backfill", "etl_orders", *DAYS, {}, {"dry_run": True})
        self.assertEqual((dry["runs"], len(dry["logical_dates"]), dry["max_runs"]), (3, 2, 2))
