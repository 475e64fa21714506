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

#: A miniature of the real layout that keeps the contract, with the imports the rules allow.
TREE = {
    "wire/__init__.py": "import pydantic\n",
    "gateway/__init__.py": "",
    "gateway/app.py": "from gateway import dispatchers, routes\n",
    "gateway/routes.py": "from gateway import service\n",
    "gateway/service.py": "import wire\nfrom gateway import scaling\n",
    "gateway/dispatch.py": "import wire\n",
    "gateway/dispatchers.py": "from gateway import dispatch\n",
    "gateway/scaling.py": "import redis\n",
    "gateway/processes.py": "",
    "gateway/backends/__init__.py": "",
    "gateway/backends/local.py": "import wire\nfrom gateway import processes, scaling\n",
    "runtime/__init__.py": "",
    "runtime/server.py": "import torch\nimport transformers\nimport wire\n",
    "loadtest/__init__.py": "",
    "loadtest/children.py": "import torch\nimport runtime.server\nfrom gateway.processes import free_port\n",
}

#: (module, the import added to it, the contracts it breaks). Importing runtime or loadtest from gateway also reaches
#: torch through them: indirect imports count.
VIOLATIONS = {
    "gateway imports runtime": ("gateway/service.py", "import runtime.server", {"layers", "slim"}),
    "runtime imports gateway": ("runtime/server.py", "from gateway import processes", {"layers"}),
    "wire imports gateway": ("wire/__init__.py", "import gateway.processes", {"layers"}),
    "wire imports runtime": ("wire/__init__.py", "from runtime import server", {"layers", "slim"}),
    "wire imports loadtest": ("wire/__init__.py", "import loadtest", {"layers"}),
    "gateway imports loadtest": ("gateway/processes.py", "from loadtest import children", {"layers", "slim"}),
    "runtime imports loadtest": ("runtime/__init__.py", "import loadtest.children", {"layers"}),
    "a backend imports the service": ("gateway/backends/local.py", "from gateway.service import x", {"backends"}),
    "a backend imports the app": ("gateway/backends/__init__.py", "import gateway.app", {"backends"}),
    "a backend reaches dispatch through scaling": ("gateway/scaling.py", "from gateway import dispatch", {"backends"}),
    "a backend runs dispatchers": ("gateway/backends/local.py", "import gateway.dispatchers", {"backends"}),
    "gateway imports torch": ("gateway/dispatch.py", "import torch", {"slim"}),
    "gateway imports transformers through wire": ("wire/__init__.py", "from transformers import x", {"slim"}),
}
CONTRACT_IDS = {"layers": "layers", "backends": "backends-below-request-path", "slim": "slim-gateway"}


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
        match = re.search(rf"^{re.escape(name)}\s+(KEPT|BROKEN)\s*$", output, flags=re.MULTILINE)
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
