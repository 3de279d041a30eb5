"""
Where a call comes in: the HTTP side of the gateway.

`tls` (the listener's TLS), `site` (connections and requests, with their
limits), `resource` (``/RPC2``: authentication first, then the body),
`wire` (XML-RPC parsing and writing), `dispatch` (the one pipeline every
call passes through: check, authorise, run, record), `limits` (per
principal call rate and calls in flight), `methods` (what a caller can ask).
"""
