"""The audit trail: chained, durable before answers, fail-closed, rotated."""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import tempfile
import xmlrpc.client
from pathlib import Path
from typing import Any, Callable

import attrs
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from txairflowrpc.audit.chain import append_now
from txairflowrpc.audit.log import RETRY_SECONDS, AuditLog
from txairflowrpc.audit.verify import verify
from txairflowrpc.core import errors
from txairflowrpc.service.cli import main as cli

from .helpers import CONFIG, DIGEST_KEY, audit_log, gateway


def scratch(case: SynchronousTestCase) -> Path:
    """
    A fresh directory, removed after the test.  (trial's own mktemp makes
    one below the working directory, where it ends up in the repository.)
    """
    directory = Path(tempfile.mkdtemp(prefix="txairflowrpc-test-"))
    case.addCleanup(shutil.rmtree, directory, True)
    return directory


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def records_lenient(path: Path) -> list[dict[str, Any]]:
    """The lines of ``path`` that are JSON objects (junk written by hand left out)."""
    found = []
    for line in path.read_bytes().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            found.append(record)
    return found


class HeldWrites:
    """run_blocking whose writes finish only when the test says so."""

    def __init__(self) -> None:
        self.pending: list[tuple[Callable[[], Any], Deferred[Any]]] = []
        self.fail_with: OSError | None = None

    def __call__(self, f: Callable[[], Any]) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.pending.append((f, d))
        return d

    def release(self) -> None:
        """Finish the writes started so far (not those they start in turn)."""
        batch, self.pending = self.pending, []
        for f, d in batch:
            if self.fail_with is not None:
                d.errback(self.fail_with)
            else:
                maybeDeferred(f).chainDeferred(d)


class ChainTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.dir = scratch(self)
        self.log = audit_log(str(self.dir), self.clock)
        self.path = self.dir / "audit.jsonl"

    def fill(self, n: int) -> None:
        for i in range(n):
            self.successResultOf(self.log.append({"kind": "call", "i": i}))

    def test_records_are_chained_and_verify_says_whole(self) -> None:
        self.fill(5)
        recs = records(self.path)
        self.assertEqual([r["seq"] for r in recs], [1, 2, 3, 4, 5])
        self.assertEqual(recs[0]["prev"], "0" * 64)
        self.assertEqual([r["prev"] for r in recs[1:]], [r["hash"] for r in recs[:-1]])
        self.assertEqual(recs[0]["time"], "2027-01-15T08:00:00.000000Z")
        self.assertEqual(verify([self.path]), (True, "chain whole: 5 records, seq 1..5"))

    def tamper(self, change: Callable[[list[str]], list[str]]) -> str:
        self.fill(5)
        lines = self.path.read_text().splitlines(keepends=True)
        self.path.write_text("".join(change(lines)))
        whole, message = verify([self.path])
        self.assertFalse(whole)
        return message

    def test_an_edited_line_is_found(self) -> None:
        message = self.tamper(lambda ls: ls[:2] + [ls[2].replace('"i":2', '"i":7')] + ls[3:])
        self.assertIn(":3: record seq 3 was altered", message)

    def test_a_deleted_line_is_found(self) -> None:
        message = self.tamper(lambda ls: ls[:2] + ls[3:])
        self.assertIn(":3: records 3..3 are missing", message)

    def test_reordered_lines_are_found(self) -> None:
        message = self.tamper(lambda ls: [ls[0], ls[2], ls[1]] + ls[3:])
        self.assertIn(":2: records 2..2 are missing", message)

    def test_a_rewritten_chain_tail_is_found(self) -> None:
        # Deleting the last record leaves a shorter whole chain: a reader
        # sees it by the seq, which the next start continues from.
        message = self.tamper(lambda ls: ls[:-1] + [ls[-1][:-10]])
        self.assertIn("incomplete last line", message)

    def verify_while_writing(self, written: bytes, finish: Callable[[], None]) -> tuple[bool, str]:
        """
        verify on a live trail: the file holds ``written`` while a writer
        holds the chain's lock (the gateway in the middle of a batch); once
        the verifier asks for the lock, ``finish`` runs and the lock is let go.
        """
        import fcntl
        import threading

        from txairflowrpc.audit import verify as verify_module
        self.path.write_bytes(written)
        writer = os.open(self.path.with_name(self.path.name + ".lock"), os.O_WRONLY)
        fcntl.flock(writer, fcntl.LOCK_EX)
        asked = threading.Event()
        real_flock = fcntl.flock

        def flock(fd: int, operation: int) -> None:
            if operation & fcntl.LOCK_SH:  # asked without waiting, as verify does
                asked.set()
            real_flock(fd, operation)

        self.patch(verify_module.fcntl, "flock", flock)
        outcome: list[tuple[bool, str]] = []
        reader = threading.Thread(target=lambda: outcome.append(verify([self.path])))
        reader.start()
        try:
            self.assertTrue(asked.wait(30), "the verifier never asked for the lock")
            finish()
        finally:
            os.close(writer)
            reader.join(30)
        self.assertEqual(len(outcome), 1)
        return outcome[0]

    def test_a_line_being_written_is_read_whole_once_the_writer_lets_go(self) -> None:
        """A last line read while the gateway writes it is read again under the lock."""
        self.fill(3)
        whole = self.path.read_bytes()
        cut = whole.rindex(b"\n", 0, len(whole) - 1) + 1 + 40  # 40 bytes into the last line

        def the_write_ends() -> None:
            with self.path.open("ab") as f:
                f.write(whole[cut:])

        self.assertEqual(self.verify_while_writing(whole[:cut], the_write_ends),
                         (True, "chain whole: 3 records, seq 1..3"))

    def test_a_torn_line_whose_write_was_taken_back_ends_the_file(self) -> None:
        """A failed write is cut off under the lock: the verifier reads up to it."""
        self.fill(3)
        whole = self.path.read_bytes()
        # As ChainFile._write does when a write fails: the partial line cut off.
        self.assertEqual(
            self.verify_while_writing(whole + b'{"time":"2027-01-15T08:00:00.000000Z","seq":4,',
                                      lambda: os.truncate(self.path, len(whole))),
            (True, "chain whole: 3 records, seq 1..3"))

    def test_a_link_planted_for_a_lock_file_is_not_followed(self) -> None:
        """Whoever can write the audit directory must not reach a file outside it."""
        from txairflowrpc.audit.owner import claim, owner_path
        victim = self.dir / "elsewhere"
        victim.write_text("precious\n")
        for lock in (owner_path(self.path), self.path.with_name(self.path.name + ".lock")):
            lock.unlink(missing_ok=True)
            lock.symlink_to(victim)
        with self.assertRaises(OSError):
            claim(self.path, "gw")
        with self.assertRaises(OSError):
            append_now(self.path, {"event": "token.created"})
        self.assertEqual(victim.read_text(), "precious\n")

    def test_a_line_rewritten_with_the_same_json_is_found(self) -> None:
        """A key twice: Python and jq keep the last value, other readers the first."""
        def rewrite(line: str) -> str:
            # The hash covers the JSON, not the bytes: it still matches.
            return line.replace('"kind":"call"', '"kind":"forged","kind":"call"', 1)

        message = self.tamper(lambda ls: ls[:2] + [rewrite(ls[2])] + ls[3:])
        self.assertIn(":3: record seq 3 was altered (not written as sealed)", message)
        message = self.tamper(lambda ls: ls[:2] + [ls[2].replace(",", ", ", 1)] + ls[3:])
        self.assertIn(":3: record seq 3 was altered (not written as sealed)", message)

    def test_records_cut_from_the_start_of_the_chain_are_found(self) -> None:
        message = self.tamper(lambda ls: ls[2:])
        self.assertIn(":1: the chain starts at record seq 3, which is not the start of a file",
                      message)

    def test_a_hostile_line_is_reported_not_a_crash(self) -> None:
        from txairflowrpc.audit.verify import MAX_LINE
        deep = '{"x":' + "[" * 100_000 + "]" * 100_000 + "}\n"
        self.assertIn(":3: not an audit record", self.tamper(lambda ls: ls[:2] + [deep] + ls[2:]))
        self.path.write_bytes(b'{"seq":1,"x":"' + b"a" * (MAX_LINE + 10))  # no line end
        whole, message = verify([self.path])
        self.assertFalse(whole)
        self.assertIn(f":1: a line longer than {MAX_LINE} bytes", message)

    def test_the_chain_continues_after_a_restart_and_a_torn_line(self) -> None:
        self.fill(3)
        self.successResultOf(self.log.close())
        with self.path.open("ab") as f:
            f.write(b'{"seq":4,"torn')  # a crash in the middle of a write
        again = audit_log(str(self.dir), self.clock)
        self.successResultOf(again.append({"kind": "call"}))
        self.assertEqual([r["seq"] for r in records(self.path)], [1, 2, 3, 4])
        self.assertTrue(verify([self.path])[0])

    def test_the_cli_appends_to_the_same_chain_between_gateway_writes(self) -> None:
        self.fill(2)
        append_now(self.path, {"event": "token.created", "token_id": "abc"})
        self.fill(2)
        recs = records(self.path)
        self.assertEqual([r["seq"] for r in recs], [1, 2, 3, 4, 5])
        self.assertEqual((recs[2]["event"], recs[2]["instance"]), ("token.created", "cli"))
        self.assertTrue(verify([self.path])[0])

    def test_a_record_too_long_to_write_is_a_stand_in_and_the_chain_stays_whole(self) -> None:
        self.fill(1)
        self.successResultOf(self.log.append({
            "kind": "call", "request_id": "r1", "principal": "bot", "method": "get_dag",
            "outcome": "fault", "fault_code": -32602, "auth": {"method": "token"},
            "reason": "x" * 200_000}))
        self.fill(1)
        lines = self.path.read_text().splitlines()
        self.assertTrue(all(len(line) < 2048 for line in lines))
        rec = json.loads(lines[1])
        self.assertEqual((rec["seq"], rec["request_id"], rec["principal"], rec["fault_code"],
                          rec["auth"]), (2, "r1", "bot", -32602, {"method": "token"}))
        self.assertNotIn("reason", rec)
        self.assertGreater(rec["oversized"]["bytes"], 200_000)
        self.assertEqual(verify([self.path]), (True, "chain whole: 3 records, seq 1..3"))

    def test_control_characters_cannot_split_or_forge_a_record(self) -> None:
        evil = 'x"}\n{"seq":99,"kind":"call"}\r\n\x00\u2028'
        self.successResultOf(self.log.append({"kind": "call", "method": evil}))
        lines = self.path.read_bytes().split(b"\n")
        self.assertEqual(len(lines), 2)  # one record and the final newline
        self.assertEqual(json.loads(lines[0])["method"], evil)
        self.assertTrue(verify([self.path])[0])


class DurabilityTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.held = HeldWrites()
        self.dir = scratch(self)
        self.log = AuditLog(self.dir / "audit.jsonl", clock=self.clock,
                            run_blocking=self.held, instance="t")
        self.log.open()

    def test_group_commit_writes_what_arrived_meanwhile_with_one_fsync(self) -> None:
        first = self.log.append({"n": 0})
        rest = [self.log.append({"n": i}) for i in range(1, 100)]
        self.assertNoResult(first)
        self.assertEqual(len(self.held.pending), 1)  # one write in flight
        self.held.release()  # first batch: 1 record
        self.successResultOf(first)
        for d in rest:
            self.assertNoResult(d)  # not acknowledged before its own fsync
        self.held.release()  # second batch: the 99 that waited
        for d in rest:
            self.successResultOf(d)
        self.assertEqual((self.log.fsyncs, self.log.written), (2, 100))

    def test_failed_write_fails_closed_and_loses_nothing(self) -> None:
        self.held.fail_with = OSError(errno.ENOSPC, "No space left on device")
        d = self.log.append({"n": 1})
        self.held.release()
        self.failureResultOf(d, errors.AuditUnavailable)
        self.assertEqual(self.log.failed, "No space left on device")
        d2 = self.log.append({"n": 2})  # also queued behind the failed record
        self.held.release()
        self.failureResultOf(d2, errors.AuditUnavailable)
        self.held.fail_with = None  # space again
        self.clock.advance(RETRY_SECONDS)
        self.held.release()
        self.assertIsNone(self.log.failed)
        recs = records(self.dir / "audit.jsonl")
        self.assertEqual([r["n"] for r in recs], [1, 2])
        # Found by review: a call answered 507 was recorded later as it ended
        # (outcome ok); the record now says its caller was not told that.
        self.assertEqual([r.get("late") for r in recs], [True, True])
        self.assertTrue(verify([self.dir / "audit.jsonl"])[0])

    def test_closing_while_the_log_fails_says_what_is_lost(self) -> None:
        """From the audit review: the records queued at shutdown went without a word."""
        from twisted.logger import formatEvent, globalLogPublisher

        lines: list[str] = []

        def observe(event: dict[str, Any]) -> None:
            lines.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        self.held.fail_with = OSError(errno.ENOSPC, "No space left on device")
        first = self.log.append({"n": 1})
        self.held.release()
        self.failureResultOf(first, errors.AuditUnavailable)
        closed = self.log.close()
        self.held.release()
        self.successResultOf(closed)
        self.assertTrue(any("audit log closed with 1 records unwritten" in line
                            and "No space left on device" in line for line in lines), lines)

    def test_a_record_after_close_fails_at_once(self) -> None:
        """From the audit review: it waited forever (a reload's record during a stop, say)."""
        closed = self.log.close()
        self.held.release()
        self.successResultOf(closed)
        self.failureResultOf(self.log.append({"event": "config.reload"}), errors.AuditUnavailable)
        self.assertEqual(len(self.flushLoggedErrors()), 0)

    def test_refusals_of_known_callers_wait_in_a_bounded_queue_while_the_log_fails(self) -> None:
        """Found by review: they queued without bound (2,501 after 3,000 operations)."""
        from txairflowrpc.audit.log import MAX_DROPPABLE_QUEUED
        from txairflowrpc.gate.refusals import RefusalLog

        self.held.fail_with = OSError(errno.ENOSPC, "No space left on device")
        first = self.log.append({"n": 1})
        self.held.release()
        self.failureResultOf(first, errors.AuditUnavailable)
        refusals = RefusalLog(self.log, self.clock)
        for i in range(1500):
            refusals.record({"reason": "x", "request_id": str(i), "principal": "bot"})
        self.assertLessEqual(len(self.log._queue), MAX_DROPPABLE_QUEUED + 1)
        self.assertEqual(self.log.dropped, 1500 - MAX_DROPPABLE_QUEUED)


class StalledWriteTests(SynchronousTestCase):
    """
    Found by the operations review: a write that never ended (a stuck disk)
    left every caller unanswered while the log said it was writable.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.held = HeldWrites()
        self.dir = scratch(self)
        self.log = AuditLog(self.dir / "audit.jsonl", clock=self.clock,
                            run_blocking=self.held, instance="t", stall_seconds=10)
        self.log.open()

    def stall(self) -> list[Deferred[None]]:
        waiting = [self.log.append({"n": i, "request_id": f"r{i}"}) for i in (1, 2)]
        self.clock.advance(9.5)
        self.assertEqual(self.log.writing_for(), 9.5)
        for d in waiting:
            self.assertNoResult(d)  # a slow write is still waited for
        self.assertIsNone(self.log.failed)
        self.clock.advance(0.5)
        for d in waiting:
            self.failureResultOf(d, errors.AuditUnavailable)
        self.assertEqual(self.log.failed, "a write has not ended after 10 s")
        return waiting

    def test_a_stalled_write_fails_its_callers_and_a_late_record_names_them(self) -> None:
        self.stall()  # r1 in the stalled write, r2 queued behind it
        third = self.log.append({"n": 3, "request_id": "r3"})  # while it stalls: at once
        self.failureResultOf(third, errors.AuditUnavailable)
        self.assertEqual(len(self.held.pending), 1)  # nothing written past the stalled write
        self.held.release()  # the disk comes back: the stalled write ends
        self.assertIsNone(self.log.failed)
        self.assertEqual(self.log.writing_for(), 0.0)
        self.held.release()
        self.assertEqual(self.held.pending, [])
        recs = records(self.dir / "audit.jsonl")
        self.assertEqual([(r.get("n", r.get("event")), r.get("late")) for r in recs],
                         [(1, None), ("audit.late", None), (2, True), (3, True)])
        self.assertEqual((recs[1]["records"], recs[1]["request_ids"]), (1, ["r1"]))
        self.assertTrue(verify([self.dir / "audit.jsonl"])[0])

    def test_a_stalled_write_that_then_fails_keeps_its_records_once(self) -> None:
        self.stall()
        self.held.fail_with = OSError(errno.EIO, "Input/output error")
        self.held.release()  # no second answer to the callers (Twisted would raise)
        self.assertEqual(self.log.failed, "Input/output error")
        self.held.fail_with = None
        self.clock.advance(RETRY_SECONDS)
        self.held.release()
        recs = records(self.dir / "audit.jsonl")
        self.assertEqual([(r["n"], r.get("late")) for r in recs], [(1, True), (2, True)])

    def test_a_refusal_during_a_stall_is_answered_at_once(self) -> None:
        """Found by the second reader: a 401's or 415's answer waited out the stall."""
        self.stall()
        refusal = self.log.append({"reason": "no credentials", "request_id": "q1"},
                                  droppable=True)
        self.failureResultOf(refusal, errors.AuditUnavailable)
        self.held.release()
        self.held.release()
        recs = records(self.dir / "audit.jsonl")
        self.assertEqual([(r.get("request_id"), r.get("late")) for r in recs if "event" not in r],
                         [("r1", None), ("r2", True), ("q1", True)])

    def test_a_flush_in_a_stalled_write_waits_for_it_to_end(self) -> None:
        """Found by the second reader: a close could shut the file under the audit thread."""
        first = self.log.append({"n": 0})
        second = self.log.append({"n": 1, "request_id": "r1"})
        flushed = self.log.flush()
        self.held.release()  # the first write; the second holds r1 and the flush marker
        self.successResultOf(first)
        self.clock.advance(10)
        self.failureResultOf(second, errors.AuditUnavailable)
        self.assertNoResult(flushed)
        self.held.release()
        self.successResultOf(flushed)

    def test_every_caller_of_a_stalled_write_is_named_once(self) -> None:
        """Found by the second reader: a multicall's ids filled the note, others went unnamed."""
        waiting = [self.log.append({"n": i, "request_id": "mc1"}) for i in range(150)]
        waiting += [self.log.append({"n": i, "request_id": f"r{i}"}) for i in range(150, 260)]
        self.held.release()  # the first record alone; the rest are written together
        self.clock.advance(10)
        for d in waiting[1:]:
            self.failureResultOf(d, errors.AuditUnavailable)
        self.held.release()
        self.held.release()
        notes = [r for r in records(self.dir / "audit.jsonl") if r.get("event") == "audit.late"]
        named = [i for note in notes for i in note["request_ids"]]
        self.assertEqual(named, ["mc1", *(f"r{i}" for i in range(150, 260))])
        self.assertEqual(len(notes), 2)
        self.assertTrue(verify([self.dir / "audit.jsonl"])[0])

    def test_a_write_that_ends_in_time_is_not_stalled(self) -> None:
        d = self.log.append({"n": 1})
        self.clock.advance(9)
        self.held.release()
        self.successResultOf(d)
        self.clock.advance(60)  # the timer went with the write
        self.assertIsNone(self.log.failed)


class RotationTests(SynchronousTestCase):
    def test_rotation_by_size_keeps_the_chain_whole_and_deletes_nothing(self) -> None:
        clock = Clock()
        clock.advance(1_800_000_000)
        directory = scratch(self)
        log = audit_log(str(directory), clock, rotate_bytes=2000)
        for i in range(60):
            clock.advance(1)
            self.successResultOf(log.append({"kind": "call", "i": i}))
        files = sorted(f for f in directory.iterdir() if not f.name.endswith(".lock"))
        self.assertGreater(len(files), 3)
        self.assertTrue(all(f.stat().st_size <= 2000 for f in files))
        rotated = [r for f in files for r in records(f) if r.get("event") == "audit.rotated"]
        self.assertEqual(len(rotated), len(files) - 1)
        self.assertEqual(cli(["audit", "verify", *map(str, files)]), 0)
        calls = sorted(r["i"] for f in files for r in records(f) if "i" in r)
        self.assertEqual(calls, list(range(60)))  # none lost, none duplicated

    def test_a_rotation_while_verify_reads_is_no_gap(self) -> None:
        """
        Found by review: a verify of a live chain listed its files, then a
        rotation renamed the current one away before it was read; the new
        current file followed one never listed: "records ... are missing".
        """
        from txairflowrpc.service import cli as cli_module
        clock = Clock()
        clock.advance(1_800_000_000)
        directory = scratch(self)
        log = audit_log(str(directory), clock, rotate_bytes=2000)

        def fill(n: int) -> None:
            for i in range(n):
                clock.advance(1)
                self.successResultOf(log.append({"kind": "call", "i": i}))

        fill(30)
        real = cli_module.check_chains
        verdicts = []

        def rotating_first(*args: Any) -> Any:
            if not verdicts:
                fill(20)  # the gateway rotates between the listing and the reading
            report = real(*args)
            verdicts.append(report.chains[0][1].lines()[0])
            return report

        self.patch(cli_module, "check_chains", rotating_first)
        self.assertEqual(cli(["audit", "verify", str(directory)]), 0)
        self.assertEqual(len(verdicts), 2)  # listed again once
        self.assertTrue(verdicts[0].startswith("BROKEN"), verdicts[0])
        self.assertRegex(verdicts[1], r"^chain whole: (\d+) records, seq 1\.\.\1$")

    def test_rotation_by_day(self) -> None:
        clock = Clock()
        clock.advance(1_800_000_000)
        directory = scratch(self)
        log = audit_log(str(directory), clock, rotate_daily=True)
        self.successResultOf(log.append({"day": 1}))
        clock.advance(86400)
        self.successResultOf(log.append({"day": 2}))
        files = sorted(f for f in directory.iterdir() if not f.name.endswith(".lock"))
        self.assertEqual([f.name for f in files],
                         ["audit.jsonl", "audit.jsonl.20270116T080000Z"])
        self.assertTrue(verify([files[1], files[0]])[0])

    def rotated_then_moved_away(self, directory: Path, clock: Clock, count: int) -> None:
        """``count`` records written with rotation, then the current file moved away by ops."""
        log = audit_log(str(directory), clock, rotate_bytes=600)
        for i in range(count):
            self.successResultOf(log.append({"i": i}))
        self.successResultOf(log.close())
        (directory / "audit.jsonl").unlink()

    def test_reopening_after_rotation_continues_the_chain(self) -> None:
        clock = Clock()
        directory = scratch(self)
        self.rotated_then_moved_away(directory, clock, 5)
        again = audit_log(str(directory), clock)
        self.successResultOf(again.append({"i": 5}))
        files = sorted(f for f in directory.iterdir() if not f.name.endswith(".lock"))
        self.assertEqual(cli(["audit", "verify", *map(str, files)]), 0)

    def test_the_chain_goes_on_from_the_highest_seq_whatever_the_files_mtimes(self) -> None:
        """
        Found by review: it went on from the rotated file with the newest
        mtime, so a copy without ``-p`` or a ``touch`` of an older one forked it.
        """
        clock = Clock()
        directory = scratch(self)
        self.rotated_then_moved_away(directory, clock, 8)
        rotated = sorted(f for f in directory.iterdir()
                         if f.name.startswith("audit.jsonl.") and f.suffix != ".lock")
        self.assertGreater(len(rotated), 2)
        os.utime(rotated[0], (2_000_000_000, 2_000_000_000))  # the oldest now looks newest
        # Found by the second review: a damaged old file made every append fail.
        with rotated[0].open("ab") as f:
            f.write(b"\x00\xffgarbage\n")
        with rotated[1].open("ab") as f:
            f.write(b"[]\n")
        again = audit_log(str(directory), clock)
        self.successResultOf(again.append({"i": 8}))
        self.successResultOf(again.close())
        first = records(directory / "audit.jsonl")[0]
        self.assertEqual(first["event"], "audit.rotated")
        self.assertEqual(first["previous_file"], rotated[-1].name)
        self.assertEqual(first["seq"], records(rotated[-1])[-1]["seq"] + 1)


class RotationFailureTests(SynchronousTestCase):
    """Found by review of the audit writer: rotations that fail half way."""

    def chain(self, path: Path) -> Any:
        from txairflowrpc.audit.chain import ChainFile

        chain = ChainFile(path, rotate_bytes=600)
        chain.open()
        self.addCleanup(chain.close)
        return chain

    def fill(self, chain: Any, first: int, count: int, now: float = 1_800_000_000) -> None:
        for i in range(first, first + count):
            chain.append([{"time": "2027-01-15T08:00:00.000000Z", "i": i}], now + i)

    def test_a_rotation_whose_first_write_fails_still_starts_its_file_with_the_link(
            self) -> None:
        directory = scratch(self)
        chain = self.chain(directory / "audit.jsonl")
        self.fill(chain, 0, 4)
        real_write, calls = os.write, []

        def failing(fd: int, data: Any) -> int:
            calls.append(fd)
            if len(calls) == 1:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_write(fd, data)

        self.patch(os, "write", failing)
        with self.assertRaises(OSError):  # rotated, then the new file's first write failed
            self.fill(chain, 4, 20)
        self.assertEqual((directory / "audit.jsonl").stat().st_size, 0)
        self.fill(chain, 4, 1)  # the retry
        first = records(directory / "audit.jsonl")[0]
        self.assertEqual(first["event"], "audit.rotated")
        self.assertTrue(verify([directory / "audit.jsonl"])[0])  # verifiable on its own
        files = sorted(f for f in directory.iterdir() if not f.name.endswith(".lock"))
        self.assertEqual(cli(["audit", "verify", *map(str, files)]), 0)

    def test_a_rotation_that_cannot_open_the_new_file_recovers_once_it_can(self) -> None:
        directory = scratch(self)
        chain = self.chain(directory / "audit.jsonl")
        self.fill(chain, 0, 4)
        real_open, refused = os.open, []

        def no_new_file(path: Any, flags: int, *args: Any, **kw: Any) -> int:
            if str(path).endswith("audit.jsonl") and flags & os.O_CREAT and not refused:
                refused.append(path)
                raise OSError(errno.EMFILE, "Too many open files")
            return real_open(path, flags, *args, **kw)

        self.patch(os, "open", no_new_file)
        with self.assertRaises(OSError):
            self.fill(chain, 4, 20)
        self.assertIsNone(chain._fd)  # no closed descriptor's number kept
        self.fill(chain, 4, 1)  # once it can: a new file, the chain whole
        self.assertEqual(records(directory / "audit.jsonl")[0]["event"], "audit.rotated")
        files = sorted(f for f in directory.iterdir() if not f.name.endswith(".lock"))
        self.assertEqual(cli(["audit", "verify", *map(str, files)]), 0)

    def test_a_checkpoint_alone_into_a_continuing_file_comes_after_the_link(self) -> None:
        """From the second reading: a shutdown checkpoint could open the file, cut alone."""
        from txairflowrpc.audit.chain import ChainFile
        from txairflowrpc.audit.checkpoint import HMAC_SHA256, Signer

        directory = scratch(self)
        path = directory / "audit.jsonl"
        plain = self.chain(path)
        self.fill(plain, 0, 4)
        plain.close()
        path.rename(directory / "audit.jsonl.20270115T080000Z")  # rotated, not ending signed
        path.touch()
        signed = ChainFile(path, signer=Signer(HMAC_SHA256, "k1", key=b"k" * 32))
        signed.open()
        self.addCleanup(signed.close)
        signed.append([], 1_800_000_100, "shutdown")
        lines = records(path)
        self.assertEqual([r.get("event") for r in lines], ["audit.rotated", "audit.checkpoint"])
        self.assertTrue(verify([path])[0])

    def test_a_worker_s_chain_beside_is_never_taken_for_a_rotated_file(self) -> None:
        """With audit.path = audit (no suffix), the CLI's chain went on from audit.w1's."""
        directory = scratch(self)
        worker = self.chain(directory / "audit.w1")
        self.fill(worker, 0, 3)
        main = self.chain(directory / "audit")
        self.fill(main, 0, 1)
        self.assertEqual(records(directory / "audit")[0]["seq"], 1)
        self.assertTrue(verify([directory / "audit"])[0])


class GatewayRecordTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = str(scratch(self))
        self.gw = gateway(audit_dir=self.dir)
        self.path = Path(self.dir) / "audit.jsonl"

    def call(self, method: str, *params: Any) -> tuple[str, Any]:
        status, headers, result = self.successResultOf(self.gw.call_d(method, *params))
        return headers.getRawHeaders("x-request-id")[0], result

    def test_a_call_record_says_who_what_where_and_how_it_ended(self) -> None:
        request_id, run = self.call(
            "trigger_dag", "etl_orders", {"day": "2026-01-01", "db_password": "hunter2"},
            {"dag_run_id": "r1", "note": "secret-ish note"})
        self.assertTrue(run["created"])
        intent, rec = records(self.path)  # a change: its intent first, on disk before Airflow
        self.assertEqual((intent["kind"], intent["request_id"], intent["method"]),
                         ("intent", request_id, "trigger_dag"))
        self.assertEqual((intent["dag_id"], intent["dag_run_id"]), ("etl_orders", "r1"))
        self.assertEqual(intent["args"]["conf"], rec["args"]["conf"])
        self.assertNotIn("outcome", intent)
        self.assertEqual(rec["kind"], "call")
        self.assertEqual(rec["request_id"], request_id)
        self.assertEqual(rec["principal"], "ci-bot")
        self.assertEqual(rec["auth"], {"method": "client_certificate"})
        self.assertEqual((rec["method"], rec["dag_id"], rec["dag_run_id"]),
                         ("trigger_dag", "etl_orders", "r1"))
        self.assertEqual((rec["decision"], rec["outcome"], rec["airflow_status"]),
                         ("allowed", "ok", 200))
        self.assertEqual(set(rec["args"]["conf"]), {"hmac_sha256", "size"})
        self.assertEqual(rec["args"]["options"]["dag_run_id"], "r1")
        self.assertEqual(set(rec["args"]["options"]["note"]), {"hmac_sha256", "size"})
        self.assertIn("duration_ms", rec)
        raw = self.path.read_text()
        for secret in ("hunter2", "secret-ish", "2026-01-01"):
            self.assertNotIn(secret, raw)

    def test_sensitive_keys_are_redacted_before_digesting(self) -> None:
        from txairflowrpc.audit.summary import Summarizer
        from txairflowrpc.config.sections import REDACT_DEFAULT

        self.call("trigger_dag", "etl_orders", {"db_password": "hunter2"}, {"token": "t0ps3cret"})
        _, rec = records(self.path)
        self.assertEqual(rec["fault_code"], -32602)  # options has no "token" key
        self.assertEqual(rec["args"]["options"]["token"], "[redacted]")
        digest = Summarizer(REDACT_DEFAULT, DIGEST_KEY).digest({"db_password": "[redacted]"})
        self.assertEqual(rec["args"]["conf"], digest)
        self.assertNotIn("t0ps3cret", self.path.read_text())

    def test_an_options_member_never_stands_for_the_call_s_ids(self) -> None:
        """The record names the DAG the call was authorised on, whatever the options say."""
        self.call("trigger_dag", "etl_orders", {}, {"dag_run_id": "r9", "dag_id": "example_hello"})
        self.call("list_dag_runs", "etl_orders", {"limit": 5, "dag_id": "example_hello",
                                                  "dag_run_id": "r7"})
        intent, trigger, listing = records(self.path)
        for rec in (intent, trigger, listing):
            self.assertEqual(rec["dag_id"], "etl_orders")
        self.assertEqual((trigger["dag_run_id"], trigger["fault_code"]), ("r9", -32602))
        self.assertNotIn("dag_run_id", listing)  # filters are not for a run
        self.assertEqual(listing["args"]["filters"]["dag_id"], "example_hello")  # but kept

    def test_a_huge_options_struct_is_one_digest_and_the_record_stays_small(self) -> None:
        """
        Found by review: a caller with no roles sent list_dags a filters
        struct of 9,000 members (954 KB); its refusal's record was a 1.4 MB
        line, which the verifier refuses: the chain unverifiable from it on.
        """
        filters = {f"k{i:05}": "v" * 60 for i in range(500)}  # 40 KB of record, before
        self.call("list_dags", filters)
        (rec,) = records(self.path)
        self.assertEqual(rec["fault_code"], -32602)
        self.assertEqual(set(rec["args"]["filters"]), {"hmac_sha256", "size"})
        self.assertLess(len(self.path.read_bytes()), 4096)
        self.assertEqual(verify([self.path])[0], True)

    def test_every_waiter_s_record_gets_the_status_of_the_polls_it_waited_on(self) -> None:
        """The second waiter joined a watch already polling: its record said nothing."""
        self.gw.airflow.runs[("etl_orders", "r1")] = {
            "dag_id": "etl_orders", "dag_run_id": "r1", "state": "running"}
        first = self.gw.call_d("wait_dag_run", "etl_orders", "r1", 100)
        second = self.gw.call_d("wait_dag_run", "etl_orders", "r1", 100)
        del self.gw.airflow.runs[("etl_orders", "r1")]  # gone from Airflow
        self.gw.advance(3)
        for d in (first, second):
            self.assertEqual(self.successResultOf(d)[2].faultCode, 404)
        waits = [r for r in records(self.path) if r.get("method") == "wait_dag_run"]
        self.assertEqual([(r["fault_code"], r["airflow_status"]) for r in waits],
                         [(404, 404), (404, 404)])

    def test_intent_and_call_record_the_arguments_the_handler_got(self) -> None:
        """PHP sends no conf as "": both records digest what was used (nothing), alike."""
        self.call("trigger_dag", "etl_orders", "", {"dag_run_id": "r5"})
        intent, rec = records(self.path)
        self.assertEqual(rec["outcome"], "ok")
        self.assertEqual(intent["args"], rec["args"])

    def test_an_id_among_the_options_is_checked_before_the_policy(self) -> None:
        self.call("trigger_dag", "etl_orders", {}, {"dag_run_id": "../../x?y#z\n"})
        (rec,) = records(self.path)  # no intent: nothing was authorised
        self.assertEqual((rec["decision"], rec["fault_code"]), ("invalid", -32602))
        # Found by review: it was recorded as the call's run id. Refused, it is
        # no id of anything: the option member is a digest like free text.
        self.assertNotIn("dag_run_id", rec)
        self.assertEqual(set(rec["args"]["options"]["dag_run_id"]), {"hmac_sha256", "size"})

    def test_faults_are_recorded_with_their_code(self) -> None:
        self.call("get_dag", "no_such_dag")
        self.call("get_dag", "x/../../variables")
        self.call("nope")
        recs = records(self.path)
        self.assertEqual([(r["outcome"], r["fault_code"], r["decision"]) for r in recs],
                         [("fault", 404, "allowed"), ("fault", -32602, "invalid"),
                          ("fault", -32601, "invalid")])  # an id is checked before the policy
        self.assertEqual(recs[0]["airflow_status"], 404)
        # Not in the id field (it is no DAG's id), but kept to be read, as escaped JSON.
        self.assertNotIn("dag_id", recs[1])
        self.assertEqual(recs[1]["args"], {"dag_id": {"invalid_id": "x/../../variables"}})
        self.assertNotIn("airflow_status", recs[1])
        self.assertEqual(recs[2]["method"], "nope")  # an unknown name, made like one

    def test_what_a_caller_chose_stays_out_of_the_fields_that_name_things(self) -> None:
        """Found by review: line breaks and bidi controls went on the trail as ids and names."""
        spoof = "r1\n\u2028\u202edecision: allowed\u202c"
        self.call("get_dag_run", "etl_orders", spoof)
        self.call("trigger_dag\u200b", "etl_orders")
        self.call("system.multicall", [{"methodName": "get_dag\n", "params": ["etl_orders"]}])
        run, name, *rest = records(self.path)
        (inner,) = [r for r in rest if r.get("multicall_index") == 0]
        self.assertEqual((run["dag_id"], run["args"]), ("etl_orders",
                                                         {"dag_run_id": {"invalid_id": spoof}}))
        self.assertNotIn("dag_run_id", run)
        self.assertEqual([name["method"], inner["method"]], ["(not a method name)"] * 2)
        self.assertEqual([name["invalid_method"], inner["invalid_method"]],
                         ["trigger_dag\u200b", "get_dag\n"])  # kept to be read, escaped
        self.assertEqual((name["fault_code"], inner["fault_code"]), (-32601, -32601))

    def test_multicall_records_each_inner_call_linked_to_the_request(self) -> None:
        request_id, _ = self.call("system.multicall", [
            {"methodName": "ping", "params": []},
            {"methodName": "get_dag", "params": ["etl_orders"]},
        ])
        recs = records(self.path)
        self.assertEqual([(r["method"], r.get("multicall_index")) for r in recs],
                         [("ping", 0), ("get_dag", 1), ("system.multicall", None)])
        self.assertEqual({r["request_id"] for r in recs}, {request_id})

    def test_a_malformed_multicall_entry_is_recorded_like_any_other(self) -> None:
        """Found by review: entries refused before they were calls had no record."""
        request_id, results = self.call("system.multicall", [
            {"methodName": "ping", "params": []},
            {"methodName": "system.multicall", "params": [[]]},
            {"methodName": 5},
            {"methodName": "ping", "params": [], "extra": 1},
            "not a struct",
        ])  # the helper's gateway takes at most 5
        self.assertEqual([r if isinstance(r, list) else r["faultCode"] for r in results],
                         [["pong"], -32602, -32602, -32602, -32602])
        recs = records(self.path)
        self.assertEqual(
            [(r["method"], r.get("multicall_index"), r.get("decision"), r.get("fault_code"))
             for r in recs],
            [("ping", 0, "allowed", None),
             ("system.multicall", 1, "invalid", -32602),
             ("(no method name)", 2, "invalid", -32602),
             ("ping", 3, "invalid", -32602),
             ("(no method name)", 4, "invalid", -32602),
             ("system.multicall", None, "allowed", None)])
        self.assertEqual({r["request_id"] for r in recs}, {request_id})
        self.assertIn("cannot be nested", recs[1]["reason"])

    def test_refusals_are_recorded(self) -> None:
        ping = xmlrpc.client.dumps((), "ping").encode()
        for d in [self.gw.post(ping, {"Content-Type": "text/plain"}),
                  self.gw.post(ping, path="/other"),
                  self.gw.post(b"<!DOCTYPE x><methodCall/>"),
                  self.gw.client.get("https://gw.test/RPC2")]:
            self.successResultOf(d)
        self.gw.principal = None
        self.successResultOf(self.gw.post(ping))
        recs = records(self.path)
        self.assertEqual([(r["kind"], r.get("http_status"), r.get("fault_code")) for r in recs],
                         [("refused", 415, None), ("refused", 404, None),
                          ("refused", None, -32700), ("refused", 405, None),
                          ("refused", 401, None)])
        self.assertTrue(all(r["decision"] == "denied" for r in recs))

    def held_gateway(self) -> tuple[Any, HeldWrites, Clock, Path]:
        """A gateway whose audit writes finish only when the test releases them."""
        held = HeldWrites()
        directory = scratch(self)
        clock = Clock()
        log = AuditLog(directory / "audit.jsonl", clock=clock, run_blocking=held, instance="t")
        log.open()
        return gateway(clock=clock, audit=log), held, clock, directory

    def test_no_answer_leaves_before_its_record_is_on_disk(self) -> None:
        gw, held, _, _ = self.held_gateway()
        d = gw.call_d("ping")
        self.assertNoResult(d)
        held.release()
        gw.client.flush()
        self.assertEqual(self.successResultOf(d)[2], "pong")

    def test_calls_are_refused_while_the_log_cannot_be_written(self) -> None:
        gw, held, clock, directory = self.held_gateway()
        held.fail_with = OSError(errno.EFBIG, "File too large")
        d = gw.call_d("get_dag", "etl_orders")
        held.release()
        gw.client.flush()
        fault = self.successResultOf(d)[2]
        self.assertEqual(fault.faultCode, 507)  # it ran, but could not be recorded
        before = len(gw.airflow.requests)
        d = gw.call_d("trigger_dag", "etl_orders")
        held.release()
        gw.client.flush()
        self.assertEqual(self.successResultOf(d)[2].faultCode, 507)
        self.assertEqual(len(gw.airflow.requests), before)  # refused: Airflow never asked
        held.fail_with = None
        clock.advance(RETRY_SECONDS)
        held.release()
        d = gw.call_d("ping")
        held.release()
        gw.client.flush()
        self.assertEqual(self.successResultOf(d)[2], "pong")
        recs = records(directory / "audit.jsonl")
        self.assertEqual([(r["method"], r.get("fault_code")) for r in recs],
                         [("get_dag", None), ("trigger_dag", 507), ("ping", None)])
        self.assertEqual(recs[1]["decision"], "denied")


    def test_a_call_whose_record_stalls_is_answered_507(self) -> None:
        held = HeldWrites()
        directory = scratch(self)
        clock = Clock()
        log = AuditLog(directory / "audit.jsonl", clock=clock, run_blocking=held, instance="t",
                       stall_seconds=10)
        log.open()
        gw = gateway(clock=clock, audit=log)
        d = gw.call_d("get_dag", "etl_orders")
        self.assertNoResult(d)
        clock.advance(10)
        gw.client.flush()
        self.assertEqual(self.successResultOf(d)[2].faultCode, 507)
        before = len(gw.airflow.requests)
        d = gw.call_d("trigger_dag", "etl_orders")  # refused at once while it stalls
        gw.client.flush()
        self.assertEqual(self.successResultOf(d)[2].faultCode, 507)
        self.assertEqual(len(gw.airflow.requests), before)


class FailingLogTests(SynchronousTestCase):
    def test_calls_refused_while_the_log_fails_do_not_grow_its_queue(self) -> None:
        from txairflowrpc.audit.log import MAX_DROPPABLE_QUEUED

        held = HeldWrites()
        directory = scratch(self)
        clock = Clock()
        log = AuditLog(directory / "audit.jsonl", clock=clock, run_blocking=held, instance="t")
        log.open()
        # A rate that lets the whole flood through: each call meets the failing log.
        unlimited = attrs.evolve(CONFIG, limits=attrs.evolve(
            CONFIG.limits, rate_per_second=1e6, burst=1_000_000))
        gw = gateway(unlimited, clock=clock, audit=log)
        held.fail_with = OSError(errno.ENOSPC, "No space left on device")
        first = gw.call_d("ping")  # its write fails: the log is failing from here on
        held.release()
        gw.client.flush()
        self.assertEqual(self.successResultOf(first)[2].faultCode, 507)
        for _ in range(MAX_DROPPABLE_QUEUED + 500):  # a flood of calls, each refused at once
            fault = self.successResultOf(gw.call_d("ping"))[2]
            self.assertEqual(fault.faultCode, 507)
        self.assertLessEqual(len(log._queue), MAX_DROPPABLE_QUEUED + 1)
        self.assertEqual(log.dropped, 500)
        held.fail_with = None  # space again
        clock.advance(RETRY_SECONDS)
        held.release()
        held.release()
        dropped = [r for r in records(directory / "audit.jsonl") if r.get("event") == "audit.dropped"]
        self.assertEqual([r["count"] for r in dropped], [500])


class IntentTests(SynchronousTestCase):
    """No effect in Airflow without a durable record: the intent goes first."""

    def held_gateway(self) -> tuple[Any, HeldWrites, Path]:
        held = HeldWrites()
        directory = scratch(self)
        log = AuditLog(directory / "audit.jsonl", clock=Clock(), run_blocking=held, instance="t")
        log.open()
        return gateway(audit=log), held, directory

    def test_a_change_waits_for_its_intent_to_be_on_disk(self) -> None:
        gw, held, directory = self.held_gateway()
        d = gw.call_d("trigger_dag", "etl_orders", {}, {"dag_run_id": "i1"})
        self.assertEqual(gw.airflow.api_requests(), [])  # Airflow not asked yet
        held.release()  # the intent is on disk ...
        self.assertEqual(gw.airflow.api_requests(), [("POST", "/api/v2/dags/etl_orders/dagRuns")])
        self.assertNoResult(d)
        held.release()  # ... and then the outcome
        gw.client.flush()
        self.assertTrue(self.successResultOf(d)[2]["created"])
        kinds = [(r["kind"], r.get("outcome")) for r in records(directory / "audit.jsonl")]
        self.assertEqual(kinds, [("intent", None), ("call", "ok")])

    def test_an_intent_that_cannot_be_written_means_no_effect(self) -> None:
        gw, held, _ = self.held_gateway()
        held.fail_with = OSError(errno.ENOSPC, "No space left on device")
        d = gw.call_d("pause_dag", "etl_orders")
        held.release()
        held.release()
        gw.client.flush()
        self.assertEqual(self.successResultOf(d)[2].faultCode, 507)
        self.assertEqual(gw.airflow.api_requests(), [])
        self.assertFalse(gw.airflow.dags["etl_orders"]["is_paused"])

    def test_reads_and_dry_runs_have_no_intent(self) -> None:
        gw = gateway(audit_dir=str(scratch(self)))
        gw.airflow.runs[("etl_orders", "r")] = {"dag_id": "etl_orders", "dag_run_id": "r",
                                                "state": "success"}
        self.successResultOf(gw.call_d("get_dag", "etl_orders"))
        self.successResultOf(gw.call_d("clear_task_instances", "etl_orders", "r",
                                       {"dry_run": True}))
        self.successResultOf(gw.call_d("clear_task_instances", "etl_orders", "r"))
        kinds = [(r["kind"], r["method"]) for r in records(gw.audit.path)]
        self.assertEqual(kinds, [("call", "get_dag"), ("call", "clear_task_instances"),
                                 ("intent", "clear_task_instances"),
                                 ("call", "clear_task_instances")])


class OpenIntentTests(SynchronousTestCase):
    def test_verify_pairs_intents_with_outcomes_and_lists_the_rest(self) -> None:
        directory = scratch(self)
        log = audit_log(str(directory), Clock())
        for record in (
            {"kind": "intent", "request_id": "a1", "method": "trigger_dag", "dag_id": "etl",
             "dag_run_id": "r1"},
            {"kind": "call", "request_id": "a1", "method": "trigger_dag", "outcome": "ok"},
            {"kind": "intent", "request_id": "b2", "method": "trigger_dag", "dag_id": "etl",
             "dag_run_id": "r2"},  # the gateway died before Airflow's answer was recorded
            {"kind": "intent", "request_id": "c3", "method": "pause_dag", "dag_id": "etl",
             "multicall_index": 0},
            {"kind": "call", "request_id": "c3", "method": "pause_dag", "multicall_index": 0,
             "outcome": "fault"},
        ):
            self.successResultOf(log.append(record))
        path = directory / "audit.jsonl"
        from txairflowrpc.audit.verify import check

        report = check([path])
        self.assertTrue(report.whole)
        self.assertEqual([(i.request_id, i.objects) for i in report.open_intents],
                         [("b2", "dag_id=etl dag_run_id=r2")])
        self.assertIn("INTENTS WITHOUT OUTCOME: 1", "\n".join(report.lines()))
        self.assertEqual(cli(["audit", "verify", str(path)]), 4)


class MulticallCommitTests(SynchronousTestCase):
    def test_the_records_of_one_multicall_share_a_group_commit(self) -> None:
        directory = scratch(self)
        log = AuditLog(directory / "audit.jsonl", clock=Clock(),
                       run_blocking=lambda f: maybeDeferred(f), instance="t")
        log.open()
        gw = gateway(audit=log)
        held = HeldWrites()
        log._run_blocking = held  # from here on, writes wait for the test
        d = gw.call_d("system.multicall", [{"methodName": "ping", "params": []}] * 5)
        # The first inner record is being written; the other four waited for
        # it and go together: two writes, not one per inner call.
        held.release()
        held.release()
        held.release()  # the multicall's own record
        gw.client.flush()
        self.assertEqual(self.successResultOf(d)[2], [["pong"]] * 5)
        self.assertEqual(log.fsyncs, 3)
        self.assertEqual(len(records(directory / "audit.jsonl")), 6)


class FsyncSpy:
    """
    Records what each ``os.fsync`` and ``os.fdatasync`` call synced:
    (inode, is a directory, size).
    """

    def __init__(self, case: SynchronousTestCase) -> None:
        self.synced: list[tuple[int, bool, int]] = []
        for name in ("fsync", "fdatasync"):
            case.patch(os, name, self._spying(getattr(os, name)))

    def _spying(self, real: Callable[[int], None]) -> Callable[[int], None]:
        def sync(fd: int) -> None:
            st = os.fstat(fd)
            self.synced.append((st.st_ino, stat.S_ISDIR(st.st_mode), st.st_size))
            real(fd)
        return sync

    def directories(self) -> list[int]:
        return [ino for ino, is_dir, _ in self.synced if is_dir]

    def sizes(self, path: Path) -> list[int]:
        """The file's size each time its data was synced."""
        ino = path.stat().st_ino
        return [size for i, is_dir, size in self.synced if i == ino and not is_dir]


class DirectoryFsyncTests(SynchronousTestCase):
    def test_creating_the_audit_file_syncs_its_directory(self) -> None:
        directory = scratch(self) / "audit"  # created by open(), as at a first start
        spy = FsyncSpy(self)
        log = audit_log(str(directory), Clock())
        self.assertIn(directory.stat().st_ino, spy.directories())
        self.assertIn(directory.parent.stat().st_ino, spy.directories())
        self.successResultOf(log.close())

    def test_rotating_syncs_the_directory_after_the_rename(self) -> None:
        directory = scratch(self)
        clock = Clock()
        log = audit_log(str(directory), clock, rotate_bytes=600)
        for i in range(3):
            self.successResultOf(log.append({"i": i}))
        spy = FsyncSpy(self)
        for i in range(10):  # bounded: 600 bytes hold a few records
            self.successResultOf(log.append({"i": "more"}))
            if list(directory.glob("audit.jsonl.*Z")):
                break
        self.assertTrue(list(directory.glob("audit.jsonl.*Z")), "it never rotated")
        self.assertIn(directory.stat().st_ino, spy.directories())

    def test_replacing_the_token_store_syncs_its_directory(self) -> None:
        # The token CLI reports a token created (and records it here) only
        # once the store's new name is durable, or a crash could undo a
        # revocation that was reported done.
        from datetime import datetime, timezone

        from txairflowrpc.identity import tokens

        directory = scratch(self)
        store = directory / "tokens.json"
        now = datetime(2026, 11, 26, tzinfo=timezone.utc)
        record, _ = tokens.create(store, "ci-bot", None, 90, now)
        spy = FsyncSpy(self)
        tokens.revoke(store, record.id, now)
        self.assertIn(directory.stat().st_ino, spy.directories())
        self.assertIsNotNone(tokens.TokenStore.load(store).records[record.id].revoked)


class RecordSyncTests(SynchronousTestCase):
    """An append is answered only once its records' bytes are synced to the disk."""

    def setUp(self) -> None:
        self.directory = scratch(self)
        self.path = self.directory / "audit.jsonl"
        self.spy = FsyncSpy(self)

    def test_each_batch_is_synced_before_its_callers_are_answered(self) -> None:
        log = audit_log(str(self.directory), Clock())
        for i in range(3):
            answered = log.append({"i": i})
            self.successResultOf(answered)
            # Everything in the file when the caller hears back was synced.
            self.assertEqual(self.spy.sizes(self.path)[-1:], [self.path.stat().st_size])
        self.assertEqual(len(self.spy.sizes(self.path)), 3)
        self.successResultOf(log.close())

    def test_nothing_is_synced_with_fsync_off(self) -> None:
        log = audit_log(str(self.directory), Clock(), fsync=False)
        self.successResultOf(log.append({"i": 0}))
        self.assertGreater(self.path.stat().st_size, 0)
        self.assertEqual(self.spy.sizes(self.path), [])
        self.successResultOf(log.close())


class CallerFloodTests(SynchronousTestCase):
    """
    Found by review: a caller with valid credentials and no scopes at all
    had every refused call (429, past its rate), every multicall entry that
    is no call and every refused request (bad XML, 415, 404) written and
    fsynced on its own, at the speed it could send them: about 1 MB/s of
    trail from one credential, until the disk is full and every call 507.
    """

    def setUp(self) -> None:
        from txairflowrpc.identity.principal import Principal
        from txairflowrpc.identity.scopes import Grants

        self.dir = scratch(self)
        cfg = attrs.evolve(CONFIG, limits=attrs.evolve(CONFIG.limits, rate_per_second=20,
                                                         burst=40),
                           rpc=attrs.evolve(CONFIG.rpc, max_multicall=50))
        self.clock = Clock()
        self.gw = gateway(cfg, audit_dir=str(self.dir), clock=self.clock)
        self.gw.principal = Principal("nobody", "client_certificate", roles=(), grants=Grants(()))

    def limits_refused(self) -> int:
        refused: int = self.gw.site.rpc._dispatcher._limits.refused
        return refused

    def records(self) -> list[dict[str, Any]]:
        self.gw.site.refusals.flush()
        self.gw.client.flush()
        path = self.dir / "audit.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()]

    def test_calls_past_the_rate_are_counted_not_each_written(self) -> None:
        codes = []
        for _ in range(1000):  # no time passes: the burst of 40, then nothing
            d = self.gw.call_d("get_dag", "etl_orders")
            self.gw.client.flush()
            codes.append(self.successResultOf(d)[2].faultCode)
        self.assertEqual((codes.count(403), codes.count(429)), (40, 960))
        records = self.records()
        denied = [r for r in records if r["kind"] == "call"]
        self.assertEqual(len(denied), 40)  # within its rate: each call on its own
        counted = [r for r in records if r.get("refusal") == "rate_limited"]
        self.assertEqual(sum(r["count"] for r in counted), 960)  # every one on the trail
        self.assertEqual(len(counted), 2)  # the first at once, the rest in one record
        self.assertEqual({(r["principal"], r["method"], r["fault_code"], r["reason"])
                          for r in counted},
                         {("nobody", "get_dag", 429, "rate limited: more than 20 calls per "
                                                      "second (bursts of 40)")})
        # Not a call refused with 429 more than the caller got.
        self.assertEqual(self.gw.site.refusals.kinds["rate_limited"], 960)

    def test_multicall_entries_that_are_no_calls_cost_a_call_each(self) -> None:
        d = self.gw.call_d("system.multicall", [7] * 50)  # 50 entries that are not structs
        self.gw.client.flush()
        results = self.successResultOf(d)[2]
        self.assertEqual({r["faultCode"] for r in results}, {-32602})  # each answered alike
        records = self.records()
        # Spent when the multicall started, 50 from a burst of 40: each
        # entry paid for, and recorded; the caller owes 10.
        self.assertEqual(len([r for r in records if r["kind"] == "call"
                              and r["decision"] == "invalid"]), 50)
        self.assertEqual([r for r in records if r.get("refusal") == "invalid_call"], [])
        d = self.gw.call_d("system.multicall", [7] * 50)  # owing: refused whole, counted
        self.gw.client.flush()
        self.assertEqual(self.successResultOf(d)[2].faultCode, 429)
        self.clock.advance(0.55)  # paid back (10 at 20 a second) and one call more
        d = self.gw.call_d("system.multicall", [7] * 2)
        self.gw.client.flush()
        self.assertEqual({r["faultCode"] for r in self.successResultOf(d)[2]}, {-32602})
        records = self.records()
        self.assertEqual(len([r for r in records if r["kind"] == "call"
                              and r["decision"] == "invalid"]), 52)
        counted = [r for r in records if r.get("refusal") == "rate_limited"]
        self.assertEqual(sum(r["count"] for r in counted), 1)

    def test_refused_requests_cost_a_call_each(self) -> None:
        for i in range(300):
            d = (self.gw.post(b"<not-xmlrpc/>") if i % 3 == 0
                 else self.gw.post(b"x", headers={"Content-Type": "text/plain"}) if i % 3 == 1
                 else self.gw.post(b"x", path="/nope"))
            self.gw.client.flush()
            self.assertIn(self.successResultOf(d).code, (200, 415, 404))
        records = [r for r in self.records() if r["kind"] == "refused"]
        self.assertEqual(sum(r.get("count", 1) for r in records), 300)
        self.assertEqual(self.limits_refused(), 0)  # nobody got a 429
        self.assertLessEqual(len(records), 40 + 2 * 3)  # its burst, then counted per reason
        self.clock.advance(1)  # its rate comes back: a refusal is written on its own again
        self.gw.post(b"x", path="/nope")
        self.gw.client.flush()
        self.assertEqual(len([r for r in self.records() if r["kind"] == "refused"]),
                         len(records) + 1)


class TamperedUnderTheWriterTests(SynchronousTestCase):
    """
    Found by an attacker's review: between two checkpoints, an insider who
    cut or rewrote records the gateway had written got the next checkpoint
    to sign the change (the writer took the chain's head from whatever the
    file held): `audit verify --public-key` then said every record was
    proven.  The writer knows what it wrote; it goes on from there, seals an
    ``audit.tampered`` record and a checkpoint at once, and verify finds the
    chain broken where the file was changed.
    """

    def setUp(self) -> None:
        from txairflowrpc.audit.chain import ChainFile
        from txairflowrpc.audit.checkpoint import HMAC_SHA256, Signer

        self.path = scratch(self) / "audit.jsonl"
        self.now = 1_800_000_000.0
        self.chain = ChainFile(self.path, signer=Signer(HMAC_SHA256, "k1", key=b"k" * 32),
                               instance="gw-a")
        self.chain.open()
        self.addCleanup(self.chain.close)

    def write(self, *items: str) -> None:
        self.now += 1
        self.chain.append([{"time": f"2027-01-15T08:00:{self.now % 60:09.6f}Z",
                            "instance": "gw-a", "kind": "call", "request_id": r}
                           for r in items], self.now)

    def events(self) -> list[Any]:
        return [r.get("event") or r.get("request_id") for r in records(self.path)]

    def test_records_cut_from_the_end_are_not_signed_over(self) -> None:
        self.write("a")
        self.chain.append([], self.now, "interval")  # a, checkpoint
        self.write("evidence", "b")
        lines = self.path.read_bytes().splitlines(keepends=True)
        self.path.write_bytes(b"".join(lines[:2]))  # evidence and b cut away
        self.write("c")
        self.assertEqual(self.events(), ["a", "audit.checkpoint", "audit.tampered", "c",
                                         "audit.checkpoint"])
        note = records(self.path)[2]
        self.assertEqual((note["expected"]["seq"], note["found"]["seq"]), (4, 2))
        self.assertEqual(note["seq"], 5)  # the chain goes on from what was written: 3, 4 gone
        whole, message = verify([self.path])
        self.assertFalse(whole)
        self.assertIn("records 3..4 are missing", message)

    def test_a_record_rewritten_to_another_length_is_not_signed_over(self) -> None:
        from txairflowrpc.audit.chain import seal

        self.write("a", "evidence")
        lines = self.path.read_text().splitlines(keepends=True)
        forged = json.loads(lines[1])
        del forged["hash"]
        forged["request_id"] = "innocent-and-longer"
        self.path.write_text(lines[0] + seal(forged))  # re-hashed, as an insider would
        self.write("b")
        self.assertEqual(self.events()[2:], ["audit.tampered", "b", "audit.checkpoint"])
        self.assertFalse(verify([self.path])[0])

    def test_lines_that_do_not_follow_on_are_not_signed_over(self) -> None:
        self.write("a")
        with self.path.open("a") as f:
            f.write('{"seq":2,"kind":"call","request_id":"forged","prev":"x","hash":"y"}\n')
        self.write("b")
        self.assertEqual(self.events(), ["a", "forged", "audit.tampered", "b",
                                         "audit.checkpoint"])
        self.assertIn("does not follow the hash of seq 1", records(self.path)[2]["reason"])
        self.assertFalse(verify([self.path])[0])

    def test_what_the_cli_appends_is_taken_up(self) -> None:
        self.write("a")
        append_now(self.path, {"event": "token.created", "token_id": "abc"})
        append_now(self.path, {"event": "token.revoked", "token_id": "abc"})
        self.write("b")
        self.assertEqual(self.events(), ["a", "token.created", "token.revoked", "b"])
        self.assertEqual([r["seq"] for r in records(self.path)], [1, 2, 3, 4])
        self.assertTrue(verify([self.path])[0])

    def test_a_chain_rotated_by_its_writer_and_then_appended_to_is_taken_up(self) -> None:
        self.write("a")
        self.chain._rotate(self.now)  # the writer's own rotation: its head in the old file
        append_now(self.path, {"event": "token.created", "token_id": "abc"})
        self.write("b")
        self.assertEqual(self.events(), ["audit.rotated", "token.created", "b"])

    def test_a_last_line_longer_than_any_record_is_refused_unread(self) -> None:
        """
        Found by review: a 300 MB line appended by hand was read whole at
        every retry.  Unread now: to a writer that knows its end, it is a
        change under it; to one starting on such a file, a file to mend.
        """
        from txairflowrpc.audit.chain import _LAST_RECORD_SEARCH, ChainFile

        self.write("a")
        with self.path.open("ab") as f:
            f.write(b"x" * (_LAST_RECORD_SEARCH * 2) + b"\n")
        self.write("b")
        note = [r for r in records_lenient(self.path) if r.get("event") == "audit.tampered"]
        self.assertIn("its last line is no record", note[0]["reason"])
        self.assertIn("longer than", note[0]["reason"])
        with self.path.open("ab") as f:
            f.write(b"x" * (_LAST_RECORD_SEARCH * 2) + b"\n")
        fresh = ChainFile(self.path, instance="gw-a")
        fresh.open()
        self.addCleanup(fresh.close)
        with self.assertRaisesRegex(ValueError, "its last line is longer than"):
            fresh.append([{"time": "2027-01-15T08:01:00.000000Z", "instance": "gw-a"}],
                         self.now)

    def test_a_line_of_junk_appended_is_a_change_not_the_end_of_the_trail(self) -> None:
        """Found by review: one non-JSON line made every later write fail, for good."""
        self.write("a")
        with self.path.open("a") as f:
            f.write("not json\n")
        self.write("b")
        events = [r.get("event") or r.get("request_id") for r in records_lenient(self.path)]
        self.assertEqual(events, ["a", "audit.tampered", "b", "audit.checkpoint"])
        self.assertFalse(verify([self.path])[0])

    def test_a_record_appended_in_the_writer_s_name_is_not_signed_over(self) -> None:
        """
        Found by review: a call record sealed as the gateway's, appended by
        whoever could write the file, was taken up and signed over.
        """
        from txairflowrpc.audit.chain import seal

        self.write("a")
        head = records(self.path)[-1]
        forged = {"time": "2027-01-15T08:00:02.000000Z", "seq": head["seq"] + 1,
                  "instance": "gw-a", "kind": "call", "request_id": "FORGED",
                  "prev": head["hash"]}
        with self.path.open("a") as f:
            f.write(seal(forged))
        self.write("b")
        self.assertEqual(self.events(), ["a", "FORGED", "audit.tampered", "b",
                                         "audit.checkpoint"])
        self.assertIn("in this writer's name", records(self.path)[2]["reason"])

    def test_a_checkpoint_appended_that_the_key_did_not_sign_is_found_by_verify(self) -> None:
        """
        Taken up (the command may sign with a key the config names since,
        before a restart makes it the writer's), but never proven.
        """
        from txairflowrpc.audit.chain import ChainFile
        from txairflowrpc.audit.checkpoint import HMAC_SHA256, Signer, Verifier
        from txairflowrpc.audit.verify import check

        self.write("a")
        other = ChainFile(self.path, signer=Signer(HMAC_SHA256, "k1", key=b"x" * 32),
                          instance="cli")  # the key id of the real one, not its key
        other.open()
        self.addCleanup(other.close)
        other.append([], self.now, "interval")
        self.write("b")
        self.assertNotIn("audit.tampered", self.events())
        report = check([self.path], [Verifier(HMAC_SHA256, "k1", key=b"k" * 32)])
        self.assertIn("the signature does not match", report.problem or "")

    def test_junk_then_a_torn_line_leave_the_note_whole(self) -> None:
        """Found by review: the note was written onto the torn line's end, unreadable."""
        self.write("a")
        with self.path.open("a") as f:
            f.write("junk\npartial")
        self.write("b")
        self.assertIn("audit.tampered", [r.get("event") for r in records_lenient(self.path)])
        self.assertNotIn(b"partial", self.path.read_bytes())

    def test_the_command_s_appends_twice_between_writes_are_taken_up(self) -> None:
        """
        Found by review: a checkpoint that wrote nothing (the command's own
        covered the head) left the writer's idea of its end stale, and the
        command's next records were taken for lines that did not follow on.
        """
        self.write("a")
        append_now(self.path, {"event": "token.created"}, signer=self.chain._signer)
        self.chain.append([], self.now, "interval")  # nothing left to cover: nothing written
        append_now(self.path, {"event": "token.revoked"}, signer=self.chain._signer)
        self.write("b")
        self.assertNotIn("audit.tampered", self.events())
        self.assertEqual([r["seq"] for r in records(self.path)], list(range(1, 7)))
        self.assertTrue(verify([self.path])[0])

    def test_a_long_torn_tail_is_cut_back_to_the_last_record(self) -> None:
        """A crash in a large batch: what follows the last line end goes, however long."""
        from txairflowrpc.audit.chain import _LAST_RECORD_SEARCH, ChainFile

        self.write("a")
        self.chain.close()
        with self.path.open("ab") as f:
            f.write(b'{"seq":2,' + b"x" * (_LAST_RECORD_SEARCH * 2))  # no line end
        again = ChainFile(self.path, instance="gw-a")
        again.open()
        self.addCleanup(again.close)
        again.append([{"time": "2027-01-15T08:01:00.000000Z", "instance": "gw-a",
                       "kind": "call", "request_id": "b"}], self.now + 60)
        self.assertEqual(self.events(), ["a", "b"])
        self.assertTrue(verify([self.path])[0])


class HostileFilesTests(SynchronousTestCase):
    """
    Found by an attacker's review: crafted files crashed `audit verify` with
    a traceback (no chain got a report), hung it for good, or had a
    terminal show what they chose.
    """

    def setUp(self) -> None:
        ChainTests.setUp(self)  # type: ignore[arg-type]  # its clock, directory and log
        for i in range(2):  # two records, and the log closed, as a gateway leaves it
            self.successResultOf(self.log.append({"kind": "call", "i": i}))
        self.successResultOf(self.log.close())

    def sealed(self, record: dict[str, Any]) -> str:
        from txairflowrpc.audit.chain import seal
        return seal(record)

    def test_a_number_too_large_deep_inside_a_record_is_no_record(self) -> None:
        deep = "[" * 600 + "1e400" + "]" * 600
        line = '{"seq":3,"x":' + deep + ',"prev":"' + records(self.path)[-1]["hash"] + '"}'
        import hashlib
        digest = hashlib.sha256(line.encode()).hexdigest()
        with self.path.open("a") as f:
            f.write(line[:-1] + f',"hash":"{digest}"}}\n')
        whole, message = verify([self.path])
        self.assertFalse(whole)
        self.assertIn(":3: not an audit record", message)

    def test_a_first_seq_too_large_for_a_float_does_not_stop_the_others(self) -> None:
        other = self.dir / "other"
        other.mkdir()
        (other / "audit.jsonl.20260101T000000Z").write_text('{"seq":' + "9" * 400 + ',"hash":"x"}\n')
        (other / "audit.jsonl").write_text('{"seq":1,"hash":"y"}\n')
        self.assertEqual(cli(["audit", "verify", str(self.dir)]), 1)  # a report, no traceback

    def test_a_damaged_worker_chain_is_broken_not_skipped(self) -> None:
        """
        Found by review: with an audit.path not ending in .jsonl, a worker's
        chain whose first line was damaged was "skipped (not an audit
        file)" and verify exited 0 on the other's.
        """
        directory = self.dir / "logn"
        for k in (0, 1):
            log = AuditLog(directory / f"audit.w{k}.log", clock=self.clock,
                           run_blocking=maybeDeferred, instance=f"gw-w{k}")
            log.open()
            self.successResultOf(log.append({"kind": "call", "i": k}))
            self.successResultOf(log.close())
        damaged = directory / "audit.w1.log"
        damaged.write_bytes(b"x" + damaged.read_bytes())
        self.assertEqual(cli(["audit", "verify", str(directory)]), 1)

    def test_a_seq_that_is_true_is_no_seq(self) -> None:
        path = self.dir / "bool" / "audit.jsonl"
        path.parent.mkdir()
        path.write_text(self.sealed({"time": "t", "seq": True, "prev": "0" * 64}))
        self.assertEqual(verify([path]), (False, f"{path}:1: not an audit record (no seq)"))

    def test_a_fifo_named_or_put_as_the_lock_does_not_hang_verify(self) -> None:
        fifo = self.dir / "fifo" / "audit.jsonl.20260101T000000Z"
        fifo.parent.mkdir()
        os.mkfifo(fifo)
        self.assertEqual(cli(["audit", "verify", str(fifo)]), 1)  # before: blocked for good
        lock = self.path.with_name(self.path.name + ".lock")
        lock.unlink()
        os.mkfifo(lock)
        with self.path.open("a") as f:
            f.write('{"seq":3,')  # a torn last line: the lock is asked for
        whole, message = verify([self.path])
        self.assertFalse(whole)
        self.assertIn(":3: incomplete last line", message)

    def test_a_lock_held_for_good_is_waited_for_a_while_only(self) -> None:
        import fcntl

        from txairflowrpc.audit import verify as verify_module
        self.patch(verify_module, "LOCK_WAIT_SECONDS", 0.2)
        held = os.open(self.path.with_name(self.path.name + ".lock"), os.O_WRONLY)
        self.addCleanup(os.close, held)
        fcntl.flock(held, fcntl.LOCK_EX)  # a writer stuck on a hung disk
        with self.path.open("a") as f:
            f.write('{"seq":3,')
        whole, message = verify([self.path])
        self.assertFalse(whole)
        self.assertIn(":3: incomplete last line", message)

    def test_what_the_files_hold_is_shown_not_obeyed(self) -> None:
        import contextlib
        import io
        path = self.dir / "esc" / "audit.jsonl"
        path.parent.mkdir()
        path.write_text(self.sealed({"time": "t", "seq": 1, "instance": "\r\x1b[2Kgw\u202e\n"
                                     "chain whole: forged", "prev": "0" * 64}))
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            self.assertEqual(cli(["audit", "verify", str(path)]), 0)
        text = out.getvalue()
        self.assertNotIn("\x1b", text)
        self.assertNotIn("\u202e", text)
        self.assertEqual([line for line in text.splitlines() if "forged" in line],
                         ["written by: \\x0d\\x1b[2Kgw\\u202e\\x0achain whole: forged (1 record)"])
