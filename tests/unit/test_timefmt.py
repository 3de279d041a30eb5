from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import pytest

from txairflowrpc.core.timefmt import MICROSECONDS, iso_day, iso_micro, parse_xmlrpc_time


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


UTC = timezone.utc


@pytest.mark.parametrize("text,expected", [
    ("20260102T03:04:05", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)),  # the spec's, Python's
    ("20260102T030405", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)),  # Java's aXMLRPC
    ("2026-01-02T03:04:05", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)),
    ("20260102T03:04:05Z", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)),  # Node, local: false
    ("2026-01-02T03:04:05.250Z", datetime(2026, 1, 2, 3, 4, 5, 250000, tzinfo=UTC)),
    ("20260102T03:04:05+01:00", datetime(2026, 1, 2, 2, 4, 5, tzinfo=UTC)),
    ("20260102T03:04:05-0530", datetime(2026, 1, 2, 8, 34, 5, tzinfo=UTC)),
    ("20260102T03:04:05.1234567", datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)),
])
def test_the_datetimes_stock_clients_write_are_read(text: str, expected: datetime) -> None:
    """Found by review: only the spec's spelling was read; Java's every date was refused."""
    parsed = parse_xmlrpc_time(text)
    assert parsed == expected and parsed is not None and parsed.utcoffset() is not None


@pytest.mark.parametrize("text", [
    "", "yesterday", "2026-01-02", "20260102T03:04", "20260230T00:00:00", "20260102T24:00:00",
    "20260102T03:04:05+24:00", "20260102T03:04:05 ", "password=hunter2", "\u0662026-01-02T03:04:05",
    "20260102T03:04:05+1", "20260102T03:04:05Zjunk",
    "20260102T03:04:05+00:99", "2026-0102T03:04:05", "20260102T03:0405",  # found by review
])
def test_what_is_no_datetime_is_none(text: str) -> None:
    assert parse_xmlrpc_time(text) is None


def test_an_offset_is_honoured_to_the_minute() -> None:
    parsed = parse_xmlrpc_time("20260102T00:00:00+05:45")
    assert parsed is not None and parsed.utcoffset() == timedelta(hours=5, minutes=45)
