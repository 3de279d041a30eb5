"""
The listener's TLS.

`server_options` builds the only kind of listener the gateway has: TLS 1.2
or newer, with client certificates verified against the configured CA
(mutual TLS): required, so that a handshake without one fails before any
HTTP is read, or optional when tokens may authenticate instead.
`ReloadableTLS` lets a reload swap the certificates for new connections.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL, crypto
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from zope.interface import implementer

from ..config import ConfigError, TLSConfig


def _read(key: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise ConfigError(key, f"cannot read {path}: {e.strerror}") from None


def load_ca_bundle(key: str, path: Path) -> list[ssl.Certificate]:
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


#: The protocols the gateway speaks after the handshake, by preference.
ALPN_PROTOCOLS = (b"http/1.1", b"http/1.0")


def select_alpn(connection: SSL.Connection, offered: list[bytes]) -> Any:
    """
    The ALPN choice: HTTP/1.1 or HTTP/1.0 if the client offers either;
    otherwise the handshake goes on without ALPN (Twisted's own callback
    answers an internal_error alert, so a client offering only
    ``http/1.0``, as ``curl -0`` does, could not connect).
    """
    for protocol in ALPN_PROTOCOLS:
        if protocol in offered:
            return protocol
    return SSL.NO_OVERLAPPING_PROTOCOLS


@implementer(IOpenSSLServerConnectionCreator)
class ReloadableTLS:
    """
    The listener's TLS, whose options a reload can replace: new
    connections use the new certificates, open ones keep theirs.
    """

    def __init__(self, options: ssl.CertificateOptions) -> None:
        self.options = options

    @property
    def options(self) -> ssl.CertificateOptions:
        return self._options

    @options.setter
    def options(self, options: ssl.CertificateOptions) -> None:
        context = options.getContext()
        context.set_alpn_select_callback(select_alpn)
        # No renegotiation: a connection's client certificate is the one of
        # its handshake, for good (the gateway trusts a connection's earlier
        # verdict), and a client cannot make the server redo handshakes.
        context.set_options(SSL.OP_NO_RENEGOTIATION)
        self._options = options

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        return SSL.Connection(self.options.getContext(), None)
