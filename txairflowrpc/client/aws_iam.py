"""
Signing in to the gateway with AWS IAM credentials, from the caller's side.

`authorization` signs an ``sts:GetCallerIdentity`` request with botocore's
SigV4 signer and packs it as the gateway's ``Authorization: AWS-IAM``
value (the format is in the README's "AWS IAM" section and in
``txairflowrpc.identity.aws``); the gateway forwards it to STS, which names
the signer.  `IAMAuthorization` keeps one value and signs anew once it is
``reuse_seconds`` old, so that the gateway, which keeps an identity STS
confirmed for as long as its signature is young enough, asks STS about
once a minute rather than once a call::

    from txairflowrpc.client.aws_iam import IAMAuthorization
    auth = IAMAuthorization("airflowrpc.example.com",
                            endpoint="https://sts.eu-west-1.amazonaws.com")
    headers = {"Authorization": auth()}

botocore is needed here only (``pip install 'txairflowrpc[aws]'``); the
gateway itself never signs anything.  The credentials are botocore's
(environment, profile, instance or task role) unless given.
"""

from __future__ import annotations

import base64
import json
import re
import time
from typing import Any, Callable
from urllib.parse import urlsplit

SCHEME = "AWS-IAM"
SERVER_ID_HEADER = "X-Airflowrpc-Server-ID"
BODY = "Action=GetCallerIdentity&Version=2011-06-15"
FORM = "application/x-www-form-urlencoded; charset=utf-8"
DEFAULT_ENDPOINT = "https://sts.amazonaws.com"
_REGIONAL = re.compile(r"sts(?:-fips)?\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?")


def region_of(endpoint: str) -> str:
    """The region requests to ``endpoint`` are signed for (us-east-1 for the global one)."""
    found = _REGIONAL.fullmatch(urlsplit(endpoint).hostname or "")
    return found.group(1) if found else "us-east-1"


def _host(url: str) -> str:
    """The Host botocore signs for ``url`` (and the gateway expects)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    default = {"https": 443, "http": 80}.get(parts.scheme)
    return host if parts.port in (None, default) else f"{host}:{parts.port}"


def signed_request(credentials: Any, server_id: str, *, endpoint: str = DEFAULT_ENDPOINT,
                   region: str | None = None) -> dict[str, Any]:
    """
    A GetCallerIdentity request to ``endpoint`` signed now with
    ``credentials`` (botocore ``Credentials``, refreshable or not), the
    gateway's ``server_id`` among the signed headers: method, URL, headers
    and body, as the gateway reads them.
    """
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest

    url = endpoint.rstrip("/") + "/"
    frozen = getattr(credentials, "get_frozen_credentials", lambda: credentials)()
    request = AWSRequest(method="POST", url=url, data=BODY, headers={
        # Set before signing so that they are signed: botocore signs a
        # Host it works out itself but does not put it in the headers.
        "Host": _host(url), "Content-Type": FORM, SERVER_ID_HEADER: server_id,
    })
    SigV4Auth(frozen, "sts", region or region_of(endpoint)).add_auth(request)
    return {"method": "POST", "url": url, "body": BODY,
            "headers": {name: value for name, value in request.headers.items()}}


def _credentials(credentials: Any) -> Any:
    if credentials is not None:
        return credentials
    import botocore.session

    found = botocore.session.get_session().get_credentials()
    if found is None:
        raise RuntimeError("no AWS credentials found (environment, profile or role)")
    return found


def authorization(server_id: str, *, credentials: Any = None, endpoint: str = DEFAULT_ENDPOINT,
                  region: str | None = None) -> str:
    """The ``Authorization`` header value: ``AWS-IAM <base64 of the signed request>``."""
    document = signed_request(_credentials(credentials), server_id, endpoint=endpoint,
                              region=region)
    packed = json.dumps(document, separators=(",", ":"), sort_keys=True).encode("ascii")
    return f"{SCHEME} {base64.b64encode(packed).decode('ascii')}"


class IAMAuthorization:
    """
    An ``Authorization`` value for every request, signed anew once it is
    ``reuse_seconds`` old (keep it well under the gateway's
    ``aws.max_age_seconds``, 300 by default).  Call it for the value.
    """

    def __init__(self, server_id: str, *, credentials: Any = None,
                 endpoint: str = DEFAULT_ENDPOINT, region: str | None = None,
                 reuse_seconds: float = 60, clock: Callable[[], float] = time.monotonic) -> None:
        self._sign = lambda: authorization(server_id, credentials=_credentials(credentials),
                                           endpoint=endpoint, region=region)
        self._reuse = reuse_seconds
        self._clock = clock
        self._value: str | None = None
        self._signed_at = float("-inf")

    def __call__(self) -> str:
        now = self._clock()
        if self._value is None or now - self._signed_at >= self._reuse:
            self._value, self._signed_at = self._sign(), now
        return self._value
