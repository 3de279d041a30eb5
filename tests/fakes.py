"""
An in-memory Airflow 3 REST API (v2) for unit tests, served through
``treq.testing.StubTreq``.  It answers the way AIRFLOW-API.md says a real
one does (201 for a login, 409 with an object ``detail`` for a duplicate
run, 422 with a list ``detail``), and records every request it gets.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import unquote

from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET


def make_jwt(lifetime: int = 3600, iat: int = 1_700_000_000, n: int = 0) -> str:
    def b64(d: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(d).encode()).decode().rstrip("=")

    return f"{b64({'alg': 'HS512'})}.{b64({'iat': iat, 'exp': iat + lifetime, 'n': n})}.sig"


#: The fake Airflow's now, in seconds since the epoch: a gateway's clock
#: set to it sees the fake's past as past (backfills are of past dates).
NOW = 1_795_737_600.0  # 2026-11-27T00:00:00Z

class FakeAirflow(Resource):
    isLeaf = True

    def __init__(self, password: str = "pw", token_lifetime: int = 3600) -> None:
        super().__init__()
        self.password = password
        self.token_lifetime = token_lifetime
        #: Accounts besides the gateway's: user -> password.
        self.users: dict[str, str] = {}
        #: Users that may only read (SimpleAuthManager's "viewer"): 403 for a change.
        self.viewers: set[str] = set()
        #: token -> the user it was issued to; the user of every API request, in order.
        self.token_users: dict[str, str] = {}
        self.callers: list[str | None] = []
        self.requests: list[tuple[str, str]] = []
        self.bodies: list[Any] = []
        #: Each request's query arguments, in the order of `requests`.
        self.queries: list[dict[str, list[str]]] = []
        self.valid_tokens: set[str] = set()
        self._counter = itertools.count(1)
        #: (method, path-prefix) -> (status, body) for the next matching request.
        self.fail_next: dict[tuple[str, str], tuple[Any, ...]] = {}
        #: The same, but the request is carried out first (what Airflow did
        #: before something in front of it answered an error instead).
        self.fail_after: dict[tuple[str, str], tuple[Any, ...]] = {}
        self.dags: dict[str, dict[str, Any]] = {}
        #: Backfills by id; a DAG with "_daily" set has a daily schedule (others none).
        self.backfills: dict[int, dict[str, Any]] = {}
        #: The clock of "future dates" (Airflow's is now; `NOW` in seconds).
        self.now = "2026-11-27T00:00:00+00:00"
        self.runs: dict[tuple[str, str], dict[str, Any]] = {}
        self.task_instances: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.logs: dict[tuple[str, str, str, int], Any] = {}
        #: Paths (prefixes) that never get an answer.
        self.hang: list[str] = []
        self._user: str | None = None
        self.add_dag("example_hello", tags=["example"], tasks=["say_hello"])
        self.add_dag("etl_orders", tags=["etl"], tasks=["extract", "load"])
        self.dags["etl_orders"]["_daily"] = True

    def add_dag(self, dag_id: str, tags: list[str], tasks: list[str]) -> None:
        self.dags[dag_id] = {
            "dag_id": dag_id, "dag_display_name": dag_id, "is_paused": False,
            "is_stale": False, "tags": [{"name": t, "dag_id": dag_id} for t in tags],
            "owners": ["airflow"], "fileloc": "/secret/path/" + dag_id + ".py",
            "description": None, "file_token": "internal", "_tasks": tasks,
        }

    def api_requests(self) -> list[tuple[str, str]]:
        return [r for r in self.requests if r[1] != "/auth/token"]

    def logins(self) -> int:
        return sum(1 for r in self.requests if r[1] == "/auth/token")

    # -- serving -----------------------------------------------------------

    def render(self, request: Any) -> bytes:
        method = request.method.decode()
        path = unquote(request.path.decode())
        for (m, prefix), answer in list(self.fail_after.items()):
            if m == method and path.startswith(prefix):
                del self.fail_after[(m, prefix)]
                self.render(request)  # done, and its answer replaced
                return self._json(request, *answer)
        self.requests.append((method, path))
        raw = request.content.read()
        body = json.loads(raw) if raw else None
        self.bodies.append(body)
        self.queries.append({k.decode(): [v.decode() for v in vs]
                             for k, vs in request.args.items()})
        if any(path.startswith(prefix) for prefix in self.hang):
            return NOT_DONE_YET
        for (m, prefix), answer in list(self.fail_next.items()):
            if m == method and path.startswith(prefix):
                del self.fail_next[(m, prefix)]
                status, body, *headers = answer  # (status, body[, headers])
                for name, value in (headers[0] if headers else {}).items():
                    request.setHeader(name, value)
                return self._json(request, status, body)
        if path == "/api/v2/monitor/health" and method == "GET":  # needs no auth, as Airflow's
            return self._json(request, 200, {"metadatabase": {"status": "healthy"},
                                             "scheduler": {"status": "healthy"}})
        if path == "/auth/token" and method == "POST":
            users = {"gateway": self.password, **self.users}
            user = body.get("username") if isinstance(body, dict) else None
            if user not in users or body != {"username": user, "password": users[user]}:
                return self._json(request, 401, {"detail": "Invalid credentials"})
            token = make_jwt(self.token_lifetime, n=next(self._counter))
            self.valid_tokens.add(token)
            self.token_users[token] = user
            return self._json(request, 201, {"access_token": token})
        auth = (request.getHeader("authorization") or "").removeprefix("Bearer ")
        self.callers.append(self.token_users.get(auth))
        if auth not in self.valid_tokens:
            return self._json(request, 401, {"detail": "Not authenticated"})
        if method != "GET" and self.token_users.get(auth) in self.viewers:
            return self._json(request, 403, {"detail": "Forbidden"})
        self._user = self.token_users.get(auth)
        if not path.startswith("/api/v2/"):
            return self._json(request, 404, {"detail": "Not Found"})
        parts = path[len("/api/v2/"):].split("/")
        args = {k.decode(): [v.decode() for v in vs] for k, vs in request.args.items()}
        return self._json(request, *self._route(method, parts, args, body))

    def _json(self, request: Any, status: int, body: Any) -> bytes:
        request.setResponseCode(status)
        if isinstance(body, bytes):
            return body
        request.setHeader("content-type", "application/json")
        return json.dumps(body).encode()

    def _dag(self, dag_id: str) -> dict[str, Any]:
        return {k: v for k, v in self.dags[dag_id].items() if not k.startswith("_")}

    def _backfills(self, method: str, rest: list[str], args: dict[str, list[str]],
                   body: Any) -> tuple[int, Any]:
        """Airflow 3's /backfills, with its refusals' words (a daily schedule only)."""
        if rest in ([], ["dry_run"]) and method == "POST":
            dag_id = body["dag_id"]
            if dag_id not in self.dags:
                return 404, {"detail": f"Could not find dag {dag_id}"}
            if not self.dags[dag_id].get("_daily"):
                return 422, {"detail": f"{dag_id} has a non-periodic schedule that does not "
                                       "support backfills"}
            first = datetime.fromisoformat(body["from_date"])
            last = datetime.fromisoformat(body["to_date"])
            if first >= datetime.fromisoformat(self.now) and last >= datetime.fromisoformat(self.now):
                return 422, {"detail": "Backfill cannot be executed for future dates."}
            day = first.replace(hour=0, minute=0, second=0, microsecond=0)
            day += timedelta(days=1) if day < first else timedelta()
            dates = []
            while day <= last:
                dates.append(day.isoformat().replace("+00:00", "Z"))
                day += timedelta(days=1)
            if body.get("run_backwards"):
                dates.reverse()
            if rest == ["dry_run"]:
                return 200, {"backfills": [{"logical_date": d, "partition_key": None,
                                            "partition_date": None} for d in dates],
                             "total_entries": len(dates)}
            if any(b["dag_id"] == dag_id and b["completed_at"] is None
                   for b in self.backfills.values()):
                return 409, {"detail": f"There is already a running backfill for dag {dag_id}"}
            if not dates:
                return 422, {"detail": f"No runs to create for Dag {dag_id} in the range"}
            backfill_id = len(self.backfills) + 1
            self.backfills[backfill_id] = {
                "id": backfill_id, "dag_id": dag_id, "dag_display_name": dag_id,
                "from_date": body["from_date"], "to_date": body["to_date"],
                "dag_run_conf": body.get("dag_run_conf"), "is_paused": False,
                "reprocess_behavior": body["reprocess_behavior"],
                "max_active_runs": body.get("max_active_runs", 10),
                "created_at": self.now, "completed_at": None, "updated_at": self.now,
                "triggering_user_name": self._user,
            }
            for d in dates:
                run_id = f"backfill__{d}"
                self.runs[(dag_id, run_id)] = {
                    "dag_id": dag_id, "dag_run_id": run_id, "state": "queued",
                    "conf": body.get("dag_run_conf") or {}, "logical_date": d,
                    "run_type": "backfill", "end_date": None}
            return 200, self.backfills[backfill_id]
        if rest == [] and method == "GET":
            found = sorted((b for b in self.backfills.values() if b["dag_id"] == args["dag_id"][0]),
                           key=lambda b: -b["id"])
            offset, limit = int(args.get("offset", ["0"])[0]), int(args.get("limit", ["50"])[0])
            return 200, {"backfills": found[offset:offset + limit], "total_entries": len(found)}
        backfill = self.backfills.get(int(rest[0])) if rest and rest[0].isdigit() else None
        if backfill is None:
            return 404, {"detail": "Backfill not found"}
        if len(rest) == 1 and method == "GET":
            return 200, backfill
        if len(rest) == 2 and method == "PUT" and rest[1] in ("pause", "unpause", "cancel"):
            if backfill["completed_at"] is not None:
                return 409, {"detail": "Backfill is already completed."}
            backfill["is_paused"] = rest[1] != "unpause"
            if rest[1] == "cancel":
                backfill["completed_at"] = self.now
                for run in self.runs.values():
                    if run.get("run_type") == "backfill" and run["dag_id"] == backfill["dag_id"] \
                            and run["state"] == "queued":
                        run["state"] = "failed"
            return 200, backfill
        return 404, {"detail": "Not Found"}

    def _route(self, method: str, parts: list[str], args: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        if parts == ["dags"] and method == "GET":
            dags = sorted(self.dags)
            if "dag_id_pattern" in args:  # as Airflow: ILIKE '%pattern%'
                like = "".join(".*" if c == "%" else "." if c == "_" else re.escape(c)
                               for c in args["dag_id_pattern"][0])
                flags = re.IGNORECASE | re.ASCII | re.DOTALL
                dags = [d for d in dags if re.fullmatch(f".*{like}.*", d, flags)]
            offset, limit = int(args.get("offset", ["0"])[0]), int(args.get("limit", ["50"])[0])
            return 200, {"dags": [self._dag(d) for d in dags[offset:offset + limit]],
                         "total_entries": len(dags)}
        if parts and parts[0] == "backfills":
            return self._backfills(method, parts[1:], args, body)
        if not parts or parts[0] != "dags" or len(parts) < 2:
            return 404, {"detail": "Not Found"}
        dag_id = parts[1]
        if dag_id not in self.dags:
            return 404, {"detail": f"The Dag with ID: `{dag_id}` was not found"}
        rest = parts[2:]
        if rest == [] and method == "GET":
            return 200, self._dag(dag_id)
        if rest == [] and method == "PATCH":
            self.dags[dag_id]["is_paused"] = body["is_paused"]
            return 200, self._dag(dag_id)
        if rest == ["dagRuns"] and method == "POST":
            if "logical_date" not in body:
                return 422, {"detail": [{"type": "missing", "loc": ["body", "logical_date"],
                                         "msg": "Field required", "input": body}]}
            run_id = body.get("dag_run_id") or f"manual__{next(self._counter)}"
            taken = body["logical_date"] is not None and any(
                r["logical_date"] == body["logical_date"]
                for (d, _), r in self.runs.items() if d == dag_id
            )
            if (dag_id, run_id) in self.runs or taken:  # both are unique in Airflow's table
                return 409, {"detail": {"reason": "Unique constraint violation",
                                        "statement": "INSERT INTO dag_run ...",
                                        "orig_error": "UNIQUE constraint failed"}}
            run = {"dag_id": dag_id, "dag_run_id": run_id, "state": "queued",
                   "conf": body.get("conf") or {}, "note": body.get("note"),
                   "logical_date": body["logical_date"], "run_type": "manual",
                   "triggering_user_name": self._user,
                   "end_date": None, "bundle_version": None}
            self.runs[(dag_id, run_id)] = run
            self.task_instances[(dag_id, run_id)] = [
                {"task_id": t, "dag_id": dag_id, "dag_run_id": run_id, "state": None,
                 "try_number": 0, "map_index": -1, "hostname": "worker-1"}
                for t in self.dags[dag_id]["_tasks"]
            ]
            return 200, run
        if rest == ["dagRuns"] and method == "GET":
            runs = [r for (d, _), r in self.runs.items() if d == dag_id]
            if "state" in args:
                runs = [r for r in runs if r["state"] in args["state"]]
            if "run_type" in args:
                runs = [r for r in runs if r.get("run_type") in args["run_type"]]
            for key, keep in (("logical_date_gte", lambda a, b: a >= b),
                              ("logical_date_lte", lambda a, b: a <= b)):
                if key in args:
                    bound = datetime.fromisoformat(args[key][0])
                    runs = [r for r in runs if r.get("logical_date") and keep(
                        datetime.fromisoformat(r["logical_date"]), bound)]
            return 200, {"dag_runs": runs, "total_entries": len(runs)}
        if rest == ["clearTaskInstances"] and method == "POST":
            tis = self.task_instances.get((dag_id, body["dag_run_id"]), [])
            chosen = [t for t in tis if not body.get("task_ids") or t["task_id"] in body["task_ids"]]
            if not body.get("dry_run", True):
                for t in chosen:
                    t["state"] = None
            return 200, {"task_instances": chosen, "total_entries": len(chosen)}
        if len(rest) >= 2 and rest[0] == "dagRuns":
            key = (dag_id, rest[1])
            if key not in self.runs:
                return 404, {"detail": "DagRun not found"}
            if len(rest) == 2 and method == "GET":
                return 200, self.runs[key]
            if len(rest) == 2 and method == "PATCH":
                self.runs[key]["state"] = body["state"]
                return 200, self.runs[key]
            if rest[2:] == ["taskInstances"]:
                tis = self.task_instances[key]
                offset = int(args.get("offset", ["0"])[0])
                limit = min(int(args.get("limit", ["50"])[0]), 100)  # Airflow's page cap
                return 200, {"task_instances": tis[offset:offset + limit],
                             "total_entries": len(tis)}
            if len(rest) >= 4 and rest[2] == "taskInstances":
                # As Airflow: a mapped task's instances are .../{task_id}/{map_index},
                # its logs ...?map_index=N; the default map_index is -1 (not mapped).
                ti = [t for t in self.task_instances[key] if t["task_id"] == rest[3]]
                if not ti:
                    return 404, {"detail": "TaskInstance not found"}
                if len(rest) in (4, 5):
                    index = int(rest[4]) if len(rest) == 5 else -1
                    found = [t for t in ti if t.get("map_index", -1) == index]
                    if found:
                        return 200, found[0]
                    if len(rest) == 4:
                        return 404, {"detail": "Task instance is mapped, add the map_index "
                                               "value to the URL"}
                    return 404, {"detail": "The Task Instance ... was not found"}
                if len(rest) == 6 and rest[4] == "logs":
                    index = int(args.get("map_index", ["-1"])[0])
                    if not any(t.get("map_index", -1) == index for t in ti):
                        return 404, {"detail": "TaskInstance not found"}
                    log = self.logs.get((*key, rest[3], int(rest[5]))
                                        + ((index,) if index >= 0 else ()))
                    if log is None:
                        return 404, {"detail": "no log"}
                    if isinstance(log, list):  # pages: continuation_token "pN" asks for page N
                        log = log[int(args.get("token", ["p0"])[0][1:])]
                    return 200, log
        return 404, {"detail": "Not Found"}
