"""
The listener's TLS.

`server_options` builds the only kind of listener the gateway has: TLS 1.2
or newer, with client certificates verified against the configured CA
(mutual TLS): required, so that a handshake without one fails before any
HTTP is read, or optional when tokens may authenticate instead.
`ReloadableTLS` lets a reload swap the certificates for new connections
and remembers why OpenSSL refused a client's certificate
(`certificate_refusal`), so that the record of a failed handshake says
"certificate has expired" rather than only "certificate verify failed".
`release_buffers` gives back the room an in-memory TLS connection's
buffers kept after the bytes they held went.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL, crypto
from OpenSSL._util import ffi as _ffi
from OpenSSL._util import lib as _lib
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
    return ca_certificates(key, _read(key, path), path)


def ca_certificates(key: str, pem: bytes, path: Path) -> list[ssl.Certificate]:
    """Every certificate in ``pem`` (read from ``path``); `ConfigError` if there is none."""
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise ConfigError(key, f"{path} holds no PEM certificate") from None
    return [
        ssl.Certificate.loadPEM(c.public_bytes(serialization.Encoding.PEM))
        for c in certs
    ]


def server_options(
    config: TLSConfig, client_certificate: str = "required", now: datetime | None = None,
) -> ssl.CertificateOptions:
    """
    The TLS options for the listener: TLS 1.2 or newer, and client
    certificates verified against ``tls.client_ca``.  With
    ``client_certificate = "required"`` a handshake without one fails;
    with ``"optional"`` a certificate is verified if one is presented.

    Raises `ConfigError` naming the key whose file cannot be used, and for
    a certificate that has expired (at ``now``, by default the time now):
    every client would refuse it (found by review: a reload swapped one in
    for the certificate in force).
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
    expired = leaf.not_valid_after_utc
    if expired < (now or datetime.now(timezone.utc)):
        raise ConfigError(
            "tls.certificate", f"{config.certificate}: the certificate expired on "
            f"{expired:%Y-%m-%dT%H:%M:%SZ}; every client would refuse it")
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


@attrs.frozen
class CertificateRefusal:
    """Why OpenSSL refused the certificate a client presented in a handshake."""

    #: OpenSSL's words for its verify error, e.g. ``certificate has expired``.
    error: str
    #: Where in the chain: 0 is the client's own certificate, 1 its issuer, ...
    depth: int
    #: The refused certificate's subject (RFC 4514), at most 200 characters.
    subject: str

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)


def _verify_error_text(code: int) -> str:
    """OpenSSL's words for an X509 verify error code."""
    words = getattr(_lib, "X509_verify_cert_error_string", None)
    if words is not None:
        text = words(code)
        if text != _ffi.NULL:
            return str(_ffi.string(text).decode("ascii", "replace"))
    return f"X509 verify error {code}"


def _note_refusal(
    connection: SSL.Connection, certificate: crypto.X509, code: int, depth: int, ok: int,
) -> bool:
    """
    The verify callback: OpenSSL's verdict on each certificate of the
    client's chain, unchanged (``ok``); the first refusal is kept on the
    connection's TLS protocol (Twisted makes it the connection's app data)
    for `certificate_refusal`.  Nothing is done for a certificate that
    passes, and nothing here can turn a verdict over (pyOpenSSL fails the
    handshake if a callback raises, so it cannot).
    """
    if not ok:
        try:
            protocol = connection.get_app_data()
            if protocol is not None and certificate_refusal(protocol) is None:
                subject = certificate.to_cryptography().subject.rfc4514_string()
                protocol.certificate_refusal = CertificateRefusal(
                    _verify_error_text(code), depth, subject[:200])
        except Exception:  # noqa: BLE001, S110 -- a refusal goes on unexplained, never fails
            pass
    return bool(ok)


def certificate_refusal(protocol: Any) -> CertificateRefusal | None:
    """Why the client's certificate was refused on a TLS ``protocol``, if it was."""
    refusal = getattr(protocol, "certificate_refusal", None)
    return refusal if isinstance(refusal, CertificateRefusal) else None


@implementer(IOpenSSLServerConnectionCreator)
class ReloadableTLS:
    """
    The listener's TLS, whose options a reload can replace: new
    connections use the new certificates, open ones keep theirs.  A
    client certificate OpenSSL refuses is explained on its connection
    (`certificate_refusal`).
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
        mode = context.get_verify_mode()
        if mode != SSL.VERIFY_NONE:
            # OpenSSL decides as before (the callback returns its verdict);
            # the callback only keeps the reason of a refusal.
            context.set_verify(mode, _note_refusal)
        self._options = options

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        return SSL.Connection(self.options.getContext(), None)


def release_buffers(connection: SSL.Connection) -> bool:
    """
    Give an in-memory TLS connection (one made with no socket, as Twisted's
    TLS protocol makes them) two new, empty memory BIOs if both of its own
    are empty, so that the room they kept goes back to the allocator; say
    whether it did.

    A memory BIO keeps the room of the most it ever held until it is freed:
    after a handshake with a client certificate about 5 KB in the two, after
    one 60 KB read about 80 KB, for as long as the connection stays open
    (OpenSSL's own record buffers are released between records already,
    ``MODE_RELEASE_BUFFERS``).  Swapping empty BIOs loses nothing: OpenSSL
    keeps a partial record in its own buffer, not in the BIO.

    pyOpenSSL has no call for it: this uses its connection's private
    ``_ssl``, ``_into_ssl`` and ``_from_ssl`` and OpenSSL's ``SSL_set_bio``
    (which frees the old BIOs).  Where those are missing (a connection over
    a socket, another pyOpenSSL) it does nothing and says so;
    ``test_tls_memory.test_release_buffers_gives_the_room_back`` fails if that
    happens to the pyOpenSSL installed.  pyOpenSSL gives those BIOs to
    ``SSL_set_bio`` and keeps plain pointers, which ``SSL_free`` frees (were
    it to hold references of its own, it would have to take them with
    ``BIO_up_ref``, and dropping its pointer would then still free once).
    Not to be called once the read BIO was told the peer is gone
    (``bio_shutdown``): a new BIO would forget the end of the stream.
    """
    handle = getattr(connection, "_ssl", None)
    into = getattr(connection, "_into_ssl", None)
    out = getattr(connection, "_from_ssl", None)
    if handle is None or into is None or out is None:
        return False
    if _lib.BIO_get_mem_data(into, _ffi.NULL) or _lib.BIO_get_mem_data(out, _ffi.NULL):
        return False  # bytes still waiting: next time
    new_into = _lib.BIO_new(_lib.BIO_s_mem())
    new_out = _lib.BIO_new(_lib.BIO_s_mem()) if new_into != _ffi.NULL else _ffi.NULL
    if new_out == _ffi.NULL:
        if new_into != _ffi.NULL:
            _lib.BIO_free(new_into)
        # Out of memory: what BIO_new left on OpenSSL's error queue must not
        # turn the connection's next WantRead into an error.
        _lib.ERR_clear_error()
        return False
    _lib.SSL_set_bio(handle, new_into, new_out)  # frees the old two
    connection._into_ssl, connection._from_ssl = new_into, new_out
    return True
