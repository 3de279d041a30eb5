"""
Who may call what: the decision for each call.

Deny by default.  ``ping``, ``whoami`` and ``system.*`` need only an
authenticated caller; every other method names, on its `MethodSpec`, the
scope it needs, and a method that names none is refused.  The spec also
says which parameter names the DAG (matched against the scope's glob),
which carries a conf (checked against the roles' conf rules), which options
need a second scope on the DAG when given (``option_scopes``), and whether
the method filters its own answer by scope.
"""

from __future__ import annotations

from typing import Any

from ..core import errors
from ..core.jsonvalues import check_conf
from ..core.spec import AUTHENTICATED, CallContext, MethodSpec
from .scopes import Grants


class ScopePolicy:
    """Authorises each call from the caller's `Grants` and the method's scope."""

    def authorize(self, call: CallContext, spec: MethodSpec, args: tuple[Any, ...]) -> None:
        principal = call.principal
        if principal is None:
            raise errors.Forbidden(spec.name, "the caller is not authenticated")
        if spec.scope == AUTHENTICATED:
            return
        if spec.scope is None:
            raise errors.Forbidden(spec.name, "this method is not open to callers")
        grants: Grants = principal.grants
        if spec.filtered:
            if not grants.has_any(spec.scope):
                raise errors.Forbidden(spec.name, f"requires scope {spec.scope}")
            return  # the method answers only with what the scope covers
        dag_id = spec.value(spec.dag, args) if spec.dag is not None else None
        if not grants.allows(spec.scope, dag_id):
            needed = spec.scope if dag_id is None else f"{spec.scope}:{dag_id}"
            raise errors.Forbidden(spec.name, f"requires scope {needed}")
        for option, scope in spec.scopes_for_options(args):
            if not grants.allows(scope, dag_id):
                needed = scope if dag_id is None else f"{scope}:{dag_id}"
                raise errors.Forbidden(spec.name, f"{option} other than the default "
                                                  f"requires scope {needed}")
        if spec.conf is not None and dag_id is not None:
            conf = spec.value(spec.conf, args)
            if isinstance(conf, dict):  # within the caps before any rule works on it
                check_conf(spec.name, conf)
            problem = grants.conf_problem(
                spec.scope, dag_id, conf if isinstance(conf, dict) else {}
            )
            if problem is not None:
                raise errors.Forbidden(spec.name, f"conf refused: {problem}")
