"""
The example clients in ``examples/`` run as a user runs them: Python's
``xmlrpc.client``, Perl's ``RPC::XML``, Go's ``github.com/kolo/xmlrpc`` (built
offline against Debian's copy), Ruby's ``xmlrpc`` gem, Node's ``xmlrpc``
package, PHP's xmlrpc extension (xmlrpc-epi), the C library xmlrpc-c (built against Debian's copy; a token goes out
as basic auth) and Java's aXMLRPC (Debian's copy, the source file run by
``java``), each with a client certificate and with a token, against the real
``twistd airflowrpc`` in front of a real Airflow.

Then how each client sends "nothing" for the optional ``conf`` struct when it
must still pass ``options`` after it (``test_nil_conf_keeps_the_run_id``).

Nothing is skipped: a missing Perl, Go, Ruby, PHP, Node, the Node example's
``node_modules``, a C compiler with xmlrpc-c or a JDK with aXMLRPC (``make
system-deps`` installs them all) fails the test.
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
from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    load_pem_private_key,
    pkcs12,
)
from cryptography.x509 import load_pem_x509_certificate

from txairflowrpc.devstack.airflow import LocalAirflow
from txairflowrpc.devstack.pki import DevPKI

from .conftest import RunningGateway

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
AIRFLOWRPC = Path(sys.executable).parent / "airflowrpc"
#: Where Debian's golang-github-kolo-xmlrpc-dev puts the library.
DEBIAN_GOPATH = "/usr/share/gocode"
#: Where Debian's libaxmlrpc-java puts the library.
AXMLRPC_JAR = "/usr/share/java/axmlrpc.jar"
#: What a program built against Debian's libxmlrpc-core-c3-dev links with
#: (``xmlrpc-c-config client --libs`` adds -lcurl, needed only statically).
XMLRPC_C_LIBS = ["-lxmlrpc_client", "-lxmlrpc", "-lxmlrpc_util"]
#: The PKCS#12 file's password (Java reads a client key from such a file).
KEYSTORE_PASSWORD = "changeit"
LANGUAGES = ["python", "perl", "go", "ruby", "node", "php", "c", "java"]
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


def c_build(source: Path, output: Path) -> Path:
    """Build ``source`` against Debian's xmlrpc-c, warnings as errors."""
    out = subprocess.run(["cc", "-Wall", "-Wextra", "-Werror", "-o", str(output), str(source),
                          *XMLRPC_C_LIBS], capture_output=True, text=True, timeout=300,
                         check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    return output


@pytest.fixture(scope="session")
def go_example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return go_build(EXAMPLES / "go" / "main.go",
                    tmp_path_factory.mktemp("go-example") / "airflowrpc-example")


@pytest.fixture(scope="session")
def c_example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return c_build(EXAMPLES / "c" / "airflowrpc_example.c",
                   tmp_path_factory.mktemp("c-example") / "airflowrpc-example")


@pytest.fixture(scope="session")
def built(go_example: Path, c_example: Path) -> dict[str, Path]:
    """The examples that are compiled first, by language."""
    return {"go": go_example, "c": c_example}


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


def example_command(language: str, built: dict[str, Path]) -> list[str]:
    if language in built:
        return [str(built[language])]
    return {
        "python": [sys.executable, str(EXAMPLES / "python" / "airflowrpc_example.py")],
        "perl": ["perl", str(EXAMPLES / "perl" / "airflowrpc_example.pl")],
        "ruby": ["ruby", str(EXAMPLES / "ruby" / "airflowrpc_example.rb")],
        "node": ["node", str(EXAMPLES / "node" / "example.js")],
        "php": ["php", str(EXAMPLES / "php" / "airflowrpc_example.php")],
        "java": java_command(EXAMPLES / "java" / "AirflowRpcExample.java"),
    }[language]


def java_command(source: Path) -> list[str]:
    """Run a Java source file with aXMLRPC, as Java 11 and later can."""
    return ["java", "-cp", AXMLRPC_JAR, str(source)]


def keystore(gateway: RunningGateway) -> Path:
    """The client's certificate and key as a PKCS#12 file, as Java reads them."""
    path = gateway.client.cert.with_suffix(".p12")
    if not path.exists():
        key = load_pem_private_key(gateway.client.key.read_bytes(), None)
        cert = load_pem_x509_certificate(gateway.client.cert.read_bytes())
        path.write_bytes(pkcs12.serialize_key_and_certificates(
            b"client", key, cert, None,  # type: ignore[arg-type]
            BestAvailableEncryption(KEYSTORE_PASSWORD.encode())))
    return path


def client_env(gateway: RunningGateway, *, token: str | None = None,
               principal: str = "ci-bot") -> dict[str, str]:
    """
    The environment a user sets: URL, CA and a certificate (PEM files, or a
    PKCS#12 file for Java) or a token (and the principal's name, for a client
    that can send a token only as basic auth).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOWRPC_")}
    env.update(AIRFLOWRPC_URL=gateway.url, AIRFLOWRPC_CA=str(gateway.pki.ca_file))
    if token is None:
        env.update(AIRFLOWRPC_CERT=str(gateway.client.cert),
                   AIRFLOWRPC_KEY=str(gateway.client.key),
                   AIRFLOWRPC_KEYSTORE=str(keystore(gateway)),
                   AIRFLOWRPC_KEYSTORE_PASSWORD=KEYSTORE_PASSWORD)
    else:
        env.update(AIRFLOWRPC_TOKEN=token, AIRFLOWRPC_PRINCIPAL=principal)
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
    language: str, gateway: RunningGateway, built: dict[str, Path]
) -> None:
    run_id = f"example-{language}-cert-{secrets.token_hex(4)}"
    lines = run_json_lines(example_command(language, built) + [run_id],
                           client_env(gateway))
    check_example_output(lines, language, run_id, "client_certificate")
    run = gateway.proxy().get_dag_run(DAG, run_id)
    assert run["conf"] == {"who": language}


@pytest.mark.parametrize("language", LANGUAGES)
def test_example_with_a_token(
    language: str, token_gateway: RunningGateway, built: dict[str, Path]
) -> None:
    run_id = f"example-{language}-token-{secrets.token_hex(4)}"
    env = client_env(token_gateway, token=new_token(token_gateway, "ci-bot"))
    # The run id comes from the environment here, as a CI job would pass it.
    env["AIRFLOWRPC_RUN_ID"] = run_id
    lines = run_json_lines(example_command(language, built), env)
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
#   c       "n" in xmlrpc-c's format       <value><nil/></value>
#   java    null, FLAGS_NIL (aXMLRPC)      <value>, <nil/>, </value> on lines of their own
#                                          (without the flag: a NullPointerException, unsent)

#: A Go program's client, with its certificate (the programs below start with it).
GO_CLIENT = r'''	cert, err := tls.LoadX509KeyPair(os.Getenv("AIRFLOWRPC_CERT"), os.Getenv("AIRFLOWRPC_KEY"))
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
'''

#: A C program's client and server info, after its declarations (env, curl, parms,
#: client, server), as the programs below make them.
_C_CLIENT = r'''    xmlrpc_env_init(&env);
    xmlrpc_client_setup_global_const(&env);
    curl.cainfo = getenv("AIRFLOWRPC_CA");
    curl.ssl_cert = getenv("AIRFLOWRPC_CERT");
    curl.sslkey = getenv("AIRFLOWRPC_KEY");
    parms.transport = "curl";
    parms.transportparmsP = &curl;
    parms.transportparm_size = XMLRPC_CXPSIZE(cainfo);
    xmlrpc_client_create(&env, XMLRPC_CLIENT_NO_FLAGS, "{name}", "1.0", &parms,
                         XMLRPC_CPSIZE(transportparm_size), &client);
    server = xmlrpc_server_info_new(&env, getenv("AIRFLOWRPC_URL"));
'''


def c_client(name: str) -> str:
    """`_C_CLIENT` for the program ``name``."""
    return _C_CLIENT.replace("{name}", name)


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
''' + GO_CLIENT + r'''	var run map[string]interface{}
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
    "c": ("nil.c", r'''
#include <stdio.h>
#include <stdlib.h>
#include <xmlrpc-c/base.h>
#include <xmlrpc-c/client.h>
#include <xmlrpc-c/json.h>

/* One line of JSON: the serializer's line breaks are layout (a string's are escaped). */
static void print_line(xmlrpc_mem_block *json) {
    size_t i;
    for (i = 0; i < XMLRPC_MEMBLOCK_SIZE(char, json); ++i) {
        char c = XMLRPC_MEMBLOCK_CONTENTS(char, json)[i];
        putchar(c == '\n' ? ' ' : c);
    }
    putchar('\n');
}

int main(int argc, char **argv) {
    xmlrpc_env env;
    xmlrpc_client *client;
    xmlrpc_server_info *server;
    xmlrpc_value *params, *run, *conf;
    const char *id;
    struct xmlrpc_curl_xportparms curl = {0};
    struct xmlrpc_clientparms parms = {0};
    xmlrpc_mem_block *json;

    (void)argc;
''' + c_client("nil") + r'''    params = xmlrpc_build_value(&env, "(sn{s:s})", "example_hello", "dag_run_id", argv[1]);
    if (env.fault_occurred) { fprintf(stderr, "%s\n", env.fault_string); return 1; }
    xmlrpc_client_call2(&env, client, server, "trigger_dag", params, &run);
    if (env.fault_occurred) {  /* a fault, or a transport error: shown the same way */
        xmlrpc_env out;
        xmlrpc_env_init(&out);
        json = XMLRPC_MEMBLOCK_NEW(char, &out, 0);
        xmlrpc_serialize_json(&out, xmlrpc_build_value(&out, "{s:i,s:s}", "fault",
                              env.fault_code, "message", env.fault_string), json);
        print_line(json);
        return 0;
    }
    xmlrpc_decompose_value(&env, run, "{s:s,s:S,*}", "dag_run_id", &id, "conf", &conf);
    if (env.fault_occurred) { fprintf(stderr, "%s\n", env.fault_string); return 1; }
    json = XMLRPC_MEMBLOCK_NEW(char, &env, 0);
    xmlrpc_serialize_json(&env, xmlrpc_build_value(&env, "{s:s,s:S}", "dag_run_id", id,
                          "conf", conf), json);
    if (env.fault_occurred) { fprintf(stderr, "%s\n", env.fault_string); return 1; }
    print_line(json);
    return 0;
}
'''),
    "java": ("Nil.java", r'''
import de.timroes.axmlrpc.XMLRPCClient;
import de.timroes.axmlrpc.XMLRPCServerException;
import java.io.FileInputStream;
import java.net.URL;
import java.security.KeyStore;
import java.security.cert.CertificateFactory;
import java.util.HashMap;
import java.util.Map;
import javax.net.ssl.KeyManagerFactory;
import javax.net.ssl.TrustManagerFactory;

public class Nil {
    public static void main(String[] args) throws Exception {
        Map<String, String> env = System.getenv();
        // Without FLAGS_NIL aXMLRPC cannot send null at all.
        XMLRPCClient client = new XMLRPCClient(new URL(env.get("AIRFLOWRPC_URL")), XMLRPCClient.FLAGS_NIL);
        KeyStore roots = KeyStore.getInstance(KeyStore.getDefaultType());
        roots.load(null, null);
        roots.setCertificateEntry("ca", CertificateFactory.getInstance("X.509")
            .generateCertificate(new FileInputStream(env.get("AIRFLOWRPC_CA"))));
        TrustManagerFactory trust = TrustManagerFactory.getInstance(TrustManagerFactory.getDefaultAlgorithm());
        trust.init(roots);
        client.installCustomTrustManagers(trust.getTrustManagers());
        char[] password = env.get("AIRFLOWRPC_KEYSTORE_PASSWORD").toCharArray();
        KeyStore keys = KeyStore.getInstance("PKCS12");
        keys.load(new FileInputStream(env.get("AIRFLOWRPC_KEYSTORE")), password);
        KeyManagerFactory kmf = KeyManagerFactory.getInstance(KeyManagerFactory.getDefaultAlgorithm());
        kmf.init(keys, password);
        client.installCustomKeyManagers(kmf.getKeyManagers());
        Map<String, Object> options = new HashMap<>();
        options.put("dag_run_id", args[0]);
        try {
            @SuppressWarnings("unchecked")
            Map<String, Object> run = (Map<String, Object>) client.call(
                "trigger_dag", "example_hello", null, options);
            // conf is a struct: an empty one prints as {} here.
            System.out.println("{\"dag_run_id\": \"" + run.get("dag_run_id") + "\", \"conf\": "
                + (run.get("conf") instanceof Map && ((Map<?, ?>) run.get("conf")).isEmpty()
                   ? "{}" : "\"" + run.get("conf") + "\"") + "}");
        } catch (XMLRPCServerException fault) {
            System.out.println("{\"fault\": " + fault.getErrorNr() + ", \"message\": \""
                + fault.getMessage().replace("\\", "\\\\").replace("\"", "\\\"") + "\"}");
        }
    }
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
    if language == "c":
        return [str(c_build(program, program.with_suffix("")))]
    if language == "java":
        return java_command(program)
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


#: Read a run back: its dag_run_id, its conf struct and its conf_json.
READ_PROGRAMS = {
    "go": ("read.go", r'''
package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"log"
	"net/http"
	"os"

	"github.com/kolo/xmlrpc"
)

func main() {
''' + GO_CLIENT + r'''	var run map[string]interface{}
	if err := client.Call("get_dag_run", []interface{}{"example_hello", os.Args[1]}, &run); err != nil {
		log.Fatal(err)
	}
	var pong string
	if err := client.Call("ping", nil, &pong); err != nil { // the client still works
		log.Fatal(err)
	}
	json.NewEncoder(os.Stdout).Encode(map[string]interface{}{
		"dag_run_id": run["dag_run_id"], "conf": run["conf"], "conf_json": run["conf_json"]})
}
'''),
    "c": ("read.c", r'''
#include <stdio.h>
#include <stdlib.h>
#include <xmlrpc-c/base.h>
#include <xmlrpc-c/client.h>
#include <xmlrpc-c/json.h>

int main(int argc, char **argv) {
    xmlrpc_env env;
    xmlrpc_client *client;
    xmlrpc_server_info *server;
    xmlrpc_value *run, *conf;
    const char *id, *confJson;
    struct xmlrpc_curl_xportparms curl = {0};
    struct xmlrpc_clientparms parms = {0};
    xmlrpc_mem_block *json;
    size_t i;

    (void)argc;
''' + c_client("read") + r'''    xmlrpc_client_call2(&env, client, server, "get_dag_run",
                        xmlrpc_build_value(&env, "(ss)", "example_hello", argv[1]), &run);
    if (env.fault_occurred) { fprintf(stderr, "%d %s\n", env.fault_code, env.fault_string); return 1; }
    xmlrpc_decompose_value(&env, run, "{s:s,s:S,s:s,*}", "dag_run_id", &id, "conf", &conf,
                           "conf_json", &confJson);
    if (env.fault_occurred) { fprintf(stderr, "%s\n", env.fault_string); return 1; }
    json = XMLRPC_MEMBLOCK_NEW(char, &env, 0);
    xmlrpc_serialize_json(&env, xmlrpc_build_value(&env, "{s:s,s:S,s:s}", "dag_run_id", id,
                          "conf", conf, "conf_json", confJson), json);
    if (env.fault_occurred) { fprintf(stderr, "%s\n", env.fault_string); return 1; }
    for (i = 0; i < XMLRPC_MEMBLOCK_SIZE(char, json); ++i) {
        char c = XMLRPC_MEMBLOCK_CONTENTS(char, json)[i];
        putchar(c == '\n' ? ' ' : c);
    }
    putchar('\n');
    return 0;
}
'''),
}


@pytest.mark.parametrize("language", list(READ_PROGRAMS))
def test_a_run_whose_conf_some_clients_cannot_carry_is_still_read(
    language: str, gateway: RunningGateway, tmp_path: Path
) -> None:
    """
    Found by review: a conf member without a name made every answer naming
    the run unreadable to Go's kolo (and its client useless after it), and a
    character beyond the Basic Multilingual Plane (an emoji) made it
    unreadable to xmlrpc-c: anyone who may trigger could blind those readers
    of a DAG.  The member is left out (conf_json has it), xmlrpc-c gets
    U+FFFD, and conf_json is ASCII: exact for every client.
    """
    conf = {"": "no name", "msg": "done \U0001F680", "ok": 1}
    run_id = f"read-{language}-{secrets.token_hex(4)}"
    gateway.proxy().trigger_dag(DAG, conf, {"dag_run_id": run_id})
    name, source = READ_PROGRAMS[language]
    program = tmp_path / name
    program.write_text(source.lstrip("\n"))
    [answer] = run_json_lines(nil_command(language, program) + [run_id], client_env(gateway))
    assert answer["dag_run_id"] == run_id
    assert json.loads(answer["conf_json"]) == conf and answer["conf_json"].isascii()
    msg = "done \ufffd" if language == "c" else "done \U0001F680"
    assert answer["conf"] == {"msg": msg, "ok": 1}
