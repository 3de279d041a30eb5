"""
Reload without restart: SIGHUP, or a changed file, re-reads the config.

A reload rebuilds, from the config file, the principals, roles, OIDC
providers, token store and TLS certificates, checks all of it, and only then
swaps it in whole: new requests use the new version, requests and
connections already open are not touched.  A config that fails its checks
is rejected with one log line and an audit record, and the old one stays in
force.  The token store alone is re-read whenever it changes (so ``token
revoke`` takes effect within `POLL_SECONDS`), and so are the other files
the config names.

Changes to ``[listen]``, ``[airflow]``, ``[rpc]`` and ``[audit]`` need a
restart; a reload says so in the log and keeps the running values.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any, Callable

from twisted.application import service
from twisted.internet.interfaces import IReactorFromThreads, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from .. import config as config_module
from ..audit.log import AuditLog
from ..gate.tls import ReloadableTLS
from ..identity import tokens
from ..identity.authenticate import Authenticator, Gate
from .checked import build_authenticator, load_checked

POLL_SECONDS = 1.0

_log = Logger()


def _mtime(path: Path | None) -> float | None:
    if path is None:
        return None
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None


class HangUp(service.Service):
    """While running, SIGHUP calls ``reload("SIGHUP")`` on the reactor thread."""

    def __init__(self, reactor: IReactorFromThreads, reload: Callable[[str], object]) -> None:
        self._reactor = reactor
        self._reload = reload
        self._previous: Any = None

    def startService(self) -> None:
        super().startService()
        self._previous = signal.signal(
            signal.SIGHUP, lambda *_: self._reactor.callFromThread(self._reload, "SIGHUP")
        )

    def stopService(self) -> None:
        super().stopService()
        if self._previous is not None:
            signal.signal(signal.SIGHUP, self._previous)


class Reloader(service.Service):
    """Watches the config and the files it names; swaps in checked versions."""

    def __init__(
        self, cfg: config_module.Config, *, gate: Gate, tls: ReloadableTLS, http: Any,
        clock: IReactorTime, audit: AuditLog | None,
    ) -> None:
        self.cfg = cfg
        self._gate = gate
        self._tls = tls
        self._http = http
        self._clock = clock
        self._audit = audit
        self._seen = self._stamps(cfg)
        self._loop = LoopingCall(self._poll)
        self._loop.clock = clock
        #: Reloads accepted and rejected; for the metrics.
        self.reloads = 0
        self.rejected = 0

    def startService(self) -> None:
        super().startService()
        self._loop.start(POLL_SECONDS, now=False)
        for keyset in self._gate.current.jwks.values():
            if keyset.provider.jwks_url:
                keyset.refresh()

    def stopService(self) -> None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()

    def _stamps(self, cfg: config_module.Config) -> dict[str, Any]:
        files = {
            "config": cfg.source, "certificate": cfg.tls.certificate,
            "private_key": cfg.tls.private_key, "client_ca": cfg.tls.client_ca,
        }
        for name, provider in cfg.access.oidc.items():
            files[f"jwks:{name}"] = provider.jwks_file
        stamps = {k: _mtime(v) for k, v in files.items()}
        stamps["tokens"] = _mtime(cfg.access.auth.token_store)
        return stamps

    def _poll(self) -> None:
        now = self._stamps(self.cfg)
        changed = {k for k in now if now[k] != self._seen.get(k)}
        if changed - {"tokens"}:
            self.reload("file change: " + ", ".join(sorted(changed)))
        elif changed:
            self._seen = now
            self.reload_tokens()

    def reload_tokens(self) -> None:
        """Re-read the token store alone; keep the old one if it is unreadable."""
        current = self._gate.current
        path = current.access.auth.token_store
        if path is None:
            return
        try:
            store = tokens.TokenStore.load(path)
        except ValueError as e:
            _log.error("token store not reloaded, keeping the old one: {error}", error=str(e))
            return
        self._gate.current = Authenticator(
            current.access, roles=current.roles, tokens_store=store, jwks=current.jwks,
            clock=self._clock,
        )

    def reload(self, trigger: str) -> bool:
        """Re-read everything; True if the new config is now in force."""
        self._seen = self._stamps(self.cfg)
        try:
            checked = load_checked(self.cfg.source)
        except config_module.ConfigError as e:
            _log.error("config reload ({trigger}) rejected, the old config stays in force: "
                       "{error}", trigger=trigger, error=str(e))
            self.rejected += 1
            self._record("rejected", trigger, str(e))
            return False
        cfg = checked.config
        restart = [name for name in ("listen", "airflow", "rpc", "audit")
                   if getattr(cfg, name) != getattr(self.cfg, name)]
        if restart:
            _log.warn("config reload: [{sections}] changed but need a restart to apply",
                      sections="], [".join(restart))
        self._tls.options = checked.tls_options
        self._gate.current = build_authenticator(
            checked, http=self._http, clock=self._clock, previous=self._gate.current
        )
        self.cfg = cfg
        self._seen = self._stamps(cfg)
        self.reloads += 1
        _log.info("config reloaded ({trigger}): {principals} principals, {roles} roles",
                  trigger=trigger, principals=len(cfg.access.principals),
                  roles=len(cfg.access.roles))
        self._record("accepted", trigger, None, restart)
        return True

    def _record(self, result: str, trigger: str, error: str | None,
                restart: list[str] | None = None) -> None:
        if self._audit is None:
            return
        fields: dict[str, Any] = {"event": "config.reload", "result": result, "trigger": trigger}
        if error is not None:
            fields["error"] = error
        if restart:
            fields["needs_restart"] = restart
        self._audit.append(fields).addErrback(lambda f: None)
