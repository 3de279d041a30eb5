"""
One gateway per audit chain.

Every instance keeps a chain of its own (README, "Running several
instances"): two gateways appending to one file would interleave their
records into one chain that neither can be verified as on its own, and
whose ``seq`` no longer counts one instance's records.  `claim` enforces it:
a gateway takes an exclusive lock on ``.<name>.owner`` beside its audit
file when it starts and holds it until it exits (the kernel lets it go if
the process dies, even by ``kill -9``, so a crash leaves nothing stale), and
a second gateway naming the same file stops at start, saying who holds it.

Why a lock rather than reading the instance of the file's last record: the
lock also catches two gateways started at the same moment on a new file,
never refuses a gateway that was renamed or upgraded (records of older
versions carry a random instance id), and tells a running holder from a
dead one.  The ``airflowrpc`` command's short appends take the chain's own
lock (`txairflowrpc.audit.chain`), not this one, so they are not refused.

Blocking (open, flock, a short write): call it at start, never on the reactor.
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

import attrs


def owner_path(audit_path: Path) -> Path:
    """The owner lock of the chain at ``audit_path``: a dot file beside it."""
    return audit_path.with_name(f".{audit_path.name}.owner")


@attrs.define(auto_exc=True, str=False)
class ChainInUse(Exception):
    """Another running gateway holds the chain; ``holder`` says which (as it wrote)."""

    path: Path
    holder: str

    def __str__(self) -> str:
        return (f"{self.path} is written by another running gateway ({self.holder}); "
                "give each instance its own audit.path")


class Claim:
    """A held claim on a chain; `release` lets it go (so does the process's end)."""

    def __init__(self, fd: int, instance: str) -> None:
        self._fd: int | None = fd
        self.instance = instance
        self.restate()

    def restate(self) -> None:
        """
        Write who holds the claim into the lock file, for a gateway that is
        refused to show; again once twistd has daemonized (the pid changed).
        The lock, not this text, is the claim.
        """
        if self._fd is not None:
            note = f"instance {self.instance}, pid {os.getpid()} on {socket.gethostname()}\n"
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, note.encode("utf-8"), 0)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def claim(audit_path: Path, instance: str) -> Claim:
    """
    Claim the chain at ``audit_path`` for ``instance`` (its directory must
    exist).  Raises `ChainInUse` if a running gateway holds it, OSError if
    the lock file cannot be opened.
    """
    path = owner_path(audit_path)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            holder = os.read(fd, 512).decode("utf-8", "replace").strip() or "unknown"
        finally:
            os.close(fd)
        raise ChainInUse(audit_path, holder) from None
    except BaseException:
        os.close(fd)
        raise
    return Claim(fd, instance)
