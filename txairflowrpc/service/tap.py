"""
``twistd airflowrpc``: the command-line options and the service they build.

`Options` loads and checks the config file (so a bad config stops twistd
with one line naming the key), and `makeService` wires the parts together:
the audit log and its writer thread, the pooled treq client to Airflow, the
run watcher, the method table, the XML-RPC resource, the TLS listener and
the admin listener (with ``/metrics``), and the readiness report to systemd.
The reactor is a parameter so tests can pass a fake one.

With ``listen.workers`` > 1 the same command builds the supervisor instead
(`make_supervisor`), and each worker it starts is this command again with
``--worker K``: the same gateway on its share of the config, serving a
socket the supervisor bound (see `txairflowrpc.service.supervisor`).
"""

from __future__ import annotations

import os
import secrets
import time
from typing import Any, Callable

import attrs
from prometheus_client.process_collector import ProcessCollector
from treq.client import HTTPClient
from twisted.application import service
from twisted.internet.defer import Deferred, DeferredSemaphore, gatherResults
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python import usage
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.iweb import IAgent

from .. import __version__
from .. import config as config_module
from ..audit.chain import append_now
from ..audit.checkpoint import Signer
from ..audit.log import AuditLog, RunBlocking
from ..audit.owner import ChainInUse, Claim, claim
from ..audit.summary import Summarizer, load_digest_key
from ..audit.thread import AuditThread
from ..core.timefmt import utc
from ..gate.dispatch import Dispatcher
from ..gate.limits import CallLimits
from ..gate.methods import AirflowMethods
from ..gate.proxied import ProxiedFactory, header_guard
from ..gate.refusals import RefusalLog
from ..gate.resource import NotFound, Root, RPCResource
from ..gate.site import GatewaySite, SiteTLSFactory
from ..gate.tls import ReloadableTLS
from ..identity.authenticate import Gate
from ..identity.backoff import Backoff
from ..identity.policy import ScopePolicy
from ..identity.principal import Principal
from ..upstream.accounts import Account, Accounts
from ..upstream.breaker import CHECK_SECONDS as BREAKER_CHECK_SECONDS
from ..upstream.breaker import CircuitBreaker
from ..upstream.client import AirflowClient, Changes, TLSFailures
from ..upstream.transport import IdentityOnly, OriginTrust, PooledAgent
from ..upstream.watch import RunWatcher
from .admin import AdminSite, HealthResource
from .checked import Checked, build_authenticator, load_checked, served_certificates
from .collector import CollectorTuning
from .gathered import GatheredHealth, WorkerAdmins
from .lifecycle import GatewayService, Listener, StopSignals, bind_problem, exit_zero
from .logs import fatal
from .metrics import (
    AdminCollector,
    GatewayMetrics,
    PartsCollector,
    admin_families,
    metrics_resource,
)
from .notify import Bound, Readiness, SystemdNotifier, watchdog_interval
from .reload import HangUp, Reloader, restart_fingerprint
from .supervisor import (
    STOP_MARGIN_SECONDS,
    SharedPort,
    Supervisor,
    bind_listening,
    spawner,
)
from .workers import (
    ADMIN_FD,
    LISTENER_FD,
    PING_SECONDS,
    REPORT_FD,
    SUPERVISOR_KEY_ENVIRONMENT,
    AdoptedEndpoint,
    ParentWatch,
    PipeNotifier,
    for_worker,
    started_with,
    worker_admin_ports,
)

__all__ = ["Options", "makeService"]

_log = Logger()


class Options(usage.Options):
    synopsis = "[--config FILE]"
    longdesc = (
        "XML-RPC gateway to Apache Airflow over mutual TLS. "
        "See conf/airflowrpc.toml for the config file."
    )
    optParameters = [
        ["config", "c", "conf/airflowrpc.toml", "Path to the TOML config file."],
        ["worker", None, None,
         "Internal: run as worker K of listen.workers, started by the supervisor."],
    ]

    def postOptions(self) -> None:
        try:
            self["checked"] = load_checked(self["config"])
        except config_module.ConfigError as e:
            # One line on stderr and exit status 1: twistd would print its
            # whole usage text above a UsageError, burying the problem.
            raise fatal(f"airflowrpc: {self['config']}: {e}") from None
        cfg = self["checked"].config
        if self["worker"] is not None:
            index = int(self["worker"]) if str(self["worker"]).isdigit() else -1
            if not 0 <= index < cfg.listen.workers:
                raise fatal(f"airflowrpc: --worker {self['worker']}: not a worker of "
                            f"listen.workers = {cfg.listen.workers}")
            self["worker"] = index
            _same_restart_keys(cfg, index)
            self["checked"] = worker_checked(self["checked"], index)
            return  # its ports were checked by the supervisor, which holds the listener
        # With workers, the supervisor's admin listener and then each worker's.
        admin_ports = [cfg.health.port, *worker_admin_ports(cfg)] if cfg.health.port else []
        for host, port, what in ((cfg.listen.host, cfg.listen.port, ""),
                                 *((cfg.health.host, p, " (admin listener)")
                                   for p in admin_ports)):
            problem = bind_problem(host, port)
            if problem is not None:
                raise fatal(f"airflowrpc: cannot listen on {host}:{port}{what}: {problem}")


class _PoolService(service.Service):
    """Closes the Airflow connection pools (one per Airflow account) when the gateway stops."""

    def __init__(self, pools: list[HTTPConnectionPool]) -> None:
        self._pools = pools

    def stopService(self) -> Any:
        super().stopService()
        return gatherResults([p.closeCachedConnections() for p in self._pools])


class AccountPools:
    """
    A connection pool, and the `PooledAgent` over it, for each Airflow account
    the callers use: an account's connections are its own, and so is the
    limit on them (``airflow.max_connections``).  ``pools`` holds every
    pool in use, the service account's first.
    """

    def __init__(self, reactor: Any, pool: HTTPConnectionPool, max_connections: int,
                 trust: OriginTrust | None = None,
                 idle_seconds: float = HTTPConnectionPool.cachedConnectionTimeout) -> None:
        self._reactor = reactor
        self._max_connections = max_connections
        self._trust = trust
        self._idle_seconds = idle_seconds
        self.pools = [pool]

    def agent_for(self, user: str) -> tuple[IAgent, Callable[[], Any]]:
        """A new pooled agent for ``user``'s account, and what closes its pool."""
        pool = connection_pool(self._reactor, self._max_connections, self._idle_seconds)
        self.pools.append(pool)

        def close() -> Any:
            if pool in self.pools:
                self.pools.remove(pool)
            return pool.closeCachedConnections()

        return pooled_agent(self._reactor, pool, self._trust), close


def connection_pool(reactor: Any, max_connections: int, idle_seconds: float) -> HTTPConnectionPool:
    """
    Persistent connections to Airflow: at most ``max_connections`` kept,
    each closed once unused for ``idle_seconds`` (``airflow.idle_connection_seconds``).
    """
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = max_connections
    pool.cachedConnectionTimeout = idle_seconds
    return pool


def pooled_agent(
    reactor: Any, pool: HTTPConnectionPool, trust: OriginTrust | None = None,
) -> IAgent:
    return PooledAgent(reactor, pool, trust)


class AuditService(service.Service):
    """
    Owns the audit log, its one writer thread and the claim on its chain;
    records service start and stop as administrative events.
    """

    def __init__(self, audit: AuditLog, threads: AuditThread, config_path: str,
                 owner: Claim | None = None) -> None:
        self.audit = audit
        self._threads = threads
        self._config_path = config_path
        self._owner = owner

    def startService(self) -> None:
        super().startService()
        if self._owner is not None:
            self._owner.restate()  # twistd may have daemonized since: a new pid
        self._threads.start()
        self.audit.append({
            "event": "service.start", "version": __version__, "config": self._config_path,
        }).addErrback(lambda f: None)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self.audit.append({"event": "service.stop"}).addErrback(lambda f: None)
        d = self.audit.close()
        d.addBoth(lambda _: self._threads.stop())
        return d.addBoth(self._release)

    def _release(self, result: Any) -> Any:
        if self._owner is not None:
            self._owner.release()
        return result


def open_audit(
    cfg: config_module.AuditConfig, clock: IReactorTime, run_blocking: RunBlocking,
    signer: Signer | None = None,
) -> AuditLog:
    """The audit log ``cfg`` describes, opened; ``signer`` signs its checkpoints."""
    audit = AuditLog(
        cfg.path, clock=clock, run_blocking=run_blocking, instance=cfg.instance,
        rotate_bytes=cfg.rotate_bytes, rotate_daily=cfg.rotate_daily, fsync=cfg.fsync,
        signer=signer,
        checkpoint_records=cfg.checkpoint_records, checkpoint_seconds=cfg.checkpoint_seconds,
        stall_seconds=cfg.stall_seconds,
    )
    audit.open()
    return audit


def account_map(cfg: config_module.Config) -> dict[str, tuple[str, str]]:
    """Principal name -> (Airflow user, password), for the principals with an account of their own."""
    return {
        name: (entry.airflow_user, entry.airflow_password)
        for name, entry in cfg.access.principals.items() if entry.airflow_user is not None
    }


@attrs.define
class Parts:
    """What `build_site` made, for the service and the health endpoint."""

    site: GatewaySite
    #: The service account's client and run watcher (``accounts.service``).
    client: AirflowClient
    breaker: CircuitBreaker
    limits: CallLimits
    dispatcher: Dispatcher
    refusals: RefusalLog
    methods: AirflowMethods
    watcher: RunWatcher
    rpc: RPCResource
    accounts: Accounts

    def apply(self, cfg: config_module.Config) -> None:
        """
        Put into force what a reload may change in a running gateway (see
        `txairflowrpc.service.reload.NEEDS_RESTART` for what it may not).
        """
        self.site.limits = cfg.limits
        self.refusals.ipv6_prefix = cfg.limits.ipv6_source_prefix
        self.site.timeOut = cfg.limits.idle_timeout_seconds  # for new connections
        self.site.bodies.limit = cfg.limits.max_body_memory_bytes
        self.site.max_body_bytes = self.rpc.max_body_bytes = cfg.rpc.max_body_bytes
        self.site.bodies.largest = cfg.rpc.max_body_bytes
        if self.site.backoff is not None:
            self.site.backoff.maximum = cfg.access.auth.failure_backoff_max_seconds
            self.site.backoff.ipv6_prefix = cfg.limits.ipv6_source_prefix
        self.limits.rate = cfg.limits.rate_per_second
        self.limits.burst = cfg.limits.burst
        self.limits.max_in_flight = cfg.limits.max_in_flight
        self.dispatcher.deadline = cfg.limits.call_deadline_seconds
        self.dispatcher.max_wait = self.methods.max_wait = cfg.rpc.max_wait_seconds
        self.methods.max_backfill_runs = cfg.rpc.max_backfill_runs
        self.methods.max_backfill_days = cfg.rpc.max_backfill_days
        self.dispatcher.max_multicall = cfg.rpc.max_multicall
        self.dispatcher.summarizer = attrs.evolve(self.dispatcher.summarizer,
                                                  sensitive=cfg.audit.redact_keys)
        for dropped in self.accounts.configure(account_map(cfg)):
            # Idle connections only: a call in flight on it still finishes.
            dropped.close()
        for account in self.accounts:
            account.watcher.poll_interval = cfg.rpc.wait_poll_seconds
            account.client.timeout = cfg.airflow.timeout_seconds
            account.client.retries = cfg.airflow.retries
            account.client.read_cache_seconds = cfg.rpc.read_cache_seconds
        self.breaker.failures_to_open = cfg.airflow.breaker_failures
        self.breaker.reset_seconds = cfg.airflow.breaker_reset_seconds

    def coalescing(self) -> dict[str, tuple[Callable[[], int], Callable[[], int]]]:
        """Shared upstream work, by kind: how many callers asked, how many requests served them."""
        accounts = self.accounts
        return {
            "wait": (lambda: accounts.waits, lambda: accounts.polls),
            "read": (lambda: accounts.reads, lambda: accounts.reads_upstream),
        }

    def counters(self) -> dict[str, Any]:
        return {
            "open_connections": self.site.open_connections,
            "refused_connections": self.site.refused_connections,
            "slow_clients_dropped": self.site.slow_dropped,
            "calls_rate_limited": self.limits.refused,
            "bodies_refused_past_in_flight": self.site.arriving_refused,
            "circuit": self.breaker.state,
            "calls_failed_fast": self.breaker.rejected,
        }


def build_site(
    cfg: config_module.Config, clock: IReactorTime, agent: IAgent, audit: AuditLog | None,
    authenticate: Callable[[Any], "Deferred[Principal]"],
    backoff: Backoff | None = None, digest_key: bytes | None = None,
    metrics: GatewayMetrics | None = None,
    access_version: Callable[[], object] = lambda: None,
    account_agent: Callable[[str], tuple[IAgent, Callable[[], Any]]] | None = None,
) -> Parts:
    """
    The web site of the gateway, calling Airflow through ``agent`` as its
    own account, and through ``account_agent(user)`` (an agent and what
    closes it; default: ``agent`` too) as a caller's own Airflow account;
    ``digest_key`` keys the trail's digests (None: a key of this process alone);
    ``metrics`` meters the calls and the exchanges with Airflow;
    ``access_version`` changes whenever ``authenticate``'s rules do (see
    `Gate.version`): a connection's earlier verdict is reused until then.
    """
    meters: dict[str, Any] = {} if metrics is None else {"meter": metrics}
    breaker = CircuitBreaker(clock, failures=cfg.airflow.breaker_failures,
                             reset_seconds=cfg.airflow.breaker_reset_seconds)
    # Every account's requests count against one cap and one breaker: they
    # protect Airflow, which is one whatever account calls it.
    slots = DeferredSemaphore(cfg.airflow.max_in_flight)
    # And one count of changes: a read does not share what Airflow held
    # before another account's change.
    changes = Changes()
    # And one account of why TLS with Airflow failed, once a minute for them all.
    tls_failures = TLSFailures(clock, cfg.airflow.base_url, cfg.airflow.ca_file)

    def account(agent: IAgent, user: str, password: str, *, own: bool,
                close: Callable[[], Any] = lambda: None) -> Account:
        client = AirflowClient(
            agent=agent, clock=clock, base_url=cfg.airflow.base_url,
            username=user, password=password,
            timeout=cfg.airflow.timeout_seconds, retries=cfg.airflow.retries,
            read_cache_seconds=cfg.rpc.read_cache_seconds, breaker=breaker,
            max_in_flight=cfg.airflow.max_in_flight, own_account=own, slots=slots,
            changes=changes, tls_failures=tls_failures, **meters,
        )
        return Account(client, RunWatcher(client.get_dag_run, clock, cfg.rpc.wait_poll_seconds),
                       close)

    def caller_account(user: str, password: str) -> Account:
        if account_agent is None:
            return account(agent, user, password, own=False)
        its_agent, close = account_agent(user)
        return account(its_agent, user, password, own=False, close=close)

    accounts = Accounts(account(agent, cfg.airflow.username, cfg.airflow.password, own=True),
                        caller_account)
    accounts.configure(account_map(cfg))
    client, watcher = accounts.service.client, accounts.service.watcher
    # After a run of failures, and while open, the breaker asks Airflow's
    # health endpoint itself (unauthenticated: any account's client will do).
    breaker.check = lambda: client.reachable(BREAKER_CHECK_SECONDS)
    limits = CallLimits(clock, rate=cfg.limits.rate_per_second, burst=cfg.limits.burst,
                        max_in_flight=cfg.limits.max_in_flight)
    methods = AirflowMethods(accounts, cfg.rpc.max_wait_seconds, cfg.rpc.max_backfill_runs,
                             cfg.rpc.max_backfill_days, clock)
    digest_key = digest_key or secrets.token_bytes(32)
    refusals = RefusalLog(audit, clock, cfg.audit.refusal_window_seconds, digest_key)
    refusals.ipv6_prefix = cfg.limits.ipv6_source_prefix
    # A known caller's refusals cost it a call of its rate; past it they are counted.
    refusals.charge = limits.spend
    dispatcher = Dispatcher(
        [methods],
        policy=ScopePolicy(), max_multicall=cfg.rpc.max_multicall, clock=clock,
        audit=audit, limits=limits,
        summarizer=Summarizer(cfg.audit.redact_keys, digest_key),
        deadline=cfg.limits.call_deadline_seconds, max_wait=cfg.rpc.max_wait_seconds,
        refusals=refusals, **meters,
    )
    rpc = RPCResource(dispatcher, refusals=refusals, max_body_bytes=cfg.rpc.max_body_bytes,
                      clock=clock)
    not_found = NotFound(refusals)
    site = GatewaySite(
        Root(rpc, not_found), rpc=rpc, not_found=not_found, refusals=refusals, clock=clock,
        limits=cfg.limits, max_body_bytes=cfg.rpc.max_body_bytes, authenticate=authenticate,
        backoff=backoff, access_version=access_version,
    )
    return Parts(site, client, breaker, limits, dispatcher, refusals, methods, watcher, rpc,
                 accounts)


def rpc_endpoint(reactor: Any, cfg: config_module.Config, tls: ReloadableTLS,
                 adopt_fd: int | None = None) -> Any:
    """
    Where the XML-RPC listener listens: TLS, or, with
    ``listen.proxy_protocol``, a PROXY protocol header first and TLS after
    it.  The header comes before TLS on the wire, so its wrapper is the
    outermost layer: PROXY, then TLS, then the site (see
    `txairflowrpc.gate.proxied` and `rpc_factory`).  A worker adopts the
    socket its supervisor bound (``adopt_fd``); `rpc_factory` then brings
    the TLS layer itself, and the PROXY layer is around it all the same.
    """
    host, port = cfg.listen.host, cfg.listen.port
    if adopt_fd is not None:
        endpoint: Any = AdoptedEndpoint(reactor, adopt_fd)
    else:
        endpoint = TCP4ServerEndpoint(reactor, port, interface=host)
    return header_guard(endpoint) if cfg.listen.proxy_protocol else endpoint


def rpc_factory(reactor: Any, cfg: config_module.Config, tls: ReloadableTLS,
                site: GatewaySite) -> Any:
    """
    What `rpc_endpoint` serves: TLS then the site (`SiteTLSFactory`: a
    connection the site refuses is closed before any TLS), behind the PROXY
    header with ``listen.proxy_protocol``.
    """
    tls_factory = SiteTLSFactory(tls, False, site, clock=reactor)
    if not cfg.listen.proxy_protocol:
        return tls_factory
    return ProxiedFactory(tls_factory, site, cfg.listen.proxy_from)


def rpc_listener(reactor: Any, cfg: config_module.Config, tls: ReloadableTLS,
                 site: GatewaySite, adopt_fd: int | None = None) -> Listener:
    """The XML-RPC listener; its endpoint (a `Bound`) says when it listens."""
    where = f"{cfg.listen.host}:{cfg.listen.port}"
    return Listener(Bound(rpc_endpoint(reactor, cfg, tls, adopt_fd), "rpc"),
                    rpc_factory(reactor, cfg, tls, site),
                    where + " (PROXY protocol)" if cfg.listen.proxy_protocol else where)


def _same_restart_keys(cfg: config_module.Config, index: int) -> None:
    """
    Stop worker ``index`` (one line, status 1) if the config on disk changes
    a key that applies only at a restart since the gateway started: a worker
    replaced after such a change would have run, beside the others, on
    another Airflow, audit chain or port (found by review: its admin port
    moved and the supervisor saw it down; its chain took a new instance).
    """
    try:
        before = started_with()
    except ValueError as e:
        raise fatal(f"airflowrpc: worker {index}: what the gateway started with {e}; "
                    "a worker is started by the supervisor") from None
    if before is None:
        return
    now = restart_fingerprint(cfg)
    changed = [k for k in now if before.get(k) != now[k]]
    if changed:
        raise fatal(f"airflowrpc: worker {index}: the config on disk changes "
                    f"{', '.join(changed)} since the gateway started, which apply only when "
                    "the whole gateway restarts: restart it (the workers running keep theirs)")


def worker_checked(checked: Checked, index: int) -> Checked:
    """What worker ``index`` runs on: ``checked`` with `for_worker`'s config."""
    return attrs.evolve(checked, config=for_worker(checked.config, index))


def _logger_name(options: usage.Options) -> str | None:
    """twistd's ``--logger``, by name, for the workers to log the same way."""
    parent = getattr(options, "parent", None)
    factory = parent.get("logger") if parent is not None else None
    if factory is None:
        return None
    return f"{factory.__module__}.{factory.__qualname__}"


def make_supervisor(options: Options, reactor: Any) -> service.IService:
    """
    ``listen.workers`` > 1: the twistd process binds the port, claims the
    configured audit chain (one supervisor per config) and supervises the
    workers (`txairflowrpc.service.supervisor`); it serves nothing itself.
    """
    checked: Checked = options["checked"]
    cfg = checked.config
    try:
        cfg.audit.path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # found by review: a traceback where one process gives one line
        raise fatal(f"airflowrpc: audit.path: {e.filename}: {e.strerror}") from None
    owner = claim_chain(cfg.audit)
    try:
        # Made here, once: the workers would race to make it.
        load_digest_key(cfg.audit.digest_key_file)
    except ValueError as e:
        raise fatal(f"airflowrpc: audit.digest_key_file: {e}") from None
    where = f"{cfg.listen.host}:{cfg.listen.port}"
    try:
        sockets = SharedPort(cfg.listen.host, cfg.listen.port, cfg.listen.workers)
    except OSError as e:
        raise fatal(f"airflowrpc: cannot listen on {where}: "
                    f"{(e.strerror or str(e)).lower()}") from None
    # Absolute (twistd may change directory as it daemonizes) but not
    # resolved: a config reached through a link that is later swapped
    # (Kubernetes' ..data, current -> release-N) is read again through it by
    # each reload and each replacement worker (found by review: the resolved
    # path was gone after the swap, so every reload was refused and a dead
    # worker never replaced).
    source = cfg.source.absolute()
    admin_sockets = []
    for port in worker_admin_ports(cfg):  # each worker's, held for as long as this runs
        try:
            admin_sockets.append(bind_listening(cfg.health.host, port))
        except OSError as e:
            sockets.close_all()
            for held in admin_sockets:
                held.close()
            raise fatal(f"airflowrpc: cannot listen on {cfg.health.host}:{port} (a worker's "
                        f"admin listener): {(e.strerror or str(e)).lower()}") from None

    def check() -> Deferred[config_module.Config]:
        return deferToThreadPool(reactor, reactor.getThreadPool(),
                                 lambda: load_checked(source).config)

    def record(fields: dict[str, Any]) -> None:
        """A record on the supervisor's own chain (``audit.path``), written off the reactor."""
        d = deferToThreadPool(reactor, reactor.getThreadPool(), append_now, cfg.audit.path,
                              fields, instance=cfg.audit.instance, signer=checked.signer)
        d.addErrback(lambda f: _log.failure("not recorded on {path}: {event}", f,
                                            path=str(cfg.audit.path), event=fields["event"]))

    def stopped() -> None:
        sockets.close_all()
        for held in admin_sockets:
            held.close()
        owner.release()
        exit_zero(reactor)()

    top = service.MultiService()
    # twistd may daemonize between here and the start: a new pid to note.
    reactor.callWhenRunning(owner.restate)
    # What the supervisor's questions to the workers' admin listeners carry.
    key = secrets.token_urlsafe(32)
    supervisor = Supervisor(
        reactor, count=cfg.listen.workers,
        spawn=spawner(reactor, str(source), sockets, _logger_name(options), admin_sockets,
                      restart_fingerprint(cfg), key),
        check=check, stop_seconds=cfg.limits.shutdown_seconds,
        notifier=SystemdNotifier.from_environment(), watchdog_seconds=watchdog_interval(),
        where=where, on_stopped=stopped, port=sockets, record=record,
    )
    if cfg.health.port:
        # Bound before the workers start (a port taken stops twistd first); one address
        # for all the workers.
        process = ProcessCollector(registry=None)

        def own() -> list[Any]:
            """The supervisor's own process metrics and its admin listener's refusals."""
            return [*process.collect(), *admin_families(admin_site)]

        gathered = GatheredHealth(
            admins=WorkerAdmins(reactor, Agent(reactor), cfg.health.host,
                                worker_admin_ports(cfg),
                                running=lambda: [s.running for s in supervisor.states()],
                                key=key.encode()),
            states=supervisor.states, stopping=lambda: supervisor.stopping,
            off_reactor=lambda f, *a: deferToThreadPool(reactor, reactor.getThreadPool(), f, *a),
            own=own)
        admin_site = AdminSite(gathered, reactor=reactor,
                               ipv6_prefix=cfg.limits.ipv6_source_prefix)
        Listener(TCP4ServerEndpoint(reactor, cfg.health.port, interface=cfg.health.host),
                 admin_site,
                 f"{cfg.health.host}:{cfg.health.port} (admin listener)").setServiceParent(top)
    supervisor.setServiceParent(top)
    HangUp(reactor, supervisor.reload).setServiceParent(top)
    StopSignals(reactor).setServiceParent(top)
    return top


def claim_chain(
    cfg: config_module.AuditConfig, wait: float = 0.0, *,
    sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic,
) -> Claim:
    """
    This instance's claim on its audit chain; `SystemExit` (one line) if
    another holds it.  With ``wait``, one held by another process is waited
    for that long first, before the reactor runs: a worker whose
    predecessor, left behind by a supervisor that was killed, still drains
    its calls (found by review: each new worker exited at once, twice, and
    its socket was closed: the port refused connections for seconds).
    """
    deadline, told = clock() + wait, False
    while True:
        try:
            return claim(cfg.path, cfg.instance)
        except ChainInUse as e:
            if clock() >= deadline:
                raise fatal(f"airflowrpc: audit.path: {e}") from None
            if not told:
                _log.warn("audit.path {path} is held by {holder}: waiting up to {wait:g} s "
                          "for it to end", path=str(cfg.path), holder=e.holder, wait=wait)
                told = True
            sleep(CLAIM_POLL_SECONDS)
        except OSError as e:
            raise fatal(f"airflowrpc: audit.path: {e.filename}: {e.strerror}") from None


#: How often a worker waiting for its chain (`claim_chain`) tries again.
CLAIM_POLL_SECONDS = 0.2


def makeService(options: Options, reactor: Any = None) -> service.IService:
    if reactor is None:
        from twisted.internet import reactor  # type: ignore[no-redef]
    checked: Checked = options["checked"]
    cfg = checked.config
    worker: int | None = options["worker"]
    if worker is None:  # once per gateway: not again from each worker
        for warning in checked.warnings(utc(reactor.seconds())):
            _log.warn("{warning}", warning=warning)
    if worker is None and cfg.listen.workers > 1:
        return make_supervisor(options, reactor)
    metrics = GatewayMetrics()

    threads = AuditThread(reactor)
    try:
        audit = open_audit(cfg.audit, reactor, metrics.timing_audit_writes(threads),
                           checked.signer)
    except OSError as e:  # a file the service's user may not write (made by root, say)
        raise fatal(f"airflowrpc: audit.path: {e.filename}: {e.strerror}") from None
    # A worker waits for a predecessor that drains (as long as a drain takes).
    owner = claim_chain(cfg.audit, 0.0 if worker is None else
                        cfg.limits.shutdown_seconds + STOP_MARGIN_SECONDS)
    pool = connection_pool(reactor, cfg.airflow.max_connections,
                           cfg.airflow.idle_connection_seconds)
    # Airflow's client speaks to the PooledAgent itself; treq serves the rest
    # (key sets, STS), where a request now and then may cost more.
    trust = checked.airflow_trust
    agent = pooled_agent(reactor, pool, trust)
    pools = AccountPools(reactor, pool, cfg.airflow.max_connections, trust,
                         cfg.airflow.idle_connection_seconds)
    http = HTTPClient(IdentityOnly(agent))  # a body's cap counts the bytes on the wire
    gate = Gate(build_authenticator(checked, http=http, clock=reactor))
    tls = ReloadableTLS(checked.tls_options)
    backoff = Backoff(reactor, cfg.access.auth.failure_backoff_max_seconds)
    backoff.ipv6_prefix = cfg.limits.ipv6_source_prefix
    try:
        digest_key = load_digest_key(cfg.audit.digest_key_file)
    except ValueError as e:
        raise fatal(f"airflowrpc: audit.digest_key_file: {e}") from None
    parts = build_site(cfg, reactor, agent, audit, metrics.authenticating(gate.authenticate),
                       backoff, digest_key, metrics, access_version=gate.version,
                       account_agent=pools.agent_for)
    reloader = Reloader(cfg, gate=gate, tls=tls, http=http, clock=reactor, audit=audit,
                        run_blocking=lambda f: deferToThreadPool(reactor, reactor.getThreadPool(), f),
                        apply=parts.apply,
                        # `readiness` is made below; a reload comes only once it runs.
                        told=lambda problem: readiness.remark(problem),
                        derive=None if worker is None else (
                            lambda c, k=worker: worker_checked(c, k)))
    # Logins and watched runs are counted over every Airflow account.
    metrics.collect_from(PartsCollector(
        config=lambda: reloader.cfg, clock=reactor, site=parts.site, limits=parts.limits,
        breaker=parts.breaker, client=parts.accounts, audit=audit, refusals=parts.refusals,
        gate=gate, reloader=reloader, watcher=parts.accounts,
        coalescing=parts.coalescing(), certificates=lambda: served_certificates(tls.options),
    ))

    top = GatewayService(
        reactor,
        drain=lambda: parts.dispatcher.drain(cfg.limits.shutdown_seconds),
        close_connections=parts.site.close_connections,
        before_rest=lambda: (parts.refusals.stop(), parts.breaker.stop()),
    )
    # Stopped in the reverse order, after the listeners and the drain: the
    # audit trail last.
    AuditService(audit, threads, str(cfg.source), owner).setServiceParent(top)
    _PoolService(pools.pools).setServiceParent(top)
    reloader.setServiceParent(top)
    HangUp(reactor, reloader.reload).setServiceParent(top)
    StopSignals(reactor).setServiceParent(top)

    rpc = rpc_listener(reactor, cfg, tls, parts.site,
                       adopt_fd=None if worker is None else LISTENER_FD)
    top.listen(rpc)
    bound = [rpc.endpoint]
    if cfg.health.port:
        health = HealthResource(
            config=lambda: reloader.cfg, airflow_reachable=parts.client.reachable,
            audit=audit, counters=parts.counters, clock=reactor,
            certificates=lambda: served_certificates(tls.options),
            metrics=metrics_resource(metrics.registry, reactor),
        )
        # A worker's admin socket is the supervisor's, held while it is replaced.
        admin = Bound(TCP4ServerEndpoint(reactor, cfg.health.port, interface=cfg.health.host)
                      if worker is None else AdoptedEndpoint(reactor, ADMIN_FD), "admin")
        key = os.environ.pop(SUPERVISOR_KEY_ENVIRONMENT, None) if worker is not None else None
        admin_site = AdminSite(health, reactor=reactor,
                               ipv6_prefix=cfg.limits.ipv6_source_prefix,
                               supervisor_key=key.encode() if key else None)
        metrics.collect_from(AdminCollector(admin_site))
        top.listen(Listener(admin, admin_site,
                            f"{cfg.health.host}:{cfg.health.port} (admin listener)"))
        bound.append(admin)
    # STOPPING=1 as the shutdown begins (a reactor trigger), WATCHDOG=1 through the drain.
    # A worker reports to the supervisor, which tells systemd once every worker told it.
    notifier: Any = (SystemdNotifier.from_environment() if worker is None
                     else PipeNotifier(REPORT_FD))
    # A worker's WATCHDOG=1 goes to the supervisor, which replaces one that falls silent.
    readiness = Readiness(
        reactor, listeners=bound, reachable=parts.client.reachable, notifier=notifier,
        watchdog_seconds=watchdog_interval() if worker is None else PING_SECONDS,
        stop_seconds=(cfg.limits.shutdown_seconds + STOP_MARGIN_SECONDS
                      if worker is None else None))
    readiness.setServiceParent(top)
    if worker is not None:
        ParentWatch(reactor).setServiceParent(top)
    CollectorTuning(reactor).setServiceParent(top)  # last: once everything above is built
    return top
