"""
What XML 1.0 cannot carry at all, and what XML-RPC never needs, for the
gateway's reader and writer and the client's checks alike.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

__all__ = ["DECLARATIONS", "NOT_IN_XML", "declaration_handlers"]

#: The characters XML 1.0 has no place for, not even as a character
#: reference: the C0 controls but tab, line feed and carriage return, U+FFFE,
#: U+FFFF and lone surrogates (JSON's ``"\ud83d"``, or an undecodable byte of
#: a command line).  No parser takes a document holding one.
NOT_IN_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")

#: What XML-RPC never needs, by the expat handler that meets it, and what it
#: is called: a DOCTYPE may declare entities that expand a small document
#: into gigabytes.  The gateway's reader of calls and the client's of
#: answers refuse them all.
DECLARATIONS = (
    ("StartDoctypeDeclHandler", "a DOCTYPE"),
    ("EntityDeclHandler", "an entity declaration"),
    ("UnparsedEntityDeclHandler", "an entity declaration"),
    ("ExternalEntityRefHandler", "an external reference"),
    ("NotationDeclHandler", "a notation declaration"),
)


def declaration_handlers(
    forbid: Callable[[str], Callable[..., Any]],
) -> tuple[tuple[str, Callable[..., Any]], ...]:
    """
    For each of `DECLARATIONS`, its expat handler's name and ``forbid(what)``
    (a handler that raises): made once, set on each parser.
    """
    return tuple((name, forbid(what)) for name, what in DECLARATIONS)
