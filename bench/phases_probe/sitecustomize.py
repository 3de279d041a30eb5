"""
The probe of ``bench/phases.py``, loaded by the gateway's Python through
``PYTHONPATH`` (never by the gateway's own code): it wraps the points a
call passes (its request read, its Airflow exchange, its audit record
handed to the audit thread, written and fsynced, handed back, its answer
sent) so that each marks the time, and on SIGUSR2 writes the marks to
``$PHASES_OUT``, one ``<ns> <event>`` line each.
"""

import os
import signal
import time

_marks: list[tuple[int, str]] = []
_now = time.perf_counter_ns
_LIMIT = 400_000


def mark(event: str) -> None:
    _marks.append((_now(), event))
    if len(_marks) > _LIMIT:
        del _marks[: _LIMIT // 2]


def _dump(signum: int, frame: object) -> None:
    with open(os.environ["PHASES_OUT"], "w") as out:
        out.writelines(f"{t} {event}\n" for t, event in _marks)


def _wrap(owner: type, name: str, before: str, after: str | None = None) -> None:
    original = getattr(owner, name)

    def wrapped(self, *args, **kwargs):
        mark(before)
        result = original(self, *args, **kwargs)
        if after is not None:
            mark(after)
        return result

    setattr(owner, name, wrapped)


def _wrap_deferred(owner: type, name: str, before: str, after: str) -> None:
    original = getattr(owner, name)

    def wrapped(self, *args, **kwargs):
        mark(before)
        d = original(self, *args, **kwargs)
        d.addBoth(lambda result: (mark(after), result)[1])
        return d

    setattr(owner, name, wrapped)


def _wrap_fd(owner: type, name: str, prefix: str) -> None:
    original = getattr(owner, name)

    def wrapped(self, *args):
        mark(f"{prefix}:{self.fileno()}")
        return original(self, *args)

    setattr(owner, name, wrapped)


def _install() -> None:
    from twisted.internet import tcp

    from txairflowrpc.audit import chain, log
    from txairflowrpc.upstream import transport

    _wrap_fd(tcp.Connection, "doRead", "read")
    _wrap_fd(tcp.Connection, "writeSomeData", "write")
    _wrap_deferred(transport.Transport, "exchange", "exchange", "exchanged")
    _wrap_deferred(log.AuditLog, "append", "append", "appended")
    _wrap(chain.ChainFile, "append", "thread_start", "thread_end")
    _wrap(chain.ChainFile, "_write", "fsync_start", "fsync_end")
    signal.signal(signal.SIGUSR2, _dump)


if os.environ.get("PHASES_OUT"):
    _install()
