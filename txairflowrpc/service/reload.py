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

Everything a running gateway can change is put into force by a reload too:
``[limits]``, ``[rpc]``, the Airflow timeouts, retries and circuit breaker,
the redaction words, the back-off, the certificate warning.  What it cannot
(`NEEDS_RESTART`: the listeners, Airflow's address and account, the audit
file and its keys) is named in one log line and on the audit record of the
reload, and keeps its running value.  All the file work runs off the reactor.
"""

from __future__ import annotations

import hashlib
import os
import signal
from pathlib import Path
from typing import Any, Callable

from twisted.application import service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorFromThreads, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from .. import config as config_module
from ..audit.log import AuditLog
from ..core.timefmt import utc
from ..gate.tls import ReloadableTLS
from ..identity import tokens
from ..identity.authenticate import Gate
from ..identity.revocation import Revocations
from .checked import (
    Checked,
    build_authenticator,
    load_checked,
    load_client_crl,
    served_certificates,
)

POLL_SECONDS = 1.0
#: Token ids named in one ``tokens.reloaded`` record, of each kind (the rest counted).
MAX_IDS_RECORDED = 100

_log = Logger()


def _stamp(path: Path | None) -> tuple[int, int, int, int] | None:
    """
    What tells one version of a file from the next: its inode, size, mtime
    and ctime.  The mtime alone is not enough: the kernel takes it from a
    coarse clock, so a file written twice within one tick (a few ms) keeps
    it.  A writer that renames a new file into place (``token revoke``,
    editors, Kubernetes' volumes) gives each version a new inode while the
    old one still exists, and ctime cannot be set back by anyone (but comes
    from the same clock): only an in-place rewrite of the same size within
    one tick of the last can go unseen.
    """
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _stamps(cfg: config_module.Config) -> dict[str, Any]:
    """The `_stamp` of the config and every file it names (blocking: stat)."""
    files = {
        "config": cfg.source, "certificate": cfg.tls.certificate,
        "private_key": cfg.tls.private_key, "client_ca": cfg.tls.client_ca,
        "client_crl": cfg.tls.client_crl, "airflow_ca": cfg.airflow.ca_file,
    }
    for name, provider in cfg.access.oidc.items():
        files[f"jwks:{name}"] = provider.jwks_file
    for name, entry in cfg.access.principals.items():
        files[f"airflow_password:{name}"] = entry.airflow_password_file
    stamps = {k: _stamp(v) for k, v in files.items()}
    stamps["tokens"] = _stamp(cfg.access.auth.token_store)
    return stamps


class HangUp(service.Service):
    """
    While running, SIGHUP calls ``reload("SIGHUP")`` on the reactor thread;
    once it has started, a SIGHUP never ends the process: from `stopService`
    on (the process is stopping) SIGHUP is ignored, by the kernel, to the
    process's very end.  Found by review: the handler before it (the
    default: terminate) was put back as the services stopped, before the
    audit trail's, and a SIGHUP then (a reload racing a stop) killed the
    process without its shutdown checkpoint; and Python puts the default
    back for its own handlers as it exits, so a handler of ours would not do.
    """

    def __init__(self, reactor: IReactorFromThreads, reload: Callable[[str], object]) -> None:
        self._reactor = reactor
        self._reload = reload

    def startService(self) -> None:
        super().startService()
        signal.signal(signal.SIGHUP, self._received)

    def _received(self, signum: int, frame: Any) -> None:
        self._reactor.callFromThread(self._hung_up)

    def _hung_up(self) -> None:
        if self.running:  # not one that came just before the stop
            self._reload("SIGHUP")

    def stopService(self) -> None:
        super().stopService()
        signal.signal(signal.SIGHUP, signal.SIG_IGN)


#: What a reload cannot change in a running gateway: (section, key) pairs,
#: key None for the whole section.  Everything else is applied at once.
NEEDS_RESTART: tuple[tuple[str, str | None], ...] = (
    ("listen", None),
    ("health", "host"), ("health", "port"),
    ("airflow", "base_url"), ("airflow", "username"), ("airflow", "password_file"),
    ("airflow", "password"), ("airflow", "max_connections"), ("airflow", "max_in_flight"),
    ("airflow", "ca_file"), ("airflow", "ca_pem"), ("airflow", "idle_connection_seconds"),
    ("audit", "path"), ("audit", "rotate_bytes"), ("audit", "rotate_daily"),
    ("audit", "fsync"), ("audit", "signing_key"), ("audit", "hmac_key_file"),
    ("audit", "checkpoint_records"), ("audit", "checkpoint_seconds"),
    ("audit", "refusal_window_seconds"), ("audit", "digest_key_file"), ("audit", "instance"),
    # The drain and the supervisor's last-resort kill are set up at start.
    ("limits", "shutdown_seconds"),
)


def _restart_values(cfg: config_module.Config) -> dict[str, Any]:
    """What each `NEEDS_RESTART` key holds in ``cfg``, by its name in the log and on the trail."""
    found = {}
    for section, key in NEEDS_RESTART:
        value = getattr(cfg, section) if key is None else getattr(getattr(cfg, section), key)
        name = section if key is None else _READ_FROM.get((section, key), f"{section}.{key}")
        found[name] = value
    return found


def needs_restart(old: config_module.Config, new: config_module.Config) -> list[str]:
    """The dotted keys that changed but apply only after a restart."""
    before = _restart_values(old)
    return [name for name, value in _restart_values(new).items() if value != before[name]]


def restart_fingerprint(cfg: config_module.Config) -> dict[str, str]:
    """
    A digest of what each `NEEDS_RESTART` key holds, by the key's name (as
    `needs_restart` names it): what a worker the supervisor starts later
    must have as it had (`txairflowrpc.service.workers.started_with`), told
    without the values (a password among them) leaving the process.
    """
    found = {}
    for name, value in _restart_values(cfg).items():
        if isinstance(value, Path):
            # The file's paths are joined to the config's directory as it was
            # named: relative to the supervisor's, absolute to its workers'
            # (found by review: every worker refused a relative --config).
            value = os.path.abspath(value)
        found[name] = hashlib.sha256(repr(value).encode("utf-8")).hexdigest()
    return found


#: Keys that hold what a file held, by what a change of them is called.
_READ_FROM = {("airflow", "password"): "airflow.password_file (its content)",
              ("airflow", "ca_pem"): "airflow.ca_file (its content)"}


class Reloader(service.Service):
    """
    Watches the config and the files it names; swaps in checked versions.

    The file work (stat, read, parse, check) runs through ``run_blocking``,
    off the reactor; only the swap happens on it.  ``derive`` turns the
    file's config into this process's (a worker's share of the limits, its
    own audit chain).  ``apply`` puts what a
    running gateway can change (limits, rpc, timeouts, redaction, ...) into
    force; what it cannot (`NEEDS_RESTART`) is named in the log and on the
    audit trail.
    """

    def __init__(
        self, cfg: config_module.Config, *, gate: Gate, tls: ReloadableTLS, http: Any,
        clock: IReactorTime, audit: AuditLog | None,
        run_blocking: Callable[[Callable[[], Any]], "Deferred[Any]"] = maybeDeferred,
        apply: Callable[[config_module.Config], None] = lambda cfg: None,
        told: Callable[[str | None], None] = lambda problem: None,
        derive: Callable[[Checked], Checked] | None = None,
    ) -> None:
        self.cfg = cfg
        #: What this process runs on, from the file's config (a worker's share).
        self._derive = derive or (lambda checked: checked)
        self._gate = gate
        self._tls = tls
        self._http = http
        self._clock = clock
        self._audit = audit
        self._run_blocking = run_blocking
        self._apply = apply
        #: Told what is wrong with the files in force after a rejected reload,
        #: None after an accepted one (systemd's STATUS: `notify.Readiness.remark`).
        self._told = told
        self._seen = _stamps(cfg)
        #: The stamps of a change seen at the last poll, waiting to stand still.
        self._settling: dict[str, Any] = {}
        #: Reads started, and the newest whose result is in force: a read
        #: that ends after a newer one was swapped in is dropped (its files
        #: may be older: a token revoked meanwhile would come back).
        self._reads = 0
        self._in_force = 0
        self._polling = False
        self._loop = LoopingCall(self._poll)
        self._loop.clock = clock
        #: What this process has seen of its token store, for as long as it runs.
        self._history = tokens.TokenHistory()
        #: Reloads accepted and rejected; for the metrics.
        self.reloads = 0
        self.rejected = 0
        #: Whether the last reload was accepted (the config it starts with was checked
        #: whole): False while the file on disk is one that was rejected.
        self.last_reload_successful = True
        self._taken(None, gate.current.tokens)  # what it starts with, remembered

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

    def _poll(self) -> Deferred[None] | None:
        """Look at the files (off the reactor); reload what changed."""
        if self._polling:
            return None
        self._polling = True
        cfg = self.cfg
        d = self._run_blocking(lambda: _stamps(cfg))
        d.addCallback(self._compare)
        d.addErrback(lambda f: _log.failure("watching the config failed", f))

        def done(result: Any) -> None:
            self._polling = False

        return d.addBoth(done)

    def _compare(self, now: dict[str, Any]) -> Any:
        changed = {k for k in now if now[k] != self._seen.get(k)}
        if changed - {"tokens"}:
            if any(now[k] != self._settling.get(k) for k in changed - {"tokens"}):
                # Changed since the last look: read once it has stood still
                # for a poll (found by review: a config written in place was
                # applied half-written, a prefix that parsed with no
                # principals, and callers got 401 until the rest came).  The
                # token store goes on at once: a revocation does not wait,
                # and a store cut short is no JSON.
                self._settling = now
                if "tokens" not in changed:
                    return None
                # The store alone, even after a rejected reload (found by
                # review: a full one would read the file still being written).
                return self._store_alone(now)
            self._settling = {}
            return self.reload("file change: " + ", ".join(sorted(changed)))
        self._settling = {}
        return self._tokens_changed(now) if changed else None

    def _tokens_changed(self, now: dict[str, Any]) -> Any:
        if not self.last_reload_successful:
            # What was rejected may have been the store (found by review: once
            # mended, the gauge said rejected for good): read everything again.
            return self.reload("file change: tokens")
        return self._store_alone(now)

    def _store_alone(self, now: dict[str, Any]) -> Deferred[None]:
        """Take the store's change as seen and read the store on its own."""
        self._seen = {**self._seen, "tokens": now["tokens"]}
        return self.reload_tokens()

    def reload_tokens(self, *, counted: bool = False) -> Deferred[None]:
        """
        Re-read the token store alone (off the reactor); keep the old one if
        it is unreadable, which is a rejected reload (unless ``counted``
        already, as part of one): the store on disk is not the one in force.
        """
        path = self._gate.current.access.auth.token_store
        if path is None:
            return succeed(None)

        ticket = self._next_read()

        def swap(store: tokens.TokenStore) -> None:
            if self._outdated(ticket, "token store reload"):
                return
            current = self._gate.current
            self._gate.current = current.with_tokens(self._taken(current.tokens, store))

        def unreadable(failure: Any) -> None:
            _log.error("token store not reloaded, keeping the old one: {error}",
                       error=failure.getErrorMessage())
            if not counted:  # found by review: the gauge said all was well
                self.rejected += 1
                self.last_reload_successful = False
                self._record("rejected", "file change: tokens",
                             f"auth.token_store: {failure.getErrorMessage()}")
                self._told("the token store on disk is not in force (rejected)")

        d = self._run_blocking(lambda: tokens.TokenStore.load(path))
        return d.addCallbacks(swap, unreadable)

    def reload_client_crl(self) -> Deferred[None]:
        """
        Re-read ``tls.client_crl`` alone (off the reactor), as the config in
        force names it and against the client CAs in force, after a reload
        that was rejected for something else: a certificate revoked meanwhile
        is refused all the same.  An unreadable list keeps the old; an older
        one is taken and said (`Revocations.older_than`), as by a reload.
        """
        tls = self.cfg.tls
        if tls.client_crl is None:
            return succeed(None)
        cas = served_certificates(self._tls.options)["tls.client_ca"]
        ticket = self._next_read()

        def swap(revocations: Revocations | None) -> None:
            if self._outdated(ticket, "tls.client_crl reload"):
                return
            current = self._gate.current
            self._gate.current = current.with_revocations(revocations)
            _log.info("tls.client_crl re-read on its own: {lists} lists in force",
                      lists=len(revocations.lists) if revocations else 0)
            now = utc(self._clock.seconds())
            for warning in revocations.warnings(now) if revocations else ():
                _log.warn("{warning}", warning=warning)
            self._older_lists(revocations, current.revocations, now)

        def unreadable(failure: Any) -> None:
            _log.error("tls.client_crl not reloaded, keeping the lists in force: {error}",
                       error=failure.getErrorMessage())

        d = self._run_blocking(lambda: load_client_crl(tls, cas))
        return d.addCallbacks(swap, unreadable)

    @staticmethod
    def _older_lists(lists: Revocations | None, before: Revocations | None,
                     now: Any) -> None:
        """Log an error for each revocation list now in force older than the one it replaced."""
        for warning in lists.older_than(before, now) if lists is not None else ():
            _log.error("{warning}", warning=warning)

    def reload(self, trigger: str) -> Deferred[bool]:
        """Re-read everything (off the reactor); fires True if the new config is in force."""
        source, cfg, derive = self.cfg.source, self.cfg, self._derive

        def read() -> tuple[dict[str, Any], Checked | config_module.ConfigError]:
            stamps = _stamps(cfg)  # before reading: a write meanwhile is seen next time
            # The files the config on disk names, stamped before they are read
            # (found by review: stamped by the paths in force, a path the edit
            # changed was a change at the next poll, and a second reload
            # followed the first).
            try:
                named = {**_stamps(config_module.load(source)), "config": stamps["config"]}
            except Exception:  # noqa: BLE001 -- load_checked says what is wrong, just below
                named = stamps
            try:
                return named, derive(load_checked(source))
            except config_module.ConfigError as e:  # whatever went wrong (load_checked)
                return stamps, e  # the files of the config still in force

        return self._run_blocking(read).addCallback(self._swap, trigger, self._next_read())

    def _next_read(self) -> int:
        self._reads += 1
        return self._reads

    def _outdated(self, ticket: int, what: str) -> bool:
        """Whether read ``ticket`` ended after a newer one was swapped in; else it is in force."""
        if ticket < self._in_force:
            _log.info("{what}: a newer read is in force already; this one is dropped", what=what)
            return True
        self._in_force = ticket
        return False

    def _swap(
        self, read: tuple[dict[str, Any], Checked | config_module.ConfigError], trigger: str,
        ticket: int,
    ) -> bool:
        if self._outdated(ticket, f"config reload ({trigger})"):
            return False  # its stamps too: what it missed is seen at the next poll
        stamps, checked = read
        tokens_changed = stamps.get("tokens") != self._seen.get("tokens")
        crl_changed = stamps.get("client_crl") != self._seen.get("client_crl")
        self._seen = stamps
        if isinstance(checked, config_module.ConfigError):
            _log.error("config reload ({trigger}) rejected, the old config stays in force: "
                       "{error}", trigger=trigger, error=str(checked))
            self.rejected += 1
            self.last_reload_successful = False
            self._record("rejected", trigger, str(checked))
            self._told(f"the config on disk is not in force: {str(checked)[:200]}")
            if tokens_changed:
                # A revocation must not wait for the rest of the config to
                # be fixed: the store is read on its own, as a poll would.
                self.reload_tokens(counted=True)
            if crl_changed:
                self.reload_client_crl()  # nor a certificate's (found by review)
            return False
        cfg = checked.config
        restart = needs_restart(self.cfg, cfg)
        if restart:
            _log.warn("config reload: {keys} changed, but that needs a restart to apply",
                      keys=", ".join(restart))
        self._tls.options = checked.tls_options
        previous = self._gate.current
        taken = build_authenticator(checked, http=self._http, clock=self._clock,
                                    previous=previous)
        self._gate.current = taken.with_tokens(self._taken(previous.tokens, taken.tokens))
        self._apply(cfg)
        self.cfg = cfg
        self.reloads += 1
        self.last_reload_successful = True
        _log.info("config reloaded ({trigger}): {principals} principals, {roles} roles",
                  trigger=trigger, principals=len(cfg.access.principals),
                  roles=len(cfg.access.roles))
        now = utc(self._clock.seconds())
        for warning in checked.warnings(now):
            _log.warn("{warning}", warning=warning)
        self._older_lists(checked.revocations, previous.revocations, now)
        self._record("accepted", trigger, None, restart)
        self._told(None)
        return True

    def _taken(self, old: tokens.TokenStore | None,
               new: tokens.TokenStore | None) -> tokens.TokenStore | None:
        """
        ``new``, the token store read from its file, as this process takes
        it (`tokens.TokenHistory`: nothing it has seen revoked or shortened
        comes back), with what changed on the audit trail
        (``tokens.reloaded``: ids added, removed, revoked, and those kept
        revoked or kept to their expiry, when those change) and a held-back
        token in the log.
        """
        if new is None:
            return new
        taken, change = self._history.take(old, new)
        if change.held is not None and any(change.held):
            ids = change.held[0] + change.held[1]
            _log.error("token store {path}: the file would bring back {n} token(s) this "
                       "gateway has seen revoked or shortened (a backup put back?); kept "
                       "as they were: {ids}", path=str(new.path), n=len(ids),
                       ids=", ".join(ids[:20]))
        if old is not None and change and self._audit is not None:
            fields: dict[str, Any] = {"event": "tokens.reloaded", "path": str(new.path)}
            listed = {"added": change.added, "removed": change.removed,
                      "revoked": change.revoked}
            if change.held is not None:
                listed["kept_revoked"], listed["kept_expiry"] = change.held
            for key, ids in listed.items():
                if ids:
                    fields[key] = list(ids[:MAX_IDS_RECORDED])
                    if len(ids) > MAX_IDS_RECORDED:
                        fields[f"{key}_count"] = len(ids)
            self._audit.append(fields).addErrback(lambda f: None)
        return taken

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
