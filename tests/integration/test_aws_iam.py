"""
AWS IAM sign-in against the real twistd and a real Airflow: callers sign
GetCallerIdentity with botocore, the gateway forwards it to a stand-in STS
on loopback (tests/sts_stub.py, which checks the signature with botocore's
signer), and the caller gets in as the principal its ARN maps to, with
that principal's scopes.  Nothing here reaches AWS.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import subprocess
import sys
import time
import xmlrpc.client
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator
from unittest import mock

import attrs
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest

from txairflowrpc.client.aws_iam import IAMAuthorization, authorization
from txairflowrpc.devstack.airflow import LocalAirflow
from txairflowrpc.devstack.pki import DevPKI

from ..sts_stub import Identity, StubSTS, serve
from .conftest import RunningGateway, audit_records, client_context

SERVER_ID = "airflowrpc.integration.test"
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "python" / "airflowrpc_iam.py"

ALICE = Identity("AKIAALICE00000000001", "alice/secret+key0000000000000000000000000",
                 "arn:aws:iam::111122223333:user/alice", "AIDAALICE000000000001")
DEPLOYER = Identity("ASIADEPLOY0000000001", "deployer/secret+key00000000000000000000000",
                    "arn:aws:sts::111122223333:assumed-role/deployer/ci-run-42",
                    "AROADEPLOY00000000001:ci-run-42",
                    token="FwoGZXIvYXdzEDeployerSessionToken" + "t" * 800)
MALLORY = Identity("AKIAMALLORY000000001", "mallory/secret+key00000000000000000000000",
                   "arn:aws:iam::999988887777:user/mallory", "AIDAMALLORY000000001")
SECRETS = [ALICE.secret_key, DEPLOYER.secret_key, DEPLOYER.token, MALLORY.secret_key]


@attrs.define
class STS:
    stub: StubSTS
    endpoint: str


@pytest.fixture(scope="module")
def sts() -> Iterator[STS]:
    stub = StubSTS([ALICE, DEPLOYER, MALLORY])
    with serve(stub) as endpoint:
        yield STS(stub, endpoint)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, pki: DevPKI, airflow: LocalAirflow,
       sts: STS) -> Iterator[RunningGateway]:
    extra = f"""
[aws]
sts_endpoint = "{sts.endpoint}"
server_id = "{SERVER_ID}"
timeout_seconds = 3
[principals.deployer]
roles = ["ci"]
aws_arns = ["arn:aws:iam::111122223333:role/deployer"]
[principals.iam-auditor]
roles = ["auditor"]
aws_arns = ["arn:aws:iam::111122223333:user/alice"]
"""
    gateway = RunningGateway(tmp_path_factory.mktemp("aws-gw"), pki, airflow,
                             cert_mode="optional", extra=extra)
    gateway.start()
    yield gateway
    gateway.stop()


def proxy(gw: RunningGateway, header: str) -> xmlrpc.client.ServerProxy:
    return xmlrpc.client.ServerProxy(gw.url, context=client_context(gw.pki, None),
                                     headers=[("Authorization", header)])


def iam(identity: Identity, sts: STS, **kw: Any) -> str:
    return authorization(SERVER_ID, credentials=identity.credentials(), endpoint=sts.endpoint,
                         **kw)


def hand_signed(identity: Identity, sts: STS, headers: dict[str, str]) -> str:
    """Signed with botocore by hand, with headers of the test's choosing."""
    url = sts.endpoint + "/"
    request = AWSRequest(method="POST", url=url, data="Action=GetCallerIdentity&Version=2011-06-15",
                         headers={"Host": url.split("/")[2],
                                  "Content-Type": "application/x-www-form-urlencoded",
                                  **headers})
    SigV4Auth(identity.credentials(), "sts", "us-east-1").add_auth(request)
    document = {"method": "POST", "url": url, "body": "Action=GetCallerIdentity&Version=2011-06-15",
                "headers": dict(request.headers.items())}
    return "AWS-IAM " + base64.b64encode(json.dumps(document).encode()).decode()


def post(gw: RunningGateway, header: str) -> tuple[int, str]:
    """Status and body of a ping sent with ``header``, read whatever the status."""
    connection = http.client.HTTPSConnection("localhost", gw.port, timeout=30,
                                             context=client_context(gw.pki, None))
    body = xmlrpc.client.dumps((), "ping").encode()
    try:
        connection.request("POST", "/RPC2", body, {"Content-Type": "text/xml",
                                                   "Authorization": header})
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def audit(gw: RunningGateway) -> list[dict[str, Any]]:
    return audit_records(gw.audit_path)


def test_a_botocore_signed_caller_gets_in_with_its_principals_scopes(
    gw: RunningGateway, sts: STS,
) -> None:
    before = len(sts.stub.seen)
    rpc = proxy(gw, iam(DEPLOYER, sts))
    me = rpc.whoami()
    assert (me["principal"], me["authenticated_by"], me["aws_arn"], me["roles"]) == (
        "deployer", "aws_iam", DEPLOYER.arn, ["ci"])
    # The ci role: etl_* only.
    assert rpc.get_dag("etl_orders")["dag_id"] == "etl_orders"
    with pytest.raises(xmlrpc.client.Fault) as e:
        rpc.get_dag("example_hello")
    assert e.value.faultCode == 403 and "dags:read:example_hello" in e.value.faultString
    dags = rpc.list_dags()
    assert dags["dags"] and all(d["dag_id"].startswith("etl_") for d in dags["dags"])
    # One header, four calls: STS was asked once (the rest from the cache).
    assert len(sts.stub.seen) == before + 1
    seen = sts.stub.seen[-1]
    assert seen.headers["x-airflowrpc-server-id"] == SERVER_ID
    assert seen.headers["x-amz-security-token"] == DEPLOYER.token

    another = proxy(gw, iam(ALICE, sts))
    assert another.whoami()["principal"] == "iam-auditor"
    assert another.get_dag("example_hello")["dag_id"] == "example_hello"

    # A caller that signed its own Accept gets STS's XML answer, read as well.
    xml = proxy(gw, hand_signed(ALICE, sts, {"X-Airflowrpc-Server-ID": SERVER_ID,
                                             "Accept": "text/xml"}))
    assert xml.whoami()["principal"] == "iam-auditor"
    assert sts.stub.seen[-1].headers["accept"] == "text/xml"

    time.sleep(1.5)  # the audit trail is written by another process
    calls = [r for r in audit(gw) if r.get("kind") == "call" and r.get("principal") == "deployer"]
    assert calls and calls[-1]["auth"] == {"method": "aws_iam", "aws_arn": DEPLOYER.arn,
                                           "aws_user_id": DEPLOYER.user_id}


def test_every_refusal_is_a_401_saying_why_and_leaves_no_secret(
    gw: RunningGateway, sts: STS,
) -> None:
    log_start = gw.log.stat().st_size
    audit_start = len(audit(gw))
    asked = len(sts.stub.seen)
    stale = iam(ALICE, sts)
    local = {
        "another gateway's server id": (
            hand_signed(ALICE, sts, {"X-Airflowrpc-Server-ID": "some-other-gateway"}),
            "AWS IAM: X-Airflowrpc-Server-ID is not this gateway's"),
        "no server id signed": (
            hand_signed(ALICE, sts, {}),
            "AWS IAM: X-Airflowrpc-Server-ID is not among the signed headers"),
        "another host": (
            hand_signed(ALICE, sts, {"X-Airflowrpc-Server-ID": SERVER_ID,
                                     "Host": "sts.amazonaws.com"}),
            "AWS IAM: the signed Host is not 127.0.0.1:"),
        "oversized": ("AWS-IAM " + "A" * 7200, "AWS IAM: credential too large"),
        "not base64": ("AWS-IAM %%%", "AWS IAM: malformed credential"),
    }
    for name, (header, reason) in local.items():
        status, body = post(gw, header)
        assert (status, body.startswith(f"unauthenticated: {reason}")) == (401, True), (name, body)
    assert len(sts.stub.seen) == asked  # none of them reached STS

    by_sts = {
        "a wrong secret": (
            authorization(SERVER_ID, endpoint=sts.endpoint, credentials=attrs.evolve(
                ALICE, secret_key="not/alices/secret000000000000000000000000").credentials()),
            "AWS IAM: STS refused the signed request (SignatureDoesNotMatch)"),
        "an unmapped identity": (
            iam(MALLORY, sts), "AWS IAM: arn:aws:iam::999988887777:user/mallory maps to no "
                               "principal"),
    }
    for name, (header, reason) in by_sts.items():
        status, body = post(gw, header)
        assert (status, body.strip()) == (401, f"unauthenticated: {reason}"), name
    assert len(sts.stub.seen) == asked + 2

    time.sleep(1.5)  # the log is written by another process; refusals counted per second
    log = gw.log.read_bytes()[log_start:].decode("utf-8", "replace")
    assert "Traceback" not in log, log
    records = audit(gw)[audit_start:]
    refusals = [r for r in records if r.get("http_status") == 401]
    assert sum(r["count"] for r in refusals) == len(local) + len(by_sts)
    text = json.dumps(records) + log
    signature = json.loads(base64.b64decode(stale.split()[1]))["headers"]["Authorization"]
    for secret in (*SECRETS, ALICE.access_key, signature.rpartition("=")[2]):
        assert secret not in text


def test_a_stale_signature_is_refused(gw: RunningGateway, sts: STS) -> None:
    asked = len(sts.stub.seen)
    signed_at = datetime.fromtimestamp(time.time() - 310, timezone.utc)
    with mock.patch("botocore.auth.get_current_datetime", lambda: signed_at):
        header = iam(ALICE, sts)
    status, body = post(gw, header)
    assert status == 401 and "AWS IAM: the request was signed 31" in body, body
    assert "(at most 300 s is accepted)" in body and len(sts.stub.seen) == asked


def test_sts_down_or_failing_is_identity_provider_unavailable(gw: RunningGateway,
                                                              sts: STS) -> None:
    try:
        sts.stub.drop = True
        # Signed afresh (an extra header), so that no identity kept from before answers.
        status, body = post(gw, hand_signed(ALICE, sts, {"X-Airflowrpc-Server-ID": SERVER_ID,
                                                         "X-Try": "1"}))
        assert (status, body.strip()) == (401, "unauthenticated: AWS IAM: identity provider "
                                               "unavailable (STS could not be reached); try "
                                               "again later")
        sts.stub.drop = False
        sts.stub.fail_with = (503, "ServiceUnavailable")
        status, body = post(gw, hand_signed(ALICE, sts, {"X-Airflowrpc-Server-ID": SERVER_ID,
                                                         "X-Try": "2"}))
        assert status == 401 and "identity provider unavailable (STS answered HTTP 503" in body
    finally:
        sts.stub.drop, sts.stub.fail_with = False, None
    # And back: the next caller gets in.
    assert proxy(gw, iam(ALICE, sts)).whoami()["principal"] == "iam-auditor"


def test_an_answer_from_sts_is_read_as_it_comes_never_inflated(gw: RunningGateway,
                                                                 sts: STS) -> None:
    """
    Found by an attacker's review: the gateway's HTTP client (treq) asked STS
    for gzip and inflated the answer before the 64 kB cap counted it (200 KB
    on the wire, 200 MB of the gateway's memory).  Now nothing but identity
    is asked for, and an answer encoded anyway is refused unread.
    """
    try:
        sts.stub.gzipped = True
        status, body = post(gw, hand_signed(ALICE, sts, {"X-Airflowrpc-Server-ID": SERVER_ID,
                                                         "X-Try": "gzip"}))
        assert status == 401, body
        assert ("identity provider unavailable (STS's answer could not be read (the answer is "
                "encoded (gzip), which was not asked for))") in body
        assert "accept-encoding" not in sts.stub.seen[-1].headers
    finally:
        sts.stub.gzipped = False
    assert proxy(gw, iam(ALICE, sts)).whoami()["principal"] == "iam-auditor"


def test_the_client_helper_and_the_python_example(gw: RunningGateway, sts: STS) -> None:
    auth = IAMAuthorization(SERVER_ID, credentials=DEPLOYER.credentials(), endpoint=sts.endpoint)
    assert proxy(gw, auth()).ping() == "pong"

    env = {
        "PATH": os.environ.get("PATH", ""),
        "AIRFLOWRPC_URL": gw.url, "AIRFLOWRPC_CA": str(gw.pki.ca_file),
        "AIRFLOWRPC_AWS_SERVER_ID": SERVER_ID, "AIRFLOWRPC_STS_ENDPOINT": sts.endpoint,
        # botocore's chain finds these first; and nothing else, nor the network.
        "AWS_ACCESS_KEY_ID": DEPLOYER.access_key, "AWS_SECRET_ACCESS_KEY": DEPLOYER.secret_key,
        "AWS_SESSION_TOKEN": DEPLOYER.token, "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null", "AWS_EC2_METADATA_DISABLED": "true",
    }
    out = subprocess.run([sys.executable, str(EXAMPLE)], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert lines[0] == {"step": "whoami", "principal": "deployer", "authenticated_by": "aws_iam",
                        "aws_arn": DEPLOYER.arn, "roles": ["ci"]}
    assert lines[1]["step"] == "list_dags" and all(d.startswith("etl_")
                                                   for d in lines[1]["dag_ids"])
    assert lines[2]["step"] == "fault" and lines[2]["code"] == 403

    # The same identity through `airflowrpc call --aws` (the variables above).
    command = os.path.join(os.path.dirname(sys.executable), "airflowrpc")
    out = subprocess.run([command, "call", "--aws", "whoami"], env=env, capture_output=True,
                         text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr
    me = json.loads(out.stdout)
    assert (me["principal"], me["authenticated_by"], me["aws_arn"]) == (
        "deployer", "aws_iam", DEPLOYER.arn)
    out = subprocess.run([command, "call", "--aws", "get_dag", "example_hello"], env=env,
                         capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert out.returncode == 3 and "fault 403" in out.stderr, out.stderr  # deployer: etl_* only
    assert DEPLOYER.secret_key not in out.stdout + out.stderr
