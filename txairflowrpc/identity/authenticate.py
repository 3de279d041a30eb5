"""
Who is calling: the principal of each HTTP request.

`Authenticator.authenticate` is the one place that decides it, once per
HTTP request (so a ``system.multicall`` cannot be used to try many
credentials).  A caller proves who it is with

- a client certificate (verified by the TLS layer against the configured
  CA), mapped to a configured principal by SAN, CN, fingerprint or SPKI
  hash; a certificate that maps to no principal, or that its CA revoked
  (``tls.client_crl``, `txairflowrpc.identity.revocation`), is refused;
- a gateway token, as ``Authorization: Bearer arpc_...`` or, for clients
  that only do basic auth, ``Authorization: Basic`` with the principal's
  name and the token;
- a JWT access token from a configured OIDC provider, as a bearer token:
  the principal is ``<provider>/<sub>``;
- a signed ``sts:GetCallerIdentity`` request, as ``Authorization: AWS-IAM
  ...`` (`txairflowrpc.identity.aws`): STS names the IAM identity, and its
  ARN or account maps it to a configured principal.

``[auth] client_certificate`` says whether a certificate is required (and
then it names the principal) or optional (a token or JWT may authenticate
instead); ``require_token`` asks for a token or JWT as well, naming the
same principal.  Every failure is `Unauthenticated` (HTTP 401, before any
XML is read); `txairflowrpc.identity.backoff` slows down a source that
keeps failing.
"""

from __future__ import annotations

import base64
import copy
import binascii
from datetime import datetime, timezone
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from ..config import AccessConfig
from . import aws, oidc, tokens
from .backoff import source_key
from .certificates import PeerCertificate, matches, peer_certificate
from .principal import Principal
from .revocation import Revocations
from .scopes import Grants, Role

_log = Logger()


@attrs.define(auto_exc=True)
class Unauthenticated(Exception):
    """
    The request proves no identity; answered with HTTP 401.  ``claimed``:
    who a credential that was genuine but refused names (a JWT's issuer and
    subject), for the audit record only.
    """

    reason: str
    claimed: dict[str, str] = attrs.field(factory=dict)


@attrs.frozen
class _Credential:
    scheme: str  # "bearer", "basic" or "aws_iam"
    secret: str = attrs.field(repr=False)
    username: str | None = None


def _credential(request: Any) -> _Credential | None:
    header = request.getHeader(b"authorization")
    if header is None:
        return None
    scheme, _, value = header.strip().partition(b" ")
    value = value.strip()
    if scheme.lower() == aws.SCHEME.lower().encode() and value:
        return _Credential("aws_iam", value.decode("latin-1"))
    if scheme.lower() == b"bearer" and value:
        return _Credential("bearer", value.decode("latin-1"))
    if scheme.lower() == b"basic" and value:
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise Unauthenticated("malformed basic credentials") from None
        name, sep, secret = decoded.partition(":")
        if not sep:
            raise Unauthenticated("malformed basic credentials")
        return _Credential("basic", secret, name)
    raise Unauthenticated("unsupported Authorization scheme (use Bearer, Basic or AWS-IAM)")


class Authenticator:
    """
    Authenticates requests against one version of the access config, token
    store and key sets; a reload builds a new one.
    """

    def __init__(
        self, access: AccessConfig, *, roles: dict[str, Role],
        tokens_store: tokens.TokenStore | None, jwks: dict[str, oidc.JWKSet],
        clock: IReactorTime, aws: aws.IAMVerifier | None = None,
        revocations: Revocations | None = None,
    ) -> None:
        self.access = access
        #: The client certificates their CAs revoked (``tls.client_crl``; None: no lists).
        self.revocations = revocations
        self.roles = roles
        self.tokens = tokens_store
        self.jwks = jwks
        #: Checks AWS-IAM credentials with STS (None: ``[aws]`` is not configured).
        self.aws = aws
        self._clock = clock

    def with_tokens(self, store: tokens.TokenStore | None) -> "Authenticator":
        """This authenticator with another token store (everything else kept)."""
        changed = copy.copy(self)
        changed.tokens = store
        return changed

    def with_revocations(self, revocations: Revocations | None) -> "Authenticator":
        """This authenticator with other revocation lists (everything else kept)."""
        changed = copy.copy(self)
        changed.revocations = revocations
        return changed

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock.seconds(), timezone.utc)

    def _grants(self, roles: tuple[str, ...]) -> Grants:
        return Grants(tuple(self.roles[r] for r in roles if r in self.roles))

    def authenticate(self, request: Any) -> Deferred[Principal]:
        """The principal behind ``request``; fails with `Unauthenticated`."""
        return Deferred.fromCoroutine(self._authenticate(request))

    async def _authenticate(self, request: Any) -> Principal:
        settings = self.access.auth
        cert = peer_certificate(request.transport)
        by_cert = self._from_certificate(cert) if cert is not None else None
        credential = _credential(request)
        by_credential = (await self._from_credential(credential, _source(request))
                         if credential else None)
        if settings.client_certificate == "required" and by_cert is None:
            raise Unauthenticated("a client certificate is required")
        if settings.require_token and by_credential is None:
            raise Unauthenticated("a token or OIDC access token is required as well")
        if by_cert and by_credential:
            if by_cert.name != by_credential.name:
                raise Unauthenticated("the certificate and the token name different principals")
            proofs = [t for t in (by_cert.proof_until, by_credential.proof_until) if t is not None]
            by_credential = attrs.evolve(
                by_credential, method=f"client_certificate+{by_credential.method}",
                certificate=cert, proof_until=min(proofs) if proofs else None,
            )
        principal = by_credential or by_cert
        if principal is None:
            raise Unauthenticated("no credentials: send a client certificate or a token")
        return attrs.evolve(principal, warning_days=settings.expiry_warning_days)

    def _from_certificate(self, cert: PeerCertificate) -> Principal:
        if self.revocations is not None:
            # Refused whatever else the request holds (a token too): whoever
            # presents a revoked certificate is not let in by another proof.
            if not cert.chain_known:  # no verified chain to check: not let in
                raise Unauthenticated("the client certificate's chain is not known, "
                                      "so its revocation cannot be checked")
            if self.revocations.revoked(cert):
                raise Unauthenticated("the client certificate has been revoked by its CA")
        found = [e for e in self.access.principals.values() if matches(e, cert)]
        if not found:
            raise Unauthenticated("the client certificate matches no principal")
        if len(found) > 1:
            # Different keys of different principals (a CN of one, a SAN of
            # another) can meet in one certificate: refuse rather than pick.
            _log.warn("client certificate {subject} matches principals {names}: refused",
                      subject=cert.subject[:200], names=", ".join(e.name for e in found))
            raise Unauthenticated("the client certificate matches more than one principal")
        entry = found[0]
        # The handshake checked the certificate's dates; a keep-alive
        # connection may outlive them, and its verdict with it.
        if cert.not_after_seconds is not None and cert.not_after_seconds <= self._clock.seconds():
            raise Unauthenticated("the client certificate has expired")
        return Principal(
            name=entry.name, method="client_certificate", certificate=cert,
            roles=entry.roles, grants=self._grants(entry.roles),
            proof_until=cert.not_after_seconds,
        )

    async def _from_credential(self, credential: _Credential, source: str = "") -> Principal:
        secret = credential.secret
        if credential.scheme == "aws_iam":
            return await self._from_aws(secret, source)
        if secret.startswith(tokens.PREFIX):
            return self._from_token(credential)
        if credential.scheme == "bearer" and oidc.looks_like_jwt(secret):
            return await self._from_jwt(secret)
        raise Unauthenticated("the credential is neither a gateway token nor a JWT")

    def _from_token(self, credential: _Credential) -> Principal:
        if self.tokens is None:
            raise Unauthenticated("tokens are not accepted here")
        try:
            # From memory only: the store is watched off the reactor and
            # swapped in when it changes (within a second); an unknown id,
            # which anyone can send, costs no file access here.
            record = self.tokens.check(credential.secret, self._now())
        except tokens.TokenError as e:
            raise Unauthenticated(str(e)) from None
        if credential.username is not None and credential.username != record.principal:
            raise Unauthenticated("the basic-auth name is not the token's principal")
        entry = self.access.principals.get(record.principal)
        if entry is None:
            raise Unauthenticated(f"token {record.id} names an unknown principal")
        # A token never has more than its principal: roles it names that the
        # principal lost since are dropped.
        roles = entry.roles if record.roles is None else tuple(
            r for r in record.roles if r in entry.roles)
        return Principal(
            name=record.principal, method="token", token_id=record.id,
            expires=record.expires, roles=roles, grants=self._grants(roles),
        )

    async def _from_jwt(self, token: str) -> Principal:
        issuer = oidc.unverified_issuer(token)
        try:
            keyset = next(k for k in self.jwks.values() if k.provider.issuer == issuer)
        except StopIteration:
            if issuer is None:
                # Found by review: a token that is no JWT (a header without
                # alg) was refused as "from an unknown issuer".
                try:
                    oidc.unverified_header(token)
                except oidc.JWTError as e:
                    raise Unauthenticated(f"JWT refused: {e}") from None
            raise Unauthenticated("JWT from an unknown issuer") from None
        provider = keyset.provider
        try:
            keys = await keyset.key_for(token)
            claims = oidc.verify_jwt(token, provider, keys, self._clock.seconds())
        except oidc.JWTError as e:
            raise Unauthenticated(f"JWT refused: {e}", e.claimed) from None
        name = f"{provider.name}/{claims['sub']}"
        roles = oidc.roles_from_claims(provider, claims)
        entry = self.access.principals.get(name)
        if entry is None and not roles:
            # Deny by default, as for a certificate that maps to no
            # principal: an issuer may sign for the audience whoever asks
            # (a CI provider does, for any repository).
            raise Unauthenticated(
                "JWT refused: its subject is no caller here (no role from its claims, no "
                "[principals] entry)", oidc.claimed_by(claims))
        if entry is not None:
            roles = tuple(dict.fromkeys((*roles, *entry.roles)))
        return Principal(
            name=name, method="oidc", oidc_issuer=provider.issuer, oidc_sub=claims["sub"],
            expires=datetime.fromtimestamp(claims["exp"], timezone.utc),
            proof_until=keyset.verdicts_until(),
            roles=roles, grants=self._grants(roles),
        )

    async def _from_aws(self, credential: str, source: str = "") -> Principal:
        if self.aws is None:
            raise Unauthenticated("AWS IAM sign-in is not enabled here")
        try:
            identity = await self.aws.verify(credential, source)
        except aws.STSUnavailable as e:
            raise Unauthenticated(f"AWS IAM: identity provider unavailable ({e}); "
                                  "try again later") from None
        except aws.AWSError as e:
            raise Unauthenticated(f"AWS IAM: {e}") from None
        found = aws.principals_for(identity, self.access.principals.values())
        if not found:
            raise Unauthenticated(f"AWS IAM: {identity.arn} maps to no principal")
        if len(found) > 1:
            # Two patterns of two principals can meet in one ARN: refuse rather than pick.
            _log.warn("AWS identity {arn} matches principals {names}: refused",
                      arn=identity.arn, names=", ".join(e.name for e in found))
            raise Unauthenticated(f"AWS IAM: {identity.arn} maps to more than one principal")
        entry = found[0]
        return Principal(
            name=entry.name, method="aws_iam", aws_arn=identity.arn,
            aws_user_id=identity.user_id, roles=entry.roles, grants=self._grants(entry.roles),
            proof_until=self.aws.accepted_until(credential),
        )


def _source(request: Any) -> str:
    """
    Where ``request`` comes from, as every per-source limit counts it: the
    site's key for its connection (the PROXY header's client, an IPv6
    network), else one made here.
    """
    known = getattr(getattr(request, "channel", None), "source", None)
    if isinstance(known, str) and known:
        return known
    get = getattr(request, "getClientAddress", None)
    return source_key(str(getattr(get(), "host", ""))) if get is not None else ""


class Gate:
    """
    The current `Authenticator`, swapped whole by a reload, so that a
    request is authenticated against one consistent version.
    """

    def __init__(self, authenticator: Authenticator) -> None:
        self.current = authenticator

    def authenticate(self, request: Any) -> Deferred[Principal]:
        return self.current.authenticate(request)

    def version(self) -> tuple[object, ...]:
        """
        What a verdict of `authenticate` depends on beyond the request: the
        current authenticator (a reload, a new token store) and the key sets
        of its identity providers (a JWKS refetch).  Two versions are the
        same when their items are the same objects.
        """
        current = self.current
        if not current.jwks:
            return (current,)
        return (current, *[keyset.keys for keyset in current.jwks.values()])
