"""
AWS IAM sign-in, the way Vault's AWS auth method does it.

A caller signs an ``sts:GetCallerIdentity`` request with its AWS
credentials (SigV4) and sends the signed request instead of a password, as
``Authorization: AWS-IAM <base64 of a JSON object>``::

    {"method": "POST", "url": "https://sts.amazonaws.com/",
     "body": "Action=GetCallerIdentity&Version=2011-06-15",
     "headers": {"Host": "sts.amazonaws.com", "X-Amz-Date": "20261126T005413Z",
                 "X-Airflowrpc-Server-ID": "airflowrpc.example.com",
                 "Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
                 "X-Amz-Security-Token": "...", "Authorization": "AWS4-HMAC-SHA256 ..."}}

`read_signed_request` checks it without a word to anyone: the exact body,
POST to the configured endpoint, the configured ``Host``, the gateway's
``X-Airflowrpc-Server-ID`` among the signed headers (so that a request
signed for anything else cannot be replayed here), ``X-Amz-Date`` within
``[aws] max_age_seconds``, a credential scope of ``sts`` in the configured
region, and sizes.  `IAMVerifier` then forwards it, unchanged, to the
configured endpoint (the URL comes from the config, never from the caller)
with treq and a deadline; STS checks the signature and names the signer.
Its answer (JSON, asked for with ``Accept``; XML read without a DTD, as a
fallback) gives the verified ARN; `principals_for` maps it to the
configured principals.

Every refusal is an `AWSError` (the caller's request is at fault) or an
`STSUnavailable` (STS could not say); their messages never carry the
credential, the access key id, the signature or the session token.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import hashlib
import hmac
import json
import re
import time
from functools import lru_cache
from typing import Any, Iterable
from urllib.parse import urlsplit
from xml.parsers import expat

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.http_headers import Headers

from ..config.access import MAX_ARN, AWSSettings, PrincipalEntry
from ..core.bodies import EncodedAnswer, TooLarge, read_capped
from ..core.singleflight import SingleFlight

_log = Logger()

#: The ``Authorization`` scheme (case-insensitive, as every HTTP scheme).
SCHEME = "AWS-IAM"
#: The header a request must sign to be for this gateway, as Vault's
#: ``X-Vault-AWS-IAM-Server-ID`` is for Vault.
SERVER_ID_HEADER = "X-Airflowrpc-Server-ID"
#: The only request forwarded: STS's GetCallerIdentity, as botocore writes it.
BODY = "Action=GetCallerIdentity&Version=2011-06-15"
FORM = "application/x-www-form-urlencoded; charset=utf-8"
#: Longest credential (the base64 text), in characters: a signed request
#: with a session token takes 2 to 4 kB, and the whole header must fit in
#: the 8 kB line most proxies allow.
MAX_CREDENTIAL = 7168
#: Most headers in a signed request, and the longest value (a session token).
MAX_HEADERS = 16
MAX_HEADER_VALUE = 4096
#: Longest answer read from STS (its answers take under 1 kB).
MAX_ANSWER = 64 * 1024
#: Most exchanges with STS at once; past it a sign-in is refused at once.
MAX_IN_FLIGHT = 64
#: Most of them on behalf of one source (an address, an IPv6 network: the
#: site's key, ``limits.ipv6_source_prefix``): forged
#: headers from one place cannot take the places others' sign-ins need.
MAX_IN_FLIGHT_PER_SOURCE = 4
#: Most identities kept (`IAMVerifier`'s cache).
MAX_CACHED = 10_000

#: Headers that are the connection's, not the request's, and one that would
#: have STS answer in a form the gateway does not read: never forwarded.
_HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "transfer-encoding", "upgrade", "expect", "accept-encoding",
})
_HEADER_NAME = re.compile(r"[A-Za-z0-9-]{1,64}")
_HEADER_VALUE = re.compile(r"[\x20-\x7e]*")
_SIGV4 = re.compile(
    r"AWS4-HMAC-SHA256 Credential=([A-Za-z0-9]{16,128})/([0-9]{8})/([a-z0-9-]{1,32})/"
    r"([a-z0-9-]{1,32})/aws4_request, ?SignedHeaders=([a-z0-9;-]{1,1024}), ?"
    r"Signature=[0-9a-f]{64}")
_AMZ_DATE = re.compile(r"([0-9]{8})T([0-9]{6})Z")
_ARN = re.compile(r"arn:aws(?:-[a-z]+)*:(?:iam|sts)::([0-9]{12}):[A-Za-z0-9+=,.@_/-]+")
_ACCOUNT = re.compile(r"[0-9]{12}")
_USER_ID = re.compile(r"[A-Za-z0-9+=,.@:_-]{1,256}")
_ERROR_CODE = re.compile(r"[A-Za-z0-9.]{1,64}")
#: STS's codes that mean "not now" rather than "not you".
_BUSY_CODES = frozenset({"Throttling", "ThrottlingException", "RequestLimitExceeded",
                         "ServiceUnavailable", "InternalFailure"})


class AWSError(Exception):
    """A signed request refused: the caller's request is at fault.  No secret in the text."""


class STSUnavailable(AWSError):
    """STS could not say who signed (down, slow, busy, or an answer that makes no sense)."""


@attrs.frozen
class CallerIdentity:
    """Who signed, as STS says: the ARN, the account and the unique id."""

    arn: str
    account: str
    user_id: str

    @property
    def is_root(self) -> bool:
        return self.arn.endswith(f":iam::{self.account}:root")

    def names(self) -> tuple[str, ...]:
        """
        The ARNs the identity is known by: its own and, for an assumed role
        (``arn:aws:sts::ACCOUNT:assumed-role/ROLE/SESSION``), its role's
        (``arn:aws:iam::ACCOUNT:role/ROLE``; STS does not say the role's path).
        """
        head, _, resource = self.arn.partition(f"::{self.account}:")
        kind, _, rest = resource.partition("/")
        role, _, session = rest.partition("/")
        if head.endswith(":sts") and kind == "assumed-role" and role and session:
            return (self.arn, f"{head[:-len(':sts')]}:iam::{self.account}:role/{role}")
        return (self.arn,)


@attrs.frozen
class SignedRequest:
    """A signed request that passed the local checks: what is forwarded, and when it was signed."""

    headers: tuple[tuple[str, str], ...] = attrs.field(repr=False)
    signed_at: float
    #: SHA-256 of the credential as sent: what an identity is cached under.
    key: bytes = attrs.field(repr=False)


def _same_endpoint(url: str, settings: AWSSettings) -> bool:
    try:
        got, want = urlsplit(url), urlsplit(settings.sts_url)
        ports = (got.port, want.port)
    except ValueError:
        return False
    default = {"https": 443, "http": 80}.get(got.scheme)
    return (got.scheme == want.scheme and got.hostname == want.hostname
            and (ports[0] or default) == (ports[1] or default)
            and got.path in ("", "/") and not got.query and not got.fragment
            and got.username is None and "?" not in url and "#" not in url)


def _decode(credential: str) -> dict[str, Any]:
    if len(credential) > MAX_CREDENTIAL:
        raise AWSError(f"credential too large (more than {MAX_CREDENTIAL} characters)")
    try:
        document = json.loads(base64.b64decode(credential, validate=True),
                              parse_constant=_no_constant)
    except (binascii.Error, ValueError, RecursionError):
        raise AWSError("malformed credential (base64 of a JSON object expected)") from None
    if not isinstance(document, dict):
        raise AWSError("malformed credential (base64 of a JSON object expected)")
    unknown = sorted(set(document) - {"method", "url", "headers", "body"})
    if unknown:
        raise AWSError(f"malformed credential: unknown member {unknown[0][:32]!r}")
    for name in ("method", "url", "body"):
        if not isinstance(document.get(name), str):
            raise AWSError(f"malformed credential: {name} must be a string")
    headers = document.get("headers")
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        raise AWSError("malformed credential: headers must be an object of strings")
    return document


def _no_constant(name: str) -> None:
    raise ValueError(name)


def _headers(sent: dict[str, str]) -> dict[str, tuple[str, str]]:
    """The sent headers by lower-case name: (name as sent, value); `AWSError` if any is unfit."""
    if len(sent) > MAX_HEADERS:
        raise AWSError(f"too many headers (at most {MAX_HEADERS})")
    headers: dict[str, tuple[str, str]] = {}
    for name, value in sent.items():
        if not _HEADER_NAME.fullmatch(name):
            raise AWSError("a header name is not a plain token")
        lower = name.lower()
        if lower in headers:
            raise AWSError(f"header {name} is sent twice")
        if lower in _HOP_BY_HOP or lower.startswith("proxy-"):
            raise AWSError(f"header {name} may not be forwarded")
        if len(value) > MAX_HEADER_VALUE or not _HEADER_VALUE.fullmatch(value):
            raise AWSError(f"header {name} is too long or holds other than printable ASCII")
        headers[lower] = (name, value)
    return headers


def _signed_at(value: str) -> float:
    found = _AMZ_DATE.fullmatch(value)
    if found is None:
        raise AWSError("X-Amz-Date is not a SigV4 date (YYYYMMDDTHHMMSSZ)")
    try:
        return float(calendar.timegm(time.strptime(value, "%Y%m%dT%H%M%SZ")))
    except ValueError:
        raise AWSError("X-Amz-Date is not a SigV4 date (YYYYMMDDTHHMMSSZ)") from None


def read_signed_request(credential: str, settings: AWSSettings, now: float) -> SignedRequest:
    """
    Check a credential (the text after ``AWS-IAM``) against ``settings`` at
    ``now``, before anything is sent anywhere; `AWSError` saying why not.
    """
    document = _decode(credential)
    if document["method"] != "POST":
        raise AWSError("the signed request must be a POST")
    if not _same_endpoint(document["url"], settings):
        raise AWSError(f"the signed request is for another URL "
                       f"(this gateway accepts {settings.sts_url})")
    if document["body"] != BODY:
        raise AWSError(f"the signed body must be exactly {BODY}")
    headers = _headers(document["headers"])

    authorization = headers.get("authorization", ("", ""))[1]
    signature = _SIGV4.fullmatch(authorization)
    if signature is None:
        raise AWSError("Authorization is not an AWS4-HMAC-SHA256 signature")
    _key_id, scope_date, region, service, signed_list = signature.groups()
    if service != "sts" or region != settings.region:
        raise AWSError(f"the request is not signed for sts in {settings.region}")
    signed = signed_list.split(";")

    host = headers.get("host", ("", settings.sts_host))[1]
    if host.lower() != settings.sts_host:
        raise AWSError(f"the signed Host is not {settings.sts_host}")
    for name in ("host", "x-amz-date", SERVER_ID_HEADER.lower()):
        if name not in signed:
            shown = {"host": "Host", "x-amz-date": "X-Amz-Date"}.get(name, SERVER_ID_HEADER)
            raise AWSError(f"{shown} is not among the signed headers")
    missing = [n for n in signed if n != "host" and n not in headers]
    if missing:
        raise AWSError(f"signed header {missing[0][:64]} is not sent")
    server_id = headers[SERVER_ID_HEADER.lower()][1]
    if not hmac.compare_digest(server_id.encode(), settings.server_id.encode()):
        raise AWSError(f"{SERVER_ID_HEADER} is not this gateway's")
    if "content-length" in headers and headers["content-length"][1] != str(len(BODY)):
        raise AWSError("Content-Length is not the body's")
    payload_hash = headers.get("x-amz-content-sha256", ("", None))[1]
    if payload_hash is not None and payload_hash != hashlib.sha256(BODY.encode()).hexdigest():
        raise AWSError("X-Amz-Content-SHA256 is not the body's")

    amz_date = headers["x-amz-date"][1]
    signed_at = _signed_at(amz_date)
    if scope_date != amz_date[:8]:
        raise AWSError("the credential scope's date is not X-Amz-Date's")
    age = now - signed_at
    if age > settings.max_age_seconds:
        raise AWSError(f"the request was signed {age:.0f} s ago "
                       f"(at most {settings.max_age_seconds:g} s is accepted)")
    if -age > settings.clock_skew_seconds:
        raise AWSError(f"the request is dated {-age:.0f} s ahead of the gateway's clock "
                       f"(at most {settings.clock_skew_seconds:g} s)")

    # Forwarded: what the caller signed, exactly as sent, and its signature;
    # the Host the config's (as the caller spelt it, if it did: the
    # signature does not forgive a change of case); nothing else of the
    # caller's.  The body and the URL are the gateway's own.
    forwarded = [headers[n] for n in dict.fromkeys(signed) if n not in ("host", "content-length")]
    forwarded += [("Host", host), headers["authorization"]]
    if "content-type" not in signed:
        forwarded.append(("Content-Type", FORM))
    if "accept" not in signed:
        forwarded.append(("Accept", "application/json"))
    return SignedRequest(tuple(forwarded), signed_at,
                         hashlib.sha256(credential.encode("ascii")).digest())


# -- STS's answer -------------------------------------------------------------


class _Refused(Exception):
    pass


def _forbid(*args: Any) -> None:
    raise _Refused()


def _xml_fields(body: bytes, wanted: dict[tuple[str, ...], str]) -> dict[str, str]:
    """
    The text of the elements at the paths ``wanted`` names, read with expat
    as the gateway reads XML-RPC: a DOCTYPE, an entity declaration or an
    external reference stops the parse (so no entity is ever expanded).
    """
    found: dict[str, str] = {}
    path: list[str] = []
    text: list[str] = []

    def start(name: str, attributes: Any) -> None:
        if len(path) >= 16:
            raise _Refused()
        path.append(name)
        text.clear()

    def end(name: str) -> None:
        key = wanted.get(tuple(path))
        if key is not None and key not in found:
            found[key] = "".join(text).strip()
        path.pop()
        text.clear()

    parser = expat.ParserCreate()
    parser.StartDoctypeDeclHandler = _forbid
    parser.EntityDeclHandler = _forbid
    parser.UnparsedEntityDeclHandler = _forbid
    parser.ExternalEntityRefHandler = _forbid
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = text.append
    try:
        parser.Parse(body, True)
    except (expat.ExpatError, _Refused, ValueError):
        raise ValueError("not XML STS would write") from None
    return found


def _json_fields(body: bytes, wanted: dict[tuple[str, ...], str]) -> dict[str, str]:
    try:
        document = json.loads(body, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        raise ValueError("not JSON") from None
    found: dict[str, str] = {}
    for path, key in wanted.items():
        value: Any = document
        for step in path:
            value = value.get(step) if isinstance(value, dict) else None
        if isinstance(value, str):
            found[key] = value
    return found


def _fields(body: bytes, content_type: str, wanted: dict[tuple[str, ...], str]) -> dict[str, str]:
    as_json = "json" in content_type if content_type else body.lstrip()[:1] == b"{"
    return (_json_fields if as_json else _xml_fields)(body, wanted)


_IDENTITY = {
    ("GetCallerIdentityResponse", "GetCallerIdentityResult", name): name
    for name in ("Arn", "Account", "UserId")
}
_ERROR = {("ErrorResponse", "Error", "Code"): "Code", ("Error", "Code"): "Code"}


def caller_identity(body: bytes, content_type: str = "") -> CallerIdentity:
    """The identity in STS's answer to GetCallerIdentity; `ValueError` if it holds none."""
    fields = _fields(body, content_type, _IDENTITY)
    arn, account, user_id = (fields.get(k, "") for k in ("Arn", "Account", "UserId"))
    found = _ARN.fullmatch(arn) if len(arn) <= MAX_ARN else None
    if found is None or not _ACCOUNT.fullmatch(account) or found.group(1) != account:
        raise ValueError("no ARN and account in it")
    if not _USER_ID.fullmatch(user_id):
        raise ValueError("no user id in it")
    return CallerIdentity(arn, account, user_id)


def error_code(body: bytes, content_type: str = "") -> str | None:
    """The ``Code`` of an STS error answer, if it has a plain one."""
    try:
        code = _fields(body, content_type, _ERROR).get("Code", "")
    except ValueError:
        return None
    return code if _ERROR_CODE.fullmatch(code) else None


# -- Mapping to principals ----------------------------------------------------


@lru_cache(maxsize=1024)
def _pattern(arn: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in arn.split("*")))


def principals_for(identity: CallerIdentity,
                   principals: Iterable[PrincipalEntry]) -> list[PrincipalEntry]:
    """
    The principals ``identity`` signs in as: those with an ``aws_arns``
    entry that names it (an assumed role also by its role's ARN), or
    failing that those whose ``aws_accounts`` hold its account (never for
    the account's root, which only an ARN names).
    """
    entries = list(principals)
    names = identity.names()
    by_arn = [e for e in entries
              if any(_pattern(p).fullmatch(n) for p in e.aws_arns for n in names)]
    if by_arn or identity.is_root:
        return by_arn
    return [e for e in entries if identity.account in e.aws_accounts]


# -- Asking STS ---------------------------------------------------------------


class IAMVerifier:
    """
    Verifies AWS-IAM credentials against ``settings``: checks them locally,
    forwards them to STS with ``http`` (a treq ``HTTPClient``) within
    ``timeout_seconds``, and reads who signed.

    With ``cache_verified`` an identity STS confirmed is kept under the
    hash of the credential until the signature is ``max_age_seconds`` old,
    when the local check refuses it anyway: a replay of the same header
    meanwhile is what STS itself would accept, so the cache lets in nothing
    more, and spares STS one call per request.  Concurrent requests with
    the same credential share one call.
    """

    def __init__(self, settings: AWSSettings, *, http: Any, clock: IReactorTime,
                 max_in_flight: int = MAX_IN_FLIGHT) -> None:
        self.settings = settings
        self._http = http
        self._clock = clock
        self._max_in_flight = max_in_flight
        self._cache: dict[bytes, tuple[CallerIdentity, float]] = {}
        self._flights: dict[bytes, SingleFlight[CallerIdentity]] = {}
        self.in_flight = 0
        self._by_source: dict[str, int] = {}
        self._warned_at = float("-inf")
        self._unwarned = 0
        #: Exchanges with STS so far (for tests and the curious).
        self.sts_calls = 0

    def adopt(self, old: "IAMVerifier | None") -> None:
        """Keep what ``old`` verified, if it checked against the same STS and rules (a reload)."""
        if old is not None and old.settings == self.settings and self.settings.cache_verified:
            self._cache = old._cache

    def accepted_until(self, credential: str) -> float:
        """
        Until when ``credential`` (a signature that passed `verify`) is
        accepted: its signing time plus ``max_age_seconds``.  A verdict kept
        for it (a keep-alive connection's) must not outlive that.
        """
        now = self._clock.seconds()
        try:
            signed = read_signed_request(credential, self.settings, now)
        except AWSError:  # it aged out while STS answered: check it again next time
            return now
        return self._accepted_until(signed)

    def _accepted_until(self, signed: SignedRequest) -> float:
        return signed.signed_at + self.settings.max_age_seconds

    def verify(self, credential: str, source: str = "") -> Deferred[CallerIdentity]:
        """
        Who signed ``credential``; fails with `AWSError`, or `STSUnavailable`
        when STS could not say (or is asked on behalf of ``source`` already
        `MAX_IN_FLIGHT_PER_SOURCE` times).  Cancelling it withdraws this
        caller only.
        """
        try:
            now = self._clock.seconds()
            signed = read_signed_request(credential, self.settings, now)
        except AWSError as e:
            return fail(e)
        cached = self._cache.get(signed.key)
        if cached is not None and now <= cached[1]:
            return succeed(cached[0])
        flight = self._flights.setdefault(signed.key, SingleFlight())
        return flight.run(lambda: self._ask(signed, source))

    def _ask(self, signed: SignedRequest, source: str = "") -> Deferred[CallerIdentity]:
        def done(result: Any) -> Any:
            self._flights.pop(signed.key, None)
            if isinstance(result, CallerIdentity) and self.settings.cache_verified:
                self._keep(signed, result)
            return result

        return Deferred.fromCoroutine(self._exchange(signed, source)).addBoth(done)

    def _keep(self, signed: SignedRequest, identity: CallerIdentity) -> None:
        now = self._clock.seconds()
        if len(self._cache) >= MAX_CACHED:
            self._cache = {k: v for k, v in self._cache.items() if v[1] >= now}
        while len(self._cache) >= MAX_CACHED:
            del self._cache[next(iter(self._cache))]
        self._cache[signed.key] = (identity, self._accepted_until(signed))

    async def _exchange(self, signed: SignedRequest, source: str = "") -> CallerIdentity:
        if self.in_flight >= self._max_in_flight:
            raise STSUnavailable("too many sign-ins in progress")
        if self._by_source.get(source, 0) >= MAX_IN_FLIGHT_PER_SOURCE:
            raise STSUnavailable("too many sign-ins in progress from this address")
        self.in_flight += 1
        self._by_source[source] = self._by_source.get(source, 0) + 1
        self.sts_calls += 1
        timeout = self.settings.timeout_seconds
        d = Deferred.fromCoroutine(self._post(signed))
        # Whatever the cancelled request fails with (CancelledError, or
        # treq's ResponseNeverReceived around it), the deadline is the reason.
        deadline = self._clock.callLater(timeout, d.cancel)
        try:
            status, content_type, body = await d
        except TooLarge:
            raise self._unavailable("STS's answer is too large") from None
        except EncodedAnswer as e:
            raise self._unavailable(f"STS's answer could not be read ({e})") from None
        except Exception as e:  # refused, reset, DNS, TLS: all "could not be reached"
            if not deadline.active():
                raise self._unavailable(f"STS did not answer within {timeout:g} s") from None
            raise self._unavailable("STS could not be reached", type(e).__name__) from None
        finally:
            self.in_flight -= 1
            left = self._by_source.pop(source) - 1
            if left:
                self._by_source[source] = left
            if deadline.active():
                deadline.cancel()
        if status == 200:
            try:
                return caller_identity(body, content_type)
            except ValueError as e:
                raise self._unavailable(f"STS's answer could not be read ({e})") from None
        code = error_code(body, content_type)
        if status in (400, 403) and code not in _BUSY_CODES:
            raise AWSError(f"STS refused the signed request ({code or f'HTTP {status}'})")
        raise self._unavailable(f"STS answered HTTP {status}" + (f" {code}" if code else ""))

    def _unavailable(self, why: str, detail: str = "") -> STSUnavailable:
        # Once a minute at most: an STS outage under load is one line, not thousands.
        now = self._clock.seconds()
        self._unwarned += 1
        if now - self._warned_at >= 60:
            _log.warn("AWS IAM sign-in refused, STS unavailable: {why}{detail} ({endpoint}; "
                      "{count} such refusals since the last line)", why=why,
                      detail=f": {detail}" if detail else "", endpoint=self.settings.sts_endpoint,
                      count=self._unwarned)
            self._warned_at, self._unwarned = now, 0
        return STSUnavailable(why)

    async def _post(self, signed: SignedRequest) -> tuple[int, str, bytes]:
        headers = Headers()
        for name, value in signed.headers:
            headers.addRawHeader(name.encode("ascii"), value.encode("ascii"))
        response = await self._http.request(
            "POST", self.settings.sts_url, headers=headers, data=BODY.encode("ascii"),
            allow_redirects=False,
        )
        body = await read_capped(response, MAX_ANSWER)
        content_type = (response.headers.getRawHeaders(b"content-type") or [b""])[0]
        return response.code, content_type.decode("latin-1").lower(), body

