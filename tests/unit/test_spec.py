"""A method's spec checks the arguments: arity, types, and how "nothing" is read."""

from __future__ import annotations

import os
import re
import secrets
import select
import signal
from typing import Any

import pytest

from txairflowrpc.core import errors
from txairflowrpc.core.spec import (
    REQUEST_ID_PATTERN,
    REQUEST_IDS_PER_DRAW,
    MethodSpec,
    Param,
    _request_ids,
    new_request_id,
)

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


def test_request_ids_are_unique_across_draws_and_match_their_pattern() -> None:
    ids = [new_request_id() for _ in range(3 * REQUEST_IDS_PER_DRAW + 7)]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(REQUEST_ID_PATTERN, i) for i in ids)


def test_request_ids_come_from_one_draw_of_randomness_per_batch(
        monkeypatch: pytest.MonkeyPatch) -> None:
    draws = []
    real = secrets.token_hex

    def counted(n: int) -> str:
        draws.append(n)
        return real(n)

    monkeypatch.setattr(secrets, "token_hex", counted)
    _request_ids.clear()
    for _ in range(REQUEST_IDS_PER_DRAW + 1):
        new_request_id()
    assert draws == [8 * REQUEST_IDS_PER_DRAW] * 2


def test_a_forked_child_does_not_hand_out_its_parents_next_ids() -> None:
    _request_ids.clear()
    new_request_id()  # a fresh draw: the pool holds the ids the parent hands out next
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next id, then out without pytest's cleanup
        try:
            os.write(write, new_request_id().encode())
        finally:
            os._exit(0)
    os.close(write)
    try:
        ready, _, _ = select.select([read], [], [], 30)
        child = os.read(read, 64).decode() if ready else ""
    finally:
        os.close(read)
        if not child:
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    parents = [new_request_id() for _ in range(REQUEST_IDS_PER_DRAW)]
    assert re.fullmatch(REQUEST_ID_PATTERN, child)
    assert child not in parents
