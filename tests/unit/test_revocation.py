"""Client certificates their CA revoked: ``tls.client_crl``, read, checked and applied."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import attrs
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.internet.task import Clock

from txairflowrpc.config import ConfigError
from txairflowrpc.devstack.gatewayconf import core_config
from txairflowrpc.devstack.pki import ClientFiles, DevPKI
from txairflowrpc.identity.authenticate import Unauthenticated
from txairflowrpc.identity.certificates import PeerCertificate
from txairflowrpc.identity.revocation import load_revocations
from txairflowrpc.service.checked import build_authenticator, load_checked
from txairflowrpc.service.cli import main

from .test_access import run


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPKI:
    return DevPKI.create(tmp_path_factory.mktemp("pki"))


class Request:
    """
    A request over TLS with ``files``' certificate (or none), the chain the
    handshake verified (the leaf and ``pki``'s CA) and an Authorization.
    """

    def __init__(self, files: ClientFiles | None, authorization: str | None = None,
                 pki: DevPKI | None = None) -> None:
        self.transport = self
        self._files, self._auth, self._pki = files, authorization, pki

    def getPeerCertificate(self) -> object:
        return None if self._files is None else self

    def to_cryptography(self) -> x509.Certificate:
        assert self._files is not None
        return x509.load_pem_x509_certificate(self._files.cert.read_bytes())

    def getHandle(self) -> object:
        return self

    def get_verified_chain(self, *, as_cryptography: bool) -> list[x509.Certificate] | None:
        assert as_cryptography
        if self._files is None or self._pki is None:
            return None
        return [self.to_cryptography(), *cas(self._pki)]

    def getHeader(self, name: bytes) -> bytes | None:
        return self._auth.encode() if self._auth and name == b"authorization" else None


def peer(files: ClientFiles, pki: DevPKI | None = None) -> PeerCertificate:
    """``files``' certificate as the gateway sees it, its chain up to ``pki``'s CA."""
    leaf = x509.load_pem_x509_certificate(files.cert.read_bytes())
    return PeerCertificate.from_cryptography(leaf, [leaf, *cas(pki)] if pki else ())


def cas(*pkis: DevPKI) -> list[x509.Certificate]:
    return [x509.load_pem_x509_certificate(p.ca_file.read_bytes()) for p in pkis]


def test_a_listed_certificate_is_revoked_and_no_other(pki: DevPKI, tmp_path: Path) -> None:
    gone, kept = pki.client("gone-bot"), pki.client("kept-bot")
    crl = pki.write_crl(tmp_path / "crl.pem", (gone,))
    revocations = load_revocations(crl.read_bytes(), cas(pki))
    assert revocations.revoked(peer(gone, pki)) and not revocations.revoked(peer(kept, pki))
    (listed,) = revocations.lists
    assert listed.revoked == 1 and "txairflowrpc dev CA" in listed.issuer


def test_the_same_serial_from_another_ca_is_not_revoked(pki: DevPKI, tmp_path: Path) -> None:
    """A list names certificates by its own CA's key and serial: another CA's is another's."""
    gone = pki.client("gone-bot")
    revocations = load_revocations(pki.write_crl(tmp_path / "crl.pem", (gone,)).read_bytes(),
                                   cas(pki))
    mine = peer(gone, pki)
    (link,) = mine.issued
    theirs = attrs.evolve(mine, issued=(("ab" * 32, link[1]),))
    assert revocations.revoked(mine) and not revocations.revoked(theirs)


def ca_and_leaf(tmp_path: Path, *, issuer_as: str) -> tuple[x509.Certificate, ClientFiles, bytes]:
    """
    A CA named ``CN=Case CA,O=Org``, a leaf it signed whose issuer field says
    ``issuer_as`` (OpenSSL's chain building takes case and spacing as the
    same name), and the CA's list revoking that leaf.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name.from_rfc4514_string("CN=Case CA,O=Org")
    now = dt.datetime.now(dt.timezone.utc)
    ca = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
          .public_key(key.public_key()).serial_number(1)
          .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=9))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(key, hashes.SHA256()))
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder().subject_name(x509.Name.from_rfc4514_string("CN=etl-bot"))
            .issuer_name(x509.Name.from_rfc4514_string(issuer_as))
            .public_key(leaf_key.public_key()).serial_number(4242)
            .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=9))
            .sign(key, hashes.SHA256()))
    files = ClientFiles("case", tmp_path / "case.pem", tmp_path / "case.key")
    files.cert.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    crl = (x509.CertificateRevocationListBuilder().issuer_name(name)
           .last_update(now - dt.timedelta(hours=1)).next_update(now + dt.timedelta(days=1))
           .add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(4242)
                                    .revocation_date(now - dt.timedelta(hours=1)).build())
           .sign(key, hashes.SHA256()))
    return ca, files, crl.public_bytes(serialization.Encoding.PEM)


@pytest.mark.parametrize("issuer_as", ["CN=Case CA,O=Org", "CN=CASE CA,O=Org", "CN=Case  CA,O=Org"])
def test_a_ca_is_known_by_its_key_not_by_how_a_certificate_writes_its_name(
        tmp_path: Path, issuer_as: str) -> None:
    """Found by review: a leaf naming its CA in another case or spacing was let in."""
    ca, files, crl = ca_and_leaf(tmp_path, issuer_as=issuer_as)
    revocations = load_revocations(crl, [ca])
    leaf = x509.load_pem_x509_certificate(files.cert.read_bytes())
    assert revocations.revoked(PeerCertificate.from_cryptography(leaf, [leaf, ca]))


def test_a_root_that_revokes_an_intermediate_shuts_out_what_it_signed(tmp_path: Path) -> None:
    """Every link of the verified chain is checked, not only the leaf's."""
    import trustme

    root = trustme.CA()
    intermediate = root.create_child_ca()
    leaf = x509.load_pem_x509_certificate(
        intermediate.issue_cert("etl-bot").cert_chain_pems[0].bytes())
    inter_cert = x509.load_pem_x509_certificate(intermediate.cert_pem.bytes())
    root_cert = x509.load_pem_x509_certificate(root.cert_pem.bytes())
    key = serialization.load_pem_private_key(root.private_key_pem.bytes(), None)
    now = dt.datetime.now(dt.timezone.utc)
    crl = (x509.CertificateRevocationListBuilder().issuer_name(root_cert.subject)
           .last_update(now - dt.timedelta(hours=1)).next_update(now + dt.timedelta(days=1))
           .add_revoked_certificate(x509.RevokedCertificateBuilder()
                                    .serial_number(inter_cert.serial_number)
                                    .revocation_date(now - dt.timedelta(hours=1)).build())
           .sign(key, hashes.SHA256()))  # type: ignore[arg-type]
    revocations = load_revocations(crl.public_bytes(serialization.Encoding.PEM), [root_cert])
    chain = [leaf, inter_cert, root_cert]
    assert revocations.revoked(PeerCertificate.from_cryptography(leaf, chain))
    # Another intermediate's certificates are not touched.
    other = root.create_child_ca()
    their_leaf = x509.load_pem_x509_certificate(other.issue_cert("x").cert_chain_pems[0].bytes())
    their_chain = [their_leaf, x509.load_pem_x509_certificate(other.cert_pem.bytes()), root_cert]
    assert not revocations.revoked(PeerCertificate.from_cryptography(their_leaf, their_chain))


def test_lists_of_two_cas_in_one_file(pki: DevPKI, tmp_path: Path) -> None:
    other = DevPKI.create(tmp_path / "other")
    mine, theirs = pki.client("mine-bot"), other.client("their-bot")
    both = (pki.write_crl(tmp_path / "a.pem", (mine,)).read_bytes()
            + other.write_crl(tmp_path / "b.pem", (theirs,)).read_bytes())
    revocations = load_revocations(both, cas(pki, other))
    assert revocations.revoked(peer(mine, pki)) and revocations.revoked(peer(theirs, other))
    assert not revocations.revoked(peer(pki.client("other-bot"), pki))
    assert len(revocations.lists) == 2
    with pytest.raises(ValueError, match="CRL 2 .* is a second list of the same CA"):
        load_revocations(pki.write_crl(tmp_path / "c.pem").read_bytes() * 2, cas(pki))


def forged(pki: DevPKI) -> bytes:
    """A list in the dev CA's name, signed by another key."""
    issuer = x509.load_pem_x509_certificate(pki.ca_file.read_bytes()).subject
    now = dt.datetime.now(dt.timezone.utc)
    crl = (x509.CertificateRevocationListBuilder().issuer_name(issuer).last_update(now)
           .next_update(now + dt.timedelta(days=1))
           .sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256()))
    return crl.public_bytes(serialization.Encoding.PEM)


def test_unusable_lists_are_refused_saying_why(pki: DevPKI, tmp_path: Path) -> None:
    good = pki.write_crl(tmp_path / "crl.pem").read_bytes()
    other = DevPKI.create(tmp_path / "other")
    for pem, why in [
        (b"", "holds no PEM CRL"),
        (pki.ca_file.read_bytes(), "holds no PEM CRL"),
        (good + b"\ngarbage\n", "holds something besides PEM CRLs"),
        (unreadable(good), "CRL 1 cannot be read"),
        (good + b"-----BEGIN X509 CRL-----\nAAAA\n", "has no END line"),
        (forged(pki), "is not signed by a CA of tls.client_ca"),
        (other.write_crl(tmp_path / "o.pem").read_bytes(), "(none has that name)"),
    ]:
        with pytest.raises(ValueError, match=re.escape(why)):
            load_revocations(pem, cas(pki))


def unreadable(pem: bytes) -> bytes:
    """``pem`` with its DER's first line overwritten: PEM still, no CRL."""
    lines = pem.splitlines()
    lines[1] = b"A" * len(lines[1])
    return b"\n".join(lines) + b"\n"


def test_a_malformed_file_is_refused_in_one_pass() -> None:
    """
    Found by review: each unclosed BEGIN line was searched to the end of the
    file again (216 KB held the reactor 14 s); a megabyte of them would take
    minutes that way.
    """
    with pytest.raises(ValueError, match="has no END line"):
        load_revocations(b"-----BEGIN X509 CRL-----\nA\n" * 40_000, [])


def test_an_indirect_list_is_refused(pki: DevPKI) -> None:
    key = serialization.load_pem_private_key(pki.ca.private_key_pem.bytes(), None)
    issuer = x509.load_pem_x509_certificate(pki.ca_file.read_bytes()).subject
    now = dt.datetime.now(dt.timezone.utc)
    point = x509.IssuingDistributionPoint(
        full_name=None, relative_name=None, only_contains_user_certs=False,
        only_contains_ca_certs=False, only_some_reasons=None, indirect_crl=True,
        only_contains_attribute_certs=False)
    crl = (x509.CertificateRevocationListBuilder().issuer_name(issuer).last_update(now)
           .next_update(now + dt.timedelta(days=1)).add_extension(point, critical=True)
           .sign(key, hashes.SHA256()))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="is an indirect CRL"):
        load_revocations(crl.public_bytes(serialization.Encoding.PEM), cas(pki))


def test_an_older_list_of_a_ca_is_told_apart(pki: DevPKI, tmp_path: Path) -> None:
    """Found by review: a backup of the list put back let the certificates revoked since in."""
    now = dt.datetime.now(dt.timezone.utc)
    old = load_revocations(pki.write_crl(tmp_path / "a.pem", next_update=now - dt.timedelta(
        days=2)).read_bytes(), cas(pki))
    new = load_revocations(pki.write_crl(tmp_path / "b.pem").read_bytes(), cas(pki))
    (warning,) = old.older_than(new, now)
    assert "before the one it replaces" in warning and "let in again" in warning
    assert new.older_than(old, now) == [] and new.older_than(None, now) == []
    assert new.older_than(new, now) == []
    # The list replaced was dated ahead of the clock (warned of then): the CA's
    # real list after it is no backup (found by review).
    (issued,) = [crl.last_update for crl in new.lists]
    assert old.older_than(new, issued - dt.timedelta(hours=1)) == []


def test_a_list_issued_in_the_future_is_warned_of(pki: DevPKI, tmp_path: Path) -> None:
    """Found by review: a list dated ahead (the CA's clock) was taken without a word."""
    listed = load_revocations(pki.write_crl(tmp_path / "a.pem").read_bytes(), cas(pki))
    (issued,) = [crl.last_update for crl in listed.lists]
    assert listed.warnings(issued + dt.timedelta(minutes=1)) == []
    (warning,) = listed.warnings(issued - dt.timedelta(hours=1))
    assert "after now: is the CA's clock right?" in warning


def test_a_certificate_trusted_as_it_is_is_not_refused_for_its_short_chain(
        pki: DevPKI, tmp_path: Path) -> None:
    """
    Found by review: a self-signed client certificate put in tls.client_ca
    verifies as a chain of one; with a list configured it was refused as if
    its chain were unknown.  No CA above it can revoke it.
    """
    revocations = load_revocations(pki.write_crl(tmp_path / "a.pem").read_bytes(), cas(pki))
    alone = cas(pki)[0]
    trusted = PeerCertificate.from_cryptography(alone, [alone])
    assert trusted.chain_known and trusted.issued == ()
    assert not revocations.revoked(trusted)
    assert not PeerCertificate.from_cryptography(alone).chain_known


def test_a_delta_list_is_refused(pki: DevPKI, tmp_path: Path) -> None:
    key = serialization.load_pem_private_key(pki.ca.private_key_pem.bytes(), None)
    issuer = x509.load_pem_x509_certificate(pki.ca_file.read_bytes()).subject
    now = dt.datetime.now(dt.timezone.utc)
    delta = (x509.CertificateRevocationListBuilder().issuer_name(issuer).last_update(now)
             .next_update(now + dt.timedelta(days=1))
             .add_extension(x509.DeltaCRLIndicator(1), critical=True)
             .sign(key, hashes.SHA256()))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="is a delta CRL: give the full one"):
        load_revocations(delta.public_bytes(serialization.Encoding.PEM), cas(pki))


def test_a_list_past_its_next_update_still_revokes_and_is_warned_of(
        pki: DevPKI, tmp_path: Path) -> None:
    gone = pki.client("gone-bot")
    due = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1)
    revocations = load_revocations(
        pki.write_crl(tmp_path / "crl.pem", (gone,), next_update=due).read_bytes(), cas(pki))
    assert revocations.revoked(peer(gone, pki))
    (warning,) = revocations.warnings(dt.datetime.now(dt.timezone.utc))
    assert warning.startswith("tls.client_crl: the list of ") and "was due for renewal on" in warning
    assert "it still revokes the 1 it lists, but knows nothing revoked since" in warning
    assert revocations.warnings(due - dt.timedelta(seconds=1)) == []


def write_config(tmp_path: Path, pki: DevPKI, crl: str | None) -> Path:
    (tmp_path / "pw").write_text("pw\n")
    text = core_config(
        port=8443, tls=pki.directory, airflow="http://127.0.0.1:8080",
        password_file=tmp_path / "pw", audit=tmp_path / "audit.jsonl",
    )
    if crl is not None:
        text = text.replace('client_ca = "', f'client_crl = "{crl}"\nclient_ca = "', 1)
    text += ('[auth]\nclient_certificate = "optional"\n'
             f'token_store = "{tmp_path}/tokens.json"\n'
             '[principals.etl-bot]\nroles = ["ci"]\ncert_cn = ["etl-bot"]\n'
             '[roles.ci]\nscopes = ["dags:read"]\n')
    path = tmp_path / "airflowrpc.toml"
    path.write_text(text)
    return path


def test_the_gateway_refuses_a_revoked_certificate_even_beside_a_token(
        pki: DevPKI, tmp_path: Path) -> None:
    from txairflowrpc.identity import tokens

    gone, kept = pki.client("etl-bot"), ClientFiles("etl-bot", tmp_path / "k.pem", tmp_path / "k.key")
    pki.ca.issue_cert("etl-bot", common_name="etl-bot").cert_chain_pems[0].write_to_path(
        str(kept.cert))
    crl = pki.write_crl(tmp_path / "crl.pem", (gone,))
    config = write_config(tmp_path, pki, str(crl))
    _, token = tokens.create(tmp_path / "tokens.json", "etl-bot", None, 9,
                             dt.datetime.now(dt.timezone.utc))
    checked = load_checked(config)
    assert checked.config.tls.client_crl == crl
    auth = build_authenticator(checked, http=None, clock=Clock())
    with pytest.raises(Unauthenticated, match="the client certificate has been revoked by its CA"):
        run(auth.authenticate(Request(gone, pki=pki)))
    with pytest.raises(Unauthenticated, match="revoked by its CA"):
        run(auth.authenticate(Request(gone, f"Bearer {token}", pki=pki)))
    assert run(auth.authenticate(Request(kept, pki=pki))).name == "etl-bot"
    # With no verified chain to check (a transport that cannot say), nobody is let in.
    with pytest.raises(Unauthenticated, match="its revocation cannot be checked"):
        run(auth.authenticate(Request(kept)))
    assert run(auth.authenticate(Request(None, f"Bearer {token}"))).name == "etl-bot"
    # Without the list the same certificate is let in: the list decides.
    unlisted = build_authenticator(load_checked(write_config(tmp_path, pki, None)),
                                   http=None, clock=Clock())
    assert run(unlisted.authenticate(Request(gone, pki=pki))).name == "etl-bot"


def test_a_bad_list_is_a_config_error_naming_the_key(pki: DevPKI, tmp_path: Path) -> None:
    (tmp_path / "bad.pem").write_bytes(forged(pki))
    for crl, why in [(str(tmp_path / "bad.pem"), "is not signed by a CA of tls.client_ca"),
                     (str(tmp_path / "missing.pem"), "cannot read")]:
        with pytest.raises(ConfigError) as e:
            load_checked(write_config(tmp_path, pki, crl))
        assert e.value.key == "tls.client_crl" and why in str(e.value)


def test_config_check_warns_of_a_list_past_its_next_update(
        pki: DevPKI, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    due = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1)
    stale = pki.write_crl(tmp_path / "crl.pem", next_update=due)
    config = write_config(tmp_path, pki, str(stale))
    assert main(["config", "check", "--config", str(config)]) == 0  # a warning, not an error
    assert "warning: tls.client_crl: the list of " in capsys.readouterr().err
    pki.write_crl(stale)
    assert main(["config", "check", "--config", str(config)]) == 0
    assert "tls.client_crl" not in capsys.readouterr().err
