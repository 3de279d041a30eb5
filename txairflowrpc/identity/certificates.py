"""
The caller's client certificate, as the plain values that identify it, and
how a configured principal's ``cert_*`` keys match it.

The TLS layer has verified the certificate against the configured CA before
anything here sees it; this module only reads it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from itertools import pairwise

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtensionOID, NameOID

from ..config import PrincipalEntry
from ..core.timefmt import iso_seconds


@attrs.frozen
class PeerCertificate:
    """What the gateway knows of a verified client certificate."""

    subject: str
    common_name: str | None
    dns_names: tuple[str, ...]
    uris: tuple[str, ...]
    emails: tuple[str, ...]
    fingerprint_sha256: str
    spki_sha256: str
    not_after: str
    #: ``not_after`` as seconds since the epoch: a connection kept open past
    #: it must not keep the verdict its handshake earned.
    not_after_seconds: float | None = None
    #: Who vouched for it, along the chain the handshake verified (the root
    #: left out): for the certificate and each CA above it, the SHA-256 of
    #: its issuer's public key (SPKI) and its serial number, what a
    #: revocation list names it by (`txairflowrpc.identity.revocation`).
    #: Empty for a certificate trusted as it is (a chain of one).
    issued: tuple[tuple[str, int], ...] = ()
    #: Whether the verified chain was known (the TLS layer said it).
    chain_known: bool = False

    @classmethod
    def from_cryptography(
        cls, cert: x509.Certificate, chain: Sequence[x509.Certificate] = (),
    ) -> "PeerCertificate":
        """``cert``, and ``chain``, the verified chain it heads (leaf first), if known."""
        cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        try:
            san = cert.extensions.get_extension_for_oid(
                ExtensionOID.SUBJECT_ALTERNATIVE_NAME
            ).value
        except x509.ExtensionNotFound:
            san = x509.SubjectAlternativeName([])
        # A subject with two CNs names no one by its CN: which is meant is a guess.
        cn = cns[0].value if len(cns) == 1 else None
        return cls(
            subject=cert.subject.rfc4514_string(),
            common_name=cn if isinstance(cn, str) else None,
            dns_names=tuple(san.get_values_for_type(x509.DNSName)),
            uris=tuple(san.get_values_for_type(x509.UniformResourceIdentifier)),
            emails=tuple(san.get_values_for_type(x509.RFC822Name)),
            fingerprint_sha256=cert.fingerprint(hashes.SHA256()).hex(),
            spki_sha256=spki_sha256(cert),
            not_after=iso_seconds(cert.not_valid_after_utc),
            not_after_seconds=cert.not_valid_after_utc.timestamp(),
            issued=tuple((spki_sha256(issuer), issued.serial_number)
                         for issued, issuer in pairwise(chain)),
            chain_known=bool(chain),
        )

    @property
    def name(self) -> str:
        """The caller's name: the subject CN, else the first SAN, else the subject."""
        for candidate in (self.common_name, *self.dns_names, *self.uris, *self.emails):
            if candidate:
                return candidate
        return self.subject


def spki_sha256(cert: x509.Certificate) -> str:
    """The SHA-256 of a certificate's public key (its SubjectPublicKeyInfo), in hex."""
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).hexdigest()


def peer_certificate(transport: object) -> PeerCertificate | None:
    """
    The verified client certificate of a connection, or None.

    ``transport`` is a request's transport; anything that is not a TLS
    transport with a peer certificate gives None.  The chain is the one
    OpenSSL verified in the handshake (``get_verified_chain``), so that a
    CA is known by its key, whatever its name looks like in a certificate.
    """
    get = getattr(transport, "getPeerCertificate", None)
    if get is None:
        return None
    cert = get()
    if cert is None:
        return None
    chain: Sequence[x509.Certificate] = ()
    handle = getattr(transport, "getHandle", None)
    if handle is not None:
        verified = getattr(handle(), "get_verified_chain", None)
        if verified is not None:
            chain = verified(as_cryptography=True) or ()
    return PeerCertificate.from_cryptography(cert.to_cryptography(), chain)




def matches(entry: PrincipalEntry, cert: PeerCertificate) -> bool:
    """Whether a verified certificate belongs to the configured principal ``entry``."""
    return bool(
        set(entry.cert_dns) & set(cert.dns_names)
        or set(entry.cert_uri) & set(cert.uris)
        or set(entry.cert_email) & set(cert.emails)
        or (cert.common_name is not None and cert.common_name in entry.cert_cn)
        or cert.fingerprint_sha256 in entry.cert_sha256
        or cert.spki_sha256 in entry.cert_spki_sha256
    )
