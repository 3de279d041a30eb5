"""
Signed checkpoints: when the gateway seals them, where they are signed, and
what ``airflowrpc audit verify`` proves with them (and without them).
"""

from __future__ import annotations

import errno
import json
from pathlib import Path
from typing import Any, Callable

from twisted.internet.defer import maybeDeferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from txairflowrpc.audit import checkpoint
from txairflowrpc.audit.chain import dumps, seal
from txairflowrpc.audit.log import RETRY_SECONDS, AuditLog

from .helpers import audit_log
from .test_audit import HeldWrites, records, scratch

START = 1_800_000_000  # 2027-01-15T08:00:00Z


def checkpoints(path: Path) -> list[dict[str, Any]]:
    return [r for r in records(path) if r.get("event") == checkpoint.CHECKPOINT]


def signed_body(record: dict[str, Any]) -> str:
    """What a checkpoint's signature covers: the record without signature and hash."""
    return dumps({k: v for k, v in record.items() if k not in ("signature", "hash")})


def rehash(lines: list[str], change: Callable[[dict[str, Any]], dict[str, Any] | None]) -> str:
    """
    What an attacker without the key can do: change records (None drops
    one), renumber and re-hash the whole chain so that every hash matches.
    """
    out, prev, seq = [], "0" * 64, 0
    for line in lines:
        record = json.loads(line)
        record.pop("hash")
        changed = change(record)
        if changed is None:
            continue
        seq += 1
        changed.update(seq=seq, prev=prev)
        if changed.get("event") == checkpoint.CHECKPOINT:
            changed.update(head_seq=seq - 1, head_hash=prev)
        sealed = seal(changed)
        prev = sealed[-67:-3]
        out.append(sealed)
    return "".join(out)


class KeyedCase(SynchronousTestCase):
    """A scratch directory with an Ed25519 key pair in it, and a Clock."""

    def setUp(self) -> None:
        self.dir = scratch(self)
        self.clock = Clock()
        self.clock.advance(START)
        self.key = checkpoint.keygen(self.dir / "signing")
        self.signer = checkpoint.signing_key(self.key.secret)
        self.path = self.dir / "audit.jsonl"

    def log(self, **kw: Any) -> AuditLog:
        return audit_log(str(self.dir), self.clock, signer=self.signer, **kw)

    def fill(self, log: AuditLog, n: int) -> None:
        for i in range(n):
            self.successResultOf(log.append({"kind": "call", "i": i}))

    def verify(self, *argv: str) -> tuple[int, str]:
        """Whether the files (after ``--public-key``) form a whole chain."""
        from txairflowrpc.audit.verify import verify

        paths = sorted((Path(p) for p in argv[2:]), key=lambda p: records(p)[0]["seq"])
        whole, message = verify(paths)
        return (0 if whole else 1), message


class WhenCheckpointsAreSealedTests(KeyedCase):
    def test_every_n_records_a_checkpoint_signs_the_chain_head(self) -> None:
        log = self.log(checkpoint_records=3)
        self.fill(log, 5)
        recs = records(self.path)
        self.assertEqual([r.get("event", r.get("i")) for r in recs],
                         [0, 1, 2, checkpoint.CHECKPOINT, 3, 4])
        cp = recs[3]
        self.assertEqual((cp["seq"], cp["head_seq"], cp["head_hash"], cp["prev"]),
                         (4, 3, recs[2]["hash"], recs[2]["hash"]))
        self.assertEqual((cp["reason"], cp["alg"], cp["key_id"], cp["instance"]),
                         ("records", "ed25519", self.key.key_id, "test"))
        verifier = checkpoint.public_key(self.key.public)
        self.assertTrue(verifier.verify(signed_body(cp), cp["signature"]))
        self.assertFalse(verifier.verify(signed_body({**cp, "head_seq": 2}), cp["signature"]))

    def test_t_seconds_after_a_record_is_left_uncovered_a_checkpoint_follows(self) -> None:
        log = self.log(checkpoint_seconds=10)
        self.fill(log, 1)
        self.clock.advance(5)
        self.fill(log, 1)  # the first uncovered record starts the count
        self.clock.advance(4.9)
        self.assertEqual(checkpoints(self.path), [])
        self.clock.advance(0.1)
        (cp,) = checkpoints(self.path)
        self.assertEqual((cp["reason"], cp["head_seq"]), ("interval", 2))
        self.clock.advance(300)  # nothing new: no checkpoint of nothing
        self.assertEqual(len(checkpoints(self.path)), 1)
        self.fill(log, 1)
        self.clock.advance(10)
        self.assertEqual([c["head_seq"] for c in checkpoints(self.path)], [2, 4])

    def test_shutdown_seals_a_checkpoint_after_the_last_record(self) -> None:
        log = self.log()
        self.fill(log, 2)
        log.append({"event": "service.stop"})
        self.successResultOf(log.close())
        last = records(self.path)[-1]
        self.assertEqual((last["event"], last["reason"], last["head_seq"]),
                         (checkpoint.CHECKPOINT, "shutdown", 3))

    def test_a_close_with_everything_covered_adds_no_checkpoint(self) -> None:
        log = self.log(checkpoint_records=1)
        self.fill(log, 2)
        self.successResultOf(log.close())
        self.assertEqual([r.get("reason") for r in records(self.path)],
                         [None, "records", None, "records"])

    def test_every_rotated_file_ends_signed_and_within_its_size(self) -> None:
        log = self.log(rotate_bytes=2500, checkpoint_records=4)
        for i in range(40):
            self.clock.advance(1)
            self.successResultOf(log.append({"kind": "call", "i": i}))
        self.successResultOf(log.close())
        files = sorted(f for f in self.dir.glob("audit.jsonl*") if not f.name.endswith(".lock"))
        self.assertGreater(len(files), 3)
        for f in files:
            self.assertLessEqual(f.stat().st_size, 2500, f.name)
            self.assertEqual(records(f)[-1]["event"], checkpoint.CHECKPOINT, f.name)
        status, out = self.verify("--public-key", str(self.key.public), *map(str, files))
        self.assertEqual(status, 0, out)
        calls = sorted(r["i"] for f in files for r in records(f) if "i" in r)
        self.assertEqual(calls, list(range(40)))

    def test_a_rotation_checkpoint_closes_a_file_with_uncovered_records(self) -> None:
        log = self.log(rotate_bytes=1200)  # no checkpoint by count or time
        for i in range(8):
            self.clock.advance(1)
            self.successResultOf(log.append({"i": i}))
        (rotated, *_) = sorted(self.dir.glob("audit.jsonl.*Z"))
        last = records(rotated)[-1]
        self.assertEqual((last["event"], last["reason"]), (checkpoint.CHECKPOINT, "rotation"))
        status, out = self.verify("--public-key", str(self.key.public), str(rotated))
        self.assertEqual(status, 0, out)  # a rotated file can be checked on its own

    def test_signing_happens_in_the_write_off_the_reactor(self) -> None:
        calls: list[str] = []
        real = self.signer

        class Spy:
            alg, key_id, signature_length = real.alg, real.key_id, real.signature_length

            def sign(self, body: str) -> str:
                calls.append(body)
                return real.sign(body)

        held = HeldWrites()
        log = AuditLog(self.path, clock=self.clock, run_blocking=held, instance="t",
                       signer=Spy(), checkpoint_seconds=10)  # type: ignore[arg-type]
        log.open()
        d = log.append({"i": 0})
        held.release()
        self.successResultOf(d)
        self.clock.advance(10)  # the checkpoint is due, on the reactor ...
        self.assertEqual(calls, [])  # ... but nothing is signed there
        held.release()  # the write, on the audit thread in production
        self.assertEqual(len(calls), 1)
        self.assertEqual(checkpoints(self.path)[0]["reason"], "interval")

    def test_a_flush_does_not_forget_a_checkpoint_that_is_owed(self) -> None:
        held = HeldWrites()
        log = AuditLog(self.path, clock=self.clock, run_blocking=held, instance="t",
                       signer=self.signer, checkpoint_seconds=10)
        log.open()
        d = log.append({"i": 0})
        flushed = log.flush()  # a write is under way: the flush waits behind it
        held.release()
        self.successResultOf(d)
        self.successResultOf(flushed)
        self.clock.advance(10)
        held.release()
        self.assertEqual([c["reason"] for c in checkpoints(self.path)], ["interval"])

    def test_a_checkpoint_that_could_not_be_written_is_written_on_recovery(self) -> None:
        held = HeldWrites()
        log = AuditLog(self.path, clock=self.clock, run_blocking=held, instance="t",
                       signer=self.signer, checkpoint_seconds=10)
        log.open()
        d = log.append({"i": 0})
        held.release()
        self.successResultOf(d)
        held.fail_with = OSError(errno.ENOSPC, "No space left on device")
        self.clock.advance(10)
        held.release()
        self.assertEqual(log.failed, "No space left on device")
        held.fail_with = None
        self.clock.advance(RETRY_SECONDS)
        held.release()
        self.assertIsNone(log.failed)
        self.assertEqual([c["reason"] for c in checkpoints(self.path)], ["interval"])

    def test_a_chain_left_without_a_checkpoint_is_covered_at_the_first_write(self) -> None:
        unsigned = audit_log(str(self.dir), self.clock)  # a crash, or before a key was set
        self.fill(unsigned, 3)
        self.successResultOf(unsigned.close())
        log = self.log(checkpoint_records=1000)
        self.fill(log, 2)
        self.assertEqual([(c["head_seq"], c["reason"]) for c in checkpoints(self.path)],
                         [(4, "resume")])

    def test_without_a_key_there_are_no_checkpoints(self) -> None:
        log = audit_log(str(self.dir), self.clock, checkpoint_records=1, checkpoint_seconds=1)
        self.fill(log, 3)
        self.clock.advance(5)
        self.successResultOf(log.close())
        self.assertEqual(checkpoints(self.path), [])
