"""
The access part of the config: how callers authenticate, who they are, and
what their roles let them do.

    [auth]                      ways in, token store, rotation, back-off
    [roles.NAME]                scopes, and conf rules per DAG glob
    [principals.NAME]           roles, how a client certificate maps to it, and
                                the Airflow account its calls use (if not the gateway's)
    [oidc.PROVIDER]             an identity provider whose JWTs are accepted
    [aws]                       AWS IAM sign-in: the STS endpoint it is checked with

Read here as plain values, checked like the rest of the config; a problem
is a `ConfigError` naming the key.  What the values mean (parsing scopes,
compiling conf schemas, matching certificates) is the job of
`txairflowrpc.identity`, which checks the rest when the config is loaded.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs

from .keys import ConfigError, Key, between, positive, read_table, strings

SECTIONS = ("auth", "roles", "principals", "oidc", "aws")

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


#: JWS ``typ`` values of tokens that report an event (OIDC back-channel
#: logout, RFC 8417 security events): signed by the issuer for the audience,
#: but no credential.
EVENT_TYPES = frozenset({"logout+jwt", "secevent+jwt"})


def media_type(typ: str) -> str:
    """A JWS ``typ`` as compared (RFC 7515 4.1.9): lower case, ``application/`` dropped."""
    return typ.lower().removeprefix("application/")


def _token_types(value: list[Any]) -> None:
    strings(value)
    for typ in value:
        if media_type(typ) in EVENT_TYPES:
            raise ValueError(f"{typ!r} is an event's type, never a credential's")


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


def _each(values: list[Any], check: Any) -> None:
    strings(values)
    for value in values:
        check(value)


_ARN = re.compile(r"arn:([^:]*):([^:]*):([^:]*):([^:]*):(.*)", re.DOTALL)
_PARTITION = re.compile(r"aws(?:-[a-z]+)*")
_ACCOUNT = re.compile(r"[0-9]{12}")
#: What IAM allows in names and paths, and ``*`` for "any run of characters".
_RESOURCE = re.compile(r"[A-Za-z0-9+=,.@_/*-]+")
#: A user's path may be up to 512 characters, its name 64.
MAX_ARN = 1024
#: The longest a token may live, in days (ten years): a date beyond what
#: Python's datetime reaches is refused as config, not a traceback.
MAX_DAYS = 3650


def _aws_account(value: str) -> None:
    if not _ACCOUNT.fullmatch(value):
        raise ValueError(f"{value[:40]!r} is not an AWS account id (12 digits)")


_HEX_SHA256 = re.compile(r"[0-9a-f]{64}")


def sha256_hex(value: str) -> str:
    """
    A SHA-256 as a certificate's is compared: 64 lowercase hex digits.
    Found by review: ``cert_sha256`` in upper case, or as OpenSSL prints it
    (``0B:82:...``), loaded but never matched.
    """
    return value.replace(":", "").lower()


def _sha256(value: str) -> None:
    if not _HEX_SHA256.fullmatch(sha256_hex(value)):
        raise ValueError(f"{value[:100]!r} is not a SHA-256 (64 hex digits, or 32 pairs "
                         f"separated by ':' as openssl prints them)")


def _sha256s(values: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(sha256_hex(v) for v in values)


def _aws_arn(value: str) -> None:
    """
    An IAM identity as STS names it, or a pattern of them: ``*`` only in
    the resource part (never in the partition, service or account: anyone
    can make a role called ``deployer`` in an account of their own).
    """
    shown = repr(value[:80])
    found = _ARN.fullmatch(value) if len(value) <= MAX_ARN else None
    if found is None:
        raise ValueError(f"{shown} is not an ARN (arn:aws:iam::ACCOUNT:...)")
    partition, service, region, account, resource = found.groups()
    if not _PARTITION.fullmatch(partition):
        raise ValueError(f"{shown}: the partition must be aws, aws-cn, aws-us-gov, ... "
                         "(no wildcard)")
    if service not in ("iam", "sts") or region:
        raise ValueError(f"{shown}: an IAM identity is arn:PARTITION:iam::ACCOUNT:... or "
                         "arn:PARTITION:sts::ACCOUNT:...")
    _aws_account(account)
    if not _RESOURCE.fullmatch(resource):
        raise ValueError(f"{shown}: the resource part has characters IAM names do not")
    kind, _, rest = resource.partition("/")
    parts = rest.split("/")
    if service == "iam" and resource == "root":
        return
    if service == "iam" and kind == "user" and all(parts):
        return
    if service == "iam" and kind == "role" and rest and "/" not in rest:
        return
    if service == "iam" and kind == "role" and rest:
        raise ValueError(f"{shown}: write a role as arn:PARTITION:iam::ACCOUNT:role/NAME, "
                         "without its path (STS names an assumed role without it)")
    if service == "sts" and kind == "assumed-role" and len(parts) == 2 and all(parts):
        return
    if service == "sts" and kind == "federated-user" and rest and "/" not in rest:
        return
    raise ValueError(f"{shown}: name iam::ACCOUNT:user/NAME, iam::ACCOUNT:role/NAME, "
                     "iam::ACCOUNT:root, sts::ACCOUNT:assumed-role/ROLE/SESSION or "
                     "sts::ACCOUNT:federated-user/NAME")


#: Regional (and FIPS) STS hosts say which region signs for them.
_STS_HOST = re.compile(r"sts(?:-fips)?\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?")
_REGION = re.compile(r"[a-z]{2,}(?:-[a-z]+)+-[0-9]+")
#: What a server id may hold: visible ASCII, so that it survives SigV4's
#: header canonicalisation (which trims and folds spaces) unchanged.
_SERVER_ID = re.compile(r"[\x21-\x7e]{1,128}")


def _sts_endpoint(value: str) -> None:
    """https://HOST[:PORT] (or http:// to loopback, for tests), nothing after the host."""
    if not value:
        raise ValueError("must be an https:// URL")
    _jwks_url(value)
    url = urlsplit(value)
    if url.username is not None or url.password is not None:
        raise ValueError("must not hold a user name or password")
    if url.path not in ("", "/") or url.query or url.fragment or value.endswith(("?", "#")):
        raise ValueError("must be the endpoint alone (https://sts.REGION.amazonaws.com), "
                         "no path, query or fragment")


def _region(value: str) -> None:
    if not _REGION.fullmatch(value):
        raise ValueError(f"{value[:40]!r} is not an AWS region name (like eu-west-1)")


def _server_id(value: str) -> None:
    if not _SERVER_ID.fullmatch(value):
        raise ValueError("must be 1 to 128 visible ASCII characters (no spaces)")


#: An Airflow user name: visible ASCII, no spaces; SimpleAuthManager's
#: ``name:role,...`` list rules out ``:`` and ``,`` too.
_AIRFLOW_USER = re.compile(r"[\x21-\x7e]{1,256}")


def _airflow_user(value: str) -> None:
    if value and (not _AIRFLOW_USER.fullmatch(value) or ":" in value or "," in value):
        raise ValueError("must be 1 to 256 visible ASCII characters, without spaces, ':' or ','")


def _range(low: float, high: float) -> Any:
    def check(value: float) -> None:
        if not (math.isfinite(value) and low <= value <= high):
            raise ValueError(f"must be a number of seconds from {low:g} to {high:g}")

    return check


@attrs.frozen
class AWSSettings:
    """
    AWS IAM sign-in (``[aws]``): the STS endpoint a caller's signed
    ``GetCallerIdentity`` request is forwarded to, and what such a request
    must carry to be forwarded at all.
    """

    #: ``https://HOST[:PORT]``: the only place a signed request is sent.
    sts_endpoint: str
    #: The region the request must be signed for.
    region: str
    #: The value of ``X-Airflowrpc-Server-ID`` a request must sign.
    server_id: str
    #: Oldest signature accepted (``X-Amz-Date``), in seconds.
    max_age_seconds: float
    #: How far ahead of the gateway's clock a signature may be dated.
    clock_skew_seconds: float
    #: Deadline of the exchange with STS.
    timeout_seconds: float
    #: Keep an identity STS confirmed, for the rest of its signature's age.
    cache_verified: bool

    _keys = {
        "sts_endpoint": Key(str, "https://sts.amazonaws.com", _sts_endpoint),
        "region": Key(str, "us-east-1", _region),
        "server_id": Key(str, check=_server_id),
        # STS itself refuses a signature more than 15 minutes old.
        "max_age_seconds": Key(float, 300.0, _range(1, 900)),
        "clock_skew_seconds": Key(float, 60.0, _range(0, 300)),
        "timeout_seconds": Key(float, 10.0, _range(0.1, 60)),
        "cache_verified": Key(bool, True),
    }

    @property
    def sts_url(self) -> str:
        """Where a signed request goes: the endpoint, path ``/``."""
        return self.sts_endpoint + "/"

    @property
    def sts_host(self) -> str:
        """The ``Host`` a request to the endpoint carries (and must have signed)."""
        url = urlsplit(self.sts_endpoint)
        host = url.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        default = {"https": 443, "http": 80}[url.scheme]
        return host if url.port in (None, default) else f"{host}:{url.port}"


def _aws(table: object, base: Path) -> AWSSettings | None:
    if table is None:
        return None
    values = read_table("aws", table, base, AWSSettings._keys)
    values["sts_endpoint"] = values["sts_endpoint"].rstrip("/")
    host = urlsplit(values["sts_endpoint"]).hostname or ""
    signed_for = "us-east-1" if host == "sts.amazonaws.com" else None
    regional = _STS_HOST.fullmatch(host)
    if regional is not None:
        signed_for = regional.group(1)
    if signed_for is not None and signed_for != values["region"]:
        raise ConfigError("aws.region", f"{host} is signed for {signed_for}, "
                          f"not {values['region']}")
    return AWSSettings(**values)


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
        "token_days": Key(int, 90, between(1, MAX_DAYS)),
        "rotation_overlap_seconds": Key(int, 86400, between(0, MAX_DAYS * 86400)),
        "expiry_warning_days": Key(int, 14, between(0, MAX_DAYS)),
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
    #: Normalised (`sha256_hex`) however the entry is made.
    cert_sha256: tuple[str, ...] = attrs.field(default=(), converter=_sha256s)
    cert_spki_sha256: tuple[str, ...] = attrs.field(default=(), converter=_sha256s)
    #: IAM identities (ARNs, ``*`` in the resource part) that sign in as it.
    aws_arns: tuple[str, ...] = ()
    #: AWS accounts every IAM identity of which (but the root) signs in as it.
    aws_accounts: tuple[str, ...] = ()
    #: The Airflow account its calls reach Airflow as (None: the gateway's
    #: own ``[airflow] username``), and where that account's password is.
    airflow_user: str | None = None
    airflow_password_file: Path | None = None
    #: The content of ``airflow_password_file``: never shown, logged or compared in ``==``.
    airflow_password: str = attrs.field(default="", repr=False, eq=False)

    _keys = {
        "roles": Key(list, [], strings),
        "cert_dns": Key(list, [], strings),
        "cert_uri": Key(list, [], strings),
        "cert_email": Key(list, [], strings),
        "cert_cn": Key(list, [], strings),
        "cert_sha256": Key(list, [], lambda v: _each(v, _sha256)),
        "cert_spki_sha256": Key(list, [], lambda v: _each(v, _sha256)),
        "aws_arns": Key(list, [], lambda v: _each(v, _aws_arn)),
        "aws_accounts": Key(list, [], lambda v: _each(v, _aws_account)),
        "airflow_user": Key(str, "", _airflow_user),
        "airflow_password_file": Key(str, "", is_path=True, must_exist=False),
    }


def read_secret_file(key: str, path: Path) -> str:
    """
    The stripped text of a file holding one secret; `ConfigError` naming
    ``key`` (and the path, never the content) if it cannot be read or is empty.
    """
    try:
        secret = path.read_text("utf-8").strip()
    except OSError as e:
        raise ConfigError(key, f"cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(key, f"cannot read {path} as UTF-8 text") from None
    if not secret:
        raise ConfigError(key, f"{path} is empty")
    return secret


def _airflow_account(name: str, values: dict[str, Any], base: Path) -> None:
    """
    ``airflow_user`` and ``airflow_password_file`` of ``[principals.NAME]``:
    both or neither; the password read into ``airflow_password``.
    """
    user = values["airflow_user"] or None
    password_file = _optional_path(values["airflow_password_file"], base)
    if user is None and password_file is not None:
        raise ConfigError(f"principals.{name}.airflow_user",
                          "missing: airflow_password_file is set, but not the Airflow "
                          "account it is the password of")
    if user is not None and password_file is None:
        raise ConfigError(f"principals.{name}.airflow_password_file",
                          f"missing: airflow_user {user!r} needs the file with that Airflow "
                          "account's password")
    values["airflow_user"] = user
    values["airflow_password_file"] = password_file
    if password_file is not None:
        values["airflow_password"] = read_secret_file(
            f"principals.{name}.airflow_password_file", password_file)


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
    #: A fetched key set older than this is fetched again before it verifies
    #: a token: a key the provider removed stops working within it.
    jwks_max_age_seconds: float = 900.0
    #: The JWS ``typ`` a token must have (lower case, without ``application/``),
    #: e.g. ``at+jwt`` (RFC 9068 access tokens); empty: any but an event's.
    token_types: tuple[str, ...] = ()
    #: The OAuth clients a token may have been issued to (its ``azp``, else
    #: its ``client_id`` claim); empty: any.
    authorized_parties: tuple[str, ...] = ()

    _keys = {
        "issuer": Key(str),
        "audience": Key(str),
        "algorithms": Key(list, ["RS256", "ES256"], _algorithms),
        "jwks_file": Key(str, "", is_path=True, must_exist=False),
        "jwks_url": Key(str, "", _jwks_url),
        "jwks_refetch_cooldown_seconds": Key(float, 300.0, _cooldown),
        "jwks_max_age_seconds": Key(float, 900.0, _cooldown),
        "leeway_seconds": Key(float, 30.0, _leeway),
        "scope_claims": Key(list, ["scope", "groups"], strings),
        "claim_roles": Key(dict, {}),
        "token_types": Key(list, [], _token_types),
        "authorized_parties": Key(list, [], strings),
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
    #: AWS IAM sign-in, if ``[aws]`` is there.
    aws: AWSSettings | None = None


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
        for key in ("cert_sha256", "cert_spki_sha256"):
            values[key] = _sha256s(values[key])  # before the check for twins below
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
        for key in ("aws_arns", "aws_accounts"):
            for value in values[key]:
                other = claimed.setdefault((key, value), name)
                if other != name:
                    raise ConfigError(f"principals.{name}.{key}",
                                      f"{value!r} maps principal {other!r} too: an IAM "
                                      "identity must name one principal")
        _airflow_account(name, values, base)
        principals[name] = PrincipalEntry(name=name, **values)
    _one_password_per_account(principals)
    return principals


def _one_password_per_account(principals: dict[str, PrincipalEntry]) -> None:
    """Principals that share an Airflow account share its one password."""
    first: dict[str, PrincipalEntry] = {}
    for entry in principals.values():
        if entry.airflow_user is None:
            continue
        other = first.setdefault(entry.airflow_user, entry)
        if other.airflow_password != entry.airflow_password:
            raise ConfigError(f"principals.{entry.name}.airflow_password_file",
                              f"Airflow account {entry.airflow_user!r} has another password "
                              f"in principals.{other.name}.airflow_password_file")


#: The keys that map a client certificate to a principal.
_CERT_KEYS = ("cert_dns", "cert_uri", "cert_email", "cert_cn", "cert_sha256", "cert_spki_sha256")


_PROVIDER_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
#: The longest principal name an entry may give, and the longest ``sub`` an
#: OIDC caller may bring: a caller is NAME or PROVIDER/sub, whole in every
#: log, record and triggered run's note.
MAX_NAME = 255


def _name_problem(name: str, providers: dict[str, OIDCProvider]) -> str | None:
    """
    What is wrong with ``[principals.NAME]``'s name, or None.  A name is
    matched whole in a run's note (the note's first line is the name's
    claim to the run), so it has no line break or other control character;
    one with ``/`` is an OIDC caller's, ``PROVIDER/sub``, of a provider
    that exists (a typo would name nobody).
    """
    provider, slash, sub = name.partition("/")
    if not 0 < len(sub if slash else name) <= MAX_NAME or not name.isprintable():
        return (f"a principal's name is 1 to {MAX_NAME} printable characters (no line "
                f"breaks or other control characters), or PROVIDER/sub")
    if slash and provider not in providers:
        return (f"a name with '/' is an OIDC caller's, PROVIDER/sub, and there is no "
                f"[oidc.{provider[:64]}]")
    return None


def _oidc(table: object, base: Path, roles: dict[str, RoleEntry]) -> dict[str, OIDCProvider]:
    if not isinstance(table, dict):
        raise ConfigError("oidc", "must be a table ([oidc.PROVIDER])")
    providers = {}
    for name, body in table.items():
        key = f"oidc.{name}"
        if not _PROVIDER_NAME.fullmatch(name):
            # A caller is "PROVIDER/sub": a "/" in the name would let one
            # provider's subject name another provider's caller.
            raise ConfigError(key, "a provider's name is 1 to 64 letters, digits, '.', '_' "
                              "or '-'")
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
        same = [other for other in providers.values() if other.issuer == values["issuer"]]
        if same:
            # A token names its issuer, not a provider: only the first would ever be asked.
            raise ConfigError(f"{key}.issuer", f"is also oidc.{same[0].name}'s issuer")
        providers[name] = OIDCProvider(
            name=name, issuer=values["issuer"], audience=values["audience"],
            algorithms=tuple(values["algorithms"]),
            jwks_file=values["jwks_file"] if has_file else None,
            jwks_url=values["jwks_url"] or None,
            jwks_refetch_cooldown_seconds=values["jwks_refetch_cooldown_seconds"],
            jwks_max_age_seconds=values["jwks_max_age_seconds"],
            leeway_seconds=values["leeway_seconds"],
            scope_claims=tuple(values["scope_claims"]), claim_roles=claim_roles, jwks=jwks,
            token_types=tuple(dict.fromkeys(media_type(t) for t in values["token_types"])),
            authorized_parties=tuple(values["authorized_parties"]),
        )
    return providers


def parse(document: dict[str, Any], base: Path) -> AccessConfig:
    values = read_table("auth", document.get("auth", {}), base, AuthSettings._keys)
    values["token_store"] = _optional_path(values["token_store"], base)
    auth = AuthSettings(**values)
    roles = _roles(document.get("roles", {}), base)
    principals = _principals(document.get("principals", {}), base, roles)
    oidc = _oidc(document.get("oidc", {}), base, roles)
    for name in principals:
        problem = _name_problem(name, oidc)
        if problem is not None:
            raise ConfigError("principals", f"{name[:64]!r}: {problem}")
    aws = _aws(document.get("aws"), base)
    if aws is None:
        for name, entry in principals.items():
            if entry.aws_arns or entry.aws_accounts:
                key = "aws_arns" if entry.aws_arns else "aws_accounts"
                raise ConfigError(f"principals.{name}.{key}",
                                  "needs an [aws] section (aws.server_id at least)")
    other_ways = auth.token_store is not None or bool(oidc) or aws is not None
    if auth.client_certificate == "optional" and not other_ways:
        raise ConfigError("auth.client_certificate",
                          '"optional" needs another way in: auth.token_store, an [oidc] '
                          "provider or [aws]")
    if auth.require_token and not other_ways:
        raise ConfigError("auth.require_token",
                          "needs auth.token_store, an [oidc] provider or [aws]")
    return AccessConfig(auth=auth, roles=roles, principals=principals, oidc=oidc, aws=aws)
