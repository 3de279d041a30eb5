"""
Who is calling, and what they may do.

`certificates` (the verified client certificate), `tokens` (the gateway's
own tokens and their store), `oidc` (JWTs from an identity provider),
`aws` (AWS IAM: a signed STS request, checked by STS), `authenticate` (the one place that decides who a request is), `principal`
(the authenticated caller), `scopes` (scopes, roles, grants, conf rules),
`policy` (the decision for each call), `backoff` (slowing down a source that
keeps failing).
"""
