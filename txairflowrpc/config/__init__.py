"""
The gateway's configuration, at the bottom of the package: it imports
nothing else of it.

`keys` (how a table is read and checked), `sections` (the gateway's own
sections), `access` (``[auth]``, ``[roles]``, ``[principals]``, ``[oidc]`` as
plain values), `load` (the file, checked whole).  The sections and keys are
documented in ``conf/airflowrpc.toml`` and in the README.
"""

from .access import AccessConfig, AuthSettings, OIDCProvider, PrincipalEntry, RoleEntry
from .keys import ConfigError, Key, read_table
from .load import Config, load, open_secrets, parse
from .sections import (
    AirflowConfig,
    AuditConfig,
    HealthConfig,
    LimitsConfig,
    ListenConfig,
    RPCConfig,
    TLSConfig,
)

__all__ = [
    "AccessConfig", "AirflowConfig", "AuditConfig", "AuthSettings", "Config", "ConfigError",
    "HealthConfig", "Key", "LimitsConfig", "ListenConfig", "OIDCProvider", "PrincipalEntry",
    "RPCConfig", "RoleEntry", "TLSConfig", "load", "open_secrets", "parse", "read_table",
]
