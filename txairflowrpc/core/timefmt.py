"""
The two time formats the gateway writes: whole seconds for what callers see
(expiry dates, certificate dates), microseconds for the audit trail.  Both
are ISO-8601 in UTC with a trailing ``Z``.  And the one it reads from
callers' XML-RPC ``dateTime.iso8601`` values, as stock clients write them.
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta, timezone

SECONDS = "%Y-%m-%dT%H:%M:%SZ"
MICROSECONDS = "%Y-%m-%dT%H:%M:%S.%fZ"


def iso_seconds(moment: datetime) -> str:
    """``2026-01-31T12:00:00Z``: an aware datetime, in UTC, to the second."""
    return moment.astimezone(timezone.utc).strftime(SECONDS)


#: The last whole second formatted, and its text up to the seconds: every
#: audit record and every call's timestamps need it, and within one second
#: only the microseconds change.  One tuple, so that the reactor and the
#: audit thread always see a matching pair.
_last_second: tuple[int, str] = (0, "1970-01-01T00:00:00")


def _split(seconds: float) -> tuple[str, int]:
    """The whole second's text and the microseconds, rounded as `datetime.fromtimestamp` does."""
    global _last_second
    frac, whole = math.modf(seconds)
    micro = round(frac * 1_000_000)
    if micro >= 1_000_000:
        whole, micro = whole + 1, micro - 1_000_000
    elif micro < 0:
        whole, micro = whole - 1, micro + 1_000_000
    second = int(whole)
    cached = _last_second
    if cached[0] != second:
        cached = _last_second = (
            second, datetime.fromtimestamp(second, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"))
    return cached[1], micro


def iso_micro(seconds: float) -> str:
    """``2026-01-31T12:00:00.123456Z``: a POSIX time, in UTC, to the microsecond."""
    text, micro = _split(seconds)
    return f"{text}.{micro:06d}Z"


def iso_day(seconds: float) -> str:
    """``2026-01-31``: the UTC day of a POSIX time (as `iso_micro` would round it)."""
    return _split(seconds)[0][:10]


def utc(seconds: float) -> datetime:
    """A POSIX time as an aware datetime in UTC."""
    return datetime.fromtimestamp(seconds, timezone.utc)


def parse_iso(text: str) -> datetime:
    """An ISO-8601 time with a zone (``Z`` accepted); ValueError otherwise."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


#: What stock XML-RPC clients write in a ``dateTime.iso8601``: the spec's
#: ``20260131T12:00:00`` (Python, Go's kolo, Node, PHP, Perl, Ruby), without
#: the colons (Java's aXMLRPC: ``20260131T120000``), with hyphens, with a
#: fraction, with ``Z`` or an offset (Node's ``local: false``).
_XMLRPC_TIME = re.compile(  # a date's hyphens, and a time's colons, both or neither
    r"(\d{4})(-?)(\d{2})\2(\d{2})T(\d{2})(:?)(\d{2})\6(\d{2})(?:[.,](\d{1,6})\d*)?"
    r"(Z|[+-]\d{2}(?::?[0-5]\d)?)?", re.ASCII)


def parse_xmlrpc_time(text: str) -> datetime | None:
    """
    A ``dateTime.iso8601`` value's text as an aware datetime: in its own zone
    when it names one, else taken as UTC (XML-RPC's dateTime has none);
    None if it is no time in any of the forms clients write (`_XMLRPC_TIME`).
    Found by review: only the spec's one spelling was taken, so every date
    from Java's aXMLRPC, and Node's with ``Z``, was refused.
    """
    match = _XMLRPC_TIME.fullmatch(text)
    if match is None:
        return None
    year, _, month, day, hour, _, minute, second, fraction, zone = match.groups()
    tz = timezone.utc
    if zone and zone != "Z":
        digits = zone[1:].replace(":", "")
        offset = timedelta(hours=int(digits[:2]), minutes=int(digits[2:] or 0))
        if offset >= timedelta(hours=24):
            return None
        tz = timezone(-offset if zone[0] == "-" else offset)
    try:
        return datetime(int(year), int(month), int(day), int(hour), int(minute), int(second),
                        int((fraction or "0").ljust(6, "0")), tzinfo=tz)
    except ValueError:
        return None
