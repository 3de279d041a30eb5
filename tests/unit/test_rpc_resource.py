"""The /RPC2 resource at the HTTP level: what is refused before any XML is read."""

from __future__ import annotations

import copy
import hashlib
import hmac
import io
import xmlrpc.client
from typing import Any

import attrs
from twisted.internet.defer import CancelledError
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from txairflowrpc.gate import resource as resource_module
from txairflowrpc.upstream import client as client_module
from txairflowrpc.upstream import watch as watch_module

from .helpers import CONFIG, DIGEST_KEY, OPERATOR, dumps, gateway

PING = xmlrpc.client.dumps((), "ping").encode()


class HTTPTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.gw = gateway()

    def response(self, d: Any) -> tuple[int, Any, bytes]:
        response = self.successResultOf(d)
        return response.code, response.headers, self.successResultOf(response.content())

    def test_xml_post_is_served_with_a_request_id(self) -> None:
        code, headers, body = self.response(self.gw.post(PING))
        self.assertEqual(code, 200)
        self.assertEqual(headers.getRawHeaders("content-type"), ["text/xml; charset=utf-8"])
        self.assertRegex(headers.getRawHeaders("x-request-id")[0], "^[0-9a-f]{16}$")
        self.assertEqual(xmlrpc.client.loads(body)[0], ("pong",))

    def test_each_request_gets_its_own_id(self) -> None:
        ids = {self.response(self.gw.post(PING))[1].getRawHeaders("x-request-id")[0]
               for _ in range(5)}
        self.assertEqual(len(ids), 5)

    def test_unauthenticated_is_401_before_parsing(self) -> None:
        self.gw.principal = None
        code, headers, body = self.response(self.gw.post(b"<!DOCTYPE x><garbage"))
        self.assertEqual(code, 401)
        self.assertIn(b"client certificate", body)

    def test_non_xml_content_type_is_415(self) -> None:
        code, _, _ = self.response(self.gw.post(PING, {"Content-Type": "text/plain"}))
        self.assertEqual(code, 415)
        code, _, _ = self.response(self.gw.post(PING, {"Content-Type": "application/xml; charset=utf-8"}))
        self.assertEqual(code, 200)

    def test_the_charset_of_the_content_type_is_honoured(self) -> None:
        latin1 = ("<methodCall><methodName>get_dag</methodName><params><param><value>"
                  "<string>\u00e9tl</string></value></param></params></methodCall>").encode("latin-1")
        code, _, body = self.response(self.gw.post(
            latin1, {"Content-Type": "text/xml; charset=ISO-8859-1"}))
        with self.assertRaises(xmlrpc.client.Fault) as e:
            xmlrpc.client.loads(body)
        # Read as latin-1, the id is well-formed text: it is refused as an id
        # (-32602), not as undecodable bytes (-32700).
        self.assertEqual((code, e.exception.faultCode), (200, -32602))
        self.assertIn("dag_id may contain only", e.exception.faultString)

    def test_compressed_body_is_415(self) -> None:
        code, _, body = self.response(self.gw.post(PING, {"Content-Encoding": "gzip"}))
        self.assertEqual((code, body), (415, b"Content-Encoding must be identity\n"))

    def test_body_over_the_cap_is_413(self) -> None:
        big = xmlrpc.client.dumps(("x" * 300 * 1024,), "get_dag").encode()
        code, _, _ = self.response(self.gw.post(big))
        self.assertEqual(code, 413)
        self.assertEqual(self.gw.airflow.requests, [])

    def test_get_is_405_and_other_paths_404(self) -> None:
        response = self.successResultOf(self.gw.client.get("https://gw.test/RPC2"))
        self.assertEqual(response.code, 405)
        self.assertEqual(self.response(self.gw.post(PING, path="/RPC3"))[0], 404)
        self.assertEqual(self.response(self.gw.post(PING, path="/"))[0], 404)

    def test_a_query_string_is_never_recorded(self) -> None:
        """Found by review: ``/RPC2?access_token=...`` reached the trail as the path."""
        import json
        import tempfile
        from pathlib import Path

        directory = Path(tempfile.mkdtemp())
        gw = gateway(audit_dir=str(directory))
        target = b"/RPC2?access_token=arpc_tok_SECRETSECRET"
        code, _, _ = self.response(gw.post(PING, path=target.decode()))
        self.assertEqual(code, 404)
        raw = (directory / "audit.jsonl").read_text()
        (record,) = [r for r in map(json.loads, raw.splitlines()) if r.get("target")]
        self.assertEqual(record["target"], {
            "hmac_sha256": hmac.new(DIGEST_KEY, target, hashlib.sha256).hexdigest(),
            "size": len(target)})
        self.assertNotIn("path", record)
        self.assertNotIn("SECRET", raw)

    def test_doctype_is_a_fault_not_an_error_page(self) -> None:
        code, _, body = self.response(self.gw.post(
            b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY b "c">]><methodCall/>'))
        self.assertEqual(code, 200)
        with self.assertRaises(xmlrpc.client.Fault) as e:
            xmlrpc.client.loads(body)
        self.assertEqual(e.exception.faultCode, -32700)


class LastResortTests(SynchronousTestCase):
    """A failure nobody planned still gets an answer: fault -32603 with the request id."""

    def setUp(self) -> None:
        self.gw = gateway()

    def fault_of(self, d: Any) -> tuple[str, xmlrpc.client.Fault]:
        response = self.successResultOf(d)  # an answer, not a hang
        body = self.successResultOf(response.content())
        with self.assertRaises(xmlrpc.client.Fault) as e:
            xmlrpc.client.loads(body)
        return response.headers.getRawHeaders("x-request-id")[0], e.exception

    def broken(self, name: str) -> None:
        def boom(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("secret=hunter2")

        self.patch(resource_module.wire, name, boom)

    def test_a_failure_after_authentication(self) -> None:
        self.broken("parse_call")
        request_id, fault = self.fault_of(self.gw.post(PING))
        self.assertEqual(fault.faultCode, -32603)
        self.assertIn(request_id, fault.faultString)
        self.assertNotIn("hunter2", fault.faultString)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_a_failure_while_writing_the_answer(self) -> None:
        self.broken("dump_response")
        request_id, fault = self.fault_of(self.gw.post(PING))
        self.assertEqual(fault.faultCode, -32603)
        self.assertIn(request_id, fault.faultString)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class DisconnectTests(SynchronousTestCase):
    def test_client_disconnect_cancels_a_pending_wait(self) -> None:
        gw = gateway()
        gw.airflow.runs[("example_hello", "r")] = {"dag_id": "example_hello",
                                                   "dag_run_id": "r", "state": "running"}
        rpc = gw.site.rpc
        request = DummyRequest([b"RPC2"])
        request.principal = OPERATOR  # as the site sets it once the headers are in
        request.method = b"POST"
        request.requestHeaders.setRawHeaders(b"content-type", [b"text/xml"])
        request.content = io.BytesIO(
            xmlrpc.client.dumps(("example_hello", "r", 600), "wait_dag_run").encode())
        self.assertEqual(rpc.render(request), NOT_DONE_YET)
        self.assertTrue(gw.clock.getDelayedCalls())  # polling and the deadline
        request.processingFailed(Failure(CancelledError()))  # the connection is gone
        self.assertEqual(gw.clock.getDelayedCalls(), [])
        self.assertEqual(request.written, [])


class SharedAnswerTests(SynchronousTestCase):
    """
    The callers of one shared read get the same result object: its body is
    written once and given to each, for the same extensions only; results
    that are only equal are written each time.
    """

    def setUp(self) -> None:
        self.written: list[Any] = []
        real = resource_module.wire.dump_response

        def counting(result: Any, extensions: frozenset[str] = frozenset()) -> bytes:
            self.written.append((result, extensions))
            return real(result, extensions)

        self.patch(resource_module.wire, "dump_response", counting)
        cached = attrs.evolve(CONFIG, rpc=attrs.evolve(CONFIG.rpc, read_cache_seconds=60))
        self.gw = gateway(cached)
        self.gw.airflow.runs[("etl_orders", "r1")] = {
            "dag_id": "etl_orders", "dag_run_id": "r1", "state": "running", "conf": {"a": None},
        }

    def answer(self, *params: Any, headers: dict[str, str] | None = None,
               method: str = "get_dag_run") -> bytes:
        d = self.gw.post(dumps(params, method), headers)
        self.gw.client.flush()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 200)
        return self.successResultOf(response.content())

    def test_one_result_is_written_once_per_extensions(self) -> None:
        first = self.answer("etl_orders", "r1")
        self.assertEqual(self.answer("etl_orders", "r1"), first)  # the cache's same result
        self.assertEqual(len(self.written), 1)
        nil = self.answer("etl_orders", "r1", headers={"X-AirflowRPC-Extensions": "nil"})
        self.assertIn(b"<nil/>", nil)
        self.assertNotIn(b"<nil/>", first)
        self.assertEqual(len(self.written), 2)
        self.assertEqual(self.answer("etl_orders", "r1"), first)
        self.assertEqual([e for _, e in self.written], [frozenset(), {"nil"}, frozenset()])

    def test_equal_results_of_other_reads_are_written_each(self) -> None:
        self.gw.clock.advance(61)  # past the cache: each read is another answer
        first = self.answer("etl_orders", "r1")
        self.gw.clock.advance(61)
        self.assertEqual(self.answer("etl_orders", "r1"), first)
        self.assertEqual(len(self.written), 2)
        self.assertIsNot(self.written[0][0], self.written[1][0])
        self.assertEqual(self.written[0][0], self.written[1][0])

    def test_no_handler_changes_a_shared_value(self) -> None:
        """
        The memo, and the callers of one read, rely on nobody changing a
        shaped value once made (a change would reach every caller sharing
        it, and the body kept): each shape and each wait's answer is copied
        as made and compared after every handler that reads one has run.
        Found worth guarding by review.
        """
        made: list[tuple[Any, Any]] = []

        def snapshot(real: Any) -> Any:
            def recording(data: Any) -> Any:
                value = real(data)
                made.append((value, copy.deepcopy(value)))
                return value
            return recording

        for name in ("shape_run", "shape_dag", "shape_backfill", "shape_task_instance"):
            self.patch(client_module, name, snapshot(getattr(client_module, name)))
        self.patch(watch_module, "_answer", snapshot(watch_module._answer))
        airflow = self.gw.airflow
        airflow.runs[("etl_orders", "r1")]["state"] = "success"  # a wait answers at once
        airflow.backfills[1] = {"id": 1, "dag_id": "etl_orders", "from_date": "x",
                                "to_date": "y", "dag_run_conf": None, "is_paused": False,
                                "completed_at": None}
        airflow.task_instances[("etl_orders", "r1")] = [
            {"task_id": "extract", "dag_id": "etl_orders", "dag_run_id": "r1",
             "state": "success", "try_number": 1, "map_index": -1}]
        airflow.logs[("etl_orders", "r1", "extract", 1)] = {"content": "hello"}
        nil = {"X-AirflowRPC-Extensions": "nil, i8"}
        for headers in (None, nil, None):
            self.answer("etl_orders", "r1", headers=headers)
            self.answer([{"methodName": "get_dag_run", "params": ["etl_orders", "r1"]}] * 2,
                        method="system.multicall", headers=headers)
            self.answer("etl_orders", "r1", 30, method="wait_dag_run", headers=headers)
            self.answer("etl_orders", {"a": None}, {"dag_run_id": "r1"}, method="trigger_dag")
            self.answer("etl_orders", "r1", "extract", method="get_task_log")
            self.answer("etl_orders", method="get_dag")
            self.answer("etl_orders", 1, method="get_backfill", headers=headers)
        self.answer("etl_orders", method="pause_dag")
        self.answer("etl_orders", 1, method="pause_backfill")
        self.answer("etl_orders", 1, method="cancel_backfill")
        self.answer("etl_orders", method="get_dag")
        self.answer("etl_orders", 1, method="get_backfill")
        kinds = {frozenset(v) for v, _ in made if isinstance(v, dict)}
        self.assertGreaterEqual(len(made), 8)
        self.assertTrue(any("task_id" in k for k in kinds) and any("finished" in k for k in kinds))
        for value, copied in made:
            self.assertEqual(value, copied)
