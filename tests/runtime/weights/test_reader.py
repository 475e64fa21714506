"""``runtime.weights.reader`` against safetensors' own ``load_file``: the same tensors, bit for bit, however the reads
are
cut into chunks and threads; headers it cannot take fail with the file's name (or, for an unknown dtype, with the
error the load falls back on)."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest

from runtime.errors import CheckpointError, UnknownDtype

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.unit


def _mixed() -> dict[str, Any]:
    """Tensors of every common dtype and shape, a scalar and an empty one among them."""
    generator = torch.Generator().manual_seed(0)
    return {
        "big.weight": torch.randn(300, 70, generator=generator),
        "half": torch.randn(33, 5, generator=generator).half(),
        "brain": torch.randn(7, 9, generator=generator).bfloat16(),
        "double": torch.randn(3, generator=generator).double(),
        "ids": torch.arange(-50, 51, dtype=torch.int64),
        "small_ints": torch.arange(-8, 8, dtype=torch.int8),
        "bytes": torch.arange(0, 255, dtype=torch.uint8),
        "mask": torch.rand(13, generator=generator) > 0.5,
        "scalar": torch.tensor(3.5),
        "empty": torch.empty(0, 4),
    }


def _save(tensors: dict[str, Any], path: Path) -> Path:
    from safetensors.torch import save_file

    save_file(tensors, path, metadata={"format": "pt"})
    return path


def _as(dtype: Any, tensors: dict[str, Any]) -> dict[str, Any]:
    """What a load as ``dtype`` gives: floating-point tensors converted, the others as stored."""
    return {name: t.to(dtype) if t.is_floating_point() else t for name, t in tensors.items()}


def _assert_identical(ours: dict[str, Any], theirs: dict[str, Any]) -> None:
    assert ours.keys() == theirs.keys()
    for name, tensor in theirs.items():
        assert (ours[name].dtype, ours[name].shape, ours[name].device) == (tensor.dtype, tensor.shape, tensor.device)
        assert torch.equal(ours[name], tensor), name


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("chunk_bytes", [4096, 1000, 64 << 20])
def test_same_tensors_as_load_file_however_the_reads_are_cut(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, threads: int, chunk_bytes: int
) -> None:
    from safetensors.torch import load_file

    from runtime.weights import reader

    monkeypatch.setattr(reader, "CHUNK_BYTES", chunk_bytes)  # small: tensors split, chunks spanning several
    path = _save(_mixed(), tmp_path / "model.safetensors")
    ours = reader.read_checkpoint([path], torch.float32, torch.device("cpu"), threads)
    _assert_identical(ours, _as(torch.float32, load_file(path)))


def test_floating_point_tensors_are_converted_after_the_read(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from runtime.weights.reader import read_checkpoint

    path = _save(_mixed(), tmp_path / "model.safetensors")
    ours = read_checkpoint([path], torch.bfloat16, torch.device("cpu"), 2)
    _assert_identical(ours, _as(torch.bfloat16, load_file(path)))
    assert ours["ids"].dtype == torch.int64 and ours["mask"].dtype == torch.bool


def test_shards_are_read_together_and_a_name_in_two_fails(tmp_path: Path) -> None:
    from runtime.weights.reader import read_checkpoint

    tensors = _mixed()
    names = sorted(tensors)
    first = _save({k: tensors[k] for k in names[:4]}, tmp_path / "a.safetensors")
    second = _save({k: tensors[k] for k in names[4:]}, tmp_path / "b.safetensors")
    _assert_identical(
        read_checkpoint([first, second], torch.float32, torch.device("cpu"), 3), _as(torch.float32, tensors)
    )
    with pytest.raises(CheckpointError, match="more than one"):
        read_checkpoint([first, first], torch.float32, torch.device("cpu"), 1)


def _write_raw(path: Path, header: object, data: bytes = b"") -> Path:
    encoded = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data)
    return path


def test_a_truncated_file_fails_naming_it(tmp_path: Path) -> None:
    from runtime.weights.reader import read_checkpoint

    path = _save(_mixed(), tmp_path / "model.safetensors")
    with path.open("r+b") as handle:
        handle.truncate(path.stat().st_size - 100)
    with pytest.raises(
        CheckpointError, match=r"model\.safetensors is truncated: \w+ ends at byte \d+, the file has \d+"
    ):
        read_checkpoint([path], torch.float32, torch.device("cpu"), 2)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x01\x02", "not a safetensors file or is truncated"),
        (struct.pack("<Q", 1 << 40) + b"{}", "not a safetensors file or is truncated"),
        (struct.pack("<Q", 5) + b"{nope", "not JSON"),
        (struct.pack("<Q", 2) + b"[]", "not a JSON object"),
    ],
)
def test_a_header_that_is_not_one_fails(tmp_path: Path, content: bytes, message: str) -> None:
    from runtime.weights.reader import read_header

    path = tmp_path / "broken.safetensors"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        read_header(path)


@pytest.mark.parametrize(
    "entry",
    [
        {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 12]},  # 12 bytes cannot hold 2x2 float32
        {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]},
        {"dtype": "F32", "shape": [1], "data_offsets": [8, 4]},
        {"dtype": "F32", "shape": [1]},
    ],
)
def test_an_entry_whose_bytes_do_not_match_fails(tmp_path: Path, entry: dict[str, Any]) -> None:
    from runtime.weights.reader import read_header

    path = _write_raw(tmp_path / "odd.safetensors", {"w": entry}, bytes(16))
    with pytest.raises(CheckpointError, match=r"odd\.safetensors.* w"):
        read_header(path)


def test_an_unknown_dtype_is_its_own_error(tmp_path: Path) -> None:
    from runtime.weights.reader import read_header

    path = _write_raw(tmp_path / "new.safetensors", {"w": {"dtype": "F8_E8M0", "shape": [4], "data_offsets": [0, 4]}})
    with pytest.raises(UnknownDtype, match="F8_E8M0"):
        read_header(path)


def test_chunks_cover_every_byte_once_and_stop_at_gaps() -> None:
    from runtime.weights.reader import TensorEntry, plan_chunks

    sizes = [10, 0, 3000, 5, 5, 9000, 1]
    entries, at = [], 100
    for index, size in enumerate(sizes):
        at += 7 if index == 4 else 0  # one gap in the data
        entries.append(TensorEntry(f"t{index}", torch.uint8, (size,), at, size))
        at += size
    chunks = plan_chunks(3, entries, first=10, chunk_bytes=1024)
    covered: dict[int, int] = {}
    for chunk in chunks:
        assert chunk.fd == 3 and 0 < chunk.nbytes <= 1024
        offset = chunk.offset
        for piece in chunk.pieces:  # consecutive in the file
            entry = entries[piece.tensor - 10]
            assert entry.start + piece.at == offset
            assert covered.get(piece.tensor, 0) == piece.at  # each tensor's pieces in order, no overlap
            covered[piece.tensor] = piece.at + piece.length
            offset += piece.length
    assert covered == {index + 10: size for index, size in enumerate(sizes) if size}
    assert any(chunk.offset == entries[4].start for chunk in chunks)  # the gap starts a new read
