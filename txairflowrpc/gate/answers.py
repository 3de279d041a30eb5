"""
How much one ``system.multicall`` may answer.

Each call's answer is bounded on its own (a task log at 16 Mi characters,
a page of runs at 100), but a multicall holds up to ``rpc.max_multicall``
of them: 50 task logs made an answer of 800 MB, built in memory several
times over, from a request of 17 KB (found by an attacker's review).
`AnswerBudget` bounds the answer as a whole: each inner result is charged
at about the bytes it takes in the answer (its text in UTF-8, escaped as
XML, and a fixed allowance per element); a read whose result would pass
what is left is a fault in its place (the caller asks for it on its own),
and once nothing is left the calls after it are refused before they run.
A change is charged but never turned into a fault: it happened, and its
answer says so.
"""

from __future__ import annotations

from typing import Any
from xmlrpc.client import Binary, DateTime

import attrs

from ..core import errors
from ..upstream.client import MAX_LOG_CHARACTERS

#: The most bytes the results of one multicall may take together: two task
#: logs of plain text at their own cap, with their first line and elements.
MAX_MULTICALL_ANSWER = 2 * (MAX_LOG_CHARACTERS + 64 * 1024)

#: About the bytes of XML around one value (``<value><string>...``), and
#: around a struct member's name (``<member><name>...``).
_OVERHEAD = 40
_MEMBER = 30


def _text_size(text: str) -> int:
    """The bytes of ``text`` in the answer: UTF-8, with ``&<>`` and CR escaped."""
    size = len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
    return (size + 4 * text.count("&") + 3 * text.count("<") + 3 * text.count(">")
            + 4 * text.count("\r"))


def answer_size(value: Any) -> int:
    """
    About how many bytes ``value`` takes in an XML-RPC answer (its text as
    written, see `_text_size`, and a fixed allowance per element), without
    building it.
    """
    size = 0
    stack = [value]
    while stack:
        item = stack.pop()
        size += _OVERHEAD
        if isinstance(item, str):
            size += _text_size(item)
        elif isinstance(item, dict):
            for key, member in item.items():
                size += _MEMBER + (_text_size(key) if isinstance(key, str) else _OVERHEAD)
                stack.append(member)
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        elif isinstance(item, int):  # past 32 bits it is written as a string
            size += len(str(item))
        elif isinstance(item, Binary):
            size += len(item.data) * 4 // 3
        elif isinstance(item, (bytes, bytearray)):
            size += len(item) * 4 // 3
        elif isinstance(item, DateTime):
            size += len(str(item))
    return size


class AnswersTooLarge(errors.InvalidParams):
    """A multicall's results have used up what one answer may hold."""


def _amount(size: int) -> str:
    mib = size / (1024 * 1024)
    return f"{mib:g} MiB" if mib >= 1 else f"{size} bytes"


@attrs.define
class AnswerBudget:
    """What is left of one multicall's answer of at most ``limit`` bytes."""

    limit: int = MAX_MULTICALL_ANSWER
    left: int = attrs.field()

    @left.default
    def _all(self) -> int:
        return self.limit

    @property
    def spent(self) -> bool:
        return self.left <= 0

    def refusal(self) -> AnswersTooLarge:
        """Why a call is not run: the answer is full."""
        return AnswersTooLarge(
            f"this multicall's results reached {_amount(self.limit)}, all one answer may "
            "hold; make the calls after it on their own or in another multicall")

    def charge(self, result: Any, changes: bool) -> Any:
        """
        ``result``, charged; `AnswersTooLarge` instead if it is a read's
        and does not fit what is left.
        """
        size = answer_size(result)
        if size > self.left and not changes:
            raise AnswersTooLarge(
                f"this result would take the multicall's answer past {_amount(self.limit)}; "
                "make this call on its own")
        self.left -= size
        return result
