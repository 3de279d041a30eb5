"""
Every refused request and connection, on the audit trail.

Two kinds of refusal, recorded two ways:

- A refusal of a caller who has shown who it is (a body too large, a wrong
  content type, a path that is not ``/RPC2``, XML that is not XML-RPC) is
  recorded like a call: `RefusalLog.record` gives a Deferred that fires once
  the record is on disk, and the answer leaves only then.  Each costs the
  caller one call of its rate (``limits.rate_per_second``, `charge`); past
  it, its refusals are counted per principal as below, as are its calls
  refused for the rate itself: a caller, even one with no scopes at all,
  cannot write the trail's disk full (which would fail every call) at the
  speed it can send.
- What anyone can cause at will, without credentials (a failed TLS handshake,
  no or bad credentials, a connection over a cap, a malformed or too slow
  request) would cost an fsync each and let a scanner write the disk full:
  `RefusalLog.note` writes the first of a kind (and reason) from a source at
  once, counts the rest, and writes one record per source, kind and reason
  per minute with the count.  At most `MAX_REASONS` reasons of a kind are
  told apart per source (a caller could vary them at will: an unknown token
  id is part of its reason), at most `MAX_SOURCES` sources are tracked
  per window (the rest are counted under ``"*"``), and at most `MAX_AT_ONCE`
  firsts are written at once per window (the others' first is counted into
  their window's record): however many addresses a flood comes from (an
  IPv6 /48 holds 65,536 /64 sources), a window writes at most
  `MAX_AT_ONCE` + `MAX_SOURCES` records, plus one per kind for the rest.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Any, Callable

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from ..audit.log import AuditLog
from ..audit.summary import clip
from ..identity.backoff import source_key

_log = Logger()

#: Sources tracked per window before the rest share one record.  Found by
#: review: 10,000 let one holder of an IPv6 /50 write 20,000 records (11 MB)
#: a minute, 16 GB a day.
MAX_SOURCES = 2_000
#: Firsts written at once per window (each source's first is, up to this).
MAX_AT_ONCE = 1_000
#: Reasons of one kind told apart per source and window.
MAX_REASONS = 8
#: Who a genuine but refused credential named (`Unauthenticated.claimed`):
#: part of what a tally counts, so that a record names each caller it counts.
CLAIMED_FIELDS = ("oidc_issuer", "oidc_sub")


@attrs.define
class _Tally:
    count: int = 0
    last: dict[str, Any] = attrs.Factory(dict)


class RefusalLog:
    """
    Records refusals on ``audit`` (None: records nothing).

    :param window: seconds over which refusals of one kind from one source
        are counted into one record.
    :param digest_key: the trail's digest key (`target_fields`); None: a
        key of this process alone.
    """

    def __init__(self, audit: AuditLog | None, clock: IReactorTime, window: float = 60.0,
                 digest_key: bytes | None = None) -> None:
        self._audit = audit
        self._digest_key = digest_key or secrets.token_bytes(32)
        self._clock = clock
        self._window = window
        #: What one source is for an IPv6 address (``limits.ipv6_source_prefix``).
        self.ipv6_prefix = 64
        self._tallies: dict[tuple[str, str, str], _Tally] = {}
        self._reasons: dict[tuple[str, str], int] = {}
        #: Firsts written at once in this window (at most `MAX_AT_ONCE`).
        self._at_once = 0
        self._flush_call: IDelayedCall | None = None
        #: Spends one call of a principal's rate; False when none is left
        #: (then its refusal is counted, not written on its own).  None: free.
        self.charge: Callable[[str], bool] | None = None
        #: How many refusals were noted (aggregated or not); for the admin listener.
        self.noted = 0
        #: The same by kind (``request`` for those `record` writes one by one).
        self.kinds: dict[str, int] = {}

    def target_fields(self, target: bytes) -> dict[str, Any]:
        """`target_fields` under this log's digest key."""
        return target_fields(target, self._digest_key)

    def record(self, fields: dict[str, Any], *, charged: bool = False) -> Deferred[None]:
        """
        Record one refusal; the Deferred fires once it is on disk (or at once
        without an audit log) and never fails: a refusal is answered even when
        the trail cannot be written (the trail then refuses every call anyway).
        ``charged``: its caller paid for the request already (a body paid for
        before it was parsed), so it is not charged a call again.
        """
        principal = fields.get("principal")
        if (self.charge is not None and not charged and isinstance(principal, str)
                and not self.charge(principal)):
            self.note(str(fields.get("source", "")), "request", fields, by=principal)
            return succeed(None)
        self.noted += 1
        self.kinds["request"] = self.kinds.get("request", 0) + 1
        if self._audit is None:
            return succeed(None)
        # While the log fails, a refusal waits like an anonymous one: among
        # at most MAX_DROPPABLE_QUEUED, the rest counted, never an endless queue.
        d = self._audit.append(_refused(fields), droppable=self._audit.failed is not None)
        d.addErrback(lambda f: None)
        return d

    def note(self, source: str, kind: str, fields: dict[str, Any], *,
             by: str | None = None) -> None:
        """
        Count a refusal anyone can cause; the first of ``kind`` (and reason)
        from ``source`` in a window is written at once, the others as one
        record with ``count`` when the window ends.  Never waits for the disk.

        :param by: the principal whose refusals these are: counted by it
            rather than by source.
        """
        self.noted += 1
        self.kinds[kind] = self.kinds.get(kind, 0) + 1
        # Tallied by source as every per-source limit counts it (the
        # record keeps the whole address of the first one), or by principal.
        host = (f"principal {by}" if by is not None
                else source_key(source.rpartition(":")[0] or source, self.ipv6_prefix))
        reason = str(fields.get("reason", ""))
        if any(name in fields for name in CLAIMED_FIELDS):  # one tally per caller named
            reason = "\x00".join([reason, *(str(fields.get(n)) for n in CLAIMED_FIELDS)])
        key = (host, kind, reason)
        tally = self._tallies.get(key)
        if tally is None:
            told = self._reasons.get((host, kind), 0)
            if len(self._tallies) >= MAX_SOURCES:
                key = ("*", kind, "*")
            elif told >= MAX_REASONS:
                key = (host, kind, "*")
            else:
                self._reasons[(host, kind)] = told + 1
                if self._at_once < MAX_AT_ONCE:
                    self._at_once += 1
                    self._tallies[key] = _Tally()
                    self._write({**fields, "source": source, "refusal": kind, "count": 1})
                    self._schedule()
                    return
                # Past the firsts a window writes at once: counted, its own
                # record at the window's end.
            tally = self._tallies.setdefault(key, _Tally())
        tally.count += 1
        tally.last = {**fields, "source": source if key[0] != "*" else "*"}
        if key[2] == "*":
            tally.last["reason"] = "(reasons of this kind, more than a record each)"
            for name in CLAIMED_FIELDS:  # they were one caller's, not all of these
                tally.last.pop(name, None)
        self._schedule()

    def flush(self) -> None:
        """Write what was counted and not yet written (at the window's end, or at shutdown)."""
        self._flush_call = None
        tallies, self._tallies = self._tallies, {}
        self._reasons = {}
        self._at_once = 0
        for (_, kind, _), tally in tallies.items():
            if tally.count:
                self._write({**tally.last, "refusal": kind, "count": tally.count,
                             "window_seconds": self._window})

    def _schedule(self) -> None:
        if self._flush_call is None or not self._flush_call.active():
            self._flush_call = self._clock.callLater(self._window, self.flush)

    def stop(self) -> None:
        """Flush and stop counting (the service is stopping)."""
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self.flush()

    def _write(self, fields: dict[str, Any]) -> None:
        if self._audit is not None:
            self._audit.append(_refused(fields), droppable=True).addErrback(lambda f: None)


#: The one request-target the gateway serves: a record names it as it is.
RPC_TARGET = b"/RPC2"
#: HTTP's methods (RFC 9110, and PATCH): a record names one of these, any
#: other as ``other``.  Found by review: a method is any token the caller
#: chooses (``gwt_0123456789ab`` was recorded as it came, anonymously).
HTTP_METHODS = frozenset({b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT",
                          b"OPTIONS", b"TRACE", b"PATCH"})


def method_field(method: bytes) -> str | None:
    """What a record says of a request's method (None: none was read)."""
    if not method:
        return None
    return method.decode("ascii") if method in HTTP_METHODS else "other"


def target_fields(target: bytes, key: bytes) -> dict[str, Any]:
    """
    What a record says of a request's target: `RPC_TARGET` as it is; any
    other only as its HMAC-SHA256 under ``key`` (the trail's digest key) and
    size.  Found by review, twice: a target can carry what a caller should
    never have sent, in more places than a filter can know (``user:token@``
    in an absolute or ``//`` URI, ``?access_token=``, ``;jsessionid=``, a JWT
    or a percent-encoded token in the path), so none of it is kept; whoever
    holds the key can still tell two targets apart or test a guess.
    """
    if not target:  # none was read (a malformed request line)
        return {}
    if target == RPC_TARGET:
        return {"path": target.decode("ascii")}
    return {"target": {"hmac_sha256": hmac.new(key, target, hashlib.sha256).hexdigest(),
                       "size": len(target)}}


def _refused(fields: dict[str, Any]) -> dict[str, Any]:
    record = {"kind": "refused", "decision": "denied", **fields}
    for name in ("reason", "tls_error"):
        if isinstance(record.get(name), str):
            record[name] = clip(record[name])
    return {k: v for k, v in record.items() if v is not None}
