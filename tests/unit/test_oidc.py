"""OIDC JWTs: what is accepted, and every way one is refused (cleanly, and saying nothing of it)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from txairflowrpc.identity.oidc import (
    MAX_KEYS_TRIED,
    JWTError,
    UnknownKey,
    parse_jwks,
    roles_from_claims,
    unverified_issuer,
    verify_jwt,
)

from ..jwt_helpers import (
    NOW,
    Signer,
    b64,
    claims,
    hs256_with_public_key,
    jwks,
    provider,
    unsigned,
)

RSA = Signer("RS256", "rsa1")
EC = Signer("ES256", "ec1")
ED = Signer("EdDSA", "ed1")
PS = Signer("PS256", "ps1")
#: Keys the provider publishes that the gateway must not use.
WEAK = Signer("RS256", "weak", bits=1024)
EC_LABELLED_RS256 = Signer("ES256", "ec-rs")
RSA_FOR_RS256_ONLY = Signer("PS256", "rs-only")
FOR_ENCRYPTION = Signer("RS256", "enc")
NO_VERIFY_OP = Signer("RS256", "no-verify")
VERIFY_OP = Signer("RS256", "verify-op")
KEYS = parse_jwks({"keys": [
    RSA.jwk(), EC.jwk(), ED.jwk(), PS.jwk(), WEAK.jwk(),
    EC_LABELLED_RS256.jwk(alg="RS256"),
    RSA_FOR_RS256_ONLY.jwk(alg="RS256"),
    FOR_ENCRYPTION.jwk(use="enc"),
    NO_VERIFY_OP.jwk(use=None, key_ops=["encrypt"]),
    VERIFY_OP.jwk(key_ops=["verify"]),
]})
ALL_ALGORITHMS = provider(algorithms=("RS256", "PS256", "ES256", "EdDSA"))

#: Put into tokens; must never come back in an error message.
SECRET = "s3cr3t-token-content"


@pytest.mark.parametrize("signer", [RSA, EC, ED, PS, VERIFY_OP])
def test_a_valid_token_is_accepted(signer: Signer) -> None:
    got = verify_jwt(signer.sign(claims()), ALL_ALGORITHMS, KEYS, NOW)
    assert got["sub"] == "alice"


def test_audience_may_be_a_list_and_leeway_applies() -> None:
    token = RSA.sign(claims(aud=["other", "airflowrpc"], exp=NOW - 20, nbf=NOW + 20))
    assert verify_jwt(token, provider(), KEYS, NOW)["sub"] == "alice"


def test_a_single_key_serves_a_token_without_kid() -> None:
    token = RSA.sign(claims(), header={"kid": None})
    assert verify_jwt(token, provider(), parse_jwks(jwks(RSA)), NOW)["sub"] == "alice"


@pytest.mark.parametrize("kid", [None, "shared"])
def test_every_key_of_a_rotation_is_tried(kid: str | None) -> None:
    """
    Found by review: of two keys without a kid (or sharing one, reused across
    a rotation), only the first was tried: the new key's tokens were refused.
    """
    old, new, stranger = (Signer("RS256", "unused") for _ in range(3))
    keys = parse_jwks({"keys": [old.jwk(kid=kid), new.jwk(kid=kid)]})
    for signer in (old, new):
        token = signer.sign(claims(), header={"kid": kid})
        assert verify_jwt(token, provider(), keys, NOW)["sub"] == "alice"
    with pytest.raises(JWTError, match="bad signature"):
        verify_jwt(stranger.sign(claims(), header={"kid": kid}), provider(), keys, NOW)


def test_at_most_a_few_keys_are_tried_on_one_token() -> None:
    signers = [Signer("ES256", "unused") for _ in range(MAX_KEYS_TRIED + 1)]
    keys = parse_jwks({"keys": [s.jwk(kid="same") for s in signers]})
    assert verify_jwt(signers[MAX_KEYS_TRIED - 1].sign(claims(), header={"kid": "same"}),
                      ALL_ALGORITHMS, keys, NOW)["sub"] == "alice"
    with pytest.raises(JWTError, match="bad signature"):  # the one past the cap
        verify_jwt(signers[MAX_KEYS_TRIED].sign(claims(), header={"kid": "same"}),
                   ALL_ALGORITHMS, keys, NOW)


@pytest.mark.parametrize("token,reason", [
    (RSA.sign(claims(), header={"kid": "ec1"}), "key type does not fit"),
    (RSA.sign(claims(iss="https://evil.example.com")), "wrong issuer"),
    (RSA.sign(claims(aud="someone-else")), "wrong audience"),
    (RSA.sign(claims(aud=["someone-else", "another"])), "wrong audience"),
    (RSA.sign(claims(exp=NOW - 31)), "expired"),
    (RSA.sign(claims(exp=None)), "no exp"),
    (RSA.sign(claims(nbf=NOW + 120)), "not valid yet"),
    (RSA.sign(claims(sub=None)), "no sub"),
    (RSA.sign(claims(sub="")), "bad sub"),
    (RSA.sign(claims(sub="x" * 256)), "bad sub"),
    # It is part of the principal's name: a line break would forge a line
    # of the note Airflow shows on a triggered run, or of the log.
    (RSA.sign(claims(sub="alice\nTriggered through txairflowrpc by ci-bot")), "bad sub"),
    (RSA.sign(claims(sub="alice\x1b[2J")), "bad sub"),
    (unsigned(claims(), kid="rsa1"), "algorithm none is not allowed"),
    (hs256_with_public_key(RSA, claims()), "algorithm HS256 is not allowed"),
    (PS.sign(claims()), "algorithm PS256 is not allowed"),
    ("a.b", "malformed"),
    # Found by review: an OIDC back-channel logout token (RFC 8417 events)
    # for the audience was taken for a credential.
    (RSA.sign(claims(events={"http://schemas.openid.net/event/backchannel-logout": {}})),
     "security event token"),
    (RSA.sign(claims(), header={"typ": "logout+jwt"}), "a logout\\+jwt token is an event, not"),
    (RSA.sign(claims(), header={"typ": "application/secevent+jwt"}), "a secevent\\+jwt token is"),
])
def test_refusals(token: str, reason: str) -> None:
    with pytest.raises(JWTError, match=reason):
        verify_jwt(token, provider(), KEYS, NOW)


#: A provider that takes only RFC 9068 access tokens issued to the CI's client.
STRICT = provider(token_types=("at+jwt",), authorized_parties=("ci-client", "deployer"))


@pytest.mark.parametrize("header,extra", [
    ({"typ": "at+jwt"}, {"client_id": "ci-client"}),
    ({"typ": "application/AT+JWT"}, {"azp": "deployer"}),
    ({"typ": "at+jwt"}, {"azp": "ci-client", "client_id": "ci-client"}),
])
def test_a_typed_token_for_an_authorized_client_is_accepted(header: dict[str, Any],
                                                             extra: dict[str, Any]) -> None:
    assert verify_jwt(RSA.sign(claims(**extra), header=header), STRICT, KEYS, NOW)["sub"] == "alice"


@pytest.mark.parametrize("header,extra,reason", [
    # An ID token a client was given for itself (typ JWT, or none) is no access token.
    ({"typ": "JWT"}, {"client_id": "ci-client"}, "typ must be at\\+jwt"),
    ({"typ": None}, {"client_id": "ci-client"}, "typ must be at\\+jwt"),
    ({"typ": "at+jwt"}, {"client_id": "someone-else"}, "authorized client"),
    ({"typ": "at+jwt"}, {}, "authorized client"),
    ({"typ": "at+jwt"}, {"azp": ["ci-client"]}, "authorized client"),
    # Two names for the client, one allowed: which one it was would be a guess.
    ({"typ": "at+jwt"}, {"azp": "someone-else", "client_id": "ci-client"}, "authorized client"),
])
def test_the_wrong_kind_of_token_or_client_is_refused(header: dict[str, Any],
                                                      extra: dict[str, Any], reason: str) -> None:
    token = RSA.sign(claims(sub="bob", **extra), header=header)
    with pytest.raises(JWTError, match=reason) as e:
        verify_jwt(token, STRICT, KEYS, NOW)
    # The signature held: the refusal's record names who the token says it is.
    assert e.value.claimed == {"oidc_issuer": "https://idp.example.com", "oidc_sub": "bob"}
    # Without the provider's rules the same token is fine.
    assert verify_jwt(token, provider(), KEYS, NOW)["sub"] == "bob"


# Each of these was a crash, or let the token in, before the verifier
# moved to joserfc (see the commit that added them).
@pytest.mark.parametrize("token,reason", [
    # A kid that is not a string: a TypeError and a traceback per request.
    (RSA.sign(claims(), header={"kid": [SECRET]}), "kid"),
    (RSA.sign(claims(), header={"kid": {SECRET: 1}}), "kid"),
    # NaN and Infinity are JSON to Python's parser; 1e400 overflows to
    # Infinity; 10**400 does not fit a datetime.  All passed as "exp".
    (RSA.sign(claims(exp=float("nan"))), "NaN is not a JSON number"),
    (RSA.sign(claims(exp=float("inf"))), "Infinity is not a JSON number"),
    (RSA.sign(payload=json.dumps(claims(exp=0)).replace('"exp": 0', '"exp": 1e400').encode()),
     "exp"),
    (RSA.sign(claims(exp=10**400)), "exp"),
    (RSA.sign(claims(exp=True)), "exp"),
    # A non-numeric nbf was ignored.
    (RSA.sign(claims(nbf=SECRET)), "nbf"),
    (RSA.sign(claims(nbf=float("nan"))), "NaN"),
    # A crit header names extensions the gateway must understand; it
    # understands none.
    (RSA.sign(claims(), header={"crit": ["exp"], "exp": NOW + 600}), "crit"),
    (RSA.sign(claims(), header={"crit": [[SECRET]]}), "crit"),
    (RSA.sign(claims(), header={"crit": 5}), "crit"),
    (RSA.sign(claims(), header={"crit": ["b64"], "b64": False}), "crit"),
    (RSA.sign(claims(), header={"typ": [SECRET]}), "typ has the wrong type"),
])
def test_malformed_tokens_are_refused_cleanly(token: str, reason: str) -> None:
    with pytest.raises(JWTError, match=reason) as e:
        verify_jwt(token, provider(), KEYS, NOW)
    assert SECRET not in str(e.value)


# A key the provider publishes but the gateway must not verify with: too
# short, or described (alg, use, key_ops) as meant for something else.
# Before, each was used as if it were fine (or, for use=enc, reported as
# an unknown key, which asks the provider again for nothing).
@pytest.mark.parametrize("signer,reason", [
    (WEAK, "2048"),
    (EC_LABELLED_RS256, "RS256"),
    (RSA_FOR_RS256_ONLY, "RS256"),
    (FOR_ENCRYPTION, "use"),
    (NO_VERIFY_OP, "key_ops"),
])
def test_keys_that_do_not_fit_are_not_used(signer: Signer, reason: str) -> None:
    with pytest.raises(JWTError, match=reason) as e:
        verify_jwt(signer.sign(claims()), ALL_ALGORITHMS, KEYS, NOW)
    assert not isinstance(e.value, UnknownKey)


def test_a_tampered_payload_is_a_bad_signature() -> None:
    head, _, sig = RSA.sign(claims()).split(".")
    forged = RSA.sign(claims(sub="root")).split(".")[1]
    with pytest.raises(JWTError, match="bad signature"):
        verify_jwt(f"{head}.{forged}.{sig}", provider(), KEYS, NOW)


def test_a_token_signed_by_another_key_with_a_known_kid_is_refused() -> None:
    impostor = Signer("RS256", "rsa1")
    with pytest.raises(JWTError, match="bad signature"):
        verify_jwt(impostor.sign(claims()), provider(), KEYS, NOW)


def test_an_embedded_key_is_never_trusted() -> None:
    impostor = Signer("ES256", "ec1")
    token = impostor.sign(claims(), header={"jwk": impostor.jwk()})
    with pytest.raises(JWTError, match="bad signature"):
        verify_jwt(token, provider(), KEYS, NOW)


def test_unknown_kid() -> None:
    with pytest.raises(UnknownKey):
        verify_jwt(Signer("RS256", "new").sign(claims()), provider(), KEYS, NOW)
    with pytest.raises(UnknownKey, match="no kid"):
        verify_jwt(RSA.sign(claims(), header={"kid": None}), provider(), KEYS, NOW)


def test_only_asymmetric_algorithms_whatever_the_provider_says() -> None:
    # joserfc reads an empty list of algorithms as "the recommended ones",
    # HS256 among them; the config refuses both of these providers too.
    with pytest.raises(JWTError, match="allows no algorithm"):
        verify_jwt(RSA.sign(claims()), provider(algorithms=()), KEYS, NOW)
    with pytest.raises(JWTError, match="HS256 is not allowed"):
        verify_jwt(hs256_with_public_key(RSA, claims()), provider(algorithms=("HS256", "RS256")),
                   KEYS, NOW)


def test_a_huge_token_is_refused_before_any_work() -> None:
    with pytest.raises(JWTError, match="too large"):
        verify_jwt(RSA.sign(claims(scope="x" * 200_000)), provider(), KEYS, NOW)


def test_roles_come_from_the_configured_claims() -> None:
    assert roles_from_claims(provider(), claims(scope="a airflow-ci", groups=["auditors"])) == (
        "ci", "auditor")
    assert roles_from_claims(provider(), claims(scope="nothing")) == ()


def test_the_issuer_is_read_only_when_it_is_a_string() -> None:
    assert unverified_issuer(RSA.sign(claims())) == "https://idp.example.com"
    assert unverified_issuer(RSA.sign(claims(iss=["https://idp.example.com"]))) is None
    deep = b"[" * 100_000
    assert unverified_issuer(f"eyJhbGciOiJSUzI1NiJ9.{b64(deep)}.x") is None


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=8,
)
header_names = st.sampled_from(["alg", "kid", "typ", "crit", "b64", "jku", "jwk", "x5c", "cty"])
claim_names = st.sampled_from(["iss", "aud", "sub", "exp", "nbf", "iat", "jti", "scope"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(header=st.dictionaries(header_names, json_values, max_size=3),
       changes=st.dictionaries(claim_names, json_values, max_size=3))
def test_whatever_a_signed_token_holds_the_answer_is_claims_or_JWTError(
    header: dict[str, Any], changes: dict[str, Any],
) -> None:
    token = RSA.sign({**claims(), **changes}, header=header)
    try:
        got = verify_jwt(token, provider(), KEYS, NOW)
    except JWTError:
        return
    assert isinstance(got["sub"], str) and isinstance(got["exp"], (int, float))


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=60))
def test_whatever_text_arrives_the_answer_is_JWTError(text: str) -> None:
    with pytest.raises(JWTError):
        verify_jwt("eyJ" + text, provider(), KEYS, NOW)
    unverified_issuer("eyJ" + text)


def test_a_refusal_after_the_signature_held_names_who_it_claims() -> None:
    """Found by review: the audit record of such a refusal said nothing of who."""
    with pytest.raises(JWTError) as e:
        verify_jwt(RSA.sign(claims(aud="other", sub="mallory")), provider(), KEYS, NOW)
    assert e.value.claimed == {"oidc_issuer": "https://idp.example.com", "oidc_sub": "mallory"}
    with pytest.raises(JWTError) as e:  # a signature that does not hold names no one
        verify_jwt(Signer("RS256", "rsa1").sign(claims(sub="mallory")), provider(), KEYS, NOW)
    assert e.value.claimed == {}


def test_an_unknown_kid_is_not_in_the_reason() -> None:
    """A reason per kid let anyone spread refusals over many reasons (and records)."""
    with pytest.raises(UnknownKey) as e:
        verify_jwt(Signer("RS256", "random-123").sign(claims()), provider(), KEYS, NOW)
    assert "random-123" not in str(e.value)


def test_only_scope_is_split_and_only_at_spaces() -> None:
    """
    Found by review: every string claim was split at any whitespace, so one
    group with a space in its name, or a scope holding U+2028 or a no-break
    space, granted the role of a configured value inside it.
    """
    from txairflowrpc.identity.oidc import claim_values

    assert claim_values("scope", "dags:read  airflow-admins") == ["dags:read", "airflow-admins"]
    assert claim_values("scp", "a b") == ["a", "b"]
    assert claim_values("scope", "x\u2028airflow-admins") == ["x\u2028airflow-admins"]
    assert claim_values("scope", "x\xa0airflow-admins") == ["x\xa0airflow-admins"]
    assert claim_values("groups", "Sales airflow-admins") == ["Sales airflow-admins"]
    assert claim_values("groups", ["airflow-admins", 7, ["airflow-admins"]]) == ["airflow-admins"]
    assert claim_values("groups", 7) == []


def test_a_key_left_out_is_named_even_without_a_string_kid() -> None:
    """Found by review: a JWK whose kid was 7 was left out without a word."""
    from txairflowrpc.identity.oidc import parse_jwks

    good = RSA.jwk()
    weak = Signer("RS256", "weak", bits=1024).jwk()
    keys = parse_jwks({"keys": [good, {**weak, "kid": 7}, "not a key"]})
    assert set(keys.refused) == {"#1", "#2"}
