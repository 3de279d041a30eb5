"""
txairflowrpc: an XML-RPC gateway that lets other systems drive Apache
Airflow through a narrow, authenticated, audited gate.

Start it with ``twistd airflowrpc --config conf/airflowrpc.toml``.  The
package is grouped by layer; each imports only the layers below it
(``tests/unit/test_layers.py`` holds them to that):

- `config`: the TOML file, checked whole (at the bottom: imports nothing).
- `core`: the shared vocabulary: errors and fault codes, method specs, ids.
- `audit`: where a call is recorded: the hash-chained trail.
- `upstream`: how a call reaches Airflow: the REST client, breaker, watcher.
- `identity`: who is calling and what they may do: certificates, tokens,
  OIDC, AWS IAM, scopes and roles, the policy.
- `gate`: where a call comes in: TLS, the site and its limits, ``/RPC2``,
  XML-RPC on the wire, the dispatcher, the methods.
- `client`: the caller's side of ``airflowrpc call`` and ``airflowrpc
  trigger``: it reaches the gateway over XML-RPC like any caller, so it
  imports only `core` (fault codes, id rules), none of the layers above.
- `service`: the face: ``twistd airflowrpc``, reload, the admin listener,
  the ``airflowrpc`` command.
- `devstack`: the local Airflow, dev CA and runner behind ``make run``
  (for development; nothing in the gateway imports it).
- `client`: what a caller runs (signing an AWS IAM sign-in with botocore);
  it imports nothing of the gateway, and only the command may import it.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
