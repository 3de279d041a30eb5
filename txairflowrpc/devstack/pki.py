"""
A development PKI: a CA, a server certificate for localhost and client
certificates, written as PEM files.  Used by the tests and by ``make run``.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import attrs
import trustme


@attrs.frozen
class ClientFiles:
    name: str
    cert: Path
    key: Path


@attrs.frozen
class DevPKI:
    directory: Path
    ca: trustme.CA

    @classmethod
    def create(cls, directory: Path) -> "DevPKI":
        directory.mkdir(parents=True, exist_ok=True)
        ca = trustme.CA(organization_name="txairflowrpc dev CA")
        ca.cert_pem.write_to_path(str(directory / "ca.pem"))
        server = ca.issue_cert("localhost", "127.0.0.1", common_name="localhost")
        server.cert_chain_pems[0].write_to_path(str(directory / "server.pem"))
        for extra in server.cert_chain_pems[1:]:
            extra.write_to_path(str(directory / "server.pem"), append=True)
        server.private_key_pem.write_to_path(str(directory / "server.key"))
        (directory / "server.key").chmod(0o600)
        return cls(directory, ca)

    @property
    def ca_file(self) -> Path:
        return self.directory / "ca.pem"

    def client(
        self, name: str, *, not_after: datetime.datetime | None = None
    ) -> ClientFiles:
        """A client certificate with CN ``name`` (and ``name`` as DNS SAN)."""
        cert = self.ca.issue_cert(
            name, common_name=name,
            **({"not_after": not_after} if not_after is not None else {}),
        )
        files = ClientFiles(
            name, self.directory / f"{name}.pem", self.directory / f"{name}.key"
        )
        cert.cert_chain_pems[0].write_to_path(str(files.cert))
        cert.private_key_pem.write_to_path(str(files.key))
        files.key.chmod(0o600)
        return files

    def write_crl(
        self, path: Path, revoked: tuple[ClientFiles, ...] = (), *,
        next_update: datetime.datetime | None = None,
    ) -> Path:
        """
        The CA's certificate revocation list (PEM) at ``path``, revoking the
        certificates of ``revoked``; due for renewal at ``next_update``
        (default: in a week).
        """
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization

        key = serialization.load_pem_private_key(self.ca.private_key_pem.bytes(), None)
        issuer = x509.load_pem_x509_certificate(self.ca.cert_pem.bytes()).subject
        now = datetime.datetime.now(datetime.timezone.utc)
        due = next_update or now + datetime.timedelta(days=7)
        builder = (x509.CertificateRevocationListBuilder().issuer_name(issuer)
                   .last_update(min(now, due) - datetime.timedelta(days=1))
                   .next_update(due))
        for files in revoked:
            serial = x509.load_pem_x509_certificate(files.cert.read_bytes()).serial_number
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial)
                .revocation_date(now - datetime.timedelta(minutes=1)).build())
        crl = builder.sign(key, hashes.SHA256())  # type: ignore[arg-type]
        path.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
        return path
