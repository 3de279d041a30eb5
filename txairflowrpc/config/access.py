"""
The access part of the config: how callers authenticate, who they are, and
what their roles let them do.

    [auth]                      ways in, token store, rotation, back-off
    [roles.NAME]                scopes, and conf rules per DAG glob
    [principals.NAME]           roles, and how a client certificate maps to it
    [oidc.PROVIDER]             an identity provider whose JWTs are accepted

Read here as plain values, checked like the rest of the config; a problem
is a `ConfigError` naming the key.  What the values mean (parsing scopes,
compiling conf schemas, matching certificates) is the job of
`txairflowrpc.identity`, which checks the rest when the config is loaded.
"""

from __future__ import annotations

import ipaddress
import json
import math
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs

from .keys import ConfigError, Key, at_least, positive, read_table, strings

SECTIONS = ("auth", "roles", "principals", "oidc")

#: Only asymmetric algorithms: never "none", never HS*.
JWT_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
                  "ES256", "ES384", "ES512", "EdDSA")


def _leeway(value: float) -> None:
    # TOML has nan and inf: neither is a leeway (inf would make exp meaningless).
    if not (math.isfinite(value) and value >= 0):
        raise ValueError("must be a finite number of seconds, 0 or more")


def _cooldown(value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError("must be a finite number of seconds, more than 0")


def _algorithms(value: list[Any]) -> None:
    strings(value)
    if not value:
        raise ValueError("must name at least one algorithm")
    for alg in value:
        if alg not in JWT_ALGORITHMS:
            raise ValueError(f"{alg!r} is not allowed (asymmetric only: "
                             f"{', '.join(JWT_ALGORITHMS)})")


def _jwks_url(value: str) -> None:
    """https, or http to this machine's loopback (for tests and a local provider)."""
    if not value:
        return
    try:
        url = urlsplit(value)
        host, _port = url.hostname, url.port  # .port raises ValueError if it is no number
    except ValueError:
        raise ValueError("must be an https:// URL") from None
    if not host or url.scheme not in ("https", "http"):
        raise ValueError("must be an https:// URL")
    if url.scheme == "http" and not _loopback(host):
        raise ValueError("must be https:// (plain http only to 127.0.0.1, localhost or [::1])")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _mode(value: str) -> None:
    if value not in ("required", "optional"):
        raise ValueError('must be "required" or "optional"')


@attrs.frozen
class AuthSettings:
    client_certificate: str
    require_token: bool
    token_store: Path | None
    token_days: int
    rotation_overlap_seconds: int
    expiry_warning_days: int
    failure_backoff_max_seconds: float

    _keys = {
        "client_certificate": Key(str, "required", _mode),
        "require_token": Key(bool, False),
        "token_store": Key(str, "", is_path=True, must_exist=False),
        "token_days": Key(int, 90, at_least(1)),
        "rotation_overlap_seconds": Key(int, 86400, at_least(0)),
        "expiry_warning_days": Key(int, 14, at_least(0)),
        "failure_backoff_max_seconds": Key(float, 30.0, positive),
    }

    @property
    def rotation_overlap(self) -> timedelta:
        return timedelta(seconds=self.rotation_overlap_seconds)


@attrs.frozen
class PrincipalEntry:
    """A configured principal: its roles and how its certificates are known."""

    name: str
    roles: tuple[str, ...]
    cert_dns: tuple[str, ...] = ()
    cert_uri: tuple[str, ...] = ()
    cert_email: tuple[str, ...] = ()
    cert_cn: tuple[str, ...] = ()
    cert_sha256: tuple[str, ...] = ()
    cert_spki_sha256: tuple[str, ...] = ()

    _keys = {
        "roles": Key(list, [], strings),
        "cert_dns": Key(list, [], strings),
        "cert_uri": Key(list, [], strings),
        "cert_email": Key(list, [], strings),
        "cert_cn": Key(list, [], strings),
        "cert_sha256": Key(list, [], strings),
        "cert_spki_sha256": Key(list, [], strings),
    }


@attrs.frozen
class OIDCProvider:
    name: str
    issuer: str
    audience: str
    algorithms: tuple[str, ...]
    jwks_file: Path | None
    jwks_url: str | None
    jwks_refetch_cooldown_seconds: float
    leeway_seconds: float
    scope_claims: tuple[str, ...]
    claim_roles: dict[str, tuple[str, ...]] = attrs.field(eq=False)
    jwks: dict[str, Any] | None = attrs.field(eq=False, default=None, repr=False)

    _keys = {
        "issuer": Key(str),
        "audience": Key(str),
        "algorithms": Key(list, ["RS256", "ES256"], _algorithms),
        "jwks_file": Key(str, "", is_path=True, must_exist=False),
        "jwks_url": Key(str, "", _jwks_url),
        "jwks_refetch_cooldown_seconds": Key(float, 300.0, _cooldown),
        "leeway_seconds": Key(float, 30.0, _leeway),
        "scope_claims": Key(list, ["scope", "groups"], strings),
        "claim_roles": Key(dict, {}),
    }


@attrs.frozen
class RoleEntry:
    """A configured role: its scopes and its conf rules, as written."""

    name: str
    scopes: tuple[str, ...]
    #: DAG glob -> the JSON Schema the conf of matching DAGs must satisfy.
    conf: dict[str, dict[str, Any]] = attrs.field(eq=False, factory=dict)


@attrs.frozen
class AccessConfig:
    auth: AuthSettings
    roles: dict[str, RoleEntry] = attrs.field(eq=False)
    principals: dict[str, PrincipalEntry] = attrs.field(eq=False)
    oidc: dict[str, OIDCProvider] = attrs.field(eq=False)


def _optional_path(value: Any, base: Path) -> Path | None:
    """A path key left out (or empty) means: not used."""
    return None if value in ("", base / "") else value


def _tuples(values: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}


def _roles(table: object, base: Path) -> dict[str, RoleEntry]:
    if not isinstance(table, dict):
        raise ConfigError("roles", "must be a table of roles ([roles.NAME])")
    roles = {}
    for name, body in table.items():
        values = read_table(f"roles.{name}", body, base, {
            "scopes": Key(list, [], strings), "conf": Key(dict, {}),
        })
        for glob, schema in values["conf"].items():
            if not isinstance(schema, dict):
                raise ConfigError(f"roles.{name}.conf.{glob}", "must be a JSON Schema table")
        roles[name] = RoleEntry(name, tuple(values["scopes"]), dict(values["conf"]))
    return roles


def _principals(table: object, base: Path, roles: dict[str, RoleEntry]) -> dict[str, PrincipalEntry]:
    if not isinstance(table, dict):
        raise ConfigError("principals", "must be a table ([principals.NAME])")
    principals = {}
    claimed: dict[tuple[str, str], str] = {}
    for name, body in table.items():
        values = _tuples(read_table(f"principals.{name}", body, base, PrincipalEntry._keys))
        for role in values["roles"]:
            if role not in roles:
                raise ConfigError(f"principals.{name}.roles", f"unknown role {role!r}")
        for key in _CERT_KEYS:
            for value in values[key]:
                other = claimed.setdefault((key, value.lower()), name)
                if other != name:
                    raise ConfigError(f"principals.{name}.{key}",
                                      f"{value!r} maps principal {other!r} too: a certificate "
                                      "must name one principal")
        principals[name] = PrincipalEntry(name=name, **values)
    return principals


#: The keys that map a client certificate to a principal.
_CERT_KEYS = ("cert_dns", "cert_uri", "cert_email", "cert_cn", "cert_sha256", "cert_spki_sha256")


def _oidc(table: object, base: Path, roles: dict[str, RoleEntry]) -> dict[str, OIDCProvider]:
    if not isinstance(table, dict):
        raise ConfigError("oidc", "must be a table ([oidc.PROVIDER])")
    providers = {}
    for name, body in table.items():
        key = f"oidc.{name}"
        values = read_table(key, body, base, OIDCProvider._keys)
        values["jwks_file"] = _optional_path(values["jwks_file"], base)
        has_file = values["jwks_file"] is not None
        if has_file == bool(values["jwks_url"]):
            raise ConfigError(key, "needs exactly one of jwks_file and jwks_url")
        claim_roles: dict[str, tuple[str, ...]] = {}
        for claim, mapped in values["claim_roles"].items():
            if not isinstance(mapped, list) or any(r not in roles for r in mapped):
                raise ConfigError(f"{key}.claim_roles.{claim}", "must list known roles")
            claim_roles[claim] = tuple(mapped)
        jwks = None
        if has_file:
            try:
                jwks = json.loads(values["jwks_file"].read_text("utf-8"))
            except (OSError, ValueError) as e:
                raise ConfigError(f"{key}.jwks_file", f"cannot read a JWKS: {e}") from None
        providers[name] = OIDCProvider(
            name=name, issuer=values["issuer"], audience=values["audience"],
            algorithms=tuple(values["algorithms"]),
            jwks_file=values["jwks_file"] if has_file else None,
            jwks_url=values["jwks_url"] or None,
            jwks_refetch_cooldown_seconds=values["jwks_refetch_cooldown_seconds"],
            leeway_seconds=values["leeway_seconds"],
            scope_claims=tuple(values["scope_claims"]), claim_roles=claim_roles, jwks=jwks,
        )
    return providers


def parse(document: dict[str, Any], base: Path) -> AccessConfig:
    values = read_table("auth", document.get("auth", {}), base, AuthSettings._keys)
    values["token_store"] = _optional_path(values["token_store"], base)
    auth = AuthSettings(**values)
    roles = _roles(document.get("roles", {}), base)
    principals = _principals(document.get("principals", {}), base, roles)
    oidc = _oidc(document.get("oidc", {}), base, roles)
    if auth.client_certificate == "optional" and auth.token_store is None and not oidc:
        raise ConfigError("auth.client_certificate",
                          '"optional" needs another way in: auth.token_store or an [oidc] provider')
    if auth.require_token and auth.token_store is None and not oidc:
        raise ConfigError("auth.require_token", "needs auth.token_store or an [oidc] provider")
    return AccessConfig(auth=auth, roles=roles, principals=principals, oidc=oidc)
