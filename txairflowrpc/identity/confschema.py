"""
The JSON Schema of a ``conf`` guardrail, checked when the config is read
so that a rule that looks strict is strict.

``jsonschema`` checks a schema only against the 2020-12 metaschema, which
lets through two things a guardrail must not have:

- an unknown keyword: a misspelt ``patern`` or ``additionalProperites`` is
  an annotation there, it constrains nothing, and the rule lets every conf
  through;
- a ``format`` that nothing checks: in 2020-12 ``format`` only annotates
  unless the validator is given a format checker, and the library's checker
  knows only the formats whose optional packages are installed (here
  `checkable_formats`; ``date-time`` and ``uri`` are not among them).

`build` refuses both, naming the keyword and where it is, and gives a
validator that asserts every ``format``.
"""

from __future__ import annotations

from typing import Any

import jsonschema
from jsonschema.exceptions import SchemaError

__all__ = ["KEYWORDS", "build", "checkable_formats"]

_Validator = jsonschema.Draft202012Validator

#: Keywords holding one subschema, a name -> subschema table, or a list of subschemas.
_ONE = frozenset({"not", "if", "then", "else", "items", "contains", "additionalProperties",
                  "propertyNames", "unevaluatedItems", "unevaluatedProperties",
                  "contentSchema"})
_TABLE = frozenset({"properties", "patternProperties", "$defs", "dependentSchemas"})
_LIST = frozenset({"allOf", "anyOf", "oneOf", "prefixItems"})
#: Every keyword of the 2020-12 vocabularies: what the validator checks, the
#: subschema holders it checks through (``then``, ``else``), and the
#: annotations that may document a rule.
KEYWORDS = frozenset(_Validator.VALIDATORS) | _ONE | _TABLE | _LIST | frozenset({
    "$schema", "$id", "$anchor", "$dynamicAnchor", "$comment", "$vocabulary",
    "title", "description", "default", "examples", "deprecated", "readOnly", "writeOnly",
    "contentEncoding", "contentMediaType",
})


def checkable_formats() -> frozenset[str]:
    """The ``format`` values this installation can check."""
    return frozenset(_Validator.FORMAT_CHECKER.checkers)


def build(schema: dict[str, Any]) -> Any:
    """
    A validator for ``schema`` that asserts ``format``.

    Raises ValueError, saying what and where, if ``schema`` is not a valid
    2020-12 JSON Schema, holds a keyword that is not one, or a ``format``
    that cannot be checked here.
    """
    try:
        _Validator.check_schema(schema)
    except SchemaError as e:
        raise ValueError(f"not a valid JSON Schema: {e.message}") from None
    problem = _problem(schema, "", checkable_formats())
    if problem is not None:
        raise ValueError(problem)
    return _Validator(schema, format_checker=_Validator.FORMAT_CHECKER)


def _problem(schema: Any, where: str, formats: frozenset[str]) -> str | None:
    """The first keyword in ``schema`` (at ``where``) that would constrain nothing."""
    if not isinstance(schema, dict):  # true / false (the metaschema allows nothing else)
        return None
    at = f" at {where}" if where else ""
    for key, value in schema.items():
        if key not in KEYWORDS:
            return (f"unknown JSON Schema keyword {key[:64]!r}{at} (it would check nothing; "
                    f"a property belongs under 'properties')")
        if key == "format" and value not in formats:
            return (f"format {str(value)[:64]!r}{at} cannot be checked here (it would let "
                    f"anything through); checkable: {', '.join(sorted(formats))}; or use "
                    f"'pattern'")
        for sub, sub_where in _subschemas(key, value, f"{where}.{key}" if where else key):
            found = _problem(sub, sub_where, formats)
            if found is not None:
                return found
    return None


def _subschemas(key: str, value: Any, where: str) -> list[tuple[Any, str]]:
    """The subschemas keyword ``key`` holds in ``value``, each with where it is."""
    if key in _ONE:
        return [(value, where)]
    if key in _TABLE:
        return [(sub, f"{where}.{name}") for name, sub in value.items()]
    if key in _LIST:
        return [(sub, f"{where}[{i}]") for i, sub in enumerate(value)]
    return []
