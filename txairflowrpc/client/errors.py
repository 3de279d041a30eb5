"""
Every way a client command can end badly, as types, and its exit status.

The exit status says which class of trouble it was, so that a script can
tell "fix the call" from "fix the credentials" from "try again later":

====  ===============================================================
0     done (for ``trigger --wait``: the run succeeded; ``backfill
      --wait``: every run of it succeeded)
1     the run failed (``trigger --wait``), runs of the backfill did not
      succeed (``backfill --wait``)
2     bad usage: arguments, flags, settings, or a -32601/-32602 fault
3     not let in: HTTP 401, fault 403, or the TLS handshake refused
4     not found or conflict: fault 404 or 409
5     the gateway or Airflow is unavailable or broke: faults 429, 502,
      503, 504, 507, -32603 and the other protocol faults, an HTTP
      error other than 401, no connection, a garbled answer
6     ``trigger --wait`` / ``backfill --wait``: not finished within
      ``--timeout``, which bounds the whole command (`OutOfTime`)
70    a bug in the client itself
130   interrupted (Ctrl-C)
143   terminated (SIGTERM: a CI job cancelled)
====  ===============================================================

Messages never hold a credential: the types take only what they need
(a fault's code and text, an HTTP status, an error's class), never a URL
with user info, a header or a token.
"""

from __future__ import annotations

import re
from typing import Any

import attrs

from ..core import errors as codes

DONE = 0
RUN_FAILED = 1
USAGE = 2
NOT_LET_IN = 3
MISSING = 4
UNAVAILABLE = 5
WAIT_TIMED_OUT = 6
CLIENT_BUG = 70
INTERRUPTED = 130
#: 128 + SIGTERM, as a shell reports a process the signal ended.
TERMINATED = 143

#: Fault codes that are the caller's own doing: what was typed is wrong.
_USAGE_FAULTS = frozenset({codes.METHOD_NOT_FOUND, codes.INVALID_PARAMS})
_NOT_LET_IN_FAULTS = frozenset({codes.UNAUTHENTICATED, codes.FORBIDDEN})
_MISSING_FAULTS = frozenset({codes.NOT_FOUND, codes.CONFLICT})
#: Faults worth the same call again a little later.
_TRANSIENT_FAULTS = frozenset({
    codes.RATE_LIMITED, codes.UPSTREAM_UNAVAILABLE, codes.UPSTREAM_TIMEOUT,
    codes.AUDIT_UNAVAILABLE,
})
#: HTTP statuses worth a retry (a proxy or load balancer in front, or the
#: gateway's own 503 with Retry-After when the bodies in flight are many).
_TRANSIENT_HTTP = frozenset({429, 502, 503, 504})


#: How a 429 fault says when to come back (`txairflowrpc.core.errors.RateLimited`).
_RETRY_AFTER = re.compile(r"; retry after ([0-9]{1,6}(?:\.[0-9]{1,6})?) s\Z", re.ASCII)
#: The longest pause a gateway's "retry after" may ask for (one beyond is cut
#: to it): a command without a deadline sleeps at most this between tries.
MAX_RETRY_AFTER = 60.0
_SECONDS = re.compile(r"[0-9]{1,9}\Z", re.ASCII)


def retry_after_header(value: str | None) -> float | None:
    """
    A ``Retry-After`` header in seconds (its date form is not read), at most
    the cap; None for anything else (found by review: ``str.isdigit`` took
    '²' for a digit, and the client crashed on it).
    """
    if value is None or not _SECONDS.match(value.strip()):
        return None
    return min(float(value.strip()), MAX_RETRY_AFTER)


class ClientError(Exception):
    """
    Base of every error a command reports; ``exit_status`` is what the
    process exits with, ``message`` the line it prints on stderr.
    """

    exit_status: int = UNAVAILABLE
    #: Whether the same call may succeed if tried again a little later.
    transient: bool = False
    #: Seconds the gateway asked to wait before the next try (None: it did not say).
    retry_after: float | None = None

    @property
    def message(self) -> str:  # pragma: no cover - overridden
        return "error"

    def __str__(self) -> str:
        return self.message


@attrs.define(auto_exc=True, str=False)
class UsageError(ClientError):
    """The command line, a flag or a setting is wrong; nothing was sent."""

    reason: str
    exit_status = USAGE

    @property
    def message(self) -> str:
        return self.reason


@attrs.define(auto_exc=True, str=False)
class FaultReply(ClientError):
    """The gateway answered the call with an XML-RPC fault."""

    method: str
    code: Any
    text: str
    request_id: str | None = None

    @property
    def exit_status(self) -> int:  # type: ignore[override]
        code = _int_or_none(self.code)
        if code in _USAGE_FAULTS:
            return USAGE
        if code in _NOT_LET_IN_FAULTS:
            return NOT_LET_IN
        if code in _MISSING_FAULTS:
            return MISSING
        return UNAVAILABLE

    @property
    def transient(self) -> bool:  # type: ignore[override]
        return _int_or_none(self.code) in _TRANSIENT_FAULTS

    @property
    def retry_after(self) -> float | None:  # type: ignore[override]
        """What a 429 fault's text asks for: the gateway writes ``retry after N s``."""
        if _int_or_none(self.code) != codes.RATE_LIMITED:
            return None
        found = _RETRY_AFTER.search(self.text)
        return min(float(found.group(1)), MAX_RETRY_AFTER) if found else None

    @property
    def message(self) -> str:
        ref = f" (request id {self.request_id})" if self.request_id else ""
        return f"{self.method}: fault {self.code}: {self.text}{ref}"


@attrs.define(auto_exc=True, str=False)
class HTTPRefused(ClientError):
    """The gateway (or something in front of it) answered with an HTTP error."""

    method: str
    status: int
    reason: str
    request_id: str | None = None
    #: Added to the message: e.g. that no credential was given at all.
    hint: str = ""
    #: Its ``Retry-After`` in seconds (the date form is not read), at most `MAX_RETRY_AFTER`.
    retry_after: float | None = None

    @property
    def exit_status(self) -> int:  # type: ignore[override]
        return NOT_LET_IN if self.status == 401 else UNAVAILABLE

    @property
    def transient(self) -> bool:  # type: ignore[override]
        return self.status in _TRANSIENT_HTTP

    @property
    def message(self) -> str:
        ref = f" (request id {self.request_id})" if self.request_id else ""
        hint = f"; {self.hint}" if self.hint else ""
        return f"{self.method}: HTTP {self.status} {self.reason}{ref}{hint}"


@attrs.define(auto_exc=True, str=False)
class HandshakeRefused(ClientError):
    """
    The TLS handshake failed in a way that is about trust or identity:
    the gateway's certificate is not trusted (``trusted`` false, a setting
    to fix: usage), or the gateway refused ours (not let in).
    """

    method: str
    reason: str
    ours_refused: bool

    @property
    def exit_status(self) -> int:  # type: ignore[override]
        return NOT_LET_IN if self.ours_refused else USAGE

    @property
    def message(self) -> str:
        return f"{self.method}: TLS: {self.reason}"


@attrs.define(auto_exc=True, str=False)
class Unreachable(ClientError):
    """No answer: refused, reset, timed out, name not resolved."""

    method: str
    reason: str
    transient = True

    @property
    def message(self) -> str:
        return f"{self.method}: gateway unreachable: {self.reason}"


@attrs.define(auto_exc=True, str=False)
class BadAnswer(ClientError):
    """An answer that is not an XML-RPC response, or not of the shape the method's is."""

    method: str
    reason: str

    @property
    def message(self) -> str:
        return f"{self.method}: the gateway's answer cannot be used: {self.reason}"


@attrs.define(auto_exc=True, str=False)
class RunFailed(ClientError):
    """The run ended in a state other than success."""

    dag_id: str
    dag_run_id: str
    state: str
    exit_status = RUN_FAILED

    @property
    def message(self) -> str:
        return f"run {self.dag_run_id!r} of DAG {self.dag_id!r} ended {self.state}"


@attrs.define(auto_exc=True, str=False)
class WaitTimedOut(ClientError):
    """The run had not finished when ``--timeout`` passed; it goes on."""

    dag_id: str
    dag_run_id: str
    state: str
    seconds: float
    #: The run as last seen, if it was seen at all.
    run: Any = attrs.field(default=None, eq=False, repr=False)
    #: Why the last look failed, when the deadline came during an outage.
    cause: str | None = None
    exit_status = WAIT_TIMED_OUT

    @property
    def message(self) -> str:
        return (f"run {self.dag_run_id!r} of DAG {self.dag_id!r} is still {self.state} after "
                f"{self.seconds:g} s; it goes on in Airflow: run the same command again to "
                f"wait for it (the run id makes that safe)" + _last_try(self.cause))


@attrs.define(auto_exc=True, str=False)
class BackfillFailed(ClientError):
    """Runs of the backfill failed, or it completed before they ran (cancelled)."""

    dag_id: str
    backfill_id: Any
    unsuccessful: int
    runs: int
    exit_status = RUN_FAILED

    @property
    def message(self) -> str:
        if not self.runs:
            return (f"backfill {self.backfill_id} of DAG {self.dag_id!r} completed, but none "
                    f"of its runs was found: their outcome is unknown")
        return (f"backfill {self.backfill_id} of DAG {self.dag_id!r} completed, but "
                f"{self.unsuccessful} of its {self.runs} runs did not succeed")


@attrs.define(auto_exc=True, str=False)
class BackfillTimedOut(ClientError):
    """The backfill had not completed when ``--timeout`` passed; it goes on."""

    dag_id: str
    backfill_id: Any
    state: str
    seconds: float
    #: The backfill as last seen.
    backfill: Any = attrs.field(default=None, eq=False, repr=False)
    #: Why the last look failed, when the deadline came during an outage.
    cause: str | None = None
    exit_status = WAIT_TIMED_OUT

    @property
    def message(self) -> str:
        return (f"backfill {self.backfill_id} of DAG {self.dag_id!r}: {self.state} after "
                f"{self.seconds:g} s; it goes on in Airflow: run the same command again to "
                f"follow it (the same range and conf find it)" + _last_try(self.cause))


@attrs.define(auto_exc=True, str=False)
class OutOfTime(ClientError):
    """
    The command's deadline (``--timeout``, which bounds the whole command)
    came before ``method`` could be called, or called again after
    ``cause``, the transient failure it met.  A timeout (exit 6), not an
    outage: what was asked of Airflow may exist and go on.
    """

    method: str
    cause: ClientError | None = None
    exit_status = WAIT_TIMED_OUT

    @property
    def message(self) -> str:
        if self.cause is None:
            return f"{self.method}: --timeout ran out before it could be called"
        again = ("it could be tried again" if getattr(self.cause, "method", None) == self.method
                 else f"{self.method} could be called")
        return f"{self.cause.message}; --timeout ran out before {again}"


class Terminated(BaseException):
    """
    SIGTERM came (a CI job cancelled: GitLab's cancel, a Jenkins abort).
    Raised by the command's signal handler in the main thread and, like
    KeyboardInterrupt, no `Exception`: no ``except Exception`` on the way
    takes it for an error of a call.  The command ends as after Ctrl-C,
    with `TERMINATED`.
    """


def _last_try(cause: str | None) -> str:
    return f" (the last look failed: {cause})" if cause else ""


def _int_or_none(value: Any) -> int | None:
    # Some servers send fault codes as strings; the gateway sends ints.
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
