"""Gateway tokens: format, checksum, store, rotation, revocation."""

from __future__ import annotations

import json
import os
import stat
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from txairflowrpc.identity import tokens

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=timezone.utc)


def test_minted_tokens_have_prefix_id_and_a_valid_checksum() -> None:
    token_id, token = tokens.mint()
    assert token.startswith(f"arpc_{token_id}_")
    assert len(token) == len("arpc_") + 10 + 1 + 32 + 6
    assert tokens.parse(token) == token_id
    assert tokens.mint()[1] != token


def test_a_typo_fails_the_checksum_without_a_lookup() -> None:
    _, token = tokens.mint()
    i = 20
    typo = token[:i] + ("A" if token[i] != "A" else "B") + token[i + 1:]
    assert tokens.parse(typo) is None
    assert tokens.parse("arpc_short") is None
    assert tokens.parse("ghp_" + token[5:]) is None


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "tokens.json"


def test_the_store_keeps_only_a_hash_and_is_private(store_path: Path) -> None:
    record, token = tokens.create(store_path, "ci-bot", None, 90, NOW)
    text = store_path.read_text()
    secret = token.split("_")[2]
    assert secret not in text and token not in text
    assert json.loads(text)["tokens"][0]["sha256"] == tokens.token_hash(token)
    assert stat.S_IMODE(store_path.stat().st_mode) == 0o600
    assert record.expires == NOW + timedelta(days=90)


def test_check_accepts_a_live_token_and_refuses_the_rest(store_path: Path) -> None:
    record, token = tokens.create(store_path, "ci-bot", ("ci",), 90, NOW)
    store = tokens.TokenStore.load(store_path)
    assert store.check(token, NOW).principal == "ci-bot"
    assert store.check(token, NOW).roles == ("ci",)
    wrong_secret = tokens.PREFIX + record.id + "_" + "x" * 32
    wrong_secret += tokens._checksum(wrong_secret)
    with pytest.raises(tokens.TokenError, match="unknown token"):
        store.check(wrong_secret, NOW)
    other_id, other = tokens.mint()
    with pytest.raises(tokens.TokenError, match="unknown token"):
        store.check(other, NOW)
    with pytest.raises(tokens.TokenError, match="expired"):
        store.check(token, NOW + timedelta(days=90))
    with pytest.raises(tokens.TokenError, match="malformed"):
        store.check("not-a-token", NOW)


def test_revoke_refuses_at_once(store_path: Path) -> None:
    record, token = tokens.create(store_path, "ci-bot", None, 90, NOW)
    tokens.revoke(store_path, record.id, NOW)
    with pytest.raises(tokens.TokenError, match="revoked"):
        tokens.TokenStore.load(store_path).check(token, NOW)


def test_rotation_overlaps_then_the_old_token_dies(store_path: Path) -> None:
    old, old_token = tokens.create(store_path, "ci-bot", None, 90, NOW)
    overlap = timedelta(hours=24)
    old_after, new, new_token = tokens.rotate(store_path, old.id, 90, overlap, NOW)
    store = tokens.TokenStore.load(store_path)
    assert store.check(old_token, NOW + timedelta(hours=23)).id == old.id
    assert store.check(new_token, NOW + timedelta(hours=25)).id == new.id
    with pytest.raises(tokens.TokenError, match="expired"):
        store.check(old_token, NOW + overlap)
    assert old_after.rotated_to == new.id and new.last_rotated == NOW
    with pytest.raises(ValueError, match="only an active token rotates"):
        tokens.rotate(store_path, old.id, 90, overlap, NOW + timedelta(hours=30))


def test_listing_shows_no_secret_and_no_hash(store_path: Path) -> None:
    record, token = tokens.create(store_path, "ci-bot", None, 90, NOW)
    rows = list(tokens.listing(store_path, NOW))
    assert rows == [{"id": record.id, "principal": "ci-bot", "roles": "(principal's)",
                     "created": "2026-11-26T12:00:00Z", "expires": "2027-02-24T12:00:00Z",
                     "state": "active"}]
    assert record.sha256 not in json.dumps(rows)


def test_expiry_is_mandatory(store_path: Path) -> None:
    with pytest.raises(ValueError):
        tokens.create(store_path, "ci-bot", None, 0, NOW)


@pytest.mark.parametrize(("change", "says"), [
    (lambda r: {**r, "expires": "2030-01-01T00:00:00"}, "expires is not a time as the command"),
    (lambda r: {**r, "expires": "9999-12-31T23:59:59-01:00"}, "expires is not a time as the"),
    (lambda r: {**r, "roles": "operator"}, "roles are not a list of names"),
    (lambda r: {**r, "revoked": False}, "revoked is not what it should be"),
    (lambda r: {**r, "sha256": "x"}, "sha256 is not what it should be"),
    (lambda r: {**r, "id": "../etc"}, "id is not what it should be"),
    (lambda r: [r], "not an object"),
])
def test_a_record_not_as_the_command_writes_it_is_no_store(
        store_path: Path, change: Any, says: str) -> None:
    """
    Found by review: a hand-edited expiry without a zone raised at every use
    of its token (a traceback, 401); roles as a string became its letters.
    """
    tokens.create(store_path, "ci-bot", None, 30, NOW)
    data = json.loads(store_path.read_text())
    data["tokens"] = [change(r) for r in data["tokens"]]
    store_path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=says):
        tokens.TokenStore.load(store_path)


def test_an_id_twice_is_no_store(store_path: Path) -> None:
    """Found by review: the last of two won: a live copy of a revoked token came back."""
    record, _ = tokens.create(store_path, "ci-bot", None, 30, NOW)
    tokens.revoke(store_path, record.id, NOW)
    data = json.loads(store_path.read_text())
    data["tokens"].append({**data["tokens"][0], "revoked": None})
    store_path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="a token id is there twice"):
        tokens.TokenStore.load(store_path)
    store_path.write_text('{"tokens": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(ValueError, match="nests too deeply"):
        tokens.TokenStore.load(store_path)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give files away")
def test_root_s_first_command_leaves_the_store_to_its_directory_s_owner(tmp_path: Path) -> None:
    """
    Found by review: root's first `token create` left the store and its lock
    root's, 0600: the service's user could read neither, nor lock it to revoke.
    """
    directory = tmp_path / "svc"
    directory.mkdir()
    os.chown(directory, 65534, 65534)  # the service's user (nobody here)
    store = directory / "tokens.json"
    tokens.create(store, "ci-bot", None, 30, NOW)
    for path in (store, directory / "tokens.json.lock"):
        st = path.stat()
        assert (st.st_uid, st.st_gid) == (65534, 65534), path


def test_history_keeps_a_revocation_and_a_shortened_expiry_a_backup_would_undo(
    store_path: Path,
) -> None:
    revoked, revoked_token = tokens.create(store_path, "ci-bot", None, 90, NOW)
    rotated, _ = tokens.create(store_path, "deploy-bot", None, 90, NOW)
    backup = tokens.TokenStore.load(store_path)
    history = tokens.TokenHistory()
    _, change = history.take(None, backup)
    assert change.added == tuple(sorted((revoked.id, rotated.id))) and change.held is None
    tokens.revoke(store_path, revoked.id, NOW)
    tokens.rotate(store_path, rotated.id, 90, timedelta(hours=1), NOW)
    now_store, change = history.take(backup, tokens.TokenStore.load(store_path))
    assert change.revoked == (revoked.id,) and len(change.added) == 1
    successor = change.added

    put_back, change = history.take(now_store, backup)  # the backup put back
    assert change.held == ((revoked.id,), (rotated.id,))
    assert (change.removed, change.added, change.revoked) == (successor, (), ())
    with pytest.raises(tokens.TokenError, match="revoked"):
        put_back.check(revoked_token, NOW)
    assert put_back.records[rotated.id].expires == NOW + timedelta(hours=1)
    # Said once, when it changes; the file read again says nothing new.
    again, change = history.take(put_back, backup)
    assert again.records == put_back.records and not change


def test_history_s_change_is_nothing_to_say_when_nothing_changed(store_path: Path) -> None:
    tokens.create(store_path, "ci-bot", None, 90, NOW)
    store = tokens.TokenStore.load(store_path)
    history = tokens.TokenHistory()
    history.take(None, store)
    taken, change = history.take(store, tokens.TokenStore.load(store_path))
    assert not change and taken.records == store.records
