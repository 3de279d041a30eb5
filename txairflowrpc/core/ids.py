"""
Validation of the identifiers that end up in Airflow URLs.

Airflow allows ``[A-Za-z0-9_.-]`` in DAG and task ids (``KEY_REGEX``) and
``[A-Za-z0-9_.~:+-]`` in run ids (the default
``[scheduler] allowed_run_id_pattern``), at most 250 characters.  The
gateway accepts only the ASCII subset of those and never an id made only of
dots, so that no id can climb out of its URL path segment.  Validation
happens before any request is built; `path` then percent-encodes each
segment as a second line of defence.
"""

from __future__ import annotations

import re
from urllib.parse import quote

MAX_ID_LENGTH = 250

_KEY_CHARS = r"[A-Za-z0-9_.-]"
_ONLY_DOTS = re.compile(r"\.+\Z")

#: What each kind of id may contain: the characters, and in words for fault messages.
_RULES = {
    "dag_id": (_KEY_CHARS, "letters, digits, '_', '.' and '-'"),
    "task_id": (_KEY_CHARS, "letters, digits, '_', '.' and '-'"),
    "dag_run_id": (r"[A-Za-z0-9_.~:+-]", "letters, digits and '_.~:+-'"),
}


#: The kinds of id there are.
KINDS = tuple(_RULES)
#: Only the characters each kind may contain.
_ALLOWED = {kind: re.compile(chars + r"+\Z") for kind, (chars, _) in _RULES.items()}
#: A valid id of each kind, in one match: the rules together.
_VALID = {kind: re.compile(rf"(?!\.+\Z){chars}{{1,{MAX_ID_LENGTH}}}\Z")
          for kind, (chars, _) in _RULES.items()}
#: What `quote` leaves as it is (with ``safe=""``).
_UNQUOTED = re.compile(r"[A-Za-z0-9_.~-]*\Z")


def id_problem(kind: str, value: object) -> str | None:
    """
    Say what is wrong with ``value`` as an id of ``kind``, or None if it is valid.

    ``kind`` is ``"dag_id"``, ``"task_id"`` or ``"dag_run_id"``.  The answer
    never echoes the value: it may be hostile or huge.
    """
    if type(value) is str and _VALID[kind].match(value):
        return None  # the common case, in one match; what follows says what is wrong
    if not isinstance(value, str):
        return f"{kind} must be a string"
    if not value:
        return f"{kind} must not be empty"
    if len(value) > MAX_ID_LENGTH:
        return f"{kind} is longer than {MAX_ID_LENGTH} characters"
    if not _ALLOWED[kind].match(value) or _ONLY_DOTS.match(value):
        return f"{kind} may contain only {_RULES[kind][1]}"
    return None


def path(*segments: str) -> str:
    """
    Join already validated ids and fixed names into a URL path.

    Each segment is percent-encoded on its own, so even a segment that got
    past validation cannot add a ``/`` to the path.
    """
    return "/".join(s if _UNQUOTED.match(s) else quote(s, safe="") for s in segments)


def mapped(map_index: int | None) -> str:
    """`` (map_index N)``: one instance of a mapped task, after its task id in a message."""
    return "" if map_index is None else f" (map_index {map_index})"
