"""
The conf rules' validator (`confschema.build`) gives the verdicts stock
jsonschema gives wherever only ASCII is at stake: it replaces the keywords
that match keys or strings by pattern (to search with ``re.ASCII``), and the
evaluated-keys walk of ``unevaluatedProperties`` is a copy of jsonschema
4.26's.  A jsonschema upgrade that changes those keywords fails here.
"""

from __future__ import annotations

import random

import jsonschema
import pytest

from txairflowrpc.identity import confschema

SCHEMAS = [
    {"type": "object", "properties": {"a": {"type": "integer"}},
     "patternProperties": {"^x": {"type": "string"}}, "additionalProperties": False},
    {"type": "object", "properties": {"a": {}}, "additionalProperties": {"type": "integer"}},
    {"$defs": {"base": {"properties": {"a": {"type": "integer"}}, "patternProperties": {"^p": {}}}},
     "$ref": "#/$defs/base", "unevaluatedProperties": False},
    {"allOf": [{"$ref": "#/$defs/b"}], "$defs": {"b": {"properties": {"b": {}}}},
     "unevaluatedProperties": False},
    {"anyOf": [{"properties": {"a": {"const": 1}}, "required": ["a"]}, {"properties": {"b": {}}}],
     "unevaluatedProperties": {"type": "string"}},
    {"if": {"properties": {"k": {"const": "x"}}, "required": ["k"]},
     "then": {"properties": {"t": {}}}, "else": {"properties": {"e": {}}},
     "unevaluatedProperties": False},
    {"dependentSchemas": {"d": {"properties": {"dd": {}}}}, "properties": {"d": {}},
     "unevaluatedProperties": False},
    {"allOf": [True, {"properties": {"a": {}}}], "unevaluatedProperties": False},
    {"additionalProperties": True, "unevaluatedProperties": False},
    {"properties": {"n": {"properties": {"a": {}}, "unevaluatedProperties": False}},
     "unevaluatedProperties": False},
    {"patternProperties": {"\\d": {}}, "additionalProperties": False},
    {"type": "object", "properties": {"s": {"pattern": "\\A\\w+\\Z"}}},
    {"oneOf": [{"properties": {"a": {}}}, {"properties": {"a": {}}}],
     "unevaluatedProperties": False},
    {"additionalProperties": {"$ref": "#/$defs/i"}, "$defs": {"i": {"type": "integer"}},
     "unevaluatedProperties": False},
]
KEYS = ["a", "b", "x1", "p", "k", "t", "e", "d", "dd", "n", "z", "7", "s"]
VALUES = [1, "x", "x y", None, {"a": 1}, {"z": 1}]


@pytest.mark.parametrize("index", range(len(SCHEMAS)))
def test_ascii_verdicts_are_jsonschemas(index: int) -> None:
    schema = SCHEMAS[index]
    ours, stock = confschema.build(schema), jsonschema.Draft202012Validator(schema)
    chance = random.Random(index)
    for _ in range(300):
        instance: object = {k: chance.choice(VALUES)
                            for k in chance.sample(KEYS, chance.randint(0, 5))}
        if chance.random() < 0.1:
            instance = chance.choice([1, "s", [], None])
        assert (sorted(e.validator for e in ours.iter_errors(instance))
                == sorted(e.validator for e in stock.iter_errors(instance))), (schema, instance)
