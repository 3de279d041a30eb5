"""
The shared vocabulary of the gateway; imports nothing else of it.

`errors` (every failure as a type, and its fault code), `spec` (how a method
is described: parameters, scope, and the facts the generic layers read),
`ids` (validation of the identifiers that end up in Airflow URLs),
`calltrace` (what one call learns on its way, for its audit record),
`timefmt` (the time formats on the wire and on the trail), `encoding`
(base64url), `singleflight` (one piece of work shared by many callers),
`files` (making what is written durable), `shown` (text made safe to show).
"""
