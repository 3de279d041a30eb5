"""
An authenticated caller: who it is, how it proved it, and what its roles
let it do.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import attrs

from ..core.timefmt import iso_seconds
from .certificates import PeerCertificate
from .scopes import Grants


@attrs.frozen
class Principal:
    """An authenticated caller."""

    name: str
    #: How it proved who it is: "client_certificate", "token", "oidc" or "aws_iam",
    #: joined with "+" when more than one was required.
    method: str
    certificate: PeerCertificate | None = None
    token_id: str | None = None
    oidc_issuer: str | None = None
    oidc_sub: str | None = None
    #: The IAM identity STS confirmed (its ARN and unique id), for "aws_iam".
    aws_arn: str | None = None
    aws_user_id: str | None = None
    #: When the credential it used stops working (token or JWT), if known.
    expires: datetime | None = None
    #: When the proof it gave stops being accepted, in seconds since the
    #: epoch, if that is not ``expires``: an AWS-IAM signature's age limit.
    proof_until: float | None = None
    roles: tuple[str, ...] = ()
    grants: Grants = attrs.field(default=Grants(), eq=False, repr=False)
    #: Days before expiry from which the caller is warned.
    warning_days: int = 14

    def audit_identity(self) -> dict[str, Any]:
        """How the principal authenticated, for the audit trail (never a secret)."""
        identity: dict[str, Any] = {"method": self.method}
        if self.certificate is not None:
            identity["certificate_sha256"] = self.certificate.fingerprint_sha256
            identity["certificate_subject"] = self.certificate.subject
        if self.token_id is not None:
            identity["token_id"] = self.token_id
        if self.oidc_issuer is not None:
            identity["oidc_issuer"] = self.oidc_issuer
            identity["oidc_sub"] = self.oidc_sub
        if self.aws_arn is not None:
            identity["aws_arn"] = self.aws_arn
            identity["aws_user_id"] = self.aws_user_id
        return identity

    def proof_lapses(self) -> float | None:
        """
        When a verdict on this principal's proof must be reached again (seconds
        since the epoch): the earlier of ``expires`` and ``proof_until``.
        """
        ends = [t for t in (self.proof_until,
                            self.expires.timestamp() if self.expires is not None else None)
                if t is not None]
        return min(ends) if ends else None

    def expires_within(self, days: int, now: datetime) -> bool:
        return self.expires is not None and (self.expires - now).total_seconds() < days * 86400

    def describe(self, now: datetime | None = None) -> dict[str, Any]:
        """What ``whoami`` tells the caller about itself (no secrets)."""
        info: dict[str, Any] = {
            "principal": self.name, "authenticated_by": self.method,
            "roles": list(self.roles), "scopes": self.grants.scope_names,
        }
        if self.certificate is not None:
            info["certificate"] = {
                "subject": self.certificate.subject,
                "fingerprint_sha256": self.certificate.fingerprint_sha256,
                "not_after": self.certificate.not_after,
                "dns_names": list(self.certificate.dns_names),
                "uris": list(self.certificate.uris),
                "emails": list(self.certificate.emails),
            }
        if self.token_id is not None:
            info["token_id"] = self.token_id
        if self.oidc_issuer is not None:
            info["oidc_issuer"], info["oidc_sub"] = self.oidc_issuer, self.oidc_sub
        if self.aws_arn is not None:
            info["aws_arn"], info["aws_user_id"] = self.aws_arn, self.aws_user_id
        if self.expires is not None:
            now = now or datetime.now(timezone.utc)
            info["expires"] = iso_seconds(self.expires)
            info["expires_in_days"] = round((self.expires - now).total_seconds() / 86400, 2)
            if self.expires_within(self.warning_days, now):
                info["warning"] = (
                    f"this credential expires within {self.warning_days} days: rotate it"
                )
        return info
