"""
Reading an HTTP answer's body within a size: what the gateway reads from
services it does not own (Airflow, STS, an OIDC provider's key set, its own
workers) is read up to a cap, never whole whatever its size, and a read
that is cancelled (a deadline) closes its connection instead of reading on.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import PartialDownloadError, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IResponse

__all__ = ["TooLarge", "read_capped"]


class TooLarge(Exception):
    """An answer's body was larger than its cap (its connection was closed)."""

    def __init__(self, cap: int) -> None:
        super().__init__(f"an answer larger than {cap} bytes")
        self.cap = cap


class EncodedAnswer(Exception):
    """
    An answer in a ``Content-Encoding`` other than identity, which was not
    asked for: refused before its body is read (`upstream.transport.IdentityOnly`).
    """

    def __init__(self, encoding: str) -> None:
        super().__init__(f"the answer is encoded ({encoding[:40]}), which was not asked for")
        self.encoding = encoding


def _abandon(transport: Any) -> None:
    """Close the connection a response body comes on (or stop it, where that is all there is)."""
    stop = getattr(transport, "abortConnection", None) or getattr(transport, "stopProducing", None)
    if stop is not None:
        stop()


class _Capped(Protocol):
    """
    What Twisted's `readBody` does (the body whole, `PartialDownloadError`
    when it may be cut short, the failure otherwise), but past ``cap`` bytes
    the rest is abandoned (the connection closed) and the read fails with
    `TooLarge`: a broken or hostile server cannot make the gateway hold an
    answer of any size.
    """

    def __init__(self, response: IResponse, cap: int) -> None:
        self._response = response
        self._cap = cap
        self._parts: list[bytes] = []
        self._size = 0
        self._over = False
        self.done: Deferred[bytes] = Deferred(lambda _: _abandon(self.transport))

    def dataReceived(self, data: bytes) -> None:
        if self._over:
            return
        self._size += len(data)
        if self._size > self._cap:
            self.refuse()
            return
        self._parts.append(data)

    def refuse(self) -> None:
        """Read no more of it: it is larger than the cap."""
        self._over, self._parts = True, []
        _abandon(self.transport)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        if self.done.called:
            # Cancelled (a deadline): the connection's end that follows is not news.
            return
        # isinstance, not reason.check: the first check of a Failure works out
        # the qualified names of its type's bases, about 3 µs of every answer.
        if self._over:
            self.done.errback(TooLarge(self._cap))
        elif isinstance(reason.value, ResponseDone):
            self.done.callback(b"".join(self._parts))
        elif isinstance(reason.value, PotentialDataLoss):
            self.done.errback(PartialDownloadError(
                self._response.code, self._response.phrase, b"".join(self._parts)))
        else:
            self.done.errback(reason)


def read_capped(response: IResponse, cap: int) -> Deferred[bytes]:
    """
    ``response``'s body; `TooLarge` past ``cap`` bytes (at once if its
    length says so up front: not a byte of it is read).  Cancelling the
    Deferred closes the connection.
    """
    protocol = _Capped(response, cap)
    response.deliverBody(protocol)
    length = getattr(response, "length", None)
    if isinstance(length, int) and length > cap:
        protocol.refuse()
    return protocol.done
