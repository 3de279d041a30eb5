"""Authentication and authorisation, in memory: who gets in, and what they may do."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from txairflowrpc import config as config_module
from txairflowrpc.devstack.pki import DevPKI
from txairflowrpc.identity import tokens
from txairflowrpc.identity.authenticate import Authenticator, Unauthenticated
from txairflowrpc.identity.certificates import PeerCertificate
from txairflowrpc.identity.oidc import JWKSet
from txairflowrpc.identity.scopes import build_roles
from txairflowrpc.service.checked import load_checked

from ..jwt_helpers import Signer, jwks

NOW = 1_800_000_000

ACCESS = """
[listen]
port = 8443
[tls]
certificate = "tls/server.pem"
private_key = "tls/server.key"
client_ca = "tls/ca.pem"
[airflow]
base_url = "http://127.0.0.1:8080"
username = "gateway"
password_file = "pw"
[audit]
path = "audit.jsonl"
[auth]
client_certificate = "{mode}"
require_token = {require}
token_store = "tokens.json"
[roles.ci]
scopes = ["dags:read:etl_*", "runs:trigger:etl_*", "runs:read:etl_*"]
[roles.ci.conf."etl_*"]
type = "object"
additionalProperties = false
required = ["day"]
properties.day = {{ type = "string", pattern = "^[0-9]{{4}}-[0-9]{{2}}-[0-9]{{2}}$" }}
properties.mode = {{ enum = ["full", "delta"] }}
[roles.auditor]
scopes = ["dags:read", "runs:read", "logs:read"]
[roles.free]
scopes = ["runs:trigger:sandbox_*"]
[principals.ci-bot]
roles = ["ci"]
cert_dns = ["ci-bot.example.com"]
[principals.auditor]
roles = ["auditor"]
cert_email = ["auditor@example.com"]
[principals.pinned]
roles = ["auditor"]
cert_sha256 = ["{sha}"]
[principals."corp/alice"]
roles = ["auditor"]
[oidc.corp]
issuer = "https://idp.example.com"
audience = "airflowrpc"
jwks_file = "jwks.json"
claim_roles = {{ "airflow-ci" = ["ci"] }}
"""

SIGNER = Signer("ES256", "ec1")


def cert(**kw: Any) -> PeerCertificate:
    values = dict(subject="CN=x", common_name="x", dns_names=(), uris=(), emails=(),
                  fingerprint_sha256="ab" * 32, spki_sha256="cd" * 32, not_after="2030")
    values.update(kw)
    return PeerCertificate(**values)


class FakeRequest:
    def __init__(self, peer: PeerCertificate | None, authorization: str | None = None) -> None:
        self.transport = self
        self._peer = peer
        self._auth = authorization

    def getPeerCertificate(self) -> Any:
        return None if self._peer is None else self

    def to_cryptography(self) -> Any:
        return self._peer

    def getHeader(self, name: bytes) -> bytes | None:
        return self._auth.encode() if self._auth is not None and name == b"authorization" else None


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPKI:
    return DevPKI.create(tmp_path_factory.mktemp("pki"))


def load(tmp: Path, pki: DevPKI, mode: str = "required", require: bool = False,
         extra: str = "") -> config_module.Config:
    if not (tmp / "tls").exists():
        (tmp / "tls").symlink_to(pki.directory)
    (tmp / "pw").write_text("pw\n")
    (tmp / "jwks.json").write_text(json.dumps(jwks(SIGNER)))
    path = tmp / "airflowrpc.toml"
    path.write_text(ACCESS.format(mode=mode, require=str(require).lower(), sha="ee" * 32) + extra)
    return load_checked(path).config


def authenticator(cfg: config_module.Config, clock: Clock) -> Authenticator:
    store = tokens.TokenStore.load(cfg.access.auth.token_store)
    keys = {n: JWKSet(p, http=None, clock=clock) for n, p in cfg.access.oidc.items()}
    return Authenticator(cfg.access, roles=build_roles(cfg.access), tokens_store=store,
                         jwks=keys, clock=clock)


@pytest.fixture(autouse=True)
def _patch_peer(monkeypatch: pytest.MonkeyPatch) -> None:
    # FakeRequest hands out PeerCertificate values directly.
    monkeypatch.setattr("txairflowrpc.identity.authenticate.peer_certificate",
                        lambda transport: transport._peer)


def run(d: Deferred[Any]) -> Any:
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "not synchronous"
    if isinstance(results[0], BaseException) or hasattr(results[0], "raiseException"):
        results[0].raiseException()
    return results[0]


def basic(name: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{name}:{secret}".encode()).decode()


class TestCertificates:
    def test_certificates_map_by_san_email_and_fingerprint(self, tmp_path: Path, pki: DevPKI) -> None:
        auth = authenticator(load(tmp_path, pki), Clock())
        assert run(auth.authenticate(FakeRequest(cert(dns_names=("ci-bot.example.com",))))).name == "ci-bot"
        assert run(auth.authenticate(FakeRequest(cert(emails=("auditor@example.com",))))).name == "auditor"
        assert run(auth.authenticate(FakeRequest(cert(fingerprint_sha256="ee" * 32)))).name == "pinned"

    def test_a_fingerprint_in_upper_case_or_as_openssl_prints_it_matches(
            self, tmp_path: Path, pki: DevPKI) -> None:
        """
        Found by review: ``cert_sha256`` in upper case or OpenSSL's
        ``0B:82:...`` loaded but matched no certificate (compared as given).
        """
        from cryptography import x509

        files = pki.client("fp-bot")
        peer = PeerCertificate.from_cryptography(
            x509.load_pem_x509_certificate(files.cert.read_bytes()))

        def openssl(hex_digits: str) -> str:  # `openssl x509 -fingerprint -sha256`
            return ":".join(hex_digits[i:i + 2] for i in range(0, 64, 2)).upper()

        for key, value in [("cert_sha256", peer.fingerprint_sha256.upper()),
                           ("cert_sha256", openssl(peer.fingerprint_sha256)),
                           ("cert_spki_sha256", openssl(peer.spki_sha256))]:
            extra = f'\n[principals.fp]\nroles = ["auditor"]\n{key} = ["{value}"]\n'
            cfg = load(tmp_path, pki, extra=extra)
            stored = getattr(cfg.access.principals["fp"], key)
            assert stored == (value.replace(":", "").lower(),)
            auth = authenticator(cfg, Clock())
            assert run(auth.authenticate(FakeRequest(peer))).name == "fp", (key, value)

    def test_a_verified_certificate_of_nobody_is_refused(self, tmp_path: Path, pki: DevPKI) -> None:
        auth = authenticator(load(tmp_path, pki), Clock())
        with pytest.raises(Unauthenticated, match="matches no principal"):
            run(auth.authenticate(FakeRequest(cert(dns_names=("stranger",)))))

    def test_a_certificate_naming_two_principals_is_refused(self, tmp_path: Path,
                                                            pki: DevPKI) -> None:
        """By different keys (a SAN of one, a CN of another): refused, not the first taken."""
        extra = '\n[principals.other]\nroles = ["auditor"]\ncert_cn = ["shared-name"]\n'
        auth = authenticator(load(tmp_path, pki, extra=extra), Clock())
        both = cert(common_name="shared-name", dns_names=("ci-bot.example.com",))
        with pytest.raises(Unauthenticated, match="more than one principal"):
            run(auth.authenticate(FakeRequest(both)))

    def test_a_certificate_past_its_end_is_refused_and_its_verdict_lapses(
            self, tmp_path: Path, pki: DevPKI) -> None:
        """
        From the pre-auth review: a keep-alive connection kept working past
        its certificate's notAfter (the handshake had checked the dates).
        """
        clock = Clock()
        clock.advance(NOW)
        auth = authenticator(load(tmp_path, pki), clock)
        mine = cert(dns_names=("ci-bot.example.com",), not_after_seconds=NOW + 60)
        principal = run(auth.authenticate(FakeRequest(mine)))
        assert principal.proof_lapses() == NOW + 60  # a connection's verdict ends with it
        clock.advance(60)
        with pytest.raises(Unauthenticated, match="client certificate has expired"):
            run(auth.authenticate(FakeRequest(mine)))

    def test_required_certificate(self, tmp_path: Path, pki: DevPKI) -> None:
        cfg = load(tmp_path, pki)
        _, token = tokens.create(cfg.access.auth.token_store, "ci-bot", None, 90, datetime.now(timezone.utc))
        auth = authenticator(cfg, Clock())
        with pytest.raises(Unauthenticated, match="client certificate is required"):
            run(auth.authenticate(FakeRequest(None, f"Bearer {token}")))


class TestTokens:
    def setup(self, tmp_path: Path, pki: DevPKI, **kw: Any) -> tuple[Authenticator, str, Clock]:
        cfg = load(tmp_path, pki, **kw)
        clock = Clock()
        clock.advance(NOW)
        record, token = tokens.create(cfg.access.auth.token_store, "ci-bot", None, 90,
                                      datetime.fromtimestamp(NOW, timezone.utc))
        return authenticator(cfg, clock), token, clock

    def test_bearer_and_basic(self, tmp_path: Path, pki: DevPKI) -> None:
        auth, token, _ = self.setup(tmp_path, pki, mode="optional")
        p = run(auth.authenticate(FakeRequest(None, f"Bearer {token}")))
        assert (p.name, p.method, p.roles) == ("ci-bot", "token", ("ci",))
        assert p.token_id and p.audit_identity()["token_id"] == p.token_id
        assert run(auth.authenticate(FakeRequest(None, basic("ci-bot", token)))).name == "ci-bot"
        with pytest.raises(Unauthenticated, match="not the token's principal"):
            run(auth.authenticate(FakeRequest(None, basic("auditor", token))))

    def test_wrong_expired_and_foreign_credentials(self, tmp_path: Path, pki: DevPKI) -> None:
        auth, token, clock = self.setup(tmp_path, pki, mode="optional")
        for header, reason in [
            ("Bearer arpc_garbage", "malformed token"),
            (f"Bearer {tokens.mint()[1]}", "unknown token"),
            ("Bearer hello", "neither a gateway token nor a JWT"),
            ("Digest x", "unsupported Authorization scheme"),
            ("Basic !!!", "malformed basic"),
            (None, "no credentials"),
        ]:
            with pytest.raises(Unauthenticated, match=reason):
                run(auth.authenticate(FakeRequest(None, header)))
        clock.advance(90 * 86400)
        with pytest.raises(Unauthenticated, match="expired"):
            run(auth.authenticate(FakeRequest(None, f"Bearer {token}")))

    def test_both_required_and_must_agree(self, tmp_path: Path, pki: DevPKI) -> None:
        auth, token, _ = self.setup(tmp_path, pki, require=True)
        ci_cert = cert(dns_names=("ci-bot.example.com",))
        with pytest.raises(Unauthenticated, match="required as well"):
            run(auth.authenticate(FakeRequest(ci_cert)))
        p = run(auth.authenticate(FakeRequest(ci_cert, f"Bearer {token}")))
        assert p.method == "client_certificate+token" and p.certificate is not None
        with pytest.raises(Unauthenticated, match="different principals"):
            run(auth.authenticate(FakeRequest(cert(emails=("auditor@example.com",)),
                                              f"Bearer {token}")))

    def test_expiry_warning(self, tmp_path: Path, pki: DevPKI) -> None:
        auth, token, clock = self.setup(tmp_path, pki, mode="optional")
        p = run(auth.authenticate(FakeRequest(None, f"Bearer {token}")))
        now = datetime.fromtimestamp(clock.seconds(), timezone.utc)
        assert "warning" not in p.describe(now)
        clock.advance(80 * 86400)
        later = datetime.fromtimestamp(clock.seconds(), timezone.utc)
        info = p.describe(later)
        assert info["expires_in_days"] == 10.0 and "expires within 14 days" in info["warning"]


class TestTokenRoles:
    def test_a_token_never_has_more_than_its_principal(self, tmp_path: Path, pki: DevPKI) -> None:
        cfg = load(tmp_path, pki, mode="optional")
        _, token = tokens.create(cfg.access.auth.token_store, "ci-bot", ("ci", "auditor"), 90,
                                 datetime.now(timezone.utc))  # as if the store were edited
        principal = run(authenticator(cfg, Clock()).authenticate(
            FakeRequest(None, f"Bearer {token}")))
        assert principal.roles == ("ci",)
        assert not principal.grants.allows("logs:read", "etl_orders")  # auditor's, not ci-bot's


class TestOIDC:
    def test_jwt_principal_and_roles(self, tmp_path: Path, pki: DevPKI) -> None:
        clock = Clock()
        clock.advance(NOW)
        auth = authenticator(load(tmp_path, pki, mode="optional"), clock)
        token = SIGNER.sign({"iss": "https://idp.example.com", "aud": "airflowrpc",
                             "sub": "alice", "exp": NOW + 60, "scope": "airflow-ci"})
        p = run(auth.authenticate(FakeRequest(None, f"Bearer {token}")))
        assert (p.name, p.method, p.roles) == ("corp/alice", "oidc", ("ci", "auditor"))
        me = p.describe()
        assert (me["oidc_issuer"], me["oidc_sub"]) == ("https://idp.example.com", "alice")
        other = Signer("ES256", "ec1").sign({"iss": "https://idp.example.com",
                                              "aud": "airflowrpc", "sub": "alice",
                                              "exp": NOW + 60})
        with pytest.raises(Unauthenticated, match="bad signature"):
            run(auth.authenticate(FakeRequest(None, f"Bearer {other}")))
        evil = SIGNER.sign({"iss": "https://evil", "aud": "airflowrpc", "sub": "x",
                            "exp": NOW + 60})
        with pytest.raises(Unauthenticated, match="unknown issuer"):
            run(auth.authenticate(FakeRequest(None, f"Bearer {evil}")))
        # Found by review: a token that is no JWT was "from an unknown issuer" too.
        no_alg = ".".join(part if i else "eyJ0eXAiOiJKV1QifQ"  # {"typ":"JWT"}: no alg
                          for i, part in enumerate(token.split(".")))
        with pytest.raises(Unauthenticated, match="JWT refused: malformed JWT"):
            run(auth.authenticate(FakeRequest(None, f"Bearer {no_alg}")))

    def test_a_subject_with_no_role_and_no_entry_is_refused(self, tmp_path: Path,
                                                           pki: DevPKI) -> None:
        """
        Found by review: any subject the issuer signed for the audience got in
        (ping, whoami, a rate budget and records of its own); a CI provider
        signs for whoever asks.  Deny by default, as for certificates.
        """
        clock = Clock()
        clock.advance(NOW)
        auth = authenticator(load(tmp_path, pki, mode="optional"), clock)
        token = SIGNER.sign({"iss": "https://idp.example.com", "aud": "airflowrpc",
                             "sub": "stranger", "exp": NOW + 60, "scope": "openid"})
        with pytest.raises(Unauthenticated, match="no caller here") as e:
            run(auth.authenticate(FakeRequest(None, f"Bearer {token}")))
        assert e.value.claimed == {"oidc_issuer": "https://idp.example.com",
                                   "oidc_sub": "stranger"}

    @pytest.mark.parametrize("header,changes", [
        ({"kid": ["ec1"]}, {}),
        ({"kid": {"ec1": 1}}, {}),
        ({}, {"exp": float("nan")}),
        ({}, {"exp": float("inf")}),
        ({}, {"exp": 10**400}),
        ({}, {"nbf": "soon"}),
        ({"crit": ["exp"], "exp": NOW}, {}),
    ])
    def test_a_malformed_jwt_is_a_clean_401(self, tmp_path: Path, pki: DevPKI,
                                           header: dict[str, Any], changes: dict[str, Any]) -> None:
        # Before: each was a TypeError or an OverflowError (HTTP 500 and a
        # traceback in the log), or got in.
        clock = Clock()
        clock.advance(NOW)
        auth = authenticator(load(tmp_path, pki, mode="optional"), clock)
        token = SIGNER.sign({"iss": "https://idp.example.com", "aud": "airflowrpc",
                             "sub": "alice", "exp": NOW + 60, **changes}, header=header)
        with pytest.raises(Unauthenticated, match="JWT refused"):
            run(auth.authenticate(FakeRequest(None, f"Bearer {token}")))


class TestConfig:
    @pytest.mark.parametrize("extra,key,words", [
        ('\n[roles.bad]\nscopes = ["runs:delete"]\n', "roles.bad.scopes", "unknown scope"),
        ('\n[principals.x]\nroles = ["nope"]\n', "principals.x.roles", "unknown role"),
        ('\n[roles.bad2]\nconf."x" = { type = "nonsense" }\n', "roles.bad2.conf.x",
         "not a valid JSON Schema"),
        # Found by review: a misspelt keyword made the rule check nothing.
        ('\n[roles.bad3]\nconf."x" = { type = "object", additionalProperites = false }\n',
         "roles.bad3.conf.x", "unknown JSON Schema keyword 'additionalProperites'"),
        ('\n[principals.twin]\nroles = []\ncert_dns = ["CI-bot.example.com"]\n',
         "principals.twin.cert_dns", "maps principal 'ci-bot' too"),
        # Found by review: a fingerprint was compared as given; now normalised
        # first, so one written another way is the same certificate.
        ('\n[principals.twin]\nroles = []\ncert_sha256 = ["' + ":".join(["EE"] * 32) + '"]\n',
         "principals.twin.cert_sha256", "maps principal 'pinned' too"),
        ('\n[principals.x]\nroles = []\ncert_sha256 = ["SHA256 Fingerprint=' + ":".join(["EE"] * 32)
         + '"]\n', "principals.x.cert_sha256", "is not a SHA-256 (64 hex digits, or 32 pairs"),
        ('\n[principals.x]\nroles = []\ncert_sha256 = ["' + "e" * 63 + '"]\n',
         "principals.x.cert_sha256", "is not a SHA-256"),
        ('\n[principals.x]\nroles = []\ncert_sha256 = ["' + "\uff45" * 64 + '"]\n',
         "principals.x.cert_sha256", "is not a SHA-256"),
        # A key pin in base64 (as HPKP wrote it) never matched either.
        ('\n[principals.x]\nroles = []\ncert_spki_sha256 = ["' + "A" * 43 + '="]\n',
         "principals.x.cert_spki_sha256", "is not a SHA-256"),
        # Found by review: \d in a conf rule's pattern took any script's digits.
        ('\n[roles.bad4]\nconf."x" = { properties.d = { pattern = \'(?u)\\A\\d+\\Z\' } }\n',
         "roles.bad4.conf.x", "is not a Python regular expression with ASCII classes"),
        # A token names its issuer: only the first of two such providers would ever be asked.
        ('\n[oidc.twin]\nissuer = "https://idp.example.com"\naudience = "other"\n'
         'jwks_file = "jwks.json"\n', "oidc.twin.issuer", "also oidc.corp's issuer"),
        # Found by review: "corp/eu" + sub "alice" and "corp" + sub "eu/alice"
        # were one caller, "corp/eu/alice".
        ('\n[oidc."corp/eu"]\nissuer = "https://eu.idp.example.com"\naudience = "a"\n'
         'jwks_file = "jwks.json"\n', "oidc.corp/eu", "letters, digits"),
        # Found by review: a name is matched whole in a run's note; one with a
        # line break never recognised its own runs, two sharing their first
        # 400 characters owned each other's.
        ('\n[principals."a\\nb"]\nroles = []\n', "principals", "'a\\nb': a principal's name "
         "is 1 to 255 printable characters"),
        (f'\n[principals.{"p" * 256}]\nroles = []\n', "principals", "1 to 255 printable"),
        (f'\n[principals."corp/{"x" * 256}"]\nroles = []\n', "principals", "1 to 255"),
        ('\n[principals."corp/"]\nroles = []\n', "principals", "1 to 255"),
        ('\n[principals."crop/alice"]\nroles = []\n', "principals",
         "a name with '/' is an OIDC caller's, PROVIDER/sub, and there is no [oidc.crop]"),
    ])
    def test_access_mistakes_name_the_key(self, tmp_path: Path, pki: DevPKI, extra: str,
                                          key: str, words: str) -> None:
        with pytest.raises(config_module.ConfigError) as e:
            load(tmp_path, pki, extra=extra)
        assert e.value.key == key and words in str(e.value)

    def test_a_conf_rule_from_the_config_has_ascii_classes(self, tmp_path: Path,
                                                            pki: DevPKI) -> None:
        """The config's own rule, through `build_roles`, as a trigger's conf is checked."""
        extra = ('\n[roles.dated]\nscopes = ["runs:trigger:etl_*"]\n[roles.dated.conf."etl_*"]\n'
                 'properties.day = { type = "string", pattern = \'\\A\\d{4}-\\d{2}-\\d{2}\\Z\' }\n')
        role = build_roles(load(tmp_path, pki, extra=extra).access)["dated"]
        assert role.conf_problem("etl_x", {"day": "2026-11-26"}) is None
        for day in ("\u0662\u0660\u0662\u0666-\u0661\u0661-\u0662\u0666",
                    "\uff12\uff10\uff12\uff16-\uff11\uff11-\uff12\uff16"):
            assert "conf.day: violates rule pattern" in (role.conf_problem("etl_x", {"day": day})
                                                         or ""), day

    def test_the_longest_principal_names_load(self, tmp_path: Path, pki: DevPKI) -> None:
        longest = "p" * 255
        cfg = load(tmp_path, pki, extra=f'\n[principals.{longest}]\nroles = []\n'
                   f'\n[principals."corp/{longest}"]\nroles = []\n')
        assert {longest, f"corp/{longest}"} <= set(cfg.access.principals)

    def test_symmetric_and_none_algorithms_are_refused(self, tmp_path: Path, pki: DevPKI) -> None:
        for alg in ("HS256", "none"):
            text = ACCESS.replace('jwks_file = "jwks.json"',
                                  f'jwks_file = "jwks.json"\nalgorithms = ["RS256", "{alg}"]')
            load(tmp_path, pki)
            (tmp_path / "airflowrpc.toml").write_text(
                text.format(mode="required", require="false", sha="ee" * 32))
            with pytest.raises(config_module.ConfigError, match="asymmetric only") as e:
                config_module.load(tmp_path / "airflowrpc.toml")
            assert e.value.key == "oidc.corp.algorithms"

    def oidc(self, tmp_path: Path, pki: DevPKI, *lines: str, jwks_url: str | None = None) -> None:
        """Load the config with the [oidc.corp] lines added (and jwks_url instead of the file)."""
        load(tmp_path, pki)
        text = ACCESS.format(mode="required", require="false", sha="ee" * 32)
        if jwks_url is not None:
            text = text.replace('jwks_file = "jwks.json"', f'jwks_url = "{jwks_url}"')
        text = text.replace('audience = "airflowrpc"', "\n".join(['audience = "airflowrpc"', *lines]))
        (tmp_path / "airflowrpc.toml").write_text(text)
        load_checked(tmp_path / "airflowrpc.toml")

    @pytest.mark.parametrize("url", [
        "http://idp.example.com/jwks", "http://localhost@idp.example.com/jwks",
        "http://127.0.0.1.idp.example.com/jwks", "ftp://idp.example.com/jwks", "https:///jwks",
        "http://[::1/jwks",
    ])
    def test_jwks_url_must_be_https(self, tmp_path: Path, pki: DevPKI, url: str) -> None:
        with pytest.raises(config_module.ConfigError) as e:
            self.oidc(tmp_path, pki, jwks_url=url)
        assert e.value.key == "oidc.corp.jwks_url"

    @pytest.mark.parametrize("url", [
        "https://idp.example.com/jwks", "http://127.0.0.1:8080/jwks", "http://localhost/jwks",
        "http://[::1]:9000/jwks",
    ])
    def test_jwks_url_https_or_loopback_is_fine(self, tmp_path: Path, pki: DevPKI, url: str) -> None:
        self.oidc(tmp_path, pki, jwks_url=url)

    @pytest.mark.parametrize("line,key", [
        ("leeway_seconds = -1", "oidc.corp.leeway_seconds"),
        ("leeway_seconds = nan", "oidc.corp.leeway_seconds"),
        ("leeway_seconds = inf", "oidc.corp.leeway_seconds"),
        ("jwks_refetch_cooldown_seconds = nan", "oidc.corp.jwks_refetch_cooldown_seconds"),
        ("jwks_max_age_seconds = 0", "oidc.corp.jwks_max_age_seconds"),
        ("algorithms = []", "oidc.corp.algorithms"),
        ('token_types = ["logout+jwt"]', "oidc.corp.token_types"),
        ('token_types = ["application/SECEVENT+JWT"]', "oidc.corp.token_types"),
        ('token_types = [""]', "oidc.corp.token_types"),
        ("authorized_parties = [1]", "oidc.corp.authorized_parties"),
        ('authorized_parties = ""', "oidc.corp.authorized_parties"),
    ])
    def test_oidc_numbers_and_lists_are_checked(self, tmp_path: Path, pki: DevPKI, line: str,
                                                key: str) -> None:
        with pytest.raises(config_module.ConfigError) as e:
            self.oidc(tmp_path, pki, line)
        assert e.value.key == key

    def test_leeway_zero_is_fine(self, tmp_path: Path, pki: DevPKI) -> None:
        self.oidc(tmp_path, pki, "leeway_seconds = 0")

    def test_token_types_are_compared_as_media_types(self, tmp_path: Path, pki: DevPKI) -> None:
        self.oidc(tmp_path, pki, 'token_types = ["application/AT+JWT", "at+jwt", "JWT"]',
                  'authorized_parties = ["ci-client"]')
        corp = config_module.load(tmp_path / "airflowrpc.toml").access.oidc["corp"]
        assert corp.token_types == ("at+jwt", "jwt")
        assert corp.authorized_parties == ("ci-client",)
        self.oidc(tmp_path, pki)
        corp = config_module.load(tmp_path / "airflowrpc.toml").access.oidc["corp"]
        assert (corp.token_types, corp.authorized_parties) == ((), ())

    def test_a_jwks_file_without_a_usable_key_is_refused(self, tmp_path: Path, pki: DevPKI) -> None:
        load(tmp_path, pki)
        weak = Signer("RS256", "weak", bits=1024)
        (tmp_path / "jwks.json").write_text(json.dumps(jwks(weak)))
        with pytest.raises(config_module.ConfigError, match="2048") as e:
            load_checked(tmp_path / "airflowrpc.toml")
        assert e.value.key == "oidc.corp.jwks_file"


def test_a_certificate_with_two_cns_is_named_by_neither() -> None:
    """CN=builder-bot + CN=low-priv-bot: which one is meant would be a guess."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())

    def issued(*cns: str) -> x509.Certificate:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn) for cn in cns])
        now = dt.datetime.now(dt.timezone.utc)
        return (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(key.public_key()).serial_number(1)
                .not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
                .sign(key, hashes.SHA256()))

    two = PeerCertificate.from_cryptography(issued("builder-bot", "low-priv-bot"))
    assert two.common_name is None
    assert two.name == two.subject  # named by the whole subject, which no cert_cn matches
    one = PeerCertificate.from_cryptography(issued("builder-bot"))
    assert (one.common_name, one.name) == ("builder-bot", "builder-bot")
