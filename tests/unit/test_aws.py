"""
AWS IAM sign-in, in memory: a caller signs GetCallerIdentity with botocore,
the gateway checks it and forwards it (StubTreq) to a stand-in STS that
checks the signature with botocore's signer as STS would.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import attrs
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from treq.testing import StubTreq
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from txairflowrpc import config as config_module
from txairflowrpc.client import aws_iam as client
from txairflowrpc.config.access import AWSSettings, PrincipalEntry
from txairflowrpc.devstack.pki import DevPKI
from txairflowrpc.identity import aws
from txairflowrpc.identity.authenticate import Gate, Unauthenticated
from txairflowrpc.identity.aws import CallerIdentity, IAMVerifier, principals_for
from txairflowrpc.service.checked import build_authenticator, load_checked
from txairflowrpc.service.reload import Reloader

from ..sts_stub import Identity, StubSTS, StubSTSResource
from .test_access import FakeRequest, _patch_peer, cert, load, pki  # noqa: F401

ENDPOINT = "https://sts.eu-west-1.amazonaws.com"
URL = ENDPOINT + "/"
HOST = "sts.eu-west-1.amazonaws.com"
REGION = "eu-west-1"
SERVER_ID = "airflowrpc.test"
SETTINGS = AWSSettings(sts_endpoint=ENDPOINT, region=REGION, server_id=SERVER_ID,
                       max_age_seconds=300, clock_skew_seconds=60, timeout_seconds=5,
                       cache_verified=True)

ALICE = Identity("AKIAALICE00000000001", "alice/secret+key0000000000000000000000000",
                 "arn:aws:iam::111122223333:user/alice", "AIDAALICE000000000001")
DEPLOYER = Identity("ASIADEPLOY0000000001", "deployer/secret+key00000000000000000000000",
                    "arn:aws:sts::111122223333:assumed-role/deployer/ci-run-42",
                    "AROADEPLOY00000000001:ci-run-42",
                    token="FwoGZXIvYXdzEDeployerSessionToken" + "x" * 600)
ROOT = Identity("AKIAROOT000000000001", "root/secret+key0000000000000000000000000",
                "arn:aws:iam::111122223333:root", "111122223333")
STRANGER = Identity("AKIASTRANGER00000001", "stranger/secret+key0000000000000000000000",
                    "arn:aws:iam::999988887777:user/mallory", "AIDASTRANGER000000001")
SECRETS = [i.secret_key for i in (ALICE, DEPLOYER, ROOT, STRANGER)] + [DEPLOYER.token]


def signed(identity: Identity, *, headers: dict[str, str] | None = None, url: str = URL,
           body: str = aws.BODY, region: str = REGION, service: str = "sts",
           drop: tuple[str, ...] = (), unsigned: dict[str, str] | None = None,
           secret: str | None = None) -> dict[str, Any]:
    """A request signed now with botocore, as a caller signs it; ``unsigned`` added after."""
    sent = {"Host": HOST, "Content-Type": aws.FORM, aws.SERVER_ID_HEADER: SERVER_ID,
            **(headers or {})}
    for name in drop:
        del sent[name]
    request = AWSRequest(method="POST", url=url, data=body, headers=sent)
    credentials = identity.credentials()
    if secret is not None:
        credentials = attrs.evolve(identity, secret_key=secret).credentials()
    SigV4Auth(credentials, service, region).add_auth(request)
    document = {"method": "POST", "url": url, "body": body,
                "headers": dict(request.headers.items())}
    document["headers"].update(unsigned or {})
    return document


def pack(document: Any) -> str:
    return base64.b64encode(json.dumps(document).encode()).decode()


@attrs.define
class World:
    clock: Clock
    stub: StubSTS
    resource: StubSTSResource
    http: StubTreq
    verifier: IAMVerifier

    def verify(self, credential: str) -> Any:
        """What the verifier says (an identity, or raises), after the in-memory exchange."""
        d = self.verifier.verify(credential)
        self.http.flush()
        results: list[Any] = []
        d.addBoth(results.append)
        assert results, "still waiting"
        if isinstance(results[0], BaseException) or hasattr(results[0], "raiseException"):
            results[0].raiseException()
        return results[0]


def world(settings: AWSSettings = SETTINGS, **kw: Any) -> World:
    clock = Clock()
    clock.advance(time.time())
    stub = StubSTS([ALICE, DEPLOYER, ROOT, STRANGER], region=settings.region,
                   clock=clock.seconds)
    resource = StubSTSResource(stub)
    http = StubTreq(resource)
    return World(clock, stub, resource, http, IAMVerifier(settings, http=http, clock=clock, **kw))


@pytest.fixture
def w() -> World:
    return world()


class TestSignedRequests:
    def test_sts_names_the_signer(self, w: World) -> None:
        assert w.verify(pack(signed(ALICE))) == CallerIdentity(
            ALICE.arn, "111122223333", ALICE.user_id)
        (seen,) = w.stub.seen
        assert seen.path == "/" and seen.body == aws.BODY.encode()
        assert seen.headers["host"] == HOST and seen.headers["accept"] == "application/json"

    def test_a_session_token_is_forwarded_and_signed(self, w: World) -> None:
        identity = w.verify(pack(signed(DEPLOYER)))
        assert identity.arn == DEPLOYER.arn
        assert w.stub.seen[0].headers["x-amz-security-token"] == DEPLOYER.token

    def test_the_sts_answer_may_be_xml(self, w: World) -> None:
        """A caller that signed its own Accept gets STS's XML; it is read as well."""
        identity = w.verify(pack(signed(ALICE, headers={"Accept": "text/xml"})))
        assert identity.arn == ALICE.arn
        assert w.stub.seen[0].headers["accept"] == "text/xml"

    def test_a_host_botocore_worked_out_itself_is_supplied_from_the_config(self, w: World) -> None:
        document = signed(ALICE, drop=("Host",))
        assert "Host" not in document["headers"]
        assert w.verify(pack(document)).arn == ALICE.arn

    def test_the_client_helper_signs_what_the_gateway_accepts(self, w: World) -> None:
        header = client.authorization(SERVER_ID, credentials=DEPLOYER.credentials(),
                                      endpoint=ENDPOINT)
        scheme, _, credential = header.partition(" ")
        assert scheme == aws.SCHEME
        assert w.verify(credential).arn == DEPLOYER.arn

    def test_only_signed_headers_are_forwarded(self, w: World) -> None:
        document = signed(ALICE, unsigned={"X-Forwarded-For": "10.0.0.1", "X-Evil": "1"})
        assert w.verify(pack(document)).arn == ALICE.arn
        assert not {"x-forwarded-for", "x-evil"} & set(w.stub.seen[0].headers)


# Each refused before anything is sent to STS: (how the request differs, what is said).
LOCAL_REFUSALS = [
    (lambda: signed(ALICE, headers={"Host": "sts.us-east-1.amazonaws.com"}),
     f"the signed Host is not {HOST}"),
    (lambda: signed(ALICE, url="https://sts.evil.example/"),
     "the signed request is for another URL"),
    (lambda: signed(ALICE, url=URL + "?Action=GetCallerIdentity"),
     "the signed request is for another URL"),
    (lambda: signed(ALICE, drop=(aws.SERVER_ID_HEADER,)),
     "X-Airflowrpc-Server-ID is not among the signed headers"),
    (lambda: signed(ALICE, drop=(aws.SERVER_ID_HEADER,),
                    unsigned={aws.SERVER_ID_HEADER: SERVER_ID}),
     "X-Airflowrpc-Server-ID is not among the signed headers"),
    (lambda: signed(ALICE, headers={aws.SERVER_ID_HEADER: "another-gateway"}),
     "X-Airflowrpc-Server-ID is not this gateway's"),
    (lambda: signed(ALICE, body="Action=AssumeRole&Version=2011-06-15&RoleArn=x"),
     "the signed body must be exactly"),
    (lambda: signed(ALICE, body="Version=2011-06-15&Action=GetCallerIdentity"),
     "the signed body must be exactly"),
    (lambda: {**signed(ALICE), "method": "GET"}, "must be a POST"),
    (lambda: signed(ALICE, region="us-east-1"), "not signed for sts in eu-west-1"),
    (lambda: signed(ALICE, service="iam"), "not signed for sts in eu-west-1"),
    (lambda: signed(ALICE, unsigned={"Authorization": "Bearer x"}),
     "not an AWS4-HMAC-SHA256 signature"),
    (lambda: signed(ALICE, headers={"X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"}),
     "X-Amz-Content-SHA256 is not the body's"),
    (lambda: signed(ALICE, headers={"Content-Length": "9999"}), "Content-Length is not"),
    (lambda: signed(ALICE, unsigned={"Transfer-Encoding": "chunked"}),
     "Transfer-Encoding may not be forwarded"),
    (lambda: signed(ALICE, unsigned={"X-Smuggle": "a\r\nHost: evil"}),
     "printable ASCII"),
    (lambda: signed(ALICE, unsigned={f"X-Pad-{i}": "x" for i in range(20)}), "too many headers"),
    (lambda: signed(ALICE, unsigned={"X-Big": "x" * 4200}), "too long"),
    (lambda: {**signed(ALICE), "extra": 1}, "unknown member 'extra'"),
    (lambda: {**signed(ALICE), "headers": {"Host": ["a", "b"]}}, "headers must be an object"),
    (lambda: [1, 2], "base64 of a JSON object"),
]


class TestRefusedLocally:
    @pytest.mark.parametrize("make,reason", LOCAL_REFUSALS)
    def test_refused_before_sts_is_asked(self, w: World, make: Any, reason: str) -> None:
        with pytest.raises(aws.AWSError, match=reason) as e:
            w.verify(pack(make()))
        assert not isinstance(e.value, aws.STSUnavailable)
        assert w.stub.seen == []

    def test_a_signed_header_that_is_not_sent(self, w: World) -> None:
        document = signed(ALICE, headers={"X-Extra": "1"})
        del document["headers"]["X-Extra"]
        with pytest.raises(aws.AWSError, match="signed header x-extra is not sent"):
            w.verify(pack(document))

    @pytest.mark.parametrize("credential,reason", [
        ("A" * (aws.MAX_CREDENTIAL + 1), "credential too large"),
        ("not base64!", "base64 of a JSON object"),
        (base64.b64encode(b"{not json").decode(), "base64 of a JSON object"),
        (base64.b64encode(b'{"method": NaN}').decode(), "base64 of a JSON object"),
        (base64.b64encode(b"[" * 100000 + b"]" * 100000).decode()[:7000], "base64"),
    ])
    def test_malformed_credentials(self, w: World, credential: str, reason: str) -> None:
        with pytest.raises(aws.AWSError, match=reason):
            w.verify(credential)
        assert w.stub.seen == []

    def test_a_signature_older_than_max_age_is_refused(self, w: World) -> None:
        credential = pack(signed(ALICE))
        w.clock.advance(SETTINGS.max_age_seconds + 2)
        with pytest.raises(aws.AWSError, match=r"signed 30\d s ago \(at most 300 s"):
            w.verify(credential)
        assert w.stub.seen == []

    def test_a_signature_from_the_future_is_refused(self, w: World) -> None:
        credential = pack(signed(ALICE))
        w.clock.advance(-SETTINGS.clock_skew_seconds - 5)
        with pytest.raises(aws.AWSError, match="ahead of the gateway's clock"):
            w.verify(credential)
        w.clock.advance(10)
        assert w.verify(credential).arn == ALICE.arn

    def test_the_message_carries_no_secret(self, w: World) -> None:
        document = signed(DEPLOYER, headers={aws.SERVER_ID_HEADER: "another-gateway"})
        with pytest.raises(aws.AWSError) as e:
            w.verify(pack(document))
        signature = document["headers"]["Authorization"].rpartition("=")[2]
        for secret in (*SECRETS, signature, DEPLOYER.access_key):
            assert secret not in str(e.value)


class TestSTSAnswers:
    def test_a_bad_signature_is_sts_403(self, w: World) -> None:
        with pytest.raises(aws.AWSError, match=r"STS refused the signed request "
                                               r"\(SignatureDoesNotMatch\)") as e:
            w.verify(pack(signed(ALICE, secret="not/alices/secret0000000000000000000000000")))
        assert not isinstance(e.value, aws.STSUnavailable)
        assert len(w.stub.seen) == 1

    def test_a_key_sts_does_not_know(self, w: World) -> None:
        nobody = attrs.evolve(ALICE, access_key="AKIANOBODY0000000001")
        with pytest.raises(aws.AWSError, match="InvalidClientTokenId"):
            w.verify(pack(signed(nobody)))

    def test_a_header_changed_after_signing_is_sts_403(self, w: World) -> None:
        """The stub really checks: the same request with one signed value changed fails."""
        document = signed(ALICE, headers={"X-Extra": "1"})
        document["headers"]["X-Extra"] = "2"
        with pytest.raises(aws.AWSError, match="SignatureDoesNotMatch"):
            w.verify(pack(document))

    @pytest.mark.parametrize("status,code,words", [
        (503, "ServiceUnavailable", "STS answered HTTP 503 ServiceUnavailable"),
        (500, "InternalFailure", "STS answered HTTP 500 InternalFailure"),
        (400, "Throttling", "STS answered HTTP 400 Throttling"),
        (404, "NotFound", "STS answered HTTP 404"),
    ])
    def test_sts_failing_is_unavailable_not_the_callers_fault(
        self, w: World, status: int, code: str, words: str,
    ) -> None:
        w.stub.fail_with = (status, code)
        with pytest.raises(aws.STSUnavailable, match=words):
            w.verify(pack(signed(ALICE)))

    def test_sts_unreachable(self) -> None:
        class Down:
            def request(self, *args: Any, **kw: Any) -> Deferred[Any]:
                return fail(ConnectionRefusedError("127.0.0.1"))

        clock = Clock()
        clock.advance(time.time())
        verifier = IAMVerifier(SETTINGS, http=Down(), clock=clock)
        results: list[Any] = []
        verifier.verify(pack(signed(ALICE))).addErrback(results.append)
        assert results[0].check(aws.STSUnavailable)
        assert str(results[0].value) == "STS could not be reached"

    def test_sts_too_slow_meets_the_deadline(self, w: World) -> None:
        w.resource.hang = True
        d = w.verifier.verify(pack(signed(ALICE)))
        w.http.flush()
        assert not d.called and w.verifier.in_flight == 1
        w.clock.advance(SETTINGS.timeout_seconds)
        failures: list[Any] = []
        d.addErrback(failures.append)
        assert failures and failures[0].check(aws.STSUnavailable)
        assert "did not answer within 5 s" in str(failures[0].value)
        assert w.verifier.in_flight == 0

    @pytest.mark.parametrize("answer,words", [
        ((200, "text/xml", b"<html>hello</html>"), "could not be read"),
        ((200, "application/json", b'{"GetCallerIdentityResponse": 1}'), "could not be read"),
        ((200, "application/json", b"not json"), "could not be read"),
        # The account STS names must be the ARN's.
        ((200, "application/json", json.dumps({"GetCallerIdentityResponse": {
            "GetCallerIdentityResult": {"Arn": ALICE.arn, "Account": "999988887777",
                                        "UserId": "x"}}}).encode()), "could not be read"),
        ((200, "text/xml", b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "y">]>'
                           b"<GetCallerIdentityResponse><GetCallerIdentityResult>"
                           b"<Arn>&x;</Arn></GetCallerIdentityResult></GetCallerIdentityResponse>"),
         "could not be read"),
        ((200, "text/xml", b"<a>" + b"x" * (aws.MAX_ANSWER + 1) + b"</a>"), "too large"),
    ])
    def test_answers_that_make_no_sense_are_unavailable(self, w: World, answer: Any,
                                                        words: str) -> None:
        w.stub.raw = answer
        with pytest.raises(aws.STSUnavailable, match=words):
            w.verify(pack(signed(ALICE)))

    def test_xml_is_read_without_any_doctype(self) -> None:
        answer = (b'<GetCallerIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
                  b"<GetCallerIdentityResult><Arn>" + ALICE.arn.encode() + b"</Arn>"
                  b"<UserId>AIDAALICE000000000001</UserId><Account>111122223333</Account>"
                  b"</GetCallerIdentityResult></GetCallerIdentityResponse>")
        assert aws.caller_identity(answer, "text/xml").arn == ALICE.arn
        assert aws.caller_identity(b'<?xml version="1.0" encoding="UTF-8"?>\n' + answer).arn \
            == ALICE.arn
        doctype = b'<!DOCTYPE GetCallerIdentityResponse SYSTEM "http://evil.example/x.dtd">'
        with pytest.raises(ValueError, match="not XML STS would write"):
            aws.caller_identity(doctype + answer, "text/xml")

    def test_a_billion_laughs_is_never_expanded(self) -> None:
        bomb = (b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">'
                + b"".join(b'<!ENTITY %c "%s">' % (98 + i, b"&%c;" % (97 + i) * 10)
                           for i in range(8))
                + b"]><GetCallerIdentityResponse><GetCallerIdentityResult><Arn>&i;</Arn>"
                  b"</GetCallerIdentityResult></GetCallerIdentityResponse>")
        with pytest.raises(ValueError, match="not XML STS would write"):
            aws.caller_identity(bomb, "text/xml")

    def test_error_codes_are_read_plainly_or_not_at_all(self) -> None:
        assert aws.error_code(b'{"Error": {"Code": "ExpiredToken"}}', "application/json") == \
            "ExpiredToken"
        assert aws.error_code(b"<ErrorResponse><Error><Code>A B\nC</Code></Error></ErrorResponse>",
                              "text/xml") is None
        assert aws.error_code(b"garbage", "") is None

    def test_unavailable_is_logged_once_a_minute_without_secrets(self, w: World) -> None:
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        try:
            w.stub.fail_with = (503, "ServiceUnavailable")
            for _ in range(3):
                with pytest.raises(aws.STSUnavailable):
                    w.verify(pack(signed(DEPLOYER)))
            w.clock.advance(61)
            with pytest.raises(aws.STSUnavailable):
                w.verify(pack(signed(DEPLOYER)))
        finally:
            globalLogPublisher.removeObserver(events.append)
        lines = [e for e in events if "STS unavailable" in e.get("log_format", "")]
        assert [e["count"] for e in lines] == [1, 3]
        text = repr(events)
        for secret in (*SECRETS, DEPLOYER.access_key):
            assert secret not in text


class TestCache:
    def test_a_confirmed_identity_is_kept_while_its_signature_is_young(self, w: World) -> None:
        credential = pack(signed(ALICE))
        assert w.verify(credential).arn == ALICE.arn
        w.clock.advance(SETTINGS.max_age_seconds - 1)
        assert w.verify(credential).arn == ALICE.arn
        assert w.verifier.sts_calls == 1
        w.clock.advance(2)
        with pytest.raises(aws.AWSError, match="signed 30. s ago"):
            w.verify(credential)
        assert w.verifier.sts_calls == 1

    def test_another_signature_is_asked_about(self, w: World) -> None:
        first = pack(signed(ALICE))
        w.verify(first)
        second = pack(signed(ALICE, headers={"X-Other": "1"}))
        w.verify(second)
        assert w.verifier.sts_calls == 2

    def test_a_refusal_is_not_kept(self, w: World) -> None:
        credential = pack(signed(ALICE))
        w.stub.fail_with = (403, "SignatureDoesNotMatch")
        with pytest.raises(aws.AWSError):
            w.verify(credential)
        w.stub.fail_with = None
        assert w.verify(credential).arn == ALICE.arn
        assert w.verifier.sts_calls == 2

    def test_without_the_cache_every_request_asks_sts(self) -> None:
        w = world(attrs.evolve(SETTINGS, cache_verified=False))
        credential = pack(signed(ALICE))
        for _ in range(3):
            w.verify(credential)
        assert w.verifier.sts_calls == 3

    def test_concurrent_requests_share_one_exchange(self, w: World) -> None:
        w.resource.hang = True
        credential = pack(signed(ALICE))
        first, second = w.verifier.verify(credential), w.verifier.verify(credential)
        assert w.verifier.sts_calls == 1 and not first.called and not second.called

    def test_a_reload_keeps_the_cache_only_for_the_same_rules(self, w: World) -> None:
        credential = pack(signed(ALICE))
        w.verify(credential)
        same = IAMVerifier(SETTINGS, http=w.http, clock=w.clock)
        same.adopt(w.verifier)
        other = IAMVerifier(attrs.evolve(SETTINGS, server_id="airflowrpc.other"),
                            http=w.http, clock=w.clock)
        other.adopt(w.verifier)
        w.verifier = same
        assert w.verify(credential).arn == ALICE.arn and same.sts_calls == 0
        w.verifier = other
        with pytest.raises(aws.AWSError, match="not this gateway's"):
            w.verify(credential)

    def test_too_many_exchanges_at_once_are_refused(self) -> None:
        w = world(max_in_flight=1)
        w.resource.hang = True
        w.verifier.verify(pack(signed(ALICE)))
        with pytest.raises(aws.STSUnavailable, match="too many sign-ins in progress"):
            w.verify(pack(signed(DEPLOYER)))

    def test_one_source_cannot_take_every_place(self) -> None:
        """Forged headers from one address filled the 64 places others' sign-ins need."""
        w = world()
        w.resource.hang = True
        held = [w.verifier.verify(pack(signed(ALICE, headers={"X-Amz-Meta": str(n)})), "10.0.0.9")
                for n in range(aws.MAX_IN_FLIGHT_PER_SOURCE)]
        late = w.verifier.verify(pack(signed(ALICE)), "10.0.0.9")
        failure: list[Any] = []
        late.addErrback(failure.append)
        assert failure and failure[0].check(aws.STSUnavailable)
        assert "from this address" in failure[0].getErrorMessage()
        other = w.verifier.verify(pack(signed(DEPLOYER)), "10.0.0.10")  # still has a place
        assert w.verifier.sts_calls == aws.MAX_IN_FLIGHT_PER_SOURCE + 1
        for d in (*held, other):
            d.addErrback(lambda f: None)
        w.clock.advance(SETTINGS.timeout_seconds + 1)  # those exchanges end: places given back
        again = w.verifier.verify(pack(signed(ALICE)), "10.0.0.9")
        assert w.verifier.sts_calls == aws.MAX_IN_FLIGHT_PER_SOURCE + 2
        again.cancel()
        again.addErrback(lambda f: None)


def entry(name: str, arns: tuple[str, ...] = (), accounts: tuple[str, ...] = ()) -> PrincipalEntry:
    return PrincipalEntry(name=name, roles=(), aws_arns=arns, aws_accounts=accounts)


def identity(arn: str) -> CallerIdentity:
    return CallerIdentity(arn, arn.split(":")[4], "AIDAX")


class TestMapping:
    def test_an_assumed_role_maps_by_its_role(self) -> None:
        deployer = entry("deployer", ("arn:aws:iam::111122223333:role/deployer",))
        assert principals_for(identity(DEPLOYER.arn), [deployer]) == [deployer]
        other = identity("arn:aws:sts::111122223333:assumed-role/deployer-2/x")
        assert principals_for(other, [deployer]) == []
        elsewhere = identity("arn:aws:sts::999988887777:assumed-role/deployer/x")
        assert principals_for(elsewhere, [deployer]) == []

    def test_a_session_and_globs(self) -> None:
        one = entry("one", ("arn:aws:sts::111122223333:assumed-role/deployer/ci-run-*",))
        users = entry("users", ("arn:aws:iam::111122223333:user/*",))
        assert principals_for(identity(DEPLOYER.arn), [one, users]) == [one]
        assert principals_for(identity(ALICE.arn), [one, users]) == [users]
        pathed = identity("arn:aws:iam::111122223333:user/team/bob")
        assert principals_for(pathed, [one, users]) == [users]
        # A role's ARN form never reads as a user's.
        assert principals_for(identity("arn:aws:sts::111122223333:assumed-role/user/x"),
                              [users]) == []

    def test_an_account_maps_all_but_its_root_and_an_arn_wins(self) -> None:
        account = entry("account", accounts=("111122223333",))
        alice = entry("alice", ("arn:aws:iam::111122223333:user/alice",))
        root = entry("root", ("arn:aws:iam::111122223333:root",))
        assert principals_for(identity(DEPLOYER.arn), [account, alice]) == [account]
        assert principals_for(identity(ALICE.arn), [account, alice]) == [alice]
        assert principals_for(identity(ROOT.arn), [account, alice]) == []
        assert principals_for(identity(ROOT.arn), [account, root]) == [root]

    def test_two_principals_by_two_patterns(self) -> None:
        a = entry("a", ("arn:aws:iam::111122223333:user/*",))
        b = entry("b", ("arn:aws:iam::111122223333:user/al*",))
        assert principals_for(identity(ALICE.arn), [a, b]) == [a, b]

    def test_pattern_characters_are_literal_but_the_star(self) -> None:
        dotted = entry("d", ("arn:aws:iam::111122223333:user/a.b",))
        assert principals_for(identity("arn:aws:iam::111122223333:user/axb"), [dotted]) == []


AWS_CONFIG = """
[aws]
sts_endpoint = "{endpoint}"
region = "eu-west-1"
server_id = "airflowrpc.test"
[principals.alice-aws]
roles = ["auditor"]
aws_arns = ["arn:aws:iam::111122223333:user/alice"]
[principals.deployer]
roles = ["ci"]
aws_arns = ["arn:aws:iam::111122223333:role/deployer"]
[principals.root-of-it]
roles = ["auditor"]
aws_arns = ["arn:aws:iam::111122223333:root"]
"""


def aws_authenticator(tmp: Path, pki: DevPKI, extra: str = "", mode: str = "optional",
                      require: bool = False) -> tuple[Any, World]:
    cfg = load(tmp, pki, mode=mode, require=require,
               extra=AWS_CONFIG.format(endpoint=ENDPOINT) + extra)
    w = world(cfg.access.aws)
    auth = build_authenticator(load_checked(cfg.source), http=w.http, clock=w.clock)
    return auth, w


def authenticate(auth: Any, w: World, header: str | None, peer: Any = None) -> Any:
    d = auth.authenticate(FakeRequest(peer, header))
    w.http.flush()
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "still waiting"
    if hasattr(results[0], "raiseException"):
        results[0].raiseException()
    return results[0]


def iam(identity: Identity, **kw: Any) -> str:
    return f"AWS-IAM {pack(signed(identity, **kw))}"


class TestAuthenticator:
    def test_a_signed_request_signs_in_as_the_mapped_principal(self, tmp_path: Path,
                                                              pki: DevPKI) -> None:
        auth, w = aws_authenticator(tmp_path, pki)
        p = authenticate(auth, w, iam(DEPLOYER))
        assert (p.name, p.method, p.roles) == ("deployer", "aws_iam", ("ci",))
        assert p.grants.allows("runs:trigger", "etl_orders")
        assert not p.grants.allows("runs:trigger", "ml_train")
        assert p.audit_identity() == {"method": "aws_iam", "aws_arn": DEPLOYER.arn,
                                      "aws_user_id": DEPLOYER.user_id}
        me = p.describe(datetime.now(timezone.utc))
        assert (me["aws_arn"], me["aws_user_id"]) == (DEPLOYER.arn, DEPLOYER.user_id)
        # A verdict kept for this header (a keep-alive connection's) lapses with the signature.
        max_age = auth.aws.settings.max_age_seconds
        assert w.clock.seconds() + max_age - 2 <= p.proof_until <= w.clock.seconds() + max_age
        for secret in (*SECRETS, DEPLOYER.access_key):
            assert secret not in repr(p) and secret not in repr(p.describe())
        # The scheme is case-insensitive, as every HTTP scheme.
        assert authenticate(auth, w, "aws-iam " + pack(signed(ALICE))).name == "alice-aws"

    def test_refusals_are_401_with_the_reason(self, tmp_path: Path, pki: DevPKI) -> None:
        auth, w = aws_authenticator(tmp_path, pki)
        for header, reason in [
            (iam(STRANGER), "AWS IAM: arn:aws:iam::999988887777:user/mallory maps to no "
                            "principal"),
            (iam(ALICE, headers={aws.SERVER_ID_HEADER: "x"}),
             "AWS IAM: X-Airflowrpc-Server-ID is not this gateway's"),
            (iam(ALICE, secret="wrong/secret000000000000000000000000000000"),
             r"AWS IAM: STS refused the signed request \(SignatureDoesNotMatch\)"),
            ("AWS-IAM !!", "AWS IAM: malformed credential"),
        ]:
            with pytest.raises(Unauthenticated, match=reason):
                authenticate(auth, w, header)
        w.stub.fail_with = (503, "ServiceUnavailable")
        with pytest.raises(Unauthenticated, match=r"AWS IAM: identity provider unavailable "
                                                  r"\(STS answered HTTP 503"):
            authenticate(auth, w, iam(ALICE))

    def test_the_root_signs_in_only_where_its_arn_is_named(self, tmp_path: Path,
                                                           pki: DevPKI) -> None:
        extra = '[principals.everyone]\nroles = ["auditor"]\naws_accounts = ["111122223333"]\n'
        auth, w = aws_authenticator(tmp_path, pki, extra)
        assert authenticate(auth, w, iam(ROOT)).name == "root-of-it"
        other_role = attrs.evolve(DEPLOYER, access_key="ASIAOTHER00000000001",
                                  arn="arn:aws:sts::111122223333:assumed-role/other/s")
        w.stub.identities.append(other_role)
        assert authenticate(auth, w, iam(other_role)).name == "everyone"

    def test_an_arn_of_two_principals_is_refused(self, tmp_path: Path, pki: DevPKI) -> None:
        extra = '[principals.twin]\nroles = []\naws_arns = ["arn:aws:iam::111122223333:user/a*"]\n'
        auth, w = aws_authenticator(tmp_path, pki, extra)
        with pytest.raises(Unauthenticated, match="maps to more than one principal"):
            authenticate(auth, w, iam(ALICE))

    def test_not_enabled_without_an_aws_section(self, tmp_path: Path, pki: DevPKI) -> None:
        cfg = load(tmp_path, pki, mode="optional")
        w = world()
        auth = build_authenticator(load_checked(cfg.source), http=w.http, clock=w.clock)
        with pytest.raises(Unauthenticated, match="AWS IAM sign-in is not enabled here"):
            authenticate(auth, w, iam(ALICE))
        assert w.stub.seen == []

    def test_a_certificate_and_an_iam_identity_must_agree(self, tmp_path: Path,
                                                          pki: DevPKI) -> None:
        extra = 'cert_cn = ["deployer-host"]\n'  # continues [principals.root-of-it]
        auth, w = aws_authenticator(tmp_path, pki, extra, mode="required", require=True)
        root_cert = cert(common_name="deployer-host")
        p = authenticate(auth, w, iam(ROOT), root_cert)
        assert p.method == "client_certificate+aws_iam" and p.name == "root-of-it"
        with pytest.raises(Unauthenticated, match="different principals"):
            authenticate(auth, w, iam(ALICE), root_cert)

    def test_a_token_store_reload_keeps_aws_sign_in(self, tmp_path: Path, pki: DevPKI) -> None:
        auth, w = aws_authenticator(tmp_path, pki)
        gate = Gate(auth)
        reloader = Reloader(load_checked(tmp_path / "airflowrpc.toml").config, gate=gate,
                            tls=None, http=w.http, clock=w.clock, audit=None)
        reloader.reload_tokens()
        assert gate.current is not auth and gate.current.aws is auth.aws
        assert authenticate(gate.current, w, iam(ALICE)).name == "alice-aws"

    def test_a_config_reload_keeps_confirmed_identities(self, tmp_path: Path, pki: DevPKI) -> None:
        auth, w = aws_authenticator(tmp_path, pki)
        header = iam(ALICE)
        authenticate(auth, w, header)
        again = build_authenticator(load_checked(tmp_path / "airflowrpc.toml"), http=w.http,
                                    clock=w.clock, previous=auth)
        assert authenticate(again, w, header).name == "alice-aws"
        assert len(w.stub.seen) == 1


class TestConfig:
    @pytest.mark.parametrize("aws_table,key,words", [
        ('sts_endpoint = "http://sts.amazonaws.com"\nserver_id = "x"', "aws.sts_endpoint",
         "plain http only to"),
        ('sts_endpoint = "https://sts.amazonaws.com/path"\nserver_id = "x"', "aws.sts_endpoint",
         "no path"),
        ('sts_endpoint = "https://sts.amazonaws.com?x"\nserver_id = "x"', "aws.sts_endpoint",
         "no path"),
        ('sts_endpoint = "https://u:p@sts.amazonaws.com"\nserver_id = "x"', "aws.sts_endpoint",
         "user name or password"),
        ('sts_endpoint = ""\nserver_id = "x"', "aws.sts_endpoint", "https://"),
        ('sts_endpoint = "https://sts.eu-west-1.amazonaws.com"\nserver_id = "x"', "aws.region",
         "signed for eu-west-1, not us-east-1"),
        ('region = "eu-west-1"\nserver_id = "x"', "aws.region", "signed for us-east-1"),
        ('region = "Europe"\nserver_id = "x"', "aws.region", "not an AWS region"),
        ("", "aws.server_id", "missing"),
        ('server_id = "has space"', "aws.server_id", "visible ASCII"),
        ('server_id = "x"\nmax_age_seconds = 3600', "aws.max_age_seconds", "from 1 to 900"),
        ('server_id = "x"\nmax_age_seconds = nan', "aws.max_age_seconds", "finite"),
        ('server_id = "x"\ntimeout_seconds = 0', "aws.timeout_seconds", "from 0.1 to 60"),
        ('server_id = "x"\nsigning_key = "x"', "aws.signing_key", "unknown key"),
    ])
    def test_aws_section_mistakes_name_the_key(self, tmp_path: Path, pki: DevPKI,
                                               aws_table: str, key: str, words: str) -> None:
        with pytest.raises(config_module.ConfigError) as e:
            load(tmp_path, pki, extra=f"\n[aws]\n{aws_table}\n")
        assert e.value.key == key and words in str(e.value)

    @pytest.mark.parametrize("endpoint", [
        "https://sts.amazonaws.com", "https://sts.amazonaws.com/", "http://127.0.0.1:4566",
        "http://[::1]:4566", "https://vpce-0abc.sts.eu-west-1.vpce.amazonaws.com",
    ])
    def test_endpoints_that_are_fine(self, tmp_path: Path, pki: DevPKI, endpoint: str) -> None:
        region = "eu-west-1" if "eu-west-1" in endpoint else "us-east-1"
        cfg = load(tmp_path, pki, extra=f'\n[aws]\nsts_endpoint = "{endpoint}"\n'
                                        f'region = "{region}"\nserver_id = "gw"\n')
        settings = cfg.access.aws
        assert settings.sts_url == endpoint.rstrip("/") + "/"
        assert settings.sts_host == client._host(settings.sts_url)  # as botocore signs it

    @pytest.mark.parametrize("arn,words", [
        ("arn:aws:iam::*:role/deployer", "not an AWS account id"),
        ("arn:aws:iam::11112222333:role/deployer", "not an AWS account id"),
        ("arn:*:iam::111122223333:role/deployer", "no wildcard"),
        ("arn:aws:s3:::bucket", "an IAM identity is"),
        ("arn:aws:iam:eu-west-1:111122223333:role/deployer", "an IAM identity is"),
        ("arn:aws:iam::111122223333:role/team/deployer", "without its path"),
        ("arn:aws:iam::111122223333:*", "name iam::ACCOUNT:user/NAME"),
        ("arn:aws:iam::111122223333:group/ops", "name iam::ACCOUNT:user/NAME"),
        ("arn:aws:sts::111122223333:assumed-role/deployer", "name iam::ACCOUNT:user/NAME"),
        ("arn:aws:iam::111122223333:user/a b", "characters IAM names do not"),
        ("deployer", "not an ARN"),
    ])
    def test_arns_are_checked(self, tmp_path: Path, pki: DevPKI, arn: str, words: str) -> None:
        with pytest.raises(config_module.ConfigError) as e:
            load(tmp_path, pki, extra=AWS_CONFIG.format(endpoint=ENDPOINT)
                 + f'[principals.x]\nroles = []\naws_arns = ["{arn}"]\n')
        assert e.value.key == "principals.x.aws_arns" and words in str(e.value)

    def test_one_identity_one_principal(self, tmp_path: Path, pki: DevPKI) -> None:
        for key, value in [("aws_arns", "arn:aws:iam::111122223333:user/zed"),
                           ("aws_accounts", "111122223333")]:
            twice = (f'[principals.x]\nroles = []\n{key} = ["{value}"]\n'
                     f'[principals.y]\nroles = []\n{key} = ["{value}"]\n')
            with pytest.raises(config_module.ConfigError) as e:
                load(tmp_path, pki, extra=AWS_CONFIG.format(endpoint=ENDPOINT) + twice)
            assert e.value.key == f"principals.y.{key}" and "maps principal 'x' too" in str(e.value)

    def test_an_iam_mapping_needs_the_aws_section(self, tmp_path: Path, pki: DevPKI) -> None:
        with pytest.raises(config_module.ConfigError) as e:
            load(tmp_path, pki,
                 extra='[principals.x]\nroles = []\naws_accounts = ["111122223333"]\n')
        assert e.value.key == "principals.x.aws_accounts" and "[aws]" in str(e.value)

    def test_aws_alone_is_another_way_in(self, tmp_path: Path) -> None:
        path = tmp_path / "c.toml"
        base = (tmp_path / "pw")
        base.write_text("pw\n")
        text = ('[listen]\nport = 1\n[tls]\ncertificate = "pw"\nprivate_key = "pw"\n'
                'client_ca = "pw"\n[airflow]\nbase_url = "http://a"\nusername = "u"\n'
                'password_file = "pw"\n[audit]\npath = "a.jsonl"\n'
                '[auth]\nclient_certificate = "optional"\n')
        path.write_text(text)
        with pytest.raises(config_module.ConfigError, match="or \\[aws\\]"):
            config_module.load(path)
        path.write_text(text + '[aws]\nserver_id = "gw"\n')
        assert config_module.load(path).access.aws.server_id == "gw"


class TestClient:
    def test_the_value_is_reused_then_signed_anew(self, monkeypatch: pytest.MonkeyPatch) -> None:
        now = [datetime(2026, 11, 26, tzinfo=timezone.utc).timestamp()]
        monkeypatch.setattr("botocore.auth.get_current_datetime",
                            lambda: datetime.fromtimestamp(now[0], timezone.utc))
        auth = client.IAMAuthorization(SERVER_ID, credentials=ALICE.credentials(),
                                       endpoint=ENDPOINT, reuse_seconds=60, clock=lambda: now[0])
        first = auth()
        now[0] += 59
        assert auth() == first
        now[0] += 1
        second = auth()
        assert second != first
        assert json.loads(base64.b64decode(second.split()[1]))["headers"]["X-Amz-Date"] == \
            "20261126T000100Z"

    def test_the_region_follows_the_endpoint(self) -> None:
        assert client.region_of("https://sts.eu-west-1.amazonaws.com") == "eu-west-1"
        assert client.region_of("https://sts-fips.us-gov-west-1.amazonaws.com") == "us-gov-west-1"
        assert client.region_of("https://sts.amazonaws.com") == "us-east-1"
        assert client.region_of("http://127.0.0.1:4566") == "us-east-1"

    def test_client_and_gateway_agree_on_the_protocol(self) -> None:
        assert (client.SCHEME, client.SERVER_ID_HEADER, client.BODY, client.FORM) == (
            aws.SCHEME, aws.SERVER_ID_HEADER, aws.BODY, aws.FORM)

    def test_the_example_signs_as_the_library_does(self, monkeypatch: pytest.MonkeyPatch) -> None:
        example = Path(__file__).resolve().parents[2] / "examples" / "python" / "airflowrpc_iam.py"
        spec = importlib.util.spec_from_file_location("airflowrpc_iam", example)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        fixed = datetime(2026, 11, 26, 0, 54, 13, tzinfo=timezone.utc)
        monkeypatch.setattr("botocore.auth.get_current_datetime", lambda: fixed)
        for endpoint in (ENDPOINT, "http://127.0.0.1:4566"):
            assert module.iam_authorization(DEPLOYER.credentials(), SERVER_ID, endpoint) == \
                client.authorization(SERVER_ID, credentials=DEPLOYER.credentials(),
                                     endpoint=endpoint)

    def test_a_header_with_a_session_token_fits_in_a_proxys_line(self) -> None:
        """A role session's 1-2 kB token still leaves the line well under 8 kB."""
        heavy = attrs.evolve(DEPLOYER, token="x" * 2000)
        header = client.authorization(SERVER_ID, credentials=heavy.credentials(),
                                      endpoint=ENDPOINT)
        assert len("Authorization: " + header) < 4096
        assert len(header.partition(" ")[2]) <= aws.MAX_CREDENTIAL


def test_sign_ins_are_counted_by_the_address_the_back_off_counts() -> None:
    from twisted.internet.address import IPv4Address, IPv6Address

    from txairflowrpc.identity.authenticate import _source

    class Request:
        def __init__(self, address: Any) -> None:
            self.address = address

        def getClientAddress(self) -> Any:
            return self.address

    assert _source(Request(IPv4Address("TCP", "10.0.0.9", 4000))) == "10.0.0.9"
    assert _source(Request(IPv6Address("TCP", "2001:db8:1:2::7", 4000))) == "2001:db8:1:2::/64"
    assert _source(object()) == ""
