"""
What a command writes: results as JSON on stdout, everything else on stderr.

Every stderr line passes through `Console.note`, which replaces the
credential in use (and anything shaped like a gateway token or a bearer
header) with ``[redacted]``: the messages are built not to hold one, and
this is the second line of defence, for text the client does not write
itself (a task log, a fault string, a traceback).
"""

from __future__ import annotations

import codecs
import re
import sys
from collections.abc import Iterable
from typing import IO, Any

from ..core.shown import LAYOUT_CONTROLS
from .values import defused, to_json

_SHAPES = re.compile(r"(arpc_)[A-Za-z0-9_-]{8,}|(Bearer\s+)\S+|(Basic\s+)[A-Za-z0-9+/=]{8,}"
                     r"|()eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")


_CONTROL = re.compile(f"[\\x00-\\x1f\\x7f-\\x9f{LAYOUT_CONTROLS}]")


def redact_shapes(text: str) -> str:
    """``text`` with anything shaped like a token, JWT or credential header redacted."""
    return _SHAPES.sub(lambda m: next(g for g in m.groups() if g is not None) + "[redacted]",
                       text)


def _is_utf(stream: IO[str]) -> bool:
    """Whether ``stream`` takes any text: no encoding of its own (a StringIO), or a UTF one."""
    encoding = getattr(stream, "encoding", None)
    if not encoding:
        return True
    try:
        return codecs.lookup(encoding).name.startswith("utf")
    except LookupError:
        return False


class Console:
    """stdout for results, stderr for notes; ``secrets`` are never written."""

    def __init__(
        self, out: IO[str] | None = None, err: IO[str] | None = None,
        secrets: Iterable[str | None] = (),
    ) -> None:
        self._out = out if out is not None else sys.stdout
        self._err = err if err is not None else sys.stderr
        self._secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def add_secret(self, secret: str | None) -> None:
        if secret and len(secret) >= 4 and secret not in self._secrets:
            self._secrets = sorted([*self._secrets, secret], key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "[redacted]")
        return redact_shapes(text)

    def result(self, value: Any) -> None:
        """
        ``value`` as one line of JSON on stdout, which no encoding of
        stdout can make fail: UTF-8 bytes (JSON's own encoding, what jq
        reads) to its binary buffer when it has one, whatever the locale or
        PYTHONIOENCODING says (cp1252 on a Windows runner, ascii); to a
        text-only stream that is not UTF-8, ASCII with ``\\uXXXX`` escapes.
        A run that succeeded must not exit 70 over an emoji in its conf.
        """
        buffer = getattr(self._out, "buffer", None)
        if buffer is not None:
            self._out.flush()  # what was written as text goes first
            buffer.write((to_json(value) + "\n").encode("utf-8"))
            buffer.flush()
            return
        self._out.write(to_json(value, ascii_only=not _is_utf(self._out)) + "\n")
        self._out.flush()

    def note(self, text: str) -> None:
        """
        One ``airflowrpc: ...`` line on stderr: a line break or control
        character in ``text`` (a fault string echoing a caller's value) is
        a space, so no note can start a line a CI runner obeys, and a
        runner command it holds anywhere is inert (`values.defused`).
        """
        self._err.write(defused(self.redact(f"airflowrpc: {_CONTROL.sub(' ', text)}")) + "\n")
        self._err.flush()

    def lines(self, lines: Iterable[str]) -> None:
        """
        Lines on stderr as they are (a log tail, made safe to show by its
        maker), redacted, a runner command in them inert (`values.defused`).
        """
        for line in lines:
            self._err.write(defused(self.redact(line)) + "\n")
        self._err.flush()
