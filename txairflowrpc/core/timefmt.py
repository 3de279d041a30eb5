"""
The two time formats the gateway writes: whole seconds for what callers see
(expiry dates, certificate dates), microseconds for the audit trail.  Both
are ISO-8601 in UTC with a trailing ``Z``.
"""

from __future__ import annotations

from datetime import datetime, timezone

SECONDS = "%Y-%m-%dT%H:%M:%SZ"
MICROSECONDS = "%Y-%m-%dT%H:%M:%S.%fZ"


def iso_seconds(moment: datetime) -> str:
    """``2026-01-31T12:00:00Z``: an aware datetime, in UTC, to the second."""
    return moment.astimezone(timezone.utc).strftime(SECONDS)


def iso_micro(seconds: float) -> str:
    """``2026-01-31T12:00:00.123456Z``: a POSIX time, in UTC, to the microsecond."""
    return datetime.fromtimestamp(seconds, timezone.utc).strftime(MICROSECONDS)


def utc(seconds: float) -> datetime:
    """A POSIX time as an aware datetime in UTC."""
    return datetime.fromtimestamp(seconds, timezone.utc)


def parse_iso(text: str) -> datetime:
    """An ISO-8601 time with a zone (``Z`` accepted); ValueError otherwise."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))
