from __future__ import annotations

import random
from datetime import datetime, timezone

import pytest

from txairflowrpc.core.timefmt import MICROSECONDS, iso_day, iso_micro


def _reference(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).strftime(MICROSECONDS)


@pytest.mark.parametrize("seconds", [
    0.0, 1.0000005, 1.0000015, 1764200000.9999995, 1764200000.9999994, 1764200000.1234565,
    1767225599.9999996,  # rounds up into the next second, day and year
    1767225599.999999, 1767225600.0, 951782400.5, 4102444800.000001,
])
def test_iso_micro_rounds_as_datetime_does(seconds: float) -> None:
    assert iso_micro(seconds) == _reference(seconds)
    assert iso_day(seconds) == _reference(seconds)[:10]


def test_iso_micro_matches_datetime_whichever_second_came_before() -> None:
    # The reactor and the audit thread share the cached second: times that
    # go back and forth between seconds (and days) must never mix them up.
    rng = random.Random(20261127)
    base = 1767225590.0
    for _ in range(20000):
        seconds = base + rng.uniform(0, 20) if rng.random() < 0.9 else rng.uniform(0, 4e9)
        assert iso_micro(seconds) == _reference(seconds), seconds
        assert iso_day(seconds) == _reference(seconds)[:10], seconds
