"""
The example clients in ``examples/`` run as a user runs them: Python's
``xmlrpc.client``, Perl's ``RPC::XML``, Go's ``github.com/kolo/xmlrpc`` (built
offline against Debian's copy), Ruby's ``xmlrpc`` gem and Node's ``xmlrpc``
package, each with a client certificate and with a token, against the real
``twistd airflowrpc`` in front of a real Airflow.

Then how each client sends "nothing" for the optional ``conf`` struct when it
must still pass ``options`` after it (``test_nil_conf_keeps_the_run_id``).

Nothing is skipped: a missing Perl, Go, Ruby, PHP, Node or the Node example's
``node_modules`` (``make system-deps`` installs them all) fails the test.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from txairflowrpc.devstack.airflow import LocalAirflow
from txairflowrpc.devstack.pki import DevPKI

from .conftest import RunningGateway

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
AIRFLOWRPC = Path(sys.executable).parent / "airflowrpc"
#: Where Debian's golang-github-kolo-xmlrpc-dev puts the library.
DEBIAN_GOPATH = "/usr/share/gocode"
LANGUAGES = ["python", "perl", "go", "ruby", "node"]
DAG = "example_hello"


def go_build(source: Path, output: Path) -> Path:
    """Build ``source`` in GOPATH mode against Debian's packages: no network."""
    env = {**os.environ, "GO111MODULE": "off", "GOPATH": DEBIAN_GOPATH,
           "GOPROXY": "off", "GOFLAGS": ""}
    if "HOME" not in env and "GOCACHE" not in env:
        env["GOCACHE"] = str(output.parent / "go-cache")
    out = subprocess.run(["go", "build", "-o", str(output), str(source)],
                         capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    return output


@pytest.fixture(scope="session")
def go_example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return go_build(EXAMPLES / "go" / "main.go",
                    tmp_path_factory.mktemp("go-example") / "airflowrpc-example")


@pytest.fixture(scope="module")
def token_gateway(tmp_path_factory: pytest.TempPathFactory, pki: DevPKI,
                  airflow: LocalAirflow) -> Iterator[RunningGateway]:
    """A gateway on which a token may stand in for a client certificate."""
    gateway = RunningGateway(tmp_path_factory.mktemp("clients-gw"), pki, airflow,
                             cert_mode="optional")
    gateway.start()
    yield gateway
    gateway.stop()


def new_token(gateway: RunningGateway, principal: str) -> str:
    return gateway.new_token(principal)


def example_command(language: str, go_binary: Path) -> list[str]:
    return {
        "python": [sys.executable, str(EXAMPLES / "python" / "airflowrpc_example.py")],
        "perl": ["perl", str(EXAMPLES / "perl" / "airflowrpc_example.pl")],
        "go": [str(go_binary)],
        "ruby": ["ruby", str(EXAMPLES / "ruby" / "airflowrpc_example.rb")],
        "node": ["node", str(EXAMPLES / "node" / "example.js")],
    }[language]


def client_env(gateway: RunningGateway, *, token: str | None = None) -> dict[str, str]:
    """The environment a user sets: URL, CA and a certificate or a token."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOWRPC_")}
    env.update(AIRFLOWRPC_URL=gateway.url, AIRFLOWRPC_CA=str(gateway.pki.ca_file))
    if token is None:
        env.update(AIRFLOWRPC_CERT=str(gateway.client.cert),
                   AIRFLOWRPC_KEY=str(gateway.client.key))
    else:
        env["AIRFLOWRPC_TOKEN"] = token
    return env


def run_json_lines(command: list[str], env: dict[str, str]) -> list[dict[str, Any]]:
    out = subprocess.run(command, capture_output=True, text=True, timeout=420, env=env)
    assert out.returncode == 0, f"exit {out.returncode}\n{out.stdout}\n{out.stderr}"
    return [json.loads(line) for line in out.stdout.splitlines()]


def check_example_output(
    lines: list[dict[str, Any]], language: str, run_id: str, authenticated_by: str
) -> None:
    """What a user of the example relies on, step by step."""
    assert [line["step"] for line in lines] == [
        "whoami", "trigger", "retry", "wait", "log", "fault"], lines
    whoami, trigger, retry, wait, log, fault = lines
    assert (whoami["principal"], whoami["authenticated_by"]) == ("ci-bot", authenticated_by)
    assert (trigger["dag_run_id"], trigger["created"]) == (run_id, True)
    assert (retry["dag_run_id"], retry["created"]) == (run_id, False)
    assert (wait["dag_run_id"], wait["state"], wait["finished"]) == (run_id, "success", True)
    assert f"hello from txairflowrpc to {language}" in log["log"]
    assert (fault["method"], fault["code"]) == ("get_dag", 404), fault


@pytest.mark.parametrize("language", LANGUAGES)
def test_example_with_a_client_certificate(
    language: str, gateway: RunningGateway, go_example: Path
) -> None:
    run_id = f"example-{language}-cert-{secrets.token_hex(4)}"
    lines = run_json_lines(example_command(language, go_example) + [run_id],
                           client_env(gateway))
    check_example_output(lines, language, run_id, "client_certificate")
    run = gateway.proxy().get_dag_run(DAG, run_id)
    assert run["conf"] == {"who": language}


@pytest.mark.parametrize("language", LANGUAGES)
def test_example_with_a_token(
    language: str, token_gateway: RunningGateway, go_example: Path
) -> None:
    run_id = f"example-{language}-token-{secrets.token_hex(4)}"
    env = client_env(token_gateway, token=new_token(token_gateway, "ci-bot"))
    # The run id comes from the environment here, as a CI job would pass it.
    env["AIRFLOWRPC_RUN_ID"] = run_id
    lines = run_json_lines(example_command(language, go_example), env)
    check_example_output(lines, language, run_id, "token")
    run = token_gateway.proxy().get_dag_run(DAG, run_id)
    assert run["conf"] == {"who": language}


# -- Sending "nothing" for conf -------------------------------------------------
#
# Each program calls trigger_dag("example_hello", <nothing>, {"dag_run_id": X})
# the way a user of that library writes it, over mutual TLS, and prints the run
# it got ({"dag_run_id", "conf"}) or the fault ({"fault", "message"}).  What goes
# on the wire for <nothing>:
#   python  None, with allow_none=True     <value><nil/></value>
#   perl    undef, $RPC::XML::ALLOW_NIL = 1  <value><nil/></value> (without it: an empty string)
#   go      nil                            <param></param>, no <value> at all
#   ruby    nil, ENABLE_NIL_CREATE on      <value><nil/></value> (without it: refused unsent)
#   node    null                           <value><nil/></value>
#   php     null (xmlrpc-epi)              <value><string/></value>

NIL_PROGRAMS = {
    "python": ("nil.py", r'''
import json, os, ssl, sys, xmlrpc.client
ctx = ssl.create_default_context(cafile=os.environ["AIRFLOWRPC_CA"])
ctx.load_cert_chain(os.environ["AIRFLOWRPC_CERT"], os.environ["AIRFLOWRPC_KEY"])
rpc = xmlrpc.client.ServerProxy(os.environ["AIRFLOWRPC_URL"], context=ctx, allow_none=True)
try:
    run = rpc.trigger_dag("example_hello", None, {"dag_run_id": sys.argv[1]})
    print(json.dumps({"dag_run_id": run["dag_run_id"], "conf": run.get("conf")}))
except xmlrpc.client.Fault as fault:
    print(json.dumps({"fault": fault.faultCode, "message": fault.faultString}))
'''),
    "perl": ("nil.pl", r'''
use strict; use warnings; use JSON::PP; use RPC::XML; use RPC::XML::Client;
$RPC::XML::ALLOW_NIL = 1;    # without it undef goes out as an empty string
my $c = RPC::XML::Client->new($ENV{AIRFLOWRPC_URL},
    useragent => [ssl_opts => {SSL_ca_file => $ENV{AIRFLOWRPC_CA},
        SSL_cert_file => $ENV{AIRFLOWRPC_CERT}, SSL_key_file => $ENV{AIRFLOWRPC_KEY}}],
    error_handler => sub { die "transport error: $_[0]\n" }, fault_handler => sub { $_[0] });
my $r = $c->send_request('trigger_dag', 'example_hello', undef,
    {dag_run_id => RPC::XML::string->new($ARGV[0])});
print encode_json($r->is_fault ? {fault => $r->code, message => $r->string}
    : {dag_run_id => $r->value->{dag_run_id}, conf => $r->value->{conf}}), "\n";
'''),
    "go": ("nil.go", r'''
package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"log"
	"net/http"
	"os"

	"github.com/kolo/xmlrpc"
)

func main() {
	cert, err := tls.LoadX509KeyPair(os.Getenv("AIRFLOWRPC_CERT"), os.Getenv("AIRFLOWRPC_KEY"))
	if err != nil {
		log.Fatal(err)
	}
	ca, err := os.ReadFile(os.Getenv("AIRFLOWRPC_CA"))
	if err != nil {
		log.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(ca)
	config := &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{cert}}
	transport := &http.Transport{TLSClientConfig: config}
	client, err := xmlrpc.NewClient(os.Getenv("AIRFLOWRPC_URL"), transport)
	if err != nil {
		log.Fatal(err)
	}
	var run map[string]interface{}
	err = client.Call("trigger_dag", []interface{}{"example_hello", nil,
		map[string]interface{}{"dag_run_id": os.Args[1]}}, &run)
	// kolo decodes an empty <struct> as a nil map: read conf_json, the exact JSON.
	var conf interface{}
	if text, ok := run["conf_json"].(string); ok {
		json.Unmarshal([]byte(text), &conf)
	}
	out := map[string]interface{}{"dag_run_id": run["dag_run_id"], "conf": conf}
	if err != nil {
		var code int
		if _, e := fmt.Sscanf(err.Error(), "Fault(%d):", &code); e != nil {
			log.Fatal(err)
		}
		out = map[string]interface{}{"fault": code, "message": err.Error()}
	}
	json.NewEncoder(os.Stdout).Encode(out)
}
'''),
    "ruby": ("nil.rb", r'''
require "json"; require "openssl"; require "xmlrpc/client"
# The gem refuses nil ("Wrong type NilClass. Not allowed!") unless this is on.
XMLRPC::Config.send(:remove_const, :ENABLE_NIL_CREATE)
XMLRPC::Config.const_set(:ENABLE_NIL_CREATE, true)
client = XMLRPC::Client.new2(ENV.fetch("AIRFLOWRPC_URL"))
client.http.ca_file = ENV.fetch("AIRFLOWRPC_CA")
client.http.cert = OpenSSL::X509::Certificate.new(File.read(ENV.fetch("AIRFLOWRPC_CERT")))
client.http.key = OpenSSL::PKey.read(File.read(ENV.fetch("AIRFLOWRPC_KEY")))
begin
  run = client.call("trigger_dag", "example_hello", nil, { "dag_run_id" => ARGV[0] })
  puts JSON.generate(dag_run_id: run["dag_run_id"], conf: run["conf"])
rescue XMLRPC::FaultException => e
  puts JSON.generate(fault: e.faultCode, message: e.faultString)
end
'''),
    "node": ("nil.js", r'''
const fs = require('fs')
const xmlrpc = require('xmlrpc')
const env = process.env
const client = xmlrpc.createSecureClient({
  url: env.AIRFLOWRPC_URL, ca: fs.readFileSync(env.AIRFLOWRPC_CA),
  cert: fs.readFileSync(env.AIRFLOWRPC_CERT), key: fs.readFileSync(env.AIRFLOWRPC_KEY) })
const params = ['example_hello', null, { dag_run_id: process.argv[2] }]
client.methodCall('trigger_dag', params, (err, run) => {
  if (err && err.faultCode === undefined) { console.error(err); process.exit(1) }
  console.log(JSON.stringify(err ? { fault: err.faultCode, message: err.faultString }
    : { dag_run_id: run.dag_run_id, conf: run.conf }))
})
'''),
    "php": ("nil.php", r'''<?php
$request = xmlrpc_encode_request("trigger_dag",
    ["example_hello", null, ["dag_run_id" => $argv[1]]], ["encoding" => "UTF-8"]);
$context = stream_context_create([
    "http" => ["method" => "POST", "header" => "Content-Type: text/xml",
               "content" => $request, "ignore_errors" => true],
    "ssl" => ["cafile" => getenv("AIRFLOWRPC_CA"), "local_cert" => getenv("AIRFLOWRPC_CERT"),
              "local_pk" => getenv("AIRFLOWRPC_KEY")],
]);
$body = file_get_contents(getenv("AIRFLOWRPC_URL"), false, $context);
if ($body === false) { fwrite(STDERR, "no answer\n"); exit(1); }
$run = xmlrpc_decode($body, "UTF-8");
if (is_array($run) && xmlrpc_is_fault($run)) {
    echo json_encode(["fault" => $run["faultCode"], "message" => $run["faultString"]]), "\n";
} else {
    echo json_encode(["dag_run_id" => $run["dag_run_id"], "conf" => (object)$run["conf"]]), "\n";
}
'''),
}


# PHP cannot send an empty struct at all: [] goes out as an empty <array>.
NIL_PROGRAMS["php-empty-struct"] = (
    "empty.php", NIL_PROGRAMS["php"][1].replace('["example_hello", null,', '["example_hello", [],'))


class NilConfLost(AssertionError):
    """The gateway did not take the client's "nothing" as an empty conf."""


def nil_command(language: str, program: Path) -> list[str]:
    if language == "go":
        return [str(go_build(program, program.with_suffix("")))]
    return {"python": [sys.executable], "perl": ["perl"], "ruby": ["ruby"],
            "node": ["node"], "php": ["php"], "php-empty-struct": ["php"]}[language] + [str(program)]


@pytest.mark.parametrize("language", list(NIL_PROGRAMS))
def test_nil_conf_keeps_the_run_id(
    language: str, gateway: RunningGateway, tmp_path: Path
) -> None:
    name, source = NIL_PROGRAMS[language]
    program = tmp_path / name
    program.write_text(source.lstrip("\n"))
    run_id = f"nil-{language}-{secrets.token_hex(4)}"
    env = client_env(gateway)
    env["NODE_PATH"] = str(EXAMPLES / "node" / "node_modules")
    [answer] = run_json_lines(nil_command(language, program) + [run_id], env)
    if "fault" in answer:
        raise NilConfLost(f"{language}: fault {answer['fault']}: {answer['message']}")
    if answer != {"dag_run_id": run_id, "conf": {}}:
        raise NilConfLost(f"{language}: asked for run {run_id!r} with no conf, got {answer}")
    assert gateway.proxy().get_dag_run(DAG, run_id)["conf"] == {}
