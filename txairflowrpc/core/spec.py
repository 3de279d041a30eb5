"""
How a method is described: its parameters, signatures, help, and the facts
about it that the generic layers need.

A `MethodSpec` is the single source for checking a call's arity and types,
for ``system.methodSignature`` and ``system.methodHelp``, and for what the
dispatcher, the policy and the audit trail must know of a method: which
parameter names the DAG, which carries a conf, which extends the deadline,
which parameters are ids and which option members the audit record keeps.
Those layers read the spec, never a method's name, so adding a method
touches only the method and its spec.

Handlers are declared with `rpc_method`; they receive a `CallContext` and
the checked positional arguments, with omitted optional ones absent.
"""

from __future__ import annotations

import collections
import inspect
import itertools
import os
import secrets
from typing import Any, Callable
from xmlrpc.client import DateTime

import attrs

from . import errors, ids

#: The scope of a method open to any authenticated caller.
AUTHENTICATED = ""

_PY_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "int": (int,),
    "boolean": (bool,),
    "struct": (dict,),
    "array": (list,),
    "double": (float, int),
    "dateTime.iso8601": (DateTime,),
}


def _a_date(param: "Param", value: object) -> bool:
    """A dateTime where a date parameter is declared as a string (both are taken)."""
    return param.date and isinstance(value, DateTime)


def _accepted(param: Param) -> tuple[str, ...]:
    """The XML-RPC types ``param`` takes, its declared one first."""
    return (param.type, "dateTime.iso8601") if param.date else (param.type,)


def type_problem(xmlrpc_type: str, value: object) -> bool:
    """True if ``value`` is not of the XML-RPC type ``xmlrpc_type``."""
    if xmlrpc_type == "int" and isinstance(value, bool):
        return True
    return not isinstance(value, _PY_TYPES[xmlrpc_type])


@attrs.frozen
class Param:
    """One parameter: its name, XML-RPC type, help, and what it is."""

    name: str
    type: str
    doc: str
    required: bool = True
    #: What the method uses when the caller leaves the parameter out.
    default: Any = None
    #: For an id: its kind in `txairflowrpc.core.ids` (``dag_id``,
    #: ``dag_run_id``, ``task_id``); recorded as it is on the audit trail.
    id: str | None = None
    #: A date: ISO-8601 text, or an XML-RPC dateTime (taken as UTC) where
    #: the type is ``string``; recorded as given among the call's arguments
    #: when it is one, as a digest like any free text otherwise.
    date: bool = False
    #: Set for an options struct, whose audit record is kept member by
    #: member: the members whose strings are kept as they are (clipped);
    #: other strings and structs become digests.  None: the value is
    #: recorded whole, as a digest (a conf, a free text).
    keeps: tuple[str, ...] | None = None

    @property
    def option_ids(self) -> tuple[str, ...]:
        """
        The members of an options struct that are ids (those it keeps named
        by an id kind, such as trigger_dag's ``options.dag_run_id``): checked
        with the id parameters, and recorded as the call's ids.
        """
        return tuple(k for k in self.keeps if k in ids.KINDS) if self.keeps else ()


#: What every request id looks like (`new_request_id`): in records, faults and run notes.
REQUEST_ID_PATTERN = "[0-9a-f]{16}"


#: Request ids drawn from the system's randomness at once: one ``getrandom``
#: per this many calls rather than one per call (a system call on every
#: call's path, on which the reactor lets go of the GIL).
REQUEST_IDS_PER_DRAW = 256
_request_ids: collections.deque[str] = collections.deque()
# A forked child must not hand out the ids its parent will.
os.register_at_fork(after_in_child=_request_ids.clear)


def new_request_id() -> str:
    """
    A fresh request id, matching `REQUEST_ID_PATTERN`: 64 bits from the
    system's randomness, as ``secrets.token_hex(8)`` gives, taken from a
    draw of `REQUEST_IDS_PER_DRAW` (each handed out once; safe from threads).
    """
    while True:
        try:
            return _request_ids.popleft()
        except IndexError:
            drawn = secrets.token_hex(8 * REQUEST_IDS_PER_DRAW)
            _request_ids.extend(drawn[i:i + 16] for i in range(0, len(drawn), 16))


@attrs.frozen
class CallContext:
    """What the pipeline knows of one call: who, which HTTP request, from where."""

    principal: Any
    request_id: str
    peer: str = ""


@attrs.frozen
class MethodSpec:
    name: str
    params: tuple[Param, ...]
    returns: str
    doc: str
    handler: Callable[..., Any] = attrs.field(eq=False, repr=False)
    #: The scope a caller needs ("runs:trigger"), "" for any authenticated
    #: caller, None for nobody (deny by default).
    scope: str | None = None
    #: The parameter naming the DAG the call acts on: the scope's DAG glob
    #: is matched against it.  None: the call names no one DAG.
    dag: str | None = None
    #: The parameter holding a run's conf, checked against the conf rules
    #: of the caller's roles.
    conf: str | None = None
    #: A parameter whose value, in seconds, extends the call's deadline.
    deadline: str | None = None
    #: The method returns only what the caller's scope covers, so the
    #: policy asks only for the scope on some DAG.
    filtered: bool = False
    #: The call changes Airflow (a run, a DAG's state, task instances):
    #: once on its way it is never cancelled because the caller went away.
    changes: bool = False
    #: ``"param.member"``: an option that, when true, makes the call a dry
    #: run that changes nothing.
    dry_run: str | None = None
    #: ``(("param.member", scope, harmless values), ...)``: an option that,
    #: given with any other value, needs ``scope`` on the DAG as well.
    option_scopes: tuple[tuple[str, str, tuple[Any, ...]], ...] = ()

    def scopes_for_options(self, args: tuple[Any, ...]) -> list[tuple[str, str]]:
        """The (option, scope) pairs the options in checked ``args`` need besides `scope`."""
        needed = []
        for path, scope, harmless in self.option_scopes:
            value = self._option(path, args)
            if value is not None and not any(
                    type(value) is type(h) and value == h for h in harmless):
                needed.append((path, scope))
        return needed

    def changes_airflow(self, args: tuple[Any, ...]) -> bool:
        """Whether a call with checked ``args`` changes Airflow."""
        if not self.changes:
            return False
        return self.dry_run is None or self._option(self.dry_run, args) is not True

    def _option(self, path: str, args: tuple[Any, ...]) -> Any:
        """The member ``"param.member"`` of an options struct in checked ``args``, or None."""
        param, _, member = path.partition(".")
        options = self.value(param, args)
        return options.get(member) if isinstance(options, dict) else None

    def value(self, name: str, args: tuple[Any, ...]) -> Any:
        """The value of parameter ``name`` in checked ``args``, or its default."""
        for param, value in zip(self.params, args):
            if param.name == name:
                return param.default if value is None else value
        for param in self.params:
            if param.name == name:
                return param.default
        raise KeyError(name)

    def signatures(self) -> list[list[str]]:
        """
        One signature per accepted number of parameters and, where a date
        parameter takes a string or a dateTime, per type it takes.
        """
        required = sum(p.required for p in self.params)
        return [
            [self.returns, *types]
            for n in range(required, len(self.params) + 1)
            for types in itertools.product(*(_accepted(p) for p in self.params[:n]))
        ]

    def help(self) -> str:
        lines = [f"{self.name}({', '.join(self._param_names())}) -> {self.returns}", ""]
        lines.append(self.doc.strip())
        if self.scope:
            lines.append("")
            lines.append(f"Needs scope {self.scope} (on the DAG, where it names one).")
            for path, scope, _ in self.option_scopes:
                lines.append(f"{path} other than the default also needs scope {scope}.")
        if self.params:
            lines.append("")
            lines.append("Parameters:")
            for p in self.params:
                opt = "" if p.required else ", optional"
                lines.append(f"  {p.name} ({p.type}{opt}): {p.doc}")
        return "\n".join(lines)

    def _param_names(self) -> list[str]:
        return [p.name if p.required else f"[{p.name}]" for p in self.params]

    def check(self, args: tuple[Any, ...]) -> tuple[Any, ...]:
        """
        The arguments, checked for arity and type.

        An optional parameter given as nil (``<nil/>``, or a ``<param>``
        with no value) means its default, in any position; so does an empty
        array or an empty string where an optional struct is expected
        (PHP's xmlrpc-epi sends an empty struct as an empty array and null
        as an empty string; Node's ``undefined`` is an empty string too).  Omitted trailing optionals are dropped, so
        the handler's defaults apply; one omitted before others is passed
        as its declared default (None if it has none).

        Ids (parameters with an ``id`` kind, and the members of an options
        struct that its ``keeps`` names by an id kind, such as trigger_dag's
        ``options.dag_run_id``) are validated here, before the call is
        authorised: a hostile id is refused without being echoed, recorded
        as an id or matched against anything.

        Raises `errors.InvalidParams` naming the parameter at fault.
        """
        required = sum(p.required for p in self.params)
        if not required <= len(args) <= len(self.params):
            expected = (
                str(required) if required == len(self.params)
                else f"{required} to {len(self.params)}"
            )
            names = ", ".join(self._param_names()) or "no parameters"
            raise errors.InvalidParams(
                f"expects {expected} parameter(s) ({names}), got {len(args)}", self.name
            )
        checked: list[Any] = []
        for param, value in zip(self.params, args):
            if not param.required and param.type == "struct" and (value == [] or value == ""):
                value = None  # PHP's empty struct, and PHP's null or Node's undefined
            if value is None:
                if param.required:
                    raise errors.InvalidParams(
                        f"parameter {param.name!r} is required (got nil)", self.name
                    )
                checked.append(None)
                continue
            if type_problem(param.type, value) and not _a_date(param, value):
                raise errors.InvalidParams(
                    f"parameter {param.name!r} must be {_article(param.type)}", self.name
                )
            if param.id is not None:
                problem = ids.id_problem(param.id, value)
                if problem is not None:
                    raise errors.InvalidParams(problem, self.name)
            for kind in param.option_ids:  # an id given as an option member
                if isinstance(value, dict) and value.get(kind) is not None:
                    problem = ids.id_problem(kind, value[kind])
                    if problem is not None:
                        raise errors.InvalidParams(f"{param.name}.{problem}", self.name)
            checked.append(value)
        while checked and checked[-1] is None:
            checked.pop()
        return tuple(
            param.default if value is None else value
            for param, value in zip(self.params, checked)
        )


def _article(xmlrpc_type: str) -> str:
    return f"an {xmlrpc_type}" if xmlrpc_type[0] in "aeiou" else f"a {xmlrpc_type}"


def rpc_method(
    name: str, returns: str, *params: Param, scope: str | None = None, **facts: Any
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """
    Mark a handler as the XML-RPC method ``name``; its docstring is the help.
    ``scope`` is what a caller needs (see `txairflowrpc.identity.scopes`);
    ``facts`` are the other `MethodSpec` fields (``dag``, ``conf``, ...).
    """
    fields = attrs.fields_dict(MethodSpec)
    for fact, value in facts.items():
        if fact not in fields or fact in ("name", "params", "returns", "doc", "handler"):
            raise TypeError(f"unknown method fact {fact!r}")
        if fact in ("dag", "conf", "deadline") and value not in {p.name for p in params}:
            raise TypeError(f"{name}: {fact}={value!r} names no parameter")

    def mark(handler: Callable[..., Any]) -> Callable[..., Any]:
        handler.__rpc__ = (name, returns, params, {"scope": scope, **facts})  # type: ignore[attr-defined]
        return handler

    return mark


def collect(obj: object) -> dict[str, MethodSpec]:
    """The `MethodSpec` of every handler of ``obj`` marked with `rpc_method`."""
    specs = {}
    for attr in dir(type(obj)):
        marked = getattr(getattr(type(obj), attr), "__rpc__", None)
        if marked is None:
            continue
        name, returns, params, facts = marked
        handler = getattr(obj, attr)
        specs[name] = MethodSpec(
            name=name, params=params, returns=returns,
            doc=inspect.cleandoc(handler.__doc__ or name), handler=handler, **facts,
        )
    return specs
