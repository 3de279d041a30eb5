"""
A config file read and checked whole, as twistd does at start, a reload
does, and ``airflowrpc config check`` does: the TOML, the roles it defines,
the TLS certificates and the client CAs' revocation lists, the token
store, the OIDC key files and the CAs that verify Airflow's certificate.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import attrs
from cryptography import x509
from twisted.internet import ssl
from twisted.internet.interfaces import IReactorTime

from .. import config as config_module
from ..audit import checkpoint
from ..gate.tls import ca_certificates, server_options
from ..identity import aws, oidc, tokens
from ..identity.authenticate import Authenticator
from ..identity.revocation import MAX_CRL_BYTES, Revocations, load_revocations
from ..identity.scopes import Role, build_roles
from ..upstream.transport import OriginTrust


@attrs.frozen
class Checked:
    """A config file read and checked whole: what the gateway runs on."""

    config: config_module.Config
    roles: dict[str, Role] = attrs.field(eq=False)
    tls_options: ssl.CertificateOptions = attrs.field(eq=False)
    tokens: tokens.TokenStore | None
    #: What signs the audit checkpoints (None: no key, no checkpoints).
    signer: checkpoint.Signer | None = attrs.field(eq=False, default=None)
    #: Airflow's own CAs (``airflow.ca_file``), for its origin alone; None: the system's.
    airflow_trust: OriginTrust | None = attrs.field(eq=False, default=None)
    #: The client certificates revoked by ``tls.client_crl`` (None: no lists).
    revocations: Revocations | None = attrs.field(eq=False, default=None)

    def warnings(self, now: datetime) -> list[str]:
        """What the start, a reload and ``config check`` warn of, each a line."""
        found = config_module.open_secrets(self.config)
        if self.tokens is not None:
            orphans = tokens.orphaned(self.tokens, self.config.access.principals, now)
            found += [orphans] if orphans else []
        if self.revocations is not None:
            found += self.revocations.warnings(now)
        return found


def load_checked(path: str | Path) -> Checked:
    """
    Read the config and every file it names; `ConfigError` naming the key
    at fault (never anything else for a bad file).
    """
    try:
        return _load_checked(path)
    except config_module.ConfigError:
        raise
    except RecursionError:  # a JSON or TOML file nested deeper than Python reads
        raise config_module.ConfigError(
            "", "the config or a file it names nests too deeply to be read") from None
    except Exception as e:  # noqa: BLE001 -- whatever else: one line at start, a rejected reload
        raise config_module.ConfigError(
            str(path), f"cannot be read: {type(e).__name__}: {str(e)[:200]}") from None


def _load_checked(path: str | Path) -> Checked:
    cfg = config_module.load(path)
    roles = build_roles(cfg.access)
    options = server_options(cfg.tls, cfg.access.auth.client_certificate)
    store = None
    if cfg.access.auth.token_store is not None:
        try:
            store = tokens.TokenStore.load(cfg.access.auth.token_store)
        except ValueError as e:
            raise config_module.ConfigError("auth.token_store", str(e)) from None
    for name, provider in cfg.access.oidc.items():
        if provider.jwks is not None:
            try:
                oidc.parse_jwks(provider.jwks)
            except ValueError as e:
                raise config_module.ConfigError(f"oidc.{name}.jwks_file", str(e)) from None
    try:
        signer = checkpoint.signer_from(cfg.audit.signing_key, cfg.audit.hmac_key_file)
    except ValueError as e:
        key = "audit.signing_key" if cfg.audit.signing_key else "audit.hmac_key_file"
        raise config_module.ConfigError(key, str(e)) from None
    airflow_trust = None
    if cfg.airflow.ca_file is not None:
        airflow_trust = OriginTrust(cfg.airflow.base_url, ssl.trustRootFromCertificates(
            ca_certificates("airflow.ca_file", cfg.airflow.ca_pem, cfg.airflow.ca_file)))
    revocations = load_client_crl(cfg.tls, served_certificates(options)["tls.client_ca"])
    return Checked(cfg, roles, options, store, signer, airflow_trust, revocations)


def load_client_crl(
    tls: config_module.TLSConfig, cas: Sequence[x509.Certificate],
) -> Revocations | None:
    """
    The revocation lists of ``tls.client_crl`` (None: the key is not set),
    checked against ``cas``, the client CAs of the listener's TLS options
    (`served_certificates`); `ConfigError` naming the key otherwise.
    Blocking (it reads the file).
    """
    if tls.client_crl is None:
        return None
    try:
        with tls.client_crl.open("rb") as f:
            pem = f.read(MAX_CRL_BYTES + 1)
        return load_revocations(pem, cas)
    except OSError as e:
        raise config_module.ConfigError(
            "tls.client_crl", f"cannot read {tls.client_crl}: {e.strerror}") from None
    except ValueError as e:
        raise config_module.ConfigError("tls.client_crl", f"{tls.client_crl}: {e}") from None


def served_certificates(options: ssl.CertificateOptions) -> dict[str, list[x509.Certificate]]:
    """
    The certificates a listener with ``options`` (`server_options`) holds, by the key that
    named their file: ``tls.certificate``, the chain it sends; ``tls.client_ca``, the CAs it
    verifies client certificates against.  These are the ones in force, whatever the files
    hold now: a renewal on disk counts only once a reload has put it in force.
    """
    chain = [options.certificate, *(options.extraCertChain or [])]
    # With client certificates required the CAs are in the trust root, which keeps them
    # under a private name; it is the only place they are.
    cas = options.caCerts or getattr(options.trustRoot, "_caCerts", None) or []
    return {"tls.certificate": [c.to_cryptography() for c in chain],
            "tls.client_ca": [c.to_cryptography() for c in cas]}


def build_authenticator(
    checked: Checked, *, http: Any, clock: IReactorTime, previous: Authenticator | None = None,
) -> Authenticator:
    """
    An `Authenticator` for a checked config; OIDC key sets and the AWS
    identities STS confirmed carry over a reload.
    """
    jwks = {}
    for name, provider in checked.config.access.oidc.items():
        keyset = oidc.JWKSet(provider, http=http, clock=clock)
        if previous is not None and name in previous.jwks:
            keyset.adopt(previous.jwks[name])
        jwks[name] = keyset
    verifier = None
    if checked.config.access.aws is not None:
        verifier = aws.IAMVerifier(checked.config.access.aws, http=http, clock=clock)
        verifier.adopt(previous.aws if previous is not None else None)
    return Authenticator(
        checked.config.access, roles=checked.roles, tokens_store=checked.tokens, jwks=jwks,
        clock=clock, aws=verifier, revocations=checked.revocations,
    )
