"""`Like` against a real SQL engine's LIKE (SQLite's: ASCII case ignored, like ILIKE)."""

from __future__ import annotations

import random
import sqlite3

import pytest

from txairflowrpc.core.like import Like

IDS = ["etl_orders", "ETL_Orders_daily", "ml_target", "mlXtarget", "a.b-c", "x", "",
       "team_a_hourly", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaZ", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"]


def sql_like(text: str, pattern: str) -> bool:
    with sqlite3.connect(":memory:") as db:
        return bool(db.execute("SELECT ? LIKE ?", (text, f"%{pattern}%")).fetchone()[0])


@pytest.mark.parametrize("pattern", [
    "", "%", "%%", "etl", "ETL_O", "e_l", "orders_", "ml_target", "ml%get", "_", "__________",
    "a.b", "-c", "%_%", "d%y", "o%d%l", "z",
    # Found by review: one `.*` per % backtracked for seconds per DAG id.
    "%_" * 8 + "Z", "%_" * 12 + "Z", "%_" * 12 + "Q",
])
def test_like_matches_as_sql_does(pattern: str) -> None:
    like = Like(pattern)
    assert [like.matches(t) for t in IDS] == [sql_like(t, pattern) for t in IDS]


def test_random_patterns_match_as_sql_does() -> None:
    rng = random.Random(7)
    alphabet = "ab_%.-AB"
    for _ in range(500):
        pattern = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 8)))
        text = "".join(rng.choice("abAB.-_") for _ in range(rng.randint(0, 12)))
        assert Like(pattern).matches(text) == sql_like(text, pattern), (pattern, text)


def test_case_is_ignored_for_ascii_letters_only_and_the_pattern_is_kept_shortest() -> None:
    """From the second reading: Python's IGNORECASE also took 'ı' and 'ſ' for 'i' and 's'."""
    assert Like("I").matches("ami") and not Like("i").matches("\u0131") and not Like(
        "s").matches("\u017f")
    assert [sql_like(t, "i") for t in ("\u0131", "I")] == [False, True]
    assert Like("%%a%%b%").pattern == "a%b" and Like("%%").pattern == ""
