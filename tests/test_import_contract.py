"""The import contract of pyproject.toml (``[tool.importlinter]``, see docs/architecture.md) catches what it should,
and the repository keeps it. The contract is run, exactly as `make lint` runs it, on a small tree of the four
packages: as written the tree passes; each forbidden import, direct or through another module, breaks exactly the
contract that forbids it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = REPO / "pyproject.toml"
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
CONTRACTS: dict[str, str] = {
    contract["id"]: contract["name"]
    for contract in tomllib.loads(PYPROJECT.read_text())["tool"]["importlinter"]["contracts"]
}

#: A miniature of the real layout that keeps the contracts, with the imports the rules allow: every layer of both
#: packages, and the engine factory's lazy imports that the runtime contracts ignore by name.
TREE = {
    "wire/__init__.py": "import pydantic\n",
    "gateway/__init__.py": "",
    "gateway/__main__.py": "from gateway import app\n",
    "gateway/app.py": (
        "from gateway.api import routes\nfrom gateway.dispatch import loop\nfrom gateway.scaling import autoscaler\n"
    ),
    "gateway/status/__init__.py": "",
    "gateway/status/report.py": "from gateway.backends import local\nfrom gateway.scaling import autoscaler\n",
    "gateway/errors.py": "",
    "gateway/processes.py": "",
    "gateway/api/__init__.py": "",
    "gateway/api/routes.py": "from gateway.api import admission\n",
    "gateway/api/admission.py": "import wire\nfrom gateway.queue import stream\n",
    "gateway/dispatch/__init__.py": "",
    "gateway/dispatch/loop.py": (
        "import wire\nfrom gateway.queue import stream\nfrom gateway.replicas import endpoints\n"
    ),
    "gateway/scaling/__init__.py": "",
    "gateway/scaling/autoscaler.py": "from gateway.backends import local\n",
    "gateway/backends/__init__.py": "from gateway.replicas import endpoints\n",
    "gateway/backends/local/__init__.py": "",
    "gateway/backends/local/backend.py": (
        "import wire\nfrom gateway import processes\nfrom gateway.replicas import endpoints\n"
    ),
    "gateway/replicas/__init__.py": "",
    "gateway/replicas/endpoints.py": "from gateway.store import keys\n",
    "gateway/queue/__init__.py": "",
    "gateway/queue/stream.py": "import redis\nfrom gateway.relay import transport\nfrom gateway.store import keys\n",
    "gateway/relay/__init__.py": "",
    "gateway/relay/transport.py": "from gateway.store import keys\n",
    "gateway/store/__init__.py": "",
    "gateway/store/keys.py": "from gateway import errors\n",
    "runtime/__init__.py": "",
    "runtime/__main__.py": "from runtime.server import app\n",
    "runtime/server/__init__.py": "",
    "runtime/server/app.py": (
        "import wire\nfrom runtime.engine import factory\nfrom runtime.scheduling import continuous\n"
    ),
    "runtime/pool/__init__.py": "",
    "runtime/pool/models.py": "from runtime.engine import factory\nfrom runtime.scheduling import batches\n",
    "runtime/scheduling/batches.py": "",
    "runtime/torch_engine/__init__.py": "",
    "runtime/torch_engine/engine.py": (
        "import torch\nfrom runtime.engine import interface\nfrom runtime.scheduling import budget\n"
    ),
    "runtime/scheduling/__init__.py": "",
    "runtime/scheduling/budget.py": "",
    "runtime/scheduling/continuous.py": "from runtime.engine import interface\n",
    "runtime/engine/__init__.py": "",
    "runtime/engine/interface.py": "from runtime.output import completion\n",
    "runtime/engine/factory.py": (
        "from runtime.engine import interface\n\n\ndef create():\n"
        "    import runtime.torch_engine.engine\n    import runtime.weights.fastload\n"
    ),
    "runtime/output/__init__.py": "",
    "runtime/output/completion.py": "",
    "runtime/weights/__init__.py": "",
    "runtime/weights/cache.py": "",
    "runtime/weights/fastload.py": "import transformers\n",
    "loadtest/__init__.py": "",
    "loadtest/children.py": "import torch\nimport runtime.server.app\nfrom gateway.processes import free_port\n",
}

#: (module, the import added to it, the contracts it breaks). Indirect imports count: importing runtime or loadtest
#: from gateway also reaches torch through them, and the API reaches whatever the queue it imports reaches.
VIOLATIONS = {
    "gateway imports runtime": ("gateway/api/admission.py", "import runtime.server.app", {"layers", "slim"}),
    "runtime imports gateway": ("runtime/server/app.py", "from gateway import processes", {"layers"}),
    "wire imports gateway": ("wire/__init__.py", "import gateway.processes", {"layers"}),
    "wire imports runtime": ("wire/__init__.py", "from runtime.weights import cache", {"layers"}),
    "wire imports loadtest": ("wire/__init__.py", "import loadtest", {"layers"}),
    "gateway imports loadtest": ("gateway/processes.py", "from loadtest import children", {"layers", "slim"}),
    "runtime imports loadtest": ("runtime/__init__.py", "import loadtest.children", {"layers"}),
    "gateway imports torch": ("gateway/dispatch/loop.py", "import torch", {"slim"}),
    "wire imports transformers": ("wire/__init__.py", "from transformers import x", {"slim", "cheap"}),
    "the api imports a backend": ("gateway/api/admission.py", "from gateway.backends.local import backend", {"api"}),
    "the api reaches a backend through scaling": (
        "gateway/api/routes.py",
        "import gateway.scaling.autoscaler",
        {"api"},
    ),
    "the api imports the dispatch loop": ("gateway/api/routes.py", "import gateway.dispatch.loop", {"api"}),
    "a backend imports admission": ("gateway/backends/local/backend.py", "from gateway.api import admission", {"gw"}),
    "a backend imports the app": ("gateway/backends/__init__.py", "import gateway.app", {"gw"}),
    "a backend imports the status command": ("gateway/backends/__init__.py", "import gateway.status.report", {"gw"}),
    "scaling imports dispatch": ("gateway/scaling/autoscaler.py", "import gateway.dispatch.loop", {"gw"}),
    "dispatch imports scaling": ("gateway/dispatch/loop.py", "from gateway.scaling import autoscaler", {"gw"}),
    "replicas import a backend": ("gateway/replicas/endpoints.py", "import gateway.backends", {"gw"}),
    "the queue imports dispatch": ("gateway/queue/stream.py", "import gateway.dispatch.loop", {"gw", "api"}),
    "relay imports the queue": ("gateway/relay/transport.py", "from gateway.queue import stream", {"gw"}),
    "store imports relay": ("gateway/store/keys.py", "from gateway.relay import transport", {"gw"}),
    "the server imports torch": ("runtime/server/app.py", "import torch", {"cheap"}),
    "the server imports the torch engine": ("runtime/server/app.py", "import runtime.torch_engine.engine", {"cheap"}),
    "a scheduler imports the torch engine": (
        "runtime/scheduling/continuous.py",
        "from runtime.torch_engine import engine",
        {"rt", "cheap"},
    ),
    "the pool imports the torch engine": ("runtime/pool/models.py", "import runtime.torch_engine.engine", {"cheap"}),
    "a scheduler imports the pool": ("runtime/scheduling/continuous.py", "import runtime.pool.models", {"rt"}),
    "output imports transformers": ("runtime/output/completion.py", "import transformers", {"cheap"}),
    "the output reaches torch through weights": (
        "runtime/output/completion.py",
        "import runtime.weights.fastload",
        {"cheap"},
    ),
    "the engine seam imports a scheduler": (
        "runtime/engine/interface.py",
        "import runtime.scheduling.continuous",
        {"rt"},
    ),
    "weights import output": ("runtime/weights/cache.py", "from runtime.output import completion", {"rt"}),
}
CONTRACT_IDS = {
    "layers": "layers",
    "gw": "gateway-layers",
    "api": "api-not-backends",
    "rt": "runtime-layers",
    "cheap": "runtime-cheap-import",
    "slim": "slim-gateway",
}


def _lint_imports(cwd: Path) -> tuple[int, str]:
    """`lint-imports` as `make lint` runs it, with the repository's contract, on the packages found in ``cwd``."""
    env = {**os.environ, "COLUMNS": "400", "NO_COLOR": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PYTHONPATH", None)
    done = subprocess.run(
        [str(LINT_IMPORTS), "--config", str(PYPROJECT), "--no-cache", "--no-logo"],
        check=False,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.returncode, done.stdout + done.stderr


def _verdicts(output: str) -> dict[str, str]:
    """{contract id: "KEPT" | "BROKEN"} from the summary lint-imports prints."""
    found: dict[str, str] = {}
    for contract_id, name in CONTRACTS.items():
        match = re.search(
            rf"^{re.escape(name)}\s+(KEPT|BROKEN)(?: \(\d+ ignored imports?\))?\s*$", output, flags=re.MULTILINE
        )
        assert match, f"no verdict for {name!r} in:\n{output}"
        found[contract_id] = match.group(1)
    return found


def _write_tree(root: Path, extra: tuple[str, str] | None = None) -> None:
    for module, source in TREE.items():
        path = root / module
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    if extra is not None:
        module, line = extra
        with (root / module).open("a") as file:
            file.write(line + "\n")


def test_the_contract_has_the_documented_rules() -> None:
    assert set(CONTRACTS) == set(CONTRACT_IDS.values())
    documented = (REPO / "docs" / "architecture.md").read_text().replace("\\|", "|")  # a | in a Markdown table
    for name in CONTRACTS.values():
        assert name in documented, f"docs/architecture.md does not name the contract {name!r}"


def test_a_tree_that_keeps_the_rules_passes(tmp_path: Path) -> None:
    _write_tree(tmp_path)
    returncode, output = _lint_imports(tmp_path)
    assert returncode == 0, output
    assert set(_verdicts(output).values()) == {"KEPT"}


@pytest.mark.parametrize("violation", sorted(VIOLATIONS))
def test_each_forbidden_import_breaks_its_contract(violation: str, tmp_path: Path) -> None:
    module, line, contracts = VIOLATIONS[violation]
    _write_tree(tmp_path, (module, line))
    returncode, output = _lint_imports(tmp_path)
    assert returncode != 0, output
    broken = {contract_id for contract_id, verdict in _verdicts(output).items() if verdict == "BROKEN"}
    assert broken == {CONTRACT_IDS[contract] for contract in contracts}, output


def test_the_repository_keeps_the_contract() -> None:
    returncode, output = _lint_imports(REPO)
    assert returncode == 0, output
