"""A provider's key set: fetched without blocking, refetched once per cooldown, kept when the provider is down."""

from __future__ import annotations

import json
from typing import Any

from treq.client import HTTPClient
from treq.testing import RequestTraversalAgent, StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from txairflowrpc.identity.oidc import MAX_JWKS_BYTES, JWKSet

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


class Stalling(Resource):
    """A key set URL that sends its headers and a little of the body, then nothing."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.hits = 0

    def render_GET(self, request: Any) -> Any:
        self.hits += 1
        request.setHeader(b"content-length", b"100000")
        request.write(b'{"keys": [')
        return NOT_DONE_YET


class Routes(Resource):
    """Several paths, each its own answer (a redirect, a large body, the set)."""

    isLeaf = True

    def __init__(self, answers: dict[bytes, tuple[int, dict[bytes, bytes], bytes]]) -> None:
        super().__init__()
        self.answers = answers
        self.asked: list[bytes] = []

    def render_GET(self, request: Any) -> bytes:
        self.asked.append(request.path)
        status, headers, body = self.answers[request.path]
        request.setResponseCode(status)
        for name, value in headers.items():
            request.setHeader(name, value)
        return body


class FetchBoundsTests(SynchronousTestCase):
    """Found by review: a fetch had a deadline for the headers only, no size, and followed redirects."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)

    def keyset(self, resource: Resource, url: str = "https://idp.test/jwks") -> tuple[JWKSet, Any]:
        http = RequestTraversalAgent(resource)
        keyset = JWKSet(provider(jwks_file=None, jwks_url=url), http=HTTPClient(http),
                        clock=self.clock)
        return keyset, http

    def test_a_body_that_stalls_ends_at_the_deadline_and_a_later_fetch_runs(self) -> None:
        server = Stalling()
        keyset, http = self.keyset(server)
        d = keyset.refresh()
        http.flush()
        self.assertNoResult(d)
        self.clock.advance(10)
        http.flush()
        self.successResultOf(d)  # ended: the last good keys (none yet) are kept
        self.assertEqual(len(keyset.keys), 0)
        self.clock.advance(300)  # the cooldown: the next token's unknown kid asks again
        d = Deferred.fromCoroutine(keyset.key_for(RSA.sign(claims())))
        http.flush()
        self.assertNoResult(d)
        self.assertEqual(server.hits, 2)

    def test_a_set_larger_than_the_cap_is_not_read(self) -> None:
        big = json.dumps({"keys": [RSA.jwk()], "pad": "x" * MAX_JWKS_BYTES}).encode()
        keyset, _ = self.keyset(Routes({b"/jwks": (200, {}, big)}))
        self.successResultOf(keyset.refresh())
        self.assertEqual(len(keyset.keys), 0)

    def test_a_redirect_is_not_followed(self) -> None:
        routes = Routes({
            b"/jwks": (302, {b"location": b"http://elsewhere.test/other"}, b""),
            b"/other": (200, {}, json.dumps(jwks(Signer("RS256", "other-host"))).encode())})
        keyset, _ = self.keyset(routes)
        self.successResultOf(keyset.refresh())
        self.assertEqual((routes.asked, len(keyset.keys)), ([b"/jwks"], 0))


class MaxAgeTests(SynchronousTestCase):
    """Found by review: a key the provider removed was trusted until a restart."""

    @staticmethod
    def fetched(*signers: Signer) -> tuple[Clock, JWKS, JWKSet]:
        """A clock at NOW, a provider serving ``signers``' keys, and its set (900 s max age)."""
        clock = Clock()
        clock.advance(NOW)
        server = JWKS(jwks(*signers))
        keyset = JWKSet(provider(jwks_file=None, jwks_url="https://idp.test/jwks",
                                 jwks_max_age_seconds=900),
                        http=StubTreq(server), clock=clock)
        return clock, server, keyset

    def test_a_set_older_than_its_max_age_is_fetched_again_before_it_verifies(self) -> None:
        old, new = Signer("RS256", "k-old"), Signer("RS256", "k-next")
        clock, server, keyset = self.fetched(old, new)

        def keys_for(token: str) -> Any:
            return self.successResultOf(Deferred.fromCoroutine(keyset.key_for(token)))

        self.assertIn("k-old", keys_for(old.sign(claims())))
        server.document = jwks(new)  # the provider drops k-old
        clock.advance(899)
        self.assertIn("k-old", keys_for(old.sign(claims())))  # known, and the set is young
        self.assertEqual(server.hits, 1)
        clock.advance(1)
        self.assertNotIn("k-old", keys_for(old.sign(claims())))
        self.assertEqual(server.hits, 2)
        # A reload keeps the set and its age: it is no refresh.
        again = JWKSet(keyset.provider, http=StubTreq(server), clock=clock)
        again.adopt(keyset)
        self.assertEqual(again._fetched_at, keyset._fetched_at)

    def test_a_verdict_is_good_while_the_set_it_used_is_young(self) -> None:
        """
        Found by review: a keep-alive connection signed in before the provider
        removed a key kept working with it (its verdict was reused until the
        token's own exp, which the key's holder chooses).  A verdict now
        lapses when the set it was reached with is due for a refresh.
        """
        clock, server, keyset = self.fetched(RSA)
        self.successResultOf(Deferred.fromCoroutine(keyset.key_for(RSA.sign(claims()))))
        self.assertEqual(keyset.verdicts_until(), NOW + 900)
        clock.advance(899)
        self.assertEqual(keyset.verdicts_until(), NOW + 900)
        clock.advance(1)
        server.status = 500  # due, and its refresh fails: one cooldown at a time
        self.successResultOf(Deferred.fromCoroutine(keyset.key_for(RSA.sign(claims()))))
        self.assertEqual(keyset.verdicts_until(), NOW + 900 + 300)
        # A set from a file changes only with a reload, which ends every verdict.
        fixed = JWKSet(provider(jwks=jwks(RSA)), http=None, clock=clock)
        self.assertIsNone(fixed.verdicts_until())

    def test_after_a_failed_refresh_a_known_key_does_not_wait_again(self) -> None:
        """Found by review: with the provider down, a token waited the whole timeout each cooldown."""
        clock, server, keyset = self.fetched(RSA)
        self.successResultOf(Deferred.fromCoroutine(keyset.key_for(RSA.sign(claims()))))
        clock.advance(900)
        server.status = 500  # the provider fails: the first refresh is waited for, and fails
        self.assertIn("rsa1", self.successResultOf(
            Deferred.fromCoroutine(keyset.key_for(RSA.sign(claims())))))
        self.assertEqual(server.hits, 2)
        keyset._http = HTTPClient(RequestTraversalAgent(Stalling()))  # now it hangs
        clock.advance(300)
        d = Deferred.fromCoroutine(keyset.key_for(RSA.sign(claims())))
        self.assertIn("rsa1", self.successResultOf(d))  # at once, with the keys it has
        self.assertTrue(keyset._fetching.running)  # the set is asked for behind it
        clock.advance(10)
        self.assertFalse(keyset._fetching.running)


class Held(Resource):
    """A key set URL that answers only when told to (a slow provider)."""

    isLeaf = True

    def __init__(self, document: Any) -> None:
        super().__init__()
        self.document = document
        self.waiting: list[Any] = []

    def render_GET(self, request: Any) -> Any:
        self.waiting.append(request)
        return NOT_DONE_YET

    def answer(self) -> None:
        for request in self.waiting:
            request.write(json.dumps(self.document).encode())
            request.finish()
        self.waiting = []


class FetchUnderWayTests(SynchronousTestCase):
    """
    Found by review: a token that came while a fetch was under way was
    refused at once, and a reload during a fetch dropped what it brought
    while keeping its cooldown (every OIDC caller refused for a cooldown
    when the reload came at start-up).
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.server = Held(jwks(RSA))
        self.http = RequestTraversalAgent(self.server)

    def keyset(self) -> JWKSet:
        return JWKSet(provider(jwks_file=None, jwks_url="https://idp.test/jwks"),
                      http=HTTPClient(self.http), clock=self.clock)

    def test_a_token_whose_key_a_fetch_under_way_brings_waits_for_it(self) -> None:
        keyset = self.keyset()
        keyset.refresh()  # at start-up
        self.http.flush()
        d = Deferred.fromCoroutine(keyset.key_for(RSA.sign(claims())))
        self.assertNoResult(d)  # not refused with an empty set: it waits
        self.server.answer()
        self.http.flush()
        self.assertIn("rsa1", self.successResultOf(d))
        self.assertEqual(keyset.fetches, 1)

    def test_a_reload_during_a_fetch_keeps_what_the_fetch_brings(self) -> None:
        old = self.keyset()
        old.refresh()
        self.http.flush()
        new = self.keyset()
        new.adopt(old)  # a reload while the fetch is under way
        d = Deferred.fromCoroutine(new.key_for(RSA.sign(claims())))
        self.assertNoResult(d)
        self.server.answer()
        self.http.flush()
        self.assertIn("rsa1", self.successResultOf(d))
        self.assertIn("rsa1", new.keys)  # well within the cooldown: no fetch needed
        self.assertEqual(len(self.server.waiting), 0)
        self.assertEqual(new.fetches, 1)
