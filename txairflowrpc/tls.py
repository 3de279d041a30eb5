"""
The TLS side of the gateway: the server context and the caller's certificate.

`server_options` builds the only kind of listener the gateway has: TLS 1.2
or newer, with client certificates verified against the configured CA
(mutual TLS): required, so that a handshake without one fails before any
HTTP is read, or optional when tokens may authenticate instead.
`peer_certificate` turns the verified peer certificate into the plain
values that identify a caller.
"""

from __future__ import annotations

import hashlib
from typing import Any

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtensionOID, NameOID
from OpenSSL import SSL, crypto
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from zope.interface import implementer

from .config import ConfigError, TLSConfig


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

    @classmethod
    def from_cryptography(cls, cert: x509.Certificate) -> "PeerCertificate":
        cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        try:
            san = cert.extensions.get_extension_for_oid(
                ExtensionOID.SUBJECT_ALTERNATIVE_NAME
            ).value
        except x509.ExtensionNotFound:
            san = x509.SubjectAlternativeName([])
        spki = cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        cn = cns[0].value if cns else None
        return cls(
            subject=cert.subject.rfc4514_string(),
            common_name=cn if isinstance(cn, str) else None,
            dns_names=tuple(san.get_values_for_type(x509.DNSName)),
            uris=tuple(san.get_values_for_type(x509.UniformResourceIdentifier)),
            emails=tuple(san.get_values_for_type(x509.RFC822Name)),
            fingerprint_sha256=cert.fingerprint(hashes.SHA256()).hex(),
            spki_sha256=hashlib.sha256(spki).hexdigest(),
            not_after=cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
        )

    @property
    def name(self) -> str:
        """The caller's name: the subject CN, else the first SAN, else the subject."""
        for candidate in (self.common_name, *self.dns_names, *self.uris, *self.emails):
            if candidate:
                return candidate
        return self.subject


def peer_certificate(transport: object) -> PeerCertificate | None:
    """
    The verified client certificate of a connection, or None.

    ``transport`` is a request's transport; anything that is not a TLS
    transport with a peer certificate gives None.
    """
    get = getattr(transport, "getPeerCertificate", None)
    if get is None:
        return None
    cert = get()
    if cert is None:
        return None
    return PeerCertificate.from_cryptography(cert.to_cryptography())


def _read(key: str, path: Any) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise ConfigError(key, f"cannot read {path}: {e.strerror}") from None


def load_ca_bundle(key: str, path: Any) -> list[ssl.Certificate]:
    """Every certificate in a PEM bundle; `ConfigError` if there is none."""
    try:
        certs = x509.load_pem_x509_certificates(_read(key, path))
    except ValueError:
        raise ConfigError(key, f"{path} holds no PEM certificate") from None
    return [
        ssl.Certificate.loadPEM(c.public_bytes(serialization.Encoding.PEM))
        for c in certs
    ]


def server_options(config: TLSConfig, client_certificate: str = "required") -> ssl.CertificateOptions:
    """
    The TLS options for the listener: TLS 1.2 or newer, and client
    certificates verified against ``tls.client_ca``.  With
    ``client_certificate = "required"`` a handshake without one fails;
    with ``"optional"`` a certificate is verified if one is presented.

    Raises `ConfigError` naming the key whose file cannot be used.
    """
    chain_pem = _read("tls.certificate", config.certificate)
    try:
        chain = x509.load_pem_x509_certificates(chain_pem)
    except ValueError:
        raise ConfigError(
            "tls.certificate", f"{config.certificate} holds no PEM certificate"
        ) from None
    try:
        key = serialization.load_pem_private_key(
            _read("tls.private_key", config.private_key), password=None
        )
    except (ValueError, TypeError):
        raise ConfigError(
            "tls.private_key",
            f"{config.private_key} holds no unencrypted PEM private key",
        ) from None
    leaf = chain[0]
    if leaf.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ):
        raise ConfigError(
            "tls.private_key", "does not match the certificate in tls.certificate"
        )
    cas = load_ca_bundle("tls.client_ca", config.client_ca)
    common = dict(
        privateKey=crypto.PKey.from_cryptography_key(key),
        certificate=crypto.X509.from_cryptography(leaf),
        extraCertChain=[crypto.X509.from_cryptography(c) for c in chain[1:]],
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
    )
    if client_certificate == "required":
        # With a trustRoot, CertificateOptions verifies the peer and
        # requires its certificate: a handshake without one fails.
        return ssl.CertificateOptions(trustRoot=ssl.trustRootFromCertificates(cas), **common)
    return ssl.CertificateOptions(
        verify=True, requireCertificate=False, caCerts=[c.original for c in cas], **common
    )


@implementer(IOpenSSLServerConnectionCreator)
class ReloadableTLS:
    """
    The listener's TLS, whose options a reload can replace: new
    connections use the new certificates, open ones keep theirs.
    """

    def __init__(self, options: ssl.CertificateOptions) -> None:
        self.options = options

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        return SSL.Connection(self.options.getContext(), None)
