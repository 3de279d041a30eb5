"""
The audit trail: every invocation, on its own tamper-evident JSON Lines file.

`chain` (the hash chain on disk: sealing, appending, rotating), `log` (the
gateway's queue and group commit on the audit thread), `thread` (that
thread), `summary` (what a call's record says of its arguments), `verify`
(checking a chain).
"""
