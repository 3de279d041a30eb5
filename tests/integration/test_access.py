"""
Identity and access over real mutual TLS, against the real twistd and a real
Airflow: every way in, every way it is refused, scopes, rotation and
revocation through the CLI, a JWKS URL, reload under load, and third-party
clients carrying tokens.
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import xmlrpc.client
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest

from txairflowrpc.devstack.airflow import LocalAirflow
from txairflowrpc.devstack.pki import DevPKI
from txairflowrpc.identity import tokens

from ..jwt_helpers import Signer, hs256_with_public_key, jwks, unsigned
from .conftest import RunningGateway, audit_records, client_context

AIRFLOWRPC = Path(sys.executable).parent / "airflowrpc"
ISSUER = "https://idp.example.test"


class JWKSServer:
    """A loopback HTTP server for the identity provider's key set."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.hits = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.hits += 1
                body = json.dumps(outer.document).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks.json"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


SIGNER = Signer("RS256", "key-1")


def serving(signer: Signer) -> Iterator[JWKSServer]:
    """A key set server of ``signer``'s key, for as long as its fixture lasts."""
    server = JWKSServer(jwks(signer))
    yield server
    server.close()


@pytest.fixture(scope="module")
def idp() -> Iterator[JWKSServer]:
    yield from serving(SIGNER)


#: A provider whose key set is kept 2 s (its own server: a test changes its keys).
BRIEF_ISSUER = "https://brief.idp.example.test"
BRIEF_SIGNER = Signer("RS256", "brief-1")


@pytest.fixture(scope="module")
def brief_idp() -> Iterator[JWKSServer]:
    yield from serving(BRIEF_SIGNER)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, pki: DevPKI, airflow: LocalAirflow,
       idp: JWKSServer, brief_idp: JWKSServer) -> Iterator[RunningGateway]:
    extra = f"""
[oidc.brief]
issuer = "{BRIEF_ISSUER}"
audience = "airflowrpc"
jwks_url = "{brief_idp.url}"
jwks_refetch_cooldown_seconds = 1
jwks_max_age_seconds = 2
claim_roles = {{ "airflow-ci" = ["ci"] }}

[oidc.corp]
issuer = "{ISSUER}"
audience = "airflowrpc"
jwks_url = "{idp.url}"
jwks_refetch_cooldown_seconds = 1
claim_roles = {{ "airflow-ci" = ["ci"], "auditors" = ["auditor"] }}

[oidc.strict]
issuer = "{STRICT_ISSUER}"
audience = "airflowrpc"
jwks_url = "{idp.url}"
claim_roles = {{ "airflow-ci" = ["ci"] }}
token_types = ["at+jwt"]
authorized_parties = ["ci-client"]
"""
    gateway = RunningGateway(tmp_path_factory.mktemp("access-gw"), pki, airflow,
                             cert_mode="optional", extra=extra)
    gateway.start()
    yield gateway
    gateway.stop()


def cli(gateway: RunningGateway, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(AIRFLOWRPC), "token", "--config", str(gateway.config), *args],
                          capture_output=True, text=True, timeout=60)


def new_token(gateway: RunningGateway, principal: str) -> str:
    return gateway.new_token(principal)


def by_token(gateway: RunningGateway, token: str) -> xmlrpc.client.ServerProxy:
    return xmlrpc.client.ServerProxy(gateway.url, context=client_context(gateway.pki, None),
                                     headers=[("Authorization", f"Bearer {token}")])


def refused(call: Any) -> int:
    """The HTTP status of a refused call (401 expected), or 0 if it got in."""
    try:
        call()
    except xmlrpc.client.ProtocolError as e:
        return e.errcode
    return 0


def wait_until(check: Any, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.2)


def audit(gateway: RunningGateway) -> list[dict[str, Any]]:
    return audit_records(gateway.audit_path)


def test_tokens_by_bearer_header_and_by_basic_auth(gw: RunningGateway) -> None:
    token = new_token(gw, "etl-bot")
    me = by_token(gw, token).whoami()
    assert (me["principal"], me["authenticated_by"], me["roles"]) == ("etl-bot", "token", ["ci"])
    assert me["expires_in_days"] > 89 and "warning" not in me
    basic = xmlrpc.client.ServerProxy(
        gw.url.replace("https://", f"https://etl-bot:{token}@"),
        context=client_context(gw.pki, None))
    assert basic.whoami()["principal"] == "etl-bot"
    listed = cli(gw, "list").stdout
    assert "etl-bot" in listed and token.split("_")[2] not in listed


def test_a_token_near_expiry_is_warned_about(gw: RunningGateway) -> None:
    token = gw.new_token("etl-bot", "--days", "10")
    seen: dict[str, str | None] = {}

    class Headers(xmlrpc.client.SafeTransport):
        def parse_response(self, response: Any) -> Any:
            seen["expires"] = response.getheader("X-Credential-Expires")
            return super().parse_response(response)

    proxy = xmlrpc.client.ServerProxy(gw.url, transport=Headers(
        context=client_context(gw.pki, None), headers=[("Authorization", f"Bearer {token}")]))
    me = proxy.whoami()
    assert "expires within 14 days" in me["warning"] and 9 < me["expires_in_days"] <= 10
    assert seen["expires"] == me["expires"]


def test_wrong_expired_and_missing_credentials_get_401(gw: RunningGateway) -> None:
    record, expired = tokens.create(gw.token_store, "etl-bot", None, 1,
                                    dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=2))
    def refused_as_expired() -> bool:  # once the store is read again (within a second)
        assert refused(lambda: by_token(gw, expired).ping()) == 401
        return any(f"token {record.id} expired" in r.get("reason", "") for r in audit(gw))

    wait_until(refused_as_expired)
    assert refused(lambda: by_token(gw, tokens.mint()[1]).ping()) == 401
    assert refused(lambda: by_token(gw, "arpc_nonsense").ping()) == 401
    anonymous = xmlrpc.client.ServerProxy(gw.url, context=client_context(gw.pki, None))
    assert refused(anonymous.ping) == 401

    def both_recorded() -> bool:
        # A refusal anyone can cause is answered without waiting for its
        # record (`RefusalLog.note`): the record lands a moment later.
        reasons = [r.get("reason", "") for r in audit(gw) if r.get("http_status") == 401]
        return (any("expired" in r for r in reasons)
                and any("no credentials" in r for r in reasons))

    wait_until(both_recorded)


def test_revoke_takes_effect_without_a_restart(gw: RunningGateway) -> None:
    token = new_token(gw, "etl-bot")
    proxy = by_token(gw, token)
    assert proxy.ping() == "pong"
    token_id = tokens.parse(token)
    assert cli(gw, "revoke", token_id).returncode == 0
    wait_until(lambda: refused(proxy.ping) == 401, seconds=5)
    events = [r for r in audit(gw) if r.get("event") == "token.revoked"]
    assert events[-1]["token_id"] == token_id and events[-1]["instance"] == "cli"


def test_rotation_overlap_then_the_old_token_dies(gw: RunningGateway) -> None:
    old = new_token(gw, "etl-bot")
    out = cli(gw, "rotate", tokens.parse(old))
    assert out.returncode == 0, out.stderr
    new = out.stdout.strip()
    wait_until(lambda: refused(by_token(gw, new).ping) == 0)
    assert by_token(gw, old).ping() == "pong"  # inside the 3 s overlap
    wait_until(lambda: refused(by_token(gw, old).ping) == 401, seconds=10)
    assert by_token(gw, new).ping() == "pong"


def test_certificates_of_nobody_and_expired_ones_are_refused(gw: RunningGateway, pki: DevPKI) -> None:
    nobody = pki.client("nobody.example.com")
    assert refused(gw.proxy(nobody).ping) == 401
    past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1)
    expired = pki.client("etl-bot-expired", not_after=past)
    with pytest.raises((OSError, xmlrpc.client.ProtocolError)):
        gw.proxy(expired).ping()


def jwt(signer: Signer = SIGNER, header: dict[str, Any] | None = None, **claims: Any) -> str:
    body = {"iss": ISSUER, "aud": "airflowrpc", "sub": "alice",
            "exp": int(time.time()) + 300, "scope": "openid airflow-ci"}
    body.update(claims)
    return signer.sign(body, header=header)


def test_a_removed_key_ends_the_sign_in_of_a_keep_alive_connection(
    gw: RunningGateway, brief_idp: JWKSServer,
) -> None:
    """
    Found by review: a connection signed in with a JWT before the provider
    removed its key kept working for as long as it stayed open (the verdict
    was reused until the token's exp, which whoever holds the key chooses).
    Now it lapses with the key set it was reached with (jwks_max_age_seconds).
    """
    token = jwt(BRIEF_SIGNER, iss=BRIEF_ISSUER)
    body = xmlrpc.client.dumps((), "whoami").encode()
    conn = http.client.HTTPSConnection("localhost", gw.port, timeout=10,
                                       context=client_context(gw.pki, None))

    def call() -> int:
        conn.request("POST", "/RPC2", body, {"Content-Type": "text/xml",
                                             "Authorization": f"Bearer {token}"})
        response = conn.getresponse()
        response.read()
        return response.status

    try:
        assert call() == 200
        sock = conn.sock
        assert call() == 200 and conn.sock is sock  # one connection: its verdict reused
        brief_idp.document = jwks(Signer("RS256", "brief-2"))  # the provider drops brief-1
        deadline = time.monotonic() + 15
        statuses: list[int] = []
        while time.monotonic() < deadline:
            time.sleep(0.5)  # well within the idle timeout: the connection stays open
            assert conn.sock is sock, statuses  # each asked on the connection signed in
            statuses.append(call())
            if statuses[-1] != 200:
                break
        assert statuses[-1] == 401, statuses
    finally:
        conn.close()


def test_oidc_tokens_and_every_way_one_is_refused(gw: RunningGateway, idp: JWKSServer) -> None:
    me = by_token(gw, jwt()).whoami()
    assert (me["principal"], me["authenticated_by"], me["roles"]) == ("corp/alice", "oidc", ["ci"])
    bad = {
        "bad signature": jwt(Signer("RS256", "key-1")),
        "wrong issuer": jwt(iss="https://evil.example.test"),
        "wrong audience": jwt(aud="other"),
        "expired": jwt(exp=int(time.time()) - 120),
        "alg none": unsigned({"iss": ISSUER, "aud": "airflowrpc", "sub": "alice",
                              "exp": int(time.time()) + 300}, kid="key-1"),
        "HS256 with the public key": hs256_with_public_key(
            SIGNER, {"iss": ISSUER, "aud": "airflowrpc", "sub": "alice",
                     "exp": int(time.time()) + 300}),
        "unknown kid": jwt(Signer("RS256", "key-9")),
        "no role from its claims, no [principals] entry": jwt(sub="stranger", scope="openid"),
    }
    for name, token in bad.items():
        assert refused(lambda: by_token(gw, token).ping()) == 401, name


#: A second provider taking only RFC 9068 access tokens issued to one client.
STRICT_ISSUER = "https://strict.idp.example.test"


def test_a_provider_can_take_only_access_tokens_of_named_clients(gw: RunningGateway) -> None:
    def strict(typ: str, **claims: Any) -> str:
        return jwt(header={"typ": typ}, iss=STRICT_ISSUER, sub="carol", **claims)

    me = by_token(gw, strict("at+jwt", client_id="ci-client")).whoami()
    assert (me["principal"], me["authenticated_by"]) == ("strict/carol", "oidc")
    assert by_token(gw, strict("application/at+jwt", azp="ci-client")).ping() == "pong"
    bad = {
        "typ must be at+jwt": strict("JWT", client_id="ci-client"),  # an ID token
        "not issued to an authorized client": strict("at+jwt", client_id="someone-else"),
    }
    for reason, token in bad.items():
        status, text = refusal(gw, token)
        assert status == 401 and reason in text, (reason, status, text)
    assert refused(lambda: by_token(gw, strict("at+jwt")).ping()) == 401  # no client named
    # The other provider has no such rules: its ID-token-shaped tokens still work.
    assert by_token(gw, jwt()).whoami()["principal"] == "corp/alice"


def refusal(gateway: RunningGateway, token: str) -> tuple[int, str]:
    """The HTTP status and body of a ping with ``token``."""
    conn = http.client.HTTPSConnection("localhost", gateway.port, timeout=30,
                                       context=client_context(gateway.pki, None))
    try:
        conn.request("POST", "/RPC2", xmlrpc.client.dumps((), "ping").encode(),
                     {"Content-Type": "text/xml", "Authorization": f"Bearer {token}"})
        answer = conn.getresponse()
        return answer.status, answer.read().decode("utf-8", "replace")
    finally:
        conn.close()


def test_a_new_provider_key_is_fetched_on_its_first_use(gw: RunningGateway, idp: JWKSServer) -> None:
    rotated = Signer("ES256", "key-2")
    idp.document = jwks(SIGNER, rotated)
    hits = idp.hits
    time.sleep(1.1)  # past the refetch cooldown
    assert by_token(gw, jwt(rotated, sub="bob")).whoami()["principal"] == "corp/bob"
    assert idp.hits == hits + 1


#: Put into refused tokens; must reach neither the log nor the audit trail.
SECRET = "s3cr3t-token-content"


def test_malformed_tokens_and_unusable_keys_get_401_and_leave_no_trace(
    gw: RunningGateway, idp: JWKSServer,
) -> None:
    weak = Signer("RS256", "key-weak", bits=1024)
    ec_labelled_rs256 = Signer("ES256", "key-ec-rs256")
    for_encryption = Signer("RS256", "key-enc")
    idp.document = {"keys": [SIGNER.jwk(), weak.jwk(), ec_labelled_rs256.jwk(alg="RS256"),
                             for_encryption.jwk(use="enc")]}
    time.sleep(1.1)  # past the refetch cooldown: the first of these kids fetches the new set
    log_start = gw.log.stat().st_size
    audit_start = len(audit(gw))
    bad = {
        "kid a list": jwt(header={"kid": [SECRET]}),
        "kid an object": jwt(header={"kid": {SECRET: 1}}),
        "exp NaN": jwt(exp=float("nan")),
        "exp Infinity": jwt(exp=float("inf")),
        "exp beyond a datetime": jwt(exp=10**400),
        "nbf not a number": jwt(nbf=SECRET),
        "crit": jwt(header={"crit": [SECRET], SECRET: 1}),
        "RSA key of 1024 bits": jwt(weak),
        "EC key whose JWK says RS256": jwt(ec_labelled_rs256),
        "key for encryption": jwt(for_encryption),
        "bad signature": jwt(Signer("RS256", "key-1"), sub=SECRET),
    }
    for name, token in bad.items():
        assert refused(lambda: by_token(gw, token).ping()) == 401, name
    time.sleep(1.5)  # the log is written by another process; refusals counted per second
    log = gw.log.read_bytes()[log_start:].decode("utf-8", "replace")
    assert "Traceback" not in log and SECRET not in log, log
    records = audit(gw)[audit_start:]
    refusals = [r for r in records if r.get("http_status") == 401]
    # Refusals anyone can cause are counted per source and reason, so every
    # one of them is in a count, if not in a record of its own.
    assert sum(r["count"] for r in refusals) == len(bad), refusals
    assert all("JWT refused" in r["reason"] or r["reason"].startswith("(reasons")
               for r in refusals), [r["reason"] for r in refusals]
    assert SECRET not in json.dumps(records)
    assert by_token(gw, jwt()).whoami()["principal"] == "corp/alice"


def test_scopes_decide_what_each_caller_may_do(gw: RunningGateway, pki: DevPKI) -> None:
    etl = gw.proxy(pki.client("etl-bot"))
    assert [d["dag_id"] for d in etl.list_dags()["dags"]] == ["etl_orders"]
    # The caller's own pattern, applied by the gateway as Airflow would (ILIKE).
    for pattern, found in [("ORD%S", ["etl_orders"]), ("e_l", ["etl_orders"]), ("%", ["etl_orders"]),
                           ("hello", []), ("orders_", [])]:
        assert [d["dag_id"] for d in etl.list_dags({"pattern": pattern})["dags"]] == found, pattern
    run = etl.trigger_dag("etl_orders", {"day": "2026-01-01"})
    assert run["created"] and run["note"].startswith("Triggered through txairflowrpc by etl-bot")
    with pytest.raises(xmlrpc.client.Fault) as e:
        etl.trigger_dag("example_hello", {})
    assert (e.value.faultCode, e.value.faultString) == (
        403, "forbidden: trigger_dag: requires scope runs:trigger:example_hello")
    with pytest.raises(xmlrpc.client.Fault) as e:
        etl.trigger_dag("etl_orders", {"day": "2026-01-01", "sql": "DROP TABLE orders"})
    assert e.value.faultCode == 403 and "key 'sql' is not allowed" in e.value.faultString
    with pytest.raises(xmlrpc.client.Fault) as e:
        etl.pause_dag("etl_orders")
    assert e.value.faultString == "forbidden: pause_dag: requires scope dags:pause:etl_orders"
    results = etl.system.multicall([
        {"methodName": "get_dag", "params": ["etl_orders"]},
        {"methodName": "get_dag", "params": ["example_hello"]},
    ])
    assert results[0][0]["dag_id"] == "etl_orders" and results[1]["faultCode"] == 403
    auditor = gw.proxy(pki.client("auditor@example.com"))  # mapped by its email SAN
    assert {"etl_orders", "example_hello"} <= {d["dag_id"] for d in auditor.list_dags()["dags"]}
    assert auditor.get_dag_run("etl_orders", run["dag_run_id"])["dag_run_id"] == run["dag_run_id"]
    with pytest.raises(xmlrpc.client.Fault) as e:
        auditor.trigger_dag("etl_orders", {"day": "2026-01-01"})
    assert e.value.faultString == "forbidden: trigger_dag: requires scope runs:trigger:etl_orders"
    assert refused(gw.proxy(pki.client("auditor")).ping) == 401  # same CN, no email SAN


def test_new_tls_certificates_are_used_without_a_restart(gw: RunningGateway, tmp_path: Path) -> None:
    import shutil

    from cryptography import x509

    def served_serial() -> int:
        ctx = client_context(gw.pki, gw.client)
        with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                der = tls.getpeercert(binary_form=True)
        return x509.load_der_x509_certificate(der).serial_number

    before = served_serial()
    fresh = gw.pki.ca.issue_cert("localhost", "127.0.0.1", common_name="localhost")
    tls_dir = gw.pki.directory
    backup = tmp_path / "server-backup"
    backup.mkdir()
    for name in ("server.pem", "server.key"):
        shutil.copy(tls_dir / name, backup / name)
    try:
        fresh.private_key_pem.write_to_path(str(tls_dir / "server.key.new"))
        fresh.cert_chain_pems[0].write_to_path(str(tls_dir / "server.pem.new"))
        os.replace(tls_dir / "server.key.new", tls_dir / "server.key")
        os.replace(tls_dir / "server.pem.new", tls_dir / "server.pem")
        os.kill(gw.process.pid, signal.SIGHUP)
        wait_until(lambda: served_serial() != before)
        assert gw.proxy().ping() == "pong"
    finally:
        for name in ("server.pem", "server.key"):
            shutil.copy(backup / name, tls_dir / name)
        os.kill(gw.process.pid, signal.SIGHUP)
        wait_until(lambda: served_serial() == before)


def test_reload_under_load_drops_no_call(gw: RunningGateway) -> None:
    """
    Each reload is recorded, calls made before and after each one succeed,
    and no call of the clients running throughout fails.  Nothing here
    depends on how many calls fit in between: that is speed, not behaviour.
    """
    failures: list[BaseException] = []
    stop = threading.Event()

    def load() -> None:
        proxy = gw.proxy()
        for _ in range(100_000):  # bounded; stopped by the event long before
            if stop.is_set():
                return
            try:
                assert proxy.get_dag("etl_orders")["dag_id"] == "etl_orders"
            except BaseException as e:  # reported below
                failures.append(e)
                return

    def reloads() -> list[dict[str, Any]]:
        # Only those the SIGHUPs caused: the file poll may also notice a write.
        return [r for r in audit(gw)
                if r.get("event") == "config.reload" and r.get("trigger") == "SIGHUP"]

    def reload_with(text: str) -> dict[str, Any]:
        seen = len(reloads())
        gw.config.write_text(text)
        os.kill(gw.process.pid, signal.SIGHUP)
        wait_until(lambda: len(reloads()) > seen, 30)
        return reloads()[seen]

    caller = gw.proxy()
    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    original = gw.config.read_text()
    results = []
    try:
        for i in range(5):
            assert caller.get_dag("etl_orders")["dag_id"] == "etl_orders"
            results.append(reload_with(original + f'\n[principals.extra{i}]\nroles = ["auditor"]\n'))
            assert caller.get_dag("etl_orders")["dag_id"] == "etl_orders"
        results.append(reload_with(original + '\n[roles.broken]\nscopes = ["runs:explode"]\n'))
        assert caller.get_dag("etl_orders")["dag_id"] == "etl_orders"
    finally:
        gw.config.write_text(original)
        os.kill(gw.process.pid, signal.SIGHUP)
        stop.set()
        for t in threads:
            t.join(60)
    assert failures == []
    assert [r["result"] for r in results] == ["accepted"] * 5 + ["rejected"]
    assert "roles.broken.scopes" in results[-1]["error"]


def test_perl_rpc_xml_with_a_token(gw: RunningGateway) -> None:
    token = new_token(gw, "etl-bot")
    script = (
        "use RPC::XML::Client; my $c = RPC::XML::Client->new($ARGV[0], useragent => "
        "[ssl_opts => {SSL_ca_file => $ARGV[1]}]); "
        "$c->request->header('Authorization' => 'Bearer ' . $ARGV[2]); "
        "my $r = $c->send_request('whoami'); "
        "print ref($r) ? $r->value->{principal} . ' ' . $r->value->{authenticated_by} : $r;"
    )
    out = subprocess.run(["perl", "-e", script, gw.url, str(gw.pki.ca_file), token],
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "etl-bot token", out.stdout + out.stderr
