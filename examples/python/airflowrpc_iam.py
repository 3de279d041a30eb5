#!/usr/bin/env python3
"""
Sign in to txairflowrpc with AWS IAM credentials (no certificate, no token).

    pip install botocore
    export AIRFLOWRPC_URL=https://airflowrpc.example.com/RPC2 AIRFLOWRPC_CA=ca.pem
    export AIRFLOWRPC_AWS_SERVER_ID=airflowrpc.example.com          # the gateway's aws.server_id
    export AIRFLOWRPC_STS_ENDPOINT=https://sts.eu-west-1.amazonaws.com  # its aws.sts_endpoint
    python3 airflowrpc_iam.py

The AWS credentials are botocore's: the environment (AWS_ACCESS_KEY_ID, ...),
a profile, or the instance's or task's role.  Nothing secret is sent to the
gateway: it gets an sts:GetCallerIdentity request signed with them, which
it forwards to STS, and STS says who signed.  The request names the
gateway (X-Airflowrpc-Server-ID) inside the signature, so it is of no use
anywhere else, and it is signed anew every minute.

Calls whoami, list_dags and get_dag on a missing DAG (a fault); prints one JSON
object per line.
"""

import base64
import json
import os
import re
import ssl
import time
import xmlrpc.client
from urllib.parse import urlsplit

import botocore.session
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest

BODY = "Action=GetCallerIdentity&Version=2011-06-15"


def iam_authorization(credentials, server_id: str, endpoint: str, region: str = "") -> str:
    """The Authorization value: AWS-IAM and the signed request, as base64 of JSON."""
    url = endpoint.rstrip("/") + "/"
    parts = urlsplit(url)
    host = parts.hostname if parts.port in (None, {"https": 443, "http": 80}[parts.scheme]) \
        else f"{parts.hostname}:{parts.port}"
    if not region:  # sts.REGION.amazonaws.com is signed for REGION, the global one for us-east-1
        found = re.fullmatch(r"sts(?:-fips)?\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?",
                             parts.hostname or "")
        region = found.group(1) if found else "us-east-1"
    request = AWSRequest(method="POST", url=url, data=BODY, headers={
        "Host": host,  # botocore signs a Host it works out, but does not send it: set it
        "Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
        "X-Airflowrpc-Server-ID": server_id,
    })
    SigV4Auth(credentials.get_frozen_credentials(), "sts", region).add_auth(request)
    signed = {"method": "POST", "url": url, "body": BODY, "headers": dict(request.headers.items())}
    packed = json.dumps(signed, separators=(",", ":"), sort_keys=True).encode("ascii")
    return "AWS-IAM " + base64.b64encode(packed).decode("ascii")


class IAMTransport(xmlrpc.client.SafeTransport):
    """Sends a signed AWS-IAM Authorization with every request, signed anew each minute."""

    def __init__(self, credentials, server_id: str, endpoint: str, **kw) -> None:
        super().__init__(**kw)
        self._sign = lambda: iam_authorization(credentials, server_id, endpoint)
        self._value, self._at = "", float("-inf")

    def send_headers(self, connection, headers) -> None:
        if time.monotonic() - self._at >= 60:
            self._value, self._at = self._sign(), time.monotonic()
        super().send_headers(connection, [*headers, ("Authorization", self._value)])


def connect() -> xmlrpc.client.ServerProxy:
    credentials = botocore.session.get_session().get_credentials()
    if credentials is None:
        raise SystemExit("no AWS credentials (environment, profile or role)")
    transport = IAMTransport(
        credentials, os.environ["AIRFLOWRPC_AWS_SERVER_ID"],
        os.environ.get("AIRFLOWRPC_STS_ENDPOINT", "https://sts.amazonaws.com"),
        context=ssl.create_default_context(cafile=os.environ.get("AIRFLOWRPC_CA")),
    )
    return xmlrpc.client.ServerProxy(os.environ["AIRFLOWRPC_URL"], transport=transport)


def show(step: str, **fields: object) -> None:
    print(json.dumps({"step": step, **fields}), flush=True)


def main() -> None:
    rpc = connect()
    me = rpc.whoami()
    show("whoami", principal=me["principal"], authenticated_by=me["authenticated_by"],
         aws_arn=me.get("aws_arn"), roles=me["roles"])
    dags = rpc.list_dags({"limit": 5})
    show("list_dags", total=dags["total"], dag_ids=[d["dag_id"] for d in dags["dags"]])
    try:
        rpc.get_dag("no_such_dag")
    except xmlrpc.client.Fault as fault:
        show("fault", method="get_dag", code=fault.faultCode, message=fault.faultString)


if __name__ == "__main__":
    main()
