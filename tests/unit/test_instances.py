"""
What several instances behind HAProxy rely on, without a network: the
config keys, one gateway per audit chain, and ``airflowrpc audit verify``
over the chains of several instances, each checked on its own.
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import maybeDeferred
from twisted.internet.task import Clock

from txairflowrpc.audit import checkpoint
from txairflowrpc.audit.chain import CLI_INSTANCE, append_now
from txairflowrpc.audit.log import AuditLog
from txairflowrpc.audit.owner import ChainInUse, claim, owner_path
from txairflowrpc.config import ConfigError, load
from txairflowrpc.config import sections
from txairflowrpc.service.cli import main as cli
from txairflowrpc.service.reload import needs_restart

from .test_config import GOOD, confdir, pki, write  # noqa: F401 (fixtures)

START = 1_800_000_000


# -- config ------------------------------------------------------------------

def test_by_default_no_proxy_protocol_and_the_instance_is_the_host(confdir: Path) -> None:
    cfg = load(write(confdir, GOOD))
    assert cfg.listen.proxy_protocol is False
    assert cfg.listen.proxy_from == (ipaddress.ip_network("127.0.0.0/8"),
                                     ipaddress.ip_network("::1/128"))
    assert cfg.audit.instance == socket.gethostname()


def test_proxy_protocol_instance_and_senders_are_read(confdir: Path) -> None:
    text = GOOD.replace("port = 8443", 'port = 8443\nproxy_protocol = true\n'
                        'proxy_from = ["10.0.0.5", "192.0.2.0/24"]')
    cfg = load(write(confdir, text + 'instance = "gw-a"\n'))
    assert cfg.listen.proxy_protocol is True
    assert [str(n) for n in cfg.listen.proxy_from] == ["10.0.0.5/32", "192.0.2.0/24"]
    assert cfg.audit.instance == "gw-a"


@pytest.mark.parametrize("edit,key,words", [
    (lambda t: t.replace("port = 8443", 'port = 8443\nproxy_from = ["haproxy.local"]'),
     "listen.proxy_from", "not an IP address or network"),
    (lambda t: t.replace("port = 8443", "port = 8443\nproxy_protocol = 1"),
     "listen.proxy_protocol", "true or false"),
    (lambda t: t + 'instance = ""\n', "audit.instance", "1 to 253"),
    (lambda t: t + 'instance = "gw a"\n', "audit.instance", "1 to 253"),
    (lambda t: t + f'instance = "{CLI_INSTANCE}"\n', "audit.instance", "command's own"),
])
def test_bad_keys_are_named(confdir: Path, edit: Any, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as e:
        load(write(confdir, edit(GOOD)))
    assert (e.value.key, words in str(e.value)) == (key, True), str(e.value)


def test_a_host_name_that_cannot_name_an_instance_asks_for_the_key(
    confdir: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: "")
    with pytest.raises(ConfigError) as e:
        load(write(confdir, GOOD))
    assert e.value.key == "audit.instance" and "host name" in str(e.value)


def test_the_config_refuses_the_name_the_command_writes_under() -> None:
    assert sections.CLI_INSTANCE == CLI_INSTANCE  # two layers, one name


def test_a_reload_cannot_rename_a_running_instance(confdir: Path) -> None:
    old = load(write(confdir, GOOD + 'instance = "gw-a"\n'))
    new = load(write(confdir, GOOD.replace("port = 8443", "port = 8443\nproxy_protocol = true")
                     + 'instance = "gw-b"\n'))
    assert needs_restart(old, new) == ["listen", "audit.instance"]


def test_config_check_says_how_the_instance_listens_and_what_it_is_called(
    confdir: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    path = write(confdir, GOOD.replace("port = 8443", "port = 8443\nproxy_protocol = true")
                 + 'instance = "gw-a"\n')
    assert cli(["config", "check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "listening on 127.0.0.1:8443 behind the PROXY protocol from 127.0.0.0/8, ::1/128," in out
    assert out.rstrip().endswith("as instance gw-a)")


# -- one gateway per chain ---------------------------------------------------

def test_a_second_gateway_cannot_claim_a_chain_that_is_held(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    held = claim(path, "gw-a")
    with pytest.raises(ChainInUse) as e:
        claim(path, "gw-b")
    assert f"instance gw-a, pid {os.getpid()}" in str(e.value)
    assert "give each instance its own audit.path" in str(e.value)
    held.release()
    claim(path, "gw-b").release()  # free again once let go
    assert owner_path(path).name == ".audit.jsonl.owner"  # a dot file: not a rotated file


def test_a_claim_dies_with_its_process(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from txairflowrpc.audit.owner import claim; c = claim(Path(sys.argv[1]), 'gw-a'); "
         "print('held', flush=True); time.sleep(60)", str(path)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with pytest.raises(ChainInUse, match=f"pid {holder.pid}"):
            claim(path, "gw-b")
    finally:
        holder.kill()  # as kill -9 would: nothing is released by hand
        holder.wait()
    claim(path, "gw-b").release()


def test_the_command_still_appends_to_a_held_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = chain_of(tmp_path, "gw-a", 2)
    held = claim(path, "gw-a")
    append_now(path, {"event": "token.revoked", "token_id": "x"})  # not refused, not blocked
    held.release()
    log.close()
    assert [r["instance"] for r in read(path)] == ["gw-a", "gw-a", CLI_INSTANCE]


# -- audit verify over several chains -----------------------------------------

def chain_of(directory: Path, instance: str, n: int, name: str = "audit.jsonl",
             **kw: Any) -> AuditLog:
    clock = Clock()
    clock.advance(START)
    log = AuditLog(directory / name, clock=clock, run_blocking=lambda f: maybeDeferred(f),
                   instance=instance, **kw)
    log.open()
    for i in range(n):
        clock.advance(1)
        log.append({"kind": "call", "i": i})
    return log


def read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def verify(*argv: str | Path) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = cli(["audit", "verify", *map(str, argv)])
    return status, out.getvalue()


@pytest.fixture
def two(tmp_path: Path) -> Path:
    """Two instances' chains, each in its own directory; gw-a's has rotated twice."""
    (tmp_path / "gw-a").mkdir()
    (tmp_path / "gw-b").mkdir()
    chain_of(tmp_path / "gw-a", "gw-a", 12, rotate_bytes=1200).close()
    chain_of(tmp_path / "gw-b", "gw-b", 3).close()
    claim(tmp_path / "gw-b" / "audit.jsonl", "gw-b").release()  # its owner lock stays behind
    (tmp_path / "gw-a" / ".digest.key").write_bytes(os.urandom(32))
    return tmp_path


def test_a_directory_of_two_instances_is_two_chains_each_whole(two: Path) -> None:
    assert len(list((two / "gw-a").glob("audit.jsonl.*"))) >= 2
    status, out = verify(two)
    assert status == 0, out
    lines = out.splitlines()
    a = lines.index(next(line for line in lines if line.startswith("instance gw-a:")))
    assert "rotated files" in lines[a]
    assert lines[a + 1].startswith("  chain whole: ")
    assert lines[a + 2] .startswith("  written by: gw-a (")
    assert f"instance gw-b: {two / 'gw-b' / 'audit.jsonl'}" in lines
    assert "  chain whole: 3 records, seq 1..3" in lines
    assert lines[-1] == "2 chains: 2 whole"
    assert "skipped" not in out  # neither the digest key nor the owner lock is a chain


def test_a_broken_chain_is_named_by_its_instance_and_fails_the_whole(two: Path) -> None:
    path = two / "gw-b" / "audit.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text(lines[0] + lines[2])
    status, out = verify(two / "gw-a", two / "gw-b")  # two directories: the same
    assert status == 1, out
    assert "  BROKEN: " in out and "records 2..2 are missing" in out
    assert out.splitlines()[-1] == "2 chains: 1 whole, 1 BROKEN (gw-b)"


def test_files_of_several_chains_are_sorted_into_their_chains(two: Path) -> None:
    files = sorted(two.glob("*/audit.jsonl*"), reverse=True)  # any order, both chains
    status, out = verify(*files)
    assert status == 0, out
    assert out.splitlines()[-1] == "2 chains: 2 whole"


def test_one_chain_reads_as_before_and_says_who_wrote_it(tmp_path: Path) -> None:
    log = chain_of(tmp_path, "gw-a", 3)
    log.close()
    append_now(tmp_path / "audit.jsonl", {"event": "token.created"})
    status, out = verify(tmp_path / "audit.jsonl")
    assert status == 0
    assert out.splitlines() == ["chain whole: 4 records, seq 1..4",
                                "written by: gw-a (3 records), cli (1 record)"]


def test_other_files_in_a_directory_are_named_not_checked(two: Path) -> None:
    (two / "README.txt").write_text("where the audit trail lives\n")
    status, out = verify(two)
    assert status == 0, out
    assert f"skipped (not an audit file): {two / 'README.txt'}" in out


def test_a_directory_without_audit_files_is_bad_input(tmp_path: Path) -> None:
    assert verify(tmp_path)[0] == 2


def test_one_instance_name_in_two_chains_is_pointed_out(two: Path) -> None:
    (two / "gw-c").mkdir()
    chain_of(two / "gw-c", "gw-a", 2).close()  # gw-a's config copied to another host
    status, out = verify(two)
    assert status == 0, out
    assert "NOTE: instance gw-a wrote more than one chain: " in out


def test_shipped_checkpoints_go_to_the_chain_of_the_instance_that_signed_them(
    tmp_path: Path,
) -> None:
    key = checkpoint.keygen(tmp_path / "signing")
    signer = checkpoint.signing_key(key.secret)
    for name in ("gw-a", "gw-b"):
        (tmp_path / "trail" / name).mkdir(parents=True)
        chain_of(tmp_path / "trail" / name, name, 4, signer=signer).close()
    shipped = tmp_path / "shipped.jsonl"
    shipped.write_text("".join(
        line + "\n" for name in ("gw-a", "gw-b")
        for line in (tmp_path / "trail" / name / "audit.jsonl").read_text().splitlines()
        if '"audit.checkpoint"' in line))
    status, out = verify("--public-key", key.public, "--shipped", shipped, tmp_path / "trail")
    assert status == 0, out
    assert out.count("checkpoints kept off the host: 1 found unchanged") == 2
    # The files of gw-b gone: its shipped checkpoints say so.
    for f in (tmp_path / "trail" / "gw-b").iterdir():
        f.unlink()
    status, out = verify("--public-key", key.public, "--shipped", shipped, tmp_path / "trail")
    assert status == 1, out
    assert "signed by instance gw-b, but no chain given was written by it" in out
