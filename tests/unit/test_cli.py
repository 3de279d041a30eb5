"""The airflowrpc command: where --config may go."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from txairflowrpc.devstack.gatewayconf import core_config
from txairflowrpc.devstack.pki import DevPKI
from txairflowrpc.identity import tokens
from txairflowrpc.service.cli import main

UNIT = Path(__file__).resolve().parents[2] / "conf" / "airflowrpc.service"

@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPKI:
    return DevPKI.create(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def config(tmp_path: Path, pki: DevPKI) -> Path:
    (tmp_path / "pw").write_text("pw\n")
    path = tmp_path / "airflowrpc.toml"
    path.write_text(core_config(
        port=8443, tls=pki.directory, airflow="http://127.0.0.1:8080",
        password_file=tmp_path / "pw", audit=tmp_path / "audit.jsonl",
    ) + f'[auth]\ntoken_store = "{tmp_path}/tokens.json"\n[principals.ci-bot]\nroles = ["ci"]\n'
      '[roles.ci]\nscopes = ["runs:trigger:etl_*"]\n[roles.admin]\nscopes = ["runs:write"]\n')
    return path


@pytest.mark.parametrize("where", ["after the subcommand", "before it", "at the top"])
def test_config_is_accepted_before_or_after_the_subcommand(
    config: Path, where: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)  # no conf/airflowrpc.toml here to fall back on
    argv = {
        "after the subcommand": ["token", "create", "--principal", "ci-bot", "--config", str(config)],
        "before it": ["token", "--config", str(config), "create", "--principal", "ci-bot"],
        "at the top": ["--config", str(config), "token", "create", "--principal", "ci-bot"],
    }[where]
    assert main(argv) == 0
    token = capsys.readouterr().out.strip()
    store = tokens.TokenStore.load(tmp_path / "tokens.json")
    (record,) = store.records.values()
    assert tokens.parse(token) == record.id and record.principal == "ci-bot"


def test_every_token_subcommand_and_config_check_take_it(
    config: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["token", "create", "--principal", "ci-bot", "--config", str(config)]) == 0
    token_id = tokens.parse(capsys.readouterr().out.strip())
    assert main(["token", "list", "--config", str(config)]) == 0
    assert token_id in capsys.readouterr().out
    assert main(["token", "rotate", token_id, "--config", str(config)]) == 0
    assert main(["token", "revoke", token_id, "--config", str(config)]) == 0
    assert main(["config", "check", "--config", str(config)]) == 0
    assert "OK" in capsys.readouterr().out
    assert main(["config", "--config", str(config), "check"]) == 0


def test_config_check_warns_of_secret_files_open_to_others(
    config: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """From the service review: password files and the TLS key were never looked at."""
    from txairflowrpc.config import load

    cfg = load(config)
    cfg.airflow.password_file.chmod(0o644)
    assert main(["config", "check", "--config", str(config)]) == 0  # a warning, not an error
    err = capsys.readouterr().err
    assert (f"warning: airflow.password_file: {cfg.airflow.password_file} is open to others "
            f"(mode 0644); chmod o-rwx it") in err
    cfg.airflow.password_file.chmod(0o640)
    assert main(["config", "check", "--config", str(config)]) == 0
    assert "airflow.password_file" not in capsys.readouterr().err


def test_config_check_warns_of_live_tokens_of_a_principal_no_longer_named(
    config: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """
    A principal taken out of the config leaves its tokens refused, but alive:
    the name given again (a new team's bot) would let them in.  Said, with
    the ids to revoke.
    """
    assert main(["token", "create", "--principal", "ci-bot", "--config", str(config)]) == 0
    token_id = tokens.parse(capsys.readouterr().out.strip())
    assert main(["config", "check", "--config", str(config)]) == 0
    assert "auth.token_store" not in capsys.readouterr().err
    config.write_text(config.read_text().replace('[principals.ci-bot]\nroles = ["ci"]\n', ""))
    assert main(["config", "check", "--config", str(config)]) == 0  # a warning, not an error
    err = capsys.readouterr().err
    assert (f"warning: auth.token_store: live tokens of principals the config does not name "
            f"(ci-bot: {token_id})") in err and "airflowrpc token revoke ID" in err
    assert main(["token", "revoke", token_id, "--config", str(config)]) == 0
    capsys.readouterr()
    assert main(["config", "check", "--config", str(config)]) == 0
    assert "auth.token_store" not in capsys.readouterr().err


def test_a_typo_elsewhere_in_the_config_does_not_block_a_revocation(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """From the service review: a broken config stopped 'token revoke' in an emergency."""
    import json

    assert main(["token", "create", "--principal", "ci-bot", "--config", str(config)]) == 0
    token_id = tokens.parse(capsys.readouterr().out.strip())
    config.write_text(config.read_text() + "\n[rpc]\nmax_multical = 3\n")
    assert main(["token", "revoke", token_id, "--config", str(config)]) == 0
    out, err = capsys.readouterr()
    assert f"token {token_id} of ci-bot is revoked." in out
    assert "warning" in err and "rpc.max_multical: unknown key" in err
    (record,) = tokens.TokenStore.load(tmp_path / "tokens.json").records.values()
    assert record.revoked is not None
    events = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert events[-1]["event"] == "token.revoked" and events[-1]["token_id"] == token_id
    with pytest.raises(SystemExit, match="rpc.max_multical: unknown key"):
        main(["token", "create", "--principal", "ci-bot", "--config", str(config)])


def test_a_revocation_without_a_trail_to_record_it_revokes_nothing(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """From the second reading: it revoked, then failed to record with a traceback."""
    assert main(["token", "create", "--principal", "ci-bot", "--config", str(config)]) == 0
    token_id = tokens.parse(capsys.readouterr().out.strip())
    (tmp_path / "trail").mkdir()
    text = config.read_text().replace(f'"{tmp_path}/audit.jsonl"', '"trail"')
    assert '"trail"' in text
    config.write_text(text)
    with pytest.raises(SystemExit, match="cannot be written: nothing revoked"):
        main(["token", "revoke", token_id, "--config", str(config)])
    (record,) = tokens.TokenStore.load(tmp_path / "tokens.json").records.values()
    assert record.revoked is None


@pytest.mark.parametrize("days", ["0", "3000000", "x"])
def test_a_lifetime_past_what_a_date_holds_is_a_usage_error(
    config: Path, days: str, capsys: pytest.CaptureFixture[str],
) -> None:
    """From the second reading: --days 3000000 was an OverflowError traceback."""
    with pytest.raises(SystemExit) as e:
        main(["token", "create", "--principal", "ci-bot", "--days", days, "--config", str(config)])
    assert e.value.code == 2
    assert "--days" in capsys.readouterr().err


def test_a_token_cannot_have_roles_its_principal_has_not(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["token", "create", "--principal", "ci-bot", "--config", str(config)]
    assert main([*argv, "--roles", "ci,admin"]) == 1
    assert "does not have role 'admin'" in capsys.readouterr().err
    assert tokens.TokenStore.load(tmp_path / "tokens.json").records == {}
    assert main([*argv, "--roles", "ci"]) == 0


def test_the_units_reload_checks_the_file_twistd_reads_and_fails_on_a_bad_one(
    config: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """
    Found by review: ExecReload was the signal alone, which succeeds whatever the file
    holds, so `systemctl reload` reported success for a config the gateway rejected.
    """
    def setting(key: str) -> list[str]:
        return [line.partition("=")[2] for line in UNIT.read_text().splitlines()
                if line.startswith(key + "=")]

    (start,) = map(shlex.split, setting("ExecStart"))
    check, signal = map(shlex.split, setting("ExecReload"))
    assert signal == ["/bin/kill", "-HUP", "$MAINPID"]
    assert check[0] == str(Path(start[0]).with_name("airflowrpc"))  # the same venv's
    assert check[-1] == start[start.index("--config") + 1]  # the same file
    assert main([*check[1:-1], str(config)]) == 0
    config.write_text(config.read_text() + "\n[rpc]\nmax_multical = 3\n")
    assert main([*check[1:-1], str(config)]) == 1
    assert "rpc.max_multical: unknown key" in capsys.readouterr().err


def test_audit_digest_prints_what_a_record_holds(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """An auditor with the key can check a conf or a refused request's target against a record."""
    import json

    from .helpers import DIGEST_KEY, gateway

    trail = tmp_path / "trail"
    gw = gateway(audit_dir=str(trail))
    conf = {"day": "2026-11-28", "password": "hunter2", "n": [1, 2.5]}
    gw.call_d("trigger_dag", "etl_orders", conf)
    gw.post(b"<x/>", path="/wp-login.php?pwd=hunter2")
    records = [json.loads(line) for line in (trail / "audit.jsonl").read_text().splitlines()]
    recorded_conf = next(r["args"]["conf"] for r in records if r.get("method") == "trigger_dag")
    recorded_target = next(r["target"] for r in records if "target" in r)

    (tmp_path / ".digest.key").write_bytes(DIGEST_KEY)  # beside the config's audit.path
    assert main(["audit", "digest", "--config", str(config), json.dumps(conf)]) == 0
    assert json.loads(capsys.readouterr().out) == recorded_conf
    assert main(["audit", "digest", "--config", str(config), "--target",
                 "/wp-login.php?pwd=hunter2"]) == 0
    assert json.loads(capsys.readouterr().out) == recorded_target
    # A wrong guess does not match; a VALUE that is not JSON is a usage error.
    assert main(["audit", "digest", "--config", str(config), '{"day": "2026-11-29"}']) == 0
    assert json.loads(capsys.readouterr().out) != recorded_conf
    assert main(["audit", "digest", "--config", str(config), "{day"]) == 2
    assert "VALUE is not valid JSON" in capsys.readouterr().err


def test_audit_digest_without_the_key_says_so(
    config: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["audit", "digest", "--config", str(config), "1"]) == 2
    assert "no digest key at" in capsys.readouterr().err
    assert not (config.parent / ".digest.key").exists()  # never made by the command


def test_config_check_refuses_with_the_line_twistd_would_stop_with(
    config: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """Found by a newcomer: the line had no ``airflowrpc:`` as twistd's has (and a grep wants)."""
    config.write_text(config.read_text() + "[rpc]\nmax_multical = 5\n")
    assert main(["config", "check", "--config", str(config)]) == 1
    assert capsys.readouterr().err == f"airflowrpc: {config}: rpc.max_multical: unknown key\n"


def test_the_token_commands_records_are_signed_where_the_key_can_be_read(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """
    Its records were never covered: a chain ending with them (with workers,
    the supervisor's, for good) said 3, not proven, to `audit verify` with a key.
    """
    import json
    import os

    assert main(["audit", "keygen", "--out", str(tmp_path / "signing")]) == 0
    text = config.read_text().replace(
        "[audit]\n", f'[audit]\nsigning_key = "{tmp_path / "signing.key"}"\n', 1)
    assert text != config.read_text()
    config.write_text(text)
    assert main(["token", "create", "--principal", "ci-bot", "--config", str(config)]) == 0
    events = [json.loads(line).get("event")
              for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert events == ["token.created", "audit.checkpoint"]
    token_id = tokens.parse(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(["token", "revoke", token_id, "--config", str(config)]) == 0
    events = [json.loads(line).get("event")
              for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert events[2:] == ["token.revoked", "audit.checkpoint"]
    capsys.readouterr()
    assert main(["audit", "verify", "--public-key", str(tmp_path / "signing.pub"),
                 str(tmp_path / "audit.jsonl")]) == 0, capsys.readouterr().out
    if os.geteuid() != 0:  # root reads any file: the unreadable key is another user's case
        (tmp_path / "signing.key").chmod(0)
    else:
        (tmp_path / "signing.key").write_text("not a key\n")
    assert main(["token", "create", "--principal", "ci-bot", "--config", str(config)]) == 0
    assert "airflowrpc: warning: the audit record is not signed: " in capsys.readouterr().err
    events = [json.loads(line).get("event")
              for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert events[-1] == "token.created"  # written all the same, unsigned


def test_a_token_change_the_trail_cannot_take_is_said_and_the_token_kept(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """
    Found by review: with the audit disk full, create and rotate changed the
    store, then failed writing the record with a traceback, before the new
    token was printed: its secret was lost, and the old one died anyway.
    """
    assert main(["token", "create", "--principal", "ci-bot", "--config", str(config)]) == 0
    first = tokens.parse(capsys.readouterr().out.strip())
    audit = tmp_path / "audit.jsonl"
    audit.unlink()
    audit.symlink_to("/dev/full")  # every write: no space left on device
    assert main(["token", "rotate", str(first), "--config", str(config)]) == 1
    out, err = capsys.readouterr()
    successor = tokens.parse(out.strip())
    assert successor is not None and successor != first  # its secret was printed
    assert f"token {successor} replaces {first}, but NOT recorded on the audit trail" in err
    assert main(["token", "create", "--principal", "ci-bot", "--config", str(config)]) == 1
    out, err = capsys.readouterr()
    assert tokens.parse(out.strip()) is not None
    assert "is created, but NOT recorded on the audit trail" in err


@pytest.mark.parametrize("last_line", ["not json\n", "{}\n", "[" * 100_000 + "\n"])
def test_a_trail_whose_last_line_is_no_record_does_not_lose_the_token(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], last_line: str,
) -> None:
    """Found by review: junk at the trail's end raised before the token was printed."""
    assert main(["token", "create", "--principal", "ci-bot", "--config", str(config)]) == 0
    first = tokens.parse(capsys.readouterr().out.strip())
    with (tmp_path / "audit.jsonl").open("a") as f:
        f.write(last_line)
    assert main(["token", "rotate", str(first), "--config", str(config)]) == 1
    out, err = capsys.readouterr()
    assert tokens.parse(out.strip()) not in (None, first)
    assert "but NOT recorded on the audit trail" in err and "Traceback" not in err
    assert main(["token", "revoke", str(first), "--config", str(config)]) == 1
    assert "is revoked, but NOT recorded" in capsys.readouterr().err


def test_an_empty_roles_list_is_refused_not_every_role(
    config: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """Found by review: --roles "" (an empty $ROLES) made a token with all of them."""
    assert main(["token", "create", "--principal", "ci-bot", "--roles", "",
                 "--config", str(config)]) == 1
    assert "--roles names no role" in capsys.readouterr().err


def test_the_actor_is_the_user_the_process_runs_as(
    config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Found by review: LOGNAME=alice made the record say alice did it."""
    import json
    import os
    import pwd

    monkeypatch.setenv("LOGNAME", "alice")
    monkeypatch.setenv("USER", "alice")
    assert main(["token", "create", "--principal", "ci-bot", "--config", str(config)]) == 0
    lines = (tmp_path / "audit.jsonl").read_text().splitlines()
    actor = [json.loads(line) for line in lines][-1]["actor"]
    assert actor.startswith(pwd.getpwuid(os.getuid()).pw_name + "@")
    assert "alice" not in actor


def test_a_store_lock_that_cannot_be_opened_is_one_line(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """Found by review: a lock left by root made every later command a traceback."""
    (tmp_path / "tokens.json.lock").mkdir()  # cannot be opened for writing
    assert main(["token", "revoke", "abcdefghij", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("airflowrpc: ") and "Traceback" not in err
