"""
Signing JWTs and building JWKS documents for tests.

Signed with ``cryptography`` directly, on purpose: the gateway verifies
with joserfc, and a token made by the same library that checks it would
hide any mistake the two share.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from txairflowrpc.config import OIDCProvider


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _int(n: int, size: int | None = None) -> str:
    size = size or (n.bit_length() + 7) // 8
    return b64(n.to_bytes(size, "big"))


class Signer:
    """
    A key pair that signs JWTs and describes itself as a JWK.

    ``kind`` is the algorithm it signs with: RS256, PS256 (RSA of ``bits``),
    ES256 (P-256) or EdDSA (Ed25519).
    """

    def __init__(self, kind: str = "RS256", kid: str = "k1", bits: int = 2048) -> None:
        self.alg, self.kid = kind, kid
        if kind.startswith(("RS", "PS")):
            self.key: Any = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        elif kind == "EdDSA":
            self.key = ed25519.Ed25519PrivateKey.generate()
        else:
            self.key = ec.generate_private_key(ec.SECP256R1())

    def jwk(self, **fields: Any) -> dict[str, Any]:
        """The public JWK; ``fields`` are added, or removed where None."""
        if self.alg == "EdDSA":
            raw = self.key.public_key().public_bytes(serialization.Encoding.Raw,
                                                     serialization.PublicFormat.Raw)
            jwk = {"kty": "OKP", "kid": self.kid, "crv": "Ed25519", "use": "sig", "x": b64(raw)}
        elif self.alg.startswith(("RS", "PS")):
            pub = self.key.public_key().public_numbers()
            jwk = {"kty": "RSA", "kid": self.kid, "use": "sig", "alg": self.alg,
                   "n": _int(pub.n), "e": _int(pub.e)}
        else:
            pub = self.key.public_key().public_numbers()
            jwk = {"kty": "EC", "kid": self.kid, "crv": "P-256", "use": "sig",
                   "x": _int(pub.x, 32), "y": _int(pub.y, 32)}
        jwk.update(fields)
        return {k: v for k, v in jwk.items() if v is not None}

    def public_pem(self) -> bytes:
        return self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    def sign(self, claims: dict[str, Any] | None = None, header: dict[str, Any] | None = None,
             *, payload: bytes | None = None) -> str:
        """
        A compact JWS of ``claims`` (or of the raw ``payload`` bytes).
        ``header`` entries are added to the usual ones, or remove them where
        None.  ``json.dumps`` writes NaN and Infinity as JSON's parsers do.
        """
        head = {"alg": self.alg, "typ": "JWT", "kid": self.kid, **(header or {})}
        head = {k: v for k, v in head.items() if v is not None}
        body = payload if payload is not None else json.dumps(claims).encode()
        signing_input = f"{b64(json.dumps(head).encode())}.{b64(body)}".encode()
        if self.alg == "EdDSA":
            sig = self.key.sign(signing_input)
        elif self.alg.startswith("RS"):
            sig = self.key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        elif self.alg.startswith("PS"):
            sig = self.key.sign(signing_input, padding.PSS(padding.MGF1(hashes.SHA256()), 32),
                                hashes.SHA256())
        else:
            r, s = decode_dss_signature(self.key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
            sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return f"{signing_input.decode()}.{b64(sig)}"


def jwks(*signers: Signer) -> dict[str, Any]:
    return {"keys": [s.jwk() for s in signers]}


def unsigned(claims: dict[str, Any], kid: str = "k1") -> str:
    """An ``alg: none`` token."""
    head = b64(json.dumps({"alg": "none", "typ": "JWT", "kid": kid}).encode())
    return f"{head}.{b64(json.dumps(claims).encode())}."


def hs256_with_public_key(signer: Signer, claims: dict[str, Any]) -> str:
    """The classic confusion attack: HMAC keyed with the RSA public key."""
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": signer.kid}).encode())
    signing_input = f"{head}.{b64(json.dumps(claims).encode())}"
    mac = hmac.new(signer.public_pem(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


#: The time the test tokens are checked at.
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
    return {k: v for k, v in base.items() if v is not None}
