"""
Where the gateway is and how to prove who we are, read once from the
flags and the environment (a flag wins over its variable) and checked
before anything is sent.

A credential given by flag replaces the environment's of its kind as a
whole, so a job can override what its CI sets for every job:
``--token-file`` or ``--aws`` (the ``Authorization`` sent) ignores both
``AIRFLOWRPC_TOKEN`` and ``AIRFLOWRPC_AWS``, and ``--cert`` ignores both
``AIRFLOWRPC_CERT`` and ``AIRFLOWRPC_KEY`` (a certificate and its key come
as a pair: ``--cert`` alone has its key in the certificate file, ``--key``
without ``--cert`` is refused).

==================  =====================  ===============================
flag                variable               meaning
==================  =====================  ===============================
``--url``           ``AIRFLOWRPC_URL``     ``https://HOST[:PORT][/RPC2]``
``--ca``            ``AIRFLOWRPC_CA``      CA bundle (PEM) for the gateway's
                                           certificate; default: the system's
``--cert``          ``AIRFLOWRPC_CERT``    client certificate (PEM)
``--key``           ``AIRFLOWRPC_KEY``     its key (default: in the cert file)
``--token-file``    ``AIRFLOWRPC_TOKEN``   a gateway token or JWT (the flag
                                           names a file holding it, the
                                           variable holds it)
``--aws``           ``AIRFLOWRPC_AWS``     sign in with the AWS IAM identity
                                           botocore finds (environment,
                                           profile, instance or task role)
``--aws-server-id`` ``AIRFLOWRPC_AWS_...`` the gateway's ``aws.server_id``
                    ``SERVER_ID``          (default: the URL's host name)
``--aws-sts-...``   ``AIRFLOWRPC_STS_...`` the STS endpoint the gateway uses
``endpoint``        ``ENDPOINT``           (default: the global one)
==================  =====================  ===============================

There is no flag taking the token itself: a command line is readable by
every local user (``/proc``) and is echoed into CI logs by ``set -x``.  A
URL carrying user info is refused for the same reason.  An empty variable
counts as unset (a CI hands forks' jobs an empty secret).
"""

from __future__ import annotations

import os
import re
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs

from .errors import UsageError

DEFAULT_PATH = "/RPC2"
#: What a token may be made of: a gateway token (``arpc_...``) or a JWT, as
#: an HTTP header value.  Anything else would be refused by http.client with
#: an error quoting it, so it is refused here without being quoted.
_TOKEN_CHARACTERS = re.compile(r"[!-~]*\Z")
#: The fewest and most characters a token may have.
MIN_TOKEN, MAX_TOKEN = 8, 8192


@attrs.frozen
class AWSSigning:
    """What an ``AWS-IAM`` credential is signed for (the credentials are botocore's)."""

    server_id: str
    endpoint: str


@attrs.frozen
class Settings:
    """The gateway's address and our credentials; ``token`` is never shown."""

    url: str
    host: str
    port: int
    path: str
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    token: str | None = attrs.field(default=None, repr=False)
    #: Where the token came from (a flag or a variable's name), for messages.
    token_source: str | None = None
    #: With ``--aws``: the gateway's server id and the STS endpoint to sign for.
    aws: AWSSigning | None = None

    @property
    def has_credential(self) -> bool:
        return self.token is not None or self.cert is not None or self.aws is not None

    def tls_context(self) -> ssl.SSLContext:
        """
        A client context: verifies the gateway against ``ca`` (or the system's
        CAs) and its host name, and presents ``cert`` if there is one.

        Raises `UsageError` when a file cannot be read or the key is
        encrypted (never prompting for a passphrase).
        """
        try:
            ctx = ssl.create_default_context(cafile=str(self.ca) if self.ca else None)
        except (OSError, ssl.SSLError) as e:
            raise UsageError(f"CA file {self.ca}: {_why(e)}") from None
        if self.cert is not None:
            try:
                ctx.load_cert_chain(str(self.cert), str(self.key) if self.key else None,
                                    password=_no_passphrase)
            except _EncryptedKey:
                raise UsageError(
                    f"the key for {self.cert} is encrypted: give an unencrypted key") from None
            except (OSError, ssl.SSLError) as e:
                raise UsageError(f"client certificate {self.cert}: {_why(e)}") from None
        return ctx


class _EncryptedKey(Exception):
    pass


def _no_passphrase() -> bytes:
    raise _EncryptedKey()


def _why(e: BaseException) -> str:
    if isinstance(e, ssl.SSLError):
        return e.reason or "not a usable PEM file"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return type(e).__name__


def read(
    environ: Mapping[str, str], *, url: str | None = None, ca: str | None = None,
    cert: str | None = None, key: str | None = None, token_file: str | None = None,
    aws: bool = False, aws_server_id: str | None = None, aws_sts_endpoint: str | None = None,
) -> Settings:
    """
    The settings from the flags given (None: not given) and ``environ``.

    Raises `UsageError` for a missing or malformed URL, a URL with user
    info, a key without a certificate, two credentials for the one
    Authorization, or a token that cannot be sent.  The error never quotes
    the URL's user info or the token.  See the module doc for what a
    credential given by flag replaces.
    """
    def pick(flag: str | None, name: str) -> str | None:
        return flag or environ.get(name) or None

    raw = pick(url, "AIRFLOWRPC_URL")
    if raw is None:
        raise UsageError("where is the gateway? give --url or set AIRFLOWRPC_URL "
                         "(https://HOST:PORT/RPC2)")
    try:
        parts = urlsplit(raw.strip())
        port = parts.port or 443
    except ValueError:
        raise UsageError("the gateway URL is malformed: give https://HOST:PORT/RPC2") from None
    if parts.username is not None or parts.password is not None:
        raise UsageError("the gateway URL holds user info: never put a token in a URL (it "
                         "ends up in logs); set AIRFLOWRPC_TOKEN or use --token-file")
    if parts.scheme != "https" or not parts.hostname:
        raise UsageError("the gateway URL must be https://HOST[:PORT][/RPC2]: the gateway "
                         "speaks TLS only")
    if parts.query or parts.fragment:
        raise UsageError("the gateway URL must not have a query or fragment")
    path = parts.path or DEFAULT_PATH
    host = parts.hostname
    shown_host = f"[{host}]" if ":" in host else host
    cert_s, key_s = _certificate(environ, cert, key)
    ca_s = pick(ca, "AIRFLOWRPC_CA")
    if token_file or aws:
        if token_file and aws:
            raise UsageError("both --token-file and --aws were given: the gateway takes one "
                             "Authorization, choose one")
        token, source = _token_from_file(token_file) if token_file else (None, None)
    else:
        token, source = _token_from_environment(environ)
        aws = environ.get("AIRFLOWRPC_AWS", "").strip().lower() in ("1", "true", "yes")
        if aws and token is not None:
            raise UsageError(f"both a token (from {source}) and AIRFLOWRPC_AWS were given: "
                             "the gateway takes one Authorization, choose one")
    signing = None
    if aws:
        signing = _aws(pick(aws_server_id, "AIRFLOWRPC_AWS_SERVER_ID") or host,
                       pick(aws_sts_endpoint, "AIRFLOWRPC_STS_ENDPOINT"))
    return Settings(
        url=f"https://{shown_host}:{port}{path}", host=host, port=port, path=path,
        ca=Path(ca_s) if ca_s else None, cert=Path(cert_s) if cert_s else None,
        key=Path(key_s) if key_s else None, token=token, token_source=source, aws=signing,
    )


#: A server id as the gateway's config allows it (``aws.server_id``).
_SERVER_ID = re.compile(r"[!-~]{1,128}\Z")


def _aws(server_id: str, endpoint: str | None) -> AWSSigning:
    from .aws_iam import DEFAULT_ENDPOINT

    if not _SERVER_ID.match(server_id):
        raise UsageError("the AWS server id must be 1 to 128 visible ASCII characters "
                         "(the gateway's aws.server_id)")
    endpoint = (endpoint or DEFAULT_ENDPOINT).strip()
    try:
        parts = urlsplit(endpoint)
        parts.port
    except ValueError:
        raise UsageError("the STS endpoint is malformed: give https://sts.REGION.amazonaws.com"
                         ) from None
    if parts.scheme not in ("https", "http") or not parts.hostname or parts.username \
            or parts.password or parts.query or parts.fragment or parts.path not in ("", "/"):
        raise UsageError("the STS endpoint must be a bare URL such as "
                         "https://sts.eu-west-1.amazonaws.com (the one the gateway's "
                         "aws.sts_endpoint names)")
    return AWSSigning(server_id=server_id, endpoint=endpoint.rstrip("/"))


def _certificate(
    environ: Mapping[str, str], cert: str | None, key: str | None,
) -> tuple[str | None, str | None]:
    """
    The client certificate and its key, both from the flags or both from
    the environment: never a flag's certificate with the environment's key
    (another certificate's, which TLS would refuse as not matching).
    """
    if key and not cert:
        raise UsageError("--key was given without --cert: a certificate and its key are given "
                         "together, both by flag or both by environment")
    if cert:
        return cert, key or None
    cert_s = environ.get("AIRFLOWRPC_CERT") or None
    key_s = environ.get("AIRFLOWRPC_KEY") or None
    if key_s and not cert_s:
        raise UsageError("a key was given without a certificate: give --cert or set "
                         "AIRFLOWRPC_CERT")
    return cert_s, key_s


def _token_from_file(token_file: str) -> tuple[str, str]:
    source = f"--token-file {token_file}"
    try:
        token = Path(token_file).read_text(encoding="utf-8", errors="strict").strip()
    except (OSError, UnicodeDecodeError) as e:
        # Not named: found by review, the token itself given to --token-file
        # was printed in "token file <token>: No such file or directory".
        raise UsageError(f"the file --token-file names cannot be read: {_why(e)}") from None
    return _sendable_token(token, source), source


def _token_from_environment(environ: Mapping[str, str]) -> tuple[str | None, str | None]:
    if not environ.get("AIRFLOWRPC_TOKEN", "").strip():
        return None, None
    source = "AIRFLOWRPC_TOKEN"
    return _sendable_token(environ[source].strip(), source), source


def _sendable_token(token: str, source: str) -> str:
    """``token`` without a ``Bearer`` prefix; `UsageError` (never quoting it) if unsendable."""
    if token.lower().startswith("bearer "):
        token = token[7:].strip()
    if not _TOKEN_CHARACTERS.match(token):
        why = "it holds a space, a line break or a character that is not printable ASCII"
    elif len(token) < MIN_TOKEN:
        why = f"it is shorter than {MIN_TOKEN} characters"
    elif len(token) > MAX_TOKEN:
        why = f"it is longer than {MAX_TOKEN} characters"
    else:
        return token
    raise UsageError(f"the token from {source} cannot be sent: a token is {MIN_TOKEN} to "
                     f"{MAX_TOKEN} characters of printable ASCII without spaces (a gateway "
                     f"token or a JWT), and {why}")


def from_environment(**flags: Any) -> Settings:
    """`read` with this process's environment."""
    return read(os.environ, **flags)
