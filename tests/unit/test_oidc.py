"""OIDC JWTs: what is accepted, and every way one is refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource

from txairflowrpc.config import OIDCProvider
from txairflowrpc.identity.oidc import (
    JWKSet, JWTError, UnknownKey, parse_jwks, roles_from_claims, verify_jwt,
)

from ..jwt_helpers import Signer, hs256_with_public_key, jwks, unsigned

NOW = 1_800_000_000


def provider(**kw: Any) -> OIDCProvider:
    values = dict(
        name="corp", issuer="https://idp.example.com", audience="airflowrpc",
        algorithms=("RS256", "ES256"), jwks_file=Path("jwks.json"), jwks_url=None,
        jwks_refetch_cooldown_seconds=300, leeway_seconds=30, scope_claims=("scope", "groups"),
        claim_roles={"airflow-ci": ("ci",), "auditors": ("auditor",)},
    )
    values.update(kw)
    return OIDCProvider(**values)


def claims(**kw: Any) -> dict[str, Any]:
    base = {"iss": "https://idp.example.com", "aud": "airflowrpc", "sub": "alice",
            "exp": NOW + 600, "iat": NOW, "scope": "openid airflow-ci"}
    base.update(kw)
    return base


RSA = Signer("RS256", "rsa1")
EC = Signer("ES256", "ec1")
KEYS = parse_jwks(jwks(RSA, EC))


@pytest.mark.parametrize("signer", [RSA, EC])
def test_a_valid_token_is_accepted(signer: Signer) -> None:
    got = verify_jwt(signer.sign(claims()), provider(), KEYS, NOW)
    assert got["sub"] == "alice"


def test_audience_may_be_a_list_and_leeway_applies() -> None:
    token = RSA.sign(claims(aud=["other", "airflowrpc"], exp=NOW - 20))
    assert verify_jwt(token, provider(), KEYS, NOW)["sub"] == "alice"


@pytest.mark.parametrize("token,reason", [
    (RSA.sign(claims(), header={"kid": "ec1"}), "key type does not fit"),
    (RSA.sign(claims(iss="https://evil.example.com")), "wrong issuer"),
    (RSA.sign(claims(aud="someone-else")), "wrong audience"),
    (RSA.sign(claims(exp=NOW - 31)), "expired"),
    (RSA.sign({k: v for k, v in claims().items() if k != "exp"}), "no exp"),
    (RSA.sign(claims(nbf=NOW + 120)), "not valid yet"),
    (RSA.sign(claims(sub="")), "no sub"),
    (unsigned(claims(), kid="rsa1"), "algorithm none is not allowed"),
    (hs256_with_public_key(RSA, claims()), "algorithm HS256 is not allowed"),
    ("a.b", "malformed"),
])
def test_refusals(token: str, reason: str) -> None:
    with pytest.raises(JWTError, match=reason):
        verify_jwt(token, provider(), KEYS, NOW)


def test_a_tampered_payload_is_a_bad_signature() -> None:
    head, _, sig = RSA.sign(claims()).split(".")
    forged = RSA.sign(claims(sub="root")).split(".")[1]
    with pytest.raises(JWTError, match="bad signature"):
        verify_jwt(f"{head}.{forged}.{sig}", provider(), KEYS, NOW)


def test_a_token_signed_by_another_key_with_a_known_kid_is_refused() -> None:
    impostor = Signer("RS256", "rsa1")
    with pytest.raises(JWTError, match="bad signature"):
        verify_jwt(impostor.sign(claims()), provider(), KEYS, NOW)


def test_unknown_kid() -> None:
    with pytest.raises(UnknownKey):
        verify_jwt(Signer("RS256", "new").sign(claims()), provider(), KEYS, NOW)


def test_roles_come_from_the_configured_claims() -> None:
    assert roles_from_claims(provider(), claims(scope="a airflow-ci", groups=["auditors"])) == (
        "ci", "auditor")
    assert roles_from_claims(provider(), claims(scope="nothing")) == ()


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
