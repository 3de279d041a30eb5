"""
Client certificates their CA has revoked: ``tls.client_crl``, one or more
PEM certificate revocation lists, each signed by a CA of ``tls.client_ca``.

The TLS layer verifies a certificate's chain and dates; whether its CA has
since revoked it is decided here, when a request is authenticated, so that
a revoked certificate is refused with a 401 that says so (and a refusal on
the audit trail), and so that a reload bringing a new list reaches the
connections already open: their earlier verdicts end with the rules they
were reached under.

A list past its ``nextUpdate`` still revokes what it lists, and is warned
of (`Revocations.overdue`): a stale list is no reason to let a listed
certificate back in, nor, as OpenSSL's own CRL check would, to refuse every
client.  Only full lists are read: a delta CRL is refused, so that no one
mistakes it for the whole.  The leaf is checked, not its intermediates (an
intermediate is revoked by taking it out of ``tls.client_ca``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime

import attrs
from cryptography import x509
from cryptography.x509.oid import ExtensionOID

from ..core.timefmt import iso_seconds
from .certificates import PeerCertificate

_PEM_CRL = re.compile(
    rb"-----BEGIN X509 CRL-----\r?\n.+?\r?\n-----END X509 CRL-----", re.DOTALL)


@attrs.frozen
class RevocationList:
    """What one CRL in force says, for warnings and ``config check``."""

    #: Its CA's subject, as RFC 4514 text.
    issuer: str
    #: How many certificates it revokes.
    revoked: int
    #: When its CA promised the next one (None: it did not say).
    next_update: datetime | None


@attrs.frozen
class Revocations:
    """The certificates revoked by the lists of ``tls.client_crl``."""

    lists: tuple[RevocationList, ...]
    #: (issuer as RFC 4514 text, serial number) of every revoked certificate.
    _revoked: frozenset[tuple[str, int]] = attrs.field(repr=False)

    def revoked(self, cert: PeerCertificate) -> bool:
        """Whether ``cert``'s CA has revoked it."""
        return (cert.issuer, cert.serial) in self._revoked

    def overdue(self, now: datetime) -> list[str]:
        """A warning for each list whose ``nextUpdate`` has passed at ``now``."""
        return [
            f"tls.client_crl: the list of {crl.issuer[:200]} was due for renewal on "
            f"{iso_seconds(crl.next_update)}; it still revokes the {crl.revoked} it "
            f"lists, and a certificate revoked since is let in: fetch a new one"
            for crl in self.lists
            if crl.next_update is not None and crl.next_update <= now
        ]


def load_revocations(pem: bytes, cas: Sequence[x509.Certificate]) -> Revocations:
    """
    The revocations in ``pem``, one or more PEM CRLs, each signed by one of
    ``cas``; `ValueError` saying what is wrong otherwise (no list, something
    else in the file, a delta CRL, a list no CA given signed).
    """
    blocks = _PEM_CRL.findall(pem)
    if not blocks:
        raise ValueError("holds no PEM CRL (-----BEGIN X509 CRL-----)")
    if _PEM_CRL.sub(b"", pem).strip():
        raise ValueError("holds something besides PEM CRLs")
    lists, revoked = [], set()
    for index, block in enumerate(blocks, 1):
        try:
            crl = x509.load_pem_x509_crl(block)
        except ValueError:
            raise ValueError(f"CRL {index} cannot be read") from None
        issuer = crl.issuer.rfc4514_string()
        try:
            crl.extensions.get_extension_for_oid(ExtensionOID.DELTA_CRL_INDICATOR)
        except x509.ExtensionNotFound:
            pass
        else:
            raise ValueError(f"CRL {index} ({issuer[:200]}) is a delta CRL: give the full one")
        signers = [ca for ca in cas if ca.subject == crl.issuer]
        if not any(_signed_by(crl, ca) for ca in signers):
            raise ValueError(f"CRL {index} ({issuer[:200]}) is not signed by a CA of "
                             f"tls.client_ca" + ("" if signers else " (none has that name)"))
        serials = {(issuer, entry.serial_number) for entry in crl}
        revoked |= serials
        lists.append(RevocationList(issuer, len(serials), crl.next_update_utc))
    return Revocations(tuple(lists), frozenset(revoked))


def _signed_by(crl: x509.CertificateRevocationList, ca: x509.Certificate) -> bool:
    try:
        return crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
    except (TypeError, ValueError):  # a key type that signs no CRL
        return False
