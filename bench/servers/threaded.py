"""
Row C, the plain alternative: the standard library's SimpleXMLRPCServer
with ThreadingMixIn (a thread per connection) over TLS, serving
``get_dag_run`` from the same upstream as the gateway.

Each thread keeps its own keep-alive ``http.client`` connection to the
upstream; one login is shared by all threads.  A caller must send the
bearer token given with ``--token`` (compared in constant time); there is
no audit trail, no rate limit, no deadline.  ``GET /stats`` tells how
many calls it answered.  What the gateway does on top
of this is what it costs over it.  Runs until it is signalled.

    python bench/servers/threaded.py --port PORT --tls DIR --upstream URL --token T
"""

from __future__ import annotations

import argparse
import hmac
import http.client
import json
import signal
import socketserver
import ssl
import sys
import threading
import xmlrpc.client
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit
from xmlrpc.server import SimpleXMLRPCRequestHandler, SimpleXMLRPCServer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from shapes import shape_run  # noqa: E402


class Upstream:
    """Per-thread keep-alive connections to Airflow, one shared login."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self._host, self._port = parts.hostname, parts.port or 80
        self._local = threading.local()
        self._lock = threading.Lock()
        self._jwt: str | None = None

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = http.client.HTTPConnection(self._host, self._port,
                                                                 timeout=30)
        return conn

    def _request(self, method: str, path: str, body: bytes | None,
                 headers: dict[str, str]) -> tuple[int, bytes]:
        for attempt in (1, 2):  # once more on a connection the server closed
            conn = self._connection()
            try:
                conn.request(method, path, body, headers)
                response = conn.getresponse()
                return response.status, response.read()
            except (http.client.HTTPException, OSError):
                conn.close()
                self._local.conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _token(self) -> str:
        with self._lock:
            if self._jwt is None:
                status, body = self._request(
                    "POST", "/auth/token",
                    json.dumps({"username": "gateway", "password": "x"}).encode(),
                    {"Content-Type": "application/json"})
                if status not in (200, 201):
                    raise xmlrpc.client.Fault(502, f"login answered HTTP {status}")
                self._jwt = json.loads(body)["access_token"]
            return self._jwt

    def get_json(self, path: str) -> Any:
        status, body = self._request("GET", path, None, {
            "Authorization": f"Bearer {self._token()}", "Accept": "application/json"})
        if status == 404:
            raise xmlrpc.client.Fault(404, "not found")
        if status != 200:
            raise xmlrpc.client.Fault(502, f"Airflow answered HTTP {status}")
        return json.loads(body)


class Served:
    """Calls answered, for the benchmark's upstream-requests-per-call ratio."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0

    def add(self) -> None:
        with self._lock:
            self.count += 1


SERVED = Served()


class Handler(SimpleXMLRPCRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    rpc_paths = ("/RPC2",)
    token = b""

    def do_GET(self) -> None:
        """``GET /stats``: ``{"served": N}``, the calls answered so far."""
        body = json.dumps({"served": SERVED.count}).encode()
        self.send_response(200 if self.path == "/stats" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def decode_request_content(self, data: bytes) -> bytes | None:
        supplied = self.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(supplied, b"Bearer " + self.token):
            self.send_response(401)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        return super().decode_request_content(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class TLSThreadingServer(socketserver.ThreadingMixIn, SimpleXMLRPCServer):
    daemon_threads = True
    request_queue_size = 4096

    def __init__(self, port: int, context: ssl.SSLContext) -> None:
        self._context = context
        super().__init__(("127.0.0.1", port), Handler, logRequests=False, allow_none=False)

    def get_request(self) -> tuple[Any, Any]:
        sock, address = self.socket.accept()
        # The handshake happens in the connection's own thread, not here.
        return self._context.wrap_socket(sock, server_side=True,
                                         do_handshake_on_connect=False), address

    def finish_request(self, request: Any, client_address: Any) -> None:
        try:
            request.do_handshake()
        except (ssl.SSLError, OSError):
            return
        super().finish_request(request, client_address)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tls", type=Path, required=True, help="a DevPKI directory")
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--token", required=True)
    args = parser.parse_args()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(args.tls / "server.pem", args.tls / "server.key")
    Handler.token = args.token.encode()
    upstream = Upstream(args.upstream)

    def get_dag_run(dag_id: str, dag_run_id: str) -> dict[str, Any]:
        try:
            return shape_run(upstream.get_json(
                f"/api/v2/dags/{quote(dag_id, safe='')}/dagRuns/{quote(dag_run_id, safe='')}"))
        finally:
            SERVED.add()

    server = TLSThreadingServer(args.port, context)
    server.register_function(get_dag_run)
    server.register_function(lambda: "pong", "ping")
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
