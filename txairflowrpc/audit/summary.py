"""
What a call's audit record says of its arguments: ids as they are, numbers
and booleans as given, free-form values (conf, notes, strings) as a keyed
digest and size, and the values of sensitive keys never.

The method's `MethodSpec` says which parameters are ids and which members
of an options struct are kept as they are; nothing here knows a method.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable
from xmlrpc.client import DateTime

import attrs

from ..core.files import sync_directory
from .chain import strict_json
from ..core.ids import KINDS, id_problem
from ..core.spec import Param
from ..core.timefmt import parse_xmlrpc_time


#: Bytes of a digest key.
DIGEST_KEY_BYTES = 32


def load_digest_key(path: Path) -> bytes:
    """
    The key of the trail's digests, from ``path``; made (random, mode 0600,
    its directory synced) if the file does not exist yet.  Blocking: at
    start-up only.  `ValueError` if it exists and cannot be used.
    """
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        key = secrets.token_bytes(DIGEST_KEY_BYTES)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, key)
                os.fsync(fd)
            finally:
                os.close(fd)
            sync_directory(path.parent)
        except OSError as e:  # found by review: a 37-line traceback (a read-only /etc)
            raise ValueError(f"cannot create {path}: {e.strerror}") from None
        return key
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror}") from None
    if len(key) < DIGEST_KEY_BYTES:
        raise ValueError(f"{path} holds fewer than {DIGEST_KEY_BYTES} bytes")
    return key


MAX_TEXT = 250
#: Most members of an options struct a record lists one by one; one with
#: more (no method's options have nearly so many: the call is refused) is
#: recorded as a digest, like any other struct, so that its record stays small.
MAX_OPTION_MEMBERS = 32


def clip(value: Any) -> Any:
    """A caller's string cut to what a record keeps."""
    return value[:MAX_TEXT] if isinstance(value, str) else value


def _word(text: str) -> str:
    return text.lower().replace("-", "").replace("_", "")


def is_sensitive(key: Any, sensitive: tuple[str, ...]) -> bool:
    """
    Whether a key's name holds one of the ``sensitive`` words: any case,
    as a substring, ``-`` and ``_`` ignored (``db_pass``, ``API-Key``).
    """
    name = _word(str(key))
    return any(_word(word) in name for word in sensitive)


def redact(value: Any, sensitive: tuple[str, ...]) -> Any:
    """``value`` with the values of sensitive keys (at any depth) replaced."""
    if isinstance(value, dict):
        return {
            k: "[redacted]" if is_sensitive(k, sensitive) else redact(v, sensitive)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact(v, sensitive) for v in value]
    return value


#: A kept option member's string as it is recorded: ids, dates and choices
#: are one word of these; anything else (free text a caller put there) is
#: recorded as a digest like any free text.
_WORDLIKE = re.compile(r"[A-Za-z0-9_.:+~-]{1,250}")


def _is_date(text: str) -> bool:
    """
    Whether ``text`` is an ISO-8601 date or time, or XML-RPC's dateTime
    form (``20260131T00:00:00``), so no free text.
    """
    try:
        datetime.fromisoformat(text)
    except ValueError:
        return parse_xmlrpc_time(text) is not None
    return True


@attrs.frozen
class Summarizer:
    """
    What a call's record says of its arguments.

    :param sensitive: words naming keys whose values are redacted.
    :param key: the digest key: free-form values are recorded as an
        HMAC-SHA256 under it, so that nobody who reads the trail without the
        key can test a guess (a PIN in a conf) against a digest.
    """

    sensitive: tuple[str, ...]
    key: bytes = attrs.field(repr=False)

    def digest(self, value: Any) -> dict[str, Any]:
        """A free-form value as its keyed digest and size, never the value itself."""
        data = json.dumps(strict_json(value), sort_keys=True, separators=(",", ":"),
                          default=str).encode()
        return {"hmac_sha256": hmac.new(self.key, data, hashlib.sha256).hexdigest(),
                "size": len(data)}

    def summarize(
        self, params: Iterable[Param], args: tuple[Any, ...]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """
        The ids of a call, and a summary of its other arguments.

        Id parameters (and the option members an options struct keeps that
        are named like an id kind, never over a parameter's id) are kept as
        they are when valid ids.  A string refused as an id is no id of
        anything, so it stays out of the id fields: a parameter's is kept,
        clipped, as ``{"invalid_id": ...}`` among the arguments (what an
        attack asked for is worth reading; the trail is ASCII-escaped JSON),
        an option member's is a digest like free text.  Numbers and booleans
        are kept as they are (non-finite ones as strings), and so is a
        ``date`` parameter's string or dateTime when it is one; an
        options struct (a parameter with ``keeps``) member by member,
        keeping the named members' strings when each is one word
        (`_WORDLIKE`); every other string, struct and array as a keyed
        digest and size, computed after redaction.  Sensitive keys are
        redacted at any depth.
        """
        ids: dict[str, Any] = {}
        summary: dict[str, Any] = {}
        promoted: dict[str, Any] = {}
        for param, value in zip(params, args):
            if param.id is not None and id_problem(param.id, value) is None:
                ids[param.id] = value
            elif param.id is not None and isinstance(value, str):
                summary[param.name] = {"invalid_id": clip(value)}
            elif isinstance(value, (bool, int, float)):
                summary[param.name] = strict_json(value)
            elif param.date and isinstance(value, (str, DateTime)) and _is_date(str(value)):
                summary[param.name] = clip(str(value))  # a dateTime's text as sent
            elif (param.keeps is not None and isinstance(value, dict)
                  and len(value) <= MAX_OPTION_MEMBERS):
                summary[param.name] = {
                    clip(str(k)): self._member(k, v, param.keeps) for k, v in value.items()
                }
                for kind in param.option_ids:  # only an id the options are for
                    if id_problem(kind, value.get(kind)) is None:
                        promoted[kind] = value[kind]
            else:
                summary[param.name] = self.digest(redact(value, self.sensitive))
        for kind, value in promoted.items():  # never over an id a parameter gave
            ids.setdefault(kind, value)
        return ids, summary

    def _member(self, key: Any, value: Any, keeps: tuple[str, ...]) -> Any:
        if is_sensitive(key, self.sensitive):
            return "[redacted]"
        if isinstance(value, str) and (
                id_problem(key, value) is None if key in KINDS
                else key in keeps and _WORDLIKE.fullmatch(value)):
            return clip(value)
        if isinstance(value, (bool, int, float)):
            return strict_json(value)
        return self.digest(redact(value, self.sensitive))
