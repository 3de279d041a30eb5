"""[principals.NAME] airflow_user / airflow_password_file: both or neither, read once, never shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from txairflowrpc.config import ConfigError, load
from txairflowrpc.devstack.pki import DevPKI

from .test_config import GOOD, write

ACCESS = """
[roles.reader]
scopes = ["dags:read"]
[principals.alice]
roles = ["reader"]
cert_cn = ["alice"]
"""


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPKI:
    return DevPKI.create(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def confdir(tmp_path: Path, pki: DevPKI) -> Path:
    (tmp_path / "tls").symlink_to(pki.directory)
    (tmp_path / "pw").write_text("s3cret\n")
    (tmp_path / "alice-pw").write_text("alice-airflow-secret\n")
    return tmp_path


def test_a_principal_without_airflow_user_uses_the_gateways_account(confdir: Path) -> None:
    cfg = load(write(confdir, GOOD + ACCESS))
    entry = cfg.access.principals["alice"]
    assert entry.airflow_user is None and entry.airflow_password_file is None
    assert entry.airflow_password == ""


def test_airflow_user_and_its_password_are_read_and_never_shown(confdir: Path) -> None:
    cfg = load(write(confdir, GOOD + ACCESS + 'airflow_user = "alice.af"\n'
                     'airflow_password_file = "alice-pw"\n'))
    entry = cfg.access.principals["alice"]
    assert entry.airflow_user == "alice.af"
    assert entry.airflow_password_file == confdir / "alice-pw"
    assert entry.airflow_password == "alice-airflow-secret"
    assert "alice-airflow-secret" not in repr(cfg)
    assert "alice-airflow-secret" not in repr(entry)


@pytest.mark.parametrize("extra,key,words", [
    ('airflow_user = "alice.af"\n', "principals.alice.airflow_password_file",
     "airflow_user 'alice.af' needs"),
    ('airflow_password_file = "alice-pw"\n', "principals.alice.airflow_user",
     "missing: airflow_password_file is set"),
    ('airflow_user = "alice.af"\nairflow_password_file = "nope"\n',
     "principals.alice.airflow_password_file", "cannot read"),
    ('airflow_user = "alice.af"\nairflow_password_file = "empty"\n',
     "principals.alice.airflow_password_file", "is empty"),
    ('airflow_user = "al ice"\nairflow_password_file = "alice-pw"\n',
     "principals.alice.airflow_user", "visible ASCII"),
    ('airflow_user = "a:b"\nairflow_password_file = "alice-pw"\n',
     "principals.alice.airflow_user", "':'"),
    ('airflow_user = 3\nairflow_password_file = "alice-pw"\n',
     "principals.alice.airflow_user", "must be a string"),
    # The gateway's own account, with another password than airflow.password_file.
    ('airflow_user = "gateway"\nairflow_password_file = "alice-pw"\n',
     "principals.alice.airflow_password_file", "gateway's own"),
    ('airflow_user = "shared"\nairflow_password_file = "alice-pw"\n'
     '[principals.bob]\nroles = []\nairflow_user = "shared"\nairflow_password_file = "pw"\n',
     "principals.bob.airflow_password_file", "another password in principals.alice"),
])
def test_account_problems_are_one_line_naming_the_key(
    confdir: Path, extra: str, key: str, words: str
) -> None:
    (confdir / "empty").write_text("\n")
    with pytest.raises(ConfigError) as e:
        load(write(confdir, GOOD + ACCESS + extra))
    assert e.value.key == key
    assert words in str(e.value)
    assert "\n" not in str(e.value)
    for secret in ("alice-airflow-secret", "s3cret"):
        assert secret not in str(e.value)


def test_the_gateways_own_account_with_its_own_password_is_allowed(confdir: Path) -> None:
    cfg = load(write(confdir, GOOD + ACCESS + 'airflow_user = "gateway"\n'
                     'airflow_password_file = "pw"\n'))
    assert cfg.access.principals["alice"].airflow_user == "gateway"
