"""
The gateway's side of the audit trail: records queued on the reactor,
written in batches on the audit thread.

Durability: `AuditLog.append` returns a Deferred that fires only once the
record is written and fsynced.  Records that arrive while a write is under
way are written together by the next one (group commit: many records, one
fsync).  The file work (`txairflowrpc.audit.chain`) runs on one dedicated
thread, never on the reactor.

Checkpoints: given a `Signer`, the log asks the chain for a signed
checkpoint every ``checkpoint_records`` records (the chain counts them),
``checkpoint_seconds`` after a record was first left uncovered, and at
`AuditLog.close`; the chain signs it on the audit thread, under its lock.

Failing closed: if a write fails (disk full, file-size limit, permissions),
`failed` says why, the waiting appends fail with `errors.AuditUnavailable`,
and their records stay queued, in order, to be written as soon as a write
succeeds again (retried every few seconds and on every new record).  The
gateway refuses calls while `failed` is set.

A write that neither ends nor fails (an fsync on a stuck disk or a hung
network volume) counts as failing once it has run ``stall_seconds``: its
records' callers are answered `errors.AuditUnavailable`, `failed` says the
write has stalled, and new records queue behind it.  If it ends after all,
its records are on disk although their callers were told otherwise, so
``audit.late`` records follow them naming their request ids (records queued
behind it meanwhile carry ``late``, as after a failed write).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from twisted.internet.defer import Deferred, fail, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..core import errors
from ..core.timefmt import iso_micro
from .chain import Appended, ChainFile
from .checkpoint import Signer

RETRY_SECONDS = 2.0
#: While the log is failing, at most this many droppable records (refusals
#: anyone can cause) wait in the queue; the rest are counted, and the count
#: is written as one ``audit.dropped`` record once the log recovers.
MAX_DROPPABLE_QUEUED = 1000
#: An ``audit.late`` record names at most this many request ids (more take more records).
MAX_LATE_IDS = 100

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
        a Deferred of its result (`txairflowrpc.audit.thread.AuditThread` in
        production).
    :param rotate_bytes: rotate before the file would grow past this (0: never).
    :param rotate_daily: rotate when the UTC day changes.
    :param signer: signs checkpoints; None: no checkpoints.
    :param checkpoint_records: a checkpoint once this many records are
        uncovered (0: not by count).
    :param checkpoint_seconds: a checkpoint this long after a record was
        first left uncovered (0: not by time).
    :param stall_seconds: a write under way this long is taken as failed
        (its callers answered, the log failing until it ends; 0: never).
    """

    def __init__(
        self, path: Path, *, clock: IReactorTime, run_blocking: RunBlocking, instance: str,
        rotate_bytes: int = 0, rotate_daily: bool = False, fsync: bool = True,
        signer: Signer | None = None, checkpoint_records: int = 0,
        checkpoint_seconds: float = 0, stall_seconds: float = 0,
    ) -> None:
        self.path = path
        self._clock = clock
        self._run_blocking = run_blocking
        self.instance = instance
        self._file = ChainFile(
            path, fsync=fsync, rotate_bytes=rotate_bytes, rotate_daily=rotate_daily,
            signer=signer, checkpoint_records=checkpoint_records, instance=instance,
        )
        self._signer = signer
        self._checkpoint_seconds = checkpoint_seconds
        self._stall_seconds = stall_seconds
        #: Fires `_stalled` if the write under way runs ``stall_seconds``.
        self._stall_timer: Any = None
        #: When the write under way started, and whether its callers were
        #: already answered because it stalled.
        self._write_started: float | None = None
        self._abandoned = False
        self._queue: list[tuple[dict[str, Any] | None, Deferred[None]]] = []
        self._writing = False
        self._closed = False
        self._retry: Any = None
        #: The reason of a checkpoint to seal with the next write, if any.
        self._checkpoint: str | None = None
        self._checkpoint_timer: Any = None
        #: Why the last write failed, or None while the log is healthy.
        self.failed: str | None = None
        #: How many batches (fsyncs) and records were written; for the benchmark.
        self.fsyncs = 0
        self.written = 0
        #: Droppable records waiting, by id, and those dropped while failing.
        self._droppable: set[int] = set()
        self.dropped = 0
        #: All ever dropped (``dropped`` restarts once its record is written).
        self.dropped_total = 0

    def open(self) -> None:
        """Open (and create) the file; at start-up, before serving anything."""
        self._file.open()

    def close(self) -> Deferred[None]:
        """
        Write what is queued (if it can) and, if signing, a checkpoint after
        it (reason ``shutdown``); then close the file.  Never fails.
        """
        if self._signer is not None and not self._closed:
            self._checkpoint = "shutdown"
        d = self.flush()

        def done(result: Any) -> None:
            self._closed = True
            for call in (self._retry, self._checkpoint_timer):
                if call is not None and call.active():
                    call.cancel()
            unwritten = sum(1 for record, _ in self._queue if record is not None)
            if unwritten or self.dropped:
                # The log could not be written to the end: say what is lost.
                _log.error("audit log closed with {n} records unwritten and {dropped} refusals "
                           "only counted ({reason}): {path}", n=unwritten, dropped=self.dropped,
                           reason=self.failed or "not written", path=str(self.path))
            self._file.close()

        return d.addBoth(done)

    def append(self, fields: dict[str, Any], droppable: bool = False) -> Deferred[None]:
        """
        Queue a record of ``fields``; fires once it is on disk.

        Fails with `errors.AuditUnavailable` if the write fails; the record
        stays queued and is written when the log recovers.  A ``droppable``
        record (a refusal anyone can cause) is instead only counted while
        the log is failing and `MAX_DROPPABLE_QUEUED` of them wait already,
        so that a flood cannot grow the queue without bound.  After `close`
        it fails at once (nothing would ever write it), and is logged.
        """
        if self._closed:
            _log.error("audit record after the log was closed, not written: {event}",
                       event=str(fields.get("event") or fields.get("kind") or "?")[:40])
            return fail(errors.AuditUnavailable())
        if droppable and self.failed is not None and (
            len(self._droppable) >= MAX_DROPPABLE_QUEUED
        ):
            self.dropped += 1
            self.dropped_total += 1
            return fail(errors.AuditUnavailable())
        record = self._stamped(fields)
        if droppable:
            self._droppable.add(id(record))
        if self._abandoned:
            # A write has stalled: nothing queued now would be written before
            # it ends, so the caller is answered at once (a refusal too: its
            # answer waits for its record, as 401s and 415s do).
            self._queue.append((self._late_record(record), _orphan()))
            return fail(errors.AuditUnavailable())
        d: Deferred[None] = Deferred()
        self._queue.append((record, d))
        self._kick()
        return d

    def flush(self) -> Deferred[None]:
        """Fires once everything queued now has been written (or failed)."""
        if not self._queue and not self._writing and self._checkpoint is None:
            return maybeDeferred(lambda: None)
        marker: Deferred[None] = Deferred()
        self._queue.append((None, marker))
        self._kick()
        return marker.addErrback(lambda f: None)

    def _kick(self) -> None:
        if self._writing or self._closed or not (self._queue or self._checkpoint):
            return
        self._writing = True
        batch, self._queue = self._queue, []
        records = [r for r, _ in batch if r is not None]
        reason, self._checkpoint = self._checkpoint, None
        now = self._clock.seconds()
        d: Deferred[Appended | None]
        if records or reason:
            self._write_started = now
            if self._stall_seconds:
                self._stall_timer = self._clock.callLater(
                    self._stall_seconds, self._stalled, batch)
            d = self._run_blocking(lambda: self._file.append(records, now, reason))
        else:
            d = maybeDeferred(lambda: None)  # only flush markers: nothing to write
        d.addCallbacks(self._written, self._write_failed, (batch,), None, (batch, reason))

    def writing_for(self) -> float:
        """How long the write under way has run, in seconds (0: none is)."""
        if self._write_started is None:
            return 0.0
        return max(0.0, self._clock.seconds() - self._write_started)

    def _stalled(self, batch: list[tuple[Any, Deferred[None]]]) -> None:
        """The write under way has run ``stall_seconds``: fail its callers, refuse calls."""
        self._stall_timer = None
        self._abandoned = True
        reason = f"a write has not ended after {self._stall_seconds:g} s"
        if self.failed is None:
            _log.error("audit log cannot be written ({reason}): refusing calls", reason=reason)
        self.failed = reason
        # A flush marker (a close) is not a caller: it waits for the write
        # to end, in the stalled batch or behind it, so that nothing is
        # closed under the audit thread's feet.
        for record, d in batch:
            if record is not None:
                d.errback(errors.AuditUnavailable())
        # Those queued behind it would wait as long: answered now, and each
        # record says its caller was not told its outcome (as after a failure).
        for i, (record, d) in enumerate(self._queue):
            if record is not None:
                self._queue[i] = (self._late_record(record), _orphan())
                d.errback(errors.AuditUnavailable())

    def _stamped(self, fields: dict[str, Any]) -> dict[str, Any]:
        """A record of ``fields``, after the time and instance every record starts with."""
        return {"time": iso_micro(self._clock.seconds()), "instance": self.instance, **fields}

    @staticmethod
    def _late_record(record: dict[str, Any]) -> dict[str, Any]:
        record["late"] = True
        return record

    def _write_ended(self) -> bool:
        """The write under way ended; whether its callers were answered already (it stalled)."""
        self._writing = False
        self._write_started = None
        if self._stall_timer is not None and self._stall_timer.active():
            self._stall_timer.cancel()
        self._stall_timer = None
        abandoned, self._abandoned = self._abandoned, False
        return abandoned

    def _checkpoint_due(self) -> None:
        """``checkpoint_seconds`` have passed since a record was left uncovered."""
        self._checkpoint_timer = None
        self._checkpoint = self._checkpoint or "interval"
        self._kick()

    def _watch_coverage(self, uncovered: int) -> None:
        """Have a checkpoint sealed ``checkpoint_seconds`` after a record is left uncovered."""
        if self._signer is None or not self._checkpoint_seconds or self._closed:
            return
        timer = self._checkpoint_timer
        if not uncovered:
            if timer is not None and timer.active():
                timer.cancel()
            self._checkpoint_timer = None
        elif timer is None or not timer.active():
            self._checkpoint_timer = self._clock.callLater(
                self._checkpoint_seconds, self._checkpoint_due)

    def _written(
        self, appended: Appended | None, batch: list[tuple[Any, Deferred[None]]],
    ) -> None:
        abandoned = self._write_ended()
        self.fsyncs += 1
        self.written += sum(1 for r, _ in batch if r is not None)
        self._droppable.difference_update(id(r) for r, _ in batch)
        if abandoned:
            self._late([r for r, _ in batch if r is not None])
        if self.failed is not None:
            _log.info("audit log writable again: {path}", path=str(self.path))
            self.failed = None
            if self.dropped:
                dropped, self.dropped = self.dropped, 0
                self.append({"event": "audit.dropped", "count": dropped,
                             "reason": "refusals counted but not written while the log failed"})
        for record, d in batch:
            if not abandoned or record is None:  # a stalled write's callers have their answer
                d.callback(None)
        if appended is not None:
            for old in appended.rotated:
                _log.info("audit log rotated to {old}", old=str(old))
            self._watch_coverage(appended.uncovered)
        self._kick()

    def _write_failed(
        self, failure: Failure, batch: list[tuple[Any, Deferred[None]]], checkpoint: str | None,
    ) -> None:
        abandoned = self._write_ended()
        # A checkpoint that could not be written is still owed.
        self._checkpoint = self._checkpoint or checkpoint
        reason = getattr(failure.value, "strerror", None) or failure.getErrorMessage()
        if self.failed is None:
            _log.error("audit log cannot be written ({reason}): refusing calls", reason=reason)
        self.failed = reason
        # Keep the records, in order, ahead of anything queued since; their
        # callers have their answer (the failure) already, and each record
        # says so: the outcome it holds is not what its caller was told.
        kept = [self._late_record(r) for r, d in batch if r is not None]
        self._queue[:0] = [(r, _orphan()) for r in kept]
        for record, d in batch:
            if not abandoned or record is None:  # a stalled write's callers have their answer
                d.errback(errors.AuditUnavailable())
        if not self._closed and (self._retry is None or not self._retry.active()):
            self._retry = self._clock.callLater(RETRY_SECONDS, self._kick)

    def _late(self, records: list[dict[str, Any]]) -> None:
        """
        A stalled write ended after all: ``records`` are on disk, but their
        callers were told the trail was unavailable.  Say so on the trail.
        """
        # Each id once (a multicall's entries share one), every one named:
        # as many notes as it takes, so that no record of a caller told 507
        # stands unexplained.
        ids = list(dict.fromkeys(str(r["request_id"]) for r in records if r.get("request_id")))
        _log.warn("audit log write ended after it was given up on: {n} records written late",
                  n=len(records))
        notes = [self._stamped({
                     "event": "audit.late", "records": len(records),
                     "request_ids": ids[i:i + MAX_LATE_IDS],
                     "reason": "written after their callers were answered that the audit "
                               "trail was unavailable (the write had stalled)"})
                 for i in range(0, max(len(ids), 1), MAX_LATE_IDS)]
        # Ahead of what queued meanwhile: next to the records they speak of.
        self._queue[:0] = [(note, _orphan()) for note in notes]
