"""
The run id of a trigger, derived from the CI job so that a retry finds the
run instead of starting a second one.

The first of these that applies gives the id (a flag wins over the
environment, a CI system's own variables over a generic one):

1. ``--run-id ID``
2. ``AIRFLOWRPC_RUN_ID``
3. GitLab CI (``GITLAB_CI`` set): ``gitlab-<CI_PIPELINE_ID>-<CI_JOB_NAME>``
4. GitHub Actions (``GITHUB_ACTIONS`` set):
   ``github-<owner>.<repo>-<GITHUB_RUN_ID>-<GITHUB_JOB>`` (from ``GITHUB_REPOSITORY``)
5. Jenkins (``JENKINS_URL`` set, or ``BUILD_TAG`` as Jenkins makes it of
   ``JOB_NAME`` and ``BUILD_NUMBER``): ``jenkins-<JOB_NAME>-<BUILD_NUMBER>``
   (``<BUILD_TAG>`` without them)
6. none: ``airflowrpc-<UTC time>-<random>``, and a note that a retry of
   the command will not be deduplicated.

Only variables that stay the same when a job is retried are used: GitLab
gives a retried job a new ``CI_JOB_ID`` but the same pipeline id and job
name; GitHub gives a re-run a new ``GITHUB_RUN_ATTEMPT`` but the same
``GITHUB_RUN_ID``.  So a retried job reuses its run (and, with ``--wait``,
waits for it or reports how it ended): an Airflow run is not started twice
because a runner died.  To start afresh on a retry, put the attempt in the
id yourself (``--run-id "$GITHUB_RUN_ID-$GITHUB_RUN_ATTEMPT"``).  One job
that triggers the same DAG twice needs an id of its own for the second, and
so do the legs of a GitHub matrix and two callers of one reusable workflow:
they share ``GITHUB_JOB``, and no variable tells them apart.  A Jenkins
rebuild or replay is a new build (a new build number) and a new run.
Jenkins' own ``BUILD_TAG`` turns the ``/`` of a folder into ``-``, so that
``team/app-deploy`` and ``team-app/deploy`` share it: the job's name is
taken as it is instead (found by review), which gives the same id as
``BUILD_TAG`` for a name with nothing to change.

Each part is reduced to what Airflow allows in a run id
(``A-Z a-z 0-9 _ . - ~ : +``); a part that had to change gets a short
digest of its original, so that two job names differing only in other
characters do not share a run.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Mapping
from datetime import datetime, timezone

import attrs

from ..core import ids
from .errors import UsageError

_NOT_ALLOWED = re.compile(r"[^A-Za-z0-9_.~:+-]+")


@attrs.frozen
class RunIdentity:
    """A run id and where it came from (for the note on stderr)."""

    run_id: str
    #: The flag or variables it was taken from; None for a fresh one.
    source: str | None
    #: A link to the CI job, for the run's note in Airflow; None outside CI.
    job_url: str | None = None

    @property
    def retry_safe(self) -> bool:
        return self.source is not None


def part(text: str) -> str:
    """``text`` as a piece of a run id (see the module doc)."""
    cleaned = _NOT_ALLOWED.sub("-", text).strip("-") or "x"
    if cleaned != text:
        cleaned += "-" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]
    return cleaned


def _clip(run_id: str) -> str:
    if len(run_id) <= ids.MAX_ID_LENGTH:
        return run_id
    digest = hashlib.sha256(run_id.encode("utf-8")).hexdigest()[:16]
    return run_id[: ids.MAX_ID_LENGTH - 17] + "-" + digest


def _set(environ: Mapping[str, str], *names: str) -> bool:
    return all(environ.get(n, "").strip() for n in names)


def derive(
    environ: Mapping[str, str], given: str | None = None, *,
    now: datetime | None = None, token: str | None = None,
) -> RunIdentity:
    """
    The run id for a trigger (see the module doc).  ``now`` and ``token``
    make the fresh id of case 6 predictable in tests.  Raises `UsageError`
    for a given id Airflow would refuse.
    """
    if given is not None or _set(environ, "AIRFLOWRPC_RUN_ID"):
        source = "--run-id" if given is not None else "AIRFLOWRPC_RUN_ID"
        run_id = given if given is not None else environ["AIRFLOWRPC_RUN_ID"].strip()
        problem = ids.id_problem("dag_run_id", run_id)
        if problem:
            raise UsageError(f"{source}: {problem}")
        return RunIdentity(run_id, source, _job_url(environ))
    e = {k: v.strip() for k, v in environ.items()}
    if _set(e, "GITLAB_CI", "CI_PIPELINE_ID", "CI_JOB_NAME"):
        run_id = f"gitlab-{part(e['CI_PIPELINE_ID'])}-{part(e['CI_JOB_NAME'])}"
        return RunIdentity(_clip(run_id), "CI_PIPELINE_ID, CI_JOB_NAME", _job_url(e))
    if _set(e, "GITHUB_ACTIONS", "GITHUB_REPOSITORY", "GITHUB_RUN_ID", "GITHUB_JOB"):
        # An owner's name holds no dot, so owner/repo -> owner.repo is one to one.
        repository = part(e["GITHUB_REPOSITORY"].replace("/", ".", 1))
        run_id = (f"github-{repository}-{part(e['GITHUB_RUN_ID'])}"
                  f"-{part(e['GITHUB_JOB'])}")
        return RunIdentity(_clip(run_id), "GITHUB_REPOSITORY, GITHUB_RUN_ID, GITHUB_JOB",
                           _job_url(e))
    if _jenkins(e):
        if _set(e, "JOB_NAME", "BUILD_NUMBER"):
            run_id = f"jenkins-{part(e['JOB_NAME'])}-{part(e['BUILD_NUMBER'])}"
            return RunIdentity(_clip(run_id), "JOB_NAME, BUILD_NUMBER", _job_url(e))
        return RunIdentity(_clip(part(e["BUILD_TAG"])), "BUILD_TAG", _job_url(e))
    now = now or datetime.now(timezone.utc)
    token = token or secrets.token_hex(4)
    return RunIdentity(f"airflowrpc-{now:%Y%m%dT%H%M%SZ}-{token}", None)


def _jenkins(e: Mapping[str, str]) -> bool:
    """
    Whether this is a Jenkins build: ``JENKINS_URL`` is set only once Jenkins'
    own URL is configured (found by review: without it every try got a fresh
    id), so a ``BUILD_TAG`` that is exactly what Jenkins makes of the job's
    name and build number says so too (a stray ``BUILD_TAG`` does not).
    """
    if not _set(e, "BUILD_TAG"):
        return False
    if _set(e, "JENKINS_URL"):
        return True
    return _set(e, "JOB_NAME", "BUILD_NUMBER") and e["BUILD_TAG"] == (
        f"jenkins-{e['JOB_NAME'].replace('/', '-')}-{e['BUILD_NUMBER']}")


def _job_url(e: Mapping[str, str]) -> str | None:
    """The CI job's web page, when the environment says where it is."""
    if e.get("GITLAB_CI") and e.get("CI_JOB_URL"):
        return e["CI_JOB_URL"]
    if e.get("GITHUB_ACTIONS") and _set(e, "GITHUB_SERVER_URL", "GITHUB_REPOSITORY",
                                        "GITHUB_RUN_ID"):
        return (f"{e['GITHUB_SERVER_URL']}/{e['GITHUB_REPOSITORY']}/actions/runs/"
                f"{e['GITHUB_RUN_ID']}")
    if _jenkins(e) and e.get("BUILD_URL"):
        return e["BUILD_URL"]
    return None
