"""Reload: a checked new config is swapped in whole; a bad one changes nothing."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

import pytest
from twisted.internet.task import Clock

from txairflowrpc.devstack.pki import DevPKI
from txairflowrpc.gate.tls import ReloadableTLS, server_options
from txairflowrpc.identity import tokens
from txairflowrpc.identity.authenticate import Gate, Unauthenticated
from txairflowrpc.service.checked import build_authenticator, load_checked
from txairflowrpc.service.reload import Reloader

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
    reloader._poll()
    assert "newcomer" in gate.current.access.principals
    assert run(gate.authenticate(FakeRequest(cert(common_name="newcomer")))).name == "newcomer"
    assert tls.options is not old_options  # certificates re-read
    event = audit_events(tmp)[-1]
    assert (event["event"], event["result"]) == ("config.reload", "accepted")


def test_a_bad_config_is_rejected_and_the_old_one_stays(setup) -> None:
    cfg, gate, tls, reloader, tmp = setup
    before = gate.current
    config = tmp / "airflowrpc.toml"
    config.write_text(config.read_text() + '\n[roles.broken]\nscopes = ["runs:explode"]\n')
    assert reloader.reload("SIGHUP") is False
    assert gate.current is before
    event = audit_events(tmp)[-1]
    assert (event["event"], event["result"], event["trigger"]) == (
        "config.reload", "rejected", "SIGHUP")
    assert "roles.broken.scopes" in event["error"]


def test_a_revocation_is_picked_up_without_a_restart(setup) -> None:
    cfg, gate, tls, reloader, tmp = setup
    store = cfg.access.auth.token_store
    record, token = tokens.create(store, "ci-bot", None, 90, datetime.now(timezone.utc))
    bump(store)
    reloader._poll()
    assert run(gate.authenticate(FakeRequest(None, f"Bearer {token}"))).name == "ci-bot"
    tokens.revoke(store, record.id, datetime.now(timezone.utc))
    bump(store)
    reloader._poll()
    with pytest.raises(Unauthenticated, match="revoked"):
        run(gate.authenticate(FakeRequest(None, f"Bearer {token}")))
