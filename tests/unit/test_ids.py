from __future__ import annotations

import string
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from txairflowrpc.core.ids import id_problem, path


@pytest.mark.parametrize("kind,value", [
    ("dag_id", "etl_orders"), ("dag_id", "a.b-c_9"), ("task_id", "group.task"),
    ("dag_run_id", "manual__2026-01-01T00:00:00+00:00"), ("dag_run_id", "ci~42:a"),
])
def test_valid_ids(kind: str, value: str) -> None:
    assert id_problem(kind, value) is None


@pytest.mark.parametrize("kind,value", [
    ("dag_id", "x/../../variables"), ("dag_id", ".."), ("dag_id", "."), ("dag_id", ""),
    ("dag_id", "a b"), ("dag_id", "a%2fb"), ("dag_id", "é"), ("dag_id", "a" * 251),
    ("dag_id", "a:b"), ("task_id", "a/b"), ("dag_run_id", "../x"), ("dag_run_id", "..."),
    ("dag_run_id", "a?b=c"), ("dag_run_id", "a#b"), ("dag_id", 5), ("dag_id", "a\nb"),
])
def test_invalid_ids(kind: str, value: object) -> None:
    problem = id_problem(kind, value)
    assert problem is not None and problem.startswith(kind)
    if isinstance(value, str) and len(value) > 3:
        assert value not in problem  # hostile input is never echoed


def test_path_encodes_each_segment() -> None:
    assert path("dags", "a/b", "dagRuns", "x+y:z") == "dags/a%2Fb/dagRuns/x%2By%3Az"


_ALPHABET = st.sampled_from(list("aZ09_.-~:+/ %é\n\x00") + ["..", "a" * 125])


@given(st.sampled_from(["dag_id", "task_id", "dag_run_id"]),
       st.one_of(st.lists(_ALPHABET, max_size=12).map("".join), st.text(max_size=260)))
@settings(max_examples=600, deadline=None)
def test_the_one_match_agrees_with_the_rules(kind: str, value: str) -> None:
    allowed = set(string.ascii_letters + string.digits + "_.-"
                  + ("~:+" if kind == "dag_run_id" else ""))
    valid = (0 < len(value) <= 250 and set(value) <= allowed and set(value) != {"."})
    assert (id_problem(kind, value) is None) == valid
    assert path("dags", value) == "dags/" + quote(value, safe="")
