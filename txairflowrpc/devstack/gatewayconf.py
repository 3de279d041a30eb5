"""The parts of a gateway config every test (and the benchmark) needs."""

from __future__ import annotations

from pathlib import Path

CORE = """
[listen]
host = "127.0.0.1"
port = {port}
[tls]
certificate = "{tls}/server.pem"
private_key = "{tls}/server.key"
client_ca = "{tls}/ca.pem"
[airflow]
base_url = "{airflow}"
username = "gateway"
password_file = "{password_file}"
timeout_seconds = {timeout}
[audit]
path = "{audit}"
{audit_extra}
"""


def core_config(
    *, port: int, tls: Path, airflow: str, password_file: Path, audit: Path,
    timeout: float = 20, audit_extra: str = "",
) -> str:
    """[listen], [tls], [airflow] and [audit]; the caller adds the rest."""
    return CORE.format(port=port, tls=tls, airflow=airflow, password_file=password_file,
                       audit=audit, timeout=timeout, audit_extra=audit_extra)
