"""Everything installs from the locks (requirements/*.lock), and the locks are what pyproject.toml asks for.

docs/release.md, "Dependencies": `make lock` resolves pyproject.toml's ranges into four locks with hashes; the
Makefile (so `make run`, `make test` and `.ci/run`), both Dockerfiles and the workflows install only from them, and
the GitHub actions are pinned by commit."""

from __future__ import annotations

import re
import shlex
import tomllib

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.version import Version

from tests.locks import REPO, REQUIREMENTS, canonical, read_locks, read_pins

pytestmark = pytest.mark.unit

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
#: Which of pyproject.toml's dependency lists each lock resolves (`make lock`), and who installs it.
LOCKED_EXTRAS = {
    "dev": ("runtime", "loadtest", "upstream", "dev"),
    "gateway": (),
    "runtime-cuda": ("runtime",),
    "gpu": ("runtime", "loadtest", "fastload"),
}
CONSUMERS = {
    "Makefile": ("pip", "dev"),
    "docker/gateway.Dockerfile": ("gateway",),
    "docker/runtime.Dockerfile": ("runtime-cuda",),
}
#: Every file that may install Python packages. Each install there must name a lock or install the project alone.
INSTALLERS = [
    "Makefile", ".ci/run", "docker/gateway.Dockerfile", "docker/runtime.Dockerfile",
    *(str(path.relative_to(REPO)) for path in sorted((REPO / ".github" / "workflows").glob("*.yml"))),
]  # fmt: skip
# The platform the locks are resolved for (`make lock`: --python-version 3.11 --python-platform x86_64-manylinux).
LOCK_PLATFORM: dict[str, str] = {
    **{key: str(value) for key, value in default_environment().items()},
    "python_version": "3.11", "python_full_version": "3.11.0", "sys_platform": "linux", "platform_system": "Linux",
    "platform_machine": "x86_64", "os_name": "posix", "implementation_name": "cpython",
}  # fmt: skip


def _requirements(extras: tuple[str, ...]) -> list[Requirement]:
    lines = list(PYPROJECT["dependencies"])
    for extra in extras:
        lines += PYPROJECT["optional-dependencies"][extra]
    requirements = [Requirement(line) for line in lines]
    return [req for req in requirements if req.marker is None or req.marker.evaluate(LOCK_PLATFORM)]


def _pip_installs(path: str) -> list[list[str]]:
    """The argument lists of every `pip install` in a file, continuation lines joined."""
    text = (REPO / path).read_text().replace("\\\n", " ")
    found = []
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        for match in re.finditer(r"pip install (.*?)(?:&&|;|$)", line):
            found.append(shlex.split(match.group(1).replace("$(", "").replace(")", "")))
    return found


def test_every_lock_make_lock_writes_is_there() -> None:
    assert sorted(read_locks()) == sorted([*LOCKED_EXTRAS, "pip"])
    makefile = (REPO / "Makefile").read_text()
    for name in LOCKED_EXTRAS:
        assert f"-o requirements/{name}.lock" in makefile


@pytest.mark.parametrize("lock", sorted(LOCKED_EXTRAS))
def test_each_lock_pins_what_pyproject_asks_for_within_its_ranges(lock: str) -> None:
    """A dependency added to pyproject.toml or a range moved past the lock fails here until `make lock` runs."""
    pins = read_locks()[lock]
    for req in _requirements(LOCKED_EXTRAS[lock]):
        name = canonical(req.name)
        assert name in pins, f"{req} is not in requirements/{lock}.lock: run `make lock`"
        assert req.specifier.contains(Version(pins[name]), prereleases=True), (
            f"requirements/{lock}.lock pins {name}=={pins[name]}, outside {req}: run `make lock`"
        )


@pytest.mark.parametrize("lock", sorted([*LOCKED_EXTRAS, "pip"]))
def test_every_pin_is_exact_and_hashed(lock: str) -> None:
    pins = read_pins(REQUIREMENTS / f"{lock}.lock")
    assert pins
    for name, pin in pins.items():
        assert pin.hashes, f"{name} has no hash in requirements/{lock}.lock"
    text = (REQUIREMENTS / f"{lock}.lock").read_text()
    assert "make lock" in " ".join(text.splitlines()[:2])  # says how it was made
    assert not re.search(r"^-(e|-editable|-index-url|-extra-index-url|-find-links)", text, re.MULTILINE)


def test_the_locks_agree_on_every_version_but_the_build_of_torch() -> None:
    locks = read_locks()
    dev = locks["dev"]
    assert locks["pip"] == {"pip": dev["pip"]}  # pip alone, installed first
    assert Version(dev["torch"]).local == "cpu"  # tests and CI run the CPU build
    for name, pins in locks.items():
        for package, version in pins.items():
            if package in dev and package != "torch":
                assert version == dev[package], f"{package}: {name}.lock {version}, dev.lock {dev[package]}"
    assert locks["runtime-cuda"]["torch"] == Version(dev["torch"]).public == locks["gpu"]["torch"]


@pytest.mark.parametrize("path", INSTALLERS)
def test_every_install_is_from_a_lock_or_of_the_project_alone(path: str) -> None:
    for args in _pip_installs(path):
        if "--require-hashes" in args:
            (lock,) = [args[i + 1] for i, arg in enumerate(args) if arg == "-r"]
            assert re.fullmatch(r"requirements/[a-z-]+\.lock", lock), (path, args)
        else:  # the project itself, its dependencies already installed from the lock
            assert {"--no-deps", "--no-build-isolation"} <= set(args), (path, args)
            assert args[-1] == "." and all(arg.startswith("-") for arg in args[:-1]), (path, args)


@pytest.mark.parametrize(("path", "locks"), sorted(CONSUMERS.items()))
def test_the_makefile_and_each_image_install_their_lock(path: str, locks: tuple[str, ...]) -> None:
    installed = [args[args.index("-r") + 1] for args in _pip_installs(path) if "--require-hashes" in args]
    assert installed == [f"requirements/{lock}.lock" for lock in locks]


def test_ci_runs_make_test_and_caches_by_the_lock() -> None:
    assert "make test" in (REPO / ".ci" / "run").read_text()
    ci = (REPO / ".github" / "workflows" / "ci.yml").read_text()
    assert ".ci/run" in ci
    assert "cache-dependency-path: requirements/dev.lock" in ci
    lock = (REPO / ".github" / "workflows" / "lock.yml").read_text()
    assert "make lock-upgrade" in lock and ".ci/run" in lock  # the suite runs before the pull request is opened


def test_every_action_is_pinned_by_commit_with_its_version_in_a_comment() -> None:
    for path in sorted((REPO / ".github" / "workflows").glob("*.yml")):
        for line in path.read_text().splitlines():
            match = re.search(r"uses:\s*(\S+)(.*)$", line)
            if match is None or match.group(1).startswith("./"):
                continue
            assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", match.group(1)), f"{path.name}: {line.strip()}"
            assert re.fullmatch(r"\s+# v\d+(\.\d+)*", match.group(2)), f"{path.name}: {line.strip()}"


def test_lint_runs_actionlint() -> None:
    makefile = (REPO / "Makefile").read_text()
    lint = makefile[makefile.index("\nlint:") : makefile.index("\ntypecheck:")]
    assert "$(BIN)/actionlint" in lint
