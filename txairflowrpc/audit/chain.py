"""
The file side of the audit trail: the hash chain and how records are
sealed into it and appended.

Each record is one JSON line carrying a sequence number, the hash of the
previous record and its own hash, so that an edited, deleted or reordered
line breaks the chain.  The chain continues across rotated files and
across restarts.  `ChainFile` appends under an exclusive lock on
``<path>.lock``, so that the gateway and the ``airflowrpc`` CLI can both
append to one chain; it blocks, so it runs on the audit thread or in a CLI,
never on the reactor.

Given a `Signer`, it also seals signed checkpoints (`.checkpoint`) into the
chain, under the same lock as the records they cover: when asked to, when
``checkpoint_records`` records are not yet covered, and into a file before
it is rotated away, so that every rotated file ends signed.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import re
import time
from pathlib import Path
from typing import Any, BinaryIO

import attrs
from twisted.logger import Logger

from ..core.files import sync_directory
from ..core.timefmt import iso_day, iso_micro, utc
from .checkpoint import CHECKPOINT, Signer

GENESIS = "0" * 64
#: The event of the record that begins every file after a rotation.
ROTATED = "audit.rotated"
#: The instance the ``airflowrpc`` command's own records name (`append_now`);
#: ``audit.instance`` may not take it.
CLI_INSTANCE = "cli"

_log = Logger()


def dumps(record: dict[str, Any]) -> str:
    """
    A record as one line of strict JSON: ASCII only, so control characters
    and line breaks inside values are escaped and no value can split or forge
    a line; and no NaN or Infinity, which strict parsers (jq, JavaScript's
    ``JSON.parse``) refuse: a non-finite number is written as a string.
    """
    try:
        return json.dumps(record, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    except ValueError:
        return json.dumps(strict_json(record), ensure_ascii=True, separators=(",", ":"))


def strict_json(value: Any) -> Any:
    """``value`` with non-finite numbers (NaN, Infinity) as strings, which strict JSON has not."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def loads_strict(line: bytes | str) -> Any:
    """
    One line of strict JSON; `ValueError` for NaN, Infinity, a number too
    large for a float (``1e400``, which Python reads as Infinity) or
    anything not JSON.
    """
    return json.loads(line, parse_constant=_not_json, parse_float=_finite)


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not strict JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:20]} is too large a number")
    return value


#: The longest line a record may take; a longer one is written as a stand-in
#: (`_stand_in`), well under what the verifier reads (1 MiB), so that no
#: record, whatever a caller sent, leaves the chain unverifiable.
MAX_RECORD_BYTES = 64 * 1024
#: What a stand-in keeps of the record it stands for.
_STAND_IN_KEEPS = ("kind", "instance", "request_id", "principal", "auth", "source", "method",
                   "multicall_index", "decision", "outcome", "fault_code", "http_status",
                   "refusal", "airflow_status", "airflow_user", "created")


def _stand_in(record: dict[str, Any], line: str) -> dict[str, Any]:
    """
    A record too long to write, as the fields that say who did what and how
    it ended (strings clipped), and the size and SHA-256 of the line it
    would have been.
    """
    kept: dict[str, Any] = {"time": record["time"], "seq": record["seq"]}
    for key in _STAND_IN_KEEPS:
        value = record.get(key)
        if isinstance(value, str):
            kept[key] = value[:250]
        elif isinstance(value, (int, float, bool)) or (
                key in ("auth", "created") and isinstance(value, dict)):
            # Numbers, and the gateway's own account of the caller and of
            # what the call made (ids Airflow gave, clipped when written).
            kept[key] = value
    kept["oversized"] = {"bytes": len(line),
                         "sha256": hashlib.sha256(line.encode("ascii")).hexdigest()}
    kept["prev"] = record["prev"]
    return kept


def seal(record: dict[str, Any]) -> str:
    """The record's line: its JSON with ``hash`` (of everything else) last."""
    body = dumps(record)
    return sealed_line(body, hashlib.sha256(body.encode("ascii")).hexdigest())


def sealed_line(body: str, digest: str) -> str:
    """The line of a record whose JSON without its hash is ``body``: ``hash`` last, a line end."""
    return body[:-1] + f',"hash":"{digest}"}}\n'


#: The longest last line read as a record: a record is at most
#: `MAX_RECORD_BYTES`, so a longer line is no record of a chain (found by
#: review: a 300 MB line appended by hand was read whole, 1 GB of memory,
#: at every retry).
_LAST_RECORD_SEARCH = 4 * 1024 * 1024
_BLOCK = 64 * 1024


def _newline_before(f: BinaryIO, end: int, limit: int | None = None) -> int:
    """
    Where the last line end before offset ``end`` is (-1: none), read
    backwards a block at a time; looked for no further than ``limit``
    bytes back (then -2).
    """
    position = end
    while position > 0:
        if limit is not None and end - position >= limit:
            return -2
        start = max(0, position - _BLOCK)
        f.seek(start)
        found = f.read(position - start).rfind(b"\n")
        if found >= 0:
            return start + found
        position = start
    return -1


def _last_line(path: Path) -> tuple[bytes | None, int]:
    """
    The last complete line of ``path`` (its line end included; empty if
    none; None if it is longer than `_LAST_RECORD_SEARCH` bytes, unread)
    and the size up to its end (what follows it, a line torn by a crash,
    is no line).
    """
    with path.open("rb") as f:
        size = f.seek(0, os.SEEK_END)
        end = _newline_before(f, size)
        if end < 0:
            return b"", 0
        start = _newline_before(f, end, _LAST_RECORD_SEARCH) + 1
        if start == -1:
            return None, end + 1
        f.seek(start)
        return f.read(end + 1 - start), end + 1


def _too_long(path: Path) -> ValueError:
    return ValueError(f"{path}: its last line is longer than {_LAST_RECORD_SEARCH} bytes: "
                      "no record")


def _last_record(path: Path) -> tuple[dict[str, Any] | None, int]:
    """
    The last complete record of ``path`` and the size up to its end;
    `ValueError` if its last line is too long (`_last_line`) or no JSON.
    """
    line, good = _last_line(path)
    if line is None:
        raise _too_long(path)
    return (json.loads(line) if line else None), good


#: Appended by another writer (the CLI) between two of this process's
#: writes, the most that is read to check it follows on (a few records are).
_APPENDED_CHECKED = 1024 * 1024
#: The event of the record a writer seals when the file is not what it wrote.
TAMPERED = "audit.tampered"


def _follows(data: bytes, seq: int, prev: str, instance: str | None = None) -> str | None:
    """
    Why the lines of ``data``, appended by another writer, are not records
    sealed one after the other from (``seq``, ``prev``) as another writer
    seals them, or None if they are: an ``event`` record (the command's, a
    supervisor's) in no name but its own (not ``instance``: found by review,
    a call record sealed in the gateway's name was taken up and signed
    over).  A checkpoint among them is not checked here (the command may
    sign with a key the config names since, before the restart that makes
    it this writer's): `audit verify` checks every signature.
    """
    for number, line in enumerate(data.splitlines(keepends=True), 1):
        try:
            record = loads_strict(line)
        except (ValueError, RecursionError):
            return f"line {number} after it is no JSON record"
        if not isinstance(record, dict):
            return f"line {number} after it is no JSON record"
        digest = record.pop("hash", None)
        if record.get("seq") != seq + 1 or type(record.get("seq")) is not int:
            return f"line {number} after it does not follow seq {seq}"
        if record.get("prev") != prev:
            return f"line {number} after it does not follow the hash of seq {seq}"
        if not isinstance(digest, str) or seal(record) != line.decode("ascii", "replace"):
            return f"line {number} after it is not written as sealed"
        if "kind" in record or (instance is not None and record.get("instance") == instance):
            return f"line {number} after it is a record in this writer's name"
        seq, prev = seq + 1, digest
    return None


#: What a worker's chain adds to its gateway's file name (``audit.w1.jsonl``).
_WORKER = re.compile(r"\.w\d+\Z")


def worker_chain(path: Path, index: int) -> Path:
    """Worker ``index``'s chain beside ``path``: ``audit.jsonl`` -> ``audit.w<index>.jsonl``."""
    return path.with_name(f"{path.stem}.w{index}{path.suffix}")


def gateway_chain(path: Path) -> Path:
    """The gateway's file a chain's name comes from (`worker_chain` undone; others as they are)."""
    return path.with_name(_WORKER.sub("", path.stem) + path.suffix)


#: What rotation adds to the file's name: ``.20261127T142000Z`` (``.1`` and
#: on for a second rotation within the second).  Only such files continue
#: a chain: a worker's ``audit.w0`` or a sibling's ``audit.jsonl.gw2`` never.
ROTATED_SUFFIX = re.compile(r"\.\d{8}T\d{6}Z(\.\d+)?$")


def append_lock(path: Path) -> Path:
    """
    The chain's append lock beside ``path``: whoever appends holds it
    exclusively for the whole batch (`ChainFile`), so a reader holding it
    shared sees no line half written.
    """
    return path.with_name(path.name + ".lock")


def _rotated_name(path: Path, now: float) -> Path:
    stamp = utc(now).strftime("%Y%m%dT%H%M%SZ")
    candidate = path.with_name(f"{path.name}.{stamp}")
    n = 1
    while candidate.exists():
        candidate = path.with_name(f"{path.name}.{stamp}.{n}")
        n += 1
    return candidate


@attrs.frozen
class Appended:
    """What one `ChainFile.append` did."""

    #: Files rotated away meanwhile (each ends with a checkpoint if signing).
    rotated: tuple[Path, ...]
    #: Records at the chain's end that no checkpoint covers yet.
    uncovered: int


class ChainFile:
    """
    The file side of the chain: seals records (seq, prev, hash) and appends
    them, under an exclusive lock on ``<path>.lock``, so that the gateway
    and the ``airflowrpc`` CLI can both append to one chain.  Blocking:
    call it from the audit thread or a CLI, never from the reactor.

    :param signer: signs checkpoints; None: no checkpoints.
    :param checkpoint_records: seal a checkpoint after the batch in which
        this many records became uncovered (0: not by count); and after the
        first batch if the chain did not end with a checkpoint (a crash).
    :param instance: the writer's id, in the checkpoints it seals.
    """

    def __init__(
        self, path: Path, *, fsync: bool = True, rotate_bytes: int = 0,
        rotate_daily: bool = False, signer: Signer | None = None,
        checkpoint_records: int = 0, instance: str | None = None,
    ) -> None:
        self.path = path
        self._lock_path = append_lock(path)
        self._fsync = fsync
        self._rotate_bytes = rotate_bytes
        self._rotate_daily = rotate_daily
        self._signer = signer
        self._checkpoint_records = checkpoint_records
        self._instance = instance
        self._fd: int | None = None
        self._known: tuple[int, int] | None = None  # (inode, size) as last seen
        self._seq = 0
        self._prev = GENESIS
        #: The seq of the last checkpoint (None: not known, e.g. after a crash).
        self._covered: int | None = None
        self._day: str | None = None
        #: The rotated file the chain goes on from while the current file is
        #: empty: its first record must say so (`ROTATED`).
        self._continues_from: Path | None = None
        #: The file as this process last wrote or checked it: its inode, the
        #: bytes up to the end of the chain's head, and the head's line (empty:
        #: the head is in a rotated file).  None until it has written.
        self._mine: tuple[int, int, bytes] | None = None
        #: An `TAMPERED` record to seal first in the next batch, if the file
        #: was found changed under this process.
        self._tampered: dict[str, Any] | None = None

    def open(self) -> None:
        """
        Create the directory and file; checks that both are writable.  What
        it creates is made durable (the directories fsynced) before it returns.
        """
        directory = self.path.parent
        missing = [d for d in (directory, *directory.parents) if not d.exists()]
        directory.mkdir(parents=True, exist_ok=True)
        self._fd = self._open_file()
        lock = os.open(self._lock_path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o640)
        os.close(lock)
        if self._fsync:
            for created in missing:  # each new directory's name lives in its parent
                sync_directory(created.parent)

    def _open_file(self) -> int:
        """Open the file for appending, creating it (and syncing its directory) if need be."""
        try:
            return os.open(self.path, os.O_WRONLY | os.O_APPEND)
        except FileNotFoundError:
            pass
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        if self._fsync:
            sync_directory(self.path.parent)
        return fd

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def append(
        self, records: list[dict[str, Any]], now: float, checkpoint: str | None = None,
    ) -> Appended:
        """
        Seal and append ``records``, then a signed checkpoint if one is due
        (every ``checkpoint_records``) or asked for (``checkpoint``: its
        reason), and if there is a signer and anything left to cover.

        Raises OSError if they cannot be written and fsynced; then nothing of
        them stays in the file and they may be appended again.
        """
        lock = os.open(self._lock_path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o640)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._catch_up()
            note, self._tampered = self._tampered, None
            if note is not None:
                instance = records[0].get("instance") if records else self._instance
                records = [{"time": iso_micro(now), "instance": instance, **note}, *records]
                checkpoint = "tampered"  # signed at once: the note cannot go unseen
            try:
                return self._append(records, now, checkpoint)
            except OSError:
                self._tampered = note  # written with the records, when they are
                raise
        finally:
            os.close(lock)  # releases the lock

    def _append(
        self, records: list[dict[str, Any]], now: float, checkpoint: str | None,
    ) -> Appended:
        """`append` under the lock, the chain's end known."""
        rotated: list[Path] = []
        due = records or (self._signer is not None and (checkpoint or self._covered is None))
        if due and self._continues_from is not None:
            # The file is empty but the chain goes on from a rotated one
            # (a rotation whose first write failed, or a crash after its
            # rename): it starts, as every rotated-to file does, by saying so.
            instance = records[0].get("instance") if records else self._instance
            records = [{"time": iso_micro(now), "instance": instance,
                        "event": ROTATED, "previous_file": self._continues_from.name},
                       *records]
        data, end = self._seal(records, self._seq, self._prev)
        if records and self._rotation_due(len(data) + self._room(end, now), now):
            if self._signer is not None and self._uncovered(self._seq):
                # The old file ends signed, so it can be checked on its own.
                line, sealed = self._checkpoint(self._seq, self._prev, now, "rotation")
                self._write(line)
                self._seq, self._prev = sealed
                self._covered = self._seq
            rotated.append(self._rotate(now))
            data, end = self._seal(
                [{"time": iso_micro(now), "instance": records[0].get("instance"),
                  "event": ROTATED, "previous_file": rotated[0].name}, *records],
                self._seq, self._prev,
            )
        covered = self._covered
        reason = checkpoint or self._due(end[0])
        if self._signer is not None and reason and self._uncovered(end[0]):
            line, end = self._checkpoint(*end, now, reason)
            data += line
            covered = end[0]
        if data:
            self._write(data)
            self._seq, self._prev = end  # the chain moves on only once written
            self._covered = covered
            self._day = iso_day(now)
            self._continues_from = None
        return Appended(tuple(rotated), self._uncovered(self._seq))

    def _uncovered(self, seq: int) -> int:
        """How many records up to ``seq`` come after the last checkpoint."""
        return seq - (self._covered or 0)

    def _due(self, seq: int) -> str | None:
        """The reason a checkpoint is due after the records up to ``seq``, if it is."""
        if self._covered is None:  # the chain did not end signed when taken up
            return "resume"
        every = self._checkpoint_records
        return "records" if every and self._uncovered(seq) >= every else None

    def _checkpoint(
        self, seq: int, prev: str, now: float, reason: str,
    ) -> tuple[bytes, tuple[int, str]]:
        """A signed checkpoint of the chain head (``seq``, ``prev``), sealed after it."""
        assert self._signer is not None
        body = self._checkpoint_body(seq, prev, now, reason)
        body["signature"] = self._signer.sign(dumps(body))
        line = seal(body)
        return line.encode("ascii"), (seq + 1, line[-67:-3])

    def _checkpoint_body(self, seq: int, prev: str, now: float, reason: str) -> dict[str, Any]:
        """What a checkpoint signs: the head it covers and its own place in the chain."""
        assert self._signer is not None
        return {
            "time": iso_micro(now), "seq": seq + 1, "instance": self._instance,
            "event": CHECKPOINT, "reason": reason, "head_seq": seq, "head_hash": prev,
            "alg": self._signer.alg, "key_id": self._signer.key_id, "prev": prev,
        }

    def _room(self, end: tuple[int, str], now: float) -> int:
        """
        The bytes to keep free for a checkpoint after ``end``, so that a file
        rotated later can still end with one within ``rotate_bytes``.
        """
        if self._signer is None:
            return 0
        body = self._checkpoint_body(*end, now, "rotation")  # the longest reason
        body["signature"] = "A" * self._signer.signature_length
        return len(seal(body))

    def _catch_up(self) -> None:
        """Learn the chain's end from the file, if anyone else wrote to it."""
        if self._fd is None:  # a rotation renamed the file but could not open the new one
            self._fd = self._open_file()
            self._known = None
        st = os.stat(self.path)
        if self._known == (st.st_ino, st.st_size):
            return
        if self._known is None or st.st_ino != self._known[0]:
            own = os.fstat(self._fd)
            if own.st_ino != st.st_ino:  # the file was moved away: follow the name
                os.close(self._fd)
                self._fd = self._open_file()
        line, good = _last_line(self.path) if st.st_size else (b"", 0)
        if good != st.st_size:
            os.truncate(self.path, good)  # a line torn by a crash was never acknowledged
        self._continues_from = None  # whatever is found below, the file is not empty
        try:
            if line is None:
                raise _too_long(self.path)
            last = json.loads(line) if line else None
        except (ValueError, RecursionError) as e:
            if self._mine is None:
                raise  # nothing of its own to go on from: the file must be mended
            # Found by review: a line of junk appended stopped the trail for good.
            self._found_changed(f"its last line is no record ({str(e)[:100]})",
                                st.st_ino, good, None)
            return
        continues_from = None
        if last is None:
            last, continues_from = self._last_of_rotated()
        problem = self._not_ours(st.st_ino, good, last)
        if problem is not None:
            self._found_changed(problem, st.st_ino, good, last)
            return
        # What it found is the chain now: what a later look checks against
        # (found by review: kept as last written, the next look after the
        # command's appends took them for lines that did not follow on).
        self._mine = (st.st_ino, good, line if continues_from is None else b"")
        self._continues_from = continues_from
        if last is not None:
            self._seq, self._prev = int(last["seq"]), str(last["hash"])
            if last.get("event") == CHECKPOINT:
                self._covered = self._seq
            elif self._covered is not None and self._covered > self._seq:
                self._covered = None  # the chain went back: what it covers is unknown
        else:
            self._covered = self._seq  # nothing to cover
        if good and self._day is None:
            self._day = str(last.get("time", ""))[:10] if last else None
        self._known = (st.st_ino, good)

    def _found_changed(self, problem: str, inode: int, size: int,
                       last: dict[str, Any] | None) -> None:
        """
        The file is not what this process wrote (found by review: the head
        was taken from whatever the file held, so an insider who cut or
        rewrote records no checkpoint covered yet had the next checkpoint
        sign the change).  It goes on from its own end, and says so.
        """
        _log.error("audit file {path} is not what this process wrote ({problem}): an "
                   "audit.tampered record follows, and the chain goes on from its own end",
                   path=str(self.path), problem=problem)
        self._tampered = {
            "event": TAMPERED, "reason": problem,
            "expected": {"seq": self._seq, "hash": self._prev},
            "found": {"bytes": size, **_head_of(last)}}
        self._known = (inode, size)

    def _not_ours(self, inode: int, size: int, last: dict[str, Any] | None) -> str | None:
        """
        Why the chain as found (the file of ``inode``, ``size`` bytes up to
        the end of its last record, ``last``) does not go on from what this
        process wrote or checked last, or None if it does: its head's line
        where it left it and every line after it sealed in turn (what the
        CLI appends), or (another file, or a shorter one) its head itself.
        """
        if self._mine is None:
            return None  # it has written nothing: the file as it finds it
        own_inode, end, line = self._mine
        if inode == own_inode and size >= end:
            if size - end > _APPENDED_CHECKED:
                return f"{size - end} bytes appended by another writer, more than is checked"
            with self.path.open("rb") as f:
                f.seek(end - len(line))
                data = f.read(size - end + len(line))
            if not data.startswith(line):
                return f"the record of seq {self._seq} is not where it was written"
            return _follows(data[len(line):], self._seq, self._prev, self._instance)
        head = _head_of(last)
        if head.get("seq") == self._seq and head.get("hash") == self._prev:
            return None
        if inode == own_inode:
            return f"the file is {size} bytes, {end} were written"
        return "the file was replaced"

    def _last_of_rotated(self) -> tuple[dict[str, Any] | None, Path | None]:
        """
        The record with the highest ``seq`` among the rotated files' last
        ones, and its file.  Found by review: the newest file by mtime was
        taken, and a copy without ``-p``, a ``touch`` or two rotations in one
        mtime tick made the chain go on from an older file (a fork).
        """
        name = self.path.name
        best: tuple[int, dict[str, Any], Path] | None = None
        for old in self.path.parent.glob(name + ".*"):
            if not ROTATED_SUFFIX.fullmatch(old.name[len(name):]):
                continue
            try:
                last, _ = _last_record(old)
            except FileNotFoundError:  # removed meanwhile (retention)
                continue
            except ValueError:  # its last line is no record: it ends no chain
                continue
            # An unreadable file raises (OSError, naming it): what it ends is
            # unknown, and going on from another could fork the chain.
            seq = last.get("seq") if isinstance(last, dict) else None
            if type(seq) is int and (best is None or seq > best[0]):
                best = (seq, last, old)
        return (best[1], best[2]) if best is not None else (None, None)

    def _seal(
        self, records: list[dict[str, Any]], seq: int, prev: str,
    ) -> tuple[bytes, tuple[int, str]]:
        """The lines that chain ``records`` after (``seq``, ``prev``), and the new end."""
        lines = []
        for record in records:
            seq += 1
            sealed = {"time": record["time"], "seq": seq}
            sealed.update((k, v) for k, v in record.items() if k != "time")
            sealed["prev"] = prev
            line = seal(sealed)
            if len(line) > MAX_RECORD_BYTES:
                line = seal(_stand_in(sealed, line))
            prev = line[-67:-3]  # the hash just sealed into the line
            lines.append(line)
        return "".join(lines).encode("ascii"), (seq, prev)

    def _rotation_due(self, incoming: int, now: float) -> bool:
        assert self._known is not None
        size = self._known[1]
        if size == 0:
            return False
        if self._rotate_bytes and size + incoming > self._rotate_bytes:
            return True
        return bool(self._rotate_daily and self._day and iso_day(now) != self._day)

    def _rotate(self, now: float) -> Path:
        assert self._fd is not None
        target = _rotated_name(self.path, now)
        os.fsync(self._fd)  # the file whole before its name changes
        os.rename(self.path, target)
        fd, self._fd = self._fd, None  # never a closed descriptor's number kept
        os.close(fd)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        if self._fsync:  # both names, the rotated one and the new file's
            sync_directory(self.path.parent)
        self._known = (os.fstat(self._fd).st_ino, 0)
        self._mine = (self._known[0], 0, b"")  # the head is in the file rotated away
        return target

    def _write(self, data: bytes) -> None:
        assert self._fd is not None and self._known is not None
        inode, start = self._known
        view = memoryview(data)
        try:
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
            if self._fsync:
                # fdatasync: the data and what reading it back needs (the
                # file's new size), not the modification time; on ext4 about
                # a fifth quicker than fsync for an append (153 vs 188 µs).
                # (macOS has no fdatasync: fsync there.)
                getattr(os, "fdatasync", os.fsync)(self._fd)
        except OSError:
            # Leave no partial line behind, and hand the records back.
            try:
                os.ftruncate(self._fd, start)
            except OSError:
                pass
            self._known = None  # re-read the chain's end next time
            raise
        self._known = (inode, start + len(data))
        self._mine = (inode, start + len(data), data[data.rfind(b"\n", 0, -1) + 1:])


def _head_of(last: dict[str, Any] | None) -> dict[str, Any]:
    """A found last record's seq and hash, where they are what they should be."""
    head: dict[str, Any] = {}
    if isinstance(last, dict):
        if type(last.get("seq")) is int:
            head["seq"] = last["seq"]
        if isinstance(last.get("hash"), str) and re.fullmatch(r"[0-9a-f]{64}", last["hash"]):
            head["hash"] = last["hash"]
    return head


def append_now(path: Path, fields: dict[str, Any], *, instance: str = CLI_INSTANCE,
               signer: Signer | None = None) -> None:
    """
    Append one record from outside a gateway's audit thread (the CLI, a
    supervisor), blocking; given a ``signer``, a checkpoint after it, so
    that it is covered as the gateway's records are.
    """
    chain = ChainFile(path, signer=signer, checkpoint_records=1 if signer else 0,
                      instance=instance)
    chain.open()
    try:
        now = time.time()
        chain.append([{"time": iso_micro(now), "instance": instance, **fields}], now)
    finally:
        chain.close()
