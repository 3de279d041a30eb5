"""
The JSON Schema of a ``conf`` guardrail, checked when the config is read
so that a rule that looks strict is strict.

``jsonschema`` checks a schema only against the 2020-12 metaschema, which
lets through what would make a guardrail check nothing, or check something
else than it says:

- an unknown keyword: a misspelt ``patern`` or ``additionalProperites`` is
  an annotation there, it constrains nothing, and the rule lets every conf
  through; so are the older drafts' ``definitions``, ``dependencies`` and
  ``additionalItems``, and the ``content*`` and ``readOnly``/``writeOnly``
  annotations, which look like constraints;
- a keyword that checks nothing without a sibling (``then`` or ``else``
  without ``if``, ``if`` alone, ``minContains`` without ``contains``);
- a ``format`` that nothing checks: in 2020-12 ``format`` only annotates
  unless the validator is given a format checker, and the library's checker
  knows only the formats whose optional packages are installed (here
  `checkable_formats`; ``date-time`` and ``uri`` are not among them), and
  checks ``email`` only for an ``@``;
- a ``$schema`` naming another draft below the root: that subschema is then
  checked by the older draft's rules, which ignore ``const``,
  ``prefixItems`` or ``unevaluatedProperties``;
- a ``$ref`` that is not into the rule itself: the library would fetch it
  over the network, blocking, each time a conf is checked; or into a place
  that is not a schema (``#/examples/0``), which nothing here has checked.

`build` refuses all of these, naming the keyword and where it is, and gives
a validator that asserts every ``format``, resolves no reference outside
the rule, and checks ``uniqueItems`` and ``unevaluatedItems`` in linear time
(jsonschema's own are quadratic on some arrays).  A reference is ``#`` (the rule) or a JSON pointer to one of its
subschemas, usually ``#/$defs/NAME``.

A ``pattern`` (and a ``patternProperties`` name) is a Python regular
expression, searched with `re.ASCII`: found by review, jsonschema searches
without flags, so ``\\d``, ``\\w`` and ``\\b`` took any script's digits and
letters (``\\A\\d{4}\\Z`` let Arabic-Indic and fullwidth digits through)
where a rule's author means JSON Schema's (ECMA-262's) ASCII ones.  The
validator's ``pattern``, ``patternProperties``, ``additionalProperties``
and ``unevaluatedProperties`` all match through `search`; `build` refuses a
pattern that does not compile so (an inline ``(?u)``).  ``\\s`` is then
ASCII's six whitespace characters (ECMA-262's also has Unicode's spaces):
``\\S`` lets U+00A0 or U+2028 through.
"""

from __future__ import annotations

import re
from functools import cached_property, lru_cache
from typing import Any

import jsonschema
import referencing
from jsonschema._utils import find_evaluated_item_indexes_by_schema
from jsonschema.exceptions import SchemaError, ValidationError

from ..core.jsonvalues import json_key

__all__ = ["KEYWORDS", "PATTERN_FLAGS", "SCHEMA_URI", "additional_keys", "build",
           "checkable_formats", "search"]

_Validator = jsonschema.Draft202012Validator


def _unique_items(validator: Any, unique: Any, instance: Any, schema: Any) -> Any:
    """
    ``uniqueItems`` in linear time.  Found by review: jsonschema's falls back
    to comparing every pair when the items cannot be sorted (one number
    among strings), 3 s on the reactor for a 10,000-item array.
    """
    if (unique and validator.is_type(instance, "array")
            and len({json_key(item) for item in instance}) != len(instance)):
        yield ValidationError("has non-unique elements")


def _unevaluated_items(validator: Any, unevaluated: Any, instance: Any, schema: Any) -> Any:
    """
    ``unevaluatedItems`` as jsonschema checks it, but looking each index up
    in a set: found by review, its list made 32,000 items cost 4 s.
    """
    if validator.is_type(instance, "array"):
        done = set(find_evaluated_item_indexes_by_schema(validator, instance, schema))
        if len(done.intersection(range(len(instance)))) < len(instance):
            yield ValidationError("Unevaluated items are not allowed")


#: How a rule's patterns are compiled: Python's syntax, JSON Schema's ASCII
#: ``\d``, ``\w`` and ``\b`` (and ASCII-only case folding under ``(?i)``).
PATTERN_FLAGS = re.ASCII


@lru_cache(maxsize=1024)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, PATTERN_FLAGS)


def search(pattern: str, text: str) -> bool:
    """Whether a rule's ``pattern`` matches somewhere in ``text``, as every check here asks."""
    return _compiled(pattern).search(text) is not None


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Any:
    """``pattern``, searched with `PATTERN_FLAGS` (jsonschema's has no flags)."""
    if validator.is_type(instance, "string") and not search(pattern, instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


def _pattern_properties(validator: Any, patterns: Any, instance: Any, schema: Any) -> Any:
    """``patternProperties``, its names searched with `PATTERN_FLAGS`."""
    if validator.is_type(instance, "object"):
        for pattern, subschema in patterns.items():
            for key, value in instance.items():
                if search(pattern, key):
                    yield from validator.descend(value, subschema, path=key,
                                                 schema_path=pattern)


def additional_keys(instance: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    """
    The keys of ``instance`` that ``additionalProperties`` in ``schema``
    applies to: neither under ``properties`` nor matched by a
    ``patternProperties`` name (searched as `_pattern_properties` does, so
    a key is never left to neither).
    """
    properties = schema.get("properties", {})
    patterns = schema.get("patternProperties", {})
    return [key for key in instance
            if key not in properties and not any(search(p, key) for p in patterns)]


def _additional_properties(validator: Any, extra: Any, instance: Any, schema: Any) -> Any:
    """``additionalProperties``, with `additional_keys`."""
    if not validator.is_type(instance, "object"):
        return
    keys = additional_keys(instance, schema)
    if validator.is_type(extra, "object"):
        for key in keys:
            yield from validator.descend(instance[key], extra, path=key)
    elif not extra and keys:
        yield ValidationError(f"Additional properties are not allowed "
                              f"({', '.join(repr(k) for k in sorted(keys))} unexpected)")


def _valid(errors: Any) -> bool:
    return next(errors, None) is None


def _evaluated_keys(validator: Any, instance: dict[str, Any], schema: Any) -> set[str]:
    """
    The keys of ``instance`` that ``schema`` evaluates, for
    ``unevaluatedProperties``: jsonschema's
    ``find_evaluated_property_keys_by_schema`` (4.26), with the
    ``patternProperties`` names searched as `_pattern_properties` does, and
    a set (its list made the check quadratic).  ``$dynamicRef`` is left out:
    `build` refuses it.
    """
    if validator.is_type(schema, "boolean"):
        return set()
    keys: set[str] = set()
    ref = schema.get("$ref")
    if ref is not None:
        resolved = validator._resolver.lookup(ref)
        keys |= _evaluated_keys(
            validator.evolve(schema=resolved.contents, _resolver=resolved.resolver),
            instance, resolved.contents)
    properties = schema.get("properties")
    if validator.is_type(properties, "object"):
        keys |= properties.keys() & instance.keys()
    for keyword in ("additionalProperties", "unevaluatedProperties"):
        subschema = schema.get(keyword)
        if subschema is not None:
            keys.update(key for key, value in instance.items()
                        if _valid(validator.descend(value, subschema)))
    patterns = schema.get("patternProperties", {})
    keys.update(key for key in instance if any(search(p, key) for p in patterns))
    for key, subschema in schema.get("dependentSchemas", {}).items():
        if key in instance:
            keys |= _evaluated_keys(validator, instance, subschema)
    for keyword in ("allOf", "oneOf", "anyOf"):
        for subschema in schema.get(keyword, []):
            if _valid(validator.descend(instance, subschema)):
                keys |= _evaluated_keys(validator, instance, subschema)
    if "if" in schema:
        if validator.evolve(schema=schema["if"]).is_valid(instance):
            keys |= _evaluated_keys(validator, instance, schema["if"])
            if "then" in schema:
                keys |= _evaluated_keys(validator, instance, schema["then"])
        elif "else" in schema:
            keys |= _evaluated_keys(validator, instance, schema["else"])
    return keys


def _unevaluated_properties(validator: Any, unevaluated: Any, instance: Any,
                            schema: Any) -> Any:
    """``unevaluatedProperties``, with `_evaluated_keys`."""
    if not validator.is_type(instance, "object"):
        return
    done = _evaluated_keys(validator, instance, schema)
    bad = [key for key in instance if key not in done and not _valid(
        validator.descend(instance[key], unevaluated, path=key, schema_path=key))]
    if bad and unevaluated is False:
        yield ValidationError(f"Unevaluated properties are not allowed "
                              f"({', '.join(repr(k) for k in sorted(bad))} unexpected)")
    elif bad:
        yield ValidationError(f"Unevaluated properties are not valid under the given schema "
                              f"({', '.join(repr(k) for k in bad)} unevaluated and invalid)")


#: 2020-12, with ``uniqueItems`` and ``unevaluatedItems`` that cost linear
#: time, and every pattern searched with `PATTERN_FLAGS`.
_Checker = jsonschema.validators.extend(_Validator, {
    "uniqueItems": _unique_items, "unevaluatedItems": _unevaluated_items,
    "pattern": _pattern, "patternProperties": _pattern_properties,
    "additionalProperties": _additional_properties,
    "unevaluatedProperties": _unevaluated_properties,
})

#: The one ``$schema`` a rule may name, and only at its root.
SCHEMA_URI = "https://json-schema.org/draft/2020-12/schema"

#: Keywords holding one subschema, a name -> subschema table, or a list of subschemas.
_ONE = frozenset({"not", "if", "then", "else", "items", "contains", "additionalProperties",
                  "propertyNames", "unevaluatedItems", "unevaluatedProperties"})
_TABLE = frozenset({"properties", "patternProperties", "$defs", "dependentSchemas"})
_LIST = frozenset({"allOf", "anyOf", "oneOf", "prefixItems"})
#: Keywords whose subschemas apply to the same value as the schema holding them.
_IN_PLACE = frozenset({"allOf", "anyOf", "oneOf", "not", "if", "then", "else",
                       "dependentSchemas"})
#: Keywords that check nothing without a sibling: what they need.
_NEEDS = {
    "then": ("if",), "else": ("if",), "if": ("then", "else"),
    "minContains": ("contains",), "maxContains": ("contains",),
}
#: Formats whose checker here only looks for an ``@``: they would let
#: ``"x @ y; rm -rf /"`` through.
_WEAK_FORMATS = frozenset({"email", "idn-email"})
#: Keywords a rule may not hold, with what to use instead.
_REFUSED = {
    "definitions": "the older drafts' name: use '$defs' (and '$ref': '#/$defs/NAME')",
    "dependencies": "the older drafts' keyword: use 'dependentRequired' or 'dependentSchemas'",
    "additionalItems": "the older drafts' keyword: use 'items' after 'prefixItems'",
    "$recursiveRef": "the 2019-09 keyword: use '$ref': '#'",
    "$recursiveAnchor": "the 2019-09 keyword: use '$ref': '#'",
    "$dynamicRef": "not supported in a rule: use '$ref' to '#' or '#/$defs/NAME'",
    "$dynamicAnchor": "not supported in a rule: use '$ref' to '#' or '#/$defs/NAME'",
    "$anchor": "not supported in a rule: use '$ref': '#/$defs/NAME'",
    "$vocabulary": "belongs in a metaschema, not in a rule",
    "contentSchema": "an annotation only, it checks nothing: describe the string with 'pattern'",
    "contentMediaType": "an annotation only, it checks nothing: use 'pattern'",
    "contentEncoding": "an annotation only, it checks nothing: use 'pattern'",
    "readOnly": "an annotation only, it forbids nothing: use 'not': {'required': [NAME]}",
    "deprecated": "an annotation only, it forbids nothing: use 'not': {'required': [NAME]}",
    "writeOnly": "an annotation only, it forbids nothing: use 'not': {'required': [NAME]}",
}
#: Every keyword a rule may hold: what the validator checks, the subschema
#: holders it checks through (``then``, ``else``), and the annotations that
#: may document a rule.
KEYWORDS = (frozenset(_Validator.VALIDATORS) | _ONE | _TABLE | _LIST | frozenset(_NEEDS)
            | frozenset({"$schema", "$id", "$comment", "title", "description", "default",
                         "examples"})) - frozenset(_REFUSED)
#: Allowed only at the root of a rule: below it they change how the
#: subschema is read (another draft's rules, another base for ``$ref``).
_ROOT_ONLY = frozenset({"$schema", "$id"})

#: The most schemas a rule may apply to one value (through in-place
#: applicators and ``$ref``): each is checked for every value it applies to.
MAX_APPLIED = 256

#: Where a subschema is: keywords and property names, and list indices as ints.
_Path = tuple[str | int, ...]
#: The same as a JSON pointer's tokens (all strings): how a ``$ref`` names it.
_Tokens = tuple[str, ...]


def checkable_formats() -> frozenset[str]:
    """The ``format`` values this installation can check (not merely look at)."""
    return frozenset(_Validator.FORMAT_CHECKER.checkers) - _WEAK_FORMATS


def build(schema: dict[str, Any]) -> Any:
    """
    A validator for ``schema`` that asserts ``format`` and fetches nothing.

    Raises ValueError, saying what and where, if ``schema`` is not a valid
    2020-12 JSON Schema, holds a keyword it may not (`KEYWORDS`), a
    ``format`` that cannot be checked here, a pattern that does not compile
    with `PATTERN_FLAGS`, a ``$schema`` other than
    `SCHEMA_URI` or below the root, or a ``$ref`` that is not to one of its
    own subschemas.
    """
    try:
        _Validator.check_schema(schema)
    except SchemaError as e:
        raise ValueError(f"not a valid JSON Schema: {e.message}") from None
    walk = _Walk(checkable_formats())
    problem = (walk.problem(schema, ()) or walk.dangling_ref() or walk.ref_cycle()
               or walk.fan_out())
    if problem is not None:
        raise ValueError(problem)
    # Without the root's $schema (checked above to be 2020-12's): a $ref
    # back to the root would have jsonschema pick the class it names, the
    # stock one, not _Checker (found by review).
    return _Checker({k: v for k, v in schema.items() if k != "$schema"},
                    format_checker=_Validator.FORMAT_CHECKER, registry=referencing.Registry())


def _where(path: _Path) -> str:
    """``properties.day``, ``allOf[0]``: a path as the messages name it."""
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" if i else p
                   for i, p in enumerate(path))


def _tokens(path: _Path) -> _Tokens:
    """Where a subschema is, as a JSON pointer to it names it."""
    return tuple(map(str, path))


class _Walk:
    """One walk over a rule: every subschema visited, every ``$ref`` seen."""

    def __init__(self, formats: frozenset[str]) -> None:
        self.formats = formats
        #: Every subschema, by its pointer's tokens, with its path for messages.
        self.schemas: dict[_Tokens, _Path] = {}
        self.refs: list[tuple[str, _Path]] = []
        #: Schema -> the schemas it applies to the same value (not to a part of it).
        self.in_place: dict[_Tokens, list[_Tokens]] = {}

    def problem(self, schema: Any, path: _Path) -> str | None:
        """The first keyword in ``schema`` (at ``path``) that the rule may not hold."""
        here = _tokens(path)
        self.schemas[here] = path
        if not isinstance(schema, dict):  # true / false (the metaschema allows nothing else)
            return None
        at = f" at {_where(path)}" if path else ""
        for key, value in schema.items():
            if key in _REFUSED:
                return f"JSON Schema keyword {key!r}{at} is refused: {_REFUSED[key]}"
            if key not in KEYWORDS:
                return (f"unknown JSON Schema keyword {key[:64]!r}{at} (it would check nothing; "
                        f"a property belongs under 'properties')")
            if key in _NEEDS and not any(k in schema for k in _NEEDS[key]):
                return (f"{key!r}{at} checks nothing without "
                        f"{' or '.join(repr(k) for k in _NEEDS[key])} beside it")
            if key == "minContains" and value == 0 and "maxContains" not in schema:
                return (f"'minContains' = 0{at} without 'maxContains' lets every array "
                        f"through: 'contains' then checks nothing")
            if key in _ROOT_ONLY and path:
                return f"{key!r}{at} is allowed only at the root of a rule"
            if key == "$schema" and value.rstrip("#") != SCHEMA_URI:
                return (f"$schema {value[:64]!r} is not 2020-12's: a rule is checked as "
                        f"{SCHEMA_URI}")
            if key == "format" and value not in self.formats:
                return (f"format {str(value)[:64]!r}{at} cannot be checked here (it would let "
                        f"anything through); checkable: {', '.join(sorted(self.formats))}; or "
                        f"use 'pattern'")
            if key == "$ref":
                self.refs.append((value, path))
            for pattern in ([value] if key == "pattern" else
                            value if key == "patternProperties" else ()):
                try:
                    _compiled(pattern)
                except (re.error, ValueError) as e:  # (?u) with re.ASCII is a ValueError
                    return (f"{key} {pattern[:64]!r}{at} is not a Python regular expression "
                            f"with ASCII classes: {e}")
            for sub, sub_path in _subschemas(key, value, path + (key,)):
                if key in _IN_PLACE:
                    self.in_place.setdefault(here, []).append(_tokens(sub_path))
                found = self.problem(sub, sub_path)
                if found is not None:
                    return found
        return None

    def dangling_ref(self) -> str | None:
        """The first ``$ref`` that is not to a subschema of this rule."""
        for ref, path in self.refs:
            target = _pointer(ref)
            if target is None or target not in self.schemas:
                return (f"$ref {ref[:64]!r} at {_where(path)} is not to a subschema of this rule "
                        f"(use '#' or '#/$defs/NAME', without %-escapes; nothing is fetched)")
        return None

    def ref_cycle(self) -> str | None:
        """
        The first ``$ref`` that leads back to where it is without a step into
        the value: checking any conf would recurse without end (and every
        trigger be refused as "cannot be checked").  After `dangling_ref`.
        """
        edges = self._same_value
        for ref, path in self.refs:
            start = _tokens(path)
            seen: set[_Tokens] = set()
            todo = [_pointer(ref) or ()]
            while todo:
                node = todo.pop()
                if node == start:
                    return (f"$ref {ref[:64]!r} at {_where(path) or 'the root'} leads back to "
                            f"itself without a step into the value (checking would never end)")
                if node not in seen:
                    seen.add(node)
                    todo.extend(edges.get(node, ()))
        return None

    def fan_out(self) -> str | None:
        """
        The first schema that applies more than `MAX_APPLIED` schemas to one
        value, counting every path through ``allOf``, ``anyOf``, ``not``,
        ``if``/``then``/``else`` and ``$ref`` (found by review: 16 ``$defs``
        each referring to the next twice made every check cost 2^16
        applications, 1.6 s on the reactor).  After `ref_cycle`: no cycles.
        """
        edges = self._same_value
        applied: dict[_Tokens, int] = {}
        for root in sorted(self.schemas, key=lambda p: (len(p), p)):
            todo = [(root, False)]
            while todo:  # post-order, without recursion (a chain of refs may be long)
                node, children_done = todo.pop()
                if node in applied:
                    continue
                children = edges.get(node, ())
                if not children_done:
                    todo.append((node, True))
                    todo.extend((child, False) for child in children if child not in applied)
                    continue
                applied[node] = min(MAX_APPLIED + 1,
                                    1 + sum(applied[child] for child in children))
            if applied[root] > MAX_APPLIED:
                return (f"the schema at {_where(self.schemas[root]) or 'the root'} applies more "
                        f"than {MAX_APPLIED} schemas to one value through allOf/anyOf/oneOf/"
                        f"not/if/then/else and $ref (each conf would cost that many checks "
                        f"per value): share them, or use enum or pattern")
        return None

    @cached_property
    def _same_value(self) -> dict[_Tokens, list[_Tokens]]:
        """
        Schema -> the schemas it applies to the same value, ``$ref`` included
        (once the walk is over and every ``$ref`` is known to be local).
        """
        edges = {here: list(subs) for here, subs in self.in_place.items()}
        for ref, path in self.refs:
            edges.setdefault(_tokens(path), []).append(_pointer(ref) or ())
        return edges


def _pointer(ref: str) -> _Tokens | None:
    """
    The path ``ref`` points to inside the rule, or None if it is not a local
    pointer without percent-escapes.  Found by review: a ``%2F`` is a ``/``
    to the library (it decodes, then splits) but was part of a name here
    (split, then decode), so ``#/$defs/a%2Fb`` passed as the checked
    ``$defs["a/b"]`` and was resolved to the unchecked ``$defs.a.b``: no
    escapes at all, rather than a second decoder to keep in step.
    """
    if ref == "#":
        return ()
    if not ref.startswith("#/") or "%" in ref:
        return None
    return tuple(token.replace("~1", "/").replace("~0", "~") for token in ref[2:].split("/"))


def _subschemas(key: str, value: Any, path: _Path) -> list[tuple[Any, _Path]]:
    """The subschemas keyword ``key`` holds in ``value``, each with its path."""
    if key in _ONE:
        return [(value, path)]
    if key in _TABLE:
        return [(sub, path + (name,)) for name, sub in value.items()]
    if key in _LIST:
        return [(sub, path + (i,)) for i, sub in enumerate(value)]
    return []
