"""The node-local weight cache: filled once, read afterwards, safe against concurrent fills and crashes."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from runtime.errors import CacheError
from runtime.weights import cache
from runtime.weights.cache import MARKER, CachedModel, materialise, parse_source, resolve
from tests.runtime.support import REPO_ROOT


def make_source(directory: Path, size_bytes: int = 3 * 1024 * 1024) -> Path:
    directory.mkdir(parents=True)
    (directory / "config.json").write_text('{"model_type": "llama"}')
    (directory / "model.safetensors").write_bytes(bytes(range(256)) * (size_bytes // 256))
    (directory / "sub").mkdir()
    (directory / "sub" / "tokenizer.json").write_text("{}")
    (directory / ".git").mkdir()
    (directory / ".git" / "HEAD").write_text("ref: refs/heads/main")
    return directory


def digest(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != MARKER
    }


@pytest.mark.unit
def test_first_resolve_copies_then_the_source_is_never_read_again(tmp_path: Path) -> None:
    source = make_source(tmp_path / "src" / "tiny")
    expected = {k: v for k, v in digest(source).items() if not k.startswith(".git")}
    first = materialise(str(source), tmp_path / "cache")
    assert not first.hit
    copied_files = [p for p in source.rglob("*") if p.is_file() and ".git" not in p.parts]
    assert first.bytes_copied == sum(p.stat().st_size for p in copied_files)
    assert digest(first.path) == expected
    assert json.loads((first.path / MARKER).read_text())["bytes"] == first.bytes_copied

    shutil.rmtree(source)
    second = materialise(str(source), tmp_path / "cache")
    assert (second.path, second.hit, second.bytes_copied) == (first.path, True, 0)
    assert resolve(str(source), tmp_path / "cache") == first.path
    assert digest(second.path) == expected


@pytest.mark.unit
def test_concurrent_resolves_in_threads_produce_one_intact_copy(tmp_path: Path) -> None:
    source = make_source(tmp_path / "src" / "tiny", size_bytes=16 * 1024 * 1024)
    results: list[CachedModel] = []
    barrier = threading.Barrier(4)

    def resolve_once() -> None:
        barrier.wait()
        results.append(materialise(str(source), tmp_path / "cache"))

    threads = [threading.Thread(target=resolve_once) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(results) == 4
    assert len({r.path for r in results}) == 1
    assert sorted(r.hit for r in results) == [False, True, True, True]
    assert digest(results[0].path) == {k: v for k, v in digest(source).items() if not k.startswith(".git")}
    assert list((tmp_path / "cache" / ".partial").iterdir()) == []


@pytest.mark.integration
def test_concurrent_resolves_in_processes_produce_one_intact_copy(tmp_path: Path) -> None:
    source = make_source(tmp_path / "src" / "tiny", size_bytes=32 * 1024 * 1024)
    code = (
        "import sys; from pathlib import Path; from runtime.weights.cache import materialise; "
        "r = materialise(sys.argv[1], Path(sys.argv[2])); print(r.hit, r.path)"
    )
    command = [sys.executable, "-c", code, str(source), str(tmp_path / "cache")]
    processes = [subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True) for _ in range(3)]
    outputs = [p.communicate(timeout=60)[0].split() for p in processes]
    assert all(p.returncode == 0 for p in processes)
    assert sorted(hit for hit, _ in outputs) == ["False", "True", "True"]
    paths = {path for _, path in outputs}
    assert len(paths) == 1
    assert digest(Path(paths.pop())) == {k: v for k, v in digest(source).items() if not k.startswith(".git")}


@pytest.mark.unit
def test_half_copied_leftovers_are_ignored_and_redone(tmp_path: Path) -> None:
    source = make_source(tmp_path / "src" / "tiny")
    cache = tmp_path / "cache"
    slug = parse_source(str(source)).slug
    crashed = cache / ".partial" / f"{slug}.abc123"
    crashed.mkdir(parents=True)
    (crashed / "model.safetensors").write_bytes(b"half")
    unmarked = cache / slug
    unmarked.mkdir()
    (unmarked / "model.safetensors").write_bytes(b"truncated")

    result = materialise(str(source), cache)
    assert not result.hit
    assert (result.path / "model.safetensors").read_bytes() == (source / "model.safetensors").read_bytes()
    assert not crashed.exists()
    assert (result.path / MARKER).is_file()


@pytest.mark.unit
def test_different_sources_get_different_slugs(tmp_path: Path) -> None:
    a = make_source(tmp_path / "a" / "model")
    b = make_source(tmp_path / "b" / "model")
    assert resolve(str(a), tmp_path / "cache") != resolve(str(b), tmp_path / "cache")


@pytest.mark.unit
@pytest.mark.parametrize(
    ("text", "kind", "location", "revision"),
    [
        ("Qwen/Qwen2.5-0.5B-Instruct", "hub", "Qwen/Qwen2.5-0.5B-Instruct", None),
        ("meta-llama/Llama-3.2-1B@refs/pr/3", "hub", "meta-llama/Llama-3.2-1B", "refs/pr/3"),
        ("/models/tiny", "local", "/models/tiny", None),
        ("./org/name", "local", str(Path("./org/name").absolute()), None),
    ],
)
def test_parse_source(text: str, kind: str, location: str, revision: str | None) -> None:
    source = parse_source(text)
    assert (source.kind, source.location, source.revision) == (kind, location, revision)
    assert "/" not in source.slug and not source.slug.startswith(".")


@pytest.mark.unit
def test_hub_slug_is_readable() -> None:
    assert parse_source("Qwen/Qwen2.5-0.5B@v1").slug.startswith("hf--Qwen--Qwen2.5-0.5B--v1-")


@pytest.mark.unit
def test_missing_local_source_is_a_cache_error(tmp_path: Path) -> None:
    with pytest.raises(CacheError, match="not a directory"):
        resolve(str(tmp_path / "nowhere"), tmp_path / "cache")
    assert list((tmp_path / "cache" / ".partial").iterdir()) == []


def test_command_line_fills_and_reports_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "weights"
    source.mkdir()
    (source / "model.safetensors").write_bytes(b"\1" * 8)
    assert cache.main([str(source), str(tmp_path / "cache")]) == 0
    assert "filled" in capsys.readouterr().out
    assert cache.main([str(source), str(tmp_path / "cache")]) == 0
    assert "hit" in capsys.readouterr().out
    assert cache.main([str(tmp_path / "missing"), str(tmp_path / "cache")]) == 1
    assert "is not a directory" in capsys.readouterr().err


# A hit is checked against the fill's record


def _flip_one_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.unit
@pytest.mark.security
@pytest.mark.parametrize(
    "tamper",
    [
        lambda model: (model / "model.safetensors").write_bytes(b"\0" * 10),  # truncated, or replaced
        lambda model: (model / "sub" / "tokenizer.json").write_text('{"added": true}'),  # grown
        lambda model: (model / "extra.py").write_text("import os"),  # a file added
        lambda model: (model / "config.json").unlink(),  # a file removed
        lambda model: (model / MARKER).write_text('{"source": "x"}'),  # a marker without its file list
    ],
    ids=["truncated", "grown", "added", "removed", "old-marker"],
)
def test_a_cache_that_does_not_match_its_record_is_filled_again(
    tmp_path: Path, tamper: Callable[[Path], object]
) -> None:
    source = make_source(tmp_path / "model")
    first = materialise(str(source), tmp_path / "cache")
    tamper(first.path)
    again = materialise(str(source), tmp_path / "cache")
    assert not again.hit  # the marker alone would have said "hit"
    assert digest(again.path) == {name: h for name, h in digest(source).items() if not name.startswith(".git")}
    assert materialise(str(source), tmp_path / "cache").hit  # and the refilled copy is a hit again


@pytest.mark.unit
@pytest.mark.security
def test_sha256_verification_catches_what_sizes_cannot(tmp_path: Path) -> None:
    source = make_source(tmp_path / "model")
    cached = materialise(str(source), tmp_path / "cache")
    record = json.loads((cached.path / MARKER).read_text())["files"]
    assert (
        record["model.safetensors"]["sha256"] == hashlib.sha256((source / "model.safetensors").read_bytes()).hexdigest()
    )
    _flip_one_byte(cached.path / "model.safetensors")  # same size, other bytes
    assert materialise(str(source), tmp_path / "cache", "size").hit  # the documented limit of the cheap check
    refilled = materialise(str(source), tmp_path / "cache", "sha256")
    assert not refilled.hit
    assert (refilled.path / "model.safetensors").read_bytes() == (source / "model.safetensors").read_bytes()
    assert materialise(str(source), tmp_path / "cache", "sha256").hit
