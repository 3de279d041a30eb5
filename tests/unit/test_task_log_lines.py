"""
Airflow 3's structured task log as text lines (`shapes.format_log_content`),
with an exception's traceback rendered as Python prints one.
"""

from __future__ import annotations

from typing import Any

import pytest

from txairflowrpc.upstream.shapes import (
    MAX_EXCEPTIONS,
    MAX_FRAMES,
    MAX_PAGE_TRACEBACK_LINES,
    MAX_TRACEBACK_LINES,
    format_exception_chain,
    format_log_content,
)

RUNNER = "/opt/airflow/lib/python3.11/site-packages/airflow/sdk/execution_time/task_runner.py"
DAG = "/opt/airflow/dags/py_fail.py"

#: The entry Airflow 3.3.2 wrote for a task that raised RuntimeError from a
#: ValueError (captured from a real run, 2026-11-29; paths shortened and two
#: frames of the runner left out).
FAILED = {
    "timestamp": "2026-11-29T08:30:23.748410Z", "event": "Task failed with exception",
    "level": "error", "task_id": "explode", "map_index": -1, "dag_id": "py_fail",
    "try_number": 1, "run_id": "x1", "logger": "task", "filename": "task_runner.py",
    "lineno": 1676,
    "error_detail": [
        {"exc_type": "RuntimeError", "exc_value": "wrapping failure", "exc_notes": [],
         "syntax_error": None, "is_cause": False,
         "frames": [{"filename": RUNNER, "lineno": 1579, "name": "_run_task_and_map_outcome"},
                    {"filename": DAG, "lineno": 13, "name": "explode"}],
         "is_group": False, "exceptions": []},
        {"exc_type": "ValueError", "exc_value": "bad input: 42", "exc_notes": [],
         "syntax_error": None, "is_cause": True,
         "frames": [{"filename": DAG, "lineno": 11, "name": "explode"},
                    {"filename": DAG, "lineno": 9, "name": "inner"}],
         "is_group": False, "exceptions": []},
    ],
}


def test_a_python_exception_is_shown_as_python_prints_it() -> None:
    """
    Found by trying a Python task that raises: the log said "Task failed with
    exception" and nothing of which (Airflow puts it in ``error_detail``).
    """
    lines = format_log_content([
        {"timestamp": "2026-11-29T08:30:23.748410Z", "event": "about to fail",
         "level": "info", "logger": "task.stdout"},
        FAILED,
        {"timestamp": "2026-11-29T08:30:23.748884Z", "event": "::group::Post Execute",
         "level": "info"},
    ])
    assert lines == [
        "2026-11-29T08:30:23.748410Z [info] about to fail",
        "2026-11-29T08:30:23.748410Z [error] Task failed with exception",
        "Traceback (most recent call last):",
        f'  File "{DAG}", line 11, in explode',
        f'  File "{DAG}", line 9, in inner',
        "ValueError: bad input: 42",
        "",
        "The above exception was the direct cause of the following exception:",
        "",
        "Traceback (most recent call last):",
        f'  File "{RUNNER}", line 1579, in _run_task_and_map_outcome',
        f'  File "{DAG}", line 13, in explode',
        "RuntimeError: wrapping failure",
        "2026-11-29T08:30:23.748884Z [info] ::group::Post Execute",
    ]


def test_an_exception_raised_while_another_was_handled_says_so() -> None:
    detail = [{**FAILED["error_detail"][0]}, {**FAILED["error_detail"][1], "is_cause": False}]
    lines = format_exception_chain(detail)
    assert "During handling of the above exception, another exception occurred:" in lines
    assert lines[-1] == "RuntimeError: wrapping failure"


def test_a_message_of_several_lines_and_notes_keep_their_lines() -> None:
    lines = format_exception_chain([{
        "exc_type": "KeyError", "exc_value": "first\nsecond", "exc_notes": ["see runbook"],
        "frames": [],
    }])
    assert lines == ["Traceback (most recent call last):", "KeyError: first", "second",
                     "see runbook"]


def test_an_exception_without_a_message_is_its_type_alone() -> None:
    assert format_exception_chain([{"exc_type": "SystemExit", "exc_value": "", "frames": []}]
                                  )[-1] == "SystemExit"


def test_an_exception_group_shows_each_exception_in_it() -> None:
    group = {"exc_type": "ExceptionGroup", "exc_value": "two failed (2 sub-exceptions)",
             "frames": [], "is_group": True,
             "exceptions": [[{"exc_type": "ValueError", "exc_value": "a", "frames": []}],
                            [{"exc_type": "TypeError", "exc_value": "b", "frames": []}]]}
    lines = format_exception_chain([group])
    assert "ExceptionGroup: two failed (2 sub-exceptions)" in lines
    assert [line for line in lines if line.startswith("  | ") and ": " in line] == [
        "  | ValueError: a", "  | TypeError: b"]


def test_a_deep_traceback_keeps_the_frames_nearest_the_raise() -> None:
    frames = [{"filename": DAG, "lineno": n, "name": "f"} for n in range(MAX_FRAMES + 7)]
    lines = format_exception_chain([{"exc_type": "RecursionError", "exc_value": "deep",
                                     "frames": frames}])
    assert lines[1] == "  [txairflowrpc: 7 frames left out]"
    assert lines[-2] == f'  File "{DAG}", line {MAX_FRAMES + 6}, in f'
    assert len(lines) == MAX_FRAMES + 3


@pytest.mark.parametrize("detail", [
    None, "a string", 7, [], [None, 3, "x"], [{"frames": "not a list"}],
    [{"frames": [None, {"lineno": "x"}], "exc_type": None, "exc_value": None}],
    [{"is_group": True, "exceptions": "nope"}], [{"is_group": True, "exceptions": [[[[]]]]}],
])
def test_whatever_shape_error_detail_has_the_log_is_still_read(detail: Any) -> None:
    lines = format_log_content([{"event": "Task failed with exception", "level": "error",
                                 "error_detail": detail}])
    assert lines[0] == "[error] Task failed with exception"
    assert all(isinstance(line, str) for line in lines)


def test_an_exception_dict_cannot_make_the_log_much_larger_than_it_is() -> None:
    """
    Found by review: whoever writes the task writes its exceptions' dicts,
    and 0.8 MB of nested groups (16 per level) became 1.3 million lines,
    111 MB and a second of the reactor.
    """
    e = {"exc_type": "E", "exc_value": "x", "frames": []}
    inner = {**e, "is_group": True, "exceptions": [[e] * 16] * 16}
    outer = {**e, "is_group": True, "exceptions": [[inner] * 16] * 16}
    nested = [{"event": "x", "error_detail": [outer] * 16}]
    lines = format_log_content(nested)
    assert len(lines) < 3 * MAX_EXCEPTIONS * 4  # a few lines for each exception rendered
    assert lines[-1].startswith("[txairflowrpc: ") and "more exceptions left out" in lines[-1]
    # Many small entries: past a page's budget, each is its last line alone.
    flat = [{"event": "x", "error_detail": [e] * 16}] * 12_000
    lines = format_log_content(flat)
    assert len(lines) < MAX_PAGE_TRACEBACK_LINES + 2 * 12_000
    assert lines[-2:] == ["x", "E: x"]


def test_a_long_traceback_keeps_its_end() -> None:
    e = {"exc_type": "E", "exc_value": "\n".join(map(str, range(3000))), "frames": []}
    lines = format_exception_chain([e])
    assert len(lines) == MAX_TRACEBACK_LINES
    assert lines[0] == "[txairflowrpc: 2002 lines of this traceback left out]"
    assert lines[-1] == "2999"


def test_every_line_of_a_traceback_is_one_line() -> None:
    """A line break in a frame or a note must not start a line a CI runner obeys."""
    lines = format_exception_chain([{
        "exc_type": "E\n::error::t", "exc_value": "a\n::add-mask::b", "exc_notes": ["n\n::x"],
        "frames": [{"filename": 'f"\n::warning::x', "lineno": "1\r\n::y", "name": "n\n::z"}]}])
    assert all("\n" not in line and "\r" not in line for line in lines)
    assert lines[1] == '  File "f"\\n::warning::x", line 1\\r\\n::y, in n\\n::z'
    assert lines[2:] == ["E\\n::error::t: a", "::add-mask::b", "n", "::x"]


def test_every_member_of_a_group_counts_whatever_it_is() -> None:
    """From a third reading: 400,000 members that were no exceptions cost 1,000 lines' work each."""
    group = {"exc_type": "ExceptionGroup", "exc_value": "g", "frames": [], "is_group": True,
             "exceptions": [0] * 400_000}
    lines = format_exception_chain([group])
    assert len(lines) < 4 * MAX_EXCEPTIONS
    assert lines[-1] == f"[txairflowrpc: {400_000 - MAX_EXCEPTIONS + 1} more exceptions left out]"


def test_past_a_pages_budget_an_exception_is_its_type_and_message() -> None:
    e = {"exc_type": "E", "exc_value": "why\nmore", "exc_notes": ["a note"], "frames": [],
         "is_group": True, "exceptions": [[{"exc_type": "Inner", "exc_value": "v"}]]}
    lines = format_log_content([{"event": "x", "error_detail": [e] * 4}] * 2_000)
    assert lines[-2:] == ["x", "E: why"]


def test_a_value_that_is_no_text_is_named_by_its_type() -> None:
    deep: Any = []
    for _ in range(5000):
        deep = [deep]
    lines = format_exception_chain([{"exc_type": "E", "exc_value": deep,
                                     "frames": [{"filename": {"a": 1}, "lineno": 3.5}]}])
    assert lines[1:] == ['  File "<dict>", line 3.5, in ?', "E: <list>"]


def test_no_character_that_splits_lines_is_left_in_a_line() -> None:
    odd = "a\x0bb\x0cc\x1cd\x1de\x1ef\x85g\u2028h\u2029i\r\nj"
    lines = format_exception_chain([{"exc_type": odd, "exc_value": "v", "exc_notes": [odd],
                                     "frames": [{"filename": odd, "lineno": 1, "name": odd}]}])
    assert all(len(line.splitlines()) <= 1 for line in lines)
