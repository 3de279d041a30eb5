"""
The gateway's side of the audit trail: records queued on the reactor,
written in batches on the audit thread.

Durability: `AuditLog.append` returns a Deferred that fires only once the
record is written and fsynced.  Records that arrive while a write is under
way are written together by the next one (group commit: many records, one
fsync).  The file work (`txairflowrpc.audit.chain`) runs on one dedicated
thread, never on the reactor.

Failing closed: if a write fails (disk full, file-size limit, permissions),
`failed` says why, the waiting appends fail with `errors.AuditUnavailable`,
and their records stay queued, in order, to be written as soon as a write
succeeds again (retried every few seconds and on every new record).  The
gateway refuses calls while `failed` is set.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..core import errors
from ..core.timefmt import iso_micro
from .chain import ChainFile

RETRY_SECONDS = 2.0

_log = Logger()

RunBlocking = Callable[[Callable[[], Any]], "Deferred[Any]"]


def _orphan() -> Deferred[None]:
    """A Deferred for a record nobody waits on any more."""
    d: Deferred[None] = Deferred()
    d.addErrback(lambda f: None)
    return d


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
        self, path: Path, *, clock: IReactorTime, run_blocking: RunBlocking, instance: str,
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
        record = {"time": iso_micro(self._clock.seconds()), "instance": self.instance}
        record.update(fields)
        d: Deferred[None] = Deferred()
        self._queue.append((record, d))
        self._kick()
        return d

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
