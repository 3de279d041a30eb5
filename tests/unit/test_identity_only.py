"""
`IdentityOnly`: treq's client (key sets, STS) asks for answers as they are,
and one that is encoded anyway is refused before its body is read.
"""

from __future__ import annotations

import gzip
import json
from typing import Any

from treq.client import HTTPClient
from treq.testing import RequestTraversalAgent
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import EncodingResourceWrapper, Resource
from twisted.web.server import GzipEncoderFactory

from txairflowrpc.core.bodies import EncodedAnswer
from txairflowrpc.identity.oidc import JWKSet
from txairflowrpc.upstream.transport import IdentityOnly

from ..jwt_helpers import NOW, Signer, jwks, provider

#: 10 MB of zeros: about 10 KB gzipped.
BOMB = gzip.compress(b"\0" * 10_000_000)


class Answers(Resource):
    """Records what each request asked for; answers ``body`` (gzipped on its own if ``bomb``)."""

    isLeaf = True

    def __init__(self, body: bytes = b'{"ok": true}', bomb: bool = False) -> None:
        super().__init__()
        self.body, self.bomb = body, bomb
        self.accept_encoding: list[Any] = []

    def render_GET(self, request: Any) -> bytes:
        self.accept_encoding.append(request.getHeader(b"accept-encoding"))
        if self.bomb:  # a server that encodes whatever it was asked
            request.setHeader(b"Content-Encoding", b"gzip")
            return BOMB
        return self.body


def client(resource: Resource) -> HTTPClient:
    return HTTPClient(IdentityOnly(RequestTraversalAgent(resource)))


class IdentityOnlyTests(SynchronousTestCase):
    def test_no_encoding_is_asked_for_so_a_willing_server_sends_none(self) -> None:
        """treq's own client asks for gzip; twisted.web's gzip wrapper would then send it."""
        answers = Answers()
        willing = EncodingResourceWrapper(answers, [GzipEncoderFactory()])
        response = self.successResultOf(client(willing).get("https://idp.test/jwks"))
        self.assertEqual(answers.accept_encoding, [None])  # so the wrapper did not encode
        self.assertEqual(self.successResultOf(response.content()), b'{"ok": true}')

    def test_an_encoded_answer_is_refused_unread(self) -> None:
        """
        Found by an attacker's review: a 200 KB gzip answer from STS became
        200 MB of the gateway's memory before the 64 kB cap refused it.
        """
        failure = self.failureResultOf(client(Answers(bomb=True)).get("https://sts.test/"),
                                       EncodedAnswer)
        self.assertEqual(failure.value.encoding, "gzip")

    def test_a_key_set_served_encoded_is_not_taken(self) -> None:
        clock = Clock()
        clock.advance(NOW)
        keyset = JWKSet(provider(jwks_file=None, jwks_url="https://idp.test/jwks"),
                        http=client(Answers(bomb=True)), clock=clock)
        self.successResultOf(keyset.refresh())
        self.assertEqual(len(keyset.keys), 0)  # refused: the last good set (none) is kept
        served = Answers(body=json.dumps(jwks(Signer("RS256", "k1"))).encode())
        keyset._http = client(served)
        clock.advance(400)
        self.successResultOf(keyset.refresh())
        self.assertEqual(len(keyset.keys), 1)
