"""Config: one TOML file, every problem one line naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from txairflowrpc.config import ConfigError, load
from txairflowrpc.devstack.pki import DevPKI
from txairflowrpc.gate.tls import server_options

GOOD = """
[listen]
host = "127.0.0.1"
port = 8443
[tls]
certificate = "tls/server.pem"
private_key = "tls/server.key"
client_ca = "tls/ca.pem"
[airflow]
base_url = "http://127.0.0.1:8080/"
username = "gateway"
password_file = "pw"
timeout_seconds = 5
[audit]
path = "audit/audit.jsonl"
"""


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPKI:
    return DevPKI.create(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def confdir(tmp_path: Path, pki: DevPKI) -> Path:
    (tmp_path / "tls").symlink_to(pki.directory)
    (tmp_path / "pw").write_text("s3cret\n")
    return tmp_path


def write(confdir: Path, text: str) -> Path:
    path = confdir / "airflowrpc.toml"
    path.write_text(text)
    return path


def test_good_config_loads_with_defaults_and_relative_paths(confdir: Path) -> None:
    cfg = load(write(confdir, GOOD))
    assert cfg.airflow.base_url == "http://127.0.0.1:8080"
    assert cfg.airflow.password == "s3cret"
    assert cfg.airflow.timeout_seconds == 5.0
    assert cfg.airflow.idle_connection_seconds == 50.0  # under Airflow's 120 s, an ALB's 60
    assert cfg.tls.certificate == confdir / "tls" / "server.pem"
    assert cfg.rpc.max_multicall == 50 and cfg.rpc.max_body_bytes == 1024 * 1024
    assert cfg.audit.path == confdir / "audit" / "audit.jsonl"
    assert cfg.audit.fsync is True and {"pass", "pwd", "key", "auth"} <= set(cfg.audit.redact_keys)
    assert cfg.audit.digest_key_file == confdir / "audit" / ".digest.key"
    assert "s3cret" not in repr(cfg)
    server_options(cfg.tls)  # the certificates really load


def test_shipped_example_parses(confdir: Path) -> None:
    example = Path(__file__).resolve().parents[2] / "conf" / "airflowrpc.toml"
    text = example.read_text().replace("../var/tls/", "tls/").replace(
        "../var/airflow/gateway-password", "pw").replace("../var/audit/", "audit/")
    cfg = load(write(confdir, text))
    assert cfg.listen.port == 8443


@pytest.mark.parametrize("edit,key,words", [
    (lambda t: t + "\n[rpc]\nmax_multical = 3\n", "rpc.max_multical", "unknown key"),
    (lambda t: t.replace('path = "audit/audit.jsonl"', ""), "audit.path", "missing"),
    (lambda t: t.replace('"audit/audit.jsonl"', '"tls"'), "audit.path", "is a directory"),
    (lambda t: t + "redact_keys = [1]\n", "audit.redact_keys", "non-empty strings"),
    (lambda t: t.replace("port = 8443", 'port = "8443"'), "listen.port", "must be an integer"),
    (lambda t: t.replace("port = 8443", "port = 70000"), "listen.port", "port number"),
    (lambda t: t.replace('username = "gateway"\n', ""), "airflow.username", "missing"),
    (lambda t: t.replace('"pw"', '"nope"'), "airflow.password_file", "cannot read"),
    (lambda t: t.replace("tls/ca.pem", "tls/missing.pem"), "tls.client_ca", "cannot read"),
    (lambda t: t.replace("http://127.0.0.1:8080/", "ftp://x"), "airflow.base_url", "http"),
    (lambda t: t.replace("timeout_seconds = 5", "timeout_seconds = 0"),
     "airflow.timeout_seconds", "greater than 0"),
    (lambda t: t.replace("timeout_seconds = 5", "timeout_seconds = 5\nidle_connection_seconds = 0"),
     "airflow.idle_connection_seconds", "greater than 0"),
    (lambda t: t + "\n[extra]\n", "extra", "unknown section"),
    # Found by review: nan passed every check (a deadline of nan failed every
    # call; a rate of nan turned rate limiting off); inf means nothing either.
    (lambda t: t.replace("timeout_seconds = 5", "timeout_seconds = nan"),
     "airflow.timeout_seconds", "finite"),
    (lambda t: t + "\n[limits]\nrate_per_second = inf\n", "limits.rate_per_second", "finite"),
    (lambda t: t + "\n[limits]\ncall_deadline_seconds = -nan\n",
     "limits.call_deadline_seconds", "finite"),
    (lambda t: t.replace("timeout_seconds = 5", "timeout_seconds = 1" + "0" * 400),
     "airflow.timeout_seconds", "finite"),
    (lambda t: t + "\n[auth]\ntoken_days = 3000000\n", "auth.token_days", "from 1 to 3650"),
    (lambda t: t + "\n[limits]\nipv6_source_prefix = 129\n", "limits.ipv6_source_prefix",
     "prefix length from 32 to 128"),
    (lambda t: t + "\n[limits]\nconnection_rate_per_source = 0\n",
     "limits.connection_rate_per_source", "greater than 0"),
    (lambda t: t + "\n[limits]\nconnection_burst_per_source = 0\n",
     "limits.connection_burst_per_source", "at least 1"),
    # Found by review: a fingerprint that is not 64 hex digits loaded and matched nothing.
    (lambda t: t + '\n[principals.x]\nroles = []\ncert_sha256 = ["0B:82:zz\\nx"]\n',
     "principals.x.cert_sha256", "'0B:82:zz\\nx' is not a SHA-256 (64 hex digits"),
    (lambda t: t + '\n[principals.x]\nroles = []\ncert_spki_sha256 = ["' + "ab" * 33 + '"]\n',
     "principals.x.cert_spki_sha256", "is not a SHA-256"),
    # Found by review: worker K's admin port past 65535 was a traceback at start.
    (lambda t: t.replace("port = 8443", "port = 8443\nworkers = 2") + "\n[health]\nport = 65534\n",
     "health.port", "at most 65533"),
])
def test_bad_config_names_the_key(confdir: Path, edit, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as e:
        load(write(confdir, edit(GOOD)))
    assert e.value.key == key
    assert words in str(e.value)
    assert "\n" not in str(e.value)


def test_airflow_ca_file_is_read_into_a_trust_root_for_an_https_airflow(
    confdir: Path, pki: DevPKI,
) -> None:
    from txairflowrpc.service.checked import load_checked
    https = GOOD.replace("http://127.0.0.1:8080/", "https://airflow.internal:8443/")
    unset = load_checked(write(confdir, https))
    assert unset.config.airflow.ca_file is None and unset.airflow_trust is None
    # An empty value is no file either (as for the audit keys).
    empty = load_checked(write(confdir, https.replace("timeout_seconds = 5",
                                                      'timeout_seconds = 5\nca_file = ""')))
    assert empty.config.airflow.ca_file is None and empty.airflow_trust is None
    named = load_checked(write(confdir, https.replace(
        "timeout_seconds = 5", 'timeout_seconds = 5\nca_file = "tls/ca.pem"')))
    assert named.config.airflow.ca_file == confdir / "tls" / "ca.pem"
    assert named.airflow_trust is not None


@pytest.mark.parametrize("base_url,ca_file,words", [
    ("http://127.0.0.1:8080/", "tls/ca.pem", "https://"),
    ("https://airflow.internal/", "nope.pem", "cannot read"),
    ("https://airflow.internal/", "pw", "no PEM certificate"),
])
def test_an_unusable_airflow_ca_file_names_the_key(
    confdir: Path, base_url: str, ca_file: str, words: str,
) -> None:
    from txairflowrpc.service.checked import load_checked
    text = GOOD.replace("http://127.0.0.1:8080/", base_url).replace(
        "timeout_seconds = 5", f'timeout_seconds = 5\nca_file = "{ca_file}"')
    with pytest.raises(ConfigError) as e:
        load_checked(write(confdir, text))
    assert e.value.key == "airflow.ca_file"
    assert words in str(e.value) and "\n" not in str(e.value)


def test_a_new_airflow_ca_file_content_is_told_to_need_a_restart(confdir: Path, pki: DevPKI) -> None:
    from txairflowrpc.service.reload import needs_restart
    https = GOOD.replace("http://127.0.0.1:8080/", "https://airflow.internal/").replace(
        "timeout_seconds = 5", 'timeout_seconds = 5\nca_file = "airflow-ca.pem"')
    (confdir / "airflow-ca.pem").write_bytes(pki.ca.cert_pem.bytes())
    old = load(write(confdir, https))
    assert needs_restart(old, load(write(confdir, https))) == []
    (confdir / "airflow-ca.pem").write_bytes(DevPKI.create(confdir / "new").ca.cert_pem.bytes())
    assert needs_restart(old, load(write(confdir, https))) == ["airflow.ca_file (its content)"]


@pytest.mark.parametrize("base_url,words", [
    ("https://gateway:hunter2@airflow.internal/", "user name or password"),
    ("https://gateway@airflow.internal/", "user name or password"),
    ("https://äirflow.internal/", "ASCII"),
])
def test_a_base_url_with_credentials_or_not_ascii_is_refused(
    confdir: Path, base_url: str, words: str,
) -> None:
    with pytest.raises(ConfigError) as e:
        load(write(confdir, GOOD.replace("http://127.0.0.1:8080/", base_url)))
    assert e.value.key == "airflow.base_url" and words in str(e.value)
    assert "hunter2" not in str(e.value)


def test_missing_file_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load(tmp_path / "none.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(write(tmp_path, "[listen\n"))
    # Arrays nested 2,000 deep: tomllib recurses (a RecursionError and a traceback before).
    with pytest.raises(ConfigError, match="nests too deeply"):
        load(write(tmp_path, "x = " + "[" * 2000 + "]" * 2000 + "\n"))


def test_a_file_the_config_names_nested_too_deeply_is_a_config_error(confdir: Path) -> None:
    from txairflowrpc.service.checked import load_checked
    store = confdir / "tokens.json"
    store.write_text('{"tokens": ' + "[" * 5000 + "]" * 5000 + "}")
    path = write(confdir, GOOD + f'[auth]\ntoken_store = "{store}"\n')
    with pytest.raises(ConfigError, match="nests too deeply"):
        load_checked(path)


def test_unusable_certificate_files_name_the_key(confdir: Path, pki: DevPKI) -> None:
    cfg = load(write(confdir, GOOD.replace("tls/server.pem", "pw")))
    with pytest.raises(ConfigError) as e:
        server_options(cfg.tls)
    assert e.value.key == "tls.certificate"
    other = DevPKI.create(confdir / "other")
    cfg = load(write(confdir, GOOD.replace("tls/server.key", "other/server.key")))
    with pytest.raises(ConfigError, match="does not match") as e:
        server_options(cfg.tls)
    assert e.value.key == "tls.private_key"
    assert other


def test_an_expired_listener_certificate_is_refused(tmp_path: Path) -> None:
    """
    Found by review: start, reload and config check took an expired
    tls.certificate; a reload put it in force in place of a good one.
    """
    from datetime import datetime, timedelta, timezone

    from .test_admin import certificates

    tls = certificates(tmp_path, 2)
    in_three_days = datetime.now(timezone.utc) + timedelta(days=3)
    server_options(tls)  # valid now
    with pytest.raises(ConfigError, match="the certificate expired on .*every client would "
                                          "refuse it") as e:
        server_options(tls, now=in_three_days)
    assert e.value.key == "tls.certificate"


def test_an_audit_file_the_service_cannot_write_is_a_config_error(
        confdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by review: a file made by root before the first start was a traceback at start."""
    import os

    (confdir / "audit").mkdir()
    log = confdir / "audit" / "audit.jsonl"
    log.write_text("")
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == log else real(p, mode))
    with pytest.raises(ConfigError) as e:
        load(write(confdir, GOOD))
    assert (e.value.key, str(e.value)) == ("audit.path", f"audit.path: cannot write {log}")


def test_one_chain_named_two_ways_is_one_audit_path(confdir: Path) -> None:
    """From the audit review: through a symlink, two gateways each claimed the one chain."""
    (confdir / "real").mkdir()
    (confdir / "audit").symlink_to(confdir / "real")
    (confdir / "real" / "audit.jsonl").touch()
    (confdir / "real" / "alias.jsonl").symlink_to(confdir / "real" / "audit.jsonl")
    direct = load(write(confdir, GOOD.replace('"audit/audit.jsonl"', '"real/audit.jsonl"')))
    through_dir = load(write(confdir, GOOD))
    through_file = load(write(confdir, GOOD.replace('"audit/audit.jsonl"', '"real/alias.jsonl"')))
    assert direct.audit.path == through_dir.audit.path == through_file.audit.path


def test_an_audit_path_in_a_loop_of_links_is_a_config_error(confdir: Path) -> None:
    (confdir / "audit").symlink_to(confdir / "audit")
    with pytest.raises(ConfigError) as e:
        load(write(confdir, GOOD))
    assert e.value.key == "audit.path" and "cannot be resolved" in str(e.value)
