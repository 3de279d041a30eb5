"""
The ``airflowrpc`` command, for operators, auditors and callers.

    airflowrpc token create --principal NAME [--roles R,...] [--days N]
    airflowrpc token list | rotate ID | revoke ID
    airflowrpc audit verify [--public-key FILE | --hmac-key FILE] [--shipped FILE] FILE|DIR...
                                      check the audit chain(s) and their checkpoints:
                                      one chain per instance, each on its own
    airflowrpc audit keygen --out PREFIX [--hmac]
                                      a key to sign checkpoints with
    airflowrpc audit digest [--target] VALUE
                                      the digest a record would hold of VALUE (a conf
                                      or other JSON argument; --target: a refused
                                      request's target), to check a guess against it
    airflowrpc config check [FILE]    check a config file as twistd would
    airflowrpc call METHOD [ARG...]   call the gateway (for scripts; see client/)
    airflowrpc trigger DAG [--conf JSON] [--run-id ID] [--wait] [--timeout S]
                                      trigger a run, retry-safe (for CI pipelines)
    airflowrpc backfill DAG FROM TO [--conf JSON] [--dry-run] [--wait] [--timeout S]
                                      backfill a scheduled DAG, retry-safe

The token commands take ``--config`` (default conf/airflowrpc.toml) to find
the token store and the audit trail; each change is recorded there.  It
works on files only: a running gateway picks the changes up by itself.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import socket
import sys
import tomllib
from datetime import datetime, timezone
from pathlib import Path

from twisted.logger import LogLevel

from .. import config as config_module
from ..audit import checkpoint
from ..audit.chain import append_now
from ..audit.summary import Summarizer, load_digest_key, redact
from ..audit.verify import ChainReport, check_chains, find_chains, read_shipped
from ..client import commands as client_commands
from ..client.errors import UsageError
from ..client.values import parse_json
from ..core.shown import shown
from ..gate.refusals import target_fields
from ..identity import tokens
from .checked import load_checked
from .logs import for_stderr


#: ``audit verify``'s exit status: the chain is whole (and, if a key was
#: given, every record is covered by a good checkpoint) ...
WHOLE = 0
#: ... a record is altered, missing, out of order or torn, or a checkpoint's
#: signature does not match a key given ...
BROKEN = 1
#: ... a key file (or a --shipped file) cannot be used ...
BAD_INPUT = 2
#: ... the chain is whole, but (a key given) it has no checkpoint, or
#: records after the last one: those are not proven ...
NOT_COVERED = 3
#: ... the chain is whole (and proven, if a key was given), but changes went
#: to Airflow with no outcome recorded: look them up in Airflow.
OPEN_INTENTS = 4


#: How many times `audit verify` checks again when the files it lists after
#: a check are not those it listed before (a rotation while it read).
RELISTS = 3


def audit_verify(
    files: list[str], public_keys: list[str], hmac_keys: list[str], shipped: list[str],
) -> int:
    try:
        verifiers = [checkpoint.public_key(Path(p)) for p in public_keys]
        verifiers += [checkpoint.hmac_verifier(Path(p)) for p in hmac_keys]
        kept = []
        for f in shipped:
            found = read_shipped(Path(f))
            if not found:
                raise ValueError(f"{f} holds no checkpoint")
            kept += found
    except ValueError as e:
        print(f"airflowrpc: {e}", file=sys.stderr)
        return BAD_INPUT
    # Each directory's current file and its rotated copies are one chain, in
    # chain order whatever order the shell gave them in (audit.jsonl sorts
    # before audit.jsonl.2026...); several instances' chains are checked
    # each on its own.
    paths, skip = [Path(f) for f in files], [Path(f) for f in shipped]
    chains, others = find_chains(paths, skip=skip)
    if not chains:
        print(f"airflowrpc: no audit files in {' '.join(files)}", file=sys.stderr)
        return BAD_INPUT
    result = check_chains(chains, verifiers, kept)
    for _ in range(RELISTS):
        # A live chain that rotated between the listing and the reading: its
        # current file was then read after files that did not lead to it, or
        # alone (found by review: a verify under load said records were
        # missing, 6 times in 6).  Listed again, the files are what they are.
        again, others = find_chains(paths, skip=skip)
        if again == chains:
            break
        chains, result = again, check_chains(again, verifiers, kept)
    # What the files hold is shown, never obeyed (found by review: an instance
    # name with escapes erased the NOT COVERED line on a terminal, a seq with
    # a line break forged a "chain whole" line).
    print("\n".join(map(shown, result.lines())))
    for other in others:
        print(shown(f"skipped (not an audit file): {other}"))
    statuses = [_status(report, bool(verifiers)) for _, report in result.chains]
    if result.orphan_shipped:
        statuses.append(BROKEN)
    # The worst first, in the order a single chain's checks are made.
    return min(statuses, key=[BROKEN, NOT_COVERED, OPEN_INTENTS, WHOLE].index)


def _status(report: ChainReport, keyed: bool) -> int:
    if not report.whole:
        return BROKEN
    if keyed and not report.proven:
        return NOT_COVERED
    if report.open_intents:
        return OPEN_INTENTS
    return WHOLE


def audit_keygen(prefix: str, shared_secret: bool) -> int:
    try:
        made = (checkpoint.hmac_keygen if shared_secret else checkpoint.keygen)(Path(prefix))
    except ValueError as e:
        print(f"airflowrpc: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"airflowrpc: {e.filename}: {e.strerror}", file=sys.stderr)
        return 1
    if made.public is None:
        print(f"{made.secret}: shared secret (mode 0600), key id {made.key_id}: set "
              f"[audit] hmac_key_file to it, and give a copy to whoever verifies "
              f"(airflowrpc audit verify --hmac-key)")
    else:
        print(f"{made.secret}: private key (mode 0600), key id {made.key_id}: set "
              f"[audit] signing_key to it; it never leaves this host")
        print(f"{made.public}: public key: keep a copy off this host, for "
              f"airflowrpc audit verify --public-key")
    return 0


def audit_digest(config: str, value: str, target: bool) -> int:
    """
    Print the digest a record holds of ``value`` under the config's digest
    key, as the record writes it: a JSON argument (a conf) redacted as the
    gateway redacts it, or with ``target`` a request-target's bytes.
    """
    cfg = _load(config)
    key_file = cfg.audit.digest_key_file
    if key_file is None or not key_file.exists():
        print(f"airflowrpc: no digest key at {key_file} (the gateway makes it when it first "
              f"starts)", file=sys.stderr)
        return BAD_INPUT
    try:
        key = load_digest_key(key_file)
    except (OSError, ValueError) as e:
        print(f"airflowrpc: audit.digest_key_file: {e}", file=sys.stderr)
        return BAD_INPUT
    if target:
        digest = target_fields(value.encode("latin-1", "replace"), key)["target"]
    else:
        try:
            parsed = parse_json(value, "VALUE")
        except UsageError as e:
            print(f"airflowrpc: {e} (a string is quoted: '\"text\"')", file=sys.stderr)
            return BAD_INPUT
        sensitive = cfg.audit.redact_keys
        digest = Summarizer(sensitive, key).digest(redact(parsed, sensitive))
    print(json.dumps(digest, sort_keys=True))
    return WHOLE


def config_check(path: str) -> int:
    try:
        checked = load_checked(path)
    except config_module.ConfigError as e:
        # The line twistd stops with, for the same config (and the same grep),
        # at the journal's priority error when the unit's ExecReload= runs it.
        print(for_stderr(f"airflowrpc: {path}: {e}"), file=sys.stderr)
        return 1
    cfg = checked.config
    for warning in checked.warnings(datetime.now(timezone.utc)):
        print(for_stderr(f"airflowrpc: {path}: warning: {warning}", LogLevel.warn),
              file=sys.stderr)
    proxied = (" behind the PROXY protocol from "
               + ", ".join(map(str, cfg.listen.proxy_from))) if cfg.listen.proxy_protocol else ""
    print(f"{path}: OK (listening on {cfg.listen.host}:{cfg.listen.port}{proxied}, "
          f"Airflow at {cfg.airflow.base_url}, audit to {cfg.audit.path} "
          f"as instance {cfg.audit.instance})")
    return 0


def _load(path: str) -> config_module.Config:
    try:
        return config_module.load(path)
    except config_module.ConfigError as e:
        raise SystemExit(f"airflowrpc: {path}: {e}") from None


def _store(cfg: config_module.Config) -> Path:
    if cfg.access.auth.token_store is None:
        raise SystemExit("airflowrpc: tokens are off: set [auth] token_store in the config")
    return cfg.access.auth.token_store


def _actor() -> str:
    """
    Who runs the command, for its audit records: the user its process runs
    as (found by review: ``getpass.getuser`` reads LOGNAME and USER first,
    which anyone sets), and the user sudo says ran it (``sudo -u`` to the
    service's user too), said to come from the environment.
    """
    uid = os.getuid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = f"uid {uid}"
    sudo = os.environ.get("SUDO_USER")
    said = f" (SUDO_USER={sudo[:64]!r})" if sudo else ""
    return f"{name}@{socket.gethostname()}{said}"


def _record(cfg: config_module.Config, event: str, **fields: object) -> str | None:
    """
    ``event`` on the config's audit chain, followed by a checkpoint signed
    with the gateway's key where the command can read it (`_signer`); why
    it could not be written, or None.
    """
    try:
        append_now(cfg.audit.path, {"event": event, "actor": _actor(), **fields},
                   signer=_signer(cfg))
    except OSError as e:
        return f"{e.filename}: {e.strerror}"
    except Exception as e:  # noqa: BLE001 -- the change is made: say so, whatever failed
        # Found by review: a file whose last line is no record raised here.
        return f"{cfg.audit.path}: {type(e).__name__}: {str(e)[:200]}"
    return None


def _not_recorded(what: str, problem: str | None) -> int:
    """
    The exit status of a token change made in the store: 1, said loudly, if
    it is not on the audit trail (found by review: a full disk lost a new
    token's secret, which was printed only after the record).
    """
    if problem is None:
        return 0
    print(f"airflowrpc: {what}, but NOT recorded on the audit trail: {problem}",
          file=sys.stderr)
    return 1


def _signer(cfg: config_module.Config) -> checkpoint.Signer | None:
    """
    The gateway's signing key, if the command can read it: unsigned, a record
    leaves the chain not proven until the gateway's next checkpoint (with
    workers, whose supervisor seldom writes there, for good).
    """
    try:
        return checkpoint.signer_from(cfg.audit.signing_key, cfg.audit.hmac_key_file)
    except (ValueError, OSError) as e:
        print(f"airflowrpc: warning: the audit record is not signed: {e}", file=sys.stderr)
        return None


def _revoke_anyway(args: argparse.Namespace, problem: config_module.ConfigError) -> int:
    """
    ``token revoke`` with a config that does not load: a typo elsewhere in
    it must not stand between an operator and a revocation.  The store and
    the audit file are taken from ``[auth] token_store`` and ``[audit] path``
    alone, as the gateway would read them; revoking only ever takes access
    away.
    """
    source = Path(args.config)
    try:
        document = tomllib.loads(source.read_text("utf-8"))
        store, trail = document["auth"]["token_store"], document["audit"]["path"]
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, KeyError, TypeError):
        raise SystemExit(f"airflowrpc: {args.config}: {problem}") from None
    if not isinstance(store, str) or not store or not isinstance(trail, str) or not trail:
        raise SystemExit(f"airflowrpc: {args.config}: {problem}")
    store_path, trail_path = source.parent / store, source.parent / trail
    if trail_path.is_dir() or not os.access(trail_path.parent, os.W_OK):
        raise SystemExit(f"airflowrpc: {args.config}: {problem}; and [audit] path "
                         f"{trail_path} cannot be written: nothing revoked")
    print(f"airflowrpc: warning: {args.config}: {problem}; revoking in the token store it "
          f"names all the same ({store_path}): a gateway still running on another config "
          f"reads its own", file=sys.stderr)
    return _revoke(store_path, trail_path, args.id)


def _revoke(store: Path, trail: Path, token_id: str,
            signer: checkpoint.Signer | None = None) -> int:
    """Revoke ``token_id`` in ``store`` and record it in ``trail``; the exit status."""
    try:
        record = tokens.revoke(store, token_id, datetime.now(timezone.utc))
    except (ValueError, tokens.TokenOwnerError) as e:
        print(f"airflowrpc: {e}", file=sys.stderr)
        return 1
    try:
        append_now(trail, {"event": "token.revoked", "actor": _actor(),
                           "token_id": record.id, "principal": record.principal},
                   signer=signer)
    except Exception as e:  # noqa: BLE001 -- the revocation is made: say so, whatever failed
        why = (f"{e.filename}: {e.strerror}" if isinstance(e, OSError)
               else f"{trail}: {type(e).__name__}: {str(e)[:200]}")
        print(f"airflowrpc: token {record.id} of {record.principal} is revoked, but NOT "
              f"recorded: {why}", file=sys.stderr)
        return 1
    print(f"token {record.id} of {record.principal} is revoked.")
    return 0


def token_command(args: argparse.Namespace) -> int:
    try:
        cfg = config_module.load(args.config)
    except config_module.ConfigError as e:
        if args.token_command == "revoke":
            return _revoke_anyway(args, e)
        raise SystemExit(f"airflowrpc: {args.config}: {e}") from None
    path = _store(cfg)
    now = datetime.now(timezone.utc)
    settings = cfg.access.auth
    try:
        if args.token_command == "create":
            if args.principal not in cfg.access.principals:
                raise ValueError(f"no principal {args.principal!r} in {args.config}")
            roles = None
            if args.roles is not None:
                roles = tuple(r for r in args.roles.split(",") if r)
                if not roles:  # found by review: "" gave every role the principal has
                    raise ValueError("--roles names no role: leave it out for the "
                                     "principal's roles")
            own = cfg.access.principals[args.principal].roles
            for role in roles or ():
                if role not in cfg.access.roles:
                    raise ValueError(f"no role {role!r} in {args.config}")
                if role not in own:
                    raise ValueError(
                        f"principal {args.principal!r} does not have role {role!r}: a token's "
                        f"roles must be among its principal's ({', '.join(own) or 'none'})")
            record, token = tokens.create(
                path, args.principal, roles, args.days or settings.token_days, now)
            problem = _record(cfg, "token.created", token_id=record.id,
                              principal=record.principal,
                              roles=list(roles) if roles is not None else None,
                              expires=record.expires.strftime("%Y-%m-%dT%H:%M:%SZ"))
            print(token)
            print(f"token {record.id} for {record.principal}, expires "
                  f"{record.expires:%Y-%m-%d}. It is shown once and stored only as a hash.",
                  file=sys.stderr)
            return _not_recorded(f"token {record.id} of {record.principal} is created",
                                 problem)
        elif args.token_command == "rotate":
            old, new, token = tokens.rotate(
                path, args.id, args.days or settings.token_days, settings.rotation_overlap, now)
            problem = _record(cfg, "token.rotated", token_id=old.id, new_token_id=new.id,
                              principal=new.principal,
                              old_expires=old.expires.strftime("%Y-%m-%dT%H:%M:%SZ"))
            print(token)
            print(f"token {new.id} replaces {old.id}, which keeps working until "
                  f"{old.expires:%Y-%m-%dT%H:%M:%SZ}.", file=sys.stderr)
            return _not_recorded(f"token {new.id} replaces {old.id}", problem)
        elif args.token_command == "revoke":
            return _revoke(path, cfg.audit.path, args.id, _signer(cfg))
        else:
            rows = list(tokens.listing(path, now))
            columns = ["id", "principal", "roles", "created", "expires", "state"]
            widths = {c: max([len(c), *(len(r[c]) for r in rows)]) for c in columns}
            print("  ".join(c.ljust(widths[c]) for c in columns))
            for row in rows:
                print("  ".join(row[c].ljust(widths[c]) for c in columns))
    except (ValueError, tokens.TokenOwnerError) as e:
        print(f"airflowrpc: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # the store or its lock (found by review: a traceback)
        print(f"airflowrpc: {e.filename or path}: {e.strerror or e}", file=sys.stderr)
        return 1
    return 0


DEFAULT_CONFIG = "conf/airflowrpc.toml"


def _days(text: str) -> int:
    """A token's lifetime in days, as ``--days`` takes it."""
    try:
        days = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of days: {text[:20]!r}") from None
    if not 1 <= days <= config_module.access.MAX_DAYS:
        raise argparse.ArgumentTypeError(f"must be from 1 to {config_module.access.MAX_DAYS}")
    return days


def _config_option(parser: argparse.ArgumentParser) -> None:
    """
    ``--config FILE`` on ``parser``.  Every level of a command that reads the
    config takes it, so ``token --config F create`` and ``token create
    --config F`` both work; the innermost one given wins.
    """
    parser.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                        help=f"the gateway's config file (default {DEFAULT_CONFIG})")


def parser() -> argparse.ArgumentParser:
    # Its errors never echo a token typed where it does not belong.
    top = client_commands.Parser(prog="airflowrpc", description=__doc__.split("\n\n")[0])
    _config_option(top)
    commands = top.add_subparsers(dest="command", required=True)
    audit = commands.add_parser("audit", help="work with the audit trail")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_commands.add_parser(
        "verify", help="report the first broken or missing record, or that the chain is whole; "
        "with a key, check every checkpoint and report records no checkpoint covers",
        description="Exit status: 0 the chain is whole (with a key: and every record is "
        "covered by a checkpoint whose signature matches); 1 broken (an altered, missing or "
        "torn record, a bad signature, a kept checkpoint missing or changed); 2 a key or "
        "--shipped file cannot be used; 3 whole, but with a key "
        "given there is no checkpoint, or records after the last one; 4 whole, but "
        "changes went to Airflow with no outcome recorded (listed).")
    verify.add_argument("--public-key", action="append", default=[], metavar="FILE",
                        help="Ed25519 public key (PEM) that signs checkpoints (repeatable)")
    verify.add_argument("--hmac-key", action="append", default=[], metavar="FILE",
                        help="HMAC-SHA256 shared secret that signs checkpoints (repeatable)")
    verify.add_argument("--shipped", action="append", default=[], metavar="FILE",
                        help="checkpoints kept off the host (JSON Lines; other records are "
                        "skipped): each must be in the chain unchanged (repeatable)")
    verify.add_argument("files", nargs="+", metavar="FILE|DIR",
                        help="audit files, or directories holding them (searched whole): "
                        "the files sharing a name in one directory, a rotation suffix aside, "
                        "are one instance's chain; each chain is checked on its own")
    keygen = audit_commands.add_parser(
        "keygen", help="write a new checkpoint signing key: PREFIX.key (private, 0600) and "
        "PREFIX.pub; with --hmac, a shared secret PREFIX.hmac (0600)")
    keygen.add_argument("--out", required=True, metavar="PREFIX")
    keygen.add_argument("--hmac", action="store_true",
                        help="a shared secret for HMAC-SHA256 instead of an Ed25519 key pair")
    digest = audit_commands.add_parser(
        "digest", help="print the digest a record would hold of VALUE, under the config's "
        "audit.digest_key_file, to check a guess against a record",
        description="Exit status: 0 printed; 2 the key or VALUE cannot be used.")
    _config_option(digest)
    digest.add_argument("--target", action="store_true",
                        help="VALUE is a refused request's target (the record's 'target'), "
                        "not a JSON argument")
    digest.add_argument("value", metavar="VALUE",
                        help="a JSON value as the call sent it (a conf: '{\"day\": "
                        "\"2026-11-28\"}', a string: '\"text\"'), or with --target a "
                        "request-target such as /wp-login.php")
    token = commands.add_parser("token", help="create, list, rotate and revoke tokens")
    _config_option(token)
    token_commands = token.add_subparsers(dest="token_command", required=True)
    create = token_commands.add_parser("create", help="mint a token (shown once)")
    create.add_argument("--principal", required=True)
    create.add_argument("--roles", help="comma-separated roles (default: the principal's)")
    create.add_argument("--days", type=_days, help="lifetime (default: [auth] token_days)")
    listing = token_commands.add_parser("list", help="list tokens (never their secrets)")
    rotate = token_commands.add_parser("rotate", help="issue a successor; the old one "
                                       "keeps working for [auth] rotation_overlap_seconds")
    rotate.add_argument("id")
    rotate.add_argument("--days", type=_days)
    revoke = token_commands.add_parser("revoke", help="revoke at once")
    revoke.add_argument("id")
    for sub in (create, listing, rotate, revoke):
        _config_option(sub)
    cfg = commands.add_parser("config", help="work with the config file")
    _config_option(cfg)
    cfg_commands = cfg.add_subparsers(dest="config_command", required=True)
    cfg_check = cfg_commands.add_parser("check", help="check a config file as twistd would")
    _config_option(cfg_check)
    cfg_check.add_argument("path", nargs="?", metavar="FILE",
                           help="the file to check (default: --config)")
    # The caller's commands talk to a gateway over XML-RPC; --config is not theirs.
    client_commands.add_to(commands)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command in client_commands.NAMES:
        return client_commands.run(args)
    config = getattr(args, "config", DEFAULT_CONFIG)
    if args.command == "token":
        args.config = config
        return token_command(args)
    if args.command == "audit":
        if args.audit_command == "keygen":
            return audit_keygen(args.out, args.hmac)
        if args.audit_command == "digest":
            return audit_digest(config, args.value, args.target)
        return audit_verify(args.files, args.public_key, args.hmac_key, args.shipped)
    return config_check(args.path or config)


if __name__ == "__main__":
    sys.exit(main())
