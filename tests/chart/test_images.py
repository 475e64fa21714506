"""What can be checked of the container images without building them: their entry points import, everything
they copy exists and reaches the build context, the gateway image carries no torch, and the runtime image pins
the torch of pyproject.toml."""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.chart.rendering import REPO
from tests.locks import read_locks

pytestmark = pytest.mark.chart

DOCKER = REPO / "docker"


@dataclass(frozen=True)
class Dockerfile:
    path: Path
    #: (instruction, arguments) in order, continuation lines joined, comments dropped.
    instructions: list[tuple[str, str]]

    @classmethod
    def read(cls, path: Path) -> Dockerfile:
        text = re.sub(r"\\\n", " ", path.read_text())
        lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        return cls(path, [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines])

    def all(self, instruction: str) -> list[str]:
        return [args for name, args in self.instructions if name == instruction]

    def final_stage(self) -> list[tuple[str, str]]:
        starts = [i for i, (name, _) in enumerate(self.instructions) if name == "FROM"]
        return self.instructions[starts[-1] :]

    def copied_sources(self) -> list[str]:
        sources: list[str] = []
        for args in self.all("COPY"):
            words = args.split()
            if any(w.startswith("--from") for w in words):
                continue
            sources.extend(w for w in words[:-1] if not w.startswith("--"))
        return sources


LOCKS = read_locks()
IMAGES = {
    "gateway": Dockerfile.read(DOCKER / "gateway.Dockerfile"),
    "runtime": Dockerfile.read(DOCKER / "runtime.Dockerfile"),
}


@pytest.mark.parametrize("package", sorted(IMAGES))
def test_entrypoint_runs_an_importable_main_module(package: str) -> None:
    image = IMAGES[package]
    (entrypoint,) = [args for name, args in image.final_stage() if name == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["python", "-m", package]
    spec = importlib.util.find_spec(f"{package}.__main__")
    assert spec is not None and spec.origin is not None
    assert Path(spec.origin).resolve().is_relative_to(REPO / package)
    assert f"{package}/" in image.copied_sources()


def _ignored() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip().rstrip("/") for line in lines if line.strip() and not line.startswith("#")]


@pytest.mark.parametrize("package", sorted(IMAGES))
def test_every_copied_source_exists_and_is_in_the_build_context(package: str) -> None:
    ignored = _ignored()
    for source in IMAGES[package].copied_sources():
        assert (REPO / source).exists(), source
        assert source.rstrip("/").split("/")[0] not in ignored, f"{source} is excluded by .dockerignore"


@pytest.mark.parametrize("package", sorted(IMAGES))
def test_images_run_as_user_10001(package: str) -> None:
    users = [args for name, args in IMAGES[package].final_stage() if name == "USER"]
    assert users == ["10001:10001"]


def _imported_top_packages(package: str) -> set[str]:
    found: set[str] = set()
    for path in (REPO / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize(("package", "other"), [("gateway", "runtime"), ("runtime", "gateway")])
def test_each_image_copies_what_its_package_imports(package: str, other: str) -> None:
    """Each image copies its own package and ``wire`` only, which holds as long as neither imports the other."""
    copied = {source.rstrip("/") for source in IMAGES[package].copied_sources()}
    assert {package, "wire"} <= copied
    assert other not in copied
    assert other not in _imported_top_packages(package)


def _base_image(image: Dockerfile) -> str:
    (arg,) = [args for args in image.all("ARG") if args.startswith("PYTHON_IMAGE=")]
    assert set(image.all("FROM")) <= {"${PYTHON_IMAGE}", "${PYTHON_IMAGE} AS build"}
    return arg.removeprefix("PYTHON_IMAGE=")


def test_gateway_image_installs_no_torch() -> None:
    image = IMAGES["gateway"]
    runs = " ".join(image.all("RUN"))
    assert "--require-hashes -r requirements/gateway.lock" in runs
    assert "[runtime]" not in runs and "torch" not in runs
    assert "torch" not in LOCKS["gateway"]
    assert _base_image(image) == "python:3.11-slim"


def _pyproject_torch_pin() -> str:
    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["runtime"]
    (pin,) = [req for req in extra if re.match(r"torch\b", req)]
    match = re.fullmatch(r"torch==([\w.]+)", pin.replace(" ", ""))
    assert match, f"the runtime extra should pin torch exactly, found {pin!r}"
    return match.group(1)


def test_runtime_image_installs_the_cuda_torch_of_pyproject_from_its_lock() -> None:
    """The image's lock pins PyPI's (CUDA) build of exactly the torch of pyproject.toml, with its CUDA libraries,
    and the image installs that lock before the package."""
    image = IMAGES["runtime"]
    assert LOCKS["runtime-cuda"]["torch"] == _pyproject_torch_pin()  # no local version: not the +cpu build
    assert any(name.startswith("nvidia-") for name in LOCKS["runtime-cuda"])
    runs = image.all("RUN")
    (lock_step,) = [i for i, run in enumerate(runs) if "--require-hashes -r requirements/runtime-cuda.lock" in run]
    (package_step,) = [i for i, run in enumerate(runs) if "--no-deps --no-build-isolation ." in run]
    assert lock_step < package_step
    assert _base_image(image) == "python:3.11-slim"
