"""
txairflowrpc: an XML-RPC gateway that lets other systems drive Apache
Airflow through a narrow, authenticated, audited gate.

Start it with ``twistd airflowrpc --config conf/airflowrpc.toml``.  The
modules, by job: `config` (the TOML file), `tls` (the listener's TLS and
the caller's certificate), `auth` (who is calling), `rpc` (the ``/RPC2``
resource), `wire` (XML-RPC parsing and writing), `dispatch` (the pipeline
every call passes through), `methods` (what a caller can ask), `airflow`
(the client to Airflow's REST API), `watch` (shared waiting for runs),
`errors` (every failure and its fault code), `tap` (twistd).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
