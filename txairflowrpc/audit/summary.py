"""
What a call's audit record says of its arguments: ids as they are, numbers
and booleans as given, free-form values (conf, notes, strings) as a digest
and size, and the values of sensitive keys never.

The method's `MethodSpec` says which parameters are ids and which members
of an options struct are kept as they are; nothing here knows a method.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Iterable

from ..core.ids import KINDS
from ..core.spec import Param


def digest_of(value: Any) -> dict[str, Any]:
    """A free-form value as its SHA-256 and size, never the value itself."""
    data = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode()
    return {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


MAX_TEXT = 250


def clip(value: Any) -> Any:
    """A caller's string cut to what a record keeps."""
    return value[:MAX_TEXT] if isinstance(value, str) else value


def is_sensitive(key: Any, sensitive: tuple[str, ...]) -> bool:
    """A key is sensitive if its name contains a configured word (any case)."""
    name = str(key).lower()
    return any(word in name for word in sensitive)


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


def summarize_args(
    params: Iterable[Param], args: tuple[Any, ...], sensitive: tuple[str, ...]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """
    The ids of a call, and a summary of its other arguments.

    Id parameters (and option members named like an id kind) are kept as
    they are, clipped; numbers and booleans too; an options struct (a
    parameter with ``keeps``) member by member, keeping the named members'
    strings; every other string, struct and array as a digest and size,
    computed after redaction so that a digest cannot be used to guess a
    secret.  Sensitive keys are redacted at any depth.
    """
    ids: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    for param, value in zip(params, args):
        if param.id is not None and isinstance(value, str):
            ids[param.id] = clip(value)
        elif isinstance(value, (bool, int, float)):
            summary[param.name] = value
        elif param.keeps is not None and isinstance(value, dict):
            summary[param.name] = {
                clip(str(k)): _member(k, v, param.keeps, sensitive) for k, v in value.items()
            }
            for kind in KINDS:
                if isinstance(value.get(kind), str):
                    ids[kind] = clip(value[kind])
        else:
            summary[param.name] = digest_of(redact(value, sensitive))
    return ids, summary


def _member(key: Any, value: Any, keeps: tuple[str, ...], sensitive: tuple[str, ...]) -> Any:
    if is_sensitive(key, sensitive):
        return "[redacted]"
    if isinstance(value, str) and (key in keeps or key in KINDS):
        return clip(value)
    if isinstance(value, (bool, int, float)):
        return value
    return digest_of(redact(value, sensitive))
