"""Reading Airflow's answers: whole, and never larger than MAX_ANSWER_BYTES."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.python.failure import Failure
from twisted.web.client import PartialDownloadError, ResponseDone
from twisted.web.http import PotentialDataLoss

from txairflowrpc.core import errors
from txairflowrpc.upstream.transport import Reply, _read


class BodyTransport:
    def __init__(self) -> None:
        self.aborted = 0

    def abortConnection(self) -> None:
        self.aborted += 1


class FakeResponse:
    code, phrase = 200, b"OK"

    def __init__(self, length: Any = None) -> None:
        self.length = length
        self.transport = BodyTransport()
        self.protocol: Any = None

    def deliverBody(self, protocol: Any) -> None:
        self.protocol = protocol
        protocol.makeConnection(self.transport)

    def send(self, *chunks: bytes, end: Any = ResponseDone) -> None:
        for chunk in chunks:
            self.protocol.dataReceived(chunk)
        self.protocol.connectionLost(Failure(end()))


def outcome(d: Any) -> Any:
    got: list[Any] = []
    d.addBoth(got.append)
    assert got, "not fired"
    return got[0]


def test_an_answer_within_the_limit_is_read_whole() -> None:
    response = FakeResponse()
    d = _read(response, limit=10)
    response.send(b"12345", b"67890")
    assert outcome(d) == Reply(200, b"1234567890")
    assert response.transport.aborted == 0


def test_past_the_limit_the_rest_is_abandoned() -> None:
    response = FakeResponse()
    d = _read(response, limit=10)
    response.send(b"123456", b"7890A", b"more that is never kept")
    failure = outcome(d)
    assert failure.check(errors.UpstreamError)
    assert "larger than 10 bytes" in failure.value.message
    assert response.transport.aborted == 1


def test_a_length_said_up_front_is_refused_before_a_byte() -> None:
    response = FakeResponse(length=11)
    d = _read(response, limit=10)
    assert response.transport.aborted == 1
    response.send(end=ResponseDone)
    assert outcome(d).check(errors.UpstreamError)


def test_an_answer_that_may_be_cut_short_is_a_partial_download() -> None:
    response = FakeResponse()
    d = _read(response, limit=10)
    response.send(b"123", end=PotentialDataLoss)
    failure = outcome(d)
    assert failure.check(PartialDownloadError) and failure.value.response == b"123"


def test_cancelling_closes_the_connection() -> None:
    response = FakeResponse()
    d = _read(response, limit=10)
    d.cancel()
    assert response.transport.aborted == 1
    response.send(end=ResponseDone)  # what the connection's end then says is not heard
    d.addErrback(lambda f: None)


@pytest.mark.parametrize("limit", [0, 1])
def test_even_an_empty_body_fits_any_limit(limit: int) -> None:
    response = FakeResponse(length=0)
    d = _read(response, limit=limit)
    response.send()
    assert outcome(d) == Reply(200, b"")
