"""What ``bench coldstart`` loads (``--model`` or ``--model-size``, a random Llama built once per scratch
directory) and the weight readers' comparison that ``loadtest gpu`` runs, here on the CPU."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from loadtest import coldstart, pagecache, readers
from loadtest.cli import parser


def _coldstart_args(*argv: str) -> argparse.Namespace:
    return parser().parse_args(["bench", "coldstart", *argv])


@pytest.mark.unit
def test_model_size_and_model_are_parsed_and_exclusive(capsys: pytest.CaptureFixture[str]) -> None:
    args = _coldstart_args("--model-size", "140m", "--repeat", "3", "--device", "cpu")
    assert (args.model_size, args.model, args.repeat, args.device) == ("140m", None, 3, "cpu")
    assert _coldstart_args("--model", "some/dir").model == Path("some/dir")
    default = _coldstart_args()
    assert (default.model, default.model_size) == (None, None)  # the demo model
    with pytest.raises(SystemExit):
        _coldstart_args("--model", "some/dir", "--model-size", "tiny")
    assert "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _coldstart_args("--model-size", "huge")
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.integration
async def test_a_model_size_is_built_once_per_scratch_directory(tmp_path: Path) -> None:
    args = _coldstart_args("--model-size", "tiny")
    model = await coldstart._model(args, tmp_path)
    assert model == tmp_path / "llama-tiny"
    built = (model / "build.json").stat().st_mtime_ns
    assert (model / "model.safetensors").stat().st_size > 0
    assert await coldstart._model(args, tmp_path) == model
    assert (model / "build.json").stat().st_mtime_ns == built  # found, not built again


@pytest.mark.integration
async def test_readers_compared_on_the_same_files(tiny_llama: Path) -> None:
    result = await readers.compare_in_child(tiny_llama, "cpu", "float32", threads=2)
    assert result["bytes"] == (tiny_llama / "model.safetensors").stat().st_size
    assert result["raw_read_gbps"] > 0 and result["h2d_gbps"] is None  # no host-to-device copy on a CPU
    assert result["ours"]["gbps"] > 0 and result["read_threads"] == 2
    assert result["safetensors"]["gbps"] > 0 and result["safetensors"]["same"] is True
    for optional in ("fastsafetensors", "runai"):  # the fastload extra: a time where installed
        assert result[optional].get("same", True) is True
        assert "gbps" in result[optional] or result[optional]["error"] == "not installed"
    rendered = readers.table(result).render()
    assert "raw read" in rendered and "ours (2 threads)" in rendered


@pytest.mark.unit
def test_resident_bytes_follow_reads_and_evictions(tmp_path: Path) -> None:
    """``mincore`` sees what a read brings into the page cache and what eviction drops (clean pages only: a file
    just written is synced first, as the weight cache's files are long written when a cold start reads them)."""
    path = tmp_path / "weights.bin"
    path.write_bytes(os.urandom(40 << 20))
    with path.open("rb+") as handle:
        os.fsync(handle.fileno())
    pagecache.evict([path])
    assert pagecache.resident_bytes([path]) == 0
    assert pagecache.raw_read([path], threads=1)[0] == 40 << 20
    assert pagecache.resident_bytes([path]) == 40 << 20
    pagecache.evict([path])
    assert pagecache.resident_bytes([path]) == 0
    assert pagecache.raw_read([path], threads=3)[0] == 40 << 20  # three 16 MiB chunks on three threads
    assert pagecache.resident_bytes([path]) == 40 << 20
    (tmp_path / "empty").touch()
    assert pagecache.resident_bytes([tmp_path / "empty"]) == 0  # nothing to map
