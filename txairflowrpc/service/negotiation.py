"""
What a scraper's ``Accept`` and ``Accept-Encoding`` ask of ``/metrics``,
made safe for prometheus_client's exposition.

prometheus_client 0.26 raises (`TypeError`) on a version it cannot parse
(``application/openmetrics-text; version=x``) and takes ``gzip;q=0`` for
gzip: one header was a 500 and a logged traceback per request (found by an
attacker's review).  A header it cannot read asks for the text format, as
none does; gzip is sent only where its quality is above 0.
"""

from __future__ import annotations

from prometheus_client.exposition import choose_encoder

#: The most of an ``Accept`` header looked at (a scraper's is under 200 bytes).
MAX_ACCEPT = 1024


def usable_accept(accept: str | None) -> str:
    """``accept`` if prometheus_client can choose a format by it; else '' (the text format)."""
    if not accept or len(accept) > MAX_ACCEPT:
        return ""
    try:
        choose_encoder(accept)
    except Exception:  # noqa: BLE001 - whatever it raises on an odd version
        return ""
    return accept


def gzip_wanted(accept_encoding: str | None) -> bool:
    """Whether ``Accept-Encoding`` takes gzip: named, with a quality above 0 (RFC 9110)."""
    for coding in (accept_encoding or "").split(",")[:32]:
        name, *params = coding.split(";")
        if name.strip().lower() != "gzip":
            continue
        quality = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value.strip())
                except ValueError:
                    quality = 0.0
        return quality > 0
    return False
