"""
Who is calling: the principal of each HTTP request.

For now a caller is known by its client certificate, which the TLS layer
has already verified against the configured CA; the certificate's subject
CN (else its first SAN) is the principal's name.  `authenticate` is the one
place that decides this, so tokens and OIDC (a later issue) plug in here.
"""

from __future__ import annotations

from typing import Any

import attrs

from .tls import PeerCertificate, peer_certificate


@attrs.define(auto_exc=True)
class Unauthenticated(Exception):
    """The request proves no identity; answered with HTTP 401."""

    reason: str


@attrs.frozen
class Principal:
    """An authenticated caller."""

    name: str
    #: How it proved who it is, e.g. ``"client_certificate"``.
    method: str
    certificate: PeerCertificate | None = None

    def audit_identity(self) -> dict[str, Any]:
        """How the principal authenticated, for the audit trail (never a secret)."""
        identity: dict[str, Any] = {"method": self.method}
        if self.certificate is not None:
            identity["certificate_sha256"] = self.certificate.fingerprint_sha256
            identity["certificate_subject"] = self.certificate.subject
        return identity

    def describe(self) -> dict[str, Any]:
        """What ``whoami`` tells the caller about itself (no secrets)."""
        info: dict[str, Any] = {"principal": self.name, "authenticated_by": self.method}
        if self.certificate is not None:
            info["certificate"] = {
                "subject": self.certificate.subject,
                "fingerprint_sha256": self.certificate.fingerprint_sha256,
                "not_after": self.certificate.not_after,
                "dns_names": list(self.certificate.dns_names),
                "uris": list(self.certificate.uris),
                "emails": list(self.certificate.emails),
            }
        return info


def authenticate(request: Any) -> Principal:
    """
    The principal behind ``request``.

    Raises `Unauthenticated` when the connection carries no verified client
    certificate (which the TLS listener does not allow, so this guards
    against a misconfigured listener).
    """
    cert = peer_certificate(request.transport)
    if cert is None:
        raise Unauthenticated("a client certificate is required")
    return Principal(name=cert.name, method="client_certificate", certificate=cert)
