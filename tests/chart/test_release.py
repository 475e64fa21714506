"""The release path agrees with the chart. `.github/workflows/release.yml` pushes the images that
charts/kaltstart/values.yaml names, built from Dockerfiles that exist, tagged with the version of the git tag, and
pushes the chart as an OCI artifact whose appVersion is that same version, so the published chart deploys by default
exactly the images of its release. `make images` builds the same repositories, tagged with the chart's appVersion.
A rename in one of these places fails here.

The workflow's shell steps are run here (the version step for real, the chart steps against a `helm` that records
its arguments; the packaging itself is then done with the Helm library); its actions are read, not run."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import helm_python
import pytest
import yaml

from tests.chart.rendering import CHART_DIR, REPO, Rendered, load_values, render

pytestmark = pytest.mark.chart

WORKFLOWS = REPO / ".github" / "workflows"
TAG = "v1.2.3"
VERSION = "1.2.3"
ONE_MODEL = {"models": [{"name": "tiny", "source": "org/tiny"}]}
EXPRESSION = re.compile(r"\$\{\{\s*([\w.-]+)\s*\}\}")
#: What the chart job's `${{ ... }}` may refer to besides the outputs of the jobs it needs.
GITHUB_CONTEXT = {"github.actor": "releaser", "secrets.GITHUB_TOKEN": "not-a-token"}

Job = dict[str, Any]


def _workflow(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((WORKFLOWS / name).read_text())
    return loaded


def _triggers(workflow: Mapping[Any, Any]) -> dict[str, Any]:
    """The `on:` mapping (YAML 1.1, which PyYAML reads, takes the bare key `on` for true)."""
    triggers: dict[str, Any] = workflow["on"] if "on" in workflow else workflow[True]
    return triggers


def _substitute(text: str, context: Mapping[str, str]) -> str:
    def one(match: re.Match[str]) -> str:
        assert match.group(1) in context, f"{match.group(0)} is not known here (in {text!r})"
        return context[match.group(1)]

    return EXPRESSION.sub(one, text)


RELEASE = _workflow("release.yml")
JOBS: dict[str, Job] = RELEASE["jobs"]
VALUES = load_values(CHART_DIR / "values.yaml")
REPOSITORIES = {name: VALUES["image"][name]["repository"] for name in ("gateway", "runtime")}
APP_VERSION = load_values(CHART_DIR / "Chart.yaml")["appVersion"]


def _steps_using(action: str) -> list[tuple[str, Job, dict[str, Any]]]:
    """(job id, job, step) of every step that uses ``action`` (any version)."""
    return [
        (job_id, job, step)
        for job_id, job in JOBS.items()
        for step in job.get("steps", [])
        if str(step.get("uses", "")).split("@")[0] == action
    ]


def _run_steps(job: Job, context: Mapping[str, str], cwd: Path, path: str) -> dict[str, str]:
    """Run a job's `run:` steps as a runner would on a tag push (`bash -e`); returns ``steps.<id>.outputs.<key>``."""
    outputs: dict[str, str] = {}
    env_of_job = {key: _substitute(str(value), context) for key, value in job.get("env", {}).items()}
    for number, step in enumerate(job["steps"]):
        if "run" not in step:
            continue
        output_file = cwd / f"github-output-{number}"
        output_file.touch()
        env = {
            "PATH": path,
            "HOME": str(cwd),
            "GITHUB_REF_NAME": TAG,
            "GITHUB_REF": f"refs/tags/{TAG}",
            "GITHUB_OUTPUT": str(output_file),
            **env_of_job,
            **{key: _substitute(str(value), context) for key, value in step.get("env", {}).items()},
        }
        script = _substitute(step["run"], {**context, **outputs})
        done = subprocess.run(
            ["bash", "-e", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, f"step {step.get('name', number)!r} failed:\n{done.stdout}{done.stderr}"
        for line in output_file.read_text().splitlines():
            key, _, value = line.partition("=")
            outputs[f"steps.{step.get('id')}.outputs.{key}"] = value
    return outputs


def _needs_context(job: Job, cwd: Path) -> dict[str, str]:
    """``needs.<job>.outputs.<key>`` for the jobs ``job`` needs, each computed by running its steps."""
    needs = job.get("needs", [])
    context: dict[str, str] = {}
    for needed in [needs] if isinstance(needs, str) else needs:
        if "outputs" not in JOBS[needed]:
            continue
        step_outputs = _run_steps(JOBS[needed], {}, cwd, os.environ["PATH"])
        for key, template in JOBS[needed]["outputs"].items():
            context[f"needs.{needed}.outputs.{key}"] = _substitute(template, step_outputs)
    return context


def _pushed_images(cwd: Path) -> dict[str, str]:
    """{Dockerfile: image reference} that the workflow's build-push steps push for tag ``TAG``."""
    pushed: dict[str, str] = {}
    for _, job, step in _steps_using("docker/build-push-action"):
        inputs = step["with"]
        assert inputs.get("push") is True
        assert inputs.get("context") == "."  # the Dockerfiles are written for the repository root
        needs = _needs_context(job, cwd)
        for entry in job.get("strategy", {}).get("matrix", {}).get("include", [{}]):
            context = {**needs, **{f"matrix.{key}": str(value) for key, value in entry.items()}}
            tags = [t.strip() for t in re.split(r"[,\n]", _substitute(inputs["tags"], context)) if t.strip()]
            assert len(tags) == 1, f"one tag per image, the release version: {tags}"
            pushed[_substitute(inputs["file"], context)] = tags[0]
    return pushed


def test_a_pushed_tag_starts_the_release() -> None:
    assert _triggers(RELEASE) == {"push": {"tags": ["v*"]}}


def test_the_version_is_the_tag_without_its_v(tmp_path: Path) -> None:
    assert _needs_context({"needs": ["version"]}, tmp_path) == {"needs.version.outputs.version": VERSION}


def test_a_tag_helm_could_not_use_as_a_version_stops_the_release(tmp_path: Path) -> None:
    (step,) = [step for step in JOBS["version"]["steps"] if "run" in step]
    output = tmp_path / "output"
    output.touch()
    env = {"PATH": os.environ["PATH"], "GITHUB_REF_NAME": "v1.2", "GITHUB_OUTPUT": str(output)}
    done = subprocess.run(["bash", "-e", "-c", step["run"]], env=env, capture_output=True, text=True, check=False)
    assert done.returncode != 0 and "not v<SemVer>" in done.stdout
    assert output.read_text() == ""


def test_the_workflow_pushes_the_chart_s_image_repositories_with_the_tag_s_version(tmp_path: Path) -> None:
    pushed = _pushed_images(tmp_path)
    assert pushed == {
        "docker/gateway.Dockerfile": f"{REPOSITORIES['gateway']}:{VERSION}",
        "docker/runtime.Dockerfile": f"{REPOSITORIES['runtime']}:{VERSION}",
    }
    for dockerfile in pushed:
        assert (REPO / dockerfile).is_file(), dockerfile


def test_the_workflow_logs_in_to_the_registry_it_pushes_to() -> None:
    hosts = {repository.split("/")[0] for repository in REPOSITORIES.values()}
    for job_id, job, _ in _steps_using("docker/build-push-action"):
        actions = [str(step.get("uses", "")).split("@")[0] for step in job["steps"]]
        assert actions.index("docker/setup-buildx-action") < actions.index("docker/build-push-action"), job_id
        (login,) = [step for step in job["steps"] if str(step.get("uses", "")).startswith("docker/login-action@")]
        assert {login["with"]["registry"]} == hosts
        assert job["permissions"]["packages"] == "write"


def test_nothing_is_published_before_the_tests_pass_and_the_chart_comes_last() -> None:
    image_jobs = {job_id for job_id, _, _ in _steps_using("docker/build-push-action")}
    assert JOBS["test"]["uses"] == "./.github/workflows/ci.yml"
    for job_id in image_jobs:
        assert "test" in JOBS[job_id]["needs"]
    (chart_job,) = {job_id for job_id, job in JOBS.items() if "helm push" in json.dumps(job)}
    assert image_jobs <= set(JOBS[chart_job]["needs"])


FAKE_HELM = """\
#!{python}
import json, os, sys
with open(os.environ["FAKE_HELM_LOG"], "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
"""


def _run_chart_job(tmp_path: Path) -> list[list[str]]:
    """Run the steps of the job that pushes the chart with a recording `helm`; returns its calls."""
    (chart_job,) = [job for job in JOBS.values() if "helm push" in json.dumps(job)]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "helm").write_text(FAKE_HELM.format(python=sys.executable))
    (bin_dir / "helm").chmod(0o755)
    log = tmp_path / "helm-calls.jsonl"
    work = tmp_path / "checkout"
    work.mkdir()
    (work / "charts").symlink_to(REPO / "charts")
    context = {**GITHUB_CONTEXT, **_needs_context(chart_job, tmp_path)}
    chart_job = {**chart_job, "env": {**chart_job.get("env", {}), "FAKE_HELM_LOG": str(log)}}
    _run_steps(chart_job, context, work, f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return [json.loads(line) for line in log.read_text().splitlines()]


def _package_arguments(call: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(exit_on_error=False)
    parser.add_argument("chart")
    parser.add_argument("--version", required=True)
    parser.add_argument("--app-version", required=True)
    parser.add_argument("--destination", "-d", default=".")
    return parser.parse_args(call[1:])


def test_the_chart_is_packaged_with_the_tag_s_version_and_pushed_as_oci(tmp_path: Path) -> None:
    calls = _run_chart_job(tmp_path)
    (package,) = [call for call in calls if call[0] == "package"]
    (push,) = [call for call in calls if call[0] == "push"]
    (login,) = [call for call in calls if call[:2] == ["registry", "login"]]
    arguments = _package_arguments(package)
    assert Path(arguments.chart) == CHART_DIR.relative_to(REPO)
    assert (arguments.version, arguments.app_version) == (VERSION, VERSION)
    assert calls.index(package) < calls.index(push) and calls.index(login) < calls.index(push)

    archive, remote = push[1:]
    assert Path(archive) == Path(arguments.destination) / f"kaltstart-{VERSION}.tgz"
    assert remote == "oci://ghcr.io/kaltstart/charts"
    assert login[2] == remote.removeprefix("oci://").split("/")[0]
    # Charts and images live under the same registry namespace.
    assert {repository.rsplit("/", 1)[0] for repository in REPOSITORIES.values()} == {
        remote.removeprefix("oci://").rsplit("/", 1)[0]
    }


def _images(rendered: Rendered) -> set[str]:
    return {
        container["image"]
        for _, pod in rendered.pod_specs()
        for container in [*pod.get("initContainers", []), *pod["containers"]]
    }


def test_the_released_chart_deploys_the_released_images_by_default(tmp_path: Path) -> None:
    """Package as the workflow does, with the real Helm library, and render the archive with default images."""
    arguments = _package_arguments(next(call for call in _run_chart_job(tmp_path) if call[0] == "package"))
    archive = helm_python.package(
        CHART_DIR, destination=tmp_path / "dist", version=arguments.version, app_version=arguments.app_version
    )
    with helm_python.Chart.load_archive(Path(archive).read_bytes()) as released:
        assert (released.metadata["version"], released.metadata["appVersion"]) == (VERSION, VERSION)
        images = _images(render(released, ONE_MODEL))
    ours = {image for image in images if image.rsplit(":", 1)[0] in REPOSITORIES.values()}
    assert ours == set(_pushed_images(tmp_path).values())


# The CI workflow


def test_ci_runs_make_test_on_pushes_and_pull_requests() -> None:
    ci = _workflow("ci.yml")
    assert {"push", "pull_request", "workflow_call"} <= set(_triggers(ci))
    runs = [step["run"] for job in ci["jobs"].values() for step in job["steps"] if "run" in step]
    assert runs == [".ci/run"]
    assert "make test" in (REPO / ".ci" / "run").read_text()


# make images


def _make_env(**extra: str) -> dict[str, str]:
    dropped = {"VERSION", "CONTAINER_TOOL", "MAKEFLAGS", "MFLAGS", "MAKELEVEL"}
    return {**{key: value for key, value in os.environ.items() if key not in dropped}, **extra}


MAKE = shutil.which("make")
needs_make = pytest.mark.skipif(MAKE is None, reason="no make")


@needs_make
def test_make_images_builds_the_pushed_repositories_tagged_as_the_chart_deploys_them(chart: helm_python.Chart) -> None:
    assert MAKE is not None
    done = subprocess.run(
        [MAKE, "--dry-run", "--no-print-directory", "images", "CONTAINER_TOOL=docker"],
        cwd=REPO,
        env=_make_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    builds = [line.split() for line in done.stdout.splitlines() if line.startswith("docker build ")]
    built = {words[words.index("-f") + 1]: words[words.index("-t") + 1] for words in builds}
    assert all(words[-1] == "." for words in builds)
    assert built == {
        "docker/gateway.Dockerfile": f"{REPOSITORIES['gateway']}:{APP_VERSION}",
        "docker/runtime.Dockerfile": f"{REPOSITORIES['runtime']}:{APP_VERSION}",
    }
    assert _images(render(chart, ONE_MODEL)) >= set(built.values())


@needs_make
def test_make_images_says_so_when_there_is_neither_docker_nor_podman(tmp_path: Path) -> None:
    assert MAKE is not None
    for tool in ("sed", "sh"):  # what the Makefile itself needs; no container tool
        found = shutil.which(tool)
        assert found is not None
        (tmp_path / tool).symlink_to(found)
    done = subprocess.run(
        [MAKE, "--no-print-directory", "images"],
        check=False,
        cwd=REPO,
        env=_make_env(PATH=str(tmp_path)),
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0
    assert "neither docker nor podman" in done.stderr
