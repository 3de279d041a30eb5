"""
The face of the gateway: what starts it and what operators touch.

`tap` (``twistd airflowrpc``: options and the service it builds), `checked`
(the config and every file it names, checked whole), `reload` (SIGHUP and
changed files), `admin` (the admin listener's probes), `cli` (the
``airflowrpc`` command).
"""
