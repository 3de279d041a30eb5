"""
The caller's side: the ``airflowrpc call``, ``trigger`` and ``backfill``
commands, for scripts and CI pipelines, and the ``AWS-IAM`` credential.

It talks to a gateway over XML-RPC on TLS like any other caller, so it
imports nothing of the gateway's own layers (``gate``, ``upstream``,
``identity``, ``audit``): only ``core`` (fault codes, id rules, JSON-value
equality), which is the wire contract.  ``tests/unit/test_layers.py`` holds it to that.
It is synchronous on purpose: a command line tool has no reactor to keep
free, and the standard library's ``xmlrpc.client`` and ``http.client`` are
all it needs.

- `errors`: every way a command can end badly, each with its exit status.
- `settings`: where the gateway is and how to authenticate (flags, then
  the environment), checked once.
- `transport`: one XML-RPC exchange over HTTPS; never prints a secret.
- `values`: command-line arguments to XML-RPC values, results to JSON.
- `runid`: the retry-safe run id a CI job derives from its environment.
- `retry`: which failures are transient, and the bounded back-off.
- `waiting`: waiting for a run over several ``wait_dag_run`` calls.
- `backfilling`: finding the backfill an earlier try made, following one,
  telling how its runs ended.
- `failures`: the log tails of a failed run's failed tasks.
- `console`: what reaches stdout and stderr (secrets redacted).
- `commands`: the subcommands' parsers and what they run.
- `aws_iam`: signs the ``AWS-IAM`` credential with botocore, for
  ``airflowrpc call --aws`` and any Python caller.
"""
