"""A provider's key set: fetched without blocking, refetched once per cooldown, kept when the provider is down."""

from __future__ import annotations

import json
from typing import Any

from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource

from txairflowrpc.identity.oidc import (
    JWKSet,
)

from ..jwt_helpers import NOW, Signer, claims, jwks, provider

RSA = Signer("RS256", "rsa1")


class JWKS(Resource):
    isLeaf = True

    def __init__(self, document: Any) -> None:
        super().__init__()
        self.document = document
        self.hits = 0
        self.status = 200

    def render_GET(self, request: Any) -> bytes:
        self.hits += 1
        request.setResponseCode(self.status)
        return json.dumps(self.document).encode()


class JWKSetTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.server = JWKS(jwks(RSA))
        self.keyset = JWKSet(provider(jwks_file=None, jwks_url="https://idp.test/jwks"),
                             http=StubTreq(self.server), clock=self.clock)

    def keys_for(self, token: str) -> dict[Any, Any]:
        return self.successResultOf(Deferred.fromCoroutine(self.keyset.key_for(token)))

    def test_unknown_kid_refetches_once_per_cooldown(self) -> None:
        self.assertIn("rsa1", self.keys_for(RSA.sign(claims())))
        self.assertEqual(self.server.hits, 1)
        rotated = Signer("RS256", "rsa2")
        self.server.document = jwks(RSA, rotated)
        self.keys_for(Signer("RS256", "bogus").sign(claims()))  # an unknown kid
        self.assertEqual(self.server.hits, 1)  # within the cooldown: no refetch
        self.clock.advance(300)
        self.assertIn("rsa2", self.keys_for(rotated.sign(claims())))
        self.assertEqual(self.server.hits, 2)
        for _ in range(10):
            self.keys_for(Signer("RS256", "junk").sign(claims()))
        self.assertEqual(self.server.hits, 2)

    def test_a_provider_that_is_down_leaves_the_last_good_keys(self) -> None:
        self.keys_for(RSA.sign(claims()))
        self.server.status = 500
        self.clock.advance(300)
        keys = self.keys_for(Signer("RS256", "other").sign(claims()))
        self.assertIn("rsa1", keys)
        self.assertEqual(self.server.hits, 2)

    def test_a_set_with_no_usable_key_leaves_the_last_good_keys(self) -> None:
        self.keys_for(RSA.sign(claims()))
        self.server.document = jwks(Signer("RS256", "weak", bits=1024))
        self.clock.advance(300)
        keys = self.keys_for(Signer("RS256", "other").sign(claims()))
        self.assertIn("rsa1", keys)
        self.assertEqual(self.server.hits, 2)

    def test_a_kid_that_is_not_a_string_is_left_to_the_verifier(self) -> None:
        # Before: a TypeError (a list is no dict key) and a traceback per request.
        self.keys_for(RSA.sign(claims()))
        self.clock.advance(300)
        for kid in (["rsa1"], {"a": 1}, 7):
            keys = self.keys_for(RSA.sign(claims(), header={"kid": kid}))
            self.assertIn("rsa1", keys)
        self.assertEqual(self.server.hits, 1)

    def test_keys_the_gateway_must_not_use_are_left_out(self) -> None:
        weak = Signer("RS256", "weak", bits=1024)
        self.server.document = {"keys": [RSA.jwk(), weak.jwk(), RSA.jwk(kid="enc", use="enc")]}
        keys = self.keys_for(weak.sign(claims()))
        self.assertIn("rsa1", keys)
        self.assertNotIn("weak", keys)
        self.assertNotIn("enc", keys)
