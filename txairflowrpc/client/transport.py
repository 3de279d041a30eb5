"""
One XML-RPC exchange with the gateway over HTTPS.

`Gateway.call` sends a ``methodCall`` written by the standard library's
``Marshaller`` (plus ``<i8>`` for integers beyond 32 bits, ``<nil/>`` for
None: the gateway reads both; a carriage return as ``&#13;``, which XML
keeps, where a raw one would arrive as a line feed), reads the answer with
the standard library's parser, and turns every way it can go wrong into a
`~txairflowrpc.client.errors.ClientError`.

Each call opens its own connection: a command makes a handful of calls
seconds apart, so a stale keep-alive connection (and the question whether
a call that met one may be sent again) is not worth having.  Each call has
a socket timeout, so a gateway that stops answering cannot hang a pipeline.

It asks for the ``nil`` and ``i8`` extensions (``X-Airflowrpc-Extensions``),
so a run's conf comes back exact: nulls as None, big integers as ints.
What it traces (``trace``, for ``--verbose``) is the method, sizes, status,
time and request id: never a header, an argument or a credential.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
import time
import xmlrpc.client
from collections.abc import Callable
from typing import Any, Protocol
from xml.parsers import expat
from xml.sax.saxutils import escape

from .. import __version__
from ..core.xmlchars import NOT_IN_XML, declaration_handlers
from .errors import (
    BadAnswer,
    FaultReply,
    HandshakeRefused,
    HTTPRefused,
    Unreachable,
    UsageError,
    retry_after_header,
)
from .settings import Settings

USER_AGENT = f"airflowrpc-client/{__version__} (Python xmlrpc.client)"
EXTENSIONS = "nil, i8"
#: Larger answers are refused rather than held in memory (a task log is
#: the largest thing the gateway sends).
MAX_ANSWER_BYTES = 64 * 1024 * 1024
#: Socket timeout of a call when none is given.
DEFAULT_TIMEOUT = 120.0

_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1
_I8_MIN, _I8_MAX = -(2**63), 2**63 - 1

#: TLS alerts by which a server says it will not take our certificate (or
#: our lack of one): not let in, rather than unreachable.
_REFUSED_ALERTS = frozenset({
    "TLSV13_ALERT_CERTIFICATE_REQUIRED", "SSLV3_ALERT_BAD_CERTIFICATE",
    "TLSV1_ALERT_UNKNOWN_CA", "SSLV3_ALERT_CERTIFICATE_EXPIRED",
    "SSLV3_ALERT_CERTIFICATE_REVOKED", "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE", "TLSV1_ALERT_ACCESS_DENIED",
    "SSLV3_ALERT_HANDSHAKE_FAILURE", "PEER_DID_NOT_RETURN_A_CERTIFICATE",
})


def _escape(text: str) -> str:
    """
    ``text`` as XML character data, a carriage return as ``&#13;``: a
    parser turns a raw CR LF or CR into LF (XML 1.0, 2.11), so a conf's
    ``\\r\\n`` would reach Airflow changed, and a backfill made with it
    would not be found again by its conf.  `UsageError` for a character
    XML cannot carry at all (`NOT_IN_XML`): the commands refuse those
    earlier, naming the argument; this is the last line.
    """
    found = NOT_IN_XML.search(text)
    if found is not None:
        raise UsageError(f"a string to send holds U+{ord(found.group()):04X}, which XML-RPC "
                         f"cannot carry")
    return escape(text, {"\r": "&#13;"})


class _Marshaller(xmlrpc.client.Marshaller):
    """
    The stdlib's, writing integers beyond 32 bits as ``<i8>`` and strings
    (struct member names too) with `_escape`.
    """

    dispatch = dict(xmlrpc.client.Marshaller.dispatch)

    def dump_unicode(self, value: str, write: Callable[[str], Any], escape: Any = None) -> None:
        super().dump_unicode(value, write, _escape)

    dispatch[str] = dump_unicode

    def dump_struct(self, value: dict[str, Any], write: Callable[[str], Any],
                    escape: Any = None) -> None:
        super().dump_struct(value, write, _escape)

    dispatch[dict] = dump_struct

    def dump_int(self, value: int, write: Callable[[str], Any]) -> None:
        if _INT_MIN <= value <= _INT_MAX:
            tag = "int"
        elif _I8_MIN <= value <= _I8_MAX:
            tag = "i8"
        else:
            raise UsageError(f"the integer {value} does not fit in 64 bits: send it as a string")
        write(f"<value><{tag}>{int(value)}</{tag}></value>\n")

    dispatch[int] = dump_int


def request_body(method: str, params: tuple[Any, ...]) -> bytes:
    """The ``methodCall`` for ``method(*params)``, UTF-8."""
    data = _Marshaller("utf-8", allow_none=True).dumps(params)
    return (f"<?xml version='1.0'?>\n<methodCall>\n<methodName>{_escape(method)}</methodName>\n"
            f"{data}</methodCall>\n").encode("utf-8")


def parse_answer(method: str, body: bytes, request_id: str | None) -> Any:
    """
    The value in a ``methodResponse``.  Raises `FaultReply` for a fault and
    `BadAnswer` for anything that is not an XML-RPC response.
    """
    unmarshaller = xmlrpc.client.Unmarshaller()
    try:
        _plain_parser(unmarshaller).Parse(body, True)
        values = unmarshaller.close()
    except xmlrpc.client.Fault as fault:
        text = fault.faultString
        if not isinstance(text, str) or not isinstance(fault.faultCode, int):
            # Found by review: a fault string nested 100,000 deep made str()
            # recurse (exit 70, "a bug in the client").
            raise BadAnswer(method, "a fault whose code or string is of another type") from None
        raise FaultReply(method, fault.faultCode, text, request_id) from None
    except _NotPlain as e:
        raise BadAnswer(method, f"{e.args[0]} is not allowed") from None
    except Exception as e:  # expat, ResponseError, a bad value: all mean garbage
        raise BadAnswer(method, type(e).__name__) from None
    if len(values) != 1:
        raise BadAnswer(method, f"{len(values)} values instead of one")
    if _deeper_than(values[0], MAX_ANSWER_DEPTH):
        # What writes it out as JSON recurses: a bad answer, not a client bug.
        raise BadAnswer(method, f"nested deeper than {MAX_ANSWER_DEPTH} levels")
    return values[0]


class _NotPlain(Exception):
    """What XML-RPC never needs: a DOCTYPE, an entity, a notation."""


def _refuse(what: str) -> Callable[..., None]:
    def handler(*args: Any) -> None:
        raise _NotPlain(what)

    return handler


#: The gateway's reader refuses the same (`txairflowrpc.core.xmlchars`).
_REFUSALS = declaration_handlers(_refuse)


def _plain_parser(unmarshaller: xmlrpc.client.Unmarshaller) -> Any:
    """
    The standard library's parser (``xmlrpc.client.ExpatParser``, set up
    alike) refusing a DOCTYPE and every declaration: found by review, a
    hostile gateway's answer of 20 MB with nested entities expanded to 1 GB
    (3.1 GB of memory) past `MAX_ANSWER_BYTES` and ``--timeout``; expat's
    own guard lets a large document expand 100-fold.
    """
    parser = expat.ParserCreate(None, None)
    parser.StartElementHandler = unmarshaller.start
    parser.EndElementHandler = unmarshaller.end
    parser.CharacterDataHandler = unmarshaller.data
    for name, handler in _REFUSALS:
        setattr(parser, name, handler)
    unmarshaller.xml(None, None)
    return parser


#: Deepest answer taken (the gateway sends nothing deeper than 32 levels).
MAX_ANSWER_DEPTH = 200


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether ``value``'s arrays and structs nest deeper than ``limit`` (no recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, tuple, dict)):
            if depth > limit:
                return True
            stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))
    return False


class Caller(Protocol):
    """What the commands need of a gateway: `Gateway`, or a fake in tests."""

    def call(self, method: str, *params: Any, timeout: float = ...) -> Any: ...


#: What the methods the commands read answer (the gateway's signatures).
ANSWER_TYPES: dict[str, type] = {
    "trigger_dag": dict, "get_dag_run": dict, "wait_dag_run": dict, "list_dag_runs": dict,
    "list_task_instances": list, "get_task_log": str, "create_backfill": dict,
    "get_backfill": dict, "list_backfills": dict,
}
_TYPE_NAMES = {dict: "a struct", list: "an array", str: "a string"}


class Typed:
    """
    A `Caller` whose answers are of the type the method's signature says
    (`ANSWER_TYPES`), or a `BadAnswer` (exit 5): found by review, a string
    where a struct was due ended in exit 70, "a bug in the client".
    """

    def __init__(self, gateway: Caller) -> None:
        self._gateway = gateway

    def call(self, method: str, *params: Any, timeout: float = DEFAULT_TIMEOUT) -> Any:
        value = self._gateway.call(method, *params, timeout=timeout)
        kind = ANSWER_TYPES.get(method)
        if kind is not None and not isinstance(value, kind):
            raise BadAnswer(method, f"{_TYPE_NAMES.get(type(value), type(value).__name__)} "
                                    f"where {_TYPE_NAMES[kind]} was due")
        return value


class Gateway:
    """
    Calls to one gateway with one set of credentials.

    ``trace`` gets a line per exchange when given (``--verbose``);
    ``on_expiry`` gets the ``X-Credential-Expires`` date the first time the
    gateway warns that the credential expires soon.
    """

    def __init__(
        self, settings: Settings, *, trace: Callable[[str], None] | None = None,
        on_expiry: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._context = settings.tls_context()
        self._trace = trace
        self._on_expiry = on_expiry
        self._expiry_told = False
        self._clock = clock
        self._headers = {
            "Content-Type": "text/xml; charset=utf-8",
            "User-Agent": USER_AGENT,
            "X-Airflowrpc-Extensions": EXTENSIONS,
        }
        if settings.token is not None:
            self._headers["Authorization"] = f"Bearer {settings.token}"
        self._aws = _aws_signer(settings) if settings.aws is not None else None

    @property
    def url(self) -> str:
        return self._settings.url

    def call(self, method: str, *params: Any, timeout: float = DEFAULT_TIMEOUT) -> Any:
        """
        ``method(*params)`` on the gateway; its result.  Raises a
        `ClientError` (a fault, an HTTP error, a refused handshake, no
        connection, a garbled answer), or `UsageError` for an argument that
        cannot be written (an integer beyond 64 bits).
        """
        body = request_body(method, params)
        started = self._clock()
        if self._trace:
            self._trace(f"-> {method} ({len(body)} bytes) to {self.url}")
        status, reason, headers, answer = self._exchange(method, body, timeout)
        request_id = headers.get("x-request-id")
        if self._trace:
            ref = f", request id {request_id}" if request_id else ""
            self._trace(f"<- HTTP {status} ({len(answer)} bytes) in "
                        f"{self._clock() - started:.2f} s{ref}")
        expires = headers.get("x-credential-expires")
        if expires and self._on_expiry and not self._expiry_told:
            self._expiry_told = True
            self._on_expiry(expires)
        if status != 200:
            raise HTTPRefused(method, status, reason, request_id,
                              _hint(status, headers, answer, self._settings),
                              retry_after_header(headers.get("retry-after")))
        return parse_answer(method, answer, request_id)

    def _exchange(
        self, method: str, body: bytes, timeout: float
    ) -> tuple[int, str, dict[str, str], bytes]:
        """
        One request and its whole answer within ``timeout`` seconds in all:
        the socket's timeout bounds each read, and past ``timeout`` the
        connection is shut down, so that an answer trickling a byte at a
        time cannot hold a pipeline's step for ever.
        """
        s = self._settings
        conn = http.client.HTTPSConnection(s.host, s.port, timeout=timeout,
                                           context=self._context)
        expired = threading.Event()

        def cut() -> None:
            expired.set()
            sock = conn.sock
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)  # wakes the read that waits
                except OSError:
                    pass

        deadline = threading.Timer(timeout, cut)
        deadline.daemon = True
        deadline.start()
        late = Unreachable(method, f"no complete answer from {s.host}:{s.port} "
                                   f"within {timeout:g} s")
        try:
            exchanged = self._exchange_on(conn, method, body, timeout)
        except (Unreachable, HandshakeRefused, BadAnswer):
            if expired.is_set():
                raise late from None
            raise
        finally:
            deadline.cancel()
            conn.close()
        if expired.is_set():  # what was read may stop short of the answer's end
            raise late
        return exchanged

    def _exchange_on(
        self, conn: http.client.HTTPSConnection, method: str, body: bytes, timeout: float,
    ) -> tuple[int, str, dict[str, str], bytes]:
        s = self._settings
        try:
            headers = self._headers
            if self._aws is not None:
                headers = {**headers, "Authorization": self._aws()}
            conn.request("POST", s.path, body=body, headers=headers)
            response = conn.getresponse()
            answer = response.read(MAX_ANSWER_BYTES + 1)
            if len(answer) > MAX_ANSWER_BYTES:
                raise BadAnswer(method, f"larger than {MAX_ANSWER_BYTES} bytes")
            headers = {k.lower(): v for k, v in response.getheaders()}
            return response.status, response.reason, headers, answer
        except ssl.SSLCertVerificationError as e:
            raise HandshakeRefused(
                method, f"the gateway's certificate is not trusted: {e.verify_message}"
                f" (is AIRFLOWRPC_CA / --ca the CA that signed it?)", ours_refused=False,
            ) from None
        except ssl.SSLError as e:
            if e.reason in _REFUSED_ALERTS:
                raise HandshakeRefused(
                    method, f"the gateway refused our client certificate ({e.reason})",
                    ours_refused=True) from None
            raise Unreachable(method, f"TLS error ({e.reason or type(e).__name__})"
                              + _cut_hint(s)) from None
        except (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected) as e:
            raise Unreachable(method, _connection_problem(e, s, timeout) + _cut_hint(s)) from None
        except (OSError, http.client.HTTPException) as e:
            raise Unreachable(method, _connection_problem(e, s, timeout)) from None


def _aws_signer(settings: Settings) -> Callable[[], str]:
    """
    The ``AWS-IAM`` Authorization value, signed by botocore and signed anew
    each minute (a long wait outlives a signature).  Raises `UsageError`
    when botocore is missing or finds no credentials; never quotes them.
    """
    assert settings.aws is not None
    try:
        from botocore.exceptions import BotoCoreError

        from .aws_iam import IAMAuthorization
    except ImportError:
        raise UsageError("--aws needs botocore: pip install 'txairflowrpc[aws]'") from None
    signer = IAMAuthorization(settings.aws.server_id, endpoint=settings.aws.endpoint,
                              reuse_seconds=60)

    def sign() -> str:
        try:
            return signer()
        except (BotoCoreError, RuntimeError) as e:
            raise UsageError(f"--aws: no usable AWS credentials ({type(e).__name__}): set "
                             "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or "
                             "run with an instance or task role") from None

    return sign


def _cut_hint(s: Settings) -> str:
    """
    Under TLS 1.3 a server checks the client's certificate after the client
    has finished its handshake, so a refusal may reach us as a cut
    connection rather than as an alert: say so when we sent none.
    """
    if s.cert is not None:
        return ""
    return ("; if the gateway requires a client certificate, give one (AIRFLOWRPC_CERT): "
            "none was sent")


def _connection_problem(e: BaseException, s: Settings, timeout: float) -> str:
    where = f"{s.host}:{s.port}"
    if isinstance(e, TimeoutError | socket.timeout):
        return f"no answer from {where} within {timeout:g} s"
    if isinstance(e, socket.gaierror):
        return f"cannot resolve {s.host} ({e.strerror})"
    if isinstance(e, ConnectionRefusedError):
        return f"connection to {where} refused"
    if isinstance(e, http.client.RemoteDisconnected):
        return f"{where} closed the connection without answering"
    if isinstance(e, OSError) and e.strerror:
        return f"{where}: {e.strerror}"
    return f"{where}: {type(e).__name__}"


def _hint(status: int, headers: dict[str, str], answer: bytes, s: Settings) -> str:
    """What the gateway said about a refusal (its text/plain line), and ours."""
    said = ""
    if headers.get("content-type", "").startswith("text/plain"):
        line = answer[:300].decode("utf-8", "replace").splitlines()[:1]
        said = "".join(ch for ch in (line[0] if line else "") if ch.isprintable())
    if status == 401 and not s.has_credential:
        ours = "no token or client certificate was given (AIRFLOWRPC_TOKEN, AIRFLOWRPC_CERT)"
        return f"{said}; {ours}" if said else ours
    return said
