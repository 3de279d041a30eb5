"""Signing JWTs and building JWKS documents for tests (with cryptography)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from txairflowrpc.config import OIDCProvider


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _int(n: int, size: int | None = None) -> str:
    size = size or (n.bit_length() + 7) // 8
    return b64(n.to_bytes(size, "big"))


class Signer:
    """A key pair that signs JWTs and describes itself as a JWK."""

    def __init__(self, kind: str = "RS256", kid: str = "k1") -> None:
        self.alg, self.kid = kind, kid
        if kind.startswith("RS"):
            self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        else:
            self.key = ec.generate_private_key(ec.SECP256R1())

    def jwk(self) -> dict[str, Any]:
        pub = self.key.public_key().public_numbers()
        if self.alg.startswith("RS"):
            return {"kty": "RSA", "kid": self.kid, "use": "sig", "alg": self.alg,
                    "n": _int(pub.n), "e": _int(pub.e)}
        return {"kty": "EC", "kid": self.kid, "crv": "P-256", "use": "sig",
                "x": _int(pub.x, 32), "y": _int(pub.y, 32)}

    def public_pem(self) -> bytes:
        return self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    def sign(self, claims: dict[str, Any], header: dict[str, Any] | None = None) -> str:
        head = {"alg": self.alg, "typ": "JWT", "kid": self.kid, **(header or {})}
        signing_input = f"{b64(json.dumps(head).encode())}.{b64(json.dumps(claims).encode())}"
        if self.alg.startswith("RS"):
            sig = self.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        else:
            r, s = decode_dss_signature(self.key.sign(signing_input.encode(),
                                                      ec.ECDSA(hashes.SHA256())))
            sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return f"{signing_input}.{b64(sig)}"


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
    return base
