"""Making what the gateway writes to disk survive a crash."""

from __future__ import annotations

import os
from pathlib import Path


def sync_directory(directory: Path) -> None:
    """
    fsync ``directory``, so that a file just created, renamed or replaced in
    it survives a crash: the file's own fsync does not make its name durable,
    and ``os.replace`` is atomic but not durable until the directory is synced.
    """
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
