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
from typing import Any

import attrs
from twisted.application import service
from twisted.internet import ssl
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from . import config as config_module
from . import oidc, tokens
from .audit import AuditLog
from .auth import Authenticator, Gate
from .tls import ReloadableTLS, server_options

POLL_SECONDS = 1.0

_log = Logger()


@attrs.frozen
class Checked:
    """A config file read and checked whole: what the gateway runs on."""

    config: config_module.Config
    tls_options: ssl.CertificateOptions = attrs.field(eq=False)
    tokens: tokens.TokenStore | None


def load_checked(path: str | Path) -> Checked:
    """
    Read the config and every file it names, as twistd does at start, a
    reload does, and ``airflowrpc config check`` does: the TOML, the TLS
    certificates, the token store, the OIDC key files.  Raises `ConfigError`
    naming the key at fault.
    """
    cfg = config_module.load(path)
    options = server_options(cfg.tls, cfg.access.auth.client_certificate)
    store = None
    if cfg.access.auth.token_store is not None:
        try:
            store = tokens.TokenStore.load(cfg.access.auth.token_store)
        except ValueError as e:
            raise config_module.ConfigError("auth.token_store", str(e)) from None
    for name, provider in cfg.access.oidc.items():
        if provider.jwks is not None:
            try:
                oidc.parse_jwks(provider.jwks)
            except ValueError as e:
                raise config_module.ConfigError(f"oidc.{name}.jwks_file", str(e)) from None
    return Checked(cfg, options, store)


def build_authenticator(
    checked: Checked, *, http: Any, reactor: Any, previous: Authenticator | None = None,
) -> Authenticator:
    """An `Authenticator` for a checked config; OIDC key sets carry over a reload."""
    jwks = {}
    for name, provider in checked.config.access.oidc.items():
        keyset = oidc.JWKSet(provider, http=http, reactor=reactor)
        if previous is not None and name in previous.jwks:
            keyset.adopt(previous.jwks[name])
        jwks[name] = keyset
    return Authenticator(
        checked.config.access, tokens_store=checked.tokens, jwks=jwks, clock=reactor
    )


def _mtime(path: Path | None) -> float | None:
    if path is None:
        return None
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None


class Reloader(service.Service):
    """Watches the config and the files it names; swaps in checked versions."""

    def __init__(
        self, cfg: config_module.Config, *, gate: Gate, tls: ReloadableTLS, http: Any,
        reactor: Any, audit: AuditLog | None,
    ) -> None:
        self.cfg = cfg
        self._gate = gate
        self._tls = tls
        self._http = http
        self._reactor = reactor
        self._audit = audit
        self._seen = self._stamps(cfg)
        self._loop = LoopingCall(self._poll)
        self._loop.clock = reactor
        self.reloads = 0

    def startService(self) -> None:
        super().startService()
        if hasattr(signal, "SIGHUP"):
            self._previous_handler = signal.signal(
                signal.SIGHUP,
                lambda *_: self._reactor.callFromThread(self.reload, "SIGHUP"),
            )
        self._loop.start(POLL_SECONDS, now=False)
        for keyset in self._gate.current.jwks.values():
            if keyset.provider.jwks_url:
                keyset.refresh()

    def stopService(self) -> None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        if hasattr(signal, "SIGHUP") and getattr(self, "_previous_handler", None) is not None:
            signal.signal(signal.SIGHUP, self._previous_handler)

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
            current.access, tokens_store=store, jwks=current.jwks, clock=self._reactor
        )

    def reload(self, trigger: str) -> bool:
        """Re-read everything; True if the new config is now in force."""
        self._seen = self._stamps(self.cfg)
        try:
            checked = load_checked(self.cfg.source)
        except config_module.ConfigError as e:
            _log.error("config reload ({trigger}) rejected, the old config stays in force: "
                       "{error}", trigger=trigger, error=str(e))
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
            checked, http=self._http, reactor=self._reactor, previous=self._gate.current
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
