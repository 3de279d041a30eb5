"""
How a method is described: its parameters, signatures and help.

A `MethodSpec` is the single source for checking a call's arity and types,
for ``system.methodSignature`` and for ``system.methodHelp``.  Handlers
are declared with `rpc_method`; they receive a `CallContext` and the
checked positional arguments, with omitted optional ones absent.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable
from xmlrpc.client import DateTime

import attrs

from . import errors

_PY_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "int": (int,),
    "boolean": (bool,),
    "struct": (dict,),
    "array": (list,),
    "double": (float, int),
    "dateTime.iso8601": (DateTime,),
}


def type_problem(xmlrpc_type: str, value: object) -> bool:
    """True if ``value`` is not of the XML-RPC type ``xmlrpc_type``."""
    if xmlrpc_type == "int" and isinstance(value, bool):
        return True
    return not isinstance(value, _PY_TYPES[xmlrpc_type])


@attrs.frozen
class Param:
    name: str
    type: str
    doc: str
    required: bool = True


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

    def signatures(self) -> list[list[str]]:
        """One signature per accepted number of parameters."""
        required = sum(p.required for p in self.params)
        return [
            [self.returns, *(p.type for p in self.params[:n])]
            for n in range(required, len(self.params) + 1)
        ]

    def help(self) -> str:
        lines = [f"{self.name}({', '.join(self._param_names())}) -> {self.returns}", ""]
        lines.append(self.doc.strip())
        if self.scope:
            lines.append("")
            lines.append(f"Needs scope {self.scope} (on the DAG, where it names one).")
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
        The arguments, checked for arity and type, with trailing omitted
        optionals (and ``<nil/>`` given for an optional) dropped.

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
        checked = list(args)
        for i, (param, value) in enumerate(zip(self.params, args)):
            if value is None and not param.required:
                checked[i] = None
                continue
            if type_problem(param.type, value):
                raise errors.InvalidParams(
                    f"parameter {param.name!r} must be {_article(param.type)}", self.name
                )
        while checked and checked[-1] is None:
            checked.pop()
        if None in checked:
            raise errors.InvalidParams(
                "an omitted (nil) optional parameter may not be followed by others",
                self.name,
            )
        return tuple(checked)


def _article(xmlrpc_type: str) -> str:
    return f"an {xmlrpc_type}" if xmlrpc_type[0] in "aeiou" else f"a {xmlrpc_type}"


def rpc_method(
    name: str, returns: str, *params: Param, scope: str | None = None
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """
    Mark a handler as the XML-RPC method ``name``; its docstring is the help.
    ``scope`` is what a caller needs (see `txairflowrpc.policy`).
    """

    def mark(handler: Callable[..., Any]) -> Callable[..., Any]:
        handler.__rpc__ = (name, returns, params, scope)  # type: ignore[attr-defined]
        return handler

    return mark


def collect(obj: object) -> dict[str, MethodSpec]:
    """The `MethodSpec` of every handler of ``obj`` marked with `rpc_method`."""
    specs = {}
    for attr in dir(type(obj)):
        marked = getattr(getattr(type(obj), attr), "__rpc__", None)
        if marked is None:
            continue
        name, returns, params, scope = marked
        handler = getattr(obj, attr)
        specs[name] = MethodSpec(
            name=name, params=params, returns=returns,
            doc=inspect.cleandoc(handler.__doc__ or name), handler=handler, scope=scope,
        )
    return specs
