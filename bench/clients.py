"""
Python clients for what wrk cannot do: many idle mutual-TLS connections,
and many long calls held open at once (``wait_dag_run``).

Both are asyncio, one process, bounded in count and time.
"""

from __future__ import annotations

import asyncio
import ssl
import time
import xmlrpc.client
from typing import Any

import attrs


def xmlrpc_body(method: str, *params: Any) -> str:
    """An XML-RPC request on one line (wrk's request files need that)."""
    return xmlrpc.client.dumps(params, method).replace("\n", "")


@attrs.frozen
class Idle:
    opened: int
    failed: int
    still_open: int


async def hold_idle(host: str, port: int, context: ssl.SSLContext, count: int,
                    hold: float, during=None, parallel: int = 50) -> Idle:
    """
    Open ``count`` TLS connections (``parallel`` handshakes at a time), keep
    them idle for ``hold`` seconds, calling ``during()`` (blocking, in a
    thread) while they are held, then see how many the server kept open.
    """
    gate = asyncio.Semaphore(parallel)
    connections: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    failed = 0

    async def one() -> None:
        nonlocal failed
        async with gate:
            try:
                connections.append(await asyncio.wait_for(
                    asyncio.open_connection(host, port, ssl=context,
                                            server_hostname="localhost"), 60))
            except (OSError, asyncio.TimeoutError, ssl.SSLError):
                failed += 1

    try:
        await asyncio.gather(*(one() for _ in range(count)))
        if during is not None:
            await asyncio.gather(asyncio.sleep(hold), asyncio.to_thread(during))
        else:
            await asyncio.sleep(hold)
        # A connection the server closed has seen EOF by now.
        still = sum(1 for r, w in connections if not r.at_eof() and not w.is_closing())
        return Idle(len(connections), failed, still)
    finally:
        for _, writer in connections:
            writer.close()
        await asyncio.gather(*(w.wait_closed() for _, w in connections),
                             return_exceptions=True)


def _dechunk(data: bytes) -> bytes:
    out, position = [], 0
    while True:
        end = data.index(b"\r\n", position)
        size = int(data[position:end].split(b";")[0], 16)
        if size == 0:
            return b"".join(out)
        out.append(data[end + 2:end + 2 + size])
        position = end + 2 + size + 2


@attrs.frozen
class Answer:
    started: float  # time.time()
    ended: float
    result: Any  # the decoded result, or the Fault / exception


async def call(host: str, port: int, context: ssl.SSLContext, body: bytes,
               headers: dict[str, str], timeout: float,
               connecting: asyncio.Semaphore | None = None) -> Answer:
    """
    One XML-RPC call on its own connection; never raises.  ``connecting``,
    if given, is held from connecting until the request is sent, to bound
    how many TLS handshakes run at once.
    """
    started = time.time()
    try:
        if connecting is not None:
            await connecting.acquire()
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(
                host, port, ssl=context, server_hostname="localhost"), timeout)
            head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            writer.write((f"POST /RPC2 HTTP/1.1\r\nHost: localhost\r\n"
                          f"Content-Type: text/xml\r\nContent-Length: {len(body)}\r\n"
                          f"{head}Connection: close\r\n\r\n").encode() + body)
            await writer.drain()
        finally:
            if connecting is not None:
                connecting.release()
        try:
            raw = await asyncio.wait_for(reader.read(), timeout)
        finally:
            writer.close()
        status_line, _, rest = raw.partition(b"\r\n")
        if b" 200 " not in status_line + b" ":
            raise RuntimeError(status_line.decode(errors="replace"))
        head, _, payload = rest.partition(b"\r\n\r\n")
        if b"transfer-encoding: chunked" in head.lower():
            payload = _dechunk(payload)
        result = xmlrpc.client.loads(payload)[0][0]
    except Exception as e:  # a Fault, a socket error, a timeout: all answers here
        result = e
    return Answer(started, time.time(), result)


async def many_calls(host: str, port: int, context: ssl.SSLContext,
                     bodies: list[bytes], headers: dict[str, str], timeout: float,
                     parallel_connects: int = 100) -> list[Answer]:
    """All ``bodies`` as concurrent calls, at most ``parallel_connects`` connecting at once."""
    connecting = asyncio.Semaphore(parallel_connects)
    return await asyncio.gather(*(call(host, port, context, b, headers, timeout, connecting)
                                  for b in bodies))
