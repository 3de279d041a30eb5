"""
``twistd airflowrpc``: the command-line options and the service they build.

`Options` loads and checks the config file (so a bad config stops twistd
with one line naming the key), and `makeService` wires the parts together:
the pooled treq client to Airflow, the run watcher, the method table, the
XML-RPC resource and the TLS listener.  The reactor is a parameter so
tests can pass a fake one.
"""

from __future__ import annotations

from typing import Any, Callable

from treq.client import HTTPClient
from twisted.application import service
from twisted.application.internet import StreamServerEndpointService
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.python import usage
from twisted.web import server
from twisted.web.client import Agent, HTTPConnectionPool

from . import config as config_module
from .airflow import AirflowClient
from .auth import Principal, authenticate
from .dispatch import AuthenticatedPolicy, Dispatcher
from .methods import AirflowMethods
from .rpc import RPCResource, root
from .tls import server_options
from .watch import RunWatcher

__all__ = ["Options", "makeService"]


class Options(usage.Options):
    synopsis = "[--config FILE]"
    longdesc = (
        "XML-RPC gateway to Apache Airflow over mutual TLS. "
        "See conf/airflowrpc.toml for the config file."
    )
    optParameters = [
        ["config", "c", "conf/airflowrpc.toml", "Path to the TOML config file."],
    ]

    def postOptions(self) -> None:
        try:
            self["loaded"] = config_module.load(self["config"])
            self["tls_options"] = server_options(self["loaded"].tls)
        except config_module.ConfigError as e:
            # One line on stderr and exit status 1: twistd would print its
            # whole usage text above a UsageError, burying the problem.
            raise SystemExit(f"airflowrpc: {self['config']}: {e}") from None


class _PoolService(service.Service):
    """Closes the Airflow connection pool when the gateway stops."""

    def __init__(self, pool: HTTPConnectionPool) -> None:
        self._pool = pool

    def stopService(self) -> Any:
        super().stopService()
        return self._pool.closeCachedConnections()


def build_site(
    cfg: config_module.Config, reactor: Any, http: Any,
    authenticate: Callable[[Any], Principal] = authenticate,
) -> server.Site:
    """The web site of the gateway, calling Airflow through ``http``."""
    client = AirflowClient(
        http=http, reactor=reactor, base_url=cfg.airflow.base_url,
        username=cfg.airflow.username, password=cfg.airflow.password,
        timeout=cfg.airflow.timeout_seconds,
    )
    watcher = RunWatcher(client.get_dag_run, reactor, cfg.rpc.wait_poll_seconds)
    dispatcher = Dispatcher(
        [AirflowMethods(client, watcher, cfg.rpc.max_wait_seconds)],
        policy=AuthenticatedPolicy(), max_multicall=cfg.rpc.max_multicall, clock=reactor,
    )
    rpc = RPCResource(
        dispatcher, authenticate=authenticate, max_body_bytes=cfg.rpc.max_body_bytes
    )
    site = server.Site(root(rpc), reactor=reactor)
    site.displayTracebacks = False
    return site


def makeService(options: Options, reactor: Any = None) -> service.IService:
    if reactor is None:
        from twisted.internet import reactor  # type: ignore[no-redef]
    cfg: config_module.Config = options["loaded"]
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = cfg.airflow.max_connections
    http = HTTPClient(Agent(reactor, pool=pool))
    site = build_site(cfg, reactor, http)
    top = service.MultiService()
    _PoolService(pool).setServiceParent(top)
    endpoint = SSL4ServerEndpoint(
        reactor, cfg.listen.port, options["tls_options"], interface=cfg.listen.host
    )
    StreamServerEndpointService(endpoint, site).setServiceParent(top)
    return top


