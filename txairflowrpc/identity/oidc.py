"""
OIDC / JWT access tokens from an identity provider.

`verify_jwt` checks a compact JWS with the ``cryptography`` library and
nothing else: the algorithm must be one the provider allows (asymmetric
only, so never ``none`` and never an HMAC keyed with a public key), the key
type must fit the algorithm, and ``iss``, ``aud``, ``exp`` (required),
``nbf`` and ``sub`` are checked with a small leeway.

`JWKSet` holds a provider's keys: from a file, or from a URL fetched with
treq (never blocking the reactor), cached, refetched on an unknown ``kid``
at most once per cooldown, and kept as they were when the provider is down.
"""

from __future__ import annotations

import json
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from ..config import OIDCProvider
from ..core.encoding import b64url_decode
from ..core.singleflight import SingleFlight

_log = Logger()

_HASHES = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}
_CURVES = {"ES256": ec.SECP256R1, "ES384": ec.SECP384R1, "ES512": ec.SECP521R1}
_JWK_CURVES = {"P-256": ec.SECP256R1, "P-384": ec.SECP384R1, "P-521": ec.SECP521R1}


class JWTError(Exception):
    """A JWT was refused; the message says why and carries no token."""


class UnknownKey(JWTError):
    """The JWT names a key the provider's key set does not hold."""


def _b64(data: str) -> bytes:
    try:
        return b64url_decode(data)
    except ValueError:
        raise JWTError("malformed JWT (bad base64)") from None


def looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2 and token.startswith("eyJ")


def unverified_header(token: str) -> dict[str, Any]:
    try:
        header = json.loads(_b64(token.split(".")[0]))
    except (ValueError, IndexError):
        raise JWTError("malformed JWT header") from None
    if not isinstance(header, dict):
        raise JWTError("malformed JWT header")
    return header


def unverified_issuer(token: str) -> str | None:
    try:
        claims = json.loads(_b64(token.split(".")[1]))
    except (ValueError, IndexError, JWTError):
        return None
    return claims.get("iss") if isinstance(claims, dict) else None


def parse_jwk(jwk: dict[str, Any]) -> Any:
    """A public key from a JWK, or None for keys the gateway does not use."""
    if jwk.get("use", "sig") != "sig":
        return None
    kty = jwk.get("kty")
    try:
        if kty == "RSA":
            n = int.from_bytes(_b64(jwk["n"]), "big")
            e = int.from_bytes(_b64(jwk["e"]), "big")
            return rsa.RSAPublicNumbers(e, n).public_key()
        if kty == "EC" and jwk.get("crv") in _JWK_CURVES:
            x = int.from_bytes(_b64(jwk["x"]), "big")
            y = int.from_bytes(_b64(jwk["y"]), "big")
            return ec.EllipticCurvePublicNumbers(x, y, _JWK_CURVES[jwk["crv"]]()).public_key()
        if kty == "OKP" and jwk.get("crv") == "Ed25519":
            return ed25519.Ed25519PublicKey.from_public_bytes(_b64(jwk["x"]))
    except (KeyError, ValueError, TypeError, JWTError):
        return None
    return None


def parse_jwks(document: Any) -> dict[str | None, Any]:
    keys: dict[str | None, Any] = {}
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("a JWKS is an object with a 'keys' array")
    for jwk in document["keys"]:
        if isinstance(jwk, dict):
            key = parse_jwk(jwk)
            if key is not None:
                keys[jwk.get("kid")] = key
    return keys


def _check_signature(alg: str, key: Any, signature: bytes, signed: bytes) -> None:
    try:
        if alg.startswith(("RS", "PS")):
            if not isinstance(key, rsa.RSAPublicKey):
                raise JWTError(f"key type does not fit {alg}")
            digest = _HASHES[alg[2:]]()
            pad = (padding.PKCS1v15() if alg.startswith("RS") else
                   padding.PSS(mgf=padding.MGF1(digest), salt_length=digest.digest_size))
            key.verify(signature, signed, pad, digest)
        elif alg.startswith("ES"):
            if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(
                key.curve, _CURVES[alg]
            ):
                raise JWTError(f"key type does not fit {alg}")
            size = (key.curve.key_size + 7) // 8
            if len(signature) != 2 * size:
                raise JWTError("bad signature")
            r = int.from_bytes(signature[:size], "big")
            s = int.from_bytes(signature[size:], "big")
            key.verify(encode_dss_signature(r, s), signed, ec.ECDSA(_HASHES[alg[2:]]()))
        elif alg == "EdDSA":
            if not isinstance(key, ed25519.Ed25519PublicKey):
                raise JWTError(f"key type does not fit {alg}")
            key.verify(signature, signed)
        else:
            raise JWTError(f"algorithm {alg} is not allowed")
    except InvalidSignature:
        raise JWTError("bad signature") from None


def verify_jwt(
    token: str, provider: OIDCProvider, keys: dict[str | None, Any], now: float
) -> dict[str, Any]:
    """The claims of a valid JWT from ``provider``; `JWTError` otherwise."""
    parts = token.split(".")
    if len(parts) != 3:
        raise JWTError("malformed JWT")
    header = unverified_header(token)
    alg = header.get("alg")
    if alg not in provider.algorithms:
        raise JWTError(f"algorithm {str(alg)[:20]} is not allowed")
    kid = header.get("kid")
    key = keys.get(kid) if kid is not None or len(keys) != 1 else next(iter(keys.values()))
    if key is None:
        raise UnknownKey(f"unknown key id {str(kid)[:64]!r}")
    _check_signature(alg, key, _b64(parts[2]), f"{parts[0]}.{parts[1]}".encode("ascii"))
    try:
        claims = json.loads(_b64(parts[1]))
    except ValueError:
        raise JWTError("malformed JWT claims") from None
    if not isinstance(claims, dict):
        raise JWTError("malformed JWT claims")
    if claims.get("iss") != provider.issuer:
        raise JWTError("wrong issuer")
    aud = claims.get("aud")
    audiences = aud if isinstance(aud, list) else [aud]
    if provider.audience not in audiences:
        raise JWTError("wrong audience")
    exp = claims.get("exp")
    if not isinstance(exp, (int, float)) or isinstance(exp, bool):
        raise JWTError("no exp claim")
    if now > exp + provider.leeway_seconds:
        raise JWTError("expired")
    nbf = claims.get("nbf")
    if isinstance(nbf, (int, float)) and now + provider.leeway_seconds < nbf:
        raise JWTError("not valid yet")
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub or len(sub) > 255:
        raise JWTError("no sub claim")
    return claims


def roles_from_claims(provider: OIDCProvider, claims: dict[str, Any]) -> tuple[str, ...]:
    """The roles the provider's configured claims map to."""
    roles: list[str] = []
    for name in provider.scope_claims:
        value = claims.get(name)
        items = value.split() if isinstance(value, str) else value if isinstance(value, list) else []
        for item in items:
            for role in provider.claim_roles.get(str(item), ()):
                if role not in roles:
                    roles.append(role)
    return tuple(roles)


class JWKSet:
    """
    A provider's signing keys.

    :param http: a treq ``HTTPClient`` (for ``jwks_url``).
    """

    def __init__(
        self, provider: OIDCProvider, *, http: Any, clock: IReactorTime, timeout: float = 10,
    ) -> None:
        self.provider = provider
        self._http = http
        self._clock = clock
        self._timeout = timeout
        self.keys: dict[str | None, Any] = {}
        self._last_fetch = float("-inf")
        self._fetching: SingleFlight[None] = SingleFlight()
        self.fetches = 0
        if provider.jwks is not None:
            self.keys = parse_jwks(provider.jwks)

    def adopt(self, old: "JWKSet") -> None:
        """Keep the keys and cooldown of the set this one replaces (a reload)."""
        if self.provider.jwks_url and old.provider.jwks_url == self.provider.jwks_url:
            self.keys, self._last_fetch = old.keys, old._last_fetch

    async def key_for(self, token: str) -> dict[str | None, Any]:
        """The key set to verify ``token`` with, refetched once per cooldown if needed."""
        kid = unverified_header(token).get("kid")
        known = kid in self.keys or (kid is None and len(self.keys) == 1)
        cooled = self._clock.seconds() - self._last_fetch >= (
            self.provider.jwks_refetch_cooldown_seconds
        )
        if not known and self.provider.jwks_url and cooled:
            await self.refresh()
        return self.keys

    def refresh(self) -> Deferred[None]:
        """Fetch the key set now (one fetch however many ask); keep the old on failure."""
        if not self._fetching.running:
            self._last_fetch = self._clock.seconds()
        return self._fetching.run(lambda: Deferred.fromCoroutine(self._fetch()))

    async def _fetch(self) -> None:
        self.fetches += 1
        try:
            d = self._http.get(self.provider.jwks_url, reactor=self._clock)
            d.addTimeout(self._timeout, self._clock)
            response = await d
            if response.code != 200:
                raise ValueError(f"HTTP {response.code}")
            self.keys = parse_jwks(json.loads(await response.content()))
        except Exception as e:  # the provider is down or answered garbage
            _log.warn("JWKS of {provider} not refreshed ({error}); keeping {n} known keys",
                      provider=self.provider.name, error=str(e)[:200], n=len(self.keys))
