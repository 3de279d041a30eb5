"""
A stand-in for AWS STS, for the tests: it checks a GetCallerIdentity
request's SigV4 signature as STS does (botocore's signer computes it again
from the request as it arrived, with the test credentials it knows) and
answers like STS: XML by default, JSON when ``Accept`` asks for it, and
STS's error documents (``SignatureDoesNotMatch``, ``InvalidClientTokenId``,
...) with STS's status codes.

`StubSTS.answer` is the logic; `StubSTSResource` serves it in memory (for
``treq.testing.StubTreq``), `serve` on a real loopback port in a thread
(for a real ``twistd``).  It never contacts AWS and knows only the
identities it is given.
"""

from __future__ import annotations

import calendar
import gzip
import hmac
import json
import re
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator
from contextlib import contextmanager
from urllib.parse import parse_qsl

import attrs
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

_AUTH = re.compile(r"AWS4-HMAC-SHA256 Credential=([^/]+)/([0-9]{8})/([^/]+)/([^/]+)/aws4_request,"
                   r" ?SignedHeaders=([^,]+), ?Signature=([0-9a-f]+)")
XMLNS = "https://sts.amazonaws.com/doc/2011-06-15/"


@attrs.frozen
class Identity:
    """An IAM identity the stub knows: its keys, and who STS says it is."""

    access_key: str
    secret_key: str
    arn: str
    user_id: str
    token: str | None = None

    @property
    def account(self) -> str:
        return self.arn.split(":")[4]

    def credentials(self) -> Credentials:
        return Credentials(self.access_key, self.secret_key, self.token)


@attrs.define
class Seen:
    """One request as it reached the stub."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@attrs.define
class StubSTS:
    identities: list[Identity]
    region: str = "us-east-1"
    clock: Callable[[], float] = time.time
    #: Every request that arrived, in order.
    seen: list[Seen] = attrs.field(factory=list)
    #: (status, code) to answer every request with instead, e.g. (503, "ServiceUnavailable").
    fail_with: tuple[int, str] | None = None
    #: Answer this (status, content type, body) instead, whatever arrived.
    raw: tuple[int, str, bytes] | None = None
    #: Close every connection without an answer (`serve` only), as a dead STS would.
    drop: bool = False
    #: Send every answer gzipped, whatever was asked for (`serve` only), as a broken or
    #: hostile one would.
    gzipped: bool = False

    def answer(self, method: str, path: str, headers: dict[str, str],
               body: bytes) -> tuple[int, str, bytes]:
        """(status, content type, body) for a request; ``headers`` by lower-case name."""
        self.seen.append(Seen(method, path, dict(headers), body))
        as_json = "application/json" in headers.get("accept", "")
        if self.raw is not None:
            return self.raw
        if self.fail_with is not None:
            return self._error(*self.fail_with, "stub told to fail", as_json)
        identity, problem = self._check(method, path, headers, body)
        if identity is None:
            return self._error(*problem, as_json)
        request_id = str(uuid.uuid4())
        if as_json:
            return 200, "application/json", json.dumps({"GetCallerIdentityResponse": {
                "GetCallerIdentityResult": {"Account": identity.account, "Arn": identity.arn,
                                            "UserId": identity.user_id},
                "ResponseMetadata": {"RequestId": request_id}}}).encode()
        return 200, "text/xml", (
            f'<GetCallerIdentityResponse xmlns="{XMLNS}">\n'
            f"  <GetCallerIdentityResult>\n    <Arn>{identity.arn}</Arn>\n"
            f"    <UserId>{identity.user_id}</UserId>\n    <Account>{identity.account}</Account>\n"
            f"  </GetCallerIdentityResult>\n"
            f"  <ResponseMetadata>\n    <RequestId>{request_id}</RequestId>\n"
            f"  </ResponseMetadata>\n</GetCallerIdentityResponse>\n").encode()

    def _check(self, method: str, path: str, headers: dict[str, str],
               body: bytes) -> tuple[Identity | None, Any]:
        found = _AUTH.fullmatch(headers.get("authorization", ""))
        if found is None:
            return None, (403, "IncompleteSignature", "Authorization header missing or malformed")
        key_id, day, region, service, signed_list, signature = found.groups()
        identity = next((i for i in self.identities if i.access_key == key_id), None)
        if identity is None:
            return None, (403, "InvalidClientTokenId",
                          "The security token included in the request is invalid.")
        signed = signed_list.split(";")
        if identity.token is not None and (
                headers.get("x-amz-security-token") != identity.token
                or "x-amz-security-token" not in signed):
            return None, (403, "InvalidClientTokenId",
                          "The security token included in the request is invalid.")
        amz_date = headers.get("x-amz-date", "")
        try:
            signed_at = calendar.timegm(time.strptime(amz_date, "%Y%m%dT%H%M%SZ"))
        except ValueError:
            return None, (403, "IncompleteSignature", "X-Amz-Date missing")
        if abs(self.clock() - signed_at) > 900:
            return None, (403, "SignatureDoesNotMatch", "Signature expired")
        if region != self.region or service != "sts" or day != amz_date[:8]:
            return None, (403, "SignatureDoesNotMatch", "Credential should be scoped correctly")
        missing = [n for n in signed if n not in headers]
        if missing:
            return None, (403, "SignatureDoesNotMatch", "a signed header is missing")
        # Signed again, from what arrived: the signed headers with their
        # values, the path, the body; the signature must be the caller's.
        request = AWSRequest(method=method, url=f"https://{headers['host']}{path}",
                             headers={n: headers[n] for n in signed}, data=body)
        request.context["timestamp"] = amz_date
        signer = SigV4Auth(identity.credentials(), "sts", self.region)
        if signer.signed_headers(signer.headers_to_sign(request)) != signed_list:
            return None, (403, "SignatureDoesNotMatch", "signed headers differ")
        canonical = signer.canonical_request(request)
        expected = signer.signature(signer.string_to_sign(request, canonical), request)
        if not hmac.compare_digest(expected, signature):
            return None, (403, "SignatureDoesNotMatch",
                          "The request signature we calculated does not match the signature "
                          "you provided.")
        form = dict(parse_qsl(body.decode("utf-8", "replace")))
        if form.get("Action") != "GetCallerIdentity" or form.get("Version") != "2011-06-15":
            return None, (400, "InvalidAction", "Could not find operation")
        return identity, None

    @staticmethod
    def _error(status: int, code: str, message: str, as_json: bool) -> tuple[int, str, bytes]:
        kind = "Sender" if status < 500 else "Receiver"
        request_id = str(uuid.uuid4())
        if as_json:
            return status, "application/json", json.dumps({
                "Error": {"Code": code, "Message": message, "Type": kind},
                "RequestId": request_id}).encode()
        return status, "text/xml", (
            f'<ErrorResponse xmlns="{XMLNS}">\n  <Error>\n    <Type>{kind}</Type>\n'
            f"    <Code>{code}</Code>\n    <Message>{message}</Message>\n  </Error>\n"
            f"  <RequestId>{request_id}</RequestId>\n</ErrorResponse>\n").encode()


class StubSTSResource(Resource):
    """The stub as a twisted.web resource (every path), for ``StubTreq``."""

    isLeaf = True

    def __init__(self, stub: StubSTS) -> None:
        super().__init__()
        self.stub = stub
        #: Never answer (to meet the gateway's deadline).
        self.hang = False

    def render(self, request: Any) -> Any:
        if self.hang:
            return NOT_DONE_YET
        headers = {k.decode().lower(): v[-1].decode()
                   for k, v in request.requestHeaders.getAllRawHeaders()}
        status, content_type, body = self.stub.answer(
            request.method.decode(), request.path.decode(), headers, request.content.read())
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", content_type.encode())
        return body


@contextmanager
def serve(stub: StubSTS) -> Iterator[str]:
    """The stub on a real loopback port, in a thread; yields its ``http://127.0.0.1:PORT``."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            if stub.drop:
                self.close_connection = True
                return
            length = min(int(self.headers.get("Content-Length") or 0), 64 * 1024)
            body = self.rfile.read(length)
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, content_type, answer = stub.answer("POST", self.path, headers, body)
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            if stub.gzipped:
                answer = gzip.compress(answer + b" " * 10_000_000)  # 10 MB from about 10 KB
                self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
