"""A method's spec checks the arguments: arity, types, and how "nothing" is read."""

from __future__ import annotations

from typing import Any

import pytest

from txairflowrpc.core import errors
from txairflowrpc.core.spec import MethodSpec, Param

TRIGGER = MethodSpec(
    name="trigger_dag", returns="struct", doc="", handler=lambda *a: None,
    params=(
        Param("dag_id", "string", "", id="dag_id"),
        Param("conf", "struct", "", required=False),
        Param("options", "struct", "", required=False),
    ),
)
WAIT = MethodSpec(
    name="wait", returns="struct", doc="", handler=lambda *a: None,
    params=(
        Param("dag_id", "string", ""),
        Param("timeout", "int", "", required=False, default=60),
        Param("filters", "struct", "", required=False),
    ),
)


@pytest.mark.parametrize("args,checked", [
    (("etl", None, {"dag_run_id": "x"}), ("etl", None, {"dag_run_id": "x"})),
    (("etl", [], {"dag_run_id": "x"}), ("etl", None, {"dag_run_id": "x"})),
    (("etl", {}, []), ("etl", {})),
    (("etl", None, None), ("etl",)),
    (("etl", [], []), ("etl",)),
    (("etl", "", {"dag_run_id": "x"}), ("etl", None, {"dag_run_id": "x"})),
    (("etl", {"a": 1}), ("etl", {"a": 1})),
])
def test_nothing_in_any_position_means_the_default(args: tuple[Any, ...],
                                                   checked: tuple[Any, ...]) -> None:
    assert TRIGGER.check(args) == checked


def test_an_omitted_value_before_others_is_its_declared_default() -> None:
    assert WAIT.check(("etl", None, {"x": 1})) == ("etl", 60, {"x": 1})
    assert WAIT.check(("etl", None)) == ("etl",)


def test_a_required_parameter_cannot_be_nil() -> None:
    with pytest.raises(errors.InvalidParams, match="'dag_id' is required"):
        TRIGGER.check((None, {}))


def test_an_empty_array_is_not_a_struct_where_one_is_required_or_elements_matter() -> None:
    required = MethodSpec(name="m", returns="struct", doc="", handler=lambda *a: None,
                          params=(Param("conf", "struct", ""),))
    with pytest.raises(errors.InvalidParams, match="must be a struct"):
        required.check(([],))
    with pytest.raises(errors.InvalidParams, match="must be a struct"):
        TRIGGER.check(("etl", [1, 2]))
