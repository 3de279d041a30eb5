"""JSON equality, and the hashable key that agrees with it."""

from __future__ import annotations

from itertools import product

from txairflowrpc.core.jsonvalues import json_equal, json_key

SAMPLES = [
    None, True, False, 0, 1, 1.0, 1.5, -0.0, 10**400, "", "1", "true",
    [], [1], [1.0], [True], [1, "a"], ["a", 1], {}, {"a": 1}, {"a": 1.0}, {"a": True},
    {"a": [1, {"b": None}]}, {"a": [1.0, {"b": None}]}, {"b": 1}, [[]], [{}],
]


def test_the_key_agrees_with_json_equality() -> None:
    for a, b in product(SAMPLES, repeat=2):
        assert (json_key(a) == json_key(b)) == json_equal(a, b), (a, b)
    assert json_equal(1, 1.0) and not json_equal(1, True) and not json_equal(0, False)
    assert json_equal({"a": 1, "b": 2}, {"b": 2.0, "a": 1}) and not json_equal([1, 2], [2, 1])
