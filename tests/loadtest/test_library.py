"""``bench library``: its workloads, its figures and its table, on made-up measurements, and its refusal of an
unknown workload (the end-to-end run is in test_bench.py)."""

from __future__ import annotations

import pytest

from loadtest import cli
from loadtest.library import Measured, split, summarise, table, workloads

pytestmark = pytest.mark.unit


def test_the_workloads_of_the_measurement_in_the_docs() -> None:
    shapes = {w.name: (len(w.requests), w.posts, w.tokens) for w in workloads()}
    assert shapes == {"16x128": (16, 1, 16 * 128), "64x32": (64, 4, 64 * 32), "mixed": (32, 8, 16 * 16 + 16 * 128)}
    assert [w.name for w in workloads(["mixed"])] == ["mixed"]
    mixed = workloads(["mixed"])[0]
    assert [len(post) for post in split(mixed.requests, mixed.posts)] == [4] * 8
    assert all(r.params.temperature == 0 for w in workloads() for r in w.requests)


def test_rates_and_equal_outputs_per_workload() -> None:
    (load,) = workloads(["64x32"])
    texts = {r.id: f"text of {r.id}" for r in load.requests}
    differs = texts | {"r0": "something else"}
    summary = summarise(
        [load],
        {"64x32": Measured(2.0, texts, 3.0)},
        {"64x32": Measured(1.0, texts, 1.5)},
        {"64x32": Measured(4.0, differs, 9.0)},
        {"torch": "2", "torch_threads": 2, "repeat": 3, "library_setup_s": 8.5},
    )
    row = summary["workloads"]["64x32"]
    assert (row["tokens_per_s_static"], row["tokens_per_s_continuous"], row["tokens_per_s_library"]) == (
        1024.0,
        2048.0,
        512.0,
    )
    assert (row["static_equal_continuous"], row["library_equal_continuous"]) == (64, 63)
    assert (row["library_first_run_s"], summary["library_setup_s"], summary["rows"]) == (9.0, 8.5, 16)
    rendered = table(summary).render()
    assert "static 64/64, library 63/64" in rendered and "best of 3" in rendered


def test_without_the_library_its_figures_are_null() -> None:
    (load,) = workloads(["16x128"])
    ours = {"16x128": Measured(1.0, {}, 1.0)}
    row = summarise([load], ours, ours, None, {"torch": "2", "torch_threads": 1, "repeat": 1})["workloads"]["16x128"]
    assert row["tokens_per_s_library"] is row["library_equal_continuous"] is row["library_first_run_s"] is None


def test_an_unknown_workload_is_refused_before_anything_loads(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["bench", "library", "--workloads", "64x32,huge"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "16x128, 64x32, mixed" in err
