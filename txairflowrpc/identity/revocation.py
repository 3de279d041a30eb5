"""
Client certificates their CA has revoked: ``tls.client_crl``, one or more
PEM certificate revocation lists, each signed by a CA of ``tls.client_ca``.

The TLS layer verifies a certificate's chain and dates; whether a CA on
that chain has since revoked the certificate below it is decided here,
when a request is authenticated, so that a revoked certificate is refused
with a 401 that says so (and a refusal on the audit trail), and so that a
reload bringing a new list reaches the connections already open: their
earlier verdicts end with the rules they were reached under.

A CA is known by its public key, not by its name: a list counts for the
certificates of the CA whose key signed it, along the chain OpenSSL
verified (`PeerCertificate.issued`), so that a name written in another
case or spacing (which OpenSSL's chain building accepts) changes nothing
(found by review).  Every link of the chain is checked: a root's list that
revokes an intermediate shuts out every certificate under it.

A list past its ``nextUpdate`` still revokes what it lists, and is warned
of (`Revocations.warnings`): a stale list is no reason to let a listed
certificate back in, nor, as OpenSSL's own CRL check would, to refuse every
client.  The file decides what is revoked, in every process that reads it
(each worker, one replaced included): a list older than the one in force,
a backup put back, is warned of loudly (`Revocations.older_than`), not
refused (found by review: a refusal kept by one process's memory let a
replaced worker disagree with its sibling, held back every other change of
the config, and let a list dated in the future block the CA's real ones).
Only full, direct lists are read: a delta or an indirect CRL is refused,
and so are two lists of one CA in the file (which is the one?).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

import attrs
from cryptography import x509
from cryptography.x509.oid import ExtensionOID

from ..core.timefmt import iso_seconds
from .certificates import PeerCertificate, spki_sha256

_BEGIN, _END = b"-----BEGIN X509 CRL-----", b"-----END X509 CRL-----"
#: The largest ``tls.client_crl`` read, in bytes: a list of a million
#: certificates is about 40 MB.
MAX_CRL_BYTES = 64 * 1024 * 1024
#: How far ahead of the clock a list's ``lastUpdate`` may be before it is warned of.
FUTURE_SLACK = timedelta(minutes=5)


@attrs.frozen
class RevocationList:
    """What one CRL in force says, for warnings, metrics and reloads."""

    #: Its CA's subject, as RFC 4514 text.
    issuer: str
    #: The SHA-256 of its CA's public key (what the list counts for).
    signer: str
    #: How many certificates it revokes.
    revoked: int
    #: When its CA issued it, and promised the next one (None: it did not say).
    last_update: datetime
    next_update: datetime | None


@attrs.frozen
class Revocations:
    """The certificates revoked by the lists of ``tls.client_crl``."""

    lists: tuple[RevocationList, ...]
    #: (the SHA-256 of the revoking CA's key, serial number) of every revoked certificate.
    _revoked: frozenset[tuple[str, int]] = attrs.field(repr=False)

    def revoked(self, cert: PeerCertificate) -> bool:
        """Whether a CA on ``cert``'s verified chain has revoked the certificate below it."""
        return any(link in self._revoked for link in cert.issued)

    def warnings(self, now: datetime) -> list[str]:
        """
        A warning for each list whose ``nextUpdate`` has passed at ``now``,
        and each one issued after it (the CA's clock, or a forged date).
        """
        found = []
        for crl in self.lists:
            if crl.next_update is not None and crl.next_update <= now:
                found.append(
                    f"tls.client_crl: the list of {crl.issuer[:200]} was due for renewal on "
                    f"{iso_seconds(crl.next_update)}; it still revokes the {crl.revoked} it "
                    f"lists, but knows nothing revoked since: fetch a new one")
            if crl.last_update > now + FUTURE_SLACK:
                found.append(
                    f"tls.client_crl: the list of {crl.issuer[:200]} says it was issued on "
                    f"{iso_seconds(crl.last_update)}, after now: is the CA's clock right?")
        return found

    def older_than(self, before: Revocations | None, now: datetime) -> list[str]:
        """
        A warning for each list older (by its ``lastUpdate``) than the list
        of the same CA in ``before``, the lists in force: a backup put back
        lets in again what was revoked since.  Not when the list replaced was
        dated ahead of ``now`` (found by review: the CA's real list after a
        future-dated one was called a backup, "put the newest back").
        """
        held = {crl.signer: crl for crl in before.lists} if before is not None else {}
        return [
            f"tls.client_crl: the list of {crl.issuer[:200]} now in force was issued on "
            f"{iso_seconds(crl.last_update)}, before the one it replaces "
            f"({iso_seconds(held[crl.signer].last_update)}): a certificate revoked in "
            f"between is let in again; if this is a backup, put the newest list back"
            for crl in self.lists
            if crl.signer in held and crl.last_update < held[crl.signer].last_update
            and held[crl.signer].last_update <= now + FUTURE_SLACK
        ]


def load_revocations(pem: bytes, cas: Sequence[x509.Certificate]) -> Revocations:
    """
    The revocations in ``pem``, one or more PEM CRLs, each signed by one of
    ``cas``; `ValueError` saying what is wrong otherwise (no list, something
    else in the file, a delta or indirect CRL, two lists of one CA, a list
    no CA given signed).
    """
    if len(pem) > MAX_CRL_BYTES:
        raise ValueError(f"is larger than {MAX_CRL_BYTES} bytes")
    lists: list[RevocationList] = []
    revoked: set[tuple[str, int]] = set()
    for index, block in enumerate(_blocks(pem), 1):
        try:
            crl = x509.load_pem_x509_crl(block)
        except ValueError:
            raise ValueError(f"CRL {index} cannot be read") from None
        issuer = crl.issuer.rfc4514_string()
        what = f"CRL {index} ({issuer[:200]})"
        _direct_and_full(crl, what)
        signers = [ca for ca in cas if ca.subject == crl.issuer and _signed_by(crl, ca)]
        if not signers:
            named = any(ca.subject == crl.issuer for ca in cas)
            raise ValueError(f"{what} is not signed by a CA of tls.client_ca"
                             + ("" if named else " (none has that name)"))
        signer = spki_sha256(signers[0])
        if any(other.signer == signer for other in lists):
            raise ValueError(f"{what} is a second list of the same CA: keep the newest")
        serials = {(signer, entry.serial_number) for entry in crl}
        revoked |= serials
        lists.append(RevocationList(issuer, signer, len(serials), crl.last_update_utc,
                                    crl.next_update_utc))
    return Revocations(tuple(lists), frozenset(revoked))


def _blocks(pem: bytes) -> list[bytes]:
    """
    The PEM blocks of ``pem``, in one pass (found by review: a regular
    expression searched to the end for each unclosed block, a time that
    grew with the square of the file's size); `ValueError` for anything
    else in it, or a block left open.
    """
    if _BEGIN not in pem:
        raise ValueError("holds no PEM CRL (-----BEGIN X509 CRL-----)")
    blocks, at = [], 0
    while (start := pem.find(_BEGIN, at)) >= 0:
        if pem[at:start].strip():
            raise ValueError("holds something besides PEM CRLs")
        end = pem.find(_END, start)
        if end < 0:
            raise ValueError("a CRL's -----BEGIN X509 CRL----- has no END line")
        at = end + len(_END)
        blocks.append(pem[start:at])
    if pem[at:].strip():
        raise ValueError("holds something besides PEM CRLs")
    return blocks


def _direct_and_full(crl: x509.CertificateRevocationList, what: str) -> None:
    """`ValueError` for a delta CRL, or an indirect one (entries of other CAs)."""
    try:
        crl.extensions.get_extension_for_oid(ExtensionOID.DELTA_CRL_INDICATOR)
    except x509.ExtensionNotFound:
        pass
    else:
        raise ValueError(f"{what} is a delta CRL: give the full one")
    try:
        point = crl.extensions.get_extension_for_oid(ExtensionOID.ISSUING_DISTRIBUTION_POINT)
    except x509.ExtensionNotFound:
        return
    if point.value.indirect_crl:
        raise ValueError(f"{what} is an indirect CRL: give each CA's own")


def _signed_by(crl: x509.CertificateRevocationList, ca: x509.Certificate) -> bool:
    try:
        return crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
    except (TypeError, ValueError):  # a key type that signs no CRL
        return False
