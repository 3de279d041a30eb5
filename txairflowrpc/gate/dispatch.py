"""
The one pipeline every call passes through.

`Dispatcher.call` is where a call starts and ends, whether it came alone
or inside ``system.multicall``: look the method up (only among the
registered specs, never by attribute walking), check the arguments,
authorise, run the handler, and turn any failure into a `GatewayError`.
Each finished call is measured (its meter) and recorded on the audit trail
before its result is handed back; the service log gets no line per call
(the trail says everything), only internal errors.

The ``system.*`` introspection methods and ``system.multicall`` live here,
since they are about the method table itself.
"""

from __future__ import annotations

import inspect
import re
import secrets
from typing import Any, Protocol

from twisted.internet.defer import (
    CancelledError, Deferred, FirstError, fail, gatherResults, maybeDeferred, succeed,
)
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..audit.log import AuditLog
from ..audit.summary import Summarizer, clip
from ..config.sections import REDACT_DEFAULT
from ..core import calltrace, errors
from ..core.calltrace import CallTrace
from ..core.meters import UNMETERED, CallMeter
from ..core.spec import AUTHENTICATED, CallContext, MethodSpec, Param, collect, rpc_method
from .answers import MAX_MULTICALL_ANSWER, AnswerBudget
from .limits import CallLimits
from .refusals import RefusalLog

_log = Logger(namespace="txairflowrpc.gate.dispatch")


class Policy(Protocol):
    def authorize(self, call: CallContext, spec: MethodSpec, args: tuple[Any, ...]) -> None:
        """Raise `errors.Forbidden` unless the call is allowed."""


class Dispatcher:
    """
    Runs calls: the methods of ``providers`` plus ``system.*``.

    :param max_multicall: the most calls one ``system.multicall`` may hold.
    :param clock: gives the time in seconds (a reactor), for call durations.
    :param meter: told of every call's start and outcome (the metrics).
    """

    def __init__(
        self, providers: list[object], *, policy: Policy, max_multicall: int,
        clock: IReactorTime, audit: AuditLog | None = None,
        summarizer: Summarizer | None = None,
        limits: CallLimits | None = None, deadline: float = 60.0, max_wait: float = 3600.0,
        meter: CallMeter = UNMETERED, refusals: RefusalLog | None = None,
        max_answer: int = MAX_MULTICALL_ANSWER,
    ) -> None:
        self._meter = meter
        #: Where a caller's calls past its rate are counted (None: each is
        #: recorded on its own, as every other call).
        self.refusals = refusals
        self._policy = policy
        self._limits = limits
        #: The calls a request paid for ahead, by request id, for the entries of
        #: its multicall: what its body paid beyond its own call (`charge_body`)
        #: and what the multicall spent as it started (`_prepay`); until it is over.
        self._paid: dict[str, int] = {}
        self.deadline = deadline
        self.max_wait = max_wait
        self.max_multicall = max_multicall
        #: The most bytes one multicall's results may take (`AnswerBudget`).
        self.max_answer = max_answer
        self._clock = clock
        self._audit = audit
        self.summarizer = summarizer or Summarizer(REDACT_DEFAULT, secrets.token_bytes(32))
        #: Top-level calls in flight, and who waits for there to be none.
        self._active: set[Deferred[Any]] = set()
        self._idle: list[Deferred[None]] = []
        #: Set by `drain`: the gateway is shutting down.
        self.draining = False
        self.methods: dict[str, MethodSpec] = {}
        for provider in [*providers, self]:
            self.methods.update(collect(provider))

    def call(
        self, ctx: CallContext, name: str, args: tuple[Any, ...],
        multicall_index: int | None = None, records: list[Deferred[None]] | None = None,
        budget: AnswerBudget | None = None,
        charged: bool = False,
    ) -> Deferred[Any]:
        """
        Run one call; the Deferred fires with the result or fails with a
        `GatewayError` (anything else is logged and becomes an internal
        error).  With an audit log, it fires only once the call's record
        is on disk, and fails with `errors.AuditUnavailable` if it cannot
        be written; a call that changes Airflow (its spec says so) first
        writes an intent record and waits for it to be on disk before its
        handler runs, so that no effect in Airflow is ever without a
        record.  With ``records`` (a multicall's inner calls) the call's
        record is not waited for but added there, so that the records of
        one multicall share a group commit, and ``budget`` is what is left
        of the multicall's answer (`AnswerBudget`); ``charged``: the call's
        rate was spent already, with its body (`charge_body`): then the
        calls of a multicall in it draw first on what the body paid beyond
        its own call.

        Cancelling it cancels the handler's work, except for a call that
        changes Airflow: that one runs on to its real outcome, which its
        record says (only `drain` cuts it off, at the shutdown deadline).
        """
        started = self._clock.seconds()
        self._meter.call_started()
        spec = self.methods.get(name) if isinstance(name, str) else None
        trace = CallTrace()
        top = multicall_index is None
        if top:
            deadline = self._deadline_for(spec, args)
            trace.deadline = started + deadline
        else:  # a multicall's call: its multicall's deadline (the handler's trace)
            outer = calltrace.current.get()
            trace.deadline = outer.deadline if outer is not None else None
        who = who_of(ctx)
        entered = False
        try:
            if self._limits is not None:
                if not (charged or (not top and self._paid_ahead(ctx))):
                    self._limits.take(who)
                if top:
                    self._limits.enter(who)
                    entered = True
            d = maybeDeferred(self._run, ctx, spec, name, args, trace, multicall_index, budget)
        except errors.RateLimited as e:
            trace.decision, trace.reason = "denied", e.message
            d = fail(e)
        if top:
            # Past the deadline the work is cancelled, and whatever it then
            # fails with, the call's answer is a timeout.
            d.addTimeout(deadline, self._clock,
                         onTimeoutCancel=lambda _, t: Failure(errors.CallTimeout(t)))
        if entered:
            d.addBoth(self._left, who)
        if charged or (top and name == "system.multicall"):  # it may hold credit (`_prepay`)
            d.addBoth(self._settled, ctx)
        changes = spec is not None and spec.changes_airflow(args)
        if budget is not None and spec is not None:
            d.addCallback(budget.charge, changes)
        d.addErrback(self._as_gateway_error, ctx, spec)
        d.addBoth(self._finish, ctx, spec, name, args, trace, started, multicall_index, records)
        if top or changes:
            # A multicall's change too: cut off with its multicall, it runs on
            # (below), and the drain waits for its record (found by review:
            # at SIGTERM it made its run in Airflow and went unrecorded).
            self._active.add(d)
            d.addBoth(self._ended, d)
        if changes:
            # A change may be on its way to Airflow: the caller leaving must
            # not cut it off unrecorded; it runs on, and its record says how
            # it really ended.
            return _detached(d)
        return d

    @property
    def meter(self) -> CallMeter:
        """What is told of every call (the metrics): the resource tells it of failed answers."""
        return self._meter

    def charge_body(self, ctx: CallContext, size: int) -> bool:
        """
        Before a request body of ``size`` bytes is parsed, spend its call
        and what its size costs more (`CallLimits.body_cost`) from its
        caller's rate, if it is paid for first: True if spent (`call` is
        then told ``charged``, or `settle` is called if it never is), False
        if not (a small body: its call is spent as it is made).
        `errors.RateLimited` if the caller has no call left: the body is
        then not parsed at all.
        """
        if self._limits is None:
            return False
        extra = self._limits.body_cost(size)
        if extra is None:
            return False
        spent = self._limits.take(who_of(ctx), 1 + extra)
        # Only what was spent, beyond the call itself, is credit: a caller
        # owing its whole burst spent less than the body's cost (found by review:
        # at a small burst, credit never paid for let a multicall run far past the rate).
        credit = min(extra, spent - 1)
        if credit > 0:
            self._paid[ctx.request_id] = credit
        return True

    def _prepay(self, ctx: CallContext, calls: int) -> None:
        """
        A multicall of ``calls`` entries is about to run: spend what they
        cost beyond what its request paid already (its own call, or what its
        body paid: `charge_body`), so that they draw on credit
        (`_paid_ahead`) rather than each on the bucket as it then is.  The
        request was let in, so this spends even what the caller lacks,
        owing it (up to ``rpc.max_multicall``): the largest multicall
        allowed runs whole whatever the burst (a worker's share of it is
        smaller), and the caller's next calls wait until it is paid.  Spent
        only once the multicall runs: one refused before (the in-flight
        cap, a shutdown, the audit trail down) costs one call, as any call.
        """
        if self._limits is None:
            return
        have = 1 + self._paid.get(ctx.request_id, 0)
        if calls > have:
            have += self._limits.prepay(who_of(ctx), calls - have, owing=self.max_multicall)
        self._paid[ctx.request_id] = min(calls, have)

    def settle(self, ctx: CallContext) -> None:
        """
        The request is over: what it paid ahead (`charge_body`, `_prepay`)
        and did not use is spent, as a multicall cut off midway (its deadline,
        its caller gone) spent all its calls.
        """
        self._paid.pop(ctx.request_id, None)

    def _settled(self, result: Any, ctx: CallContext) -> Any:
        self.settle(ctx)
        return result

    def _paid_ahead(self, ctx: CallContext) -> bool:
        """Take one call of what the request's body paid ahead, if any is left."""
        left = self._paid.get(ctx.request_id, 0)
        if not left:
            return False
        self._paid[ctx.request_id] = left - 1
        return True

    def _deadline_for(self, spec: MethodSpec | None, args: tuple[Any, ...]) -> float:
        """
        A call's deadline; what its spec says extends it (capped) comes on
        top.  A multicall's inner calls have no deadline of their own: the
        multicall's is extended by what each of them would be (together
        capped), so that a wait inside one ends as it would alone.
        """
        if spec is not None and spec.name == "system.multicall":
            return self.deadline + min(self._multicall_extension(args), self.max_wait)
        if spec is None or spec.deadline is None:
            return self.deadline
        try:
            extra = spec.value(spec.deadline, args)
        except KeyError:
            return self.deadline
        if not isinstance(extra, (int, float)) or isinstance(extra, bool):
            extra = spec.value(spec.deadline, ())
        return self.deadline + min(max(extra or 0, 0), self.max_wait)

    def _multicall_extension(self, args: tuple[Any, ...]) -> float:
        entries = args[0] if args and isinstance(args[0], list) else []
        extension = 0.0
        for entry in entries[: self.max_multicall]:
            try:
                name, params = _multicall_entry(entry)
            except errors.GatewayError:
                continue  # it will be a fault in its place, at once
            extension += self._deadline_for(self.methods.get(name), params) - self.deadline
        return extension

    def _left(self, result: Any, who: str) -> Any:
        assert self._limits is not None
        self._limits.leave(who)
        return result

    def _run(
        self, ctx: CallContext, spec: MethodSpec | None, name: str, args: tuple[Any, ...],
        trace: CallTrace, multicall_index: int | None, budget: AnswerBudget | None = None,
    ) -> Any:
        if self.draining:  # a call that came in on an open connection after SIGTERM
            trace.decision, trace.reason = "denied", "the gateway is shutting down"
            raise errors.ShuttingDown()
        if self._audit is not None and self._audit.failed is not None:
            trace.decision, trace.reason = "denied", "audit log unavailable"
            raise errors.AuditUnavailable()
        if spec is None:
            raise errors.MethodNotFound(str(name)[:100])
        if budget is not None and budget.spent:
            trace.decision, trace.reason = "denied", "the multicall's answer is full"
            raise budget.refusal()
        checked = trace.checked = spec.check(args)
        try:
            self._policy.authorize(ctx, spec, checked)
        except errors.Forbidden as e:
            trace.decision, trace.reason = "denied", e.reason
            raise
        trace.decision = "allowed"
        if self._audit is not None and spec.changes_airflow(checked):
            # Intent before effect: a crash after Airflow answered leaves an
            # intent without outcome (audit verify lists it), never an
            # effect without any record.
            intent = self._audit.append(self._fields("intent", ctx, spec, spec.name, checked,
                                                     multicall_index))
            intent.addErrback(lambda f: Failure(errors.AuditUnavailable()))
            return intent.addCallback(lambda _: self._invoke(ctx, spec, checked, trace))
        return self._invoke(ctx, spec, checked, trace)

    def _invoke(
        self, ctx: CallContext, spec: MethodSpec, checked: tuple[Any, ...], trace: CallTrace,
    ) -> Any:
        def start() -> Any:
            result = spec.handler(ctx, *checked)
            return Deferred.fromCoroutine(result) if inspect.iscoroutine(result) else result

        return calltrace.started_in(trace, start)

    def _fields(
        self, kind: str, ctx: CallContext, spec: MethodSpec | None, method: object,
        args: tuple[Any, ...], multicall_index: int | None,
    ) -> dict[str, Any]:
        """
        Who called what, on what, from where: what a call's intent and
        outcome records share.  ``method``: the name asked for (None: none).
        """
        params = spec.params if spec else [Param(f"arg{i}", "", "") for i in range(len(args))]
        ids, summary = self.summarizer.summarize(params, args)
        return {
            "kind": kind,
            "request_id": ctx.request_id,
            "multicall_index": multicall_index,
            "principal": getattr(ctx.principal, "name", None),
            "auth": ctx.principal.audit_identity() if ctx.principal is not None else None,
            "source": ctx.peer,
            **(method_fields(method) if spec is None else {"method": method}),
            **ids,
            "args": summary or None,
        }

    def _ended(self, result: Any, d: Deferred[Any]) -> Any:
        self._active.discard(d)
        if not self._active and self._idle:
            waiters, self._idle = self._idle, []
            # After this call's answer has been written, not before.
            self._clock.callLater(0, lambda: [w.callback(None) for w in waiters])
        return result

    def drain(self, seconds: float) -> Deferred[None]:
        """
        Fires once every call in flight has ended and been recorded.  Calls
        still running after ``seconds`` are cancelled, a change on its way
        to Airflow included; they end with fault 503 (the gateway is
        shutting down), and are recorded so.
        """
        self.draining = True
        if not self._active:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._idle.append(waiter)

        def cut_off() -> None:
            for d in list(self._active):
                d.cancel()

        timer = self._clock.callLater(seconds, cut_off)
        return waiter.addBoth(lambda r: (timer.cancel() if timer.active() else None, r)[1])

    def _as_gateway_error(self, failure: Failure, ctx: CallContext, spec: MethodSpec | None) -> Failure:
        if failure.check(errors.InvalidParams) and spec and not failure.value.method:
            failure.value.method = spec.name
        if failure.check(CancelledError) and self.draining:
            return Failure(errors.ShuttingDown())
        if failure.check(errors.GatewayError, CancelledError):
            return failure
        _log.failure(
            "internal error in {method} (request {request_id})", failure,
            method=spec.name if spec else None, request_id=ctx.request_id,
        )
        return Failure(errors.InternalError(ctx.request_id))

    def _finish(
        self, result: Any, ctx: CallContext, spec: MethodSpec | None, name: Any,
        args: tuple[Any, ...], trace: CallTrace, started: float,
        multicall_index: int | None, records: list[Deferred[None]] | None,
    ) -> Any:
        cancelled = isinstance(result, Failure) and result.check(CancelledError)
        fault = None
        if isinstance(result, Failure) and not cancelled:
            fault = result.value.code
        duration = self._clock.seconds() - started
        self._meter.call_finished(spec.name if spec else None, ctx.principal, fault,
                                  bool(cancelled), duration)
        if self._audit is None:
            return result
        method = spec.name if spec else name
        # What the handler got (PHP's "" for a conf is the default), as the
        # intent record says: an auditor's digest of what Airflow holds matches.
        recorded_args = args if trace.checked is None else trace.checked
        fields = self._fields("call", ctx, spec, method, recorded_args, multicall_index)
        fields.update({
            "decision": trace.decision,
            "reason": clip(trace.reason),
            "outcome": "cancelled" if cancelled else "ok" if fault is None else "fault",
            "fault_code": fault,
            "airflow_status": trace.airflow_status,
            "airflow_user": trace.airflow_user,
            "duration_ms": round(duration * 1000, 3),
        })
        if trace.created:
            fields["created"] = {k: clip(v) for k, v in trace.created.items()}
        if self.refusals is not None and isinstance(result, Failure) and result.check(
                errors.RateLimited):
            # Past its rate a caller's calls are counted, the first of a
            # window written at once: every refused call still reaches the
            # trail, but not an fsync each at the speed it can send them.
            # One reason per limit (the retry-after text would make several).
            self._tally(ctx, "rate_limited",
                        {**fields, "reason": f"rate limited: {result.value.limit}"})
            return result
        recorded = self._append(fields, trace.decision)
        if recorded is None:
            return result
        if records is not None:
            records.append(recorded)  # the multicall waits for them together
            return result

        def unrecorded(failure: Failure) -> Any:
            if cancelled:
                return result
            return Failure(errors.AuditUnavailable())

        return recorded.addCallbacks(lambda _: result, unrecorded)

    def _tally(self, ctx: CallContext, kind: str, fields: dict[str, Any]) -> None:
        """Count a caller's refused call past its rate (`RefusalLog.note`, by principal)."""
        assert self.refusals is not None
        self.refusals.note(ctx.peer or "", kind, {k: v for k, v in fields.items() if k != "kind"},
                           by=who_of(ctx))

    def _append(self, fields: dict[str, Any], decision: str) -> Deferred[None] | None:
        """
        Append a call's record; its Deferred, or None when the record need
        not be waited for: a call refused before anything was done (its
        decision is not "allowed"), while the log cannot be written, may be
        counted rather than queued, and its answer (a refusal) does not wait
        for a write that is failing; a flood of them must not grow the queue.
        """
        assert self._audit is not None
        droppable = self._audit.failed is not None and decision != "allowed"
        recorded = self._audit.append({k: v for k, v in fields.items() if v is not None},
                                      droppable=droppable)
        if droppable:
            recorded.addErrback(lambda f: None)
            return None
        return recorded

    # -- system.* --------------------------------------------------------

    @rpc_method("system.listMethods", "array", scope=AUTHENTICATED)
    def list_methods(self, call: CallContext) -> list[str]:
        """The names of all methods, sorted."""
        return sorted(self.methods)

    @rpc_method("system.methodSignature", "array", Param("method", "string", "a method name"),
                scope=AUTHENTICATED)
    def method_signature(self, call: CallContext, method: str) -> list[list[str]]:
        """The method's signatures: arrays of [return type, parameter types...]."""
        return self._spec(method).signatures()

    @rpc_method("system.methodHelp", "string", Param("method", "string", "a method name"),
                scope=AUTHENTICATED)
    def method_help(self, call: CallContext, method: str) -> str:
        """Help text for a method: what it does and its parameters."""
        return self._spec(method).help()

    @rpc_method("system.getCapabilities", "struct", scope=AUTHENTICATED)
    def get_capabilities(self, call: CallContext) -> dict[str, Any]:
        """The specifications this server implements, per the xmlrpc-epi convention."""
        return {
            "xmlrpc": {"specUrl": "http://www.xmlrpc.com/spec", "specVersion": 1},
            "faults_interop": {
                "specUrl": "http://xmlrpc-epi.sourceforge.net/specs/rfc.fault_codes.php",
                "specVersion": 20010516,
            },
            "system.multicall": {
                "specUrl": "https://mirrors.talideon.com/articles/multicall.html",
                "specVersion": 1,
            },
            "introspection": {
                "specUrl": "http://xmlrpc-c.sourceforge.net/introspection.html",
                "specVersion": 1,
            },
        }

    def _spec(self, method: str) -> MethodSpec:
        spec = self.methods.get(method)
        if spec is None:
            raise errors.MethodNotFound(method[:100])
        return spec

    @rpc_method(
        "system.multicall", "array",
        Param("calls", "array", "structs with methodName (string) and params (array)"),
        scope=AUTHENTICATED,
    )
    async def multicall(self, call: CallContext, calls: list[Any]) -> list[Any]:
        """
        Run several calls in one request, in order. Each result is a
        one-element array holding the result, or a fault struct (faultCode,
        faultString) in place. system.multicall cannot be nested.
        """
        if len(calls) > self.max_multicall:
            raise errors.InvalidParams(
                f"at most {self.max_multicall} calls per multicall, got {len(calls)}"
            )
        self._prepay(call, len(calls))
        results: list[Any] = []
        records: list[Deferred[None]] = []
        budget = AnswerBudget(self.max_answer)
        for index, entry in enumerate(calls):
            try:
                name, params = _multicall_entry(entry)
            except errors.GatewayError as e:
                self._record_bad_entry(call, entry, index, e, records)
                results.append({"faultCode": e.code, "faultString": e.message})
                continue
            try:
                results.append([await self.call(call, name, params, multicall_index=index,
                                                records=records, budget=budget)])
            except errors.GatewayError as e:
                results.append({"faultCode": e.code, "faultString": e.message})
        try:
            await gatherResults(records, consumeErrors=True)
        except FirstError:
            raise errors.AuditUnavailable() from None
        return results


    def _record_bad_entry(
        self, ctx: CallContext, entry: Any, index: int, error: errors.GatewayError,
        records: list[Deferred[None]],
    ) -> None:
        """
        The record of a multicall entry refused before it was a call (not a
        struct, no method name, a nested multicall): answered with a fault
        like any other entry, so recorded like one, in the multicall's
        group commit.
        """
        if self._audit is None:
            return
        name = entry.get("methodName") if isinstance(entry, dict) else None
        fields = self._fields("call", ctx, None, name if isinstance(name, str) else None, (),
                              index)
        fields.update({"decision": "invalid", "reason": clip(error.message),
                       "outcome": "fault", "fault_code": error.code})
        who = who_of(ctx)
        # An entry that is no call costs a call of the rate, as a call does;
        # past it, it is counted as the calls past it are (see `_finish`).
        if (self._limits is not None and self.refusals is not None
                and not self._paid_ahead(ctx) and not self._limits.spend(who)):
            self._tally(ctx, "invalid_call", fields)
            return
        recorded = self._append(fields, "invalid")
        if recorded is not None:
            records.append(recorded)


#: A method name as it is recorded when no method has it: the characters
#: method names are made of (an unknown one is worth reading on the trail).
_NAME_LIKE = re.compile(r"[A-Za-z0-9_.]{1,100}")


def method_fields(name: object) -> dict[str, Any]:
    """
    What the trail says a call asked for when no method has that name: the
    name if it is made like one; else a stand-in as ``method`` (line breaks,
    bidi controls and look-alike letters a caller chose stay out of the
    field that names things) and the name, clipped, as ``invalid_method``
    (what an attack asked for is worth reading: the trail is ASCII-escaped
    JSON), as a refused id is kept as ``args.PARAM.invalid_id``.
    """
    if not isinstance(name, str):
        return {"method": "(no method name)"}
    if _NAME_LIKE.fullmatch(name):
        return {"method": name}
    return {"method": "(not a method name)", "invalid_method": clip(name)}


def who_of(ctx: CallContext) -> str:
    """The name a caller's limits and tallies go by."""
    return getattr(ctx.principal, "name", "")


def _detached(work: Deferred[Any]) -> Deferred[Any]:
    """
    A Deferred of ``work``'s result whose cancellation lets ``work`` run on
    (its deadline still applies); the result is then dropped.
    """
    view: Deferred[Any] = Deferred()

    def forward(result: Any) -> None:
        if view.called:
            return None  # the caller left; the outcome is on the trail
        if isinstance(result, Failure):
            view.errback(result)
        else:
            view.callback(result)
        return None

    work.addBoth(forward)
    return view


def _multicall_entry(entry: Any) -> tuple[str, tuple[Any, ...]]:
    if not isinstance(entry, dict) or not isinstance(entry.get("methodName"), str):
        raise errors.InvalidParams(
            "each multicall entry must be a struct with a methodName string",
            "system.multicall",
        )
    params = entry.get("params", [])
    if not isinstance(params, list) or set(entry) - {"methodName", "params"}:
        raise errors.InvalidParams(
            "each multicall entry holds only methodName and params (an array)",
            "system.multicall",
        )
    if entry["methodName"] == "system.multicall":
        raise errors.InvalidParams("system.multicall cannot be nested", "system.multicall")
    return entry["methodName"], tuple(params)
