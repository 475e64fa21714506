"""How every command reports: human-readable tables on stdout, then exactly one JSON object as the LAST line.

With ``--out DIR`` the same JSON goes to ``DIR/summary.json`` next to the command's CSVs and PNG plots (and
``loadtest.cli`` then adds ``provenance`` to that file, ``loadtest.provenance``). Progress
bars and child-process chatter go to stderr or to log files, never to stdout, so ``tail -n 1`` always yields the
JSON.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

__all__ = ["Table", "clean", "finish", "write_csv"]


@dataclass
class Table:
    title: str
    headers: Sequence[str]
    rows: list[Sequence[object]] = field(default_factory=list)

    def add(self, *cells: object) -> None:
        self.rows.append(cells)

    def render(self) -> str:
        cells = [[_cell(c) for c in row] for row in self.rows]
        widths = [len(h) for h in self.headers]
        for row in cells:
            widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
        lines = [self.title, "  ".join(h.ljust(w) for h, w in zip(self.headers, widths, strict=True))]
        lines.append("  ".join("-" * w for w in widths))
        for row in cells:
            lines.append("  ".join(_align(c, w) for c, w in zip(row, widths, strict=True)))
        return "\n".join(lines)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "-"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.3g}" if abs(value) < 0.1 else f"{value:.2f}"
    return str(value)


def _align(text: str, width: int) -> str:
    numeric = text.replace(",", "").replace(".", "", 1).lstrip("-+").replace("e", "", 1).isdigit()
    return text.rjust(width) if numeric else text.ljust(width)


def clean(value: Any) -> Any:
    """JSON-safe: non-finite floats become null, the rest are rounded to 6 significant digits."""
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return float(f"{value:.6g}")
    if isinstance(value, Mapping):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    return value


def finish(tables: Iterable[Table], summary: Mapping[str, Any], out: Path | None, stream: TextIO = sys.stdout) -> None:
    """Print the tables, then the summary as the last line; write ``summary.json`` under ``out`` if given."""
    payload = clean(summary)
    for table in tables:
        print(table.render(), end="\n\n", file=stream)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "summary.json").write_text(json.dumps(payload, indent=2) + "\n")
        print(f"results in {out}/", file=stream)
    print(json.dumps(payload), file=stream, flush=True)


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for row in rows:
            writer.writerow(["" if c is None else c for c in row])
