"""
Gateway tokens: minted once, shown once, stored only as a hash.

A token looks like ``arpc_<id>_<secret><crc>``: a recognisable prefix and a
checksum (CRC-32 of everything before it, base62) so that secret scanners
can find leaked tokens and typos are refused without a lookup; the ``id``
finds the stored record, and the secret is compared by hash in constant
time.  Secrets have 190 bits of entropy, so a plain SHA-256 is enough.

The store is one JSON file (`TokenStore`), written by the ``airflowrpc
token`` CLI (atomically, under a lock) and read by the gateway, which
reloads it when it changes: a revocation takes effect within seconds,
without a restart.  Every token expires; a rotation gives the old one a
short overlap, after which it dies.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
import zlib
from collections.abc import Iterable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Iterator

import attrs

from ..core.files import sync_directory
from ..core.timefmt import iso_seconds, parse_iso

PREFIX = "arpc_"
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_FORMAT = re.compile(r"arpc_([a-z0-9]{10})_([A-Za-z0-9]{32})([A-Za-z0-9]{6})\Z")


def _base62(n: int, width: int) -> str:
    out = []
    for _ in range(width):
        n, r = divmod(n, 62)
        out.append(_BASE62[r])
    return "".join(reversed(out))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode("ascii")), 6)


def mint() -> tuple[str, str]:
    """A new (token id, token)."""
    token_id = "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(10))
    secret = "".join(secrets.choice(_BASE62) for _ in range(32))
    body = f"{PREFIX}{token_id}_{secret}"
    return token_id, body + _checksum(body)


def parse(token: str) -> str | None:
    """The id of a well-formed token with a valid checksum, else None."""
    match = _FORMAT.match(token)
    if match is None:
        return None
    body = token[:-6]
    if not hmac.compare_digest(_checksum(body), match.group(3)):
        return None
    return match.group(1)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("ascii")).hexdigest()


_ID = re.compile(r"[a-z0-9]{10}\Z")
_SHA256 = re.compile(r"[0-9a-f]{64}\Z")


def _text(data: dict[str, Any], key: str, shape: re.Pattern[str] | None = None,
          required: bool = True) -> Any:
    """``data[key]``, a string (of ``shape``); None if optional and absent; ValueError if not."""
    value = data.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or (shape is not None and not shape.match(value)):
        raise ValueError(f"a token record's {key} is not what it should be")
    return value


def _time(data: dict[str, Any], key: str, required: bool = True) -> datetime | None:
    """``data[key]`` as an instant with its zone (a naive time compared with now raised)."""
    value = _text(data, key, required=required)
    if value is None:
        return None
    try:
        when = parse_iso(value)
        written = when.tzinfo is not None and iso_seconds(when) == value
    except (ValueError, OverflowError):
        written = False
    if not written:  # found by review: a year 9999 in another zone overflowed every listing
        raise ValueError(f"a token record's {key} is not a time as the command writes it "
                         "(2026-01-31T12:00:00Z)")
    return when


@attrs.frozen
class TokenRecord:
    """What the store keeps of a token: never the token itself."""

    id: str
    sha256: str = attrs.field(repr=False)
    principal: str
    roles: tuple[str, ...] | None
    created: datetime
    expires: datetime
    last_rotated: datetime | None = None
    rotated_to: str | None = None
    revoked: datetime | None = None

    def state(self, now: datetime) -> str:
        if self.revoked is not None:
            return "revoked"
        if now >= self.expires:
            return "expired"
        if self.rotated_to is not None:
            return f"rotated (to {self.rotated_to})"
        return "active"

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "sha256": self.sha256, "principal": self.principal,
            "roles": list(self.roles) if self.roles is not None else None,
            "created": iso_seconds(self.created), "expires": iso_seconds(self.expires),
            "last_rotated": iso_seconds(self.last_rotated) if self.last_rotated else None,
            "rotated_to": self.rotated_to,
            "revoked": iso_seconds(self.revoked) if self.revoked else None,
        }

    @classmethod
    def from_json(cls, data: Any) -> "TokenRecord":
        """
        A record as the store holds it; ValueError unless every field is
        what the command writes (found by review: a hand-edited expiry
        without a zone raised at every use of its token, roles as a string
        became its letters).
        """
        if not isinstance(data, dict):
            raise ValueError("a token record is not an object")  # noqa: TRY004 -- "not a store"
        roles = data.get("roles")
        if roles is not None and not (
                isinstance(roles, list) and all(isinstance(r, str) for r in roles)):
            raise ValueError("a token record's roles are not a list of names")
        return cls(
            id=_text(data, "id", _ID), sha256=_text(data, "sha256", _SHA256),
            principal=_text(data, "principal"),
            roles=tuple(roles) if roles is not None else None,
            created=_time(data, "created"), expires=_time(data, "expires"),  # type: ignore[arg-type]
            last_rotated=_time(data, "last_rotated", False),
            rotated_to=_text(data, "rotated_to", _ID, False),
            revoked=_time(data, "revoked", False),
        )


class TokenError(Exception):
    """A token was refused; the message is safe to log (no secret)."""


class TokenOwnerError(PermissionError):
    """The store could not be rewritten with its owner kept."""


@attrs.frozen
class TokenStore:
    """The tokens of one store file, as loaded at one moment."""

    path: Path
    records: dict[str, TokenRecord]

    @classmethod
    def load(cls, path: Path) -> "TokenStore":
        """Read the store; a missing file is an empty store. Raises ValueError."""
        try:
            raw = path.read_text("utf-8")
        except FileNotFoundError:
            return cls(path, {})
        except OSError as e:  # unreadable (its owner changed): a config error, not a crash
            raise ValueError(f"{path} cannot be read: {e.strerror}") from None
        except UnicodeDecodeError:
            raise ValueError(f"{path} is not a token store: not UTF-8") from None
        try:
            data = json.loads(raw)
            records = [TokenRecord.from_json(r) for r in data["tokens"]]
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"{path} is not a token store: {e}") from None
        except RecursionError:
            raise ValueError(f"{path} is not a token store: it nests too deeply") from None
        by_id = {r.id: r for r in records}
        if len(by_id) != len(records):
            # Found by review: the last of two won, a live copy of a revoked token.
            raise ValueError(f"{path} is not a token store: a token id is there twice")
        return cls(path, by_id)

    def check(self, token: str, now: datetime) -> TokenRecord:
        """
        The record of a valid, live token; `TokenError` otherwise.

        The hash comparison is constant-time; an unknown id costs the same
        hashing as a known one.
        """
        token_id = parse(token)
        if token_id is None:
            raise TokenError("malformed token (bad format or checksum)")
        record = self.records.get(token_id)
        expected = record.sha256 if record is not None else "0" * 64
        if not hmac.compare_digest(token_hash(token), expected) or record is None:
            raise TokenError(f"unknown token {token_id}")
        if record.revoked is not None:
            raise TokenError(f"token {token_id} was revoked")
        if now >= record.expires:
            raise TokenError(f"token {token_id} expired")
        return record


@attrs.frozen
class StoreChange:
    """
    What a store read from its file changed, as `TokenHistory.take` took it:
    token ids added, removed and newly revoked since the store before it;
    and, only when they differ from what the last take held (None
    otherwise), the ids held revoked and held to an earlier expiry than the
    file says.
    """

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    revoked: tuple[str, ...] = ()
    held: tuple[tuple[str, ...], tuple[str, ...]] | None = None

    def __bool__(self) -> bool:
        """Whether there is anything to say: ids in any of its lists."""
        return bool(self.added or self.removed or self.revoked
                    or (self.held is not None and any(self.held)))


class TokenHistory:
    """
    What one process has seen of its token store, for as long as it runs:
    when each token it has seen revoked was revoked, and the earliest expiry
    it has seen for each.  A store read from its file is taken through it
    (`take`): a token once seen revoked stays revoked, and none lives past
    the earliest expiry seen for it (a rotation shortens it), whatever the
    file says now or later.  Found by review: a backup of the store put
    back undid a revocation and a rotation.
    """

    def __init__(self) -> None:
        self._revoked: dict[str, datetime] = {}
        self._expires: dict[str, datetime] = {}
        #: The ids last said to be held revoked, and held to their expiry.
        self._held: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())

    def take(self, old: TokenStore | None, new: TokenStore) -> tuple[TokenStore, StoreChange]:
        """
        ``new`` as this process takes it, and what changed from ``old``
        (the store in force before it; None: none, or another file).
        """
        before = old.records if old is not None and old.path == new.path else {}
        after = dict(new.records)
        held_revoked, held_expiry = [], []
        for token_id, record in after.items():
            revoked = self._revoked.get(token_id)
            if record.revoked is None and revoked is not None:
                record = attrs.evolve(record, revoked=revoked)
                held_revoked.append(token_id)
            earliest = self._expires.get(token_id)
            if earliest is not None and record.expires > earliest:
                record = attrs.evolve(record, expires=earliest)
                held_expiry.append(token_id)
            after[token_id] = record
            if record.revoked is not None:
                self._revoked.setdefault(token_id, record.revoked)
            self._expires[token_id] = min(record.expires, earliest or record.expires)
        held = (tuple(sorted(held_revoked)), tuple(sorted(held_expiry)))
        said, self._held = held != self._held, held  # said when it changes, not at every look
        change = StoreChange(
            added=tuple(sorted(after.keys() - before.keys())),
            removed=tuple(sorted(before.keys() - after.keys())),
            revoked=tuple(sorted(i for i, r in after.items() if r.revoked is not None
                                 and i in before and before[i].revoked is None)),
            held=held if said else None,
        )
        taken = attrs.evolve(new, records=after) if held_revoked or held_expiry else new
        return taken, change


# -- changes, made by the CLI ---------------------------------------------------


class _Locked:
    """The store file, locked for a read-modify-write by one CLI at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> dict[str, TokenRecord]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = os.open(self.path.with_name(self.path.name + ".lock"),
                             os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        _owned_like_its_directory(self._lock, self.path.parent)
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        self.records = dict(TokenStore.load(self.path).records)
        return self.records

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        try:
            if exc_type is None:
                data = {"version": 1, "tokens": [r.to_json() for r in self.records.values()]}
                fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".tokens-")
                try:
                    mode = _keep_owner(fd, self.path)
                    with os.fdopen(fd, "w") as f:
                        fd = -1  # the file object closes it
                        json.dump(data, f, indent=1)
                        f.flush()
                        os.fsync(f.fileno())
                    os.chmod(tmp, mode)
                    os.replace(tmp, self.path)
                except BaseException:
                    if fd >= 0:
                        os.close(fd)
                    os.unlink(tmp)  # no .tokens-* left behind, whatever failed
                    raise
                sync_directory(self.path.parent)
        finally:
            os.close(self._lock)


def _keep_owner(fd: int, path: Path) -> int:
    """
    Give the new store file ``fd`` the owner and group of the one it
    replaces, and return the mode it is to have: the old one's owner and
    group's read (0600 for a new store; never write for the group, never
    anything for others).
    ``airflowrpc token`` run as root must not leave a store the service's
    user cannot read (it would keep the tokens it had, a revoked one among
    them).  Raises `TokenOwnerError` where that is not allowed.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        _owned_like_its_directory(fd, path.parent)
        return 0o600
    mode = (st.st_mode & 0o640) | 0o600
    mine = os.fstat(fd)
    if (st.st_uid, st.st_gid) == (mine.st_uid, mine.st_gid):
        return mode
    try:
        os.fchown(fd, st.st_uid, st.st_gid)
    except PermissionError:
        raise TokenOwnerError(
            f"{path} belongs to uid {st.st_uid}, gid {st.st_gid}: run as that user "
            f"(or root), so that the gateway can still read the store") from None
    return mode


def _owned_like_its_directory(fd: int, directory: Path) -> None:
    """
    A new store, or the store's lock, run as root: given the owner and group
    of the directory it is in (found by review: root's first ``token``
    command left both root's, 0600, and the service's user could then
    neither read the store nor lock it to revoke).  Anyone else: as it is.
    """
    if os.geteuid() != 0:
        return
    where, mine = os.stat(directory), os.fstat(fd)
    if (where.st_uid, where.st_gid) != (mine.st_uid, mine.st_gid):
        os.fchown(fd, where.st_uid, where.st_gid)


def create(
    path: Path, principal: str, roles: tuple[str, ...] | None, days: int, now: datetime
) -> tuple[TokenRecord, str]:
    """Mint and store a token; the token is returned once and kept nowhere."""
    if days < 1:
        raise ValueError("a token must live at least one day")
    with _Locked(path) as records:
        token_id, token = mint()
        while token_id in records:
            token_id, token = mint()
        record = TokenRecord(
            id=token_id, sha256=token_hash(token), principal=principal, roles=roles,
            created=now, expires=now + timedelta(days=days),
        )
        records[token_id] = record
    return record, token


def rotate(
    path: Path, token_id: str, days: int, overlap: timedelta, now: datetime
) -> tuple[TokenRecord, TokenRecord, str]:
    """
    Issue a successor to a live token; the old one keeps working for
    ``overlap``, then dies.  Returns (old, new, new token).
    """
    with _Locked(path) as records:
        old = records.get(token_id)
        if old is None:
            raise ValueError(f"no token {token_id}")
        if old.state(now) != "active":
            raise ValueError(f"token {token_id} is {old.state(now)}; only an active token rotates")
        new_id, token = mint()
        new = TokenRecord(
            id=new_id, sha256=token_hash(token), principal=old.principal, roles=old.roles,
            created=now, expires=now + timedelta(days=days), last_rotated=now,
        )
        records[new_id] = new
        old = attrs.evolve(old, expires=min(old.expires, now + overlap),
                           last_rotated=now, rotated_to=new_id)
        records[token_id] = old
    return old, new, token


def orphaned(store: TokenStore, principals: Iterable[str], now: datetime) -> str | None:
    """
    A warning if live tokens (neither revoked nor expired) name principals
    that ``principals`` does not: they are refused while the name is
    unknown, and would be let in again if it came back (a new team's bot
    given an old name); None if there are none.
    """
    known = set(principals)
    left: dict[str, list[str]] = {}
    for record in store.records.values():
        if record.principal not in known and record.state(now) not in ("revoked", "expired"):
            left.setdefault(record.principal, []).append(record.id)
    if not left:
        return None
    named = "; ".join(f"{name[:64]}: {', '.join(sorted(ids)[:5])}"
                      + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
                      for name, ids in sorted(left.items())[:10])
    return (f"auth.token_store: live tokens of principals the config does not name ({named}); "
            f"they are refused now and let in again if the name comes back: revoke them "
            f"(airflowrpc token revoke ID)")


def revoke(path: Path, token_id: str, now: datetime) -> TokenRecord:
    with _Locked(path) as records:
        record = records.get(token_id)
        if record is None:
            raise ValueError(f"no token {token_id}")
        if record.revoked is None:
            record = records[token_id] = attrs.evolve(record, revoked=now)
    return record


def listing(path: Path, now: datetime) -> Iterator[dict[str, str]]:
    """What ``token list`` shows: never a secret, nor its hash."""
    for r in sorted(TokenStore.load(path).records.values(), key=lambda r: r.created):
        yield {
            "id": r.id, "principal": r.principal,
            "roles": ",".join(r.roles) if r.roles is not None else "(principal's)",
            "created": iso_seconds(r.created), "expires": iso_seconds(r.expires), "state": r.state(now),
        }
