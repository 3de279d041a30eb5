"""
A fast stand-in for Airflow 3's REST API, for the benchmark only.

It answers what the gateway needs for ``get_dag_run`` and ``wait_dag_run``
with precomputed bytes, so that it costs far less per request than the
servers measured in front of it:

- ``POST /auth/token``: 201 and a JWT-shaped token that lives a day;
- ``GET /api/v2/dags/{dag_id}/dagRuns/{run_id}`` (a bearer token required):
  a ~0.8 KB DAGRun document, ``success``;  a run id ``finish-at-<ms>``
  is ``running`` until that Unix time in milliseconds, then ``success``
  (the runs that ``wait_dag_run`` waits for);
- ``GET /api/v2/monitor/health``: healthy;
- ``GET /stats``: what it has served, as JSON: ``requests`` (every
  request but these), ``logins``, ``runs`` (DAGRun reads) and ``polls`` (reads per
  ``finish-at-`` run), so the benchmark can count upstream requests per
  call as differences between two reads.

It speaks HTTP/1.1 with keep-alive (and pipelining), plain or, with
``--tls-cert``/``--tls-key``, over TLS (the benchmark's row D).  One
asyncio process; it runs until it is signalled.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import signal
import ssl
import time
from typing import Any

#: A DAGRun as Airflow 3.3 returns it (field names and kinds), about 0.8 KB.
RUN_TEMPLATE: dict[str, Any] = {
    "dag_run_id": "",
    "dag_id": "",
    "logical_date": None,
    "queued_at": "2026-11-26T10:00:00.012345Z",
    "start_date": "2026-11-26T10:00:01.234567Z",
    "end_date": "2026-11-26T10:00:09.876543Z",
    "duration": 8.641976,
    "data_interval_start": None,
    "data_interval_end": None,
    "run_after": "2026-11-26T10:00:00.000000Z",
    "last_scheduling_decision": "2026-11-26T10:00:09.800000Z",
    "run_type": "manual",
    "state": "success",
    "triggered_by": "rest_api",
    "triggering_user_name": "gateway",
    "conf": {"day": "2026-11-26", "source": "ci", "attempt": 1},
    "note": "Triggered through txairflowrpc by ci-bot (request 0123456789abcdef)",
    "dag_versions": [{
        "id": "0193c2b4-7a55-7d1e-9c4e-2f6b1a8d3e57",
        "version_number": 1,
        "dag_id": "",
        "bundle_name": "dags-folder",
        "bundle_version": None,
        "created_at": "2026-11-20T08:00:00.000000Z",
        "dag_display_name": "",
    }],
    "bundle_version": None,
    "dag_display_name": "",
    "partition_key": None,
}

FINISH_AT = "finish-at-"


def run_document(dag_id: str, run_id: str, state: str = "success") -> bytes:
    run = json.loads(json.dumps(RUN_TEMPLATE))
    run.update(dag_run_id=run_id, dag_id=dag_id, dag_display_name=dag_id, state=state)
    run["dag_versions"][0].update(dag_id=dag_id, dag_display_name=dag_id)
    if state != "success":
        run["end_date"] = run["duration"] = None
    return json.dumps(run, separators=(",", ":")).encode()


def _token() -> bytes:
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    now = int(time.time())
    jwt = ".".join([part({"alg": "HS512", "typ": "JWT"}),
                    part({"sub": "gateway", "iat": now, "exp": now + 86400}), "c2ln"])
    return json.dumps({"access_token": jwt}).encode()


def _response(status: bytes, body: bytes, close: bool) -> bytes:
    return b"".join([
        b"HTTP/1.1 ", status, b"\r\ncontent-type: application/json\r\ncontent-length: ",
        str(len(body)).encode(), b"\r\n", b"connection: close\r\n" if close else b"",
        b"\r\n", body,
    ])


class Counters:
    def __init__(self) -> None:
        self.requests = 0
        self.logins = 0
        self.runs = 0
        self.polls: dict[str, int] = {}

    def document(self) -> bytes:
        return json.dumps({"requests": self.requests, "logins": self.logins,
                           "runs": self.runs, "polls": self.polls}).encode()


class Stub:
    """Routes one request to its precomputed (or cached) answer."""

    def __init__(self) -> None:
        self.counters = Counters()
        self._runs: dict[bytes, bytes] = {}

    def answer(self, method: bytes, target: bytes, authorized: bool) -> tuple[bytes, bytes]:
        c = self.counters
        if target == b"/stats":  # not counted: the benchmark's own reads
            return b"200 OK", c.document()
        c.requests += 1
        if target.startswith(b"/api/v2/dags/") and method == b"GET":
            if not authorized:
                return b"401 Unauthorized", b'{"detail":"Not authenticated"}'
            parts = target.split(b"?", 1)[0].split(b"/")
            # ['', 'api', 'v2', 'dags', dag_id, 'dagRuns', run_id]
            if len(parts) == 7 and parts[5] == b"dagRuns":
                c.runs += 1
                return b"200 OK", self._run(parts[4], parts[6])
            return b"404 Not Found", b'{"detail":"Not Found"}'
        if target == b"/auth/token" and method == b"POST":
            c.logins += 1
            return b"201 Created", _token()
        if target == b"/api/v2/monitor/health":
            return b"200 OK", (b'{"metadatabase":{"status":"healthy"},'
                               b'"scheduler":{"status":"healthy"}}')
        return b"404 Not Found", b'{"detail":"Not Found"}'

    def _run(self, dag_id: bytes, run_id: bytes) -> bytes:
        cached = self._runs.get(run_id)
        if cached is not None:
            return cached
        dag, run = dag_id.decode(), run_id.decode()
        if run.startswith(FINISH_AT):
            self.counters.polls[run] = self.counters.polls.get(run, 0) + 1
            try:
                due = int(run[len(FINISH_AT):]) / 1000
            except ValueError:
                due = 0.0
            if time.time() < due:
                return run_document(dag, run, "running")
            return run_document(dag, run)
        body = run_document(dag, run)
        if len(self._runs) < 10000:
            self._runs[run_id] = body
        return body


class HTTPProtocol(asyncio.Protocol):
    """HTTP/1.1 with keep-alive; bodies are read and ignored."""

    def __init__(self, stub: Stub) -> None:
        self._stub = stub
        self._buffer = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data
        out = []
        close = False
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                break
            head = buffer[:end].split(b"\r\n")
            length = 0
            authorized = False
            for line in head[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"authorization":
                    authorized = value.strip()[:7].lower() == b"bearer "
                elif name == b"connection" and value.strip().lower() == b"close":
                    close = True
            if len(buffer) < end + 4 + length:
                break
            buffer = buffer[end + 4 + length:]
            try:
                method, target, _ = head[0].split(b" ", 2)
            except ValueError:
                out.append(_response(b"400 Bad Request", b"{}", True))
                close = True
                break
            status, body = self._stub.answer(method, target, authorized)
            out.append(_response(status, body, close))
            if close:
                break
        self._buffer = buffer
        if out:
            self._transport.write(b"".join(out))
        if close:
            self._transport.close()


async def serve(port: int, context: ssl.SSLContext | None) -> None:
    loop = asyncio.get_running_loop()
    stub = Stub()
    server = await loop.create_server(lambda: HTTPProtocol(stub), "127.0.0.1", port,
                                      ssl=context, backlog=4096)
    stopped = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopped.set)
    async with server:
        await stopped.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    args = parser.parse_args()
    context = None
    if args.tls_cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(args.tls_cert, args.tls_key)
    asyncio.run(serve(args.port, context))


if __name__ == "__main__":
    main()
