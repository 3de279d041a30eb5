"""
``airflowrpc call``, ``airflowrpc trigger`` and ``airflowrpc backfill``:
their parsers, and what they run.

`add_to` puts them under the ``airflowrpc`` command's subparsers
(``service/cli.py``); `run` runs the one parsed and returns the exit
status (see `txairflowrpc.client.errors`).  Time, sleep and the
environment are parameters, so the tests drive the wait on a fake clock.

With ``--wait``, ``--timeout`` is one deadline for the whole command, from
its start (`txairflowrpc.client.deadline`).  Whatever ends a command that
made or found a run or backfill -- success, failure, a later error, the
deadline, Ctrl-C, SIGTERM -- that run or backfill, as last known, is on
stdout (`_LastKnown`).
"""

from __future__ import annotations

import argparse
import math
import os
import random
import re
import signal
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from typing import Any

from ..core import errors as codes
from . import backfilling, errors, failures, runid, settings, values
from .console import Console, redact_shapes
from .deadline import Bounded, Deadline
from .errors import ClientError, UsageError
from .retry import Backoff, call_with_retries, refused_before_it_ran
from .transport import DEFAULT_TIMEOUT, Caller, Gateway, Typed
from .waiting import DEFAULT_CHUNK, Progress, wait_for_run

NAMES = ("call", "trigger", "backfill")
DEFAULT_WAIT = 3600
DEFAULT_LOG_LINES = 50
#: Airflow keeps 1000 characters of a run's note, the gateway 700 of the caller's.
MAX_NOTE = 700

EXIT_CALL = """\
exit status:
  0  done: the result is on stdout
  2  bad usage: arguments, flags, settings (or fault -32601, -32602)
  3  not let in: HTTP 401, fault 403, the TLS handshake refused our certificate
  4  not found or conflict: fault 404, 409
  5  unavailable or broken: faults 429, 502, 503, 504, 507, -32603 and the
     other protocol faults, HTTP errors, no connection
  130, 143  interrupted: Ctrl-C, SIGTERM
"""

EXIT_TRIGGER = """\
exit status:
  0  triggered (with --wait: the run succeeded)
  1  the run failed (--wait); the failed tasks' log tails are on stderr
  2  bad usage: arguments, flags, settings (or fault -32601, -32602)
  3  not let in: HTTP 401, fault 403, the TLS handshake refused our certificate
  4  not found or conflict: fault 404, 409 (e.g. the run id exists with
     another conf)
  5  unavailable or broken: faults 429, 502, 503, 504, 507 (after bounded
     retries), -32603, HTTP errors, no connection
  6  the run did not finish within --timeout (--wait), which bounds the whole
     command, retries and log tails too; it goes on in Airflow
  130, 143  interrupted: Ctrl-C, SIGTERM (a CI job cancelled); the run goes on
"""

EXIT_BACKFILL = """\
exit status:
  0  created (with --wait: it completed and every run succeeded), or the dry
     run's count
  1  runs of the backfill failed, or it was cancelled, or not all of its
     runs were found to count (--wait); the first failed run's failed
     tasks' log tails are on stderr
  2  bad usage: arguments, flags, settings (or fault -32601, -32602: e.g. a
     range with nothing to create, or more runs than the gateway allows)
  3  not let in: HTTP 401, fault 403, the TLS handshake refused our certificate
  4  not found or conflict: fault 404, 409 (another backfill of the DAG runs)
  5  unavailable or broken: faults 429, 502, 503, 504, 507, -32603, HTTP
     errors, no connection
  6  the backfill had not completed (or its runs were not counted) within
     --timeout (--wait), which bounds the whole command; it goes on
  130, 143  interrupted: Ctrl-C, SIGTERM (a CI job cancelled); it goes on
"""

BACKFILL_DESCRIPTION = """\
Backfill DAG (a scheduled one) over its logical dates from FROM to TO
(ISO-8601 with a time zone, both included): Airflow creates a run for each
at once. The backfill is printed as JSON on stdout (with created, runs and,
after --wait, succeeded and failed). With --wait, follow it until it has
completed, with a line on stderr when it changes (running, paused,
completed) and once a minute; exit 0 only if every run succeeded.

Safe to retry: Airflow runs one backfill of a DAG at a time, so a second
try of the same command meets the first try's backfill (or, once that has
completed, a range whose dates all have runs); the command then finds the
DAG's backfill over the same range with the same conf and follows it
(created false) instead of failing.

  airflowrpc backfill example_daily 2026-02-01T00:00:00Z 2026-02-28T00:00:00Z --dry-run
  airflowrpc backfill example_daily 2026-02-01T00:00:00Z 2026-02-28T00:00:00Z \\
      --conf '{"who": "ci"}' --max-active-runs 4 --wait
"""

CALL_DESCRIPTION = """\
Call METHOD on the gateway with ARGs. Its result is printed as one line of
JSON on stdout; a fault goes to stderr, and the exit status says its class.

Each ARG is JSON when it is JSON: '{"day": "2026-01-01"}', 120, true, null,
'"123"' (a string that looks like a number). A word that is not JSON is a
string as it stands: etl_orders, 2026-01-01T00:00:00Z. One that starts with
{ [ or " must be valid JSON. @FILE reads the JSON from a file, @- from stdin.
null is sent as <nil/> (the gateway's "not given"), integers beyond 32 bits
as <i8>.

  airflowrpc call get_dag etl_orders
  airflowrpc call trigger_dag etl_orders '{"day": "2026-01-01"}' \\
      '{"dag_run_id": "nightly-1"}'
  airflowrpc call wait_dag_run etl_orders nightly-1 600
"""

TRIGGER_DESCRIPTION = """\
Trigger a run of DAG with a run id that makes retries safe: a second trigger
with the same run id finds the run (created false) instead of starting
another. The run is printed as JSON on stdout (with created and, after
--wait, finished). With --wait, wait for the run, with a line on stderr when
its state changes (and once a minute); exit 0 only if it succeeded, and if
it failed print the end of each failed task's log on stderr. Transient
failures (503, 504, no connection) are retried with back-off.

run id, the first that applies:
  --run-id ID, or AIRFLOWRPC_RUN_ID
  GitLab CI:      gitlab-$CI_PIPELINE_ID-$CI_JOB_NAME
  GitHub Actions: github-OWNER.REPO-$GITHUB_RUN_ID-$GITHUB_JOB ($GITHUB_REPOSITORY's / a .)
  Jenkins:        $BUILD_TAG
  otherwise a fresh id (running the command again then starts another run)
These stay the same when a CI job is retried, so a retried job finds its
run. A job that triggers the same DAG twice needs --run-id for the second.
"""


def _number(kind: Callable[[str], Any], text: str) -> Any:
    """
    ``text`` as a ``kind`` (int or float); what is not one is named without
    its value (found by review: argparse's "invalid int value: '...'" showed
    whatever was there, a token pasted in the wrong place among them).
    """
    what = "a whole number" if kind is int else "a number"
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not {what} (the value given is not shown)") from None
    if not math.isfinite(value):  # float's "nan" and "inf": no timeout
        raise argparse.ArgumentTypeError(f"not {what}: {text}")
    return value


def _positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = _number(kind, text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be more than 0: {text}")
        return value
    parse.__name__ = kind.__name__
    return parse


def _not_negative(text: str) -> int:
    value = _number(int, text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text}")
    return value


class Parser(argparse.ArgumentParser):
    """
    An ArgumentParser whose errors never show a token: argparse quotes what
    it did not understand ("unrecognized arguments: ..."), which may be a
    token typed where it does not belong.  Beyond the shapes a token has
    (`redact_shapes`), an unknown command and the values among unrecognized
    arguments are not shown (found by review: ``airflowrpc --token SECRET
    call`` took SECRET for the command and printed it); flags are.
    """

    def error(self, message: str) -> Any:
        message = _INVALID_CHOICE.sub(
            "invalid choice (a flag's value given before the command is taken for it: "
            "flags go after the command; ", message)
        head, found, rest = message.partition("unrecognized arguments: ")
        if found:
            message = head + found + " ".join(
                word.split("=", 1)[0] if word.startswith("-") else "..." for word in rest.split())
        super().error(redact_shapes(message))


#: argparse's "invalid choice: 'X' (choose from ...)": X is left out.
_INVALID_CHOICE = re.compile(r"invalid choice: .* \((?=choose from)", re.DOTALL)


class _NoTokenFlag(argparse.Action):
    """
    ``--token``: there is none, and the usual "unrecognized arguments" error
    would print the token it was given.  This one does not.
    """

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        parser.error("there is no --token flag (a command line is visible to every local "
                     "user and ends up in CI logs): set AIRFLOWRPC_TOKEN or use --token-file; "
                     "the value given was not used")


def _connection_flags() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    group = common.add_argument_group("connection (flags win over the environment)")
    group.add_argument("--url", metavar="URL", help="the gateway, https://HOST:PORT/RPC2 "
                       "(AIRFLOWRPC_URL)")
    group.add_argument("--ca", metavar="FILE", help="CA bundle (PEM) the gateway's "
                       "certificate is checked against (AIRFLOWRPC_CA; default: the system's)")
    group.add_argument("--cert", metavar="FILE", help="client certificate, PEM "
                       "(AIRFLOWRPC_CERT)")
    group.add_argument("--key", metavar="FILE", help="its unencrypted key, PEM "
                       "(AIRFLOWRPC_KEY; default: in the certificate file)")
    group.add_argument("--token-file", metavar="FILE", help="file holding a gateway token "
                       "or JWT (or set AIRFLOWRPC_TOKEN to the token itself)")
    group.add_argument("--aws", action="store_true", help="sign in with the AWS IAM identity "
                       "botocore finds: environment, profile, instance or task role "
                       "(AIRFLOWRPC_AWS=1; needs pip install 'txairflowrpc[aws]')")
    group.add_argument("--aws-server-id", metavar="ID", help="the gateway's aws.server_id "
                       "(AIRFLOWRPC_AWS_SERVER_ID; default: the URL's host name)")
    group.add_argument("--aws-sts-endpoint", metavar="URL", help="the STS endpoint the gateway "
                       "forwards to, its aws.sts_endpoint (AIRFLOWRPC_STS_ENDPOINT; "
                       "default: https://sts.amazonaws.com)")
    common.add_argument("--token", nargs="?", action=_NoTokenFlag, help=argparse.SUPPRESS)
    common.add_argument("-v", "--verbose", action="store_true",
                        help="say on stderr what is sent and answered (never a credential)")
    return common


def add_to(subparsers: Any) -> None:
    """Add ``call``, ``trigger`` and ``backfill`` to the ``airflowrpc`` command's subparsers."""
    common = _connection_flags()
    raw = argparse.RawDescriptionHelpFormatter
    call = subparsers.add_parser(
        "call", parents=[common], formatter_class=raw, allow_abbrev=False,
        help="call one gateway method; its result as JSON on stdout",
        description=CALL_DESCRIPTION, epilog=EXIT_CALL)
    call.add_argument("method", metavar="METHOD", help="e.g. get_dag (system.listMethods "
                      "lists them)")
    call.add_argument("args", nargs="*", metavar="ARG", help="its arguments, in order")
    call.add_argument("--timeout", type=_positive(float), metavar="S",
                      help=f"seconds to wait for the answer (default {DEFAULT_TIMEOUT:g}; "
                      f"for wait_dag_run, plus its own timeout)")
    trigger = subparsers.add_parser(
        "trigger", parents=[common], formatter_class=raw, allow_abbrev=False,
        help="trigger a DAG, retry-safe; with --wait, wait and exit by how the run ended",
        description=TRIGGER_DESCRIPTION, epilog=EXIT_TRIGGER)
    trigger.add_argument("dag_id", metavar="DAG")
    trigger.add_argument("--conf", metavar="JSON", help="the run's conf, a JSON object "
                         "(@FILE: from a file, @-: from stdin)")
    trigger.add_argument("--run-id", metavar="ID", help="the run id (default: derived, "
                         "see above)")
    trigger.add_argument("--note", metavar="TEXT", help="the run's note in Airflow (default: "
                         "a link to the CI job, if there is one)")
    trigger.add_argument("--wait", action="store_true",
                         help="wait for the run to finish; exit 0 only if it succeeded")
    trigger.add_argument("--timeout", type=_positive(int), metavar="S",
                         help=f"with --wait: give up after S seconds from the start, retries "
                         f"and log tails included (default {DEFAULT_WAIT}; exit 6, the run "
                         f"goes on)")
    trigger.add_argument("--log-lines", type=_not_negative, default=DEFAULT_LOG_LINES,
                         metavar="N", help=f"last lines of each failed task's log to show "
                         f"(default {DEFAULT_LOG_LINES})")
    trigger.add_argument("--progress-every", type=_positive(int), default=DEFAULT_CHUNK,
                         metavar="S", help=f"with --wait: a state change is reported within "
                         f"S seconds (each wait_dag_run call asks for S; default "
                         f"{DEFAULT_CHUNK})")
    backfill = subparsers.add_parser(
        "backfill", parents=[common], formatter_class=raw, allow_abbrev=False,
        help="backfill a scheduled DAG over a range, retry-safe; with --wait, follow it",
        description=BACKFILL_DESCRIPTION, epilog=EXIT_BACKFILL)
    backfill.add_argument("dag_id", metavar="DAG")
    backfill.add_argument("from_date", metavar="FROM", help="the first logical date")
    backfill.add_argument("to_date", metavar="TO", help="the last logical date")
    backfill.add_argument("--conf", metavar="JSON", help="every run's conf, a JSON object "
                          "(@FILE: from a file, @-: from stdin)")
    backfill.add_argument("--reprocess", choices=("none", "failed", "completed"),
                          help="dates that already have a run: run the failed ones again, "
                          "or all of them (needs scope tasks:clear; default none)")
    backfill.add_argument("--max-active-runs", type=_positive(int), metavar="N",
                          help="runs at a time (default Airflow's: 10)")
    backfill.add_argument("--backwards", action="store_true",
                          help="run the latest date first")
    backfill.add_argument("--dry-run", action="store_true",
                          help="only print how many runs it would create, and their dates")
    backfill.add_argument("--wait", action="store_true",
                          help="follow it until it has completed; exit 0 only if every run "
                          "succeeded")
    backfill.add_argument("--timeout", type=_positive(int), metavar="S",
                          help=f"with --wait: give up after S seconds from the start, the "
                          f"count of its runs included (default {DEFAULT_WAIT}; exit 6, it "
                          f"goes on)")
    backfill.add_argument("--log-lines", type=_not_negative, default=DEFAULT_LOG_LINES,
                          metavar="N", help=f"last lines of each failed task's log to show "
                          f"(default {DEFAULT_LOG_LINES})")
    backfill.add_argument("--progress-every", type=_positive(int),
                          default=backfilling.DEFAULT_EVERY, metavar="S",
                          help=f"with --wait: seconds between two looks at it (default "
                          f"{backfilling.DEFAULT_EVERY})")


class _LastKnown:
    """
    The run or backfill a command made or found, as last known, for stdout:
    printed once, by the command when it ends as planned, or by `run` when
    something else ends it (a later error, the deadline, Ctrl-C, SIGTERM),
    so that a pipeline always learns of what exists in Airflow.
    """

    def __init__(self, console: Console, ending: Callable[[], None] = lambda: None) -> None:
        self._console = console
        self._ending = ending
        self._value: dict[str, Any] | None = None
        self._printed = False

    def saw(self, value: dict[str, Any]) -> None:
        """``value`` is now the last known state."""
        self._value = value

    def print(self, value: dict[str, Any] | None = None) -> None:
        """``value`` (or the last known state) on stdout, unless it is there already."""
        if value is not None:
            self._value = value
        if self._value is not None and not self._printed:
            self._ending()  # the command is ending: a SIGTERM now must not cut the line
            self._console.result(self._value)
            self._printed = True


class _Termination:
    """
    SIGTERM, which a CI sends when a job is cancelled (GitLab's cancel, a
    Jenkins abort), ends the command as Ctrl-C does (`errors.Terminated`),
    rather than killing it silently: raised at most once, and never once
    the command is ending (`ending`: printing its result, or winding down
    after an error), so that nothing cuts short the line a pipeline reads.
    """

    def __init__(self) -> None:
        self.ended = False

    def ending(self) -> None:
        self.ended = True

    def __call__(self, signum: int, frame: Any) -> None:
        if not self.ended:
            self.ended = True
            raise errors.Terminated()

    def install(self) -> Callable[[], None]:
        """
        Handle SIGTERM (only from the main thread, the one place Python
        takes a signal handler); what puts the previous handler back.
        """
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        previous = signal.signal(signal.SIGTERM, self)
        return lambda: signal.signal(signal.SIGTERM,
                                     previous if previous is not None else signal.SIG_DFL)


def run(
    args: argparse.Namespace, *, environ: Mapping[str, str] | None = None,
    console: Console | None = None, clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep, rand: Callable[[], float] = random.random,
    connect: Callable[..., Caller] = Gateway,
) -> int:
    """
    Run the parsed ``call``, ``trigger`` or ``backfill``; the exit status.
    While it runs, SIGTERM is handled as Ctrl-C is (exit 143, not 130).
    """
    environ = os.environ if environ is None else environ
    console = console or Console()
    termination = _Termination()
    known = _LastKnown(console, termination.ending)
    restore = termination.install()
    try:
        try:
            if args.command == "call":
                return _call(args, environ, console, connect)
            if args.command == "backfill":
                return _backfill(args, environ, console, clock, sleep, rand, connect, known)
            return _trigger(args, environ, console, clock, sleep, rand, connect, known)
        except ClientError as e:
            termination.ending()
            known.print()
            console.note(e.message)
            return e.exit_status
        except (KeyboardInterrupt, errors.Terminated) as e:
            termination.ending()
            return _interrupted(console, known, isinstance(e, errors.Terminated))
        except Exception as e:  # a bug of ours: say what, never leak a secret
            termination.ending()
            console.note(f"internal error in the client: {type(e).__name__}: {e}")
            if getattr(args, "verbose", False):
                console.lines(traceback.format_exc().splitlines())
            return errors.CLIENT_BUG
    except errors.Terminated:  # came as an error was being handled, before it said so
        return _interrupted(console, known, True)
    finally:
        restore()


def _interrupted(console: Console, known: _LastKnown, terminated: bool) -> int:
    known.print()
    console.note(f"{'terminated (SIGTERM)' if terminated else 'interrupted'}: a run "
                 f"already triggered or a backfill already created goes on in Airflow")
    return errors.TERMINATED if terminated else errors.INTERRUPTED


def _connect(
    args: argparse.Namespace, environ: Mapping[str, str], console: Console,
    connect: Callable[..., Caller],
) -> Caller:
    found = settings.read(environ, url=args.url, ca=args.ca, cert=args.cert, key=args.key,
                          token_file=args.token_file, aws=args.aws,
                          aws_server_id=args.aws_server_id,
                          aws_sts_endpoint=args.aws_sts_endpoint)
    console.add_secret(found.token)
    if args.verbose:
        how = [f"token from {found.token_source}"] if found.token else []
        how += [f"client certificate {found.cert}"] if found.cert else []
        how += [f"AWS IAM (server id {found.aws.server_id}, STS {found.aws.endpoint})"
                ] if found.aws else []
        console.note(f"gateway {found.url}, authenticating with "
                     f"{' and '.join(how) or 'nothing (no token, no certificate)'}")

    def expiring(when: str) -> None:
        console.note(f"the credential expires {when}: renew it before then "
                     f"(airflowrpc token rotate)")

    return Typed(connect(found, trace=console.note if args.verbose else None,
                         on_expiry=expiring))


def _call(
    args: argparse.Namespace, environ: Mapping[str, str], console: Console,
    connect: Callable[..., Caller],
) -> int:
    values.check_sendable(args.method, "METHOD")
    params = [values.parse_argument(word, i) for i, word in enumerate(args.args, 1)]
    timeout = args.timeout
    if timeout is None:
        timeout = DEFAULT_TIMEOUT
        if args.method == "wait_dag_run":
            # The gateway's default wait is 60 s (a null is "not given").
            waits = params[2] if len(params) > 2 and params[2] is not None else 60
            timeout += waits if isinstance(waits, int) and not isinstance(waits, bool) else 0
    gateway = _connect(args, environ, console, connect)
    console.result(gateway.call(args.method, *params, timeout=timeout))
    return errors.DONE


def _conf(text: str | None) -> dict[str, Any]:
    if text is None:
        return {}
    if text.startswith("@"):
        conf = values.parse_argument(text, 0, what="--conf")
    else:
        conf = values.parse_json(text, "--conf")
    if not isinstance(conf, dict):
        raise UsageError("--conf must be a JSON object, e.g. '{\"day\": \"2026-01-01\"}'")
    return conf


def _retrying(
    console: Console, failed: list[ClientError] | None = None,
) -> Callable[[ClientError, float], None]:
    """
    Tells ``console`` of a failure that is tried again, and the pause
    before it; adds it to ``failed``, if given.
    """
    def retrying(error: ClientError, pause: float) -> None:
        if failed is not None:
            failed.append(error)
        console.note(f"{error.message}; trying again in {pause:.1f} s")

    return retrying


def _bounded(gateway: Caller, deadline: Deadline | None) -> Caller:
    return gateway if deadline is None else Bounded(gateway, deadline)


def _at(deadline: Deadline | None) -> float | None:
    return None if deadline is None else deadline.at


def _trigger(
    args: argparse.Namespace, environ: Mapping[str, str], console: Console,
    clock: Callable[[], float], sleep: Callable[[float], None], rand: Callable[[], float],
    connect: Callable[..., Caller], known: _LastKnown,
) -> int:
    if args.timeout is not None and not args.wait:
        raise UsageError("--timeout needs --wait")
    deadline = Deadline.after(args.timeout or DEFAULT_WAIT, clock) if args.wait else None
    values.check_sendable(args.dag_id, "DAG")
    conf = _conf(args.conf)
    identity = runid.derive(environ, args.run_id)
    if identity.retry_safe:
        console.note(f"run id {identity.run_id} (from {identity.source})")
    else:
        console.note(f"run id {identity.run_id}: fresh, as neither --run-id, "
                     f"AIRFLOWRPC_RUN_ID nor a CI job was found; running this command again "
                     f"will start another run (it is retried safely only within this command)")
    options: dict[str, Any] = {"dag_run_id": identity.run_id}
    note = args.note if args.note is not None else (
        f"CI job: {identity.job_url}" if identity.job_url else None)
    if note:
        options["note"] = note[:MAX_NOTE]
        values.check_sendable(options["note"], "--note")
    gateway = _bounded(_connect(args, environ, console, connect), deadline)
    backoff = Backoff()
    failed_tries: list[ClientError] = []
    run = call_with_retries(
        lambda: gateway.call("trigger_dag", args.dag_id, conf, options),
        backoff=backoff, sleep=sleep, clock=clock, deadline=_at(deadline),
        on_retry=_retrying(console, failed_tries), rand=rand)
    # A try whose answer was lost may have made the run the next try finds:
    # then this command made it, though the answer in hand says otherwise.
    lost = [e for e in failed_tries if _maybe_made(e)]
    created = bool(run.get("created")) or bool(lost)
    known.saw({**run, "created": created})
    state = run.get("state")
    if run.get("created"):
        console.note(f"triggered run {identity.run_id} of {args.dag_id}")
    elif lost:
        console.note(f"run {identity.run_id} of {args.dag_id} exists: this command's earlier "
                     f"try, whose answer was lost ({lost[-1].message}), made it, unless an "
                     f"earlier job had (created true)" + (f"; it is {state}" if state else ""))
    else:
        console.note(f"run {identity.run_id} of {args.dag_id} already existed with this "
                     f"conf (an earlier try made it), so none was started"
                     + (f"; it is {state}" if state else ""))
    if deadline is None:
        known.print()
        return errors.DONE
    progress = Progress(console.note, what=f"run {identity.run_id} of {args.dag_id}",
                        clock=clock)
    final = wait_for_run(gateway, args.dag_id, identity.run_id, deadline.seconds,
                         progress=progress, chunk=args.progress_every, backoff=backoff,
                         clock=clock, sleep=sleep, rand=rand, deadline=deadline.at,
                         on_answer=lambda r: known.saw({**r, "created": created}))
    known.print({**final, "created": created})
    if final.get("state") == "success":
        return errors.DONE
    found = failures.failed_tasks(gateway, args.dag_id, identity.run_id, args.log_lines)
    console.lines(failures.report(found))
    failed = errors.RunFailed(args.dag_id, identity.run_id, str(final.get("state")))
    console.note(failed.message)
    if not created:
        console.note("this run existed before this command: trying again with the same run "
                     "id finds it again; clear its failed tasks in Airflow (or call "
                     "clear_task_instances) to run them again, or give a new --run-id")
    return failed.exit_status


#: Fault codes (and HTTP statuses, from a proxy in front) after which a
#: create may have been made all the same: its answer was lost on the way
#: back, or (507) the gateway could not record the outcome of a change
#: Airflow had made.
_MAYBE_MADE = frozenset({codes.UPSTREAM_ERROR, codes.UPSTREAM_UNAVAILABLE,
                         codes.UPSTREAM_TIMEOUT, codes.AUDIT_UNAVAILABLE})


def _maybe_made(error: ClientError) -> bool:
    """Whether what the failed call asked for may have been done all the same."""
    return (isinstance(error, errors.Unreachable)
            or getattr(error, "code", None) in _MAYBE_MADE
            or (isinstance(error, errors.HTTPRefused) and error.status in _MAYBE_MADE))


def _backfill(
    args: argparse.Namespace, environ: Mapping[str, str], console: Console,
    clock: Callable[[], float], sleep: Callable[[float], None], rand: Callable[[], float],
    connect: Callable[..., Caller], known: _LastKnown,
) -> int:
    if args.timeout is not None and not args.wait:
        raise UsageError("--timeout needs --wait")
    if args.dry_run and args.wait:
        raise UsageError("--dry-run creates nothing to wait for")
    deadline = Deadline.after(args.timeout or DEFAULT_WAIT, clock) if args.wait else None
    for text, what in ((args.dag_id, "DAG"), (args.from_date, "FROM"), (args.to_date, "TO")):
        values.check_sendable(text, what)
    # Without --conf, none (nil): Airflow gives new runs none and leaves a
    # reprocessed run's own as it was; {} would replace it (found by review).
    conf = None if args.conf is None else _conf(args.conf)
    options: dict[str, Any] = {}
    if args.reprocess is not None:
        options["reprocess_behavior"] = args.reprocess
    if args.max_active_runs is not None:
        options["max_active_runs"] = args.max_active_runs
    if args.backwards:
        options["run_backwards"] = True
    gateway = _bounded(_connect(args, environ, console, connect), deadline)
    dag_id, first, last = args.dag_id, args.from_date, args.to_date
    if args.dry_run:
        console.result(gateway.call("create_backfill", dag_id, first, last, conf,
                                    {**options, "dry_run": True}))
        return errors.DONE
    backoff = Backoff()
    try:
        # Once (the gateway never retries a create either: a second one would
        # meet the first; a later try of the command finds it, below), but
        # for a 429: refused before anything was asked of Airflow.
        backfill = call_with_retries(
            lambda: gateway.call("create_backfill", dag_id, first, last, conf, options),
            backoff=backoff, sleep=sleep, clock=clock, deadline=_at(deadline),
            on_retry=_retrying(console), rand=rand, retry_if=refused_before_it_ran)
        created = True
        console.note(f"created backfill {backfill.get('id')} of {dag_id}: "
                     f"{backfill.get('runs')} runs")
    except errors.OutOfTime:
        raise
    except ClientError as refused:
        code = getattr(refused, "code", None)
        # A 409: the DAG's one running backfill is in the way, perhaps an
        # earlier try's. A range with nothing left to create: an earlier
        # try's may have made it all, and completed. A lost answer: this
        # try's may exist. Each is known by its range, conf and options.
        nothing_left = code == codes.INVALID_PARAMS and codes.NOTHING_LEFT_TO_BACKFILL in str(
            getattr(refused, "text", ""))
        lost = _maybe_made(refused)
        if not (code == 409 or nothing_left or lost):
            raise
        try:
            found = backfilling.same_backfill(gateway, dag_id, first, last, conf, options,
                                              completed_too=nothing_left)
        except errors.OutOfTime as late:
            # Not the create's failure to tell: the time to look for what it made ran out.
            raise errors.OutOfTime(late.method, refused) from None
        except ClientError:
            found = None  # the search failed: the create's own answer is the one to tell
        if found is None:
            raise refused from None
        # After a lost answer, the running one found is taken to be this try's (as
        # `_trigger` says of a run its lost try made); after a 409, an earlier try's.
        backfill, created = found, lost
        console.note(
            f"{refused.message}; but backfill {backfill.get('id')} of {dag_id} over this "
            f"range with this conf exists (the lost answer's): following it" if lost else
            f"backfill {backfill.get('id')} of {dag_id} over this range with this conf "
            f"already existed (an earlier try made it), so none was created")
    if type(backfill.get("id")) is not int:  # found by review: none was exit 70
        raise errors.BadAnswer("create_backfill", "the backfill has no id")
    known.saw({**backfill, "created": created})
    if "runs" not in backfill:  # one found again: its runs, as far as Airflow made them
        backfill = {**backfill, "runs": call_with_retries(
            lambda: backfilling.tally(gateway, dag_id, backfill).runs, backoff=backoff,
            sleep=sleep, clock=clock, deadline=_at(deadline), rand=rand)}
        known.saw({**backfill, "created": created})
    if deadline is None:
        known.print()
        return errors.DONE
    expected = backfill.get("runs")
    if type(expected) is not int or expected < 0:  # found by review: 'two' was exit 70
        raise errors.BadAnswer("create_backfill", "its runs are not a count")
    progress = Progress(console.note, what=f"backfill {backfill.get('id')} of {dag_id}",
                        clock=clock)
    final = backfilling.follow_backfill(
        gateway, dag_id, backfill, deadline.seconds, progress=progress,
        every=args.progress_every, backoff=backoff, clock=clock, sleep=sleep, rand=rand,
        deadline=deadline.at,
        on_answer=lambda b: known.saw({**b, "runs": expected, "created": created}))
    told = call_with_retries(lambda: backfilling.tally(gateway, dag_id, final),
                             backoff=backoff, sleep=sleep, clock=clock, deadline=deadline.at,
                             on_retry=progress.retrying, rand=rand)
    # Runs the count did not find (a queued_at Airflow wrote before the
    # backfill's created_at, say) are not known to have succeeded: they
    # count as not succeeded, as a cancelled backfill's unended runs do.
    runs = max(expected, told.runs)
    known.print({**final, "runs": runs, "succeeded": told.succeeded, "failed": told.failed,
                 "created": created})
    if runs and told.succeeded == runs:
        return errors.DONE
    if told.runs < expected:
        console.note(f"only {told.runs} of the {expected} runs of backfill {final.get('id')} "
                     f"were found among the DAG's backfill runs over its range (queued since "
                     f"it was created): the others' outcome is unknown, so they count as not "
                     f"succeeded")
    if told.failed_ids:
        more = told.failed - len(told.failed_ids)
        console.note(f"failed runs: {', '.join(told.failed_ids)}"
                     + (f" and {more} more" if more else ""))
        try:
            console.lines(failures.report(
                failures.failed_tasks(gateway, dag_id, told.failed_ids[0], args.log_lines)))
        except ClientError as e:  # the outcome stands; only its detail is missing
            console.note(f"the failed tasks' logs could not be read: {e.message}")
    failed = errors.BackfillFailed(dag_id, final.get("id"), runs - told.succeeded, runs)
    console.note(failed.message)
    return failed.exit_status
