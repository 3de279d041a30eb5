"""
What callers may do: scopes, roles, grants, and the guardrails on ``conf``.

A scope is ``family:action`` with an optional DAG glob,
``runs:trigger:etl_*``; without a glob it covers every DAG.  Roles are
named sets of scopes (plus ``conf`` rules), built from the config's
``[roles]`` by `build_roles`; a principal's `Grants` are the union of its
roles.  `txairflowrpc.identity.policy` applies them to each call.

A role may constrain the ``conf`` a principal passes to the DAGs matching a
glob with a JSON Schema (checked by the ``jsonschema`` library, its patterns
searched with ASCII classes: `confschema.PATTERN_FLAGS`).  A trigger
is allowed if any role that grants it either has no rule for that DAG or
has one the conf satisfies; otherwise it is refused naming the key and the
rule.
"""

from __future__ import annotations

import re
from fnmatch import fnmatchcase
from os.path import commonprefix
from typing import Any

import attrs
import jsonschema

from ..config import AccessConfig, ConfigError
from . import confschema

#: Where a glob stops being literal text.
_GLOB_SPECIAL = re.compile(r"[*?\[]")

#: Every scope there is, and what it lets a caller do.
SCOPES = {
    "dags:read": "list_dags (only matching DAGs are listed), get_dag",
    "dags:pause": "pause_dag, unpause_dag",
    "runs:trigger": "trigger_dag",
    "runs:read": "get_dag_run, list_dag_runs, wait_dag_run, list_task_instances, "
                 "get_backfill, list_backfills",
    "runs:backfill": "create_backfill, pause_backfill, unpause_backfill, cancel_backfill",
    "runs:write": "set_dag_run_state",
    "tasks:clear": "clear_task_instances",
    "logs:read": "get_task_log",
}


@attrs.frozen
class Scope:
    name: str  # e.g. "runs:trigger"
    glob: str  # "*" when the scope named no glob

    @classmethod
    def parse(cls, text: str) -> "Scope":
        """Raises ValueError naming what is wrong."""
        parts = text.split(":", 2)
        name = ":".join(parts[:2])
        if name not in SCOPES:
            raise ValueError(f"unknown scope {text!r} (known: {', '.join(SCOPES)})")
        glob = parts[2] if len(parts) == 3 else "*"
        if not glob or not all(c.isalnum() or c in "_.-*?[]!" for c in glob):
            raise ValueError(f"scope {text!r} has a bad DAG glob")
        return cls(name, glob)

    def covers(self, name: str, dag_id: str | None) -> bool:
        return self.name == name and (
            self.glob == "*" or (dag_id is not None and fnmatchcase(dag_id, self.glob))
        )

    def __str__(self) -> str:
        return self.name if self.glob == "*" else f"{self.name}:{self.glob}"


@attrs.frozen
class ConfRule:
    """A JSON Schema the conf of DAGs matching ``dags`` must satisfy."""

    dags: str
    schema: dict[str, Any] = attrs.field(eq=False)
    validator: Any = attrs.field(eq=False, repr=False)

    @classmethod
    def build(cls, dags: str, schema: dict[str, Any]) -> "ConfRule":
        """
        Raises ValueError if ``schema`` is not a valid JSON Schema or holds
        what would check nothing (`confschema.build`).
        """
        return cls(dags, schema, confschema.build(schema))

    def violation(self, conf: dict[str, Any]) -> str | None:
        """
        What in ``conf`` breaks this rule, or None.  A conf the validator
        cannot check (it raised) breaks it: deny by default.
        """
        try:
            error = jsonschema.exceptions.best_match(self.validator.iter_errors(conf))
        except Exception as e:  # noqa: BLE001 -- any failure to check is a refusal
            return f"conf: cannot be checked against the rules ({type(e).__name__})"
        if error is None:
            return None
        where = "conf" + "".join(
            f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path
        )
        rule = error.validator
        if rule == "additionalProperties":
            # The keys the rule itself left over (patternProperties matched as it matches).
            extra = sorted(confschema.additional_keys(error.instance, error.schema))
            return f"{where}: key {extra[0][:64]!r} is not allowed (rule additionalProperties)"
        if rule == "required":
            return f"{where}: {error.message} (rule required)"
        return f"{where}: violates rule {rule} = {_shown(error.validator_value)}"


def _shown(value: Any) -> str:
    """
    A rule's value as a fault names it: a pattern as it is written in the
    config (a TOML literal string), not as Python's repr doubles its
    backslashes (found by a newcomer); anything else as repr.
    """
    if isinstance(value, str) and "'" not in value and value.isprintable():
        return f"'{value}'"
    return repr(value)


@attrs.frozen
class Role:
    name: str
    scopes: tuple[Scope, ...]
    conf_rules: tuple[ConfRule, ...] = ()

    def grants(self, name: str, dag_id: str | None) -> bool:
        return any(s.covers(name, dag_id) for s in self.scopes)

    def conf_problem(self, dag_id: str, conf: dict[str, Any]) -> str | None:
        for rule in self.conf_rules:
            if fnmatchcase(dag_id, rule.dags):
                problem = rule.violation(conf)
                if problem is not None:
                    return problem
        return None


@attrs.frozen
class Grants:
    """What one principal may do: the union of its roles."""

    roles: tuple[Role, ...] = ()

    def allows(self, name: str, dag_id: str | None) -> bool:
        return any(role.grants(name, dag_id) for role in self.roles)

    def has_any(self, name: str) -> bool:
        """Whether some DAG is covered by scope ``name``."""
        return any(s.name == name for role in self.roles for s in role.scopes)

    def allows_every_dag(self, name: str) -> bool:
        return any(
            s.name == name and s.glob == "*" for role in self.roles for s in role.scopes
        )

    def common_prefix(self, name: str) -> str:
        """
        The literal text every DAG id covered by scope ``name`` starts with
        ('' when that is nothing, as for a scope without a glob): what a
        listing may ask Airflow to narrow by before the globs filter it.
        """
        globs = [s.glob for role in self.roles for s in role.scopes if s.name == name]
        return commonprefix([_GLOB_SPECIAL.split(glob, 1)[0] for glob in globs])

    def conf_problem(self, scope: str, dag_id: str, conf: dict[str, Any]) -> str | None:
        """None if some role granting ``scope`` on the DAG accepts ``conf``."""
        problems = []
        for role in self.roles:
            if role.grants(scope, dag_id):
                problem = role.conf_problem(dag_id, conf)
                if problem is None:
                    return None
                problems.append(problem)
        return problems[0] if problems else f"no role grants {scope}"

    @property
    def scope_names(self) -> list[str]:
        return sorted({str(s) for role in self.roles for s in role.scopes})


def build_roles(access: AccessConfig) -> dict[str, Role]:
    """
    The configured roles, their scopes parsed and their conf schemas
    compiled; `ConfigError` naming the key of the first one that is wrong.
    """
    roles = {}
    for name, entry in access.roles.items():
        scopes = []
        for text in entry.scopes:
            try:
                scopes.append(Scope.parse(text))
            except ValueError as e:
                raise ConfigError(f"roles.{name}.scopes", str(e)) from None
        rules = []
        for glob, schema in entry.conf.items():
            try:
                rules.append(ConfRule.build(glob, schema))
            except ValueError as e:
                raise ConfigError(f"roles.{name}.conf.{glob}", str(e)) from None
        roles[name] = Role(name, tuple(scopes), tuple(rules))
    return roles
