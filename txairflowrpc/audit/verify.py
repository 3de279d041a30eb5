"""
Checking the audit chain: every record's hash, and that each follows the
one before it, across the current and rotated files.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable

from .chain import GENESIS, dumps


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
                actual = hashlib.sha256(dumps(record).encode("ascii")).hexdigest()
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
