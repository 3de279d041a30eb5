"""
Each principal reaches Airflow as its own Airflow account when it has one
(``[principals.NAME] airflow_user``), else as the gateway's: its own login
and JWT, its own shared reads and run watches, Airflow's 403 as a fault,
and the account named on the call's record; never the password anywhere.
"""

from __future__ import annotations

import json
import tempfile
import xmlrpc.client
from pathlib import Path
from typing import Any

import attrs
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from txairflowrpc.config import PrincipalEntry
from txairflowrpc.core import errors
from txairflowrpc.core.spec import CallContext
from txairflowrpc.identity.principal import Principal
from txairflowrpc.identity.scopes import Grants
from txairflowrpc.service.tap import build_site

from ..fakes import FakeAirflow
from .helpers import CONFIG, EVERYTHING, gateway, recorded_tls_options
from .test_shared_reads import Held, traced

ALICE_SECRET = "alice-airflow-secret"
VIEWER_SECRET = "viewer-airflow-secret"


def entry(name: str, user: str | None = None, password: str = "") -> PrincipalEntry:
    return PrincipalEntry(name=name, roles=("operator",), airflow_user=user,
                          airflow_password_file=Path(f"{name}-pw") if user else None,
                          airflow_password=password)


def config(*entries: PrincipalEntry) -> Any:
    access = attrs.evolve(CONFIG.access, principals={e.name: e for e in entries})
    return attrs.evolve(CONFIG, access=access)


CFG = config(entry("alice", "alice.af", ALICE_SECRET), entry("carol", "alice.af", ALICE_SECRET),
             entry("viola", "viewer.af", VIEWER_SECRET), entry("ci-bot"))


def principal(name: str) -> Principal:
    return Principal(name, "client_certificate", roles=("operator",),
                     grants=Grants((EVERYTHING,)))


def records(gw: Any) -> list[dict[str, Any]]:
    path = Path(gw.audit.path)
    return [json.loads(line) for line in path.read_text().splitlines()]


class GatewayAccountTests(SynchronousTestCase):
    """The whole site in memory, calls made as different principals."""

    def setUp(self) -> None:
        self.gw = gateway(CFG)
        self.gw.airflow.users = {"alice.af": ALICE_SECRET, "viewer.af": VIEWER_SECRET}
        self.gw.airflow.viewers = {"viewer.af"}

    def call(self, who: str, method: str, *params: Any) -> Any:
        self.gw.principal = principal(who)
        status, _, result = self.successResultOf(self.gw.call_d(method, *params))
        self.assertEqual(status, 200)
        return result

    def test_a_mapped_principal_triggers_as_its_own_account(self) -> None:
        run = self.call("alice", "trigger_dag", "example_hello")
        self.assertEqual(run["triggering_user_name"], "alice.af")
        other = self.call("ci-bot", "trigger_dag", "example_hello")
        self.assertEqual(other["triggering_user_name"], "gateway")
        # An authenticated caller no config entry names: the gateway's account.
        self.assertEqual(self.call("nobody", "trigger_dag", "example_hello")
                         ["triggering_user_name"], "gateway")

    def test_each_account_logs_in_once_with_a_jwt_of_its_own(self) -> None:
        for who in ("alice", "ci-bot", "alice", "carol", "ci-bot"):
            self.call(who, "get_dag", "example_hello")
        self.assertEqual(self.gw.airflow.logins(), 2)
        users = set(self.gw.airflow.token_users.values())
        self.assertEqual(users, {"gateway", "alice.af"})
        self.assertEqual(len(self.gw.airflow.token_users), 2)  # two JWTs
        self.assertEqual(self.gw.airflow.callers,
                         ["alice.af", "gateway", "alice.af", "alice.af", "gateway"])

    def test_airflows_403_for_the_callers_account_is_a_clear_fault_and_recorded(self) -> None:
        self.assertEqual(self.call("viola", "get_dag", "example_hello")["dag_id"],
                         "example_hello")
        fault = self.call("viola", "trigger_dag", "example_hello")
        self.assertIsInstance(fault, xmlrpc.client.Fault)
        self.assertEqual(fault.faultCode, 403)
        self.assertIn("forbidden by Airflow", fault.faultString)
        self.assertIn("'viewer.af'", fault.faultString)
        self.assertEqual(self.gw.airflow.runs, {})  # nothing triggered
        record = [r for r in records(self.gw) if r.get("method") == "trigger_dag"][-1]
        self.assertEqual((record["principal"], record["decision"], record["outcome"]),
                         ("viola", "allowed", "fault"))
        self.assertEqual((record["fault_code"], record["airflow_status"],
                          record["airflow_user"]), (403, 403, "viewer.af"))

    def test_the_service_accounts_403_stays_a_gateway_setup_error(self) -> None:
        self.gw.airflow.viewers = {"gateway"}
        fault = self.call("ci-bot", "trigger_dag", "example_hello")
        self.assertEqual(fault.faultCode, 502)
        self.assertIn("service account", fault.faultString)

    def test_every_record_that_reaches_airflow_names_the_account(self) -> None:
        self.call("alice", "get_dag", "example_hello")
        self.call("ci-bot", "get_dag", "example_hello")
        self.call("alice", "ping")
        calls = [r for r in records(self.gw) if r.get("kind") == "call"]
        self.assertEqual([(r["method"], r.get("airflow_user")) for r in calls],
                         [("get_dag", "alice.af"), ("get_dag", "gateway"), ("ping", None)])

    def test_a_wrong_password_is_a_fault_naming_the_account_never_the_password(self) -> None:
        self.gw.airflow.users["alice.af"] = "changed-in-airflow"
        logged: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        fault = self.call("alice", "get_dag", "example_hello")
        self.assertEqual(fault.faultCode, 502)
        self.assertIn("credentials of Airflow account 'alice.af'", fault.faultString)
        text = fault.faultString + repr(logged) + Path(self.gw.audit.path).read_text()
        self.assertNotIn(ALICE_SECRET, text)
        # Nor does it fall back to the gateway's account.
        self.assertNotIn("gateway", set(self.gw.airflow.token_users.values()))


class SharingTests(SynchronousTestCase):
    """Reads and waits are shared within an account, never across accounts."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.airflow = FakeAirflow()
        self.airflow.users = {"alice.af": ALICE_SECRET, "viewer.af": VIEWER_SECRET}
        self.airflow.runs[("etl_orders", "r1")] = {
            "dag_id": "etl_orders", "dag_run_id": "r1", "state": "running", "conf": {},
        }
        self.http = Held(self.airflow)
        self.parts = build_site(CFG, self.clock, self.http, None, lambda r: None)

    def get_run(self, who: str) -> Any:
        ctx = CallContext(principal(who), "req")
        return traced(lambda: self.parts.methods.get_dag_run(ctx, "etl_orders", "r1"))[0]

    def test_the_same_read_by_two_accounts_is_two_requests(self) -> None:
        calls = [self.get_run(w) for w in ("alice", "ci-bot", "viola")]
        self.assertEqual(len(self.http.held), 3)
        self.http.release()
        for d in calls:
            self.assertEqual(self.successResultOf(d)["state"], "running")
        self.assertEqual(sorted(self.airflow.callers), ["alice.af", "gateway", "viewer.af"])

    def test_the_same_read_by_one_account_is_shared(self) -> None:
        # alice and carol are two principals, one Airflow account.
        calls = [self.get_run(w) for w in ("alice", "carol", "alice")]
        self.assertEqual(len(self.http.held), 1)
        self.http.release()
        for d in calls:
            self.successResultOf(d)
        self.assertEqual(self.parts.accounts.reads, 3)
        self.assertEqual(self.parts.accounts.reads_upstream, 1)

    def test_waits_are_shared_within_an_account_only(self) -> None:
        def wait(who: str) -> Any:
            ctx = CallContext(principal(who), "req")
            return traced(lambda: self.parts.methods.wait_dag_run(ctx, "etl_orders", "r1", 30))[0]

        waits = [wait(w) for w in ("alice", "carol", "ci-bot", "ci-bot")]
        self.assertEqual(len(self.http.held), 2)  # one poll loop per account
        self.assertEqual(self.parts.accounts.watched, 2)
        self.airflow.runs[("etl_orders", "r1")]["state"] = "success"
        self.http.release()
        for d in waits:
            self.assertTrue(self.successResultOf(d)["finished"])
        self.assertEqual((self.parts.accounts.waits, self.parts.accounts.polls), (4, 2))

    def test_no_password_in_the_accounts_reprs(self) -> None:
        shown = repr(self.parts.accounts) + repr(list(self.parts.accounts)) + repr(CFG)
        self.assertIn("alice.af", shown)
        for secret in (ALICE_SECRET, VIEWER_SECRET):
            self.assertNotIn(secret, shown)


class ReloadTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.parts = build_site(CFG, Clock(), Held(FakeAirflow()), None, lambda r: None)
        self.accounts = self.parts.accounts

    def test_an_unchanged_account_is_kept(self) -> None:
        alice = self.accounts.for_principal("alice")
        self.parts.apply(CFG)
        self.assertIs(self.accounts.for_principal("alice"), alice)
        self.assertIs(self.accounts.for_principal("carol"), alice)

    def test_a_new_password_makes_a_new_account_a_removed_one_is_closed(self) -> None:
        alice = self.accounts.for_principal("alice")
        viewer = self.accounts.for_principal("viola")
        closed: list[str] = []
        alice.close = lambda: closed.append("alice.af")
        viewer.close = lambda: closed.append("viewer.af")
        self.parts.apply(config(entry("alice", "alice.af", "a new one"),
                                entry("carol", "alice.af", "a new one"), entry("viola")))
        renewed = self.accounts.for_principal("alice")
        self.assertIsNot(renewed, alice)
        self.assertIs(self.accounts.for_principal("carol"), renewed)
        self.assertEqual(renewed.user, "alice.af")
        # No account of its own any more: the gateway's, as for any principal without one.
        self.assertIs(self.accounts.for_principal("viola"), self.accounts.service)
        self.assertEqual(sorted(closed), ["alice.af", "viewer.af"])

    def test_settings_reach_every_account(self) -> None:
        cfg = attrs.evolve(CFG, rpc=attrs.evolve(CFG.rpc, wait_poll_seconds=0.5,
                                                 read_cache_seconds=3.0))
        self.parts.apply(cfg)
        for account in self.accounts:
            self.assertEqual(account.watcher.poll_interval, 0.5)
            self.assertEqual(account.client.read_cache_seconds, 3.0)
        self.assertEqual(len(list(self.accounts)), 3)

    def test_unmapped_and_unknown_principals_use_the_service_account(self) -> None:
        self.assertIs(self.accounts.for_principal("ci-bot"), self.accounts.service)
        self.assertIs(self.accounts.for_principal("stranger"), self.accounts.service)
        self.assertIs(self.accounts.for_principal(None), self.accounts.service)
        self.assertEqual(self.accounts.service.user, "gateway")
        self.assertTrue(self.accounts.service.client.own_account)
        self.assertFalse(self.accounts.for_principal("alice").client.own_account)


def test_airflow_denied_is_a_403_fault() -> None:
    fault = errors.AirflowDenied("reader", "DAG 'etl'").to_fault()
    assert fault.faultCode == 403
    assert "reader" in fault.faultString and "DAG 'etl'" in fault.faultString


def test_each_account_gets_a_connection_pool_of_its_own() -> None:
    from twisted.internet.testing import MemoryReactorClock
    from twisted.web.client import HTTPConnectionPool

    from txairflowrpc.service.tap import AccountPools

    reactor = MemoryReactorClock()
    service_pool = HTTPConnectionPool(reactor)
    pools = AccountPools(reactor, service_pool, max_connections=3, idle_seconds=50)
    _, close_a = pools.agent_for("a")
    _, close_b = pools.agent_for("b")
    assert len(pools.pools) == 3 and len({id(p) for p in pools.pools}) == 3
    assert pools.pools[0] is service_pool
    assert all(p.maxPersistentPerHost == 3 for p in pools.pools[1:])
    # Closed by the gateway before Airflow (120 s) or a proxy closes them.
    assert all(p.cachedConnectionTimeout == 50 for p in pools.pools[1:])
    close_a()
    assert len(pools.pools) == 2 and pools.pools[0] is service_pool


def test_a_callers_account_reaches_an_https_airflow_with_airflows_own_cas(
    monkeypatch: Any,
) -> None:
    from twisted.internet.testing import MemoryReactorClock
    from twisted.web.client import HTTPConnectionPool
    from twisted.web.http_headers import Headers

    from txairflowrpc.service.tap import AccountPools
    from txairflowrpc.upstream.transport import OriginTrust

    made, cas = recorded_tls_options(monkeypatch)
    reactor = MemoryReactorClock()
    pools = AccountPools(reactor, HTTPConnectionPool(reactor), 3,
                         OriginTrust("https://airflow.internal", cas))
    agent, _ = pools.agent_for("reader")
    agent.request(b"GET", b"https://airflow.internal/api/v2/dags",
                  Headers({b"Host": [b"airflow.internal"]}))
    assert made == [("airflow.internal", cas)]


def test_the_service_accounts_pool_closes_idle_connections_first() -> None:
    from twisted.internet.testing import MemoryReactorClock

    from txairflowrpc.service.tap import connection_pool

    pool = connection_pool(MemoryReactorClock(), 20, 50.0)
    assert (pool.persistent, pool.maxPersistentPerHost, pool.cachedConnectionTimeout) == (
        True, 20, 50.0)
