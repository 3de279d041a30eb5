"""
The gateway's only way to Airflow: a client for Airflow 3's REST API (v2).

`AirflowClient` speaks to Airflow through an `IAgent` (twisted.web's
`Agent` over a persistent connection pool, see `.transport`), with an
explicit reactor and one deadline for every exchange.  It
logs in with ``POST /auth/token``, keeps the JWT until shortly before it
expires, fetches a new one once when Airflow answers 401, and shares one
login among all calls that need it at the same moment.

Identical reads share one request: a GET that arrives while the same GET
(path and query; one client is one Airflow account) is in flight waits for
its answer, and, with ``read_cache_seconds``, a successful answer serves the
same GET for that long.  Authorisation and audit stay per call: they happen
before the client is asked.

Reads are retried with a jittered back-off; a circuit breaker makes calls
fail fast while Airflow is down and lets a probe through to notice that it
is back; a cap on requests in flight protects Airflow from a burst.

Its methods take validated ids and return plain dicts in the gateway's own
shapes (`txairflowrpc.upstream.shapes`), so that the XML-RPC layer never
sees an Airflow response as such.  Every failure is one of the
`txairflowrpc.core.errors` types; Airflow's own error texts never leave here.
Every returned Deferred can be cancelled, which abandons the HTTP request
(a shared read's, once every caller sharing it has given up).
"""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Callable
from pathlib import Path
from random import Random
from typing import Any

import attrs
from twisted.internet.defer import CancelledError, Deferred, DeferredSemaphore
from twisted.internet.error import ConnectError, DNSLookupError
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseFailed, ResponseNeverReceived
from twisted.web.iweb import IAgent

from ..core import calltrace, errors, ids
from ..core.calltrace import CallTrace, note_airflow_status
from ..core.encoding import b64url_decode
from ..core.meters import UNMETERED, UpstreamMeter
from ..core.singleflight import SingleFlight
from .breaker import CircuitBreaker
from .shapes import (
    format_log_content,
    items,
    shape_backfill,
    shape_dag,
    shape_run,
    shape_task_instance,
)
from .transport import Reply, Transport, tls_refusal

_NOTHING = object()
_log = Logger()

#: How many pages of a task log are read at most.
MAX_LOG_PAGES = 50
#: The most of a task's log one answer holds: its last characters (where a
#: failure is), the rest left out with a line saying so.  Each page is
#: capped by MAX_ANSWER_BYTES; without this, 50 of them were joined and
#: escaped on the reactor.
MAX_LOG_CHARACTERS = 16 * 1024 * 1024
#: First retry waits up to this (jittered), doubling each time.
RETRY_BASE_SECONDS = 0.25
#: The answers that say Airflow (or the proxy in front of it) cannot serve
#: now, rather than that it failed this one request: they are retried and
#: they count toward the circuit breaker.  A 500 is Airflow's own answer to
#: one request -- one caller's odd query can provoke it again and again --
#: so it must not open the circuit for every caller.
UNAVAILABLE_STATUSES = frozenset({502, 503, 504})
#: A reason TLS with Airflow failed for is logged at most once in this many
#: seconds, and at most TLS_LOG_LINES such lines in all.
TLS_LOG_SECONDS = 60.0
TLS_LOG_LINES = 5
#: Task instances asked for per page (Airflow's own cap), and the most one
#: list_task_instances gathers (50 pages).
TASK_INSTANCE_PAGE = 100
MAX_TASK_INSTANCES = 5000
#: Most answers the read cache holds, and most bytes of them (as Airflow
#: sent them; the oldest go first).  An answer above a quarter of the bytes
#: is not kept: a few large reads do not push out all the others.
READ_CACHE_ENTRIES = 4096
READ_CACHE_BYTES = 64 * 1024 * 1024


#: What a change request can fail with only when it changed nothing: Airflow
#: refused it (400/422, 403, 404, 409) or it was never sent (the circuit
#: open) -- if it was not retried: a retry's earlier attempt may have changed
#: Airflow before its answer was lost (a retried trigger meets its own run's
#: 409), so a retried request counts as a change whatever it ends with.
UNCHANGED = (errors.InvalidParams, errors.AirflowDenied, errors.NotFound, errors.Conflict,
             errors.CircuitOpen)


class Changes:
    """
    How many changes (any request but a GET, but for those `UNCHANGED`
    and dry runs) to one Airflow have ended, through any of the gateway's
    accounts.  A read started before the
    latest of them ended may hold what Airflow had before it: a caller that
    asks after it is not given that read's answer, shared or cached.
    """

    def __init__(self) -> None:
        self.ended = 0


#: What a read's caller makes of Airflow's JSON body (`shape_run`, say): a
#: function of the body alone, whose result nobody changes afterwards.
Shape = Callable[[Any], Any]


@attrs.define
class _Shapes:
    """
    The shapes made of one shared answer, each made once: the callers that
    share a read with the same shape get the same value, not a copy each
    (nothing downstream changes it), and the gate writes it out once.
    A shape that fails is not kept: each caller meets the failure itself.
    """

    made: dict[Shape, tuple[Any, Any]] = attrs.Factory(dict)

    def of(self, body: Any, shape: Shape | None) -> Any:
        if shape is None:
            return body
        made = self.made.get(shape)
        if made is None or made[0] is not body:  # (a read is one body: a guard)
            made = self.made[shape] = (body, shape(body))
        return made[1]


@attrs.define
class _Read:
    """One GET in flight, shared by every caller that asks for it meanwhile."""

    #: `Changes.ended` when it started: only callers asking at that count share it.
    since: int
    flight: SingleFlight[Any] = attrs.Factory(lambda: SingleFlight(abandon=True))
    #: What the shared request learned (Airflow's status), for each caller's record.
    trace: CallTrace = attrs.Factory(CallTrace)
    shapes: _Shapes = attrs.Factory(_Shapes)


@attrs.frozen
class _Cached:
    """A GET's answer kept by the read cache."""

    until: float
    #: Airflow's status, for each caller's record.
    status: int | None
    answer: Any
    #: `Changes.ended` when the GET began: it serves only callers asking at that count.
    since: int
    #: The answer's size in bytes, as Airflow sent it.
    size: int
    #: Its shapes, carried on from the read that got it.
    shapes: _Shapes = attrs.Factory(_Shapes)


def _jwt_lifetime(token: str) -> float | None:
    """Seconds between a JWT's ``iat`` and ``exp``, if it says."""
    try:
        claims = json.loads(b64url_decode(token.split(".")[1]))
        return float(claims["exp"]) - float(claims["iat"])
    except (IndexError, ValueError, KeyError, TypeError):
        return None


def _upstream_timeout(result: Any, timeout: float) -> Failure:
    return Failure(errors.UpstreamTimeout(timeout))


def _invalid_jwt(body: Any) -> bool:
    """Airflow's 403 for a token it cannot verify (e.g. signed before a restart)."""
    return isinstance(body, dict) and body.get("detail") == "Invalid JWT token"


def _rejected_fields(body: Any) -> list[str]:
    """The field names in a 422 ``detail`` list, never their messages."""
    detail = body.get("detail") if isinstance(body, dict) else None
    names = []
    if isinstance(detail, list):
        for item in detail:
            loc = item.get("loc") if isinstance(item, dict) else None
            if isinstance(loc, list) and loc:
                name = str(loc[-1])
                if name.replace("_", "").isalnum() and len(name) < 64:
                    names.append(name)
    return sorted(set(names))


#: What a 400 or 422 means for one call: (words, meaning) pairs.  Airflow
#: gives some refusals as one sentence in ``detail``; the first pair whose
#: words that sentence holds gives the caller the gateway's own meaning,
#: never Airflow's text.
Rejections = tuple[tuple[str, str], ...]


def _rejection(body: Any, rejected: Rejections) -> str | None:
    detail = body.get("detail") if isinstance(body, dict) else None
    if not isinstance(detail, str):
        return None
    return next((meaning for words, meaning in rejected if words in detail), None)


@attrs.frozen
class _Answer:
    status: int
    body: Any
    #: The body's size in bytes, as Airflow sent it.
    size: int = 0
    #: What its ``Retry-After`` asks to wait, in seconds (a 429 or 503).
    retry_after: float | None = None


def _answer(reply: Reply) -> _Answer:
    """Airflow's reply with its JSON body decoded (None for an empty or non-JSON error body)."""
    if not reply.body:
        return _Answer(reply.status, None, retry_after=reply.retry_after)
    try:
        return _Answer(reply.status, json.loads(reply.body), len(reply.body), reply.retry_after)
    except ValueError:
        if 200 <= reply.status < 300:
            raise errors.UpstreamError(
                "Airflow answered with a body that is not JSON", reply.status
            ) from None
        return _Answer(reply.status, None, retry_after=reply.retry_after)


class TLSFailures:
    """
    Says in the service log why TLS with Airflow failed (OpenSSL's reason,
    and what its certificate is verified against): each reason once in
    `TLS_LOG_SECONDS`, and at most `TLS_LOG_LINES` lines in that time
    whatever the reasons, so that neither many calls nor a server that
    varies its alerts floods the log.

    :param ca_file: ``airflow.ca_file``, if set.
    """

    def __init__(self, clock: IReactorTime, base_url: str, ca_file: Path | None = None) -> None:
        self._clock = clock
        self._base_url = base_url
        self._verified = (f"against the CAs of airflow.ca_file ({ca_file})" if ca_file
                          else "against the system's CAs (airflow.ca_file names others)")
        self._logged: dict[str, float] = {}

    def failed(self, reason: str) -> None:
        now = self._clock.seconds()
        self._logged = {r: t for r, t in self._logged.items() if t + TLS_LOG_SECONDS > now}
        if reason in self._logged or len(self._logged) >= TLS_LOG_LINES:
            return
        self._logged[reason] = now
        _log.error("TLS with Airflow ({url}) failed: {reason}; its certificate is verified "
                   "{verified}", url=self._base_url, reason=reason, verified=self._verified)


#: A request that waited for one of the ``airflow.max_in_flight`` slots is
#: not sent with less than this left of its call's deadline.
LEAST_SECONDS_LEFT = 1.0


def _time_left(clock: IReactorTime) -> float:
    """What is left of the current call's deadline (`calltrace`), in seconds; inf if none."""
    trace = calltrace.current.get()
    if trace is None or trace.deadline is None:
        return math.inf
    return trace.deadline - clock.seconds()


class AirflowClient:
    """
    Airflow 3 REST API v2, as the gateway needs it.

    :param agent: the `IAgent` that reaches Airflow (a pooled `Agent`;
        treq's in-memory `RequestTraversalAgent` in tests).
    :param clock: what runs deadlines and back-offs (the reactor).
    :param timeout: seconds for each HTTP exchange, body included.
    :param meter: told of every API exchange's outcome and duration (the
        readiness probe's are not API calls and are not counted).
    :param read_cache_seconds: how long a successful GET's answer serves
        the same GET again (0: only reads in flight are shared).
    :param own_account: whether ``username`` is the gateway's own (service)
        account; if not, it is a caller's, and Airflow's 403 for it is that
        caller's refusal by Airflow (`errors.AirflowDenied`), not a fault
        of the gateway's setup.
    :param slots: the cap on requests in flight to Airflow, when clients of
        several accounts share one (else a cap of ``max_in_flight`` of its own).
    :param tls_failures: where a failed TLS handshake with Airflow is told,
        shared by the clients of several accounts (else one of its own).
    """

    def __init__(
        self,
        *,
        agent: IAgent,
        clock: IReactorTime,
        base_url: str,
        username: str,
        password: str,
        timeout: float,
        retries: int = 2,
        read_cache_seconds: float = 0.0,
        breaker: CircuitBreaker | None = None,
        max_in_flight: int = 64,
        random: Random | None = None,
        meter: UpstreamMeter = UNMETERED,
        own_account: bool = True,
        slots: DeferredSemaphore | None = None,
        changes: Changes | None = None,
        tls_failures: TLSFailures | None = None,
    ) -> None:
        self._meter = meter
        self._changes = changes if changes is not None else Changes()
        self._transport = Transport(agent, base_url)
        self.retries = retries
        self._breaker = breaker
        self._slots = slots if slots is not None else DeferredSemaphore(max_in_flight)
        #: The Airflow account this client calls as (not a secret; the password is).
        self.account = username
        self.own_account = own_account
        self._random = random or Random()
        self._clock = clock
        self._base = base_url.rstrip("/")
        self._credentials = {"username": username, "password": password}
        self.timeout = timeout
        self._jwt: str | None = None
        self._jwt_renew_at = 0.0
        self._login: SingleFlight[str] = SingleFlight()
        self._bearer_for: str | None = None
        self._bearer_value = b""
        #: How many times the client logged in; for tests and metrics.
        self.logins = 0
        self.read_cache_seconds = read_cache_seconds
        self._reads: dict[tuple[Any, ...], _Read] = {}
        self._cache: dict[tuple[Any, ...], _Cached] = {}
        self._cache_bytes = 0
        #: GETs asked for, and how many of them went to Airflow (the others
        #: shared a request in flight or a cached answer); for metrics.
        self.reads = 0
        self.reads_upstream = 0
        self._tls_failures = tls_failures or TLSFailures(clock, self._base)

    def __repr__(self) -> str:
        return f"<AirflowClient account={self.account!r}>"

    # -- transport -------------------------------------------------------

    def _exchange(
        self, method: str, path: str, token: str | None, body: Any, params: Any, accept: str,
    ) -> Deferred[_Answer]:
        d = self._transport.exchange(
            method.encode("ascii"), path, accept=accept.encode("ascii"),
            authorization=None if token is None else self._bearer(token),
            body=None if body is _NOTHING else json.dumps(body).encode("utf-8"),
            query=params or None,
        )
        return d.addCallback(_answer)

    def _bearer(self, token: str) -> bytes:
        """The Authorization value of a token, built once per token."""
        if self._bearer_for != token:
            self._bearer_for, self._bearer_value = token, f"Bearer {token}".encode("ascii")
        return self._bearer_value

    async def _send(
        self, method: str, path: str, *, token: str | None, body: Any = _NOTHING,
        params: Any = None, accept: str = "application/json",
    ) -> _Answer:
        """
        One HTTP exchange, through the circuit breaker and the cap on
        requests in flight to Airflow.
        """
        waits = self._slots.tokens == 0
        if waits and len(self._slots.waiting) >= 10 * self._slots.limit:
            raise errors.UpstreamUnavailable("too many requests are waiting for Airflow",
                                             unsent=True)
        if self._breaker is not None:
            self._breaker.before()
        await self._slots.acquire()
        # The login is shared by every caller that needs it: no one caller's
        # deadline decides it (found by review: a caller with 50 s left got
        # the 503 of the one with 0.5 s that had started the login).
        if waits and token is not None and _time_left(self._clock) < LEAST_SECONDS_LEFT:
            # Its turn came as its call's deadline is about to cut it off:
            # sent now, the request would be abandoned on its way, work a
            # slow Airflow does for no one (found by review: at the deadline
            # of 500 queued calls, each freed slot went to a caller with
            # milliseconds left, 450 GETs nobody waited for).  The slot goes
            # to the next waiter on the reactor's next turn: handed on at
            # once, many such waiters each resumed the next inside this one's
            # stack, and past Python's recursion limit some never resumed.
            self._clock.callLater(0, self._slots.release)
            raise errors.UpstreamUnavailable(
                "Airflow is busy: this call's time ran out waiting for its turn", unsent=True)
        try:
            answer = await self._metered(method, path, token, body, params, accept)
        except (errors.UpstreamUnavailable, errors.UpstreamTimeout):
            if self._breaker is not None:
                self._breaker.failure()
            raise
        finally:
            self._slots.release()
        if self._breaker is not None:
            if answer.status in UNAVAILABLE_STATUSES:
                self._breaker.failure()
            else:
                self._breaker.success()
        return answer

    async def _exchange_with_deadline(
        self, method: str, path: str, token: str | None, body: Any, params: Any, accept: str,
        timeout: float | None = None,
    ) -> _Answer:
        # One deadline covers connecting, the request, and reading the body.
        d = self._exchange(method, path, token, body, params, accept)
        # When the deadline passes, whatever the cancelled request fails with
        # (treq reports ResponseNeverReceived) becomes an upstream timeout.
        d.addTimeout(self.timeout if timeout is None else timeout, self._clock,
                     onTimeoutCancel=_upstream_timeout)
        try:
            return await d
        except errors.GatewayError:
            raise
        except CancelledError:
            raise
        except (ConnectError, DNSLookupError):
            raise errors.UpstreamUnavailable("Airflow refused the connection",
                                             unsent=True) from None
        except (ResponseFailed, ResponseNeverReceived) as e:
            if any(r.check(CancelledError) for r in e.reasons):
                raise CancelledError() from None  # our caller gave up: not Airflow's fault
            refused = tls_refusal(e.reasons)
            if refused is not None:
                self._tls_failures.failed(refused)
                raise errors.UpstreamUnavailable(
                    "TLS with Airflow failed (see the gateway's log)") from None
            raise errors.UpstreamUnavailable("the connection to Airflow broke") from None
        except Exception:
            raise errors.UpstreamError("the exchange with Airflow failed") from None

    async def _metered(
        self, method: str, path: str, token: str | None, body: Any, params: Any, accept: str
    ) -> _Answer:
        """`_exchange_with_deadline`, its outcome and duration told to the meter."""
        started = self._clock.seconds()
        outcome: int | str = "error"
        try:
            answer = await self._exchange_with_deadline(method, path, token, body, params, accept)
            outcome = answer.status
            return answer
        except errors.UpstreamTimeout:
            outcome = "timeout"
            raise
        except errors.UpstreamUnavailable:
            outcome = "unreachable"
            raise
        except CancelledError:
            outcome = "cancelled"
            raise
        finally:
            self._meter.upstream_answered(method, outcome, self._clock.seconds() - started)

    def reachable(self, timeout: float | None = None) -> Deferred[bool]:
        """
        Whether Airflow's unauthenticated health endpoint answers 200, and
        does not say its metadata database is unhealthy (Airflow 3 answers
        200 whatever it finds, and says so in the body), within ``timeout``
        (at most ``airflow.timeout_seconds``): for the readiness probe and
        the circuit breaker.  Bypasses the breaker so that it tells the
        truth; never fails.
        """
        limit = self.timeout if timeout is None else min(timeout, self.timeout)

        async def probe() -> bool:
            try:
                answer = await self._exchange_with_deadline(
                    "GET", "/api/v2/monitor/health", None, _NOTHING, None, "application/json",
                    timeout=limit,
                )
            except (errors.GatewayError, CancelledError):
                return False
            database = answer.body.get("metadatabase") if isinstance(answer.body, dict) else None
            return answer.status == 200 and not (
                isinstance(database, dict) and database.get("status") == "unhealthy")

        return Deferred.fromCoroutine(probe())

    # -- login -----------------------------------------------------------

    async def _token(self) -> str:
        if self._jwt is not None and self._clock.seconds() < self._jwt_renew_at:
            return self._jwt
        return await self._login.run(lambda: Deferred.fromCoroutine(self._log_in()))

    async def _log_in(self) -> str:
        self.logins += 1
        answer = await self._send(
            "POST", "/auth/token", token=None, body=self._credentials
        )
        token = answer.body.get("access_token") if isinstance(answer.body, dict) else None
        if answer.status in (401, 403):
            whose = ("the gateway's own credentials" if self.own_account
                     else f"the credentials of Airflow account {self.account!r}")
            raise errors.UpstreamError(f"Airflow rejected {whose}", answer.status)
        if answer.status not in (200, 201) or not isinstance(token, str):
            raise errors.UpstreamError(
                f"Airflow's login answered HTTP {answer.status}", answer.status
            )
        lifetime = _jwt_lifetime(token) or 300.0
        # Renew well before expiry: at 90% of the lifetime, or a minute before.
        self._jwt_renew_at = self._clock.seconds() + max(
            0.0, min(lifetime * 0.9, lifetime - 60.0)
        )
        self._jwt = token
        return token

    # -- one API call ----------------------------------------------------

    async def _api(
        self, method: str, path: str, *, what: str, body: Any = _NOTHING,
        params: Any = None, conflict: str | None = None, retry: bool | None = None,
        rejected: Rejections = (), dry_run: bool = False, shape: Shape | None = None,
        attempts: list[None] | None = None,
    ) -> Any:
        """
        Call ``/api/v2`` + ``path`` and return the JSON body of a 2xx answer,
        or ``shape`` of it; a GET shares the answer of the same GET in
        flight or cached, and its shape with the callers of the same shape.
        ``dry_run``: a request other than a GET that changes nothing.
        ``attempts`` (a change only) gets an item each time it is sent.
        """
        if method != "GET":
            # Airflow may have changed, unless it refused the request or the
            # request is a dry run: counting those too let any caller with one
            # write scope end every read's sharing and cache at will.
            changed = not (dry_run or (isinstance(body, dict) and body.get("dry_run") is True))
            attempts = [] if attempts is None else attempts
            try:
                answer = await self._api_retrying(method, path, what=what, body=body,
                                                  params=params, conflict=conflict, retry=retry,
                                                  attempts=attempts, rejected=rejected)
            except UNCHANGED:
                # Only if it was asked once: a retried one's earlier attempt
                # may have changed Airflow before its answer was lost.
                if len(attempts) <= 1:
                    changed = False
                raise
            finally:
                if changed:
                    self._changes.ended += 1
            return answer if shape is None else shape(answer)
        return await self._read(path, what, params, shape)

    async def _read(self, path: str, what: str, params: Any, shape: Shape | None = None) -> Any:
        """
        A GET, shared: callers that ask while it is in flight get its answer
        (or its error), and a successful answer serves for
        ``read_cache_seconds``; but not to a caller that asks after a change
        to Airflow ended that had not when the GET began (`Changes`), so that
        a caller reads its own writes.  The answer is shared, not copied: nothing
        downstream changes it; and so is its ``shape``, made once per answer
        (`_Shapes`).  Each caller's record still gets Airflow's status.  A
        caller that gives up leaves the others waiting.
        """
        key = (path, tuple(params) if params else ())
        self.reads += 1
        now = self._changes.ended
        if self.read_cache_seconds > 0:
            cached = self._cache.get(key)
            if cached is not None:
                if self._clock.seconds() < cached.until and cached.since == now:
                    if cached.status is not None:
                        note_airflow_status(cached.status)
                    return cached.shapes.of(cached.answer, shape)
                self._uncache(key)
        read = self._reads.get(key)
        caller = calltrace.current.get()
        deadline = caller.deadline if caller is not None else None
        if read is None or read.since != now:  # none, or begun before a change ended
            read = self._reads[key] = _Read(now)
            read.trace.deadline = deadline
            self.reads_upstream += 1
            shared = read

            def work() -> Deferred[Any]:
                # The request runs in a context of its own: no one caller's
                # record is the one it writes Airflow's status to.
                d = calltrace.started_in(shared.trace, lambda: Deferred.fromCoroutine(
                    self._api_retrying("GET", path, what=what, params=params)))
                return d.addBoth(self._read_done, key, shared)

            waiter = read.flight.run(work)
        else:
            waiter = read.flight.run(lambda: Deferred())  # never called: it is running
            if read.trace.deadline is not None:
                # Shared, it has as long as the caller with the most time left.
                read.trace.deadline = None if deadline is None else max(
                    read.trace.deadline, deadline)
        try:
            body = await waiter
        finally:
            if read.trace.airflow_status is not None:
                note_airflow_status(read.trace.airflow_status)
        return read.shapes.of(body, shape)

    def _read_done(self, result: Any, key: tuple[Any, ...], read: _Read) -> Any:
        if self._reads.get(key) is read:
            del self._reads[key]
        size = read.trace.airflow_bytes
        if (self.read_cache_seconds > 0 and not isinstance(result, Failure)
                and read.since == self._changes.ended and size <= READ_CACHE_BYTES // 4):
            now = self._clock.seconds()
            cache = self._cache
            self._uncache(key)  # to the end: the cache stays in the order answers expire
            # Answers past their time go as soon as another comes, not when
            # the cache is full: a burst of large reads is not held for long.
            while cache and (len(cache) >= READ_CACHE_ENTRIES
                             or self._cache_bytes + size > READ_CACHE_BYTES
                             or next(iter(cache.values())).until <= now):
                self._uncache(next(iter(cache)))
            cache[key] = _Cached(now + self.read_cache_seconds, read.trace.airflow_status,
                                 result, read.since, size, read.shapes)
            self._cache_bytes += size
        return result

    def _uncache(self, key: tuple[Any, ...]) -> None:
        cached = self._cache.pop(key, None)
        if cached is not None:
            self._cache_bytes -= cached.size

    async def _api_retrying(
        self, method: str, path: str, *, what: str, body: Any = _NOTHING,
        params: Any = None, conflict: str | None = None, retry: bool | None = None,
        attempts: list[None] | None = None, rejected: Rejections = (),
    ) -> Any:
        """
        Call ``/api/v2`` + ``path`` and return the JSON body of a 2xx answer.

        ``what`` names the object for a 404 (``DAG 'etl'``); ``conflict``
        says what a 409 means for this call; ``rejected`` what a 400 or 422
        means, by the words Airflow's reason holds (`Rejections`).  Reads and idempotent changes
        (GET, PATCH; POST and PUT only with ``retry=True``) are retried, after a
        jittered exponential back-off, when Airflow is unreachable, times
        out or answers 502/503/504 -- never while the circuit is open.
        ``attempts`` (if given) gets an item per attempt.
        """
        retry = method in ("GET", "PATCH") if retry is None else retry
        attempt = 0
        while True:
            if attempts is not None:
                attempts.append(None)  # for the caller: how many times it was sent
            try:
                return await self._api_once(method, path, what=what, body=body,
                                            params=params, conflict=conflict,
                                            rejected=rejected)
            except (errors.UpstreamUnavailable, errors.UpstreamTimeout, errors.UpstreamError) as e:
                transient = not isinstance(e, errors.UpstreamError) or e.status in UNAVAILABLE_STATUSES
                if not retry or not transient or attempt >= self.retries:
                    raise
                asked = getattr(e, "retry_after", None)
                if asked is not None and asked >= min(_time_left(self._clock), self.timeout):
                    # Airflow asks for longer than the call has, or than a
                    # request may take (a poll has no deadline: found by
                    # review, it slept a 40 s Retry-After with its readers
                    # waiting): the caller is told when to come back.
                    raise
            attempt += 1
            delay = self._random.uniform(0, RETRY_BASE_SECONDS * 2 ** attempt)
            if asked is not None:
                # Found by review: a 429's Retry-After was not heeded; three
                # requests in a second went to an Airflow that asked for five.
                delay = max(delay, asked)
            await deferLater(self._clock, delay)

    async def _api_once(
        self, method: str, path: str, *, what: str, body: Any, params: Any,
        conflict: str | None, rejected: Rejections = (),
    ) -> Any:
        full = "/api/v2/" + path
        token = await self._token()
        answer = await self._send(method, full, token=token, body=body, params=params)
        if answer.status == 401 or (answer.status == 403 and _invalid_jwt(answer.body)):
            # The token expired, or Airflow restarted with a new secret.
            if self._jwt == token:
                self._jwt = None
            token = await self._token()
            answer = await self._send(method, full, token=token, body=body, params=params)
        status = answer.status
        note_airflow_status(status, answer.size)
        if 200 <= status < 300:
            return answer.body
        if status == 404:
            raise errors.NotFound(what)
        if status == 409:
            raise errors.Conflict(conflict or f"Airflow refused the change to {what}")
        if status in (400, 422):
            meaning = _rejection(answer.body, rejected)
            if meaning is not None:
                raise errors.InvalidParams(meaning)
            fields = _rejected_fields(answer.body)
            named = f" (fields: {', '.join(fields)})" if fields else ""
            raise errors.InvalidParams(f"Airflow rejected the request for {what}{named}")
        if status == 403 and not self.own_account:
            raise errors.AirflowDenied(self.account, what)
        if status in (401, 403):
            raise errors.UpstreamError(
                f"Airflow refused the gateway's service account (HTTP {status})", status
            )
        if status in (429, 503):
            raise errors.UpstreamUnavailable(f"Airflow is overloaded (HTTP {status})",
                                             answer.retry_after, status)
        raise errors.UpstreamError(f"Airflow answered HTTP {status}", status)

    def _call(self, coroutine: Any) -> Deferred[Any]:
        return Deferred.fromCoroutine(coroutine)

    # -- DAGs --------------------------------------------------------------

    def list_dags(
        self, *, pattern: str | None, tags: list[str], paused: bool | None,
        limit: int, offset: int,
    ) -> Deferred[dict[str, Any]]:
        """DAGs (``dags``, shaped) and ``total``, ordered by dag_id."""
        params: list[tuple[str, str]] = [
            ("limit", str(limit)), ("offset", str(offset)), ("order_by", "dag_id"),
        ]
        if pattern:
            params.append(("dag_id_pattern", pattern))
        if paused is not None:
            params.append(("paused", "true" if paused else "false"))
        params.extend(("tags", t) for t in tags)

        async def run() -> dict[str, Any]:
            body = await self._api("GET", "dags", what="DAGs", params=params)
            dags, total = items(body, "dags")
            return {"dags": [shape_dag(d) for d in dags], "total": total}

        return self._call(run())

    def get_dag(self, dag_id: str) -> Deferred[dict[str, Any]]:
        return self._call(self._api("GET", ids.path("dags", dag_id), what=f"DAG {dag_id!r}",
                                    shape=shape_dag))

    def set_dag_paused(self, dag_id: str, paused: bool) -> Deferred[dict[str, Any]]:
        async def run() -> dict[str, Any]:
            body = await self._api(
                "PATCH", ids.path("dags", dag_id), what=f"DAG {dag_id!r}",
                body={"is_paused": paused}, params=[("update_mask", "is_paused")],
            )
            return shape_dag(body)

        return self._call(run())

    # -- DAG runs ----------------------------------------------------------

    def trigger_dag_run(
        self, dag_id: str, *, dag_run_id: str | None, conf: dict[str, Any],
        logical_date: str | None, note: str | None, attempts: list[None] | None = None,
    ) -> Deferred[dict[str, Any]]:
        """
        Create a run; `errors.Conflict` if ``dag_run_id`` is taken.

        Retried only with a ``dag_run_id``: then a retry of a trigger that
        did reach Airflow meets a 409, never a second run.  ``attempts``
        gets an item each time the request is sent.
        """
        body: dict[str, Any] = {"logical_date": logical_date, "conf": conf}
        if dag_run_id is not None:
            body["dag_run_id"] = dag_run_id
        if note is not None:
            body["note"] = note

        async def run() -> dict[str, Any]:
            data = await self._api(
                "POST", ids.path("dags", dag_id, "dagRuns"), what=f"DAG {dag_id!r}",
                body=body,
                conflict=f"DAG {dag_id!r} already has a run with this dag_run_id or logical_date",
                retry=dag_run_id is not None, attempts=attempts,
            )
            return shape_run(data)

        return self._call(run())

    def get_dag_run(self, dag_id: str, dag_run_id: str) -> Deferred[dict[str, Any]]:
        return self._call(self._api(
            "GET", ids.path("dags", dag_id, "dagRuns", dag_run_id),
            what=f"run {dag_run_id!r} of DAG {dag_id!r}", shape=shape_run,
        ))

    def list_dag_runs(
        self, dag_id: str, *, states: list[str], limit: int, offset: int,
        run_types: list[str] | tuple[str, ...] = (), logical_from: str | None = None,
        logical_to: str | None = None,
    ) -> Deferred[dict[str, Any]]:
        """
        Runs of a DAG, newest first (``dag_runs``, shaped) and ``total``; of
        those ``states`` and ``run_types`` (any, if empty), with a logical
        date from ``logical_from`` to ``logical_to`` (both included) if given.
        """
        params = [("limit", str(limit)), ("offset", str(offset)), ("order_by", "-run_after")]
        params.extend(("state", s) for s in states)
        params.extend(("run_type", t) for t in run_types)
        if logical_from is not None:
            params.append(("logical_date_gte", logical_from))
        if logical_to is not None:
            params.append(("logical_date_lte", logical_to))

        async def run() -> dict[str, Any]:
            data = await self._api(
                "GET", ids.path("dags", dag_id, "dagRuns"), what=f"DAG {dag_id!r}",
                params=params,
            )
            runs, total = items(data, "dag_runs")
            return {"dag_runs": [shape_run(r) for r in runs], "total": total}

        return self._call(run())

    def set_dag_run_state(
        self, dag_id: str, dag_run_id: str, state: str
    ) -> Deferred[dict[str, Any]]:
        async def run() -> dict[str, Any]:
            data = await self._api(
                "PATCH", ids.path("dags", dag_id, "dagRuns", dag_run_id),
                what=f"run {dag_run_id!r} of DAG {dag_id!r}", body={"state": state},
                params=[("update_mask", "state")],
            )
            return shape_run(data)

        return self._call(run())

    # -- task instances ----------------------------------------------------

    def list_task_instances(
        self, dag_id: str, dag_run_id: str
    ) -> Deferred[list[dict[str, Any]]]:
        async def run() -> list[dict[str, Any]]:
            # Airflow answers at most 100 a page: a run of mapped tasks holds more.
            found: list[dict[str, Any]] = []
            while True:
                data = await self._api(
                    "GET", ids.path("dags", dag_id, "dagRuns", dag_run_id, "taskInstances"),
                    what=f"run {dag_run_id!r} of DAG {dag_id!r}",
                    params=[("limit", str(TASK_INSTANCE_PAGE)), ("offset", str(len(found))),
                            ("order_by", "id")],
                )
                tis, total = items(data, "task_instances")
                if total > MAX_TASK_INSTANCES:
                    raise errors.UpstreamError(
                        f"run {dag_run_id!r} has {total} task instances; at most "
                        f"{MAX_TASK_INSTANCES} are listed")
                found.extend(shape_task_instance(t) for t in tis)
                if not tis or len(found) >= total:
                    return found

        return self._call(run())

    def get_task_instance(
        self, dag_id: str, dag_run_id: str, task_id: str, map_index: int | None = None
    ) -> Deferred[dict[str, Any]]:
        """One task instance; of a mapped task, the one at ``map_index``."""
        segments = ["dags", dag_id, "dagRuns", dag_run_id, "taskInstances", task_id]
        if map_index is not None:
            segments.append(str(map_index))
        what = f"task {task_id!r}{ids.mapped(map_index)} in run {dag_run_id!r} of DAG {dag_id!r}"

        return self._call(self._api("GET", ids.path(*segments), what=what,
                                    shape=shape_task_instance))

    def clear_task_instances(
        self, dag_id: str, dag_run_id: str, *, task_ids: list[str] | None,
        only_failed: bool, dry_run: bool,
    ) -> Deferred[list[dict[str, Any]]]:
        """Clear (re-run) task instances of one run; the ones cleared."""
        body: dict[str, Any] = {
            "dag_run_id": dag_run_id, "dry_run": dry_run, "only_failed": only_failed,
        }
        if task_ids is not None:
            body["task_ids"] = task_ids

        async def run() -> list[dict[str, Any]]:
            data = await self._api(
                "POST", ids.path("dags", dag_id, "clearTaskInstances"),
                what=f"run {dag_run_id!r} of DAG {dag_id!r}", body=body,
            )
            tis, _ = items(data, "task_instances")
            return [shape_task_instance(t) for t in tis]

        return self._call(run())

    def get_task_log(
        self, dag_id: str, dag_run_id: str, task_id: str, try_number: int,
        map_index: int | None = None,
    ) -> Deferred[str]:
        """The log of one try of a task (of a mapped task's instance ``map_index``), as text."""
        what = (f"log of try {try_number} of task {task_id!r}{ids.mapped(map_index)} "
                f"in run {dag_run_id!r}")
        path = ids.path(
            "dags", dag_id, "dagRuns", dag_run_id, "taskInstances", task_id, "logs",
            str(try_number),
        )

        async def run() -> str:
            lines: deque[str] = deque()
            size = dropped = 0  # characters kept (with their newlines), and left out
            token: str | None = None
            for _ in range(MAX_LOG_PAGES):
                params = [("full_content", "true")]
                if map_index is not None:
                    params.append(("map_index", str(map_index)))
                if token:
                    params.append(("token", token))
                data = await self._api("GET", path, what=what, params=params)
                if not isinstance(data, dict):
                    raise errors.UpstreamError("Airflow answered with an unexpected log")
                for line in format_log_content(data.get("content")):
                    lines.append(line)
                    size += len(line) + 1
                    while size > MAX_LOG_CHARACTERS:
                        gone = len(lines.popleft()) + 1
                        size -= gone
                        dropped += gone
                next_token = data.get("continuation_token")
                if not isinstance(next_token, str) or not next_token or next_token == token:
                    break
                token = next_token
            text = "\n".join(lines) + ("\n" if lines else "")
            if dropped:
                text = (f"[txairflowrpc: the first {dropped} characters of this log are left "
                        f"out: an answer holds at most its last {MAX_LOG_CHARACTERS}]\n" + text)
            return text

        return self._call(run())

    # -- backfills ---------------------------------------------------------

    def backfill_dry_run(
        self, dag_id: str, *, from_date: str, to_date: str, run_backwards: bool,
        reprocess_behavior: str, conf: dict[str, Any] | None,
    ) -> Deferred[list[str]]:
        """
        The runs a backfill of ``dag_id`` over the range would create, in
        order: each one's logical date (or, for a partitioned DAG, its
        partition key).  Changes nothing.  Not retried: Airflow walks the
        whole range for it, and goes on after the gateway gives up.
        """
        body = _backfill_body(dag_id, from_date, to_date, run_backwards, reprocess_behavior, conf)

        async def run() -> list[str]:
            try:
                data = await self._api(
                    "POST", "backfills/dry_run", what=f"DAG {dag_id!r}", body=body,
                    retry=False, rejected=_backfill_rejections(dag_id), dry_run=True,
                )
            except errors.AnswerTooLarge:
                raise errors.InvalidParams(
                    f"the range holds too many runs of DAG {dag_id!r} to list: split it"
                ) from None
            found, _ = items(data, "backfills")
            runs = []
            for item in found:
                at = (item.get("logical_date") or item.get("partition_key")
                      if isinstance(item, dict) else None)
                if not isinstance(at, str):
                    raise errors.UpstreamError("Airflow answered with an unexpected document")
                runs.append(at)
            return runs

        return self._call(run())

    def create_backfill(
        self, dag_id: str, *, from_date: str, to_date: str, run_backwards: bool,
        reprocess_behavior: str, conf: dict[str, Any] | None, max_active_runs: int,
    ) -> Deferred[dict[str, Any]]:
        """
        Create a backfill (Airflow creates its runs at once); a
        `errors.Conflict` if the DAG has one that has not completed.  Never
        retried: a second one would meet the first.
        """
        body = _backfill_body(dag_id, from_date, to_date, run_backwards, reprocess_behavior, conf)
        body["max_active_runs"] = max_active_runs

        async def run() -> dict[str, Any]:
            data = await self._api(
                "POST", "backfills", what=f"DAG {dag_id!r}", body=body, retry=False,
                conflict=(f"DAG {dag_id!r} already has a backfill that has not completed "
                          "(list_backfills shows it): cancel it or wait for it"),
                rejected=_backfill_rejections(dag_id),
            )
            return shape_backfill(data)

        return self._call(run())

    def get_backfill(self, backfill_id: int) -> Deferred[dict[str, Any]]:
        return self._call(self._api("GET", ids.path("backfills", str(backfill_id)),
                                    what=f"backfill {backfill_id}", shape=shape_backfill))

    def list_backfills(
        self, dag_id: str, *, limit: int, offset: int
    ) -> Deferred[dict[str, Any]]:
        """Backfills of a DAG, newest first (``backfills``, shaped) and ``total``."""
        params = [("dag_id", dag_id), ("limit", str(limit)), ("offset", str(offset)),
                  ("order_by", "-id")]

        async def run() -> dict[str, Any]:
            data = await self._api("GET", "backfills", what=f"DAG {dag_id!r}", params=params)
            found, total = items(data, "backfills")
            return {"backfills": [shape_backfill(b) for b in found], "total": total}

        return self._call(run())

    def change_backfill(self, backfill_id: int, action: str) -> Deferred[dict[str, Any]]:
        """
        ``pause``, ``unpause`` or ``cancel`` a backfill; the backfill after
        it.  A cancel is not retried: had the first one taken, a retry would
        answer that the backfill has already completed.
        """
        what = f"backfill {backfill_id}"

        async def run() -> dict[str, Any]:
            data = await self._api(
                "PUT", ids.path("backfills", str(backfill_id), action), what=what,
                conflict=f"{what} has already completed", retry=action != "cancel",
            )
            return shape_backfill(data)

        return self._call(run())


def _backfill_body(
    dag_id: str, from_date: str, to_date: str, run_backwards: bool,
    reprocess_behavior: str, conf: dict[str, Any] | None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "dag_id": dag_id, "from_date": from_date, "to_date": to_date,
        "run_backwards": run_backwards, "reprocess_behavior": reprocess_behavior,
    }
    if conf is not None:
        body["dag_run_conf"] = conf
    return body


def _backfill_rejections(dag_id: str) -> Rejections:
    """Airflow 3's reasons for refusing a backfill, in the gateway's words."""
    return (
        # First: this sentence quotes the caller's conf, which may hold any words.
        ("Invalid input for param",
         f"the conf does not fit the params of DAG {dag_id!r}"),
        ("non-periodic schedule",
         f"DAG {dag_id!r} has no periodic schedule: only a scheduled DAG can be backfilled"),
        ("does not allow backfill", f"DAG {dag_id!r} does not allow backfill runs"),
        ("future dates", "from_date and to_date are both in the future"),
        ("No runs to create", f"the range holds no scheduled run of DAG {dag_id!r}"),
        ("must not be after", "from_date is after to_date"),
        ("run in reverse",
         (f"DAG {dag_id!r} has tasks that depend on their past: it cannot be backfilled "
          "backwards")),
        ("reprocess behavior",
         (f"DAG {dag_id!r} has tasks that depend on their past: "
          "options.reprocess_behavior must be failed or completed")),
    )
