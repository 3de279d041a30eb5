"""
OIDC / JWT access tokens from an identity provider.

`verify_jwt` checks a compact JWS with joserfc (JWS, JWK and the JWT
claims registry): the algorithm must be one the provider allows (asymmetric
only, so never ``none`` and never an HMAC keyed with a public key), the key
must fit it (type, curve, and the JWK's own ``alg``), a ``crit`` header is
refused (the gateway understands no extension), and ``iss``, ``aud``,
``exp`` (required), ``nbf``, ``iat`` and ``sub`` are checked with the
provider's leeway.  Every refusal is a `JWTError` whose message carries
nothing of the token but, at most, a clipped ``kid``.

`parse_jwks` turns a provider's JWK set into `SigningKeys`: the keys a
JWT may be verified with, and those the gateway will not use (RSA under
2048 bits, symmetric keys, keys whose ``use``, ``key_ops`` or ``alg`` say
they are not for verifying these signatures).

`JWKSet` holds a provider's keys: from a file, or from a URL fetched with
treq (never blocking the reactor), cached, refetched on an unknown ``kid``
at most once per cooldown, and kept as they were when the provider is down
or answers with a set the gateway cannot use.
"""

from __future__ import annotations

import json
import warnings
from typing import Any, Mapping

import attrs
from joserfc import jws
from joserfc.errors import (
    ExceededSizeError,
    ExpiredTokenError,
    InvalidClaimError,
    JoseError,
    MissingClaimError,
    SecurityWarning,
    UnsupportedAlgorithmError,
    UnsupportedKeyAlgorithmError,
)
from joserfc.jwa import JWSAlgModel
from joserfc.jwk import JWKRegistry, Key, OctKey, RSAKey
from joserfc.jwt import JWTClaimsRegistry
from joserfc.registry import JWS_HEADER_REGISTRY
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from ..config import OIDCProvider
from ..config.access import EVENT_TYPES, JWT_ALGORITHMS, MAX_NAME, media_type
from ..core.bodies import read_capped
from ..core.singleflight import SingleFlight

_log = Logger()

# joserfc warns when "EdDSA" is used (RFC 9864 prefers the curve's name)
# and when an RSA key under 2048 bits is imported.  The gateway allows
# EdDSA on purpose and refuses short RSA keys itself (`parse_jwks`), so
# both would only be noise in the log.
warnings.filterwarnings("ignore", "EdDSA is deprecated", SecurityWarning)
warnings.filterwarnings("ignore", "Key size should be >= 2048 bits", SecurityWarning)

#: The least RSA modulus the gateway verifies with (NIST SP 800-131A).
MIN_RSA_BITS = 2048
#: The longest ``sub`` accepted (it becomes part of the principal's name).
MAX_SUB = MAX_NAME
#: At most this many keys are tried on one JWT (those sharing its kid, or
#: having none): a rotation publishes two or three; a set with more
#: would let every refused JWT cost that many signature checks.
MAX_KEYS_TRIED = 8
#: The NumericDates a datetime can hold (up to 9999-12-31T23:59:59Z).
_LATEST = 253402300799


class JWTError(Exception):
    """
    A JWT was refused; the message says why and carries no token.
    ``claimed``: who a JWT whose signature held says it is (``oidc_issuer``,
    ``oidc_sub``, clipped), for the audit record of its refusal; else empty.
    """

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        self.claimed: dict[str, str] = {}


class UnknownKey(JWTError):
    """The JWT names a key the provider's key set does not hold."""


class _Registry(jws.JWSRegistry):
    """
    RFC 7515's header parameters without RFC 7797's ``b64``: a JWT's
    payload is always base64url, so ``b64`` is no extension to honour.
    Parameters it does not know are ignored, as RFC 7515 says.
    """

    default_header_registry = {k: v for k, v in JWS_HEADER_REGISTRY.items() if k != "b64"}


def _registry(provider: OIDCProvider) -> _Registry:
    """The JWS registry for a provider: its algorithms, asymmetric only."""
    allowed = [a for a in provider.algorithms if a in JWT_ALGORITHMS]
    if not allowed:
        # joserfc reads an empty list as "its recommended ones" (HS256 too).
        raise JWTError(f"provider {provider.name} allows no algorithm")
    return _Registry(algorithms=allowed, strict_check_header=False)


def _shown(alg: str) -> str:
    """An algorithm's name for a message: only names joserfc knows."""
    return alg if alg in jws.JWSRegistry.algorithms else "(unknown)"


def looks_like_jwt(token: str) -> bool:
    """Is ``token`` shaped like a compact JWS (so worth handing to `verify_jwt`)?"""
    return token.count(".") == 2 and token.startswith("eyJ")


def _extract(token: str) -> jws.CompactSignature:
    """The token's header and payload, decoded but not verified; `JWTError` if malformed."""
    try:
        obj = jws.extract_compact(token.encode("utf-8"))
    except ExceededSizeError:
        raise JWTError("JWT too large") from None
    except (JoseError, ValueError, TypeError):
        raise JWTError("malformed JWT") from None
    if not isinstance(obj.protected, dict):
        raise JWTError("malformed JWT header")
    return obj


def unverified_header(token: str) -> dict[str, Any]:
    """The JWT's header as sent (not verified); `JWTError` if malformed."""
    return _extract(token).protected


class _NotANumber(ValueError):
    """NaN or Infinity: Python's JSON parser takes them, RFC 8259 does not."""


def _no_constant(name: str) -> None:
    raise _NotANumber(name)


def _json_object(data: bytes) -> dict[str, Any]:
    """A JSON object as RFC 8259 writes it; `ValueError` saying (safely) why not."""
    try:
        value = json.loads(data, parse_constant=_no_constant)
    except _NotANumber as e:
        raise ValueError(f"{e} is not a JSON number") from None
    except (ValueError, RecursionError):
        raise ValueError("not JSON") from None
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def unverified_issuer(token: str) -> str | None:
    """
    The ``iss`` the JWT claims (not verified: only to pick the provider, so
    read leniently; `verify_jwt` refuses what is not strict JSON).
    """
    try:
        claims = json.loads(_extract(token).payload)
    except (JWTError, ValueError, RecursionError):
        return None
    iss = claims.get("iss") if isinstance(claims, dict) else None
    return iss if isinstance(iss, str) else None


def _signing_key(jwk: object) -> Key:
    """The key a JWK describes, if JWTs may be verified with it; `ValueError` saying why not."""
    if not isinstance(jwk, dict):
        raise ValueError("not a JSON object")
    try:
        key = JWKRegistry.import_key(jwk)
    except (JoseError, ValueError, TypeError, KeyError):
        raise ValueError("not a well-formed key of a supported type") from None
    if isinstance(key, OctKey):
        raise ValueError("a symmetric key (HS* is never allowed)")
    if key.get("use", "sig") != "sig":
        raise ValueError("its use is not sig")
    key_ops = key.get("key_ops")
    if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
        raise ValueError("its key_ops do not include verify")
    alg = key.get("alg")
    if alg is not None and alg not in JWT_ALGORITHMS:
        raise ValueError("its alg is not an asymmetric signature algorithm")
    if isinstance(key, RSAKey) and key.public_key.key_size < MIN_RSA_BITS:
        raise ValueError(f"an RSA key of {key.public_key.key_size} bits "
                         f"(at least {MIN_RSA_BITS} are needed)")
    return key


def _clip(kid: str) -> str:
    """A ``kid`` fit for a message or a log line: at most 64 characters, quoted, escaped."""
    return repr(kid[:64])


@attrs.frozen
class SigningKeys:
    """
    A provider's key set as the gateway uses it: the keys JWTs may be
    verified with, by ``kid`` (None for keys that have none), and the
    ``kid`` of each key it refuses to use, with why.
    """

    usable: Mapping[str | None, tuple[Key, ...]] = attrs.field(factory=dict)
    refused: Mapping[str, str] = attrs.field(factory=dict)

    def __contains__(self, kid: object) -> bool:
        """Does ``kid`` name a usable key?"""
        return (kid is None or isinstance(kid, str)) and kid in self.usable

    def __len__(self) -> int:
        """How many usable keys there are."""
        return sum(len(keys) for keys in self.usable.values())

    def knows(self, kid: str | None) -> bool:
        """Would `select` find the key ``kid`` names (usable or refused)?"""
        if kid is None:
            return None in self.usable or len(self) == 1
        return kid in self.usable or kid in self.refused

    def select(self, kid: str | None, alg: JWSAlgModel) -> tuple[Key, ...]:
        """
        The keys to try on an ``alg`` JWT naming ``kid``, in the set's order
        (a JWT without ``kid`` gets the keys that have none, or the only key
        of a set of one; a provider may publish several without a kid, or
        reuse one across a rotation); `UnknownKey` if the set has none,
        `JWTError` if the key is refused or none fits ``alg`` and its own
        JWK's ``alg``.  At most `MAX_KEYS_TRIED`, the first in the set.
        """
        if kid is None and None not in self.usable and len(self) == 1:
            candidates = next(iter(self.usable.values()))
        else:
            candidates = self.usable.get(kid, ())
        if not candidates:
            if kid is not None and kid in self.refused:
                raise JWTError(f"key {_clip(kid)} is not used: {self.refused[kid]}")
            # No kid in the text: a reason per kid would let anyone spread
            # refusals over many reasons (and so many records).
            raise UnknownKey("no kid, and more than one key" if kid is None
                             else "a key id the provider's key set does not hold")
        problem: JoseError | None = None
        fitting = []
        for key in candidates:
            try:
                alg.check_key(key)
                fitting.append(key)
            except JoseError as e:
                problem = e
        if fitting:
            return tuple(fitting[:MAX_KEYS_TRIED])
        if isinstance(problem, UnsupportedKeyAlgorithmError):
            raise JWTError(f"key is for {_shown(str(candidates[0].alg))}, not {alg.name}")
        raise JWTError(f"key type does not fit {alg.name}")


def parse_jwks(document: Any) -> SigningKeys:
    """
    The usable keys of a JWK set (a JSON object with a ``keys`` array);
    `ValueError` if it is not one or has no key the gateway may use.
    """
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("a JWKS is an object with a 'keys' array")
    usable: dict[str | None, tuple[Key, ...]] = {}
    refused: dict[str, str] = {}
    for index, jwk in enumerate(document["keys"]):
        kid = jwk.get("kid") if isinstance(jwk, dict) else None
        try:
            key = _signing_key(jwk)
        except ValueError as e:
            # A key without a kid that is a string is named by its place
            # (found by review: it was left out without a word).
            refused.setdefault(kid if isinstance(kid, str) else f"#{index}", str(e))
            continue
        usable[key.kid] = (*usable.get(key.kid, ()), key)
    if not usable:
        why = "; ".join(f"{_clip(k)}: {v}" for k, v in list(refused.items())[:5])
        raise ValueError("no key the gateway may use" + (f" ({why})" if why else ""))
    return SigningKeys(usable, refused)


def _numeric_date(value: object) -> bool:
    """A NumericDate a datetime can hold: a number from 1970 to 9999 (so not NaN)."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and 0 <= value <= _LATEST)


_CLAIM_PROBLEMS = {
    "iss": "wrong issuer", "aud": "wrong audience", "nbf": "not valid yet",
    "iat": "issued in the future",
    "sub": f"bad sub claim (a string of 1 to {MAX_SUB} printable characters)",
    "jti": "bad jti claim",
}


def _check_claims(claims: dict[str, Any], provider: OIDCProvider, now: float) -> None:
    if "events" in claims:  # RFC 8417: a logout or other security event, signed for us
        raise JWTError("a security event token (events claim) is not a credential")
    for name in ("exp", "nbf", "iat"):
        if name in claims and not _numeric_date(claims[name]):
            raise JWTError(f"{name} is not a NumericDate")
    registry = JWTClaimsRegistry(
        now=now, leeway=provider.leeway_seconds,
        iss={"essential": True, "value": provider.issuer},
        aud={"essential": True, "value": provider.audience},
        exp={"essential": True}, sub={"essential": True},
    )
    try:
        registry.validate(claims)
    except MissingClaimError as e:
        missing = [n for n in e.claim.split(",") if n in registry.options]
        raise JWTError(f"no {', '.join(missing) or 'required'} claim") from None
    except ExpiredTokenError:
        raise JWTError("expired") from None
    except InvalidClaimError as e:
        raise JWTError(_CLAIM_PROBLEMS.get(e.claim, "invalid claims")) from None
    # It becomes part of the principal's name, in logs, records and the note
    # on a triggered run: no line breaks or other control characters.
    if len(claims["sub"]) > MAX_SUB or not claims["sub"].isprintable():
        raise JWTError(_CLAIM_PROBLEMS["sub"])


def _check_client(header: Mapping[str, Any], claims: Mapping[str, Any],
                  provider: OIDCProvider) -> None:
    """
    The provider's ``token_types`` and ``authorized_parties``, if it has them:
    the kind of token (an access token, not an ID token a client was given for
    itself) and the OAuth client it was issued to.
    """
    if provider.token_types:
        typ = header.get("typ")
        if not (isinstance(typ, str) and media_type(typ) in provider.token_types):
            raise JWTError(f"the JWT's typ must be {' or '.join(provider.token_types)}")
    if provider.authorized_parties:
        # OIDC names the client in azp; RFC 9068 access tokens in client_id.
        # Both there and different: which client it was would be a guess.
        named = [claims[c] for c in ("azp", "client_id") if c in claims]
        if (not named or any(n != named[0] for n in named)
                or not isinstance(named[0], str) or named[0] not in provider.authorized_parties):
            raise JWTError("the JWT was not issued to an authorized client (azp, client_id)")


def verify_jwt(
    token: str, provider: OIDCProvider, keys: SigningKeys, now: float
) -> dict[str, Any]:
    """
    The claims of a valid JWT from ``provider``, verified with ``keys`` at
    ``now``: ``sub`` a string of 1 to 255 printable characters, ``exp`` a finite
    number a datetime can hold.  `UnknownKey` if the JWT names a key the
    set lacks, `JWTError` for every other refusal.
    """
    obj = _extract(token)
    header = obj.protected
    if "crit" in header:
        raise JWTError("the JWT has critical header parameters (crit) the gateway does not know")
    registry = _registry(provider)
    for name, parameter in registry.header_registry.items():
        if name in header:
            try:
                parameter.validate(header[name])
            except ValueError:
                raise JWTError(f"malformed JWT header: {name} has the wrong type") from None
    typ = header.get("typ")
    if isinstance(typ, str) and media_type(typ) in EVENT_TYPES:
        raise JWTError(f"a {media_type(typ)} token is an event, not a credential")
    try:
        alg = registry.get_alg(header["alg"])
    except UnsupportedAlgorithmError:
        raise JWTError(f"algorithm {_shown(header['alg'])} is not allowed") from None
    valid = False
    for key in keys.select(header.get("kid"), alg):  # valid if any of them signed it
        try:
            valid = jws.validate_compact(obj, key, registry=registry)
        except JoseError:
            raise JWTError(f"key type does not fit {alg.name}") from None
        if valid:
            break
    if not valid:
        raise JWTError("bad signature")
    try:
        claims = _json_object(obj.payload)
    except ValueError as e:
        raise JWTError(f"malformed JWT claims: {e}") from None
    try:
        _check_claims(claims, provider, now)
        _check_client(header, claims, provider)
    except JWTError as e:  # signed by the provider: who it names goes on the record
        e.claimed = claimed_by(claims)
        raise
    return claims


def claimed_by(claims: dict[str, Any]) -> dict[str, str]:
    """
    Who a JWT whose signature held names (``oidc_issuer``, ``oidc_sub``,
    clipped; those that are strings), for the record of its refusal.
    """
    return {name: value[:MAX_SUB] for name, value in (
        ("oidc_issuer", claims.get("iss")), ("oidc_sub", claims.get("sub")))
        if isinstance(value, str)}


#: Claims whose string value is a list of values separated by spaces
#: (OAuth's ``scope``, RFC 6749 section 3.3; ``scp`` where a provider names it so).
SPACE_SEPARATED_CLAIMS = frozenset({"scope", "scp"})


def claim_values(name: str, value: Any) -> list[str]:
    """
    The values a claim holds, as ``claim_roles`` reads them: a list's
    strings (anything else in it is no value); a ``scope`` string split at
    its spaces (U+0020 only, as RFC 6749 writes them); any other string
    whole.  Found by review: every string claim was split at any whitespace,
    so ``groups: "Sales airflow-admins"`` (one group, with a space in its
    name) or a scope holding U+2028 or a no-break space granted the role of
    ``airflow-admins``.
    """
    if isinstance(value, list):
        return [item for item in value if isinstance(item, str)]
    if not isinstance(value, str):
        return []
    if name in SPACE_SEPARATED_CLAIMS:
        return [item for item in value.split(" ") if item]
    return [value]


def roles_from_claims(provider: OIDCProvider, claims: dict[str, Any]) -> tuple[str, ...]:
    """The roles the provider's configured claims map to (`claim_values`)."""
    roles: list[str] = []
    for name in provider.scope_claims:
        for item in claim_values(name, claims.get(name)):
            for role in provider.claim_roles.get(item, ()):
                if role not in roles:
                    roles.append(role)
    return tuple(roles)


#: A key set larger than this is not read (providers publish a few keys: a few KB).
MAX_JWKS_BYTES = 1024 * 1024


class JWKSet:
    """
    A provider's signing keys, as `SigningKeys` in ``keys``.

    From ``jwks_url`` the set is fetched at the first token, again when a
    token names a key it lacks, and again before a token is verified once
    the set is older than ``jwks_max_age_seconds`` (a key the provider
    removed stops working within that time; after such a refresh failed,
    the next ones run behind the tokens instead) -- each at most once per
    ``jwks_refetch_cooldown_seconds``, one fetch for all who ask.  A fetch
    has ``timeout`` seconds in all, reads at most `MAX_JWKS_BYTES`, follows
    no redirect (``jwks_url`` was checked, where a redirect would lead was
    not); one that fails keeps the last good set.

    :param http: a treq ``HTTPClient`` (for ``jwks_url``).
    :raises ValueError: if the provider's ``jwks`` (from its file) has no
        usable key (`txairflowrpc.service.checked` refuses that config first).
    """

    def __init__(
        self, provider: OIDCProvider, *, http: Any, clock: IReactorTime, timeout: float = 10,
    ) -> None:
        self.provider = provider
        self._http = http
        self._clock = clock
        self._timeout = timeout
        self.keys = SigningKeys()
        self._last_fetch = float("-inf")  # the last attempt
        self._fetched_at = float("-inf")  # the last set read whole
        self._fetching: SingleFlight[None] = SingleFlight()
        self.fetches = 0
        if provider.jwks is not None:
            self._use(parse_jwks(provider.jwks))

    def _use(self, keys: SigningKeys) -> None:
        for kid, why in keys.refused.items():
            _log.warn("JWKS of {provider}: key {kid} not used: {why}",
                      provider=self.provider.name, kid=_clip(kid), why=why)
        self.keys = keys

    def adopt(self, old: JWKSet) -> None:
        """
        Keep the keys and cooldown of the set this one replaces (a reload),
        and the fetch it has under way: its keys are this set's when it ends
        (found by review: a reload during a fetch dropped what it brought
        while keeping its cooldown, so a new key, or at start-up every key,
        was refused for a whole cooldown).
        """
        if self.provider.jwks_url and old.provider.jwks_url == self.provider.jwks_url:
            self.keys, self._last_fetch = old.keys, old._last_fetch
            self._fetched_at = old._fetched_at  # its age goes on: a reload is no refresh
            self.fetches = old.fetches  # a counter: a reload must not restart it
            if old._fetching.running:
                ended = old._fetching.run(lambda: succeed(None))  # joins it; never fails
                self._fetching.run(lambda: ended.addBoth(lambda _: self._took(old)))

    def _took(self, old: JWKSet) -> None:
        """The fetch the set this one replaced had under way has ended: its result is ours."""
        self.keys, self._fetched_at = old.keys, old._fetched_at
        self.fetches = max(self.fetches, old.fetches)

    async def key_for(self, token: str) -> SigningKeys:
        """
        The key set to verify ``token`` with, refetched first if the token
        names a key the set does not know or the set is older than
        ``jwks_max_age_seconds`` (at most once per cooldown).  Never fails:
        a malformed token is left to `verify_jwt` to refuse.
        """
        try:
            kid = unverified_header(token).get("kid")
        except JWTError:
            return self.keys
        if kid is not None and not isinstance(kid, str):
            return self.keys
        if not self.provider.jwks_url:
            return self.keys
        if self._fetching.running and not self.keys.knows(kid):
            # A fetch is under way (the first after start, a rotation's): a
            # token whose key the set lacks waits for it, as the token that
            # started it does (found by review: refused at once, with the
            # key it named on its way).
            await self._fetching.run(lambda: succeed(None))  # joins it
            return self.keys
        now = self._clock.seconds()
        if now - self._last_fetch < self.provider.jwks_refetch_cooldown_seconds:
            return self.keys
        if not self.keys.knows(kid):
            await self.refresh()
        elif now - self._fetched_at >= self.provider.jwks_max_age_seconds:
            # The first refresh of an old set is waited for.  After one that
            # failed (the provider is down) a token is not held up again for
            # nothing: the set is asked for behind it.
            failed = self._last_fetch > self._fetched_at
            refreshed = self.refresh()
            if not failed:
                await refreshed
        return self.keys

    def verdicts_until(self) -> float | None:
        """
        Until when a token verified with the set as it is now may go on
        being taken as verified without `key_for` (a keep-alive connection
        that sends the same token again): while the set is younger than
        ``jwks_max_age_seconds``; once older (its refresh failed), for one
        cooldown, after which a check asks for it again.  None for a set
        from a file (a reload replaces it, and every verdict with it).
        Found by review: a connection signed in before the provider removed
        a key kept working with it for as long as it stayed open.
        """
        if not self.provider.jwks_url:
            return None
        now = self._clock.seconds()
        fresh = self._fetched_at + self.provider.jwks_max_age_seconds
        return fresh if fresh > now else now + self.provider.jwks_refetch_cooldown_seconds

    def refresh(self) -> Deferred[None]:
        """Fetch the key set now (one fetch however many ask); keep the old on failure."""
        if not self._fetching.running:
            self._last_fetch = self._clock.seconds()
        return self._fetching.run(lambda: Deferred.fromCoroutine(self._fetch()))

    async def _fetch(self) -> None:
        self.fetches += 1
        d = Deferred.fromCoroutine(self._get())
        # Whatever the cancelled exchange fails with, the deadline is the reason.
        deadline = self._clock.callLater(self._timeout, d.cancel)
        try:
            keys = await d
        except Exception as e:  # the provider is down, slow, or answered garbage
            error = (f"no answer within {self._timeout:g} s" if not deadline.active()
                     else str(e)[:200] or type(e).__name__)
            _log.warn("JWKS of {provider} not refreshed ({error}); keeping {n} known keys",
                      provider=self.provider.name, error=error, n=len(self.keys))
            return
        finally:
            if deadline.active():
                deadline.cancel()
        self._use(keys)
        self._fetched_at = self._clock.seconds()

    async def _get(self) -> SigningKeys:
        response = await self._http.get(self.provider.jwks_url, allow_redirects=False,
                                        reactor=self._clock)
        if response.code != 200:  # a redirect too
            raise ValueError(f"HTTP {response.code}")
        return parse_jwks(json.loads(await read_capped(response, MAX_JWKS_BYTES)))
