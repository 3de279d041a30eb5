"""
Signed checkpoints: when the gateway seals them, where they are signed, and
what ``airflowrpc audit verify`` proves with them (and without them).
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import hmac
import io
import json
import os
from pathlib import Path
from typing import Any, Callable

import pytest
from twisted.internet.defer import maybeDeferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from txairflowrpc.audit import checkpoint
from txairflowrpc.audit.chain import dumps, seal
from txairflowrpc.audit.checkpoint import signer_from
from txairflowrpc.audit.log import RETRY_SECONDS, AuditLog
from txairflowrpc.audit.verify import verify
from txairflowrpc.config import AuditConfig, ConfigError
from txairflowrpc.devstack.pki import DevPKI
from txairflowrpc.service.checked import load_checked
from txairflowrpc.service.cli import main as cli
from txairflowrpc.service.tap import open_audit

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

    def cli(self, *argv: str) -> tuple[int, str]:
        """``airflowrpc ARGV...`` and what it printed."""
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            status = cli(list(argv))
        return status, out.getvalue()

    def verify(self, *argv: str) -> tuple[int, str]:
        return self.cli("audit", "verify", *argv)


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

    def test_a_file_must_follow_the_rotation_checkpoint_kept_off_the_host(self) -> None:
        log = self.log(rotate_bytes=1200)
        for i in range(8):
            self.clock.advance(1)
            self.successResultOf(log.append({"i": i}))
        self.successResultOf(log.close())
        rotated = sorted(self.dir.glob("audit.jsonl.*Z"))
        shipped = self.dir / "shipped.jsonl"
        shipped.write_text("".join(line for f in rotated for line in f.read_text().splitlines(True)
                                   if checkpoint.CHECKPOINT in line))
        status, out = self.verify("--shipped", str(shipped), str(self.path))
        self.assertEqual(status, 0, out)  # the newest file alone: it follows the copy
        # A file put in its place, re-hashed whole from a start of its own.
        out_lines, prev = [], "f" * 64
        for line in self.path.read_text().splitlines():
            record = json.loads(line)
            record.pop("hash")
            record["prev"] = prev
            sealed = seal(record)
            prev = json.loads(sealed)["hash"]
            out_lines.append(sealed)
        self.path.write_text("".join(out_lines))
        status, out = self.verify("--shipped", str(shipped), str(self.path))
        self.assertEqual(status, 1, out)
        self.assertIn("does not follow the checkpoint seq", out)

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

    def test_the_gateway_signs_with_the_key_its_config_names(self) -> None:
        cfg = AuditConfig(path=self.path, rotate_bytes=0, rotate_daily=False, fsync=False,
                          redact_keys=(), signing_key=self.key.secret, checkpoint_records=2)
        log = open_audit(cfg, self.clock, lambda f: maybeDeferred(f),
                         signer_from(cfg.signing_key, cfg.hmac_key_file))
        self.fill(log, 2)
        (cp,) = checkpoints(self.path)
        self.assertEqual(cp["key_id"], self.key.key_id)


class AppendNowTests(KeyedCase):
    def test_a_record_appended_with_a_signer_is_covered_at_once(self) -> None:
        """
        Found by review: the supervisor's worker.exited records (and the
        CLI's before them) were never covered, so `audit verify --public-key`
        said 3 (not proven) after any worker crash.
        """
        from txairflowrpc.audit.chain import append_now

        append_now(self.path, {"event": "token.created"})  # the CLI's, unsigned
        append_now(self.path, {"event": "worker.exited", "worker": 1}, instance="gw-a",
                   signer=self.signer)
        events = [r.get("event") for r in records(self.path)]
        self.assertEqual(events, ["token.created", "worker.exited", checkpoint.CHECKPOINT])
        self.assertEqual([c["head_seq"] for c in checkpoints(self.path)], [2])
        status, out = self.verify("--public-key", str(self.key.public), str(self.path))
        self.assertEqual(status, 0, out)


class ShippedAcrossHostsTests(KeyedCase):
    """
    Found by review: the command signs its checkpoints as "cli" on every
    host; verifying two hosts' chains with all their shipped checkpoints
    handed each chain the other's too, which collided by seq: both BROKEN.
    """

    def setUp(self) -> None:
        super().setUp()
        from txairflowrpc.audit.chain import append_now

        self.chains = []
        for name in ("a", "b"):
            log = AuditLog(self.dir / name / "audit.jsonl", clock=self.clock,
                           run_blocking=maybeDeferred, instance=f"gw-{name}",
                           signer=self.signer)
            log.open()
            self.fill(log, 2 if name == "a" else 5)
            self.successResultOf(log.close())
            path = self.dir / name / "audit.jsonl"
            append_now(path, {"event": "token.created"}, signer=self.signer)
            self.chains.append(path)
        self.shipped = self.dir / "shipped.jsonl"
        self.shipped.write_text("".join(
            line for path in self.chains for line in path.read_text().splitlines(True)
            if checkpoint.CHECKPOINT in line))

    def test_each_chain_gets_the_command_s_checkpoints_it_holds(self) -> None:
        status, out = self.verify("--public-key", str(self.key.public), "--shipped",
                                  str(self.shipped), *(str(p.parent) for p in self.chains))
        self.assertEqual(status, 0, out)
        self.assertIn("2 chains: 2 whole", out)

    def test_a_chain_left_out_leaves_the_command_s_checkpoint_unplaced(self) -> None:
        status, out = self.verify("--public-key", str(self.key.public), "--shipped",
                                  str(self.shipped), str(self.chains[0].parent))
        self.assertEqual(status, 1, out)
        self.assertIn("instance gw-b", out)
        self.assertIn("a checkpoint kept off the host that the airflowrpc command signed is in "
                      "no chain given", out)


class VerifyTests(KeyedCase):
    def setUp(self) -> None:
        super().setUp()
        log = self.log(checkpoint_records=4)
        self.fill(log, 6)
        self.successResultOf(log.close())
        # 1..4 calls, 5 checkpoint (records), 6..7 calls, 8 checkpoint (shutdown)
        self.lines = self.path.read_text().splitlines(keepends=True)
        self.pub = str(self.key.public)

    def test_a_whole_signed_chain_passes_and_names_its_last_checkpoint(self) -> None:
        status, out = self.verify("--public-key", self.pub, str(self.path))
        self.assertEqual(status, 0, out)
        last = records(self.path)[-1]
        self.assertIn(f"last checkpoint: seq 8 at {last['time']}", out)
        self.assertIn("every record is covered", out)

    def test_a_re_hashed_rewrite_passes_the_hashes_but_not_the_signatures(self) -> None:
        forged = rehash(self.lines, lambda r: {**r, "i": 9} if r.get("i") == 1 else r)
        self.path.write_text(forged)
        self.assertTrue(verify([self.path])[0])  # the hash chain alone cannot tell
        status, out = self.verify("--public-key", self.pub, str(self.path))
        self.assertEqual(status, 1, out)
        self.assertIn("checkpoint seq 5: the signature does not match", out)

    def test_a_rewrite_that_drops_the_checkpoints_proves_nothing(self) -> None:
        dropped = rehash(self.lines, lambda r: None if r.get("event") else r)
        self.path.write_text(dropped)
        status, out = self.verify("--public-key", self.pub, str(self.path))
        self.assertEqual(status, 3, out)
        self.assertIn("NO CHECKPOINT", out)

    def test_a_cut_tail_leaves_records_not_covered_by_a_checkpoint(self) -> None:
        self.path.write_text("".join(self.lines[:-1]))  # the shutdown checkpoint cut off
        status, out = self.verify("--public-key", self.pub, str(self.path))
        self.assertEqual(status, 3, out)
        self.assertIn("NOT COVERED by a checkpoint: records 6..7 (2)", out)
        self.assertIn("last checkpoint: seq 5 at", out)

    def test_a_chain_that_was_never_signed_fails_with_a_key(self) -> None:
        self.path.unlink()
        unsigned = audit_log(str(self.dir), self.clock)
        self.fill(unsigned, 2)
        status, out = self.verify("--public-key", self.pub, str(self.path))
        self.assertEqual(status, 3, out)
        self.assertIn("NO CHECKPOINT: no record is signed", out)

    def test_a_checkpoint_by_another_key_fails(self) -> None:
        other = checkpoint.keygen(self.dir / "other")
        status, out = self.verify("--public-key", str(other.public), str(self.path))
        self.assertEqual(status, 1, out)
        self.assertIn(f"signed by ed25519 key {self.key.key_id}, not by a key given", out)
        both = self.verify("--public-key", str(other.public), "--public-key", self.pub,
                           str(self.path))
        self.assertEqual(both[0], 0, both[1])  # the old and the new key, across a key change

    def test_without_a_key_the_chain_is_whole_but_its_signatures_unchecked(self) -> None:
        status, out = self.verify(str(self.path))
        self.assertEqual(status, 0, out)
        self.assertIn("signatures NOT checked", out)

    def test_checkpoints_kept_off_the_host_reveal_a_chain_cut_back_to_a_checkpoint(self) -> None:
        shipped = self.dir / "shipped.jsonl"
        shipped.write_text("".join(l for l in self.lines if checkpoint.CHECKPOINT in l))
        self.assertEqual(self.verify("--public-key", self.pub, "--shipped", str(shipped),
                                     str(self.path))[0], 0)
        self.path.write_text("".join(self.lines[:5]))  # cut back to checkpoint 5
        status, out = self.verify("--public-key", self.pub, str(self.path))
        self.assertEqual(status, 0, out)  # the key alone cannot tell ...
        status, out = self.verify("--public-key", self.pub, "--shipped", str(shipped),
                                  str(self.path))
        self.assertEqual(status, 1, out)  # ... the copy kept elsewhere can
        self.assertIn("the files end at seq 5, but a checkpoint kept off the host has seq 8", out)
        empty = self.dir / "empty.jsonl"
        empty.write_text(self.lines[0])  # no checkpoint in it: a mistake, not a pass
        self.assertEqual(self.verify("--shipped", str(empty), str(self.path))[0], 2)

    def test_a_checkpoint_kept_off_the_host_must_match_the_chain(self) -> None:
        shipped = self.dir / "shipped.jsonl"
        shipped.write_text(self.lines[4])  # checkpoint 5
        forged = rehash(self.lines, lambda r: {**r, "i": 8} if r.get("i") == 2 else r)
        self.path.write_text(forged)
        status, out = self.verify("--shipped", str(shipped), str(self.path))  # even without a key
        self.assertEqual(status, 1, out)
        self.assertIn(":5: record seq 5 is not the checkpoint kept off the host", out)


class HMACTests(KeyedCase):
    def test_a_shared_secret_signs_and_checks_with_a_constant_time_comparison(self) -> None:
        secret = checkpoint.hmac_keygen(self.dir / "team")
        log = audit_log(str(self.dir), self.clock, signer=checkpoint.hmac_signer(secret.secret))
        self.fill(log, 2)
        self.successResultOf(log.close())
        (cp,) = checkpoints(self.path)
        self.assertEqual((cp["alg"], cp["key_id"]), ("hmac-sha256", secret.key_id))
        compared: list[tuple[bytes, bytes]] = []
        real = hmac.compare_digest

        def spy(a: bytes, b: bytes) -> bool:
            compared.append((a, b))
            return real(a, b)

        self.patch(hmac, "compare_digest", spy)
        status, out = self.verify("--hmac-key", str(secret.secret), str(self.path))
        self.assertEqual(status, 0, out)
        self.assertEqual(len(compared), 1)
        other = checkpoint.hmac_keygen(self.dir / "other")
        status, out = self.verify("--hmac-key", str(other.secret), str(self.path))
        self.assertEqual(status, 1, out)

    def test_a_forged_hmac_signature_fails(self) -> None:
        secret = checkpoint.hmac_keygen(self.dir / "team")
        log = audit_log(str(self.dir), self.clock, signer=checkpoint.hmac_signer(secret.secret))
        self.fill(log, 2)
        self.successResultOf(log.close())
        lines = self.path.read_text().splitlines(keepends=True)
        wrong = hashlib.sha256(b"guess").digest()  # a MAC made without the secret
        forged = rehash(lines, lambda r: {**r, "signature": base64.b64encode(wrong).decode()}
                        if r.get("event") else r)
        self.path.write_text(forged)
        status, out = self.verify("--hmac-key", str(secret.secret), str(self.path))
        self.assertEqual(status, 1, out)
        self.assertIn("the signature does not match", out)


class KeygenTests(KeyedCase):
    def test_keygen_writes_a_private_key_for_its_owner_and_a_public_key_beside_it(self) -> None:
        prefix = self.dir / "gw"
        status, out = self.cli("audit", "keygen", "--out", str(prefix))
        self.assertEqual(status, 0)
        private, public = Path(f"{prefix}.key"), Path(f"{prefix}.pub")
        self.assertEqual(private.stat().st_mode & 0o777, 0o600)
        self.assertEqual(public.stat().st_mode & 0o777, 0o644)
        signer = checkpoint.signing_key(private)
        self.assertEqual(checkpoint.public_key(public).key_id, signer.key_id)
        secret_body = "".join(private.read_text().splitlines()[1:-1])
        self.assertNotIn(secret_body, out)
        self.assertIn(signer.key_id, out)
        before = private.read_bytes()
        self.assertEqual(self.cli("audit", "keygen", "--out", str(prefix))[0], 1)  # no overwrite
        self.assertEqual(private.read_bytes(), before)

    def test_keygen_hmac_writes_a_shared_secret_for_its_owner(self) -> None:
        prefix = self.dir / "team"
        status, out = self.cli("audit", "keygen", "--hmac", "--out", str(prefix))
        self.assertEqual(status, 0)
        secret = Path(f"{prefix}.hmac")
        self.assertEqual(secret.stat().st_mode & 0o777, 0o600)
        self.assertRegex(secret.read_text(), r"\A[0-9a-f]{64}\n\Z")
        self.assertNotIn(secret.read_text().strip(), out)

    def test_no_key_material_in_a_repr_or_an_error(self) -> None:
        pem = self.key.secret.read_text()
        self.assertNotIn("PRIVATE", repr(self.signer))
        bad = self.dir / "bad.key"
        bad.write_text(pem.replace("M", "x"))
        with self.assertRaises(ValueError) as e:
            checkpoint.signing_key(bad)
        self.assertNotIn(pem.splitlines()[1][:20].replace("M", "x"), str(e.exception))
        short = self.dir / "short.hmac"
        short.write_text("hunter2-is-not-a-key")
        with self.assertRaises(ValueError) as e:
            checkpoint.hmac_signer(short)
        self.assertNotIn("hunter2", str(e.exception))


# -- config: the new [audit] keys ------------------------------------------------

CORE = """
[listen]
port = 8443
[tls]
certificate = "tls/server.pem"
private_key = "tls/server.key"
client_ca = "tls/ca.pem"
[airflow]
base_url = "http://127.0.0.1:8080"
username = "gateway"
password_file = "pw"
[audit]
path = "audit/audit.jsonl"
"""


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPKI:
    return DevPKI.create(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def confdir(tmp_path: Path, pki: DevPKI) -> Path:
    (tmp_path / "tls").symlink_to(pki.directory)
    (tmp_path / "pw").write_text("pw\n")
    return tmp_path


def load_with(confdir: Path, extra: str) -> Any:
    """The [audit] section as twistd's start checks it (the key files included)."""
    path = confdir / "airflowrpc.toml"
    path.write_text(CORE + extra)
    return load_checked(path).config.audit


def test_checkpoints_are_off_without_a_key_and_their_defaults(confdir: Path) -> None:
    audit = load_with(confdir, "")
    assert not audit.checkpoints
    assert (audit.signing_key, audit.hmac_key_file) == (None, None)
    assert (audit.checkpoint_records, audit.checkpoint_seconds) == (1000, 10.0)


def test_a_signing_key_turns_them_on(confdir: Path) -> None:
    key = checkpoint.keygen(confdir / "signing")
    audit = load_with(confdir, 'signing_key = "signing.key"\ncheckpoint_records = 50\n'
                               "checkpoint_seconds = 2.5\n")
    assert audit.checkpoints and audit.signing_key == key.secret
    assert (audit.checkpoint_records, audit.checkpoint_seconds) == (50, 2.5)
    secret = checkpoint.hmac_keygen(confdir / "team")
    audit = load_with(confdir, 'hmac_key_file = "team.hmac"\n')
    assert audit.checkpoints and audit.hmac_key_file == secret.secret


@pytest.mark.parametrize("extra, key, problem", [
    ('signing_key = "signing.key"\nhmac_key_file = "team.hmac"\n', "audit.hmac_key_file",
     "not both"),
    ('signing_key = "signing.pub"\n', "audit.signing_key", "not an unencrypted Ed25519"),
    ('signing_key = "open.key"\n', "audit.signing_key", "open to others (mode 0644)"),
    ('signing_key = "missing.key"\n', "audit.signing_key", "cannot read"),
    ('hmac_key_file = "short.hmac"\n', "audit.hmac_key_file", "at least 32 bytes"),
    ("checkpoint_records = -1\n", "audit.checkpoint_records", "at least 0"),
])
def test_a_bad_key_stops_the_start_with_one_line(
    confdir: Path, extra: str, key: str, problem: str,
) -> None:
    made = checkpoint.keygen(confdir / "signing")
    checkpoint.hmac_keygen(confdir / "team")
    (confdir / "open.key").write_bytes(made.secret.read_bytes())
    os.chmod(confdir / "open.key", 0o644)
    (confdir / "short.hmac").write_text("hunter2\n")
    os.chmod(confdir / "short.hmac", 0o600)
    os.chmod(made.public, 0o600)  # a public key is no secret, but readable only here
    with pytest.raises(ConfigError) as e:
        load_with(confdir, extra)
    assert e.value.key == key and problem in e.value.problem
    assert "hunter2" not in str(e.value) and "BEGIN" not in str(e.value)
