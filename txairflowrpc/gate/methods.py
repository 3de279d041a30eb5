"""
The gateway's own XML-RPC methods: what a caller can ask of Airflow.

Each handler checks the values inside its arguments (ids, option structs,
conf) before anything reaches the Airflow client; arity and the XML-RPC
types have been checked by the dispatcher from the `Param` declarations.
Handlers return plain values or Deferreds of them; a missing value is
simply absent from a struct.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Any
from xmlrpc.client import DateTime

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from ..core import calltrace, errors, ids, timefmt
from ..core.jsonvalues import check_conf, json_equal
from ..core.like import Like
from ..core.spec import (
    AUTHENTICATED,
    REQUEST_ID_PATTERN,
    CallContext,
    Param,
    rpc_method,
    type_problem,
)
from ..upstream.accounts import Account, Accounts
from ..upstream.client import AirflowClient

DAG_RUN_STATES = ("queued", "running", "success", "failed")
#: Airflow 3's run types (a run's ``run_type``).
DAG_RUN_TYPES = ("manual", "scheduled", "backfill", "asset_triggered",
                 "asset_materialization", "operator_triggered")
SETTABLE_RUN_STATES = ("success", "failed", "queued")
MAX_PAGE = 100
#: Airflow keeps 1000 characters of a run's note (a VARCHAR(1000) in its
#: database: PostgreSQL refuses more, with a 500).
AIRFLOW_NOTE_LENGTH = 1000
#: A caller's own note, below the gateway's attribution line; cut at its end
#: when a long principal name leaves it less (`attribution`).
MAX_NOTE_LENGTH = 700
MAX_TAGS = 50
#: How many pages of DAGs (of 100) list_dags reads to filter them for a
#: caller who may read only some.
MAX_SCAN_PAGES = 100
#: The largest offset a list may ask for (Airflow's database would be asked
#: to skip that many rows; 10**30 is no page anyone reads).
MAX_OFFSET = 10_000_000

#: Airflow's own choices for which runs of the range a backfill runs again.
REPROCESS_BEHAVIORS = ("none", "failed", "completed")
#: A bound on a backfill's ``max_active_runs`` (Airflow's default is 10).
MAX_ACTIVE_BACKFILL_RUNS = 1000
#: Backfill ids are database integers.
MAX_BACKFILL_ID = 2**31 - 1
#: The windows at the start of a backfill's range whose intervals tell how
#: many the range holds, each asked only if the one before did not refuse
#: the range (so each walks about as many as the range may hold at most);
#: the last a week, so that a schedule of weekdays only is seen whole.  A
#: range of an hour or less is not probed.
PROBES = (timedelta(hours=1), timedelta(days=1), timedelta(days=7))
#: The most intervals a backfill's range may hold, as a multiple of
#: rpc.max_backfill_runs (the rest may have runs already).
WALK_FACTOR = 4
#: How far past now a backfill's range may end (Airflow creates no run whose
#: interval has not ended, but walks every interval up to to_date).
FUTURE_SLACK = timedelta(hours=1)

_DAG_ID = Param("dag_id", "string", "the DAG's id", id="dag_id")
_RUN_ID = Param("dag_run_id", "string", "the run's id", id="dag_run_id")
_TASK_ID = Param("task_id", "string", "the task's id", id="task_id")
_BACKFILL_ID = Param("backfill_id", "int", "the backfill's id (as create_backfill or "
                     "list_backfills gives it)")


#: Airflow's own bound on a mapped task's instances is a setting
#: (``core.max_map_length``, 1,024 by default); this only keeps the number sane.
MAX_MAP_INDEX = 2**31 - 1
#: The highest try of a task (Airflow keeps it in a 32-bit column).
MAX_TRY_NUMBER = 2**31 - 1


def _note_created(**created: Any) -> None:
    """Name on the call's audit record what it made in Airflow."""
    trace = calltrace.current.get()
    if trace is not None:
        trace.created = created


def _check_id(method: str, kind: str, value: Any) -> str:
    problem = ids.id_problem(kind, value)
    if problem:
        raise errors.InvalidParams(problem, method)
    return value


def _options(
    method: str, name: str, value: dict[str, Any] | None, allowed: dict[str, str]
) -> dict[str, Any]:
    """Check an options struct against the XML-RPC types of its allowed keys."""
    if value is None:
        return {}
    for key, item in value.items():
        if key not in allowed:
            known = ", ".join(sorted(allowed))
            raise errors.InvalidParams(
                f"unknown key {key[:64]!r} in {name} (known: {known})", method
            )
        if item is None:
            continue
        types = allowed[key].split("|")
        if all(type_problem(t, item) for t in types):
            raise errors.InvalidParams(
                f"{name}.{key} must be {' or '.join(types)}", method
            )
    return {k: v for k, v in value.items() if v is not None}


def _choices(method: str, name: str, value: Any, allowed: tuple[str, ...]) -> list[str]:
    """
    A string or array of strings, each one of ``allowed``, as a list, each
    once (found by review: a value repeated 1,000 times went to Airflow's
    query string 1,000 times).
    """
    chosen = [value] if isinstance(value, str) else value
    if not all(isinstance(v, str) and v in allowed for v in chosen):
        raise errors.InvalidParams(f"{name} must be among {', '.join(allowed)}", method)
    return list(dict.fromkeys(chosen))


def _page(method: str, name: str, opts: dict[str, Any], default_limit: int) -> tuple[int, int]:
    limit = opts.get("limit", default_limit)
    offset = opts.get("offset", 0)
    if not 1 <= limit <= MAX_PAGE:
        raise errors.InvalidParams(f"{name}.limit must be from 1 to {MAX_PAGE}", method)
    if not 0 <= offset <= MAX_OFFSET:
        raise errors.InvalidParams(f"{name}.offset must be from 0 to {MAX_OFFSET}", method)
    return limit, offset


def _duration(window: timedelta) -> str:
    """A probe's window in words: ``hour``, ``day``, ``7 days``."""
    if window < timedelta(days=1):
        return "hour"
    return "day" if window.days == 1 else f"{window.days} days"


def _logical_date(method: str, value: Any, name: str = "options.logical_date") -> str:
    """
    An aware ISO-8601 time (or an XML-RPC dateTime, in its zone if it names
    one, else taken as UTC: `timefmt.parse_xmlrpc_time`) as UTC.
    """
    if isinstance(value, DateTime):
        found = timefmt.parse_xmlrpc_time(value.value)
        if found is None:
            raise errors.InvalidParams(f"{name} is not a valid dateTime", method)
        parsed = found
    else:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise errors.InvalidParams(
                f"{name} must be an ISO-8601 time, e.g. 2026-01-31T00:00:00Z", method,
            ) from None
        if parsed.tzinfo is None:
            raise errors.InvalidParams(
                f"{name} must carry a time zone (e.g. a trailing Z)", method
            )
    try:
        in_utc = parsed.astimezone(timezone.utc)
    except OverflowError:  # 0001-01-01T00:00:00+01:00 is before the year 1 in UTC
        raise errors.InvalidParams(f"{name} is out of range", method) from None
    return _as_sent(in_utc)


def _as_sent(moment: datetime) -> str:
    """A UTC datetime as Airflow is sent it: ISO-8601 with a trailing ``Z``."""
    return moment.isoformat().replace("+00:00", "Z")


#: A principal's name as a triggered run's note holds it: whole for every
#: name there is (a config entry's is at most 255 characters, an OIDC
#: caller's 64 + 1 + 255: `config.access.MAX_NAME`), so two callers never
#: share the note's claim to a run.
MAX_NAME_IN_NOTE = 400


def attribution(call: CallContext, note: str | None) -> str:
    """
    The note a triggered run carries in Airflow: who really asked, and the
    request id that finds the call on the audit trail, above the caller's
    own note.
    """
    line = f"{_attributed_to(call)}{call.request_id})"
    if not note:
        return line
    room = AIRFLOW_NOTE_LENGTH - len(line) - 2
    if len(note) > room:  # a long name: the caller's note gives way, marked, never the name
        note = note[:room - 1] + "\u2026"
    return f"{line}\n\n{note}"


#: How `attribution`'s line ends after the name: its request id.
_LINE_END = re.compile(REQUEST_ID_PATTERN + r"\)\Z")


def _triggered_by(run: dict[str, Any], call: CallContext) -> bool:
    """
    Whether ``run`` was triggered through the gateway by the caller: its
    note's first line is the whole line `attribution` writes for it, not
    merely one that starts alike (a name may hold `` (request ``, so
    ``corp/x (request y`` would otherwise pass for ``corp/x``).
    """
    first = _note_line(run)
    start = _attributed_to(call)
    return first.startswith(start) and _LINE_END.match(first, len(start)) is not None


def _made_by_this_call(run: dict[str, Any], call: CallContext) -> bool:
    """
    Whether ``run`` was made by this very call: its note's first line names
    the call's own request id (an attempt whose answer was lost made it).
    """
    return _note_line(run) == f"{_attributed_to(call)}{call.request_id})"


def _note_line(run: dict[str, Any]) -> str:
    """The first line of ``run``'s note: where `attribution` puts who triggered it."""
    note = run.get("note")
    return note.split("\n", 1)[0] if isinstance(note, str) else ""


def _same_logical_date(run: dict[str, Any], logical_date: str | None) -> bool:
    """Whether ``run`` has the logical date a trigger asked for (none asked: any)."""
    if logical_date is None:
        return True
    found = run.get("logical_date")
    try:
        return isinstance(found, str) and (
            timefmt.parse_iso(found) == timefmt.parse_iso(logical_date))
    except ValueError:
        return False


def _attributed_to(call: CallContext) -> str:
    """How a run's note starts when the caller triggered it: up to its request id."""
    name = getattr(call.principal, "name", "unknown")[:MAX_NAME_IN_NOTE]
    return f"Triggered through txairflowrpc by {name} (request "


def _same_conf(a: Any, b: Any) -> bool:
    """Whether two confs are the same JSON value (no conf is the empty one)."""
    return json_equal(a or {}, b or {})


def _clash(dag_id: str, logical_date: str | None) -> str:
    """What a trigger's 409 means when no run has the caller's run id."""
    if logical_date is not None:
        return f"DAG {dag_id!r} already has a run with logical_date {logical_date}"
    return f"Airflow refused the new run of DAG {dag_id!r} as a duplicate; retry it"


class AirflowMethods:
    """
    The methods that act on Airflow, plus ``ping`` and ``whoami``.

    :param accounts: which Airflow account (client and run watcher) each
        caller's calls use.
    :param max_wait: the cap on ``wait_dag_run``'s timeout, in seconds.
    :param max_backfill_runs: how many runs one backfill may create at most.
    :param max_backfill_days: how many days one backfill's range may span.
    :param clock: the time now (the reactor): a backfill's range must end by it.
    """

    def __init__(self, accounts: Accounts, max_wait: int, max_backfill_runs: int,
                 max_backfill_days: int, clock: IReactorTime) -> None:
        self._clock = clock
        self.accounts = accounts
        self.max_wait = max_wait
        self.max_backfill_runs = max_backfill_runs
        self.max_backfill_days = max_backfill_days

    def _account(self, call: CallContext) -> Account:
        """The caller's Airflow account, noted on its record."""
        account = self.accounts.for_principal(getattr(call.principal, "name", None))
        trace = calltrace.current.get()
        if trace is not None:
            trace.airflow_user = account.user
        return account

    def _client(self, call: CallContext) -> AirflowClient:
        return self._account(call).client

    @rpc_method("ping", "string", scope=AUTHENTICATED)
    def ping(self, call: CallContext) -> str:
        """Answer "pong": the gateway is up and the caller is authenticated."""
        return "pong"

    @rpc_method("whoami", "struct", scope=AUTHENTICATED)
    def whoami(self, call: CallContext) -> dict[str, Any]:
        """
        Who the gateway thinks the caller is: ``principal``, how it
        authenticated (``authenticated_by``) and, for a client certificate,
        its subject, SHA-256 fingerprint and expiry.
        """
        return call.principal.describe()

    @rpc_method(
        "list_dags", "struct",
        Param("filters", "struct",
              "pattern (string, case-insensitive substring with % and _ "
              "wildcards), tags (array of strings: DAGs with any of them), "
              "paused (boolean), limit (int 1-100, default 100), offset (int)",
              required=False, keeps=()),
        scope="dags:read", filtered=True,
    )
    def list_dags(self, call: CallContext, filters: dict[str, Any] | None = None) -> Deferred[Any]:
        """
        DAGs ordered by dag_id: ``dags`` (array of structs) and ``total``
        (how many match, for paging with limit and offset).
        """
        m = "list_dags"
        opts = _options(m, "filters", filters, {
            "pattern": "string", "tags": "array", "paused": "boolean",
            "limit": "int", "offset": "int",
        })
        limit, offset = _page(m, "filters", opts, MAX_PAGE)
        pattern = opts.get("pattern")
        if pattern is not None and (
            len(pattern) > ids.MAX_ID_LENGTH
            or not all(c.isascii() and (c.isalnum() or c in "_.-%") for c in pattern)
        ):
            raise errors.InvalidParams(
                "filters.pattern may contain only letters, digits and '_.-%'", m
            )
        tags = opts.get("tags", [])
        if len(tags) > MAX_TAGS or any(
            not isinstance(t, str) or not t or len(t) > 100 for t in tags
        ):
            raise errors.InvalidParams(
                f"filters.tags must be at most {MAX_TAGS} non-empty strings", m
            )
        grants = call.principal.grants
        if grants.allows_every_dag("dags:read"):
            return self._client(call).list_dags(
                pattern=pattern, tags=tags, paused=opts.get("paused"), limit=limit,
                offset=offset,
            )
        # Airflow is asked for the globs' common text (it matches
        # dag_id_pattern anywhere in the id, ignoring case: a superset), the
        # same for every call of this caller, so that calls share the scan;
        # the caller's pattern is applied here.  Found by review: patterns
        # sent instead ("%", "%%", "e", ...) each scanned up to 100 pages
        # that no other call shared.  Only where that scan would be cut off
        # (more DAGs than it reads) is a pattern that can only narrow it (it
        # holds the common text, or there is none) sent instead.
        prefix = grants.common_prefix("dags:read")
        narrow = prefix if prefix and all(
            c.isascii() and (c.isalnum() or c in "_.-") for c in prefix) else None
        wanted = Like(pattern) if pattern is not None else None
        narrower = None
        if wanted is not None and wanted.pattern and (
                narrow is None or narrow.lower() in wanted.pattern.lower()):  # both ILIKE
            narrower = wanted.pattern
        return Deferred.fromCoroutine(self._list_visible_dags(
            self._client(call), grants, wanted, narrow, narrower, tags=tags,
            paused=opts.get("paused"), limit=limit, offset=offset,
        ))

    async def _list_visible_dags(
        self, client: AirflowClient, grants: Any, wanted: Like | None, narrow: str | None,
        narrower: str | None, *, limit: int, offset: int, **filters: Any
    ) -> dict[str, Any]:
        """
        Only the DAGs the caller may read (and ``wanted`` matches), paged
        after filtering, so that neither the list nor ``total`` reveals the
        others.  Airflow is asked for ``narrow``, or for ``narrower`` if the
        first page says the scan would not reach the end.
        """
        visible: list[dict[str, Any]] = []
        page = 0
        asked = narrow
        while page < MAX_SCAN_PAGES:
            batch = await client.list_dags(limit=MAX_PAGE, offset=page * MAX_PAGE,
                                           pattern=asked, **filters)
            if (page == 0 and narrower is not None and asked != narrower
                    and batch["total"] > MAX_SCAN_PAGES * MAX_PAGE):
                asked = narrower  # the shared scan would be cut off: start again, narrower
                continue
            visible.extend(d for d in batch["dags"] if grants.allows("dags:read", d["dag_id"])
                           and (wanted is None or wanted.matches(d["dag_id"])))
            page += 1
            if page * MAX_PAGE >= batch["total"]:
                break
        return {"dags": visible[offset:offset + limit], "total": len(visible)}

    @rpc_method("get_dag", "struct", _DAG_ID, scope="dags:read", dag="dag_id")
    def get_dag(self, call: CallContext, dag_id: str) -> Deferred[Any]:
        """One DAG: dag_id, is_paused, tags, owners, schedule and more."""
        return self._client(call).get_dag(_check_id("get_dag", "dag_id", dag_id))

    @rpc_method("pause_dag", "struct", _DAG_ID, scope="dags:pause", dag="dag_id", changes=True)
    def pause_dag(self, call: CallContext, dag_id: str) -> Deferred[Any]:
        """Pause a DAG: no new runs are scheduled. Returns the DAG after the change."""
        return self._client(call).set_dag_paused(_check_id("pause_dag", "dag_id", dag_id), True)

    @rpc_method("unpause_dag", "struct", _DAG_ID, scope="dags:pause", dag="dag_id",
                changes=True)
    def unpause_dag(self, call: CallContext, dag_id: str) -> Deferred[Any]:
        """Unpause a DAG. Returns the DAG after the change."""
        dag_id = _check_id("unpause_dag", "dag_id", dag_id)
        return self._client(call).set_dag_paused(dag_id, False)

    @rpc_method(
        "trigger_dag", "struct", _DAG_ID,
        Param("conf", "struct", "the run's conf (plain JSON data, at most 64 KiB)",
              required=False),
        Param("options", "struct",
              "dag_run_id (string; makes the call idempotent), logical_date "
              "(ISO-8601 string with a time zone, or dateTime taken as UTC), "
              "note (string, at most 700 characters)", required=False,
              keeps=("dag_run_id", "logical_date")),
        scope="runs:trigger", dag="dag_id", conf="conf", changes=True,
    )
    async def trigger_dag(
        self, call: CallContext, dag_id: str, conf: dict[str, Any] | None = None,
        options: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """
        Start a run of a DAG. Returns the run, with ``created`` true. The run's
        note in Airflow names the caller and the request id, above the
        caller's own note (at most 700 characters).

        With a dag_run_id the call is idempotent: if that run exists with the
        same conf (and logical_date, if one is given), it is returned with
        ``created`` false and nothing is triggered; with another conf or
        logical_date the call is a 409 fault.  ``created`` is true for a run
        this call made, though Airflow's answer to it was lost or an error:
        with a dag_run_id, a failed trigger looks for the run before it fails.
        """
        m = "trigger_dag"
        _check_id(m, "dag_id", dag_id)
        conf = check_conf(m, conf or {})
        opts = _options(m, "options", options, {
            "dag_run_id": "string", "logical_date": "string|dateTime.iso8601", "note": "string",
        })
        run_id = opts.get("dag_run_id")
        if run_id is not None:
            _check_id(m, "dag_run_id", run_id)
        logical_date = opts.get("logical_date")
        if logical_date is not None:
            logical_date = _logical_date(m, logical_date)
        note = opts.get("note")
        if note is not None and len(note) > MAX_NOTE_LENGTH:
            raise errors.InvalidParams(
                f"options.note is longer than {MAX_NOTE_LENGTH} characters", m
            )
        client = self._client(call)
        #: Each time the request went to Airflow: with more than one, an
        #: earlier attempt may have made the run, its answer lost.
        attempts: list[None] = []
        try:
            run = await client.trigger_dag_run(
                dag_id, dag_run_id=run_id, conf=conf, logical_date=logical_date,
                note=attribution(call, note), attempts=attempts,
            )
        except (errors.UpstreamUnavailable, errors.UpstreamTimeout, errors.UpstreamError) as e:
            # Airflow answered a refusal (401/403, 429, 503), or was never
            # asked (the connection refused, no slot in time): nothing was made.
            refused = (isinstance(e, errors.UpstreamError) and e.status in (401, 403)) or (
                isinstance(e, errors.UpstreamUnavailable)
                and (e.status is not None or e.unsent))
            if run_id is None and not refused:
                # Airflow would have named the run: "retry later" would make a
                # second one (found by review).  What to do instead is said.
                cause = e.message.removesuffix("; retry later")
                raise errors.MayHaveBeenMade(cause, e.code) from None
            if run_id is None or (refused and len(attempts) <= 1):
                raise
            # The run may be there all the same: Airflow (or a proxy in front
            # of it) answered an error after making it, or an earlier attempt
            # of this call's made it and its answer was lost (found by review:
            # exit 5 for a run that was made).  If it cannot be looked up, or
            # is not there, the error stands.  (A refusal of the one attempt
            # made nothing: no lookup.)
            try:
                existing = await client.get_dag_run(dag_id, run_id)
            except errors.GatewayError:
                raise e from None
            return self._existing_run(call, dag_id, run_id, conf, logical_date, existing,
                                      made_here=True)
        except errors.Conflict:
            existing = None
            if run_id is not None:
                try:
                    existing = await client.get_dag_run(dag_id, run_id)
                except errors.NotFound:
                    pass  # the clash was not on the run id
            if existing is None:
                raise errors.Conflict(_clash(dag_id, logical_date)) from None
            return self._existing_run(call, dag_id, run_id, conf, logical_date, existing,
                                      made_here=len(attempts) > 1)
        if run_id is None:  # Airflow named the run: the record says which
            _note_created(dag_run_id=run.get("dag_run_id"))
        return {**run, "created": True}

    @staticmethod
    def _existing_run(
        call: CallContext, dag_id: str, run_id: str | None, conf: dict[str, Any],
        logical_date: str | None, existing: dict[str, Any], *, made_here: bool,
    ) -> dict[str, Any]:
        """
        A trigger's answer when its run id is taken: the run, if it is the
        one asked for (the same conf and logical date), ``created`` saying
        whether this call made it; else a 409 fault.  ``made_here``: an
        attempt of this call may have made it (an error, or a retry): then
        the run's note says (found by review: a multicall's two entries of
        one run share a request id, and both said created).
        """
        same_conf = _same_conf(existing.get("conf"), conf)
        same = same_conf and _same_logical_date(existing, logical_date)
        created = made_here and _made_by_this_call(existing, call)
        if not call.principal.grants.allows("runs:read", dag_id):
            # May not read runs: learns nothing of the existing one (its
            # state, dates, conf, note), not even whether a guessed conf
            # matches, unless the run is its own retried.
            if _triggered_by(existing, call) and same:
                return {"dag_id": dag_id, "dag_run_id": run_id, "created": created}
            raise errors.Conflict(f"run {run_id!r} of DAG {dag_id!r} already exists")
        if not same_conf:
            raise errors.Conflict(
                f"run {run_id!r} of DAG {dag_id!r} already exists with a different conf")
        if not same:
            raise errors.Conflict(
                f"run {run_id!r} of DAG {dag_id!r} already exists with another logical_date")
        return {**existing, "created": created}

    @rpc_method("get_dag_run", "struct", _DAG_ID, _RUN_ID, scope="runs:read", dag="dag_id")
    def get_dag_run(self, call: CallContext, dag_id: str, dag_run_id: str) -> Deferred[Any]:
        """One run: state, dates, conf, note, run_type."""
        m = "get_dag_run"
        return self._client(call).get_dag_run(
            _check_id(m, "dag_id", dag_id), _check_id(m, "dag_run_id", dag_run_id)
        )

    @rpc_method(
        "list_dag_runs", "struct", _DAG_ID,
        Param("filters", "struct",
              "state (string or array of: queued, running, success, failed), "
              "run_type (string or array of: manual, scheduled, backfill, "
              "asset_triggered, asset_materialization, operator_triggered), "
              "logical_date_from and logical_date_to (ISO-8601 with a time zone, or "
              "dateTime taken as UTC; both ends included), limit (int 1-100, default 25), "
              "offset (int)",
              required=False, keeps=("run_type", "logical_date_from", "logical_date_to")),
        scope="runs:read", dag="dag_id",
    )
    def list_dag_runs(
        self, call: CallContext, dag_id: str, filters: dict[str, Any] | None = None
    ) -> Deferred[Any]:
        """Runs of a DAG, newest first: ``dag_runs`` (array) and ``total``."""
        m = "list_dag_runs"
        _check_id(m, "dag_id", dag_id)
        opts = _options(m, "filters", filters, {
            "state": "string|array", "run_type": "string|array", "limit": "int",
            "offset": "int", "logical_date_from": "string|dateTime.iso8601",
            "logical_date_to": "string|dateTime.iso8601",
        })
        limit, offset = _page(m, "filters", opts, 25)
        states = _choices(m, "filters.state", opts.get("state", []), DAG_RUN_STATES)
        run_types = _choices(m, "filters.run_type", opts.get("run_type", []), DAG_RUN_TYPES)
        dates = {end: _logical_date(m, opts[f"logical_date_{end}"], f"filters.logical_date_{end}")
                 for end in ("from", "to") if f"logical_date_{end}" in opts}
        return self._client(call).list_dag_runs(
            dag_id, states=states, limit=limit, offset=offset, run_types=run_types,
            logical_from=dates.get("from"), logical_to=dates.get("to"))

    @rpc_method(
        "wait_dag_run", "struct", _DAG_ID, _RUN_ID,
        Param("timeout_seconds", "int",
              "how long to wait at most (default 60; capped by the gateway's "
              "rpc.max_wait_seconds)", required=False, default=60),
        scope="runs:read", dag="dag_id", deadline="timeout_seconds",
    )
    def wait_dag_run(
        self, call: CallContext, dag_id: str, dag_run_id: str, timeout_seconds: int = 60
    ) -> Deferred[Any]:
        """
        Wait until the run has finished (success or failed) or the timeout has
        passed. Returns the run with ``finished`` true if it ended, else its
        latest state with ``finished`` false.
        """
        m = "wait_dag_run"
        _check_id(m, "dag_id", dag_id)
        _check_id(m, "dag_run_id", dag_run_id)
        if timeout_seconds < 0:
            raise errors.InvalidParams("timeout_seconds must not be negative", m)
        watcher = self._account(call).watcher
        return watcher.wait(dag_id, dag_run_id, min(timeout_seconds, self.max_wait))

    @rpc_method(
        "set_dag_run_state", "struct", _DAG_ID, _RUN_ID,
        Param("state", "string", "success, failed or queued"),
        scope="runs:write", dag="dag_id", changes=True,
    )
    def set_dag_run_state(
        self, call: CallContext, dag_id: str, dag_run_id: str, state: str
    ) -> Deferred[Any]:
        """Mark a run success, failed or queued. Returns the run after the change."""
        m = "set_dag_run_state"
        _check_id(m, "dag_id", dag_id)
        _check_id(m, "dag_run_id", dag_run_id)
        if state not in SETTABLE_RUN_STATES:
            raise errors.InvalidParams(
                f"state must be one of {', '.join(SETTABLE_RUN_STATES)}", m
            )
        return self._client(call).set_dag_run_state(dag_id, dag_run_id, state)

    @rpc_method(
        "list_task_instances", "array", _DAG_ID, _RUN_ID, scope="runs:read", dag="dag_id"
    )
    def list_task_instances(
        self, call: CallContext, dag_id: str, dag_run_id: str
    ) -> Deferred[Any]:
        """The task instances of a run: task_id, state, try_number, dates."""
        m = "list_task_instances"
        return self._client(call).list_task_instances(
            _check_id(m, "dag_id", dag_id), _check_id(m, "dag_run_id", dag_run_id)
        )

    @rpc_method(
        "clear_task_instances", "struct", _DAG_ID, _RUN_ID,
        Param("options", "struct",
              "task_ids (array of strings; default all tasks of the run), "
              "only_failed (boolean, default false), dry_run (boolean, default "
              "false: the tasks really are cleared and re-run)", required=False, keeps=()),
        scope="tasks:clear", dag="dag_id", changes=True, dry_run="options.dry_run",
    )
    async def clear_task_instances(
        self, call: CallContext, dag_id: str, dag_run_id: str,
        options: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """
        Clear task instances of a run so that they run again. Returns
        ``task_instances`` (those cleared, or that would be with dry_run),
        ``total`` and ``dry_run``.
        """
        m = "clear_task_instances"
        _check_id(m, "dag_id", dag_id)
        _check_id(m, "dag_run_id", dag_run_id)
        opts = _options(m, "options", options, {
            "task_ids": "array", "only_failed": "boolean", "dry_run": "boolean",
        })
        task_ids = opts.get("task_ids")
        if task_ids is not None:
            if not task_ids or len(task_ids) > MAX_PAGE:
                raise errors.InvalidParams(
                    f"options.task_ids must hold 1 to {MAX_PAGE} task ids", m
                )
            for task_id in task_ids:
                _check_id(m, "task_id", task_id)
        dry_run = opts.get("dry_run", False)
        cleared = await self._client(call).clear_task_instances(
            dag_id, dag_run_id, task_ids=task_ids,
            only_failed=opts.get("only_failed", False), dry_run=dry_run,
        )
        return {"task_instances": cleared, "total": len(cleared), "dry_run": dry_run}

    @rpc_method(
        "get_task_log", "string", _DAG_ID, _RUN_ID, _TASK_ID,
        Param("try_number", "int", "which try (default: the latest)", required=False),
        Param("map_index", "int", "which instance of a mapped task, from 0 (default: the "
              "task is not mapped)", required=False),
        scope="logs:read", dag="dag_id",
    )
    async def get_task_log(
        self, call: CallContext, dag_id: str, dag_run_id: str, task_id: str,
        try_number: int | None = None, map_index: int | None = None,
    ) -> str:
        """
        The log of one try of a task instance, as text. A mapped task's
        instances are told apart by ``map_index`` (as `list_task_instances`
        gives it); leave ``try_number`` out (nil) for the latest try of one.
        """
        m = "get_task_log"
        _check_id(m, "dag_id", dag_id)
        _check_id(m, "dag_run_id", dag_run_id)
        _check_id(m, "task_id", task_id)
        if map_index is not None and not 0 <= map_index <= MAX_MAP_INDEX:
            raise errors.InvalidParams(
                f"map_index must be from 0 to {MAX_MAP_INDEX} (leave it out for a task "
                "that is not mapped)", m)
        if try_number is not None and not 1 <= try_number <= MAX_TRY_NUMBER:
            raise errors.InvalidParams(f"try_number must be from 1 to {MAX_TRY_NUMBER}", m)
        client = self._client(call)
        if try_number is None:
            try:
                ti = await client.get_task_instance(dag_id, dag_run_id, task_id, map_index)
            except errors.NotFound as e:
                if map_index is None:  # Airflow says only "not found" for a mapped task
                    raise errors.NotFound(f"{e.what} (if the task is mapped, its instance "
                                          "needs a map_index)") from None
                raise
            try_number = ti.get("try_number") or 0  # an int: the shape says so
            if try_number < 1:
                raise errors.NotFound(
                    f"log of task {task_id!r}{ids.mapped(map_index)} in run {dag_run_id!r}: "
                    "the task has not run yet"
                )
        return await client.get_task_log(dag_id, dag_run_id, task_id, try_number, map_index)

    # -- backfills -----------------------------------------------------------

    @rpc_method(
        "create_backfill", "struct", _DAG_ID,
        Param("from_date", "string", "the first logical date to run, ISO-8601 with a time "
              "zone (or a dateTime, taken as UTC)", date=True),
        Param("to_date", "string", "the last logical date to run, ISO-8601 with a time zone "
              "(or a dateTime, taken as UTC)", date=True),
        Param("conf", "struct", "every run's conf (plain JSON data, at most 64 KiB)",
              required=False),
        Param("options", "struct",
              "reprocess_behavior (none, failed or completed: which runs the range "
              "already has are run again; default none), run_backwards (boolean), "
              "max_active_runs (int 1-1000, default 10), dry_run (boolean: only say "
              "which runs it would create)", required=False, keeps=("reprocess_behavior",)),
        scope="runs:backfill", dag="dag_id", conf="conf", changes=True,
        dry_run="options.dry_run",
        # Airflow clears the range's existing runs (scheduled, triggered by
        # anyone) and gives them this conf: what tasks:clear is for.
        option_scopes=(("options.reprocess_behavior", "tasks:clear", ("none",)),),
    )
    async def create_backfill(
        self, call: CallContext, dag_id: str, from_date: str | DateTime, to_date: str | DateTime,
        conf: dict[str, Any] | None = None, options: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """
        Run a scheduled DAG for every logical date it has from from_date to
        to_date. Returns the backfill (``id``, ``is_paused``, ``completed``...)
        and ``runs``: how many runs the dry run counted. With dry_run nothing is
        created: ``runs`` and ``logical_dates`` say what would be. A backfill
        that would create more runs than the gateway's rpc.max_backfill_runs
        is refused, and a DAG has at most one backfill that has not completed.
        A reprocess_behavior other than none runs existing runs of the range
        again, with this conf: it needs the tasks:clear scope on the DAG too.
        """
        m = "create_backfill"
        _check_id(m, "dag_id", dag_id)
        first = _logical_date(m, from_date, "from_date")
        last = _logical_date(m, to_date, "to_date")
        end = datetime.fromisoformat(last)
        span = end - datetime.fromisoformat(first)
        if span < timedelta(0):
            raise errors.InvalidParams("from_date is after to_date", m)
        now = timefmt.utc(self._clock.seconds())
        if end > now + FUTURE_SLACK:
            # Found by review: the walk up to a to_date years ahead was not
            # bounded by what the range's past holds.
            raise errors.InvalidParams(
                "to_date is in the future: a backfill runs the dates that have passed "
                f"(end the range by {now + FUTURE_SLACK:%Y-%m-%dT%H:%M}Z, an hour from now)", m)
        if span > timedelta(days=self.max_backfill_days):
            # Airflow walks every interval of the range, in one request, and
            # goes on after the gateway has given up waiting (found by review).
            raise errors.InvalidParams(
                f"the range spans more than {self.max_backfill_days} days (the gateway's "
                "rpc.max_backfill_days): Airflow walks each of its intervals; split it", m)
        if conf is not None:
            conf = check_conf(m, conf)
        opts = _options(m, "options", options, {
            "reprocess_behavior": "string", "run_backwards": "boolean",
            "max_active_runs": "int", "dry_run": "boolean",
        })
        reprocess = opts.get("reprocess_behavior", "none")
        if reprocess not in REPROCESS_BEHAVIORS:
            raise errors.InvalidParams(
                f"options.reprocess_behavior must be one of {', '.join(REPROCESS_BEHAVIORS)}", m)
        max_active = opts.get("max_active_runs", 10)
        if not 1 <= max_active <= MAX_ACTIVE_BACKFILL_RUNS:
            raise errors.InvalidParams(
                f"options.max_active_runs must be from 1 to {MAX_ACTIVE_BACKFILL_RUNS}", m)
        client = self._client(call)
        what = {"from_date": first, "to_date": last, "conf": conf,
                "run_backwards": opts.get("run_backwards", False),
                "reprocess_behavior": reprocess}
        await self._walk_bounded(m, client, dag_id, span, what)
        # Airflow creates every run of a backfill at once, in the request:
        # count them first, so that no caller floods its database.
        runs = await client.backfill_dry_run(dag_id, **what)
        if opts.get("dry_run", False):
            return {"dag_id": dag_id, "runs": len(runs),
                    "logical_dates": runs[:self.max_backfill_runs],
                    "max_runs": self.max_backfill_runs, "dry_run": True}
        if not runs:
            # Airflow would create an empty backfill (blocking the DAG's next
            # one until it completes) when each date of the range has a run.
            raise errors.InvalidParams(
                f"the range holds no run of DAG {dag_id!r} to create: none is scheduled "
                f"there, or {errors.NOTHING_LEFT_TO_BACKFILL} (see options.reprocess_behavior)",
                m)
        if len(runs) > self.max_backfill_runs:
            raise errors.InvalidParams(
                f"the backfill would create {len(runs)} runs of DAG {dag_id!r}, more than "
                f"the gateway allows in one ({self.max_backfill_runs}): split the range", m)
        backfill = await client.create_backfill(dag_id, max_active_runs=max_active, **what)
        _note_created(backfill_id=backfill["id"])
        return {**backfill, "runs": len(runs)}

    async def _walk_bounded(self, m: str, client: AirflowClient, dag_id: str, span: timedelta,
                            what: dict[str, Any]) -> None:
        """
        Refuse a range whose every interval Airflow would walk, one query
        each, past what it walks for the most runs a backfill may create
        (found by review: a dense schedule over years made it walk millions,
        in one request, on after the gateway stopped waiting).  The DAG's
        intervals in windows at the range's start (`PROBES`; a dry run that
        runs every ended run again counts them, the runs queued or running
        there are the rest) tell how many it holds: the
        intervals between a window's first and its last, stretched over the
        range (a window shorter than the schedule's period holds one: no
        estimate).  A schedule empty at the range's start and dense later is
        estimated low (weekdays only, from a Saturday: the week's probe sees
        them; a month-end burst: rpc.max_backfill_days bounds it).
        """
        first = datetime.fromisoformat(what["from_date"])
        allowed = WALK_FACTOR * self.max_backfill_runs
        for window in PROBES:
            if span <= window:
                return
            # Both ends of a range are in it: the window ends a microsecond early.
            until = _as_sent(first + window - timedelta(microseconds=1))
            probe = {**what, "to_date": until, "reprocess_behavior": "completed",
                     "run_backwards": False}
            seen = len(await client.backfill_dry_run(dag_id, **probe))
            # Airflow walks a queued or running run's interval too but never
            # counts it, whatever the reprocess_behavior (found by review: a
            # backfill under way hid its week from the probes).
            busy = await client.list_dag_runs(dag_id, states=["queued", "running"], limit=1,
                                              offset=0, logical_from=what["from_date"],
                                              logical_to=until)
            seen += busy["total"]
            estimate = int(max(seen - 1, 0) * (span / window))
            if estimate > allowed:
                raise errors.InvalidParams(
                    f"the range holds about {estimate} intervals of the schedule of DAG "
                    f"{dag_id!r} ({seen} in its first {_duration(window)}), each of which "
                    f"Airflow walks to count the runs; the gateway allows {allowed} "
                    f"({WALK_FACTOR} x rpc.max_backfill_runs): split the range", m)

    async def _backfill_of(self, m: str, call: CallContext, dag_id: str,
                           backfill_id: int) -> dict[str, Any]:
        """The backfill, if it is one of ``dag_id``'s (the caller's scope is on the DAG)."""
        _check_id(m, "dag_id", dag_id)
        if not 0 <= backfill_id <= MAX_BACKFILL_ID:
            raise errors.InvalidParams(f"backfill_id must be from 0 to {MAX_BACKFILL_ID}", m)
        try:
            backfill = await self._client(call).get_backfill(backfill_id)
        except errors.NotFound:
            backfill = None
        if backfill is None or backfill["dag_id"] != dag_id:
            # Another DAG's backfill is as absent as one that never was.
            raise errors.NotFound(f"backfill {backfill_id} of DAG {dag_id!r}")
        return backfill

    @rpc_method("get_backfill", "struct", _DAG_ID, _BACKFILL_ID, scope="runs:read",
                dag="dag_id")
    async def get_backfill(
        self, call: CallContext, dag_id: str, backfill_id: int
    ) -> dict[str, Any]:
        """One backfill of a DAG: its range, conf, is_paused, completed and dates."""
        return await self._backfill_of("get_backfill", call, dag_id, backfill_id)

    @rpc_method(
        "list_backfills", "struct", _DAG_ID,
        Param("filters", "struct", "limit (int 1-100, default 25), offset (int)",
              required=False, keeps=()),
        scope="runs:read", dag="dag_id",
    )
    def list_backfills(
        self, call: CallContext, dag_id: str, filters: dict[str, Any] | None = None
    ) -> Deferred[Any]:
        """Backfills of a DAG, newest first: ``backfills`` (array) and ``total``."""
        m = "list_backfills"
        _check_id(m, "dag_id", dag_id)
        opts = _options(m, "filters", filters, {"limit": "int", "offset": "int"})
        limit, offset = _page(m, "filters", opts, 25)
        return self._client(call).list_backfills(dag_id, limit=limit, offset=offset)

    async def _change_backfill(self, m: str, call: CallContext, dag_id: str,
                               backfill_id: int, action: str) -> dict[str, Any]:
        await self._backfill_of(m, call, dag_id, backfill_id)
        return await self._client(call).change_backfill(backfill_id, action)

    @rpc_method("pause_backfill", "struct", _DAG_ID, _BACKFILL_ID, scope="runs:backfill",
                dag="dag_id", changes=True)
    async def pause_backfill(
        self, call: CallContext, dag_id: str, backfill_id: int
    ) -> dict[str, Any]:
        """Pause a backfill: it starts no more runs. Returns the backfill after the change."""
        return await self._change_backfill("pause_backfill", call, dag_id, backfill_id, "pause")

    @rpc_method("unpause_backfill", "struct", _DAG_ID, _BACKFILL_ID, scope="runs:backfill",
                dag="dag_id", changes=True)
    async def unpause_backfill(
        self, call: CallContext, dag_id: str, backfill_id: int
    ) -> dict[str, Any]:
        """Let a paused backfill start runs again. Returns the backfill after the change."""
        return await self._change_backfill("unpause_backfill", call, dag_id, backfill_id, "unpause")

    @rpc_method("cancel_backfill", "struct", _DAG_ID, _BACKFILL_ID, scope="runs:backfill",
                dag="dag_id", changes=True)
    async def cancel_backfill(
        self, call: CallContext, dag_id: str, backfill_id: int
    ) -> dict[str, Any]:
        """
        Cancel a backfill: its queued runs fail, running ones finish, and it
        completes. Returns the backfill after the change.
        """
        return await self._change_backfill("cancel_backfill", call, dag_id, backfill_id, "cancel")
