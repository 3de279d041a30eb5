"""
The service log's formats, for ``twistd --logger``.

The service log (twistd's, not the audit trail) holds events: start and
stop, reloads, the circuit opening and closing, a cap reached, the audit
trail failing and recovering, readiness, warnings and errors.  It has no
line per call or per request: the audit trail records every one.

twistd writes its log as text by default.  These two observer factories
replace that (``twistd -n --logger NAME airflowrpc ...``) and write to
standard output, where systemd's journal or a container runtime collects it:

- `journal_observer`: one line per event with a syslog priority prefix
  (``<4>`` for a warning) that journald reads as the entry's priority, so
  ``journalctl -p warning`` works; no timestamp (the journal keeps its own).
- `json_observer`: JSON Lines for log shippers: ``time`` (UTC, ISO 8601),
  ``level``, ``namespace``, ``message``, ``traceback`` when there is one,
  and the event's own plain fields (``request_id``, ``trigger`` ...).

With ``listen.workers`` > 1 every worker's lines name it: the supervisor
sets `WORKER_ENVIRONMENT` for each, and the journal line starts
``<6>[w1][namespace]``, the JSON record has ``"worker": 1`` (twistd's
default text log cannot say it).  The supervisor's own lines have neither.

Both leave out Twisted's chatter about connections, which would otherwise
come back as lines per call: the Airflow pool's "Starting factory" and
"Stopping factory" for each new upstream connection, and "Timing out
client" for each idle keep-alive connection closed.

Twisted's own `twisted.logger.jsonFileLogObserver` is not used for JSON: its
records are for Twisted to read back (an RS byte before each, the level as a
serialized constant, the message as an unformatted template), which
shippers cannot use as they are.
"""

from __future__ import annotations

import json
import os
import re
import sys
from datetime import datetime, timezone
from functools import partial
from typing import IO, Any

from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    ILogObserver,
    LogEvent,
    LogLevel,
    PredicateResult,
    formatEvent,
)

__all__ = ["journal_observer", "json_observer", "journal_line", "json_line", "is_chatter",
           "fatal", "WORKER_ENVIRONMENT"]

#: Set by the supervisor in each worker's environment: the worker's index.
WORKER_ENVIRONMENT = "AIRFLOWRPC_WORKER"

#: syslog priorities (sd-daemon(3)) of Twisted's levels.
_PRIORITY = {
    LogLevel.debug: 7, LogLevel.info: 6, LogLevel.warn: 4, LogLevel.error: 3,
    LogLevel.critical: 2,
}

#: Keys of legacy (twisted.python.log) events that are not the event's own data.
_LEGACY_KEYS = frozenset({"message", "system", "time", "isError", "format", "why", "failure",
                          "logLevel", "printed"})


def is_chatter(event: LogEvent) -> bool:
    """Is ``event`` one of Twisted's per-connection info lines?"""
    if event.get("log_level") not in (LogLevel.info, LogLevel.debug):
        return False
    namespace = event.get("log_namespace", "")
    text = event.get("log_format") or ""
    return (namespace == "twisted.web.client._HTTP11ClientFactory"
            and text.startswith(("Starting factory", "Stopping factory"))) or (
        text.startswith("Timing out client"))


def _events(observer: ILogObserver) -> ILogObserver:
    def predicate(event: LogEvent) -> PredicateResult:
        return PredicateResult.no if is_chatter(event) else PredicateResult.maybe

    return FilteringLogObserver(observer, [predicate])


def _message(event: LogEvent) -> str:
    text = formatEvent(event)
    failure = event.get("log_failure")
    if failure is not None and not text:
        text = failure.getErrorMessage()
    return text


def _traceback(event: LogEvent) -> str | None:
    failure = event.get("log_failure")
    if failure is None:
        return None
    try:
        return str(failure.getTraceback())
    except Exception:  # a failure that cannot be formatted must not lose the event
        return f"{failure.type}: (traceback unavailable)"


def this_worker() -> int | None:
    """The index `WORKER_ENVIRONMENT` gives this process, if it is a worker."""
    value = os.environ.get(WORKER_ENVIRONMENT, "")
    return int(value) if value.isdigit() else None


#: syslog's priorities (the journal's prefix) as levels: emerg, alert, crit,
#: err, warning, notice, info, debug.
_FROM_PRIORITY = (LogLevel.critical, LogLevel.critical, LogLevel.critical, LogLevel.error,
                  LogLevel.warn, LogLevel.info, LogLevel.info, LogLevel.debug)
#: A line's level as each observer writes it: twistd's text (``[namespace#error]``),
#: the journal's priority prefix (``<3>``), JSON Lines (``"level": "error"``).
_TEXT_LEVEL = re.compile(r"\S+ \[[^\]\s]*#(debug|info|warn|error|critical)\] ")
_JOURNAL_LEVEL = re.compile(r"<([0-7])>")
_JSON_LEVEL = re.compile(r'"level": ?"(debug|info|warn|error|critical)"')


def level_of_line(line: str) -> LogLevel | None:
    """
    The level a log line written by one of the observers says it has (a
    worker's, relayed by a daemonized supervisor), or None if it says none.
    """
    text = _TEXT_LEVEL.match(line)
    if text is not None:
        return LogLevel.levelWithName(text.group(1))
    journal = _JOURNAL_LEVEL.match(line)
    if journal is not None:
        return _FROM_PRIORITY[int(journal.group(1))]
    if line.startswith("{"):
        found = _JSON_LEVEL.search(line)
        if found is not None:
            return LogLevel.levelWithName(found.group(1))
    return None


def journal_line(event: LogEvent, worker: int | None = None) -> str:
    """
    ``<priority>[namespace] message`` (``<priority>[wK][namespace] message``
    from worker K), each line of a traceback prefixed alike.
    """
    level = event.get("log_level", LogLevel.info)
    if event.get("isError"):
        level = LogLevel.error
    who = "" if worker is None else f"[w{worker}]"
    prefix = f"<{_PRIORITY.get(level, 6)}>{who}[{event.get('log_namespace', '-')}] "
    lines = _message(event).splitlines() or [""]
    traceback = _traceback(event)
    if traceback:
        lines += traceback.rstrip("\n").splitlines()
    return "".join(prefix + line + "\n" for line in lines)


def json_line(event: LogEvent, worker: int | None = None) -> str:
    """
    One JSON object on one line (non-ASCII escaped, so no value can split
    it); ``worker`` names the worker that wrote it.
    """
    level = event.get("log_level", LogLevel.info)
    if event.get("isError"):
        level = LogLevel.error
    when = datetime.fromtimestamp(event.get("log_time", 0.0), timezone.utc)
    record: dict[str, Any] = {}
    for key, value in event.items():
        if key.startswith("log_") or key in _LEGACY_KEYS:
            continue
        if value is None or isinstance(value, (str, int, float, bool)):
            record[key] = value
    record.update({
        "time": when.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "level": level.name,
        "namespace": event.get("log_namespace", "-"),
        "message": _message(event),
    })
    if worker is not None:
        record["worker"] = worker
    traceback = _traceback(event)
    if traceback:
        record["traceback"] = traceback
    return json.dumps(record, default=str) + "\n"


def to_journal(stream: IO[str]) -> bool:
    """
    Whether ``stream`` is connected to systemd's journal: ``$JOURNAL_STREAM``
    (``DEVICE:INODE``, set by systemd for a service whose output goes there)
    names its file.  The variable alone does not say it: a program started
    from such a service inherits it with a stream of its own (sd-daemon(3)).
    """
    device, _, inode = os.environ.get("JOURNAL_STREAM", "").partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):  # io.UnsupportedOperation is both
        return False
    return (st.st_dev, st.st_ino) == (int(device), int(inode))


def fatal(message: str, stream: IO[str] | None = None) -> SystemExit:
    """
    What start-up raises to stop with ``message`` as its one line on standard
    error (``stream``) and exit status 1.  Printed before twistd's log begins,
    the journal would store the line at priority info, out of sight of
    ``journalctl -p warning``: to the journal it goes with ``<3>`` (error)
    before it, as `journal_line` prefixes the log's lines.
    """
    return SystemExit(for_stderr(message, stream=stream))


def for_stderr(message: str, level: LogLevel = LogLevel.error,
               stream: IO[str] | None = None) -> str:
    """
    ``message`` as a line for standard error (``stream``): with the journal's
    priority prefix for ``level`` when that is the journal (`fatal`), so that
    a command run by the unit (``ExecReload=``'s config check) is seen by
    ``journalctl -p warning`` too.
    """
    if to_journal(stream or sys.stderr):
        return f"<{_PRIORITY[level]}>{message}"
    return message


def journal_observer(out: IO[str] | None = None) -> ILogObserver:
    """For ``twistd --logger``: priority-prefixed lines on standard output."""
    return _events(FileLogObserver(out or sys.stdout,
                                   partial(journal_line, worker=this_worker())))


def json_observer(out: IO[str] | None = None) -> ILogObserver:
    """For ``twistd --logger``: JSON Lines on standard output."""
    return _events(FileLogObserver(out or sys.stdout, partial(json_line, worker=this_worker())))
