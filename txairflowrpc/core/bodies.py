"""
Reading an HTTP answer's body within a size: what the gateway asks of
services it does not own (STS, an OIDC provider's key set, its own workers)
is read up to a cap, never whole whatever its size.
"""

from __future__ import annotations

from treq.content import collect
from twisted.internet.defer import Deferred
from twisted.web.iweb import IResponse

__all__ = ["TooLarge", "read_capped"]


class TooLarge(Exception):
    """An answer's body was larger than its cap (its connection was closed)."""

    def __init__(self, cap: int) -> None:
        super().__init__(f"an answer larger than {cap} bytes")
        self.cap = cap


async def read_capped(response: IResponse, cap: int) -> bytes:
    """``response``'s body, or `TooLarge` as soon as more than ``cap`` bytes came."""
    chunks: list[bytes] = []
    size = 0

    def keep(data: bytes) -> None:
        nonlocal size
        size += len(data)
        if size > cap:
            raise TooLarge(cap)
        chunks.append(data)

    done: Deferred[None] = collect(response, keep)
    await done
    return b"".join(chunks)
