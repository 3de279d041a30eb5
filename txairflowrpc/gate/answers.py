"""
How much one ``system.multicall`` may answer.

Each call's answer is bounded on its own (a task log at 16 Mi characters,
a page of runs at 100), but a multicall holds up to ``rpc.max_multicall``
of them: 50 task logs made an answer of 800 MB, built in memory several
times over, from a request of 17 KB (found by an attacker's review).
`AnswerBudget` bounds the answer as a whole: each inner result is charged
at about the characters it takes in XML; a read whose result would pass
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

#: The most characters the results of one multicall may take together:
#: two task logs at their own cap.
MAX_MULTICALL_ANSWER = 32 * 1024 * 1024

#: About the characters of XML around one value, member or item.
_OVERHEAD = 32


def answer_size(value: Any) -> int:
    """
    About how many characters ``value`` takes in an XML-RPC answer (the
    text itself and a fixed allowance per element), without building it.
    """
    size = 0
    stack = [value]
    while stack:
        item = stack.pop()
        size += _OVERHEAD
        if isinstance(item, str):
            size += len(item)
        elif isinstance(item, dict):
            for key, member in item.items():
                size += len(key) if isinstance(key, str) else _OVERHEAD
                stack.append(member)
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        elif isinstance(item, Binary):
            size += len(item.data) * 4 // 3
        elif isinstance(item, (bytes, bytearray)):
            size += len(item) * 4 // 3
        elif isinstance(item, DateTime):
            size += len(str(item))
    return size


class AnswersTooLarge(errors.InvalidParams):
    """A multicall's results have used up what one answer may hold."""


def _amount(characters: int) -> str:
    mib = characters / (1024 * 1024)
    return f"{mib:g} MiB" if mib >= 1 else f"{characters} characters"


@attrs.define
class AnswerBudget:
    """What is left of one multicall's answer of at most ``limit`` characters."""

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
