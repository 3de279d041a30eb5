"""Authorisation through the whole site: scopes on every method, conf guardrails."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from txairflowrpc.identity import confschema
from txairflowrpc.identity.scopes import ConfRule

from ..fakes import NOW as FAKE_NOW
from .helpers import gateway


def asked_for(gw: Any, since: int) -> list[Any]:
    """The dag_id_pattern of each DAG listing asked of the fake Airflow since request ``since``."""
    return [query.get("dag_id_pattern")
            for (_, path), query in zip(gw.airflow.requests[since:], gw.airflow.queries[since:])
            if path == "/api/v2/dags"]


class ScopeTests(SynchronousTestCase):
    """Scope checks on every method, through the whole site."""

    def principal(self, *scopes: str, conf: dict[str, Any] | None = None) -> Any:
        from txairflowrpc.identity.principal import Principal
        from txairflowrpc.identity.scopes import ConfRule, Grants, Role, Scope

        rules = tuple(ConfRule.build(g, s) for g, s in (conf or {}).items())
        role = Role("r", tuple(Scope.parse(s) for s in scopes), rules)
        return Principal("bot", "token", roles=("r",), grants=Grants((role,)))

    def call(self, gw: Any, method: str, *params: Any) -> Any:
        return self.successResultOf(gw.call_d(method, *params))[2]

    def test_every_method_needs_its_scope(self) -> None:
        gw = gateway()
        gw.clock.advance(FAKE_NOW)  # the fake's dates are past
        gw.airflow.runs[("etl_orders", "r1")] = {"dag_id": "etl_orders", "dag_run_id": "r1",
                                                 "state": "success"}
        gw.airflow.task_instances[("etl_orders", "r1")] = [
            {"task_id": "extract", "dag_id": "etl_orders", "dag_run_id": "r1",
             "state": "success", "try_number": 1}]
        calls = {
            "get_dag": ("dags:read", ("etl_orders",)),
            "pause_dag": ("dags:pause", ("etl_orders",)),
            "unpause_dag": ("dags:pause", ("etl_orders",)),
            "trigger_dag": ("runs:trigger", ("etl_orders",)),
            "get_dag_run": ("runs:read", ("etl_orders", "r1")),
            "list_dag_runs": ("runs:read", ("etl_orders",)),
            "wait_dag_run": ("runs:read", ("etl_orders", "r1", 0)),
            "list_task_instances": ("runs:read", ("etl_orders", "r1")),
            "set_dag_run_state": ("runs:write", ("etl_orders", "r1", "failed")),
            "clear_task_instances": ("tasks:clear", ("etl_orders", "r1", {"dry_run": True})),
            "get_task_log": ("logs:read", ("etl_orders", "r1", "extract", 1)),
            "create_backfill": ("runs:backfill", ("etl_orders", "2026-01-01T00:00:00Z",
                                                  "2026-01-02T00:00:00Z")),
            "cancel_backfill": ("runs:backfill", ("etl_orders", 7)),
            "get_backfill": ("runs:read", ("etl_orders", 7)),
            "list_backfills": ("runs:read", ("etl_orders",)),
        }
        for method, (scope, params) in calls.items():
            others = [s for s, _ in calls.values() if s != scope]
            gw.principal = self.principal(*others, f"{scope}:sandbox_*")
            before = len(gw.airflow.api_requests())
            fault = self.call(gw, method, *params)
            self.assertEqual(fault.faultCode, 403, method)
            self.assertEqual(fault.faultString,
                             f"forbidden: {method}: requires scope {scope}:etl_orders")
            self.assertEqual(len(gw.airflow.api_requests()), before, method)
            gw.principal = self.principal(f"{scope}:etl_*")
            result = self.call(gw, method, *params)
            # Allowed now: an answer, or at worst Airflow's own 404 (no such log).
            self.assertIn(getattr(result, "faultCode", None), (None, 404), method)
        gw.principal = self.principal()
        self.assertEqual(self.call(gw, "ping"), "pong")
        self.assertIn("ping", self.call(gw, "system.listMethods"))

    def test_list_dags_shows_only_readable_dags(self) -> None:
        gw = gateway()
        gw.principal = self.principal("dags:read:etl_*")
        result = self.call(gw, "list_dags")
        self.assertEqual(([d["dag_id"] for d in result["dags"]], result["total"]),
                         (["etl_orders"], 1))
        gw.principal = self.principal("runs:read")
        self.assertEqual(self.call(gw, "list_dags").faultCode, 403)

    def test_list_dags_asks_airflow_only_for_the_globs_common_text(self) -> None:
        """
        Found by review: a caller reading ``etl_*`` made the gateway read
        every page of DAGs (up to 100) per list_dags.  Airflow is asked for
        ids containing the globs' common text, and the globs filter those.
        """
        gw = gateway()
        for n in range(250):
            gw.airflow.add_dag(f"other_{n:03}", tags=[], tasks=["t"])
        gw.airflow.add_dag("etl_sales", tags=[], tasks=["t"])
        gw.airflow.add_dag("x_etl_y", tags=[], tasks=["t"])  # contains the text, no glob match
        gw.principal = self.principal("dags:read:etl_orders", "dags:read:etl_s*")
        before = len(gw.airflow.api_requests())
        result = self.call(gw, "list_dags")
        self.assertEqual(([d["dag_id"] for d in result["dags"]], result["total"]),
                         (["etl_orders", "etl_sales"], 2))
        self.assertEqual(gw.airflow.api_requests()[before:], [("GET", "/api/v2/dags")])
        result = self.call(gw, "list_dags", {"pattern": "sales"})  # the caller's own pattern
        self.assertEqual([d["dag_id"] for d in result["dags"]], ["etl_sales"])
        gw.principal = self.principal("dags:read:etl_*", "dags:read:*_y")  # nothing in common
        result = self.call(gw, "list_dags")
        self.assertEqual(result["total"], 3)
        self.assertEqual(len(gw.airflow.api_requests()), before + 2 + 3)  # 253 DAGs: 3 pages

    def test_a_callers_pattern_cannot_make_a_glob_scoped_listing_scan_airflow(self) -> None:
        """
        Found by review: a caller reading ``team_a_*`` that passed a pattern
        of its own ("%", "%%", ...) had Airflow asked with it instead of the
        globs' text: every page of every DAG (up to 100 requests) per call.
        The pattern is applied here, as Airflow would apply it.
        """
        gw = gateway()
        for n in range(450):
            gw.airflow.add_dag(f"other_{n:03}", tags=[], tasks=["t"])
        for name in ("team_a_daily", "team_a_hourly", "TEAM_A_Backfill"):
            gw.airflow.add_dag(name, tags=[], tasks=["t"])
        gw.principal = self.principal("dags:read:team_a_*")
        for pattern, found in [("%", ["team_a_daily", "team_a_hourly"]),
                               ("%%", ["team_a_daily", "team_a_hourly"]),
                               ("a_%ly", ["team_a_daily", "team_a_hourly"]),
                               ("H_URLY", ["team_a_hourly"]),
                               ("d%y", ["team_a_daily"])]:
            before = len(gw.airflow.api_requests())
            result = self.call(gw, "list_dags", {"pattern": pattern})
            self.assertEqual([d["dag_id"] for d in result["dags"]], found, pattern)
            self.assertEqual(gw.airflow.api_requests()[before:], [("GET", "/api/v2/dags")])

    def test_a_glob_scoped_caller_finds_a_dag_by_its_name_in_a_large_airflow(self) -> None:
        """
        From the second reading: with globs that share no text, a pattern
        applied only here scanned from the first page and stopped at the
        scan's cap (10,000 DAGs) without reaching ``ml_target``.  A pattern
        that can only narrow what Airflow is asked for is sent to it.
        """
        gw = gateway()
        for n in range(10_050):
            gw.airflow.add_dag(f"ml_other_{n:05}", tags=[], tasks=["t"])
        gw.airflow.add_dag("ml_target", tags=[], tasks=["t"])
        gw.principal = self.principal("dags:read:etl_*", "dags:read:ml_*")  # nothing in common
        before = len(gw.airflow.queries)
        result = self.call(gw, "list_dags", {"pattern": "ml_target"})
        self.assertEqual(([d["dag_id"] for d in result["dags"]], result["total"]),
                         (["ml_target"], 1))
        # The first page said the scan would be cut off: asked again, narrower.
        self.assertEqual(asked_for(gw, before), [None, ["ml_target"]])
        gw.principal = self.principal("dags:read:ml_*")  # its text: 10,051 DAGs hold it
        before = len(gw.airflow.queries)
        result = self.call(gw, "list_dags", {"pattern": "ML_TAR"})  # any case, as ILIKE
        self.assertEqual([d["dag_id"] for d in result["dags"]], ["ml_target"])
        self.assertEqual(asked_for(gw, before), [["ml_"], ["ML_TAR"]])

    def test_a_glob_scoped_callers_patterns_all_ask_airflow_the_same(self) -> None:
        """
        From the second reading: patterns sent to Airflow ("%", "%%", "e")
        each scanned pages no other call shared; the globs' common text is
        what Airflow is asked, the same for every pattern, where that scan
        reads every page.
        """
        gw = gateway()
        for n in range(150):
            gw.airflow.add_dag(f"team_a_{n:03}", tags=[], tasks=["t"])
        gw.principal = self.principal("dags:read:team_a_*")
        for pattern, total in [("%", 150), ("%%", 150), ("e", 150), ("%team_a_%", 150),
                               ("_00", 11), ("A_14", 10)]:
            before = len(gw.airflow.queries)
            result = self.call(gw, "list_dags", {"pattern": pattern, "limit": 1})
            self.assertEqual(result["total"], total, pattern)
            self.assertEqual(asked_for(gw, before), [["team_a_"], ["team_a_"]], pattern)

    def test_conf_guardrails_name_the_key_and_the_rule(self) -> None:
        gw = gateway()
        schema = {"type": "object", "additionalProperties": False,
                  "properties": {"day": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"},
                                 "mode": {"enum": ["full", "delta"]}}}
        gw.principal = self.principal("runs:trigger:etl_*", conf={"etl_*": schema})
        for conf, message in [
            ({"day": "tomorrow"}, "conf.day: violates rule pattern"),
            ({"mode": "all"}, "conf.mode: violates rule enum"),
            ({"sql": "DROP TABLE x"}, "conf: key 'sql' is not allowed (rule additionalProperties)"),
        ]:
            fault = self.call(gw, "trigger_dag", "etl_orders", conf)
            self.assertEqual(fault.faultCode, 403)
            self.assertIn(message, fault.faultString)
        self.assertTrue(self.call(gw, "trigger_dag", "etl_orders", {"day": "2026-01-01"})["created"])

    def test_a_pattern_is_named_as_it_is_written(self) -> None:
        """Found by a newcomer: the fault doubled the pattern's backslashes (Python's repr)."""
        gw = gateway()
        schema = {"properties": {"day": {"type": "string", "pattern": r"\A\d{4}\Z"},
                                 "mode": {"enum": ["it's", "x"]}}}
        gw.principal = self.principal("runs:trigger:etl_*", conf={"etl_*": schema})
        fault = self.call(gw, "trigger_dag", "etl_orders", {"day": "26"})
        self.assertIn(r"conf.day: violates rule pattern = '\A\d{4}\Z'", fault.faultString)
        fault = self.call(gw, "trigger_dag", "etl_orders", {"mode": "y"})
        self.assertIn("conf.mode: violates rule enum = [\"it's\", 'x']", fault.faultString)

    def test_a_patterns_classes_are_ascii(self) -> None:
        """
        Found by review: jsonschema searches a pattern without flags, so
        ``\\d`` took Arabic-Indic and fullwidth digits, ``\\w`` any letter and
        ``(?i)`` folded the Kelvin sign into k, where JSON Schema's are ASCII.
        """
        gw = gateway()
        schema = {"type": "object", "additionalProperties": False,
                  "properties": {"day": {"type": "string", "pattern": r"\A\d{4}-\d{2}-\d{2}\Z"},
                                 "name": {"type": "string", "pattern": r"\A\w+\Z"},
                                 "mode": {"type": "string", "pattern": r"(?i)\A[a-z]+\Z"}},
                  "patternProperties": {r"\Ap_\d+\Z": {"type": "integer"}}}
        gw.principal = self.principal("runs:trigger:etl_*", conf={"etl_*": schema})
        for conf, message in [
            ({"day": "\u0662\u0660\u0662\u0666-\u0661\u0661-\u0662\u0666"},
             "conf.day: violates rule pattern"),
            ({"day": "\uff12\uff10\uff12\uff16-\uff11\uff11-\uff12\uff16"},
             "conf.day: violates rule pattern"),
            ({"name": "\u01c5\uff58"}, "conf.name: violates rule pattern"),
            ({"mode": "\u212a"}, "conf.mode: violates rule pattern"),
            # Not matched by the patternProperties name: additional, so refused.
            ({"p_1": 1, "p_\u0661": 1},
             "conf: key 'p_\u0661' is not allowed (rule additionalProperties)"),
        ]:
            fault = self.call(gw, "trigger_dag", "etl_orders", conf)
            self.assertEqual(getattr(fault, "faultCode", None), 403, conf)
            self.assertIn(message, fault.faultString, conf)
        ok = {"day": "2026-11-26", "name": "nightly_1", "mode": "Full", "p_7": 7}
        self.assertTrue(self.call(gw, "trigger_dag", "etl_orders", ok)["created"])

    def test_every_keyword_matching_keys_by_pattern_matches_as_pattern_does(self) -> None:
        """
        ``patternProperties``, ``additionalProperties`` and
        ``unevaluatedProperties`` (through ``allOf`` and ``$ref``) all take a
        key a pattern matches with ASCII classes, so no key is left to none.
        """
        digit = "p_\u0661"  # ARABIC-INDIC DIGIT ONE
        for schema in [
            {"allOf": [{"patternProperties": {r"\Ap_\d\Z": True}}],
             "unevaluatedProperties": False},
            {"$defs": {"d": {"patternProperties": {r"\Ap_\d\Z": True}}}, "$ref": "#/$defs/d",
             "unevaluatedProperties": False},
        ]:
            rule = ConfRule.build("etl_*", {"type": "object", **schema})
            self.assertIsNone(rule.violation({"p_1": 1}), schema)
            self.assertEqual(rule.violation({"p_1": 1, digit: 1}),
                             "conf: violates rule unevaluatedProperties = False", schema)
        # The key named is the one no rule allows, not the first key.
        rule = ConfRule.build("etl_*", {"type": "object", "additionalProperties": False,
                                        "patternProperties": {r"\Ap_\d\Z": True}})
        self.assertEqual(rule.violation({"p_1": 1, "z": 1}),
                         "conf: key 'z' is not allowed (rule additionalProperties)")
        self.assertEqual(rule.violation({"p_1": 1, digit: 1}),
                         f"conf: key {digit!r} is not allowed (rule additionalProperties)")
        names = ConfRule.build("etl_*", {"type": "object",
                                         "propertyNames": {"pattern": r"\A\w+\Z"}})
        self.assertIsNone(names.violation({"a_1": 1}))
        self.assertIn("violates rule pattern", names.violation({"\u01c5": 1}) or "")

    def test_a_pattern_that_cannot_have_ascii_classes_is_refused_when_read(self) -> None:
        for schema, words in [
            ({"properties": {"day": {"type": "string", "pattern": r"(?u)\A\d+\Z"}}},
             (r"pattern '(?u)\\A\\d+\\Z' at properties.day is not a Python regular expression "
              "with ASCII classes")),
            ({"patternProperties": {r"(?u)\Ap_\d\Z": True}},
             r"patternProperties '(?u)\\Ap_\\d\\Z' is not a Python regular expression"),
        ]:
            with self.assertRaises(ValueError) as e:
                ConfRule.build("etl_*", schema)
            self.assertIn(words, str(e.exception))

    def test_a_conf_over_the_caps_is_refused_before_any_rule_reads_it(self) -> None:
        """Found by review: a rule ran on any conf the wire let through, caps came after."""
        read: list[Any] = []
        self.patch(ConfRule, "violation", lambda rule, conf: read.append(conf))
        gw = gateway()
        gw.principal = self.principal("runs:trigger:etl_*", conf={"etl_*": {"type": "object"}})
        for conf, words in [({"s": "x" * 70_000}, "conf is larger than"),
                            ({"a": [[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]}, "nested deeper than")]:
            fault = self.call(gw, "trigger_dag", "etl_orders", conf)
            self.assertEqual(fault.faultCode, -32602)
            self.assertIn(words, fault.faultString)
        self.assertEqual(read, [])
        self.assertTrue(self.call(gw, "trigger_dag", "etl_orders", {"l": [1]})["created"])
        self.assertEqual(read, [{"l": [1]}])

    def test_format_is_asserted(self) -> None:
        """Found by review: ``format`` only annotated, so a "date" let any string through."""
        rule = ConfRule.build("etl_*", {"type": "object", "properties": {
            "day": {"type": "string", "format": "date"},
            "to": {"anyOf": [{"format": "ipv4"}, {"const": ""}]}}})
        self.assertIsNone(rule.violation({"day": "2026-11-26", "to": "192.0.2.1"}))
        self.assertEqual(rule.violation({"day": "'; DROP TABLE runs; --"}),
                         "conf.day: violates rule format = 'date'")
        self.assertIn("violates rule anyOf", rule.violation({"to": "not an address $(id)"}) or "")

    def test_a_rule_that_would_check_nothing_is_refused_when_read(self) -> None:
        """Found by review: a misspelt keyword or an unchecked format made a rule inert."""
        for schema, words in [
            ({"properties": {"day": {"type": "string", "patern": "^x$"}}},
             "unknown JSON Schema keyword 'patern' at properties.day"),
            ({"type": "object", "additionalProperites": False},
             "unknown JSON Schema keyword 'additionalProperites'"),
            ({"allOf": [{"properties": {"a": {"$defs": {"b": {"minimum": 1, "mxLength": 2}}}}}]},
             "unknown JSON Schema keyword 'mxLength' at allOf[0].properties.a.$defs.b"),
            ({"properties": {"when": {"format": "date-time"}}},
             "format 'date-time' at properties.when cannot be checked here"),
            ({"if": {"const": 1}, "then": {"format": "no-such-format"}},
             "format 'no-such-format' at then cannot be checked here"),
        ]:
            with self.assertRaises(ValueError) as e:
                ConfRule.build("etl_*", schema)
            self.assertIn(words, str(e.exception))
        # Annotations and every applicator are fine, and so are boolean schemas.
        rule = ConfRule.build("etl_*", {
            "$schema": "https://json-schema.org/draft/2020-12/schema", "title": "etl conf",
            "description": "d", "$comment": "c", "examples": [{}], "type": "object",
            "properties": {"day": {"type": "string", "format": "date"}},
            "patternProperties": {"^x_": True}, "additionalProperties": False,
            "if": {"required": ["day"]}, "then": {"minProperties": 1}, "else": {"maxProperties": 0},
        })
        self.assertIsNone(rule.violation({"day": "2026-11-26", "x_y": 1}))
        self.assertIn("additionalProperties", rule.violation({"day": "2026-11-26", "o": 1}) or "")

    def test_a_rule_read_by_other_rules_or_elsewhere_is_refused(self) -> None:
        """
        Found by review: a subschema naming an older draft's ``$schema`` was
        checked by that draft (``const`` ignored); a remote ``$ref`` was
        fetched, blocking, at every check; a ``$ref`` to ``#/examples/0``
        reached a place nothing had checked; ``contentSchema`` checks nothing.
        """
        draft4 = "http://json-schema.org/draft-04/schema#"
        for schema, words in [
            ({"properties": {"day": {"$schema": draft4, "const": "x"}}},
             "'$schema' at properties.day is allowed only at the root of a rule"),
            ({"$schema": draft4, "properties": {"day": {"const": "x"}}},
             "$schema 'http://json-schema.org/draft-04/schema#' is not 2020-12's"),
            ({"properties": {"a": {"$id": "https://rules.example/a", "type": "string"}}},
             "'$id' at properties.a is allowed only at the root of a rule"),
            ({"properties": {"d": {"$ref": "http://127.0.0.1:9/day.json"}}},
             "$ref 'http://127.0.0.1:9/day.json' at properties.d is not to a subschema"),
            ({"examples": [{"patern": "x"}], "properties": {"d": {"$ref": "#/examples/0"}}},
             "$ref '#/examples/0' at properties.d is not to a subschema"),
            ({"properties": {"d": {"$ref": "#/$defs/missing"}}},
             "$ref '#/$defs/missing' at properties.d is not to a subschema"),
            # Found by review: "%2F" is "/" to the library, was part of a name here.
            ({"$defs": {"prod/const": {"const": "staging"}, "prod": {"const": True}},
              "properties": {"env": {"$ref": "#/$defs/prod%2Fconst"}}},
             "$ref '#/$defs/prod%2Fconst' at properties.env is not to a subschema"),
            ({"properties": {"a": {"type": "string"}, "b": {"$ref": "#/properties"}}},
             "$ref '#/properties' at properties.b is not to a subschema"),
            ({"properties": {"p": {"type": "string", "contentSchema": {"required": ["x"]}}}},
             "'contentSchema' at properties.p is refused: an annotation only"),
            ({"properties": {"p": {"contentMediaType": "application/json"}}},
             "'contentMediaType' at properties.p is refused"),
            ({"properties": {"p": {"readOnly": True}}}, "'readOnly' at properties.p is refused"),
            ({"definitions": {"day": {"type": "string"}}}, "use '$defs'"),
            ({"dependencies": {"a": ["b"]}}, "use 'dependentRequired' or 'dependentSchemas'"),
            ({"additionalItems": False}, "use 'items' after 'prefixItems'"),
            ({"$recursiveRef": "#"}, "use '$ref': '#'"),
            ({"$defs": {"a": {"$anchor": "day"}}, "properties": {"d": {"$ref": "#day"}}},
             "'$anchor' at $defs.a is refused"),
            ({"$dynamicRef": "#meta"}, "'$dynamicRef' is refused"),
            # Found by review: each checked nothing.
            ({"properties": {"n": {"then": {"maximum": 3}}}},
             "'then' at properties.n checks nothing without 'if' beside it"),
            ({"else": {"maximum": 3}}, "'else' checks nothing without 'if'"),
            ({"if": {"maximum": 3}}, "'if' checks nothing without 'then' or 'else'"),
            ({"maxContains": 1}, "'maxContains' checks nothing without 'contains'"),
            ({"contains": {"const": "staging"}, "minContains": 0},
             "'minContains' = 0 without 'maxContains' lets every array through"),
            ({"properties": {"force": {"deprecated": True}}},
             "'deprecated' at properties.force is refused: an annotation only"),
            ({"properties": {"to": {"type": "string", "format": "email"}}},
             "format 'email' at properties.to cannot be checked here"),
            ({"format": "idn-email"}, "format 'idn-email' cannot be checked here"),
            # A reference that comes back to the same value: every conf refused
            # as "cannot be checked" (RecursionError) rather than a config error.
            ({"$ref": "#"}, "$ref '#' at the root leads back to itself"),
            ({"$defs": {"a": {"anyOf": [{"$ref": "#/$defs/b"}]}, "b": {"not": {"$ref": "#/$defs/a"}}},
              "properties": {"x": {"$ref": "#/$defs/a"}}},
             "$ref '#/$defs/b' at $defs.a.anyOf[0] leads back to itself"),
            # Found by review: each $defs entry referring to the next twice made
            # every check cost 2^n applications (1.6 s for 16).
            ({"$defs": {**{f"a{i}": {"allOf": [{"$ref": f"#/$defs/a{i + 1}"}] * 2}
                           for i in range(10)}, "a10": {"type": "integer"}},
              "properties": {"x": {"$ref": "#/$defs/a0"}}},
             "the schema at $defs.a0 applies more than 256 schemas to one value"),
        ]:
            with self.assertRaises(ValueError, msg=schema) as e:
                ConfRule.build("etl_*", schema)
            self.assertIn(words, str(e.exception))
        # A reference into the rule itself works, through a root $id and escapes too.
        rule = ConfRule.build("etl_*", {
            "$schema": "https://json-schema.org/draft/2020-12/schema#",
            "$id": "https://rules.example/etl", "type": "object",
            "$defs": {"a/b": {"type": "string"}, "c d": {"type": "integer"}},
            "properties": {"b": {"$ref": "#/$defs/a~1b"}, "c": {"$ref": "#/$defs/c d"},
                           "first": {"$ref": "#/allOf/0"}, "child": {"$ref": "#"}},
            "allOf": [{"type": "object", "maxProperties": 3}],
        })
        self.assertIsNone(rule.violation({"b": "x", "c": 1, "child": {"b": "y"}}))
        self.assertEqual(rule.violation({"b": 1}), "conf.b: violates rule type = 'string'")
        self.assertEqual(rule.violation({"c": "x"}), "conf.c: violates rule type = 'integer'")
        self.assertEqual(rule.violation({"first": 1}), "conf.first: violates rule type = 'object'")
        self.assertEqual(rule.violation({"child": {"b": 2}}),
                         "conf.child.b: violates rule type = 'string'")
        # Shared subschemas under the bound are fine: 2^7 = 128 applications.
        shared = ConfRule.build("etl_*", {
            "$defs": {**{f"a{i}": {"allOf": [{"$ref": f"#/$defs/a{i + 1}"}] * 2}
                         for i in range(6)}, "a6": {"type": "integer"}},
            "properties": {"x": {"$ref": "#/$defs/a0"}}})
        self.assertEqual(shared.violation({"x": "s"}), "conf.x: violates rule type = 'integer'")

    def test_contains_with_its_bounds_is_a_rule(self) -> None:
        """Found by review: minContains/maxContains were refused as unknown keywords."""
        rule = ConfRule.build("etl_*", {"properties": {"tags": {
            "type": "array", "contains": {"const": "prod"}, "minContains": 1, "maxContains": 1}}})
        self.assertIsNone(rule.violation({"tags": ["prod", "eu"]}))
        self.assertEqual(rule.violation({"tags": ["prod", "prod"]}),
                         "conf.tags: violates rule maxContains = 1")

    def test_unique_items_is_checked_in_one_pass(self) -> None:
        """
        Found by review: jsonschema compares every pair of items that cannot
        be sorted (one number among strings): seconds on the reactor for
        10,000 items.  Now one pass, with JSON's equality.
        """
        import jsonschema._keywords

        def every_pair(container: Any) -> bool:
            raise AssertionError("the pairwise uniqueItems check ran")

        self.patch(jsonschema._keywords, "uniq", every_pair)
        rule = ConfRule.build("etl_*", {"properties": {"l": {"uniqueItems": True}}})
        self.assertIsNone(rule.violation({"l": [f"s{i}" for i in range(10_000)] + [1]}))
        # Found by review: below a $ref to a root naming its $schema, jsonschema
        # took the stock class again, and its pairwise check with it.
        tree = ConfRule.build("etl_*", {
            "$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
            "properties": {"child": {"$ref": "#"}, "l": {"uniqueItems": True}}})
        self.assertIsNone(tree.violation({"child": {"child": {"l": ["a", 1, "b"]}}}))
        self.assertEqual(tree.violation({"child": {"l": ["a", 1, "a"]}}),
                         "conf.child.l: violates rule uniqueItems = True")
        self.assertIsNone(rule.violation({"l": [1, True, "1", [1], {"a": 1}, {"a": True}, None]}))
        for duplicated in ([1, 1.0], [[1, "a"], [1.0, "a"]], [{"a": 1, "b": [2]}, {"b": [2.0], "a": 1}],
                           ["x", 2, "x"], [None, None], [False, 0, False]):
            self.assertEqual(rule.violation({"l": duplicated}),
                             "conf.l: violates rule uniqueItems = True", duplicated)

    def test_unevaluated_items_are_found(self) -> None:
        """Found by review: jsonschema looked each index up in a list (4 s for 32,000 items)."""
        rule = ConfRule.build("etl_*", {"properties": {"l": {
            "allOf": [{"prefixItems": [{"type": "string"}]}], "unevaluatedItems": False}}})
        self.assertIsNone(rule.violation({"l": ["only"]}))
        self.assertEqual(rule.violation({"l": ["only", 2]}),
                         "conf.l: violates rule unevaluatedItems = False")
        evaluated = ConfRule.build("etl_*", {"properties": {"l": {
            "items": {"type": "integer"}, "unevaluatedItems": False}}})
        self.assertIsNone(evaluated.violation({"l": list(range(30_000))}))

    def test_a_rule_fetches_nothing(self) -> None:
        """The validator resolves references only inside the rule, even one the walk missed."""
        import urllib.request

        import referencing.exceptions

        fetched: list[object] = []

        def urlopen(request: object, *args: object, **kwargs: object) -> Any:
            fetched.append(request)
            raise OSError("no network in this test")

        self.patch(urllib.request, "urlopen", urlopen)
        validator = confschema.build({"type": "object"})
        with self.assertRaises(referencing.exceptions.Unresolvable):
            validator.evolve(schema={"$ref": "http://127.0.0.1:9/day.json"}).validate({})
        self.assertEqual(fetched, [])

    def test_the_readmes_worked_example_refuses_a_trailing_newline(self) -> None:
        """Found by review: the README's ``^...$`` let ``"2026-11-26\\n"`` through."""
        readme = (Path(__file__).parents[2] / "README.md").read_text()
        toml = readme.split("**Worked example**", 1)[1].split("```toml", 1)[1].split("```", 1)[0]
        schema = tomllib.loads(toml)["roles"]["ci"]["conf"]["etl_*"]
        rule = ConfRule.build("etl_*", schema)
        self.assertIsNone(rule.violation({"day": "2026-11-26"}))
        for day in ("2026-11-26\n", "x2026-11-26", "2026-11-26; rm -rf /"):
            self.assertIn("violates rule pattern", rule.violation({"day": day}) or "", day)

    def test_a_conf_the_rules_cannot_check_is_refused(self) -> None:
        """Found by review: jsonschema's multipleOf overflowed on a huge int: a -32603."""
        rule = ConfRule.build("etl_*", {"properties": {"ratio": {"multipleOf": 0.01}}})
        self.assertIsNone(rule.violation({"ratio": 0.5}))
        self.assertIn("violates rule multipleOf", rule.violation({"ratio": 0.015}) or "")
        self.assertEqual(rule.violation({"ratio": 10**400}),
                         "conf: cannot be checked against the rules (OverflowError)")

    def test_multicall_checks_every_inner_call(self) -> None:
        gw = gateway()
        gw.principal = self.principal("dags:read:etl_*")
        results = self.call(gw, "system.multicall", [
            {"methodName": "get_dag", "params": ["etl_orders"]},
            {"methodName": "get_dag", "params": ["example_hello"]},
            {"methodName": "trigger_dag", "params": ["etl_orders"]},
        ])
        self.assertEqual(results[0][0]["dag_id"], "etl_orders")
        self.assertEqual([r["faultCode"] for r in results[1:]], [403, 403])
        self.assertFalse(any(p.startswith("/api/v2/dags/example_hello") for _, p in
                             gw.airflow.api_requests()))


class TriggerOnlyTests(SynchronousTestCase):
    """A principal that may trigger but not read runs learns nothing of others' runs."""

    def setUp(self) -> None:
        from txairflowrpc.identity.principal import Principal
        from txairflowrpc.identity.scopes import Grants, Role, Scope

        self.gw = gateway()
        self.trigger_only = Principal("bot", "token", roles=("t",), grants=Grants((
            Role("t", (Scope.parse("runs:trigger:etl_*"),)),)))
        self.gw.call_d("trigger_dag", "etl_orders", {"secret": "s3"}, {"dag_run_id": "theirs"})

    def call(self, *params: Any) -> Any:
        self.gw.principal = self.trigger_only
        return self.successResultOf(self.gw.call_d("trigger_dag", *params))[2]

    def test_someone_elses_run_id_is_a_409_that_says_nothing(self) -> None:
        import xmlrpc.client

        for guess in ({"secret": "s3"}, {"secret": "wrong"}):
            fault = self.call("etl_orders", guess, {"dag_run_id": "theirs"})
            self.assertIsInstance(fault, xmlrpc.client.Fault)
            self.assertEqual(fault.faultCode, 409)
            self.assertEqual(fault.faultString,
                             "conflict: run 'theirs' of DAG 'etl_orders' already exists")

    def test_its_own_retry_gets_the_run_id_only(self) -> None:
        first = self.call("etl_orders", {"day": 1}, {"dag_run_id": "mine"})
        self.assertTrue(first["created"])
        again = self.call("etl_orders", {"day": 1}, {"dag_run_id": "mine"})
        self.assertEqual(again, {"dag_id": "etl_orders", "dag_run_id": "mine", "created": False})
