"""
Row A, the floor: twisted.web over TLS answering every POST with one fixed
XML-RPC response (the ``get_dag_run`` result the gateway would send), and
doing nothing else -- no parsing, no auth, no upstream, no audit.

The TLS is the gateway's own kind: the same server certificate, TLS 1.2
and up, a client certificate asked for (verified against the same CA) but
optional, so both wrk (no certificate) and the idle mutual-TLS clients can
connect.  Runs until it is signalled.

With ``--processes N`` it is N such processes on the one port, each with
its own listening socket (``SO_REUSEPORT``, as the gateway's workers): the
first starts the others as its children (one process group, so one signal
stops them all) and serves too.  That is what two processes of the plainest
Twisted server reach on this machine, beside the gateway's two workers.

    python bench/servers/floor.py --port PORT --tls DIR [--processes N]
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import xmlrpc.client
from pathlib import Path

from OpenSSL import SSL
from twisted.internet import endpoints, ssl, task
from twisted.internet.defer import Deferred
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.web import resource, server

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from shapes import gateway_run  # noqa: E402

REPLY = xmlrpc.client.dumps((gateway_run("bench_dag", "bench-run-1"),), methodresponse=True,
                            allow_none=False).encode()


class FixedReply(resource.Resource):
    isLeaf = True

    def render_POST(self, request: server.Request) -> bytes:
        request.setHeader(b"content-type", b"text/xml")
        return REPLY


def tls_options(directory: Path) -> ssl.CertificateOptions:
    key = ssl.KeyPair.load((directory / "server.key").read_bytes(), 1)  # FILETYPE_PEM
    cert = ssl.PrivateCertificate.load((directory / "server.pem").read_bytes(), key, 1)
    ca = ssl.Certificate.loadPEM((directory / "ca.pem").read_bytes())
    return ssl.CertificateOptions(
        privateKey=key.original, certificate=cert.original, verify=True,
        caCerts=[ca.original], requireCertificate=False,
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
    )


def main(reactor, argv: list[str]) -> Deferred[None]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tls", type=Path, required=True, help="a DevPKI directory")
    parser.add_argument("--processes", type=int, default=1,
                        help="serve the port from this many processes (SO_REUSEPORT)")
    parser.add_argument("--shared", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    site = server.Site(FixedReply())
    site.noisy = False
    if args.processes == 1 and not args.shared:
        endpoint = endpoints.SSL4ServerEndpoint(reactor, args.port, tls_options(args.tls),
                                                interface="127.0.0.1", backlog=50)
        endpoint.listen(site)
        return Deferred()  # serve until signalled
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    listener.bind(("127.0.0.1", args.port))
    listener.listen(50)
    listener.setblocking(False)
    reactor.adoptStreamPort(listener.fileno(), socket.AF_INET,
                            TLSMemoryBIOFactory(tls_options(args.tls), False, site))
    listener.close()  # the reactor holds its own copy
    for _ in range(args.processes - 1):  # listening already: the port is theirs to share
        subprocess.Popen([sys.executable, __file__, "--port", str(args.port),
                          "--tls", str(args.tls), "--shared"])
    return Deferred()  # serve until signalled


if __name__ == "__main__":
    assert SSL  # pyOpenSSL must be importable for twisted.internet.ssl
    task.react(main, (sys.argv[1:],))
