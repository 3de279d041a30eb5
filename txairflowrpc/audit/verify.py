"""
Checking the audit chain: every record's hash, and that each follows the
one before it, across the current and rotated files; and, given the keys,
every checkpoint's signature and what the last one covers.

Without a key, a chain can only be shown whole, not authentic: anyone who
can edit the files can re-hash them.  With a key (`check`'s
``verifiers``), a record is proven only if a checkpoint signed by that key
comes after it; records after the last checkpoint are reported as not
covered, and a chain with no checkpoint at all proves nothing.

What a key alone cannot show is a chain cut back to an earlier checkpoint,
or rewritten from one: that is what checkpoints kept off the host are for
(``shipped``): each must be found, unchanged, in the chain.

Several gateway instances keep a chain each (``audit.instance`` names the
writer in every record).  `find_chains` sorts files, and the files of
directories, into chains: the files sharing a name in one directory (the
current file and its rotated copies, ``audit.jsonl.<UTC time>``) are one
chain, checked on its own; `check_chains` checks each and hands each the
checkpoints kept off the host that its own instance signed.
"""

from __future__ import annotations

import collections
import errno
import fcntl
import hashlib
import json
import os
import stat
import time
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Sequence

import attrs

from .chain import (
    CLI_INSTANCE,
    GENESIS,
    ROTATED,
    ROTATED_SUFFIX,
    append_lock,
    dumps,
    gateway_chain,
    loads_strict,
    sealed_line,
)
from .checkpoint import CHECKPOINT, Verifier


@attrs.frozen
class CheckpointSeen:
    """A checkpoint found in the chain."""

    seq: int
    time: str
    hash: str
    alg: str
    key_id: str


@attrs.frozen
class IntentSeen:
    """An intent record (a change about to go to Airflow) with no outcome record after it."""

    seq: int
    time: str
    request_id: str
    method: str
    objects: str


@attrs.frozen
class ChainReport:
    """What `check` found; `status` and `lines` say it for a person."""

    #: The first thing that breaks the chain, or None if it is whole.
    problem: str | None
    records: int
    first_seq: int | None
    last_seq: int | None
    #: The chain starts after seq 1: it continues a chain from an earlier file.
    continues: bool
    checkpoints: tuple[CheckpointSeen, ...]
    #: Whether checkpoint signatures were checked (a key was given).
    signed: bool
    #: Checkpoints kept off the host found unchanged in these files.
    shipped_found: int = 0
    #: ... and those older than these files, so not compared.
    shipped_older: int = 0
    #: Intents with no outcome: the gateway stopped (or is still waiting for
    #: Airflow) between the two; what happened in Airflow is to be checked there.
    open_intents: tuple[IntentSeen, ...] = ()
    #: Who wrote the records: (instance, records), most first; the
    #: ``airflowrpc`` command's own records are under ``cli``.
    instances: tuple[tuple[str, int], ...] = ()

    @property
    def gateways(self) -> tuple[str, ...]:
        """The gateway instances that wrote to this chain (not the command), most first."""
        return tuple(name for name, _ in self.instances if name != CLI_INSTANCE)

    @property
    def last_checkpoint(self) -> CheckpointSeen | None:
        return self.checkpoints[-1] if self.checkpoints else None

    @property
    def uncovered(self) -> int:
        """Records after the last checkpoint (all of them if there is none)."""
        if self.last_seq is None:
            return 0
        last = self.last_checkpoint
        return self.last_seq - last.seq if last else self.records

    @property
    def whole(self) -> bool:
        return self.problem is None and self.records > 0

    @property
    def proven(self) -> bool:
        """Whole, every signature checked and good, and every record covered."""
        return self.whole and self.signed and bool(self.checkpoints) and not self.uncovered

    def lines(self) -> list[str]:
        """The report, a line per finding, the verdict first."""
        if self.problem is not None:
            return [f"BROKEN: {self.problem}"]
        if not self.records:
            return ["BROKEN: no records"]
        return self._verdict() + self._instance_lines()

    def _instance_lines(self) -> list[str]:
        if not self.instances:
            return []
        shown = [f"{name} ({n} record{'s' if n != 1 else ''})" for name, n in self.instances[:5]]
        more = len(self.instances) - 5
        return ["written by: " + ", ".join(shown) + (f", and {more} more" if more > 0 else "")]

    def _verdict(self) -> list[str]:
        note = (f" (continues a chain from an earlier file, from seq {self.first_seq})"
                if self.continues else "")
        out = [f"chain whole: {self.records} records, seq {self.first_seq}..{self.last_seq}{note}"]
        last = self.last_checkpoint
        if last is None:
            if self.signed:
                out.append("NO CHECKPOINT: no record is signed, so none is proven "
                           "(a rewritten or truncated chain would look the same)")
            return out + self._intent_lines()
        keys = ", ".join(sorted({f"{c.alg} key {c.key_id}" for c in self.checkpoints}))
        checked = "signatures good" if self.signed else "signatures NOT checked (no key given)"
        out.append(f"checkpoints: {len(self.checkpoints)} by {keys}, {checked}; "
                   f"last checkpoint: seq {last.seq} at {last.time}")
        if self.shipped_found or self.shipped_older:
            older = f" ({self.shipped_older} older than these files)" if self.shipped_older else ""
            out.append(f"checkpoints kept off the host: {self.shipped_found} found unchanged"
                       f"{older}")
        if self.uncovered:
            first = last.seq + 1
            out.append(f"NOT COVERED by a checkpoint: records {first}..{self.last_seq} "
                       f"({self.uncovered}) come after the last checkpoint; a change to them, "
                       "or records cut from the end, would not be noticed")
        elif self.signed:
            out.append("every record is covered by a checkpoint with a good signature")
        return out + self._intent_lines()

    def _intent_lines(self) -> list[str]:
        if not self.open_intents:
            return []
        out = [f"INTENTS WITHOUT OUTCOME: {len(self.open_intents)} change(s) were on their way "
               "to Airflow with no outcome recorded (a crash, or still in flight); look each "
               "up in Airflow (a run's note names its request id):"]
        out += [f"  seq {i.seq} at {i.time}: request {i.request_id}: {i.method} {i.objects}"
                for i in self.open_intents[:50]]
        if len(self.open_intents) > 50:
            out.append(f"  ... and {len(self.open_intents) - 50} more")
        return out


class _Broken(Exception):
    def __init__(self, problem: str) -> None:
        self.problem = problem


def check(
    paths: Iterable[Path], verifiers: Sequence[Verifier] = (),
    shipped: Sequence[dict[str, Any]] = (),
) -> ChainReport:
    """
    Check the chain across ``paths`` (oldest first); with ``verifiers``,
    every checkpoint's signature (a checkpoint signed by no key given is a
    problem); and that each of the ``shipped`` checkpoints (from
    `read_shipped`) is in the chain unchanged, unless it is older than
    these files.  Never raises for what is in the files.
    """
    keys = {(v.alg, v.key_id): v for v in verifiers}
    walk = _Walk(keys, {int(c["seq"]): c for c in shipped})
    problem = None
    try:
        for c in shipped:
            if keys:
                _check_signature(keys, dict(c), "checkpoint kept off the host")
        for path in paths:
            walk.file(path)
        walk.end()
    except _Broken as broken:
        problem = broken.problem
    return ChainReport(
        problem=problem, records=walk.count, first_seq=walk.first_seq, last_seq=walk.seq,
        continues=walk.continues, checkpoints=tuple(walk.checkpoints),
        signed=bool(verifiers), shipped_found=walk.shipped_found,
        shipped_older=walk.shipped_older, open_intents=tuple(walk.intents.values()),
        instances=tuple(walk.instances.most_common()),
    )


def read_shipped(path: Path) -> list[dict[str, Any]]:
    """
    The checkpoints in a file of records kept off the host (other records
    are skipped).  ValueError if it cannot be read, or a checkpoint in it
    is not intact (its own hash).
    """
    try:
        lines = path.read_bytes().splitlines()
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror}") from None
    found = []
    for lineno, raw in enumerate(lines, 1):
        try:
            record = loads_strict(raw)
        except (ValueError, RecursionError):
            raise ValueError(f"{path}:{lineno}: not a JSON record") from None
        if not isinstance(record, dict) or record.get("event") != CHECKPOINT:
            continue
        body = dumps({k: v for k, v in record.items() if k != "hash"})
        # Only intact: the file is the auditor's own copy, often written by jq.
        if (hashlib.sha256(body.encode("ascii")).hexdigest() != record.get("hash")
                or not isinstance(record.get("seq"), int)):
            raise ValueError(f"{path}:{lineno}: checkpoint is not intact (hash mismatch)")
        found.append(record)
    return found


def _check_signature(
    keys: dict[tuple[str, str], Verifier], record: dict[str, Any], what: str,
) -> None:
    """Raise `_Broken` unless ``record``'s signature is good by one of ``keys``."""
    seq = record.get("seq")
    record.pop("hash", None)
    signature = record.pop("signature", None)
    alg, key_id = str(record.get("alg")), str(record.get("key_id"))
    verifier = keys.get((alg, key_id))
    if verifier is None:
        raise _Broken(f"{what} seq {seq} is signed by {alg} key {key_id}, not by a key given")
    # What was signed: the record as sealed, without its signature and hash.
    if not isinstance(signature, str) or not verifier.verify(dumps(record), signature):
        raise _Broken(f"{what} seq {seq}: the signature does not match "
                      "(forged, or the record was re-written)")


class _Walk:
    """One pass over the chain, record by record."""

    def __init__(
        self, verifiers: dict[tuple[str, str], Verifier], shipped: dict[int, dict[str, Any]],
    ) -> None:
        self.verifiers = verifiers
        self.shipped = shipped
        self.shipped_found = 0
        self.shipped_older = 0
        self.prev: str | None = None
        self.seq: int | None = None
        self.first_seq: int | None = None
        self.continues = False
        self.count = 0
        self.checkpoints: list[CheckpointSeen] = []
        #: Intents waiting for their outcome, by (instance, request, multicall index).
        self.intents: dict[tuple[Any, ...], IntentSeen] = {}
        self.instances: collections.Counter[str] = collections.Counter()

    def file(self, path: Path) -> None:
        try:
            handle = _open_file(path)
        except OSError as e:
            raise _Broken(f"{path}: cannot read: {e.strerror}") from None
        with handle:
            lineno = 0
            start = 0  # where the line read next begins
            while raw := handle.readline(MAX_LINE + 1):
                if not raw.endswith(b"\n") and len(raw) <= MAX_LINE:
                    # A last line without its end: a crash tore it, or the
                    # gateway is writing it now.  Its lock tells them apart.
                    again = _reread_locked(path, handle, start)
                    if again is not None:
                        if not again:  # the write under way was taken back (it failed)
                            break
                        raw = again
                lineno += 1
                if len(raw) > MAX_LINE:  # read no further: no record is this long
                    raise _Broken(f"{path}:{lineno}: a line longer than {MAX_LINE} bytes "
                                  "is not an audit record")
                self.record(f"{path}:{lineno}", raw)
                start += len(raw)

    def record(self, where: str, raw: bytes) -> None:
        if not raw.endswith(b"\n"):
            raise _Broken(f"{where}: incomplete last line")
        try:
            record = loads_strict(raw)
            claimed = record.pop("hash")
            body = dumps(record)
        except (ValueError, KeyError, AttributeError, TypeError, RecursionError):
            raise _Broken(f"{where}: not an audit record") from None
        seq = record.get("seq")
        if type(seq) is not int:  # not a bool either (found by review: true was seq 1)
            raise _Broken(f"{where}: not an audit record (no seq)")
        actual = hashlib.sha256(body.encode("ascii")).hexdigest()
        if actual != claimed:
            raise _Broken(f"{where}: record seq {seq} was altered (hash mismatch)")
        if raw != sealed_line(body, claimed).encode("ascii"):
            # The same JSON, written otherwise: a key twice (readers that keep
            # the first would read another record), spaces, escapes, ...
            raise _Broken(f"{where}: record seq {seq} was altered (not written as sealed)")
        if self.seq is not None and seq != self.seq + 1:
            if seq > self.seq + 1:
                raise _Broken(f"{where}: records {self.seq + 1}..{seq - 1} are missing")
            raise _Broken(f"{where}: record seq {seq} is out of order after {self.seq}")
        if self.prev is not None and record.get("prev") != self.prev:
            raise _Broken(f"{where}: record seq {seq} does not follow the previous record")
        if self.prev is None:
            self.first_seq = seq
            self.continues = record.get("prev") != GENESIS or seq != 1
            if self.continues and record.get("event") != ROTATED:
                # Every file after the first of a chain begins with the record of
                # its rotation; one that does not was cut at its start.
                raise _Broken(f"{where}: the chain starts at record seq {seq}, which is not "
                              "the start of a file: the records before it were cut")
            if self.shipped:
                self.shipped_older = sum(1 for s in self.shipped if s < seq)
                kept = self.shipped.get(seq - 1)
                if kept is not None and kept.get("hash") != record.get("prev"):
                    raise _Broken(f"{where}: record seq {seq} does not follow the checkpoint "
                                  f"seq {seq - 1} kept off the host")
        if record.get("event") == CHECKPOINT:
            self.checkpoint(where, record, claimed)
        kind = record.get("kind")
        if kind in ("intent", "call"):
            key = (record.get("instance"), record.get("request_id"),
                   record.get("multicall_index"), record.get("method"))
            if kind == "call":
                self.intents.pop(key, None)
            else:
                objects = " ".join(f"{k}={record[k]}" for k in ("dag_id", "dag_run_id")
                                   if isinstance(record.get(k), str))
                self.intents[key] = IntentSeen(seq, str(record.get("time")),
                                               str(record.get("request_id")),
                                               str(record.get("method")), objects)
        kept = self.shipped.get(seq)
        if kept is not None:
            if kept.get("hash") != claimed:
                raise _Broken(f"{where}: record seq {seq} is not the checkpoint kept off the "
                              "host: the chain was rewritten up to here")
            self.shipped_found += 1
        self.prev, self.seq = claimed, seq
        self.count += 1
        self.instances[str(record.get("instance"))] += 1

    def checkpoint(self, where: str, record: dict[str, Any], hash_: str) -> None:
        seq = record["seq"]
        if record.get("head_seq") != seq - 1 or record.get("head_hash") != record.get("prev"):
            raise _Broken(f"{where}: checkpoint seq {seq} does not name the record before it")
        if not isinstance(record.get("signature"), str):
            raise _Broken(f"{where}: checkpoint seq {seq} has no signature")
        if self.verifiers:
            _check_signature(self.verifiers, dict(record), f"{where}: checkpoint")
        self.checkpoints.append(CheckpointSeen(
            seq, str(record.get("time")), hash_, str(record.get("alg")),
            str(record.get("key_id"))))

    def end(self) -> None:
        """After the last record: a checkpoint kept off the host beyond it was cut off."""
        beyond = [s for s in self.shipped if self.seq is None or s > self.seq]
        if beyond:
            end = "have no records" if self.seq is None else f"end at seq {self.seq}"
            raise _Broken(f"the files {end}, but a checkpoint kept off the host has seq "
                          f"{max(beyond)}: records were cut from the end")


def _open_regular(path: Path, flags: int = os.O_RDONLY) -> int:
    """
    A descriptor of ``path`` if it is a regular file; `OSError` otherwise.
    Opened without waiting (found by review: a FIFO named as an audit file,
    or put where the append lock is, hung ``audit verify`` for good).
    """
    fd = os.open(path, flags | os.O_NONBLOCK | os.O_NOCTTY)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_file(path: Path) -> BinaryIO:
    """`_open_regular`, as a binary file object."""
    return os.fdopen(_open_regular(path), "rb")


#: How long `_reread_locked` waits for the append lock (a writer holds it
#: for one batch, a few ms; one stuck on a hung disk would hold it for good).
LOCK_WAIT_SECONDS = 5.0


def _reread_locked(path: Path, handle: BinaryIO, start: int) -> bytes | None:
    """
    The line at ``start`` of ``path`` read again under a shared lock on the
    chain's append lock (`append_lock`), or None if there is no such lock
    to take.  The gateway holds that lock exclusively while it appends a
    batch, so a line it was writing when first read comes back whole; a
    line a crash tore stays as it was (and is reported), and one whose
    write failed is gone (the writer cuts it off before letting go).
    """
    try:
        fd = _open_regular(append_lock(path), os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        deadline = time.monotonic() + LOCK_WAIT_SECONDS
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return None  # its writer holds it still: the line stays torn
                time.sleep(0.05)
        handle.seek(start)
        return handle.readline(MAX_LINE + 1)
    finally:
        os.close(fd)  # releases the lock


def verify(paths: Iterable[Path]) -> tuple[bool, str]:
    """
    Check the chain across ``paths`` (oldest first), without keys.

    Returns (whole, message): the first broken or missing record, or how
    many records form a whole chain.
    """
    report = check(paths)
    return report.whole, report.lines()[0].removeprefix("BROKEN: ")


#: The longest line read: records are a few KB; past this a line is refused
#: unread, so that a file anyone could write cannot exhaust the verifier's memory.
MAX_LINE = 1024 * 1024

#: A rotated file's suffix: ``.<UTC time>``, and ``.<n>`` when two rotations
#: fell in one second (`txairflowrpc.audit.chain`).


@attrs.frozen
class ChainFiles:
    """The files of one chain, oldest first: a directory's current file and its rotated copies."""

    #: The current file's path (which may be among the files, or gone).
    name: Path
    files: tuple[Path, ...]


def _first_seq(path: Path) -> float:
    try:
        with _open_file(path) as f:
            seq = json.loads(f.readline(MAX_LINE))["seq"]
        return float(seq) if type(seq) is int else float("inf")
    except (OSError, ValueError, KeyError, TypeError, RecursionError, OverflowError):
        return float("inf")  # found by review: a 400-digit seq raised OverflowError


def _starts_a_record(path: Path) -> bool:
    try:
        with _open_file(path) as f:
            record = json.loads(f.readline(65536))
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(record, dict) and isinstance(record.get("seq"), int) and "hash" in record


def find_chains(
    paths: Iterable[Path], skip: Iterable[Path] = (),
) -> tuple[list[ChainFiles], list[Path]]:
    """
    The chains in ``paths``, and the files of directories that are not audit
    files.  A directory stands for every file under it (its subdirectories
    too; dot files, such as the digest key and the owner lock, and ``.lock``
    files left out, and so is ``skip``).  Files sharing a name in one
    directory, a rotation suffix aside, are one chain, ordered by their first
    seq (whatever order they were named in).  A file named on its own is
    always taken (but a ``.lock`` file); one found in a directory only if its
    name ends in ``.jsonl`` or it (or a file of its chain) starts with an
    audit record.
    """
    skipped = {p.resolve() for p in skip}
    named: dict[Path, set[Path]] = {}
    found: dict[Path, set[Path]] = {}
    for path in paths:
        if path.name.endswith(".lock") and path.is_file():
            continue  # the chain's append lock (``audit.jsonl*`` in a shell names it too)
        if not path.is_dir():
            named.setdefault(path.with_name(ROTATED_SUFFIX.sub("", path.name)), set()).add(path)
            continue
        for file in sorted(path.rglob("*")):
            relative = file.relative_to(path).parts
            if (any(part.startswith(".") for part in relative) or file.name.endswith(".lock")
                    or not file.is_file() or file.resolve() in skipped):
                continue
            found.setdefault(file.with_name(ROTATED_SUFFIX.sub("", file.name)), set()).add(file)
    others: dict[Path, set[Path]] = {}
    for name, files in found.items():
        if name in named or name.name.endswith(".jsonl") or any(map(_starts_a_record, files)):
            named.setdefault(name, set()).update(files)
        else:
            others[name] = files
    # A worker's chain beside the others of its gateway is one, whatever its
    # first line now says (found by review: with an audit.path not ending in
    # .jsonl, a worker's chain whose first line was damaged was "skipped (not
    # an audit file)", and verify exited 0).
    families = {gateway_chain(name) for name in named}
    for name in [n for n in others if gateway_chain(n) in families]:
        named[name] = others.pop(name)
    chains = [ChainFiles(name, tuple(sorted(files, key=lambda f: (_first_seq(f), str(f)))))
              for name, files in sorted(named.items())]
    return chains, sorted(f for files in others.values() for f in files)


@attrs.frozen
class ChainsReport:
    """What `check_chains` found: a report per chain, and what fits none."""

    chains: tuple[tuple[ChainFiles, ChainReport], ...]
    #: Instances that signed checkpoints kept off the host but wrote none of these chains.
    orphan_shipped: tuple[str, ...] = ()

    @staticmethod
    def label(files: ChainFiles, report: ChainReport) -> str:
        """The instance(s) that wrote a chain, for a person: ``gw-a``."""
        return "+".join(report.gateways[:3]) or "(no gateway records)"

    def shared_instances(self) -> dict[str, list[Path]]:
        """Instance names found in more than one chain (two hosts, one name; or a renamed path)."""
        seen: dict[str, list[Path]] = {}
        for files, report in self.chains:
            for name in report.gateways:
                seen.setdefault(name, []).append(files.name)
        return {name: where for name, where in seen.items() if len(where) > 1}

    def lines(self) -> list[str]:
        if len(self.chains) == 1 and not self.orphan_shipped:
            return self.chains[0][1].lines()
        out = []
        for files, report in self.chains:
            rotated = len([f for f in files.files if f != files.name])
            more = f" and {rotated} rotated file{'s' if rotated != 1 else ''}" if rotated else ""
            out.append(f"instance {self.label(files, report)}: {files.name}{more}")
            out += ["  " + line for line in report.lines()]
        for name in self.orphan_shipped:
            if name == CLI_INSTANCE:
                out.append("BROKEN: a checkpoint kept off the host that the airflowrpc command "
                           "signed is in no chain given: a chain was rewritten, or its files "
                           "are missing")
                continue
            out.append(f"BROKEN: checkpoints kept off the host were signed by instance {name}, "
                       "but no chain given was written by it: its files are missing")
        for name, where in sorted(self.shared_instances().items()):
            out.append(f"NOTE: instance {name} wrote more than one chain: "
                       + ", ".join(map(str, where)))
        broken = [self.label(f, r) for f, r in self.chains if not r.whole]
        out.append(f"{len(self.chains)} chains: {len(self.chains) - len(broken)} whole"
                   + (f", {len(broken)} BROKEN ({', '.join(broken)})" if broken else ""))
        return out


def check_chains(
    chains: Sequence[ChainFiles], verifiers: Sequence[Verifier] = (),
    shipped: Sequence[dict[str, Any]] = (),
) -> ChainsReport:
    """
    `check` each chain on its own, with the checkpoints in ``shipped`` that
    its own instances signed (a checkpoint names the instance that sealed
    it); checkpoints of an instance that wrote none of the chains are
    reported (`ChainsReport.orphan_shipped`): its files are missing.
    """
    reports = []
    taken: set[str] = set()
    placed: set[int] = set()  # the command's shipped checkpoints found in a chain, by id
    ours = [c for c in shipped if c.get("instance") == CLI_INSTANCE]
    for chain in chains:
        mine: list[dict[str, Any]] = []
        if shipped:
            seen = check(chain.files)
            writers = set(seen.gateways)
            mine = [c for c in shipped if str(c.get("instance")) in writers]
            taken |= writers
            # The command signs as "cli" on every host: its checkpoints go
            # to the chain that holds them (found by review: handed to every
            # chain with a record of the command, two hosts' collided by seq
            # and each chain was reported broken).
            held = {(c.seq, c.hash) for c in seen.checkpoints}
            for c in ours:
                if (c.get("seq"), c.get("hash")) in held:
                    mine.append(c)
                    placed.add(id(c))
        reports.append((chain, check(chain.files, verifiers, mine)))
    orphans = {str(c.get("instance")) for c in shipped
               if c.get("instance") != CLI_INSTANCE} - taken
    if any(id(c) not in placed for c in ours):
        orphans.add(CLI_INSTANCE)  # one in no chain given: a chain rewritten, or missing
    return ChainsReport(tuple(reports), tuple(sorted(orphans)))
