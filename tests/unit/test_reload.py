"""Reload: a checked new config is swapped in whole; a bad one changes nothing."""

from __future__ import annotations

import json
import os
import signal
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from treq.testing import StubTreq
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from txairflowrpc.devstack.pki import DevPKI
from txairflowrpc.gate.tls import ReloadableTLS, server_options
from txairflowrpc.identity import tokens
from txairflowrpc.identity.authenticate import Gate, Unauthenticated
from txairflowrpc.service.admin import HealthResource
from txairflowrpc.service.checked import build_authenticator, load_checked, served_certificates
from txairflowrpc.service.metrics import GatewayMetrics, PartsCollector
from txairflowrpc.service.reload import HangUp, Reloader

from .helpers import audit_log
from .test_access import FakeRequest, _patch_peer, cert, load, pki, run  # noqa: F401


def bump(path: Path) -> None:
    """Make a change visible to mtime polling even within one clock tick."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


@pytest.fixture
def setup(tmp_path: Path, pki: DevPKI):  # noqa: F811
    cfg = load(tmp_path, pki, mode="optional")
    clock = Clock()
    gate = Gate(build_authenticator(load_checked(cfg.source), http=None, clock=clock))
    tls = ReloadableTLS(server_options(cfg.tls, "optional"))
    audit = audit_log(str(tmp_path / "audit"), clock)
    reloader = Reloader(cfg, gate=gate, tls=tls, http=None, clock=clock, audit=audit)
    return cfg, gate, tls, reloader, tmp_path


def audit_events(tmp_path: Path) -> list[dict]:
    lines = (tmp_path / "audit" / "audit.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_a_good_config_is_swapped_in_whole(setup) -> None:
    cfg, gate, tls, reloader, tmp = setup
    old_options = tls.options
    config = tmp / "airflowrpc.toml"
    config.write_text(config.read_text() + '\n[principals.newcomer]\nroles = ["auditor"]\n'
                      'cert_cn = ["newcomer"]\n')
    bump(config)
    reloader._poll()  # seen changed: read once it stands still
    assert "newcomer" not in gate.current.access.principals
    reloader._poll()
    assert "newcomer" in gate.current.access.principals
    assert run(gate.authenticate(FakeRequest(cert(common_name="newcomer")))).name == "newcomer"
    assert tls.options is not old_options  # certificates re-read
    event = audit_events(tmp)[-1]
    assert (event["event"], event["result"]) == ("config.reload", "accepted")


def test_a_config_written_in_place_is_read_once_it_stands_still(setup) -> None:
    """
    Found by review: the watcher applied a config caught half-written (a
    prefix that parsed, without its principals): callers got 401 until the
    rest came.  A changed file is read once a poll finds it as the last did.
    """
    cfg, gate, tls, reloader, tmp = setup
    config = tmp / "airflowrpc.toml"
    whole = config.read_text()
    config.write_text(whole[:whole.index("[principals.")])  # parses: no principals
    bump(config)
    reloader._poll()
    config.write_text(whole + '\n[principals.newcomer]\nroles = ["auditor"]\n'
                      'cert_cn = ["newcomer"]\n')
    bump(config)
    reloader._poll()  # changed again: not read yet
    assert "ci-bot" in gate.current.access.principals and reloader.reloads == 0
    reloader._poll()
    assert {"ci-bot", "newcomer"} <= set(gate.current.access.principals)
    assert reloader.reloads == 1
    reloader._poll()  # nothing new: no reload
    assert reloader.reloads == 1


def test_an_edit_that_names_another_file_is_one_reload(setup) -> None:
    """
    Found by review: the files were stamped by the paths in force, so a
    config naming another certificate was seen as changed again at the next
    poll, and accepted a second time.
    """
    cfg, gate, tls, reloader, tmp = setup
    config = tmp / "airflowrpc.toml"
    moved = tmp / "moved-server.pem"
    moved.write_bytes(Path(cfg.tls.certificate).read_bytes())
    text = config.read_text()
    assert 'certificate = "tls/server.pem"' in text
    config.write_text(text.replace('certificate = "tls/server.pem"', f'certificate = "{moved}"'))
    bump(config)
    reloader._poll()
    reloader._poll()  # it stood still: read
    assert reloader.cfg.tls.certificate == moved and reloader.reloads == 1
    for _ in range(3):
        reloader._poll()
    assert reloader.reloads == 1
    assert [e["result"] for e in audit_events(tmp) if e.get("event") == "config.reload"] == [
        "accepted"]
    moved.write_bytes(moved.read_bytes())  # the new file is the one watched
    bump(moved)
    reloader._poll()
    reloader._poll()
    assert reloader.reloads == 2


def test_a_token_store_change_waits_for_no_config_change(setup) -> None:
    """A revocation beside a config being written is in force at once."""
    cfg, gate, tls, reloader, tmp = setup
    store, record, token = taken_token(cfg, gate, reloader)
    config = tmp / "airflowrpc.toml"
    config.write_text(config.read_text() + "\n")
    bump(config)
    tokens.revoke(store, record.id, datetime.now(timezone.utc))
    bump(store)
    reloader._poll()
    assert reloader.reloads == 0  # the config waits to stand still
    with pytest.raises(Unauthenticated, match="revoked"):
        run(gate.authenticate(FakeRequest(None, f"Bearer {token}")))
    reloader._poll()
    assert reloader.reloads == 1
    with pytest.raises(Unauthenticated, match="revoked"):
        run(gate.authenticate(FakeRequest(None, f"Bearer {token}")))


def test_a_broken_token_store_is_a_rejected_reload_until_it_is_mended(setup) -> None:
    """
    Found by review: a store broken on disk (a revocation in it not in force)
    left the gauge at 1 and counted nothing; after a SIGHUP had said 0, the
    mended store never brought it back to 1.
    """
    cfg, gate, tls, reloader, tmp = setup
    store, record, token = taken_token(cfg, gate, reloader)
    good = store.read_text()
    store.write_text(good[:len(good) // 2])  # cut short: no JSON
    bump(store)
    reloader._poll()
    assert (reloader.last_reload_successful, reloader.rejected) == (False, 1)
    event = audit_events(tmp)[-1]
    assert (event["event"], event["result"], event["trigger"]) == (
        "config.reload", "rejected", "file change: tokens")
    assert event["error"].startswith(f"auth.token_store: {store} is not a token store")
    assert run(gate.authenticate(FakeRequest(None, f"Bearer {token}"))).name == "ci-bot"
    assert reloader.reload("SIGHUP").result is False  # the store is read there too
    assert reloader.rejected == 2
    store.write_text(good)
    bump(store)
    reloader._poll()
    assert (reloader.last_reload_successful, reloader.rejected, reloader.reloads) == (
        True, 2, 1)


def test_after_a_rejected_reload_a_token_change_does_not_read_a_config_being_written(
        setup) -> None:
    """
    Found by review: with the last reload rejected, a store change read
    everything again at once, the config caught half-written too.
    """
    cfg, gate, tls, reloader, tmp = setup
    store, record, token = taken_token(cfg, gate, reloader)
    config = tmp / "airflowrpc.toml"
    whole = config.read_text()
    config.write_text(whole + '\n[roles.broken]\nscopes = ["runs:explode"]\n')
    assert reloader.reload("SIGHUP").result is False
    config.write_text(whole[:whole.index("[principals.")])  # half written: no principals
    bump(config)
    tokens.revoke(store, record.id, datetime.now(timezone.utc))
    bump(store)
    reloader._poll()
    assert "ci-bot" in gate.current.access.principals and reloader.reloads == 0
    with pytest.raises(Unauthenticated, match="revoked"):
        run(gate.authenticate(FakeRequest(None, f"Bearer {token}")))
    config.write_text(whole)
    bump(config)
    reloader._poll()
    reloader._poll()
    assert reloader.reloads == 1 and reloader.last_reload_successful


def test_a_bad_config_is_rejected_and_the_old_one_stays(setup) -> None:
    cfg, gate, tls, reloader, tmp = setup
    before = gate.current
    config = tmp / "airflowrpc.toml"
    config.write_text(config.read_text() + '\n[roles.broken]\nscopes = ["runs:explode"]\n')
    assert reloader.reload("SIGHUP").result is False
    assert gate.current is before
    event = audit_events(tmp)[-1]
    assert (event["event"], event["result"], event["trigger"]) == (
        "config.reload", "rejected", "SIGHUP")
    assert "roles.broken.scopes" in event["error"]


def test_systemd_is_told_while_the_config_on_disk_is_not_in_force(setup) -> None:
    """
    Found by review: a config the gateway's own watch rejected left systemd's
    STATUS saying all was well (`notify.Readiness.remark` says it).
    """
    cfg, gate, tls, _, tmp = setup
    told: list[str | None] = []
    reloader = Reloader(cfg, gate=gate, tls=tls, http=None, clock=Clock(), audit=None,
                        told=told.append)
    config = tmp / "airflowrpc.toml"
    good = config.read_text()
    config.write_text(good + '\n[roles.broken]\nscopes = ["runs:explode"]\n')
    assert reloader.reload("file change: config").result is False
    assert told[-1] is not None and told[-1].startswith(
        "the config on disk is not in force: roles.broken.scopes")
    config.write_text(good)
    assert reloader.reload("file change: config").result is True
    assert told[-1] is None


def taken_token(cfg, gate, reloader) -> tuple[Path, tokens.TokenRecord, str]:
    """A token created in the store and taken by the gateway (its poll), shown to work."""
    store = cfg.access.auth.token_store
    record, token = tokens.create(store, "ci-bot", None, 90, datetime.now(timezone.utc))
    bump(store)
    reloader._poll()
    assert run(gate.authenticate(FakeRequest(None, f"Bearer {token}"))).name == "ci-bot"
    return store, record, token


def test_a_revocation_is_picked_up_without_a_restart(setup) -> None:
    cfg, gate, tls, reloader, tmp = setup
    store, record, token = taken_token(cfg, gate, reloader)
    tokens.revoke(store, record.id, datetime.now(timezone.utc))
    bump(store)
    reloader._poll()
    with pytest.raises(Unauthenticated, match="revoked"):
        run(gate.authenticate(FakeRequest(None, f"Bearer {token}")))



def test_a_backup_put_back_does_not_undo_a_revocation_and_the_trail_says_so(setup) -> None:
    """
    Found by review: a copy of the store from before a revocation, put back,
    made the revoked token work again, with no line in the log and nothing
    on the trail.  A revocation the gateway took stays, and every change to
    the store it takes is recorded (tokens.reloaded).
    """
    cfg, gate, tls, reloader, tmp = setup
    store, record, token = taken_token(cfg, gate, reloader)
    backup = store.read_bytes()
    tokens.revoke(store, record.id, datetime.now(timezone.utc))
    bump(store)
    reloader._poll()
    store.write_bytes(backup)  # the backup, put back
    bump(store)
    reloader._poll()
    with pytest.raises(Unauthenticated, match="revoked"):
        run(gate.authenticate(FakeRequest(None, f"Bearer {token}")))
    changes = [e for e in audit_events(tmp) if e.get("event") == "tokens.reloaded"]
    assert [(e.get("added"), e.get("revoked"), e.get("kept_revoked")) for e in changes] == [
        ([record.id], None, None), (None, [record.id], None), (None, None, [record.id])]
    # A full reload (the config changed) keeps it revoked too.
    reloader.reload("SIGHUP")
    with pytest.raises(Unauthenticated, match="revoked"):
        run(gate.authenticate(FakeRequest(None, f"Bearer {token}")))


def test_a_revocation_or_rotation_is_not_undone_in_two_steps_either(setup) -> None:
    """
    Found by a second review: the record removed first, then the backup put
    back, brought a revoked token back (it came back as added); a backup
    from before a rotation gave the old token its 90 days again; and the
    file touched again and again said so at every look.
    """
    cfg, gate, tls, reloader, tmp = setup
    store, record, token = taken_token(cfg, gate, reloader)
    other, other_token = tokens.create(store, "ci-bot", None, 90, datetime.now(timezone.utc))
    bump(store)
    reloader._poll()
    backup = store.read_bytes()
    tokens.revoke(store, record.id, datetime.now(timezone.utc))
    tokens.rotate(store, other.id, 90, timedelta(minutes=5), datetime.now(timezone.utc))
    bump(store)
    reloader._poll()
    data = json.loads(store.read_text())
    data["tokens"] = [r for r in data["tokens"] if r["id"] != record.id]
    store.write_text(json.dumps(data))  # step one: the revoked record removed
    bump(store)
    reloader._poll()
    for _ in range(3):  # step two: the backup, put back (and touched again)
        store.write_bytes(backup)
        bump(store)
        reloader._poll()
    with pytest.raises(Unauthenticated, match="revoked"):
        run(gate.authenticate(FakeRequest(None, f"Bearer {token}")))
    kept = gate.current.tokens.records[other.id]
    assert kept.expires < datetime.now(timezone.utc) + timedelta(minutes=6)  # not 90 days
    said = [e for e in audit_events(tmp) if e.get("event") == "tokens.reloaded"
            and (e.get("kept_revoked") or e.get("kept_expiry"))]
    assert len(said) == 1  # once, not at every look
    assert (said[0]["kept_revoked"], said[0]["kept_expiry"]) == ([record.id], [other.id])


def test_a_revocation_in_the_same_clock_tick_as_the_last_write_is_picked_up(setup) -> None:
    """
    The kernel stamps a file's mtime from a coarse clock (a tick of some
    milliseconds): a store written again within the tick of the version
    the poll saw kept its mtime, and the revocation was missed until the
    next change.  The poll compares inode, size and ctime too.
    """
    cfg, gate, tls, reloader, tmp = setup
    store, record, token = taken_token(cfg, gate, reloader)
    seen = store.stat()
    tokens.revoke(store, record.id, datetime.now(timezone.utc))
    os.utime(store, ns=(seen.st_atime_ns, seen.st_mtime_ns))  # the same tick's mtime
    reloader._poll()
    with pytest.raises(Unauthenticated, match="revoked"):
        run(gate.authenticate(FakeRequest(None, f"Bearer {token}")))

def test_a_revocation_holds_when_a_reload_beside_it_is_rejected(setup) -> None:
    """
    Found by review: a SIGHUP rejected (a half-renewed certificate, a typo)
    right after ``token revoke`` marked the store's change as seen without
    reading it, so the revoked token kept working until another change.
    """
    cfg, gate, tls, reloader, tmp = setup
    store, record, token = taken_token(cfg, gate, reloader)
    config = tmp / "airflowrpc.toml"
    config.write_text(config.read_text() + '\n[roles.broken]\nscopes = ["runs:explode"]\n')
    tokens.revoke(store, record.id, datetime.now(timezone.utc))
    bump(store)
    assert reloader.reload("SIGHUP").result is False
    with pytest.raises(Unauthenticated, match="revoked"):
        run(gate.authenticate(FakeRequest(None, f"Bearer {token}")))
    reloader._poll()  # and no later poll undoes it
    with pytest.raises(Unauthenticated, match="revoked"):
        run(gate.authenticate(FakeRequest(None, f"Bearer {token}")))


def test_an_unreadable_token_store_is_a_rejected_reload_not_a_traceback(setup) -> None:
    """Found by review: PermissionError escaped every reload, a traceback each second."""
    cfg, gate, tls, reloader, tmp = setup
    before = gate.current
    store = cfg.access.auth.token_store
    tokens.create(store, "ci-bot", None, 90, datetime.now(timezone.utc))
    original = tokens.TokenStore.load

    def unreadable(path: Path) -> tokens.TokenStore:
        if path == store:
            raise PermissionError(13, "Permission denied", str(path))  # whatever escapes
        return original(path)

    tokens.TokenStore.load = unreadable  # type: ignore[method-assign]
    try:
        assert reloader.reload("SIGHUP").result is False
    finally:
        tokens.TokenStore.load = original  # type: ignore[method-assign]
    assert gate.current is before
    event = audit_events(tmp)[-1]
    assert (event["result"], "Permission denied" in event["error"]) == ("rejected", True)


def test_a_store_read_fails_cleanly_and_is_rewritten_with_its_owner(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = tmp_path / "tokens.json"
    tokens.create(store, "ci-bot", None, 90, datetime.now(timezone.utc))
    store.chmod(0)
    if os.geteuid() != 0:  # root reads it anyway: the message is checked on a directory
        with pytest.raises(ValueError, match="cannot be read: Permission denied"):
            tokens.TokenStore.load(store)
    store.chmod(0o600)
    with pytest.raises(ValueError, match="cannot be read: Is a directory"):
        tokens.TokenStore.load(tmp_path)
    chowned: list[tuple[int, int]] = []
    real, stat = os.stat(store), os.stat
    monkeypatch.setattr(os, "fchown", lambda fd, uid, gid: chowned.append((uid, gid)))
    monkeypatch.setattr(os, "stat", lambda p, *a, **k: SimpleNamespace(
        st_uid=real.st_uid + 1, st_gid=real.st_gid + 1, st_mode=0o100664)
        if Path(p) == store else stat(p, *a, **k))
    tokens.create(store, "ci-bot", None, 90, datetime.now(timezone.utc))
    assert chowned == [(real.st_uid + 1, real.st_gid + 1)]  # the store's owner, kept
    assert stat(store).st_mode & 0o777 == 0o640  # its group's read: never write, nor others'

    def refused(fd: int, uid: int, gid: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "fchown", refused)
    with pytest.raises(tokens.TokenOwnerError, match="run as that user"):
        tokens.create(store, "ci-bot", None, 90, datetime.now(timezone.utc))
    assert len(tokens.TokenStore.load(store).records) == 2  # unchanged
    assert not list(tmp_path.glob(".tokens-*"))  # no temporary file left


def test_the_access_version_changes_with_the_token_store_and_nothing_else(setup) -> None:
    """A keep-alive connection reuses its verdict only while the version stays."""
    cfg, gate, tls, reloader, tmp = setup
    before = gate.version()
    reloader._poll()  # nothing changed on disk
    assert all(a is b for a, b in zip(before, gate.version(), strict=True))
    store = cfg.access.auth.token_store
    tokens.create(store, "ci-bot", None, 90, datetime.now(timezone.utc))
    bump(store)
    reloader._poll()
    assert gate.version()[0] is not before[0]


def test_a_reload_applies_every_section_it_can_and_names_the_rest(setup) -> None:
    """Before: [limits], [rpc] and the back-off were silently ignored by a reload."""
    cfg, gate, tls, _, tmp = setup
    from twisted.internet.task import Clock as _Clock

    from txairflowrpc.identity.backoff import Backoff
    from txairflowrpc.service.tap import build_site

    clock = _Clock()
    audit = audit_log(str(tmp / "audit"), clock)
    parts = build_site(cfg, clock, None, audit, gate.authenticate, Backoff(clock, 30))
    reloader = Reloader(cfg, gate=gate, tls=tls, http=None, clock=clock, audit=audit,
                        apply=parts.apply)
    config = tmp / "airflowrpc.toml"
    config.write_text(config.read_text().replace("port = 8443", "port = 9443").replace(
        "[auth]", "[limits]\nrate_per_second = 2.5\nmax_connections_per_source = 7\n"
        "call_deadline_seconds = 9\nshutdown_seconds = 25\nipv6_source_prefix = 128\n"
        "[rpc]\nmax_multicall = 3\nwait_poll_seconds = 0.5\n"
        "read_cache_seconds = 1.5\n"
        "[auth]\nfailure_backoff_max_seconds = 4"))
    assert reloader.reload("SIGHUP").result is True
    assert (parts.limits.rate, parts.site.limits.max_connections_per_source) == (2.5, 7)
    assert (parts.dispatcher.deadline, parts.dispatcher.max_multicall) == (9, 3)
    assert (parts.watcher.poll_interval, parts.site.backoff.maximum) == (0.5, 4)
    assert parts.site.limits.max_connections_per_source == 7
    assert parts.client.read_cache_seconds == 1.5
    assert (parts.site.backoff.ipv6_prefix, parts.refusals.ipv6_prefix) == (128, 128)
    event = [e for e in audit_events(tmp) if e.get("event") == "config.reload"][-1]
    # Found by review: shutdown_seconds was accepted, and the drain kept the old one.
    assert (event["result"], event["needs_restart"]) == (
        "accepted", ["listen", "limits.shutdown_seconds"])


def test_an_unknown_token_costs_no_file_access(setup, monkeypatch: pytest.MonkeyPatch) -> None:
    """Anyone can send well-formed tokens at will: the store is never looked at for them."""
    cfg, gate, tls, reloader, tmp = setup
    touched: list[str] = []
    real_stat, real_open = os.stat, open

    def stat(*args, **kwargs):  # type: ignore[no-untyped-def]
        touched.append(f"stat {args[0]}")
        return real_stat(*args, **kwargs)

    def opened(*args, **kwargs):  # type: ignore[no-untyped-def]
        touched.append(f"open {args[0]}")
        return real_open(*args, **kwargs)

    monkeypatch.setattr(os, "stat", stat)
    monkeypatch.setattr("builtins.open", opened)
    for _ in range(20):
        with pytest.raises(Unauthenticated, match="unknown token"):
            run(gate.authenticate(FakeRequest(None, f"Bearer {tokens.mint()[1]}")))
    assert touched == []


def test_the_access_version_changes_with_a_jwks_refetch() -> None:
    keyset = SimpleNamespace(keys=object())
    gate = Gate(SimpleNamespace(jwks={"idp": keyset}))  # type: ignore[arg-type]
    before = gate.version()
    assert all(a is b for a, b in zip(before, gate.version(), strict=True))
    keyset.keys = object()  # what JWKSet.refresh does with a new key set
    assert not all(a is b for a, b in zip(before, gate.version(), strict=True))


def test_a_new_airflow_password_file_is_picked_up_by_a_reload(setup) -> None:
    """A principal's own Airflow account: its password file is watched like the config."""
    cfg, gate, tls, _, tmp = setup
    from txairflowrpc.identity.backoff import Backoff
    from txairflowrpc.service.tap import build_site

    password = tmp / "builder-password"
    password.write_text("pw-first-7f3a\n")
    config = tmp / "airflowrpc.toml"
    config.write_text(config.read_text() + '\n[principals.builder]\nroles = ["auditor"]\n'
                      'cert_cn = ["builder"]\nairflow_user = "builder"\n'
                      f'airflow_password_file = "{password}"\n')
    cfg = load_checked(config).config
    clock = Clock()
    audit = audit_log(str(tmp / "audit"), clock)
    parts = build_site(cfg, clock, None, audit, gate.authenticate, Backoff(clock, 30))
    reloader = Reloader(cfg, gate=gate, tls=tls, http=None, clock=clock, audit=audit,
                        apply=parts.apply)
    reloader._poll()  # the first look: what is there now
    before = parts.accounts.for_principal("builder")
    assert before.user == "builder"
    password.write_text("pw-second-7f3a\n")
    bump(password)
    reloader._poll()
    reloader._poll()  # it stood still
    after = parts.accounts.for_principal("builder")
    assert after is not before and after.user == "builder"
    event = [e for e in audit_events(tmp) if e.get("event") == "config.reload"][-1]
    assert event["trigger"] == "file change: airflow_password:builder"
    assert "7f3a" not in json.dumps(audit_events(tmp))


def test_a_read_that_ends_after_a_newer_one_is_dropped(tmp_path: Path, pki: DevPKI) -> None:
    """
    Two reloads overlap (a poll and a SIGHUP): the older read, if it ends
    last, must not undo the newer (a principal removed would come back).
    """
    cfg = load(tmp_path, pki, mode="optional")
    clock = Clock()
    gate = Gate(build_authenticator(load_checked(cfg.source), http=None, clock=clock))
    pending: list[tuple[Deferred[Any], Any]] = []

    def run_blocking(work: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        pending.append((d, work()))  # the files as they are now; the answer later
        return d

    reloader = Reloader(cfg, gate=gate, tls=ReloadableTLS(server_options(cfg.tls, "optional")),
                        http=None, clock=clock, audit=None, run_blocking=run_blocking)
    config = tmp_path / "airflowrpc.toml"
    base = config.read_text()
    config.write_text(base + '\n[principals.leaving]\nroles = ["auditor"]\ncert_cn = ["x"]\n')
    older = reloader.reload("file change")
    config.write_text(base)  # "leaving" removed
    newer = reloader.reload("SIGHUP")
    pending[1][0].callback(pending[1][1])
    pending[0][0].callback(pending[0][1])
    assert (newer.result, older.result) == (True, False)
    assert "leaving" not in gate.current.access.principals


def test_the_certificate_reported_is_the_one_in_force_not_the_file(tmp_path: Path) -> None:
    """
    Found by review: the expiry metric and /readyz read tls.certificate from disk, so a
    renewal whose reload was rejected (a typo elsewhere in the config) cleared the alert
    while the certificate still served ran out, and /readyz stayed green past its expiry.
    """
    own = DevPKI.create(tmp_path / "pki")  # its files are rewritten: not the shared one
    now = datetime.now(timezone.utc)

    def issue(days: int) -> None:
        leaf = own.ca.issue_cert("localhost", common_name="localhost",
                                 not_after=now + timedelta(days=days))
        leaf.cert_chain_pems[0].write_to_path(str(own.directory / "server.pem"))
        leaf.private_key_pem.write_to_path(str(own.directory / "server.key"))

    issue(2)
    cfg = load(tmp_path, own, mode="optional")
    clock = Clock()
    clock.advance(now.timestamp())
    gate = Gate(build_authenticator(load_checked(cfg.source), http=None, clock=clock))
    tls = ReloadableTLS(server_options(cfg.tls, "optional"))
    reloader = Reloader(cfg, gate=gate, tls=tls, http=None, clock=clock, audit=None)
    metrics = GatewayMetrics()
    metrics.collect_from(PartsCollector(config=lambda: reloader.cfg, clock=clock,
                                        certificates=lambda: served_certificates(tls.options)))
    health = StubTreq(HealthResource(
        config=lambda: reloader.cfg, airflow_reachable=lambda: succeed(True),
        audit=audit_log(str(tmp_path / "audit"), clock), counters=dict, clock=clock,
        certificates=lambda: served_certificates(tls.options)))

    config = tmp_path / "airflowrpc.toml"
    config.write_text(config.read_text() + "\n[rpc]\nmax_multical = 5\n")
    issue(365)  # renewed on disk, but the reload that would load it is rejected
    assert reloader.reload("SIGHUP").result is False
    left = metrics.registry.get_sample_value("airflowrpc_certificate_expiry_seconds",
                                             {"certificate": "tls.certificate"})
    assert left is not None and 1.9 < left / 86400 <= 2
    clock.advance(3 * 86400)
    response = health.get("http://admin.test/readyz").result
    body = json.loads(health.content(response).result)
    assert (response.code, body["checks"]["certificates"]["ok"]) == (503, False)


def test_a_reload_to_an_expired_certificate_is_rejected(tmp_path: Path) -> None:
    """Found by review: it was accepted, in place of the good one in force (503 /readyz)."""
    own = DevPKI.create(tmp_path / "pki")
    cfg = load(tmp_path, own, mode="optional")
    clock = Clock()
    gate = Gate(build_authenticator(load_checked(cfg.source), http=None, clock=clock))
    tls = ReloadableTLS(server_options(cfg.tls, "optional"))
    in_force = tls.options
    reloader = Reloader(cfg, gate=gate, tls=tls, http=None, clock=clock, audit=None)
    leaf = own.ca.issue_cert("localhost", common_name="localhost",
                             not_after=datetime.now(timezone.utc) - timedelta(days=1))
    leaf.cert_chain_pems[0].write_to_path(str(own.directory / "server.pem"))
    leaf.private_key_pem.write_to_path(str(own.directory / "server.key"))
    assert reloader.reload("SIGHUP").result is False
    assert tls.options is in_force and reloader.last_reload_successful is False


def test_the_last_reload_stays_failed_until_a_good_one(setup) -> None:
    """
    Found by review: the alert on a rejected reload was increase() over 15 minutes of a
    counter bumped once per file change, so it cleared while the rejected config was
    still on disk.  The gauge stays 0 until a reload is accepted.
    """
    *_, reloader, tmp = setup
    metrics = GatewayMetrics()
    metrics.collect_from(PartsCollector(config=lambda: reloader.cfg, clock=Clock(),
                                        reloader=reloader))

    def last() -> float | None:
        return metrics.registry.get_sample_value("airflowrpc_config_last_reload_successful")

    assert last() == 1
    config = tmp / "airflowrpc.toml"
    good = config.read_text()
    config.write_text(good + "\n[rpc]\nmax_multical = 5\n")
    assert reloader.reload("SIGHUP").result is False
    reloader._poll()  # nothing changed since: no new reload, nothing forgotten
    assert (last(), reloader.rejected) == (0, 1)
    config.write_text(good)
    bump(config)
    assert reloader.reload("SIGHUP").result is True
    assert last() == 1
    assert metrics.registry.get_sample_value("airflowrpc_config_reloads_total",
                                             {"result": "rejected"}) == 1


def test_a_sighup_while_stopping_is_ignored_not_the_end_of_the_process() -> None:
    """
    Found by review: stopping put back the handler before it (the default:
    terminate) before the audit trail had closed; a SIGHUP then (a reload
    racing a stop) killed the process without its shutdown checkpoint.
    """
    reloads: list[str] = []
    reactor = SimpleNamespace(callFromThread=lambda f, *a: f(*a))
    before = signal.getsignal(signal.SIGHUP)
    try:
        hangup = HangUp(reactor, reloads.append)  # type: ignore[arg-type]
        hangup.startService()
        os.kill(os.getpid(), signal.SIGHUP)
        assert reloads == ["SIGHUP"]
        hangup.stopService()
        os.kill(os.getpid(), signal.SIGHUP)  # with the default handler, the test run would end
        assert reloads == ["SIGHUP"]
        # Ignored by the kernel: Python puts the default back for its own handlers at exit.
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, before)


def with_crl(setup, pki: DevPKI, revoked: bool, **crl: Any) -> SimpleNamespace:  # noqa: F811
    """
    The setup's gateway given ``tls.client_crl`` (the PKI's list, revoking
    the ci-bot certificate if ``revoked``), read in by a reload; the parts
    a test needs: the gate, the reloader, the list's path, the config text,
    the certificate's files and the certificate as the gateway sees it.
    """
    from cryptography import x509

    from txairflowrpc.identity.certificates import PeerCertificate

    _, gate, _, reloader, tmp = setup
    files = pki.client("ci-bot.example.com")
    leaf = x509.load_pem_x509_certificate(files.cert.read_bytes())
    mine = PeerCertificate.from_cryptography(
        leaf, [leaf, x509.load_pem_x509_certificate(pki.ca_file.read_bytes())])
    path = pki.write_crl(tmp / "crl.pem", (files,) if revoked else (), **crl)
    config = tmp / "airflowrpc.toml"
    text = config.read_text().replace(
        'client_ca = "tls/ca.pem"', f'client_ca = "tls/ca.pem"\nclient_crl = "{path}"', 1)
    config.write_text(text)
    bump(config)
    reloader._poll()
    reloader._poll()
    assert gate.current.revocations is not None
    return SimpleNamespace(gate=gate, reloader=reloader, tmp=tmp, crl=path, config=config,
                           text=text, files=files, mine=mine)


def polled(reloader: Reloader) -> None:
    """Two looks: a change is seen, then read once it stood still."""
    reloader._poll()
    reloader._poll()


def test_a_revocation_list_is_watched_and_a_new_one_reloaded(setup, pki: DevPKI) -> None:  # noqa: F811
    """``tls.client_crl``: a certificate its CA revokes is refused once the new list is seen."""
    it = with_crl(setup, pki, revoked=False,
                  next_update=datetime.now(timezone.utc) + timedelta(days=6))
    assert run(it.gate.authenticate(FakeRequest(it.mine))).name == "ci-bot"
    pki.write_crl(it.crl, (it.files,))
    bump(it.crl)
    polled(it.reloader)
    with pytest.raises(Unauthenticated, match="revoked by its CA"):
        run(it.gate.authenticate(FakeRequest(it.mine)))
    event = [e for e in audit_events(it.tmp) if e.get("event") == "config.reload"][-1]
    assert (event["trigger"], event["result"]) == ("file change: client_crl", "accepted")


def test_an_older_revocation_list_put_back_is_taken_and_said_loudly(setup, pki: DevPKI) -> None:  # noqa: F811
    """
    Found by review: a backup of the list put back let a revoked certificate
    in again, unsaid.  Refusing it went wrong in turn (a replaced worker,
    with no memory of the newer list, disagreed with its sibling; every
    other change of the config was held back; a list dated ahead blocked the
    CA's real ones): the file decides, in every process alike, and an older
    list than the one in force is an error in the log.
    """
    from twisted.logger import globalLogPublisher

    it = with_crl(setup, pki, revoked=True)
    with pytest.raises(Unauthenticated, match="revoked by its CA"):
        run(it.gate.authenticate(FakeRequest(it.mine)))
    it.reloader._clock.advance(datetime.now(timezone.utc).timestamp())  # today, not 1970
    logged: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(logged.append)
    try:
        # Last week's list, which did not name it yet, and a change elsewhere.
        pki.write_crl(it.crl, next_update=datetime.now(timezone.utc) - timedelta(days=3))
        it.config.write_text(it.text + '\n[principals.newcomer]\nroles = ["auditor"]\n'
                             'cert_cn = ["newcomer"]\n')
        bump(it.crl)
        bump(it.config)
        polled(it.reloader)
    finally:
        globalLogPublisher.removeObserver(logged.append)
    assert it.reloader.last_reload_successful
    assert "newcomer" in it.gate.current.access.principals
    assert run(it.gate.authenticate(FakeRequest(it.mine))).name == "ci-bot"
    said = [e["warning"] for e in logged if "warning" in e]
    assert any("before the one it replaces" in w and "let in again" in w for w in said), said
    assert any("was due for renewal" in w for w in said), said
    assert not any("after now" in w for w in said), said


def test_a_new_revocation_list_does_not_wait_for_a_typo_elsewhere(setup, pki: DevPKI) -> None:  # noqa: F811
    """Found by review: a reload rejected for an unknown section kept the new list out too."""
    it = with_crl(setup, pki, revoked=False)
    assert run(it.gate.authenticate(FakeRequest(it.mine))).name == "ci-bot"
    it.config.write_text(it.text + "\n[typo_section]\n")
    pki.write_crl(it.crl, (it.files,))
    bump(it.config)
    bump(it.crl)
    polled(it.reloader)
    assert not it.reloader.last_reload_successful
    with pytest.raises(Unauthenticated, match="revoked by its CA"):
        run(it.gate.authenticate(FakeRequest(it.mine)))


def test_a_reload_that_removes_a_principal_with_live_tokens_says_so(setup) -> None:
    """Its tokens are refused from then on, but alive: the log names them to revoke."""
    from twisted.logger import globalLogPublisher

    cfg, gate, _, reloader, tmp = setup
    record, _ = tokens.create(cfg.access.auth.token_store, "auditor", None, 9,
                              datetime.now(timezone.utc))
    reloader._clock.advance(datetime.now(timezone.utc).timestamp())
    config = tmp / "airflowrpc.toml"
    config.write_text(config.read_text().replace(
        '[principals.auditor]\nroles = ["auditor"]\ncert_email = ["auditor@example.com"]\n', ""))
    bump(config)
    logged: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(logged.append)
    try:
        polled(reloader)
    finally:
        globalLogPublisher.removeObserver(logged.append)
    assert "auditor" not in gate.current.access.principals
    said = [e["warning"] for e in logged if "warning" in e]
    assert any(f"(auditor: {record.id})" in w for w in said), said
