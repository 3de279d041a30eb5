"""
Reading an HTTP answer's body within a size: what the gateway asks of
services it does not own (STS, an OIDC provider's key set, its own workers)
is read up to a cap, never whole whatever its size, and a read that is
cancelled (a deadline) closes its connection instead of reading on.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IResponse

__all__ = ["TooLarge", "read_capped"]


class TooLarge(Exception):
    """An answer's body was larger than its cap (its connection was closed)."""

    def __init__(self, cap: int) -> None:
        super().__init__(f"an answer larger than {cap} bytes")
        self.cap = cap


class _Capped(Protocol):
    def __init__(self, cap: int) -> None:
        self._cap = cap
        self._chunks: list[bytes] = []
        self._size = 0
        self.done: Deferred[bytes] = Deferred(self._stop)

    def _stop(self, _: Deferred[bytes]) -> None:
        if self.transport is not None:
            self.transport.stopProducing()

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        self._size += len(data)
        if self._size > self._cap:
            self.done.errback(TooLarge(self._cap))
            self._stop(self.done)
            return
        self._chunks.append(data)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        if self.done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self._chunks))
        else:
            self.done.errback(reason)


def read_capped(response: IResponse, cap: int) -> Deferred[bytes]:
    """
    ``response``'s body; `TooLarge` as soon as more than ``cap`` bytes came.
    Cancelling the Deferred stops the read and closes the connection.
    """
    protocol = _Capped(cap)
    response.deliverBody(protocol)
    return protocol.done
