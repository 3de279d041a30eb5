"""
The audit trail: every invocation, on its own tamper-evident JSON Lines file.

`AuditLog` appends one record per line, each carrying a sequence number,
the hash of the previous record and its own hash, so that an edited,
deleted or reordered line breaks the chain (`verify` finds it).  The chain
continues across rotated files and across restarts.

Durability: `AuditLog.append` returns a Deferred that fires only once the
record is written and fsynced.  Records that arrive while a write is under
way are written together by the next one (group commit: many records, one
fsync).  The file work runs on one dedicated thread, never on the reactor.

Failing closed: if a write fails (disk full, file-size limit, permissions),
`failed` says why, the waiting appends fail with `errors.AuditUnavailable`,
and their records stay queued, in order, to be written as soon as a write
succeeds again (retried every few seconds and on every new record).  The
gateway refuses calls while `failed` is set.

`AuditLog` is also a twisted.logger observer: events published to it
with an ``audit_event`` key become administrative records (service start
and stop, ...).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import ILogObserver, Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from . import errors

GENESIS = "0" * 64
RETRY_SECONDS = 2.0

_log = Logger()

RunBlocking = Callable[[Callable[[], Any]], "Deferred[Any]"]


def _dumps(record: dict[str, Any]) -> str:
    # ASCII-only JSON: control characters and line breaks inside values are
    # escaped, so no value can split or forge a line.
    return json.dumps(record, ensure_ascii=True, separators=(",", ":"))


def seal(record: dict[str, Any]) -> str:
    """The record's line: its JSON with ``hash`` (of everything else) last."""
    body = _dumps(record)
    digest = hashlib.sha256(body.encode("ascii")).hexdigest()
    return body[:-1] + f',"hash":"{digest}"}}\n'


def digest_of(value: Any) -> dict[str, Any]:
    """A free-form value as its SHA-256 and size, never the value itself."""
    data = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode()
    return {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def utc_now(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _last_record(path: Path) -> tuple[dict[str, Any] | None, int]:
    """The last complete record of ``path`` and the size up to its end."""
    with path.open("rb") as f:
        size = f.seek(0, os.SEEK_END)
        chunk = 4096
        while True:
            f.seek(max(0, size - chunk))
            data = f.read(chunk)
            end = data.rfind(b"\n")
            if end < 0 and size > chunk:
                chunk *= 4
                continue
            if end < 0:
                return None, 0
            line_start = data.rfind(b"\n", 0, end) + 1
            if line_start == 0 and size > chunk:
                chunk *= 4
                continue
            good = max(0, size - len(data)) + end + 1
            return json.loads(data[line_start:end]), good


def _rotated_name(path: Path, now: float) -> Path:
    stamp = datetime.fromtimestamp(now, timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    candidate = path.with_name(f"{path.name}.{stamp}")
    n = 1
    while candidate.exists():
        candidate = path.with_name(f"{path.name}.{stamp}.{n}")
        n += 1
    return candidate


def _today(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%d")


class ChainFile:
    """
    The file side of the chain: seals records (seq, prev, hash) and appends
    them, under an exclusive lock on ``<path>.lock``, so that the gateway
    and the ``airflowrpc`` CLI can both append to one chain.  Blocking:
    call it from the audit thread or a CLI, never from the reactor.
    """

    def __init__(
        self, path: Path, *, fsync: bool = True, rotate_bytes: int = 0,
        rotate_daily: bool = False,
    ) -> None:
        self.path = path
        self._lock_path = path.with_name(path.name + ".lock")
        self._fsync = fsync
        self._rotate_bytes = rotate_bytes
        self._rotate_daily = rotate_daily
        self._fd: int | None = None
        self._known: tuple[int, int] | None = None  # (inode, size) as last seen
        self._seq = 0
        self._prev = GENESIS
        self._day: str | None = None

    def open(self) -> None:
        """Create the directory and file; checks that both are writable."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        lock = os.open(self._lock_path, os.O_WRONLY | os.O_CREAT, 0o640)
        os.close(lock)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def append(self, records: list[dict[str, Any]], now: float) -> list[Path]:
        """
        Seal and append ``records``; return the files rotated away meanwhile.

        Raises OSError if they cannot be written and fsynced; then nothing of
        them stays in the file and they may be appended again.
        """
        lock = os.open(self._lock_path, os.O_WRONLY | os.O_CREAT, 0o640)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._catch_up()
            rotated: list[Path] = []
            data, end = self._seal(records)
            if self._rotation_due(len(data), now):
                rotated.append(self._rotate(now))
                data, end = self._seal(
                    [{"time": utc_now(now), "instance": records[0].get("instance"),
                      "event": "audit.rotated", "previous_file": rotated[0].name}, *records]
                )
            self._write(data)
            self._seq, self._prev = end  # the chain moves on only once written
            self._day = _today(now)
            return rotated
        finally:
            os.close(lock)  # releases the lock

    def _catch_up(self) -> None:
        """Learn the chain's end from the file, if anyone else wrote to it."""
        assert self._fd is not None
        st = os.stat(self.path)
        if self._known == (st.st_ino, st.st_size):
            return
        if self._known is None or st.st_ino != self._known[0]:
            own = os.fstat(self._fd)
            if own.st_ino != st.st_ino:  # the file was moved away: follow the name
                os.close(self._fd)
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        last, good = _last_record(self.path) if st.st_size else (None, 0)
        if good != st.st_size:
            os.truncate(self.path, good)  # a line torn by a crash was never acknowledged
        if last is None:
            last = self._last_of_rotated()
        if last is not None:
            self._seq, self._prev = int(last["seq"]), str(last["hash"])
        if good and self._day is None:
            self._day = str(last.get("time", ""))[:10] if last else None
        self._known = (st.st_ino, good)

    def _last_of_rotated(self) -> dict[str, Any] | None:
        rotated = sorted(
            (p for p in self.path.parent.glob(self.path.name + ".*") if not p.name.endswith(".lock")),
            key=lambda p: p.stat().st_mtime,
        )
        for old in reversed(rotated):
            last, _ = _last_record(old)
            if last is not None:
                return last
        return None

    def _seal(self, records: list[dict[str, Any]]) -> tuple[bytes, tuple[int, str]]:
        """The lines that chain ``records`` after the current end, and the new end."""
        seq, prev = self._seq, self._prev
        lines = []
        for record in records:
            seq += 1
            sealed = {"time": record["time"], "seq": seq}
            sealed.update((k, v) for k, v in record.items() if k != "time")
            sealed["prev"] = prev
            line = seal(sealed)
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
        return bool(self._rotate_daily and self._day and _today(now) != self._day)

    def _rotate(self, now: float) -> Path:
        assert self._fd is not None
        target = _rotated_name(self.path, now)
        os.fsync(self._fd)
        os.rename(self.path, target)
        os.close(self._fd)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self._known = (os.fstat(self._fd).st_ino, 0)
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
                os.fsync(self._fd)
        except OSError:
            # Leave no partial line behind, and hand the records back.
            try:
                os.ftruncate(self._fd, start)
            except OSError:
                pass
            self._known = None  # re-read the chain's end next time
            raise
        self._known = (inode, start + len(data))


def _orphan() -> Deferred[None]:
    """A Deferred for a record nobody waits on any more."""
    d: Deferred[None] = Deferred()
    d.addErrback(lambda f: None)
    return d


@implementer(ILogObserver)
class AuditLog:
    """
    The gateway's side of the audit trail: queues records from the reactor
    and has them appended, a batch at a time, on the audit thread.

    :param run_blocking: runs a blocking function off the reactor and gives
        a Deferred of its result (a one-thread pool in production).
    :param rotate_bytes: rotate before the file would grow past this (0: never).
    :param rotate_daily: rotate when the UTC day changes.
    """

    def __init__(
        self, path: Path, *, clock: Any, run_blocking: RunBlocking, instance: str,
        rotate_bytes: int = 0, rotate_daily: bool = False, fsync: bool = True,
    ) -> None:
        self.path = path
        self._clock = clock
        self._run_blocking = run_blocking
        self.instance = instance
        self._file = ChainFile(
            path, fsync=fsync, rotate_bytes=rotate_bytes, rotate_daily=rotate_daily
        )
        self._queue: list[tuple[dict[str, Any] | None, Deferred[None]]] = []
        self._writing = False
        self._closed = False
        self._retry: Any = None
        #: Why the last write failed, or None while the log is healthy.
        self.failed: str | None = None
        #: How many batches (fsyncs) and records were written; for the benchmark.
        self.fsyncs = 0
        self.written = 0

    def open(self) -> None:
        """Open (and create) the file; at start-up, before serving anything."""
        self._file.open()

    def close(self) -> Deferred[None]:
        """Write what is queued (if it can), then close the file."""
        d = self.flush()

        def done(result: Any) -> None:
            self._closed = True
            if self._retry is not None and self._retry.active():
                self._retry.cancel()
            self._file.close()

        return d.addBoth(done)

    def append(self, fields: dict[str, Any]) -> Deferred[None]:
        """
        Queue a record of ``fields``; fires once it is on disk.

        Fails with `errors.AuditUnavailable` if the write fails; the record
        stays queued and is written when the log recovers.
        """
        record = {"time": utc_now(self._clock.seconds()), "instance": self.instance}
        record.update(fields)
        d: Deferred[None] = Deferred()
        self._queue.append((record, d))
        self._kick()
        return d

    def __call__(self, event: dict[str, Any]) -> None:
        """twisted.logger observer: ``audit_event`` events become records."""
        name = event.get("audit_event")
        if not name:
            return
        fields = {"event": name}
        fields.update(event.get("audit_fields", {}))
        self.append(fields).addErrback(lambda f: None)  # kept queued on failure

    def flush(self) -> Deferred[None]:
        """Fires once everything queued now has been written (or failed)."""
        if not self._queue and not self._writing:
            return maybeDeferred(lambda: None)
        marker: Deferred[None] = Deferred()
        self._queue.append((None, marker))
        self._kick()
        return marker.addErrback(lambda f: None)

    def _kick(self) -> None:
        if self._writing or not self._queue or self._closed:
            return
        self._writing = True
        batch, self._queue = self._queue, []
        records = [r for r, _ in batch if r is not None]
        now = self._clock.seconds()
        if records:
            d = self._run_blocking(lambda: self._file.append(records, now))
        else:
            d = maybeDeferred(list)
        d.addCallbacks(self._written, self._write_failed, (batch,), None, (batch,))

    def _written(self, rotated: list[Path], batch: list[tuple[Any, Deferred[None]]]) -> None:
        self.fsyncs += 1
        self.written += sum(1 for r, _ in batch if r is not None)
        self._writing = False
        if self.failed is not None:
            _log.info("audit log writable again: {path}", path=str(self.path))
            self.failed = None
        for _, d in batch:
            d.callback(None)
        for old in rotated:
            _log.info("audit log rotated to {old}", old=str(old))
        self._kick()

    def _write_failed(self, failure: Failure, batch: list[tuple[Any, Deferred[None]]]) -> None:
        self._writing = False
        reason = getattr(failure.value, "strerror", None) or failure.getErrorMessage()
        if self.failed is None:
            _log.error("audit log cannot be written ({reason}): refusing calls", reason=reason)
        self.failed = reason
        # Keep the records, in order, ahead of anything queued since; their
        # callers have their answer (the failure) already.
        self._queue[:0] = [(r, _orphan()) for r, _ in batch if r is not None]
        for _, d in batch:
            d.errback(errors.AuditUnavailable())
        if not self._closed and (self._retry is None or not self._retry.active()):
            self._retry = self._clock.callLater(RETRY_SECONDS, self._kick)


def append_now(path: Path, fields: dict[str, Any], *, instance: str = "cli") -> None:
    """Append one record from outside the gateway (the CLI), blocking."""
    chain = ChainFile(path)
    chain.open()
    try:
        now = time.time()
        chain.append([{"time": utc_now(now), "instance": instance, **fields}], now)
    finally:
        chain.close()


# -- verification ----------------------------------------------------------


def verify(paths: Iterable[Path]) -> tuple[bool, str]:
    """
    Check the chain across ``paths`` (oldest first).

    Returns (whole, message): the first broken or missing record, or how
    many records form a whole chain.
    """
    prev: str | None = None
    seq: int | None = None
    count = 0
    first_seq = None
    for path in paths:
        try:
            handle = path.open("rb")
        except OSError as e:
            return False, f"{path}: cannot read: {e.strerror}"
        with handle:
            for lineno, raw in enumerate(handle, 1):
                where = f"{path}:{lineno}"
                if not raw.endswith(b"\n"):
                    return False, f"{where}: incomplete last line"
                try:
                    record = json.loads(raw)
                    claimed = record.pop("hash")
                except (ValueError, KeyError, AttributeError):
                    return False, f"{where}: not an audit record"
                actual = hashlib.sha256(_dumps(record).encode("ascii")).hexdigest()
                if actual != claimed:
                    return False, f"{where}: record seq {record.get('seq')} was altered (hash mismatch)"
                if seq is not None and record.get("seq") != seq + 1:
                    got = record.get("seq")
                    if isinstance(got, int) and got > seq + 1:
                        return False, f"{where}: records {seq + 1}..{got - 1} are missing"
                    return False, f"{where}: record seq {got} is out of order after {seq}"
                if prev is not None and record.get("prev") != prev:
                    return False, f"{where}: record seq {record.get('seq')} does not follow the previous record"
                if prev is None and record.get("prev") != GENESIS and record.get("seq") != 1:
                    first_seq = record.get("seq")
                prev, seq = claimed, record.get("seq")
                count += 1
    if count == 0:
        return False, "no records"
    note = f" (continues a chain from an earlier file, from seq {first_seq})" if first_seq else ""
    return True, f"chain whole: {count} records, seq {seq - count + 1}..{seq}{note}"


# -- what a call's record says ------------------------------------------------

#: Parameters recorded as they are (validated ids and plain scalars).
_ID_PARAMS = ("dag_id", "dag_run_id", "task_id")
_MAX_TEXT = 250


def _clip(value: Any) -> Any:
    return value[:_MAX_TEXT] if isinstance(value, str) else value


def is_sensitive(key: Any, sensitive: tuple[str, ...]) -> bool:
    """A key is sensitive if its name contains a configured word (any case)."""
    name = str(key).lower()
    return any(word in name for word in sensitive)


def redact(value: Any, sensitive: tuple[str, ...]) -> Any:
    """``value`` with the values of sensitive keys (at any depth) replaced."""
    if isinstance(value, dict):
        return {
            k: "[redacted]" if is_sensitive(k, sensitive) else redact(v, sensitive)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact(v, sensitive) for v in value]
    return value


def summarize_args(
    params: Iterable[Any], args: tuple[Any, ...], sensitive: tuple[str, ...]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """
    The ids of a call, and a summary of its other arguments.

    Ids, numbers and booleans are kept; strings other than ids, structs and
    arrays appear as a digest and size (computed after redaction, so a
    digest cannot be used to guess a secret); option structs keep their
    scalar members, with sensitive keys redacted.
    """
    ids: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    for param, value in zip(params, args):
        name = param.name
        if name in _ID_PARAMS and isinstance(value, str):
            ids[name] = _clip(value)
        elif isinstance(value, (bool, int, float)):
            summary[name] = value
        elif name in ("options", "filters") and isinstance(value, dict):
            summary[name] = {
                _clip(str(k)): (
                    "[redacted]" if is_sensitive(k, sensitive)
                    else _clip(v) if (str(k) in _ID_PARAMS or k == "logical_date")
                    and isinstance(v, str)
                    else v if isinstance(v, (bool, int, float))
                    else digest_of(v)
                )
                for k, v in value.items()
            }
            if isinstance(value.get("dag_run_id"), str):
                ids["dag_run_id"] = _clip(value["dag_run_id"])
        else:
            summary[name] = digest_of(redact(value, sensitive))
    return ids, summary
