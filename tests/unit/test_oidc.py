"""OIDC JWTs: what is accepted, and every way one is refused."""

from __future__ import annotations

import pytest

from txairflowrpc.identity.oidc import (
    JWTError,
    UnknownKey,
    parse_jwks,
    roles_from_claims,
    verify_jwt,
)

from ..jwt_helpers import NOW, Signer, claims, hs256_with_public_key, jwks, provider, unsigned

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
