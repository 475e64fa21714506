"""Reads requirements/*.lock, the files `make lock` writes (uv pip compile with hashes): {lock: {package: version}}
and each pin's hashes, for the tests that check what installs from them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REQUIREMENTS = REPO / "requirements"
_PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>\S+)")


@dataclass(frozen=True)
class Pin:
    version: str
    hashes: tuple[str, ...]


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(path: Path) -> dict[str, Pin]:
    """A lock's pins; a pin's entry runs from its ``name==version`` line through its ``--hash`` continuations."""
    text = path.read_text().replace("\\\n", " ")
    pins: dict[str, Pin] = {}
    for line in text.splitlines():
        match = _PIN.match(line)
        if match:
            hashes = tuple(re.findall(r"--hash=sha256:([0-9a-f]{64})", line))
            pins[canonical(match["name"])] = Pin(match["version"], hashes)
    return pins


def read_locks() -> dict[str, dict[str, str]]:
    """{lock name without `.lock`: {canonical package name: pinned version}}."""
    return {
        path.name.removesuffix(".lock"): {name: pin.version for name, pin in read_pins(path).items()}
        for path in sorted(REQUIREMENTS.glob("*.lock"))
    }
