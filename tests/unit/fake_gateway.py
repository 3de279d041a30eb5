"""
A fake txairflowrpc gateway for the client's unit tests: the few methods
``airflowrpc call``, ``trigger`` and ``backfill`` use, with runs that move
on one state per ``wait_dag_run``, backfills whose runs finish one per
``get_backfill``, scripted failures, and a record of every call.

`FakeGateway` is the logic; `InMemory` hands it to the commands as a
``Caller`` (no wire, a fake clock); `TLSServer` serves it over real TLS on
loopback (``ThreadingHTTPServer``, the standard library's XML-RPC
marshalling), for what only the wire shows: headers, ``<i8>``, ``<nil/>``,
HTTP refusals, client certificates.
"""

from __future__ import annotations

import ssl
import threading
import xmlrpc.client
from collections.abc import Callable
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from txairflowrpc.client.errors import ClientError, FaultReply
from txairflowrpc.core.errors import NOTHING_LEFT_TO_BACKFILL

#: How each DAG's runs go: the states a run passes through, one per wait.
SCRIPTS = {
    "example_hello": ["queued", "running", "success"],
    "example_fail": ["queued", "running", "running", "failed"],
    "slow": ["queued"] + ["running"] * 10_000,
}
FAILING_TASK = "fail_on_purpose"
LOG_LINES = [f"log line {n}" for n in range(1, 101)]


class FakeGateway:
    def __init__(self) -> None:
        self.runs: dict[tuple[str, str], dict[str, Any]] = {}
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        #: method -> errors (ClientError or xmlrpc Fault) raised by its next calls.
        self.fail_next: dict[str, list[BaseException]] = {}
        #: Called before each call with (method, params): a test's clock hook.
        self.on_call: Callable[[str, tuple[Any, ...]], None] | None = None
        #: Backfills by id (a daily schedule); ``looks``: get_backfill calls so far,
        #: each of which finishes one more run; a conf {"fail": N} fails its Nth run.
        self.backfills: dict[int, dict[str, Any]] = {}
        #: DAGs with a partitioned schedule: their runs have a partition key and
        #: no logical date (which the gateway leaves out, as Airflow's null).
        self.partitioned: set[str] = set()
        #: Backfills created and completed so far: their times, a second apart.
        self._ticks = 0

    def dispatch(self, method: str, params: tuple[Any, ...]) -> Any:
        self.calls.append((method, params))
        if self.on_call is not None:
            self.on_call(method, params)
        pending = self.fail_next.get(method)
        if pending:
            raise pending.pop(0)
        handler = getattr(self, method.replace(".", "_"), None)
        if handler is None:
            raise xmlrpc.client.Fault(-32601, f"method {method!r} does not exist")
        return handler(*params)

    def calls_of(self, method: str) -> list[tuple[Any, ...]]:
        return [params for m, params in self.calls if m == method]

    def ping(self) -> str:
        return "pong"

    def get_dag(self, dag_id: str) -> dict[str, Any]:
        if dag_id not in SCRIPTS:
            raise xmlrpc.client.Fault(404, f"not found: DAG {dag_id!r}")
        return {"dag_id": dag_id, "is_paused": False}

    def echo(self, *values: Any) -> Any:
        return list(values)

    def trigger_dag(self, dag_id: str, conf: Any = None, options: Any = None) -> dict[str, Any]:
        self.get_dag(dag_id)
        conf = conf or {}
        run_id = (options or {}).get("dag_run_id") or f"manual-{len(self.runs)}"
        key = (dag_id, run_id)
        if key in self.runs:
            run = self.runs[key]
            if run["conf"] != conf:
                raise xmlrpc.client.Fault(
                    409, f"conflict: run {run_id!r} of DAG {dag_id!r} already exists with a "
                    f"different conf")
            return {**self._public(run), "created": False}
        self.runs[key] = {"dag_id": dag_id, "dag_run_id": run_id, "conf": conf,
                          "note": (options or {}).get("note"), "step": 0}
        return {**self._public(self.runs[key]), "created": True}

    def _public(self, run: dict[str, Any]) -> dict[str, Any]:
        states = SCRIPTS[run["dag_id"]]
        state = states[min(run["step"], len(states) - 1)]
        out = {"dag_id": run["dag_id"], "dag_run_id": run["dag_run_id"], "state": state,
               "conf": run["conf"]}
        return out

    def wait_dag_run(self, dag_id: str, run_id: str, timeout: int = 60) -> dict[str, Any]:
        run = self.runs.get((dag_id, run_id))
        if run is None:
            raise xmlrpc.client.Fault(404, f"not found: run {run_id!r} of DAG {dag_id!r}")
        run["step"] += 1
        out = self._public(run)
        return {**out, "finished": out["state"] in ("success", "failed")}

    def list_task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        if run_id.startswith("backfill__"):
            state = "failed"  # only a failed backfill run's tasks are asked for
        else:
            state = self._public(self.runs[(dag_id, run_id)])["state"]
        if state != "failed":
            return [{"task_id": "say_hello", "state": "success", "try_number": 1,
                     "map_index": -1}]
        return [{"task_id": FAILING_TASK, "state": "failed", "try_number": 1, "map_index": -1},
                {"task_id": "after_it", "state": "upstream_failed", "try_number": 0,
                 "map_index": -1}]

    def get_task_log(self, dag_id: str, run_id: str, task_id: str, try_number: Any = None,
                     map_index: Any = None) -> str:
        return "\n".join(LOG_LINES) + "\n"

    # -- backfills: a daily schedule; runs finish one per get_backfill --------

    def create_backfill(self, dag_id: str, from_date: str, to_date: str, conf: Any = None,
                        options: Any = None) -> dict[str, Any]:
        options = options or {}
        first, last = datetime.fromisoformat(from_date), datetime.fromisoformat(to_date)
        dates = [(first + timedelta(days=n)).strftime("%Y-%m-%dT%H:%M:%SZ")
                 for n in range((last - first).days + 1)]
        # As Airflow with reprocess none: only dates that have no run yet.
        taken = {r.get("logical_date") or r["partition_key"] + "Z"
                 for b in self.backfills.values() if b["dag_id"] == dag_id
                 for r in self._backfill_runs(b)}
        dates = [d for d in dates if d not in taken]
        if options.get("dry_run"):
            return {"dag_id": dag_id, "runs": len(dates), "logical_dates": dates,
                    "dry_run": True, "max_runs": 1000}
        if any(b["dag_id"] == dag_id and not b["completed"] for b in self.backfills.values()):
            raise xmlrpc.client.Fault(409, f"conflict: DAG {dag_id!r} already has a backfill "
                                           "that has not completed")
        if not dates:
            raise xmlrpc.client.Fault(-32602, "invalid params for create_backfill: the range "
                                      f"holds no run of DAG {dag_id!r} to create: none is "
                                      f"scheduled there, or {NOTHING_LEFT_TO_BACKFILL}")
        backfill_id = len(self.backfills) + 1
        self.backfills[backfill_id] = {
            "id": backfill_id, "dag_id": dag_id, "from_date": from_date, "to_date": to_date,
            "dag_run_conf": conf, "is_paused": False, "completed": False, "completed_at": None,
            "reprocess_behavior": options.get("reprocess_behavior", "none"),
            "max_active_runs": options.get("max_active_runs", 10),
            "created_at": self._tick(), "dates": dates, "looks": 0}
        return {**self._backfill(backfill_id), "runs": len(dates)}

    def _tick(self) -> str:
        self._ticks += 1
        return f"2026-11-27T10:00:{self._ticks:02d}Z"

    def _backfill(self, backfill_id: int) -> dict[str, Any]:
        b = self.backfills[backfill_id]
        return {k: v for k, v in b.items() if k not in ("dates", "looks")}

    def _backfill_runs(self, b: dict[str, Any]) -> list[dict[str, Any]]:
        fail = b["dag_run_conf"].get("fail") if isinstance(b["dag_run_conf"], dict) else None
        dated = b["dag_id"] not in self.partitioned
        return [{"dag_id": b["dag_id"], "dag_run_id": f"backfill__{d}",
                 **({"logical_date": d} if dated else {"partition_key": d[:-1]}),
                 "run_type": "backfill", "queued_at": b["created_at"],
                 "state": ("queued" if n >= b["looks"] else
                           "failed" if fail == n + 1 else "success")}
                for n, d in enumerate(b["dates"])]

    def get_backfill(self, dag_id: str, backfill_id: int) -> dict[str, Any]:
        b = self.backfills.get(backfill_id)
        if b is None or b["dag_id"] != dag_id:
            raise xmlrpc.client.Fault(404, f"not found: backfill {backfill_id}")
        b["looks"] += 1
        b["completed"] = b["looks"] >= len(b["dates"])
        if b["completed"] and b["completed_at"] is None:
            b["completed_at"] = self._tick()
        return self._backfill(backfill_id)

    def list_backfills(self, dag_id: str, filters: Any = None) -> dict[str, Any]:
        found = [self._backfill(i) for i in sorted(self.backfills, reverse=True)
                 if self.backfills[i]["dag_id"] == dag_id]
        return {"backfills": found[:(filters or {}).get("limit", 25)], "total": len(found)}

    def list_dag_runs(self, dag_id: str, filters: Any = None) -> dict[str, Any]:
        filters = filters or {}
        states = filters.get("state", [])
        states = [states] if isinstance(states, str) else states
        runs = [r for b in self.backfills.values() if b["dag_id"] == dag_id
                for r in self._backfill_runs(b)]
        if "logical_date_from" in filters or "logical_date_to" in filters:
            # As SQL does: a run without a logical date is in no range of them.
            runs = [r for r in runs if "logical_date" in r
                    and filters.get("logical_date_from", "") <= r["logical_date"]
                    <= filters.get("logical_date_to", "~")]
        runs = [r for r in runs if not states or r["state"] in states]
        offset = filters.get("offset", 0)
        return {"dag_runs": runs[offset:offset + filters.get("limit", 25)], "total": len(runs)}


class InMemory:
    """A `Caller` on a FakeGateway: faults become FaultReply as the wire would."""

    def __init__(self, gateway: FakeGateway) -> None:
        self.gateway = gateway
        self.timeouts: list[float] = []

    def call(self, method: str, *params: Any, timeout: float = 120.0) -> Any:
        self.timeouts.append(timeout)
        try:
            return self.gateway.dispatch(method, params)
        except xmlrpc.client.Fault as f:
            raise FaultReply(method, f.faultCode, f.faultString, "req-1") from None
        except ClientError:
            raise


class TLSServer:
    """
    FakeGateway over HTTPS on 127.0.0.1, in a thread.  ``requests`` keeps
    each request's headers and body; ``respond`` may be set to answer a
    request itself: (status, content type, body[, headers]) or None for the gateway.
    """

    def __init__(self, gateway: FakeGateway, cert: str, key: str,
                 client_ca: str | None = None, tls12: bool = False) -> None:
        self.gateway = gateway
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.respond: Callable[[dict[str, str], bytes], tuple[int, str, bytes] | None] | None = None
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                outer.requests.append((headers, body))
                custom = outer.respond(headers, body) if outer.respond else None
                if custom is None:
                    custom = (200, "text/xml", outer._answer(body))
                status, content_type, answer, *extra = custom  # [, more headers]
                self.send_response(status)
                for name, value in (extra[0] if extra else {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(answer)))
                self.send_header("X-Request-Id", "req-42")
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        if tls12:
            # TLS 1.2 checks the client's certificate inside the handshake,
            # so a refusal is an alert, never a race with a cut connection.
            ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        if client_ca is not None:
            ctx.load_verify_locations(client_ca)
            ctx.verify_mode = ssl.CERT_REQUIRED
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.url = f"https://localhost:{self.port}/RPC2"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def _answer(self, body: bytes) -> bytes:
        params, method = xmlrpc.client.loads(body)
        try:
            result = self.gateway.dispatch(method or "", params)
            text = xmlrpc.client.dumps((result,), methodresponse=True, allow_none=True)
        except xmlrpc.client.Fault as f:
            text = xmlrpc.client.dumps(f, methodresponse=True)
        return text.encode("utf-8")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)
