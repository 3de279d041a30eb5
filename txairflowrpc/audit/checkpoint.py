"""
Signed checkpoints: what makes the audit chain's head provable.

The hash chain alone has no key: whoever can edit the file can rewrite it
whole, re-hashing every line, or cut its tail.  A checkpoint is a record
(``"event": "audit.checkpoint"``) sealed into the chain like any other,
whose body (the chain head it covers, its own seq, time and ``prev``)
is signed with a key the file's editor does not have: an Ed25519 private
key (PEM, `keygen` makes one; the auditor holds the public half) or, for a
team that prefers it, an HMAC-SHA256 shared secret.

`Signer` signs (in the gateway, on the audit thread, under the chain's
lock); `Verifier` checks (``airflowrpc audit verify``).  Neither shows its
key: not in a repr, a log line or an exception text.  Every error here is
a ValueError whose message names the file and the problem, never its
content.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
from pathlib import Path
from typing import Any

import attrs
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

#: The ``event`` of a checkpoint record.
CHECKPOINT = "audit.checkpoint"

#: Why a checkpoint was written: every N records, T seconds after a record
#: was left uncovered, before a rotation, at shutdown, after the first
#: write to a chain that did not end with one (after a crash), and at once
#: after an ``audit.tampered`` record.  (All at most 8 characters: the
#: chain reserves room for a checkpoint before it rotates.)
REASONS = ("records", "interval", "rotation", "shutdown", "resume", "tampered")

ED25519 = "ed25519"
HMAC_SHA256 = "hmac-sha256"

#: Prefixed to every signed body, so that a checkpoint signature can never
#: be taken for a signature over anything else made with the same key.
_DOMAIN = b"txairflowrpc audit checkpoint v1\n"

#: The shortest shared secret accepted (bytes).
HMAC_MIN_BYTES = 32

_HMAC_KEY_ID = b"txairflowrpc audit key id"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _ed25519_key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _hmac_key_id(secret: bytes) -> str:
    # A MAC of a constant, not a hash of the secret: it names the key
    # without helping anyone guess it.
    return hmac.new(secret, _HMAC_KEY_ID, hashlib.sha256).hexdigest()[:16]


@attrs.frozen
class Signer:
    """
    Signs checkpoint bodies with one key.  ``alg`` and ``key_id`` go into
    every checkpoint, so a verifier knows which key to check it with.
    """

    alg: str
    key_id: str
    _key: Any = attrs.field(alias="key", repr=False, eq=False)

    def sign(self, body: str) -> str:
        """The signature (base64) of a checkpoint's JSON ``body``."""
        message = _DOMAIN + body.encode("ascii")
        if self.alg == ED25519:
            return _b64(self._key.sign(message))
        return _b64(hmac.new(self._key, message, hashlib.sha256).digest())

    @property
    def signature_length(self) -> int:
        """How many characters `sign` returns: the same for every body."""
        return len(_b64(bytes(64 if self.alg == ED25519 else 32)))


@attrs.frozen
class Verifier:
    """Checks checkpoint signatures made by one key."""

    alg: str
    key_id: str
    _key: Any = attrs.field(alias="key", repr=False, eq=False)

    def verify(self, body: str, signature: str) -> bool:
        """Whether ``signature`` is this key's over ``body`` (constant time for HMAC)."""
        try:
            raw = base64.b64decode(signature.encode("ascii"), validate=True)
        except (binascii.Error, ValueError, UnicodeEncodeError):
            return False
        message = _DOMAIN + body.encode("ascii")
        if self.alg == ED25519:
            try:
                self._key.verify(raw, message)
            except InvalidSignature:
                return False
            return True
        expected = hmac.new(self._key, message, hashlib.sha256).digest()
        return hmac.compare_digest(expected, raw)


# -- keys from files ------------------------------------------------------------


def _read(path: Path, what: str, secret: bool = False) -> bytes:
    """A key file's bytes; a ``secret`` one only if others may not read it."""
    try:
        mode = os.stat(path).st_mode
        data = path.read_bytes()
    except OSError as e:
        raise ValueError(f"cannot read {what} {path}: {e.strerror}") from None
    if secret and mode & 0o007:
        raise ValueError(f"{path} is open to others (mode {mode & 0o777:04o}); chmod 600 it")
    return data


def ed25519_private(data: bytes, source: Path) -> Ed25519PrivateKey:
    """The Ed25519 key of an unencrypted PEM private key; ValueError otherwise."""
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        # cryptography's own message may quote the input: keep it out.
        key = None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{source} is not an unencrypted Ed25519 private key in PEM "
                         "(make one with: airflowrpc audit keygen --out PREFIX)")
    return key


def hmac_secret(data: bytes, source: Path) -> bytes:
    """
    The shared secret of an HMAC key file: its content, surrounding
    whitespace (a final newline) ignored; at least `HMAC_MIN_BYTES`.
    """
    secret = data.strip()
    if len(secret) < HMAC_MIN_BYTES:
        raise ValueError(f"{source} holds too short a secret: at least {HMAC_MIN_BYTES} "
                         "bytes are needed (make one with: airflowrpc audit keygen --hmac)")
    return secret


def signing_key(path: Path) -> Signer:
    """A `Signer` from an Ed25519 private key file (PEM)."""
    key = ed25519_private(_read(path, "signing key", secret=True), path)
    return Signer(ED25519, _ed25519_key_id(key.public_key()), key=key)


def hmac_signer(path: Path) -> Signer:
    """A `Signer` from an HMAC shared-secret file."""
    secret = hmac_secret(_read(path, "HMAC key", secret=True), path)
    return Signer(HMAC_SHA256, _hmac_key_id(secret), key=secret)


def signer_from(signing_key_file: Path | None, hmac_key_file: Path | None) -> Signer | None:
    """The gateway's `Signer`, from whichever key the config names (None: no checkpoints)."""
    if signing_key_file is not None:
        return signing_key(signing_key_file)
    if hmac_key_file is not None:
        return hmac_signer(hmac_key_file)
    return None


def public_key(path: Path) -> Verifier:
    """A `Verifier` from an Ed25519 public key (PEM), as `keygen` writes it."""
    data = _read(path, "public key")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        key = None
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path} is not an Ed25519 public key in PEM")
    return Verifier(ED25519, _ed25519_key_id(key), key=key)


def hmac_verifier(path: Path) -> Verifier:
    """A `Verifier` from an HMAC shared-secret file."""
    secret = hmac_secret(_read(path, "HMAC key", secret=True), path)
    return Verifier(HMAC_SHA256, _hmac_key_id(secret), key=secret)


# -- new keys -------------------------------------------------------------------


def _create(path: Path, data: bytes, mode: int) -> None:
    """Write a new file with exactly ``mode``; FileExistsError if it exists."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # whatever the umask
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _refuse_existing(*paths: Path) -> None:
    for path in paths:
        if path.exists() or path.is_symlink():
            raise ValueError(f"{path} exists; not overwriting a key")


@attrs.frozen
class NewKey:
    """What `keygen` wrote: the secret file, the public file (if any), the key id."""

    secret: Path
    public: Path | None
    key_id: str


def keygen(prefix: Path) -> NewKey:
    """
    A new Ed25519 key pair: ``PREFIX.key`` (the private key, PKCS#8 PEM,
    mode 0600) and ``PREFIX.pub`` (the public key, PEM, 0644).  Refuses to
    overwrite either.
    """
    secret, public = Path(f"{prefix}.key"), Path(f"{prefix}.pub")
    _refuse_existing(secret, public)
    key = Ed25519PrivateKey.generate()
    _create(secret, key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()), 0o600)
    _create(public, key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo), 0o644)
    return NewKey(secret, public, _ed25519_key_id(key.public_key()))


def hmac_keygen(prefix: Path) -> NewKey:
    """A new shared secret, ``PREFIX.hmac`` (256 random bits as hex, mode 0600)."""
    secret = Path(f"{prefix}.hmac")
    _refuse_existing(secret)
    value = secrets.token_hex(32).encode("ascii")
    _create(secret, value + b"\n", 0o600)
    return NewKey(secret, None, _hmac_key_id(value))
