"""
The development stack that ``make run`` starts, and that the tests and the
benchmark build on: a local Airflow 3 (`airflow`), a development PKI
(`pki`), the core of a gateway config (`gatewayconf`), and the one-command
runner (``python -m txairflowrpc.devstack``).

It works from a checkout of the repository (it reads ``conf/dags`` and
writes under ``var/``) and needs the ``dev`` extra (trustme).  Nothing in
the gateway imports it.
"""
