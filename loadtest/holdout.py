"""Scoring the adaptive keep-alive on traffic its constants were not tuned on.

The learner's constants (``gateway.scaling.keepalive``: ``MUST_SAVE``, ``MIN_GAPS``, ``WINDOW``,
``SHORTEST_GAP_S``) are frozen in the code. They were chosen looking at the published table: the traces in
``TUNED_TRACES`` at seed 0. ``simulate --seeds`` runs every trace at several seeds; a panel is *held out* when its
trace is not one of ``--tuned-traces``, or its seed is not one of ``--tuned-seeds`` and the trace depends on the seed
(a synthetic pattern, or requests spread over several models: the Azure trace for one model is the same trace
under every seed). The score says, per adaptive policy and per set (tuning, held out), on how many panels it beat
a fixed point, was beaten by one, and where it lay against the fixed line.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.scaling import keepalive
from loadtest.report import Table
from loadtest.trace import SYNTHETIC

__all__ = ["TUNED_TRACES", "Split", "add_holdout_arguments", "learner_constants", "score", "score_table"]

#: The traces of the published keep-alive table (docs/loadtest.md), which the learner's constants were tuned on.
TUNED_TRACES = ("azure", "periodic", "bursty", "poisson:1/60", "poisson:1/300", "diurnal:1/20")


@dataclass(frozen=True)
class Split:
    #: Every seed run.
    seeds: tuple[int, ...]
    tuned_seeds: frozenset[int]
    tuned_traces: frozenset[str]

    def held_out(self, trace: str, seed: int, models: int) -> bool:
        seeded = trace == "sporadic" or trace.partition(":")[0] in SYNTHETIC or models > 1
        return trace not in self.tuned_traces or (seeded and seed not in self.tuned_seeds)

    def describe(self) -> dict[str, Any]:
        return {
            "seeds": list(self.seeds),
            "tuned_seeds": sorted(self.tuned_seeds),
            "tuned_traces": sorted(self.tuned_traces),
        }


def add_holdout_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("held-out scoring")
    group.add_argument(
        "--seeds", default=None, metavar="N[,N...]", help="run every trace at each of these seeds. Default: --seed"
    )
    group.add_argument(
        "--tuned-seeds", default="0", metavar="N[,N...]", help="seeds the constants were tuned on. Default 0"
    )
    group.add_argument(
        "--tuned-traces",
        default=",".join(TUNED_TRACES),
        help=f"traces the constants were tuned on; any other is held out. Default {','.join(TUNED_TRACES)}",
    )


def split_from_args(args: argparse.Namespace) -> Split:
    seeds = _ints(args.seeds) if args.seeds else (args.seed,)
    return Split(
        seeds=seeds,
        tuned_seeds=frozenset(_ints(args.tuned_seeds)),
        tuned_traces=frozenset(t.strip() for t in args.tuned_traces.split(",") if t.strip()),
    )


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part.strip())


def learner_constants() -> dict[str, float]:
    """The frozen constants the adaptive rows were scored with."""
    return {
        "must_save": keepalive.MUST_SAVE,
        "min_gaps": keepalive.MIN_GAPS,
        "window": keepalive.WINDOW,
        "shortest_gap_s": keepalive.SHORTEST_GAP_S,
    }


def score(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per set (``tuning``, ``held-out``) and adaptive policy: panels, how many it beat a fixed point on, how many a
    fixed point beat it on, how many it lay below the fixed line on, and its median distance to that line."""
    scored = []
    for held_out in (False, True):
        adaptive = [r for r in rows if r["held_out"] == held_out and r["cold_start_cost_s"] is not None]
        for policy in dict.fromkeys(r["policy"] for r in adaptive):
            mine = [r for r in adaptive if r["policy"] == policy]
            lines = [r["vs_fixed_line"] for r in mine if r["vs_fixed_line"] is not None]
            scored.append(
                {
                    "set": "held-out" if held_out else "tuning",
                    "policy": policy,
                    "panels": len(mine),
                    "beats_a_fixed_point": sum(bool(r["beats"]) for r in mine),
                    "beaten_by_a_fixed_point": sum(bool(r["beaten_by"]) for r in mine),
                    "below_fixed_line": sum(line < 0 for line in lines),
                    "median_vs_fixed_line": statistics.median(lines) if lines else None,
                }
            )
    return scored


def score_table(scores: Sequence[Mapping[str, Any]], what: str = "adaptive keep-alive") -> Table:
    table = Table(
        f"{what}, frozen constants, by set (held out: trace or seed not tuned on)",
        ["set", "policy", "panels", "beats a fixed", "beaten by a fixed", "below line", "median vs line"],
    )
    for s in scores:
        line = s["median_vs_fixed_line"]
        table.add(s["set"], s["policy"], s["panels"], s["beats_a_fixed_point"], s["beaten_by_a_fixed_point"],
                  s["below_fixed_line"], None if line is None else f"{line:+.0%}")  # fmt: skip
    return table
