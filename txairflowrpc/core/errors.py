"""
Every way a call can fail, as types, and the one place they become faults.

Each error carries the fault code a caller sees and a message written for
the caller: what is wrong and what to do about it.  A message never holds a
traceback, an Airflow internal message, a credential or parser internals;
the code that raises an error is responsible for that, and the types here
take only the pieces they need (a parameter name, an id) to build it.
"""

from __future__ import annotations

from xmlrpc.client import Fault

import attrs

# Interoperability fault codes for protocol errors (xmlrpc-epi spec).
PARSE_ERROR = -32700
UNSUPPORTED_ENCODING = -32701
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603

# The gateway's application codes, modelled on the HTTP statuses.
UNAUTHENTICATED = 401
FORBIDDEN = 403
NOT_FOUND = 404
CONFLICT = 409
RATE_LIMITED = 429
UPSTREAM_ERROR = 502
UPSTREAM_UNAVAILABLE = 503
UPSTREAM_TIMEOUT = 504
AUDIT_UNAVAILABLE = 507

class GatewayError(Exception):
    """
    Base of every error that is reported to a caller as a fault.

    Subclasses define ``code`` and build ``message``.
    """

    code: int = INTERNAL_ERROR

    @property
    def message(self) -> str:  # pragma: no cover - overridden
        return "internal error"

    def __str__(self) -> str:
        return self.message

    def to_fault(self) -> Fault:
        return Fault(self.code, self.message)


@attrs.define(auto_exc=True, str=False)
class ParseError(GatewayError):
    """The request body is not well-formed XML, or uses forbidden XML features."""

    reason: str
    code = PARSE_ERROR

    @property
    def message(self) -> str:
        return f"request is not well-formed XML: {self.reason}"


@attrs.define(auto_exc=True, str=False)
class UnsupportedEncoding(GatewayError):
    """The request names a character encoding the gateway cannot read."""

    charset: str
    code = UNSUPPORTED_ENCODING

    @property
    def message(self) -> str:
        return f"unsupported character encoding {self.charset!r}: send UTF-8"


@attrs.define(auto_exc=True, str=False)
class InvalidRequest(GatewayError):
    """Well-formed XML that is not an XML-RPC method call."""

    reason: str
    code = INVALID_REQUEST

    @property
    def message(self) -> str:
        return f"request is not a valid XML-RPC methodCall: {self.reason}"


@attrs.define(auto_exc=True, str=False)
class MethodNotFound(GatewayError):
    method: str
    code = METHOD_NOT_FOUND

    @property
    def message(self) -> str:
        return (
            f"method {self.method!r} does not exist; "
            "system.listMethods lists the methods"
        )


#: What create_backfill's -32602 says when the range has no date left
#: without a run: the client's backfill command reads it (an earlier try's
#: backfill may have made them all), so it is written once, here.
NOTHING_LEFT_TO_BACKFILL = "each date has a run already"


@attrs.define(auto_exc=True, str=False)
class InvalidParams(GatewayError):
    """
    A parameter is missing, of the wrong type or has a bad value.

    ``method`` may be left empty where it is not known (the Airflow client);
    the dispatcher fills it in.
    """

    reason: str
    method: str = ""
    code = INVALID_PARAMS

    @property
    def message(self) -> str:
        where = f" for {self.method}" if self.method else ""
        return f"invalid params{where}: {self.reason}"


@attrs.define(auto_exc=True, str=False)
class Forbidden(GatewayError):
    method: str
    reason: str
    code = FORBIDDEN

    @property
    def message(self) -> str:
        return f"forbidden: {self.method}: {self.reason}"


@attrs.define(auto_exc=True, str=False)
class AirflowDenied(GatewayError):
    """
    Airflow's own RBAC refused the call (HTTP 403) for the caller's own
    Airflow account (``[principals.NAME] airflow_user``): the gateway
    allowed it, Airflow did not.
    """

    account: str
    what: str
    code = FORBIDDEN

    @property
    def message(self) -> str:
        return (f"forbidden by Airflow: Airflow account {self.account!r} may not do this to "
                f"{self.what} (its role in Airflow decides; the gateway allowed the call)")


@attrs.define(auto_exc=True, str=False)
class NotFound(GatewayError):
    """Airflow has no such object; ``what`` names it, e.g. ``DAG 'etl'``."""

    what: str
    code = NOT_FOUND

    @property
    def message(self) -> str:
        return f"not found: {self.what}"


@attrs.define(auto_exc=True, str=False)
class Conflict(GatewayError):
    reason: str
    code = CONFLICT

    @property
    def message(self) -> str:
        return f"conflict: {self.reason}"


@attrs.define(auto_exc=True, str=False)
class RateLimited(GatewayError):
    """The caller exceeded its rate or its calls in flight."""

    limit: str
    retry_after: float | None = None
    code = RATE_LIMITED

    @property
    def message(self) -> str:
        wait = (f"; retry after {max(0.1, self.retry_after):.1f} s" if self.retry_after
                else "; retry later")
        return f"rate limited: {self.limit} for this principal{wait}"


@attrs.define(auto_exc=True, str=False)
class CallTimeout(GatewayError):
    """A call did not finish within its deadline; its work was cancelled."""

    seconds: float
    code = UPSTREAM_TIMEOUT

    @property
    def message(self) -> str:
        return f"the call did not finish within its deadline of {self.seconds:g} s; retry later"


@attrs.define(auto_exc=True, str=False)
class Cancelled(GatewayError):
    """The call's work was cancelled before it finished."""

    code = UPSTREAM_TIMEOUT

    @property
    def message(self) -> str:
        return "the call was cancelled before it finished; retry it"


@attrs.define(auto_exc=True, str=False)
class UpstreamError(GatewayError):
    """Airflow answered, but not with something the gateway can use."""

    reason: str
    status: int | None = None
    code = UPSTREAM_ERROR

    @property
    def message(self) -> str:
        return f"Airflow error: {self.reason}"


class AnswerTooLarge(UpstreamError):
    """Airflow's answer was larger than the gateway reads."""


@attrs.define(auto_exc=True, str=False)
class UpstreamUnavailable(GatewayError):
    """Airflow could not be reached at all, or asked to be left alone a while."""

    reason: str = "Airflow cannot be reached"
    #: What Airflow's ``Retry-After`` asked for, in seconds, if it did.
    retry_after: float | None = None
    #: The HTTP status Airflow answered it with (429, 503), if it answered.
    status: int | None = None
    #: Whether the request was never sent (the connection refused, no slot
    #: for it in time): Airflow did nothing.
    unsent: bool = False
    code = UPSTREAM_UNAVAILABLE

    @property
    def message(self) -> str:
        wait = "retry later" if self.retry_after is None else (
            f"retry after {self.retry_after:g} s (Airflow's Retry-After)")
        return f"Airflow unavailable: {self.reason}; {wait}"


@attrs.define(auto_exc=True, str=False)
class CircuitOpen(GatewayError):
    """Airflow failed repeatedly; calls fail fast until a probe succeeds."""

    failures: int
    retry_in: float
    code = UPSTREAM_UNAVAILABLE

    @property
    def message(self) -> str:
        return (
            f"Airflow unavailable: it failed {self.failures} times in a row, so calls "
            f"fail fast; the gateway tries again in {self.retry_in:.0f} s"
        )


@attrs.define(auto_exc=True, str=False)
class MayHaveBeenMade(GatewayError):
    """
    A run asked for without a ``dag_run_id`` whose answer was lost: Airflow
    may have made it, and a retry would make another.  ``cause`` is how the
    exchange failed, ``code`` its fault code (502, 503 or 504).
    """

    cause: str
    code: int = UPSTREAM_UNAVAILABLE  # type: ignore[misc]

    @property
    def message(self) -> str:
        return (f"{self.cause}; the run may have been made all the same: look for it "
                "(list_dag_runs) before triggering again, and pass options.dag_run_id to make "
                "a retry safe")


@attrs.define(auto_exc=True, str=False)
class ShuttingDown(GatewayError):
    """The gateway is shutting down and cut the call off at its shutdown deadline."""

    code = UPSTREAM_UNAVAILABLE

    @property
    def message(self) -> str:
        return "the gateway is shutting down; retry the call (with the same dag_run_id)"


@attrs.define(auto_exc=True, str=False)
class UpstreamTimeout(GatewayError):
    seconds: float
    code = UPSTREAM_TIMEOUT

    @property
    def message(self) -> str:
        return f"Airflow did not answer within {self.seconds:g} s; retry later"


@attrs.define(auto_exc=True, str=False)
class AuditUnavailable(GatewayError):
    """The audit log cannot be written, so the gateway serves nothing (fail closed)."""

    code = AUDIT_UNAVAILABLE

    @property
    def message(self) -> str:
        return (
            "the audit log cannot be written, so calls are refused until it can; "
            "retry later (a call already under way may have reached Airflow: "
            "retry it with the same dag_run_id)"
        )


@attrs.define(auto_exc=True, str=False)
class InternalError(GatewayError):
    """A bug or an unexpected condition; details go to the service log only."""

    request_id: str = ""
    code = INTERNAL_ERROR

    @property
    def message(self) -> str:
        ref = f" (request id {self.request_id})" if self.request_id else ""
        return f"internal error in the gateway{ref}"


def as_fault(exc: BaseException, request_id: str = "") -> Fault:
    """
    Map any exception to the fault a caller sees.

    A `GatewayError` keeps its code and message; anything else is an
    internal error whose text is never shown.
    """
    if isinstance(exc, GatewayError):
        return exc.to_fault()
    return InternalError(request_id).to_fault()
