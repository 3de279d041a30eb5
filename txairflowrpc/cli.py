"""
The ``airflowrpc`` command, for operators and auditors.

    airflowrpc audit verify FILE...   check the audit chain (exit 1 if broken)
    airflowrpc config check [FILE]    check a config file as twistd would

It works on files only and never talks to a running gateway.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import config as config_module
from .audit import verify
from .tls import server_options


def _first_seq(path: Path) -> float:
    try:
        with path.open("rb") as f:
            return float(json.loads(f.readline())["seq"])
    except (OSError, ValueError, KeyError, TypeError):
        return float("inf")


def audit_verify(files: list[str]) -> int:
    # Rotated files and the current one, in chain order whatever order the
    # shell gave them in (audit.jsonl sorts before audit.jsonl.2026...).
    paths = sorted((Path(f) for f in files), key=_first_seq)
    whole, message = verify(paths)
    print(message if whole else f"BROKEN: {message}")
    return 0 if whole else 1


def config_check(path: str) -> int:
    try:
        cfg = config_module.load(path)
        server_options(cfg.tls)
    except config_module.ConfigError as e:
        print(f"{path}: {e}", file=sys.stderr)
        return 1
    print(f"{path}: OK (listening on {cfg.listen.host}:{cfg.listen.port}, "
          f"Airflow at {cfg.airflow.base_url}, audit to {cfg.audit.path})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="airflowrpc", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    audit = commands.add_parser("audit", help="work with the audit trail")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True)
    check = audit_commands.add_parser(
        "verify", help="report the first broken or missing record, or that the chain is whole")
    check.add_argument("files", nargs="+", metavar="FILE")
    cfg = commands.add_parser("config", help="work with the config file")
    cfg_commands = cfg.add_subparsers(dest="config_command", required=True)
    cfg_check = cfg_commands.add_parser("check", help="check a config file as twistd would")
    cfg_check.add_argument("path", nargs="?", default="conf/airflowrpc.toml")
    args = parser.parse_args(argv)
    if args.command == "audit":
        return audit_verify(args.files)
    return config_check(args.path)


if __name__ == "__main__":
    sys.exit(main())
