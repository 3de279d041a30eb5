"""
The client's command line: arguments as JSON or bare words, the settings
from flags and the environment, and the run id a CI job derives.
"""

from __future__ import annotations

import io
import xmlrpc.client
from datetime import datetime, timezone
from pathlib import Path

import pytest

from txairflowrpc.client import runid, settings, values
from txairflowrpc.client.errors import UsageError
from txairflowrpc.service.cli import parser

# -- arguments ---------------------------------------------------------------


@pytest.mark.parametrize("word, value", [
    ("etl_orders", "etl_orders"),
    ("2026-01-01", "2026-01-01"),
    ("2026-01-01T00:00:00Z", "2026-01-01T00:00:00Z"),
    ("nightly-1", "nightly-1"),
    ("120", 120),
    ("-3", -3),
    ("1.5", 1.5),
    ("true", True),
    ("null", None),
    ('"12345"', "12345"),
    ('{"day": "2026-01-01", "n": null}', {"day": "2026-01-01", "n": None}),
    ("[1, 2]", [1, 2]),
    ("9007199254740993", 9007199254740993),
    ("NaN", "NaN"),  # not JSON data: a word
    ("", ""),
])
def test_an_argument_is_json_when_it_is_json_else_a_word(word: str, value: object) -> None:
    assert values.parse_argument(word, 1) == value
    assert type(values.parse_argument(word, 1)) is type(value)


@pytest.mark.parametrize("word, says", [
    ('{"day": "2026-01-01"', "argument 2 is not valid JSON"),
    ("[1, 2", "argument 2 is not valid JSON"),
    ('"unterminated', "argument 2 is not valid JSON"),
    ('{"x": NaN}', "argument 2 is not valid JSON"),
    ("1e999", "not a number XML-RPC can carry"),
    (str(2**64), "does not fit in 64 bits"),
    ('{"n": %d}' % -(2**63 + 1), "does not fit in 64 bits"),
])
def test_what_looks_like_json_but_is_not_sendable_is_refused(word: str, says: str) -> None:
    with pytest.raises(UsageError) as caught:
        values.parse_argument(word, 2)
    assert says in caught.value.message
    assert caught.value.exit_status == 2


def test_at_file_and_at_stdin(tmp_path: Path) -> None:
    (tmp_path / "conf.json").write_text('{"day": "2026-01-01"}\n')
    assert values.parse_argument(f"@{tmp_path}/conf.json", 1) == {"day": "2026-01-01"}
    assert values.parse_argument("@-", 1, stdin=io.StringIO("[1]")) == [1]
    with pytest.raises(UsageError, match="cannot read"):
        values.parse_argument(f"@{tmp_path}/missing.json", 1)


def test_results_become_plain_json() -> None:
    from xmlrpc.client import Binary, DateTime
    got = values.to_json({"when": DateTime("20260101T12:00:00"), "blob": Binary(b"hi"),
                          "big": 2**40, "none": None})
    assert got == ('{"when": "20260101T12:00:00", "blob": "aGk=", "big": 1099511627776, '
                   '"none": null}')


def test_results_never_carry_what_a_terminal_acts_on() -> None:
    """
    Found by review: DAG or run data holding a C1 CSI, a bidi override or a
    line separator reached stdout raw.  They are JSON escapes now: the same
    text to jq, inert on a terminal.
    """
    import json
    hostile = {"note": "a\x9b2Jb\u202eexe.txt\u2028c\x7f\u2066d", "owner": "zoë"}
    got = values.to_json(hostile)
    assert json.loads(got) == hostile
    assert got == ('{"note": "a\\u009b2Jb\\u202eexe.txt\\u2028c\\u007f\\u2066d", '
                   '"owner": "zoë"}')


def test_results_hide_nothing_behind_invisible_characters() -> None:
    """Found by review: ZERO WIDTH SPACE and its kin reached stdout raw."""
    import json
    hostile = {"run": "a\u200bb\u2060c\u2062d\ufeffe"}
    got = values.to_json(hostile)
    assert json.loads(got) == hostile
    assert got == '{"run": "a\\u200bb\\u2060c\\u2062d\\ufeffe"}'


def test_a_runner_command_in_a_result_keeps_its_value_but_not_its_bracket() -> None:
    import json
    hostile = {"note": "##vso[task.complete result=Failed]x", "b": "\\##VSO[a]", "c": "##[x]",
               "d": "#[fine]", "e": "## [fine]"}
    got = values.to_json(hostile)
    assert json.loads(got) == hostile
    assert got == ('{"note": "##vso\\u005btask.complete result=Failed]x", '
                   '"b": "\\\\##VSO\\u005ba]", "c": "##\\u005bx]", "d": "#[fine]", '
                   '"e": "## [fine]"}')
    assert values.defused("a ##vso[x] ##Vso[y] ##[z] #[w]") == "a **vso[x] **Vso[y] **[z] #[w]"


def test_at_file_and_at_stdin_are_utf8_whatever_the_locale(tmp_path: Path) -> None:
    """
    Found by review: @FILE was read in the locale's encoding (cp1252 on a
    Windows runner: Zürich became ZÃ¼rich).  JSON is UTF-8 (RFC 8259); a
    byte order mark, which Windows tools write, is skipped, as the RFC lets
    a reader do.
    """
    (tmp_path / "bom.json").write_bytes(b'\xef\xbb\xbf{"city": "Z\xc3\xbcrich"}')
    assert values.parse_argument(f"@{tmp_path}/bom.json", 1) == {"city": "Zürich"}
    cp1252_stdin = io.TextIOWrapper(io.BytesIO('{"city": "Zürich"}'.encode()),
                                    encoding="cp1252")
    assert values.parse_argument("@-", 1, stdin=cp1252_stdin) == {"city": "Zürich"}
    (tmp_path / "latin1.json").write_bytes(b'{"city": "Z\xfcrich"}')
    with pytest.raises(UsageError, match="latin1.json is not UTF-8"):
        values.parse_argument(f"@{tmp_path}/latin1.json", 1, what="--conf")


def test_json_on_stdout_never_fails_on_its_encoding() -> None:
    """
    Found by review: with PYTHONIOENCODING=cp1252 (or a Windows pipe) a
    run that succeeded exited 70 with nothing on stdout, over an emoji.
    """
    from txairflowrpc.client.console import Console
    raw = io.BytesIO()
    stdout = io.TextIOWrapper(raw, encoding="cp1252", write_through=False)
    stdout.write("before\n")
    Console(stdout, io.StringIO()).result({"who": "deploy \U0001F680", "city": "Zürich"})
    assert raw.getvalue() == ('before\n{"who": "deploy \U0001F680", "city": "Zürich"}\n'
                              ).encode()

    class TextOnly(io.StringIO):
        encoding = "ascii"

    text_only = TextOnly()
    Console(text_only, io.StringIO()).result({"who": "deploy \U0001F680"})
    assert text_only.getvalue() == '{"who": "deploy \\ud83d\\ude80"}\n'


def test_a_carriage_return_reaches_the_gateway_as_it_was() -> None:
    """
    Found by review: a raw CR in the request became LF in the gateway's XML
    parser, so a conf with CR LF reached Airflow changed, and a backfill
    whose answer was lost was not found again by its conf.
    """
    from txairflowrpc.client.transport import request_body
    from txairflowrpc.gate.wire import parse_call
    conf = {"sql": "select 1;\r\nselect 2;", "cr": "a\rb", "key\r": ["\r"]}
    method, params = parse_call(request_body("create_backfill", ("d", "x\r", "y", conf, {})))
    assert (method, params[1], params[3]) == ("create_backfill", "x\r", conf)
    assert xmlrpc.client.loads(request_body("echo", (conf,)))[0] == (conf,)


def test_what_xml_cannot_carry_is_never_sent() -> None:
    from txairflowrpc.client.transport import request_body
    for bad in ("ctl\x01", "\ud800", "\uffff"):
        with pytest.raises(UsageError, match="which XML-RPC cannot carry"):
            request_body("trigger_dag", ("d", {"c": bad}, {}))


# -- settings ----------------------------------------------------------------

URL = "https://gw.example:8443/RPC2"


def test_flags_win_over_the_environment(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("arpc_from_file_123456\n")
    env = {"AIRFLOWRPC_URL": "https://other:1/RPC2", "AIRFLOWRPC_TOKEN": "arpc_from_env_1234",
           "AIRFLOWRPC_CA": "/env/ca.pem", "AIRFLOWRPC_CERT": "/env/c.pem",
           "AIRFLOWRPC_KEY": "/env/c.key"}
    s = settings.read(env, url=URL, ca="/flag/ca.pem", token_file=str(tmp_path / "token"))
    assert (s.host, s.port, s.path, s.url) == ("gw.example", 8443, "/RPC2", URL)
    assert s.ca == Path("/flag/ca.pem") and s.cert == Path("/env/c.pem")
    assert s.token == "arpc_from_file_123456"
    assert s.token_source == f"--token-file {tmp_path / 'token'}"
    s = settings.read(env)
    assert s.token == "arpc_from_env_1234" and s.token_source == "AIRFLOWRPC_TOKEN"
    assert "arpc_" not in repr(s)


def test_a_credential_given_by_flag_replaces_the_environments(tmp_path: Path) -> None:
    """
    Found by review: --aws with AIRFLOWRPC_TOKEN set (or --token-file with
    AIRFLOWRPC_AWS=1) was refused as two credentials, and --cert took
    AIRFLOWRPC_KEY, another certificate's key.
    """
    (tmp_path / "token").write_text("arpc_from_file_123456\n")
    env = {"AIRFLOWRPC_URL": URL, "AIRFLOWRPC_TOKEN": "arpc_from_env_1234",
           "AIRFLOWRPC_CERT": "/ci/org.pem", "AIRFLOWRPC_KEY": "/ci/org.key"}
    s = settings.read(env, aws=True)
    assert (s.token, s.aws is not None) == (None, True)
    assert (s.cert, s.key) == (Path("/ci/org.pem"), Path("/ci/org.key"))  # another kind
    s = settings.read({**env, "AIRFLOWRPC_AWS": "1"}, token_file=str(tmp_path / "token"))
    assert (s.token, s.aws) == ("arpc_from_file_123456", None)
    s = settings.read(env, cert="/job/mine.pem")
    assert (s.cert, s.key) == (Path("/job/mine.pem"), None)  # its key in the cert file
    s = settings.read(env, cert="/job/mine.pem", key="/job/mine.key")
    assert (s.cert, s.key) == (Path("/job/mine.pem"), Path("/job/mine.key"))
    for flags, says in (({"key": "/job/mine.key"}, "--key was given without --cert"),
                        ({"aws": True, "token_file": str(tmp_path / "token")},
                         "both --token-file and --aws"),
                        ({}, "both a token (from AIRFLOWRPC_TOKEN) and AIRFLOWRPC_AWS")):
        with pytest.raises(UsageError, match=says.replace("(", r"\(").replace(")", r"\)")):
            settings.read({**env, "AIRFLOWRPC_AWS": "1"} if not flags else env, **flags)


def test_url_defaults_and_refusals() -> None:
    s = settings.read({"AIRFLOWRPC_URL": "https://gw.example"})
    assert (s.port, s.path, s.url) == (443, "/RPC2", "https://gw.example:443/RPC2")
    assert not s.has_credential
    for bad, says in [
        ({}, "give --url or set AIRFLOWRPC_URL"),
        ({"AIRFLOWRPC_URL": ""}, "give --url"),  # an empty variable is unset
        ({"AIRFLOWRPC_URL": "http://gw.example/RPC2"}, "TLS only"),
        ({"AIRFLOWRPC_URL": "https://bot:arpc_sekrit_123456@gw/RPC2"}, "user info"),
        ({"AIRFLOWRPC_URL": "https://gw:99999/RPC2"}, "malformed"),
        ({"AIRFLOWRPC_URL": URL, "AIRFLOWRPC_KEY": "k.pem"}, "without a certificate"),
        ({"AIRFLOWRPC_URL": URL, "AIRFLOWRPC_TOKEN": "arpc_two words"}, "cannot be sent"),
    ]:
        with pytest.raises(UsageError) as caught:
            settings.read(bad)
        assert says in caught.value.message, bad
        assert "sekrit" not in caught.value.message and "two words" not in caught.value.message


@pytest.mark.parametrize(("token", "why"), [
    ("arpc_x", "it is shorter than 8 characters"),
    ("Bearer arpc_x", "it is shorter than 8 characters"),
    ("arpc_" + "x" * 8188, "it is longer than 8192 characters"),
    ("arpc_two words", "it holds a space, a line break or a character that is not printable"),
    ("arpc_s\u00e9cret_123", "it holds a space"),
    ("arpc_x_123\n456", "it holds a space, a line break"),
])
def test_an_unsendable_token_is_refused_saying_the_rule_and_never_the_token(
    token: str, why: str,
) -> None:
    with pytest.raises(UsageError) as caught:
        settings.read({"AIRFLOWRPC_URL": URL, "AIRFLOWRPC_TOKEN": token})
    message = caught.value.message
    assert message.startswith(
        "the token from AIRFLOWRPC_TOKEN cannot be sent: a token is 8 to 8192 characters of "
        "printable ASCII without spaces (a gateway token or a JWT), and "), message
    assert why in message
    assert "arpc_" not in message and "words" not in message and "123" not in message


def test_a_token_of_8_or_8192_characters_is_sent(tmp_path: Path) -> None:
    for token in ("arpc_xyz", "arpc_" + "x" * 8187):
        assert settings.read({"AIRFLOWRPC_URL": URL, "AIRFLOWRPC_TOKEN": token}).token == token
    (tmp_path / "token").write_text("arpc_x\n")
    with pytest.raises(UsageError, match=r"--token-file .*token cannot be sent: a token is 8 "
                                         r"to 8192 .* it is shorter than 8 characters"):
        settings.read({"AIRFLOWRPC_URL": URL}, token_file=str(tmp_path / "token"))


def test_a_bearer_prefix_and_blank_token_are_forgiven() -> None:
    s = settings.read({"AIRFLOWRPC_URL": URL, "AIRFLOWRPC_TOKEN": "Bearer arpc_x_12345678"})
    assert s.token == "arpc_x_12345678"
    s = settings.read({"AIRFLOWRPC_URL": URL, "AIRFLOWRPC_TOKEN": "  "})
    assert s.token is None


def test_an_unreadable_ca_or_certificate_is_usage(tmp_path: Path) -> None:
    (tmp_path / "junk.pem").write_text("not pem")
    for kw, says in [({"ca": str(tmp_path / "nope.pem")}, "CA file"),
                     ({"ca": str(tmp_path / "junk.pem")}, "CA file"),
                     ({"cert": str(tmp_path / "junk.pem")}, "client certificate")]:
        with pytest.raises(UsageError, match=says):
            settings.read({"AIRFLOWRPC_URL": URL}, **kw).tls_context()


# -- run ids -----------------------------------------------------------------

GITLAB = {"GITLAB_CI": "true", "CI_PIPELINE_ID": "9001", "CI_JOB_NAME": "deploy",
          "CI_JOB_ID": "555", "CI_JOB_URL": "https://gitlab.example/g/p/-/jobs/555"}
GITHUB = {"GITHUB_ACTIONS": "true", "GITHUB_REPOSITORY": "acme/etl", "GITHUB_RUN_ID": "77",
          "GITHUB_RUN_ATTEMPT": "1", "GITHUB_JOB": "deploy",
          "GITHUB_SERVER_URL": "https://github.com"}
JENKINS = {"JENKINS_URL": "https://ci.example/", "BUILD_TAG": "jenkins-etl-42",
           "BUILD_URL": "https://ci.example/job/etl/42/"}


def test_run_id_precedence() -> None:
    everything = {**GITLAB, **GITHUB, **JENKINS, "AIRFLOWRPC_RUN_ID": "env-id"}
    assert runid.derive(everything, "flag-id").run_id == "flag-id"
    assert runid.derive(everything).run_id == "env-id"
    del everything["AIRFLOWRPC_RUN_ID"]
    assert runid.derive(everything).run_id == "gitlab-9001-deploy"
    assert runid.derive({**GITHUB, **JENKINS}).run_id == "github-acme.etl-77-deploy"
    assert runid.derive(JENKINS).run_id == "jenkins-etl-42"


def test_a_retried_job_gets_the_same_run_id() -> None:
    first = runid.derive(GITLAB)
    retried = runid.derive({**GITLAB, "CI_JOB_ID": "556"})  # GitLab: a retry is a new job
    assert first == runid.RunIdentity("gitlab-9001-deploy", "CI_PIPELINE_ID, CI_JOB_NAME",
                                      "https://gitlab.example/g/p/-/jobs/555")
    assert retried.run_id == first.run_id and first.retry_safe
    rerun = runid.derive({**GITHUB, "GITHUB_RUN_ATTEMPT": "2"})  # GitHub: a re-run
    assert rerun.run_id == runid.derive(GITHUB).run_id
    assert rerun.job_url == "https://github.com/acme/etl/actions/runs/77"
    # Another job of the same pipeline, or another pipeline, gets another id.
    assert runid.derive({**GITLAB, "CI_JOB_NAME": "deploy-eu"}).run_id != first.run_id
    assert runid.derive({**GITLAB, "CI_PIPELINE_ID": "9002"}).run_id != first.run_id


def test_two_jenkins_jobs_whose_names_differ_only_in_slashes_get_two_ids() -> None:
    """
    Found by review: Jenkins' BUILD_TAG turns a folder's '/' into '-', so
    job team/app-deploy #7 and job team-app/deploy #7 shared a run id, and
    the second was told its run "already existed" and started nothing.
    """
    def build(job: str, number: str = "7", **more: str) -> runid.RunIdentity:
        tag = f"jenkins-{job.replace('/', '-')}-{number}"
        return runid.derive({"JENKINS_URL": "https://ci.example/", "JOB_NAME": job,
                             "BUILD_NUMBER": number, "BUILD_TAG": tag, **more})

    a, b = build("team/app-deploy"), build("team-app/deploy")
    assert a.run_id != b.run_id and a.retry_safe and b.retry_safe
    assert a.source == "JOB_NAME, BUILD_NUMBER"
    # A name with nothing to change keeps the id BUILD_TAG gave before.
    assert build("etl-deploy").run_id == "jenkins-etl-deploy-7"
    # A retry inside one build keeps its id; the next build gets another.
    assert build("team/app-deploy").run_id == a.run_id != build("team/app-deploy", "8").run_id


def test_jenkins_without_its_url_configured_is_still_jenkins() -> None:
    """Found by review: JENKINS_URL is set only once Jenkins' URL is configured."""
    env = {"JOB_NAME": "etl/nightly", "BUILD_NUMBER": "12", "BUILD_TAG": "jenkins-etl-nightly-12",
           "BUILD_URL": "https://ci.example/job/etl/job/nightly/12/"}
    found = runid.derive(env)
    assert found.retry_safe and found.run_id == runid.derive(env).run_id
    assert found.job_url == env["BUILD_URL"]
    # A BUILD_TAG that is not Jenkins' own making is no Jenkins build.
    assert not runid.derive({**env, "BUILD_TAG": "v1.2"}).retry_safe


def test_without_a_ci_marker_a_stray_variable_is_not_a_ci_job() -> None:
    # BUILD_TAG is a common name in build scripts; alone it is not Jenkins.
    fresh = runid.derive({"BUILD_TAG": "v1.2", "CI_PIPELINE_ID": "3", "GITHUB_RUN_ID": "4"},
                         now=datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc), token="abcd1234")
    assert fresh == runid.RunIdentity("airflowrpc-20260102T030405Z-abcd1234", None)
    assert not fresh.retry_safe
    # Two fresh ids differ.
    assert runid.derive({}).run_id != runid.derive({}).run_id


def test_job_names_are_made_valid_without_colliding() -> None:
    a = runid.derive({**GITLAB, "CI_JOB_NAME": "test: [ruby, 3.0]"}).run_id
    b = runid.derive({**GITLAB, "CI_JOB_NAME": "test: (ruby, 3.0)"}).run_id
    # ':' may stay (Airflow allows it in a run id); the rest become '-', and a
    # digest of the original tells the two apart.
    assert a.startswith("gitlab-9001-test:-ruby-3.0-") and b.startswith("gitlab-9001-test:-ruby")
    assert a != b
    from txairflowrpc.core.ids import id_problem
    long = runid.derive({**GITLAB, "CI_JOB_NAME": "x" * 400}).run_id
    for run_id in (a, b, long, runid.derive({**JENKINS, "BUILD_TAG": "jenkins-a/b c-1"}).run_id):
        assert id_problem("dag_run_id", run_id) is None, run_id
    assert len(long) == 250


def test_a_given_run_id_airflow_would_refuse_is_usage() -> None:
    with pytest.raises(UsageError, match="--run-id: dag_run_id may contain only"):
        runid.derive({}, "has space")
    with pytest.raises(UsageError, match="AIRFLOWRPC_RUN_ID"):
        runid.derive({"AIRFLOWRPC_RUN_ID": "a/b"})


# -- the parser --------------------------------------------------------------


def test_the_subcommands_parse() -> None:
    args = parser().parse_args(["call", "trigger_dag", "etl", '{"a": 1}', "--url", URL, "-v"])
    assert (args.command, args.method, args.args, args.url, args.verbose) == (
        "call", "trigger_dag", ["etl", '{"a": 1}'], URL, True)
    args = parser().parse_args(["trigger", "etl", "--conf", "{}", "--wait", "--timeout", "90",
                                "--run-id", "r1", "--log-lines", "5", "--token-file", "t"])
    assert (args.dag_id, args.conf, args.wait, args.timeout, args.run_id, args.log_lines,
            args.token_file, args.progress_every) == ("etl", "{}", True, 90, "r1", 5, "t", 15)


@pytest.mark.parametrize("argv", [
    ["trigger", "etl", "--timeout", "0", "--wait"],
    ["trigger", "etl", "--log-lines", "-1"],
    ["trigger", "etl", "--token", "arpc_x_sekrit1234"],  # no flag takes the token itself
    ["call", "ping", "--token=arpc_x_sekrit1234"],
    ["call", "ping", "--tok", "arpc_x_sekrit1234"],  # nor an abbreviation of --token-file
    # Found by review: a value of no token's shape was shown where argparse
    # took it for the command, or listed it among unrecognized arguments.
    ["--token", "plainsekritvalue123", "call", "ping"],
    ["--token-file", "plainsekritvalue123", "call", "ping"],
    ["call", "ping", "--to", "plainsekritvalue123"],
    ["call", "ping", "--tok=plainsekritvalue123"],
    ["call", "ping", "plainsekritvalue123", "--token-file"],
    # Found by review: argparse quoted a number flag's bad value.
    ["trigger", "etl", "--timeout", "plainsekritvalue123"],
    ["trigger", "etl", "--log-lines", "plainsekritvalue123"],
    ["backfill", "etl", "2026-01-01", "2026-01-02", "--max-active-runs", "sekrit"],
    ["call", "ping", "--timeout", "sekrit"],
    ["call", "ping", "--timeout", "nan"],
    ["call", "ping", "--timeout", "-inf"],
    ["trigger"],
    ["call"],
])
def test_bad_usage_exits_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        parser().parse_args(argv)
    assert caught.value.code == 2
    assert "sekrit" not in capsys.readouterr().err


def test_a_token_file_that_cannot_be_read_is_not_named(tmp_path: Path) -> None:
    """Found by review: the token given to --token-file was printed as the file's name."""
    from txairflowrpc.client import settings

    with pytest.raises(UsageError) as e:
        settings.read({"AIRFLOWRPC_URL": URL}, token_file="plainsekritvalue123")
    assert "sekrit" not in e.value.message
    assert e.value.message == ("the file --token-file names cannot be read: "
                               "No such file or directory")
