"""PNG plots for ``--out``. matplotlib is imported here only, and only when a plot is written (it is slow to
import), with the non-interactive Agg backend so no display is needed."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.ticker import ScalarFormatter

    from loadtest.results import Phase, PolicyResult, ReplayResult

__all__ = [
    "plot_batching",
    "plot_coldstart",
    "plot_continuous",
    "plot_overhead",
    "plot_pareto",
    "plot_pool",
    "plot_replay",
    "plot_simulation",
]

_DPI = 90


def _figure(rows: int, height: float, sharex: bool = True) -> tuple[Figure, list[Axes]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(rows, 1, figsize=(9, height), sharex=sharex, squeeze=False)
    return figure, [row[0] for row in axes]


def _save(figure: Figure, path: Path) -> None:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=_DPI)
    plt.close(figure)


def plot_replay(result: ReplayResult, path: Path) -> None:
    """Latency of each request over the time it was sent (warm, cold, failed), above each model's replicas."""
    figure, (latency, replicas) = _figure(2, 6.0)
    groups = {
        "warm": [r for r in result.records if r.outcome.ok and not r.cold],
        "waited on a cold start": [r for r in result.records if r.outcome.ok and r.cold],
        "failed": [r for r in result.records if not r.outcome.ok],
    }
    for (label, records), colour in zip(groups.items(), ("tab:blue", "tab:orange", "tab:red"), strict=True):
        if records:
            latency.scatter([r.sent_s for r in records], [r.outcome.latency_s for r in records], s=6, c=colour,
                            label=f"{label} ({len(records)})")  # fmt: skip
    latency.set_yscale("log")
    latency.yaxis.set_major_formatter(_plain())
    latency.set_ylabel("latency (s)")
    latency.legend(loc="best", fontsize="small", framealpha=0.8)
    latency.grid(alpha=0.3)
    top = 1.0
    for model in result.models:
        samples = [s for s in result.samples if s.model == model]
        times = [s.t_s for s in samples]
        (line,) = replicas.step(times, [s.ready for s in samples], where="post", label=f"{model} ready")
        replicas.step(times, [s.desired for s in samples], where="post", linestyle="--", color=line.get_color(),
                      alpha=0.6, label=f"{model} desired")  # fmt: skip
        top = max([top, *(s.desired for s in samples)])
    _integer_axis(replicas, top)
    replicas.set_ylabel("replicas")
    replicas.set_xlabel("time since start of replay (s)")
    replicas.legend(loc="upper left", fontsize="small", ncol=4, framealpha=0.8)
    replicas.grid(alpha=0.3)
    _save(figure, path)


def _plain() -> ScalarFormatter:
    from matplotlib.ticker import ScalarFormatter

    formatter = ScalarFormatter()
    formatter.set_scientific(False)
    return formatter


def _integer_axis(axis: Axes, top: float) -> None:
    """Replica counts: whole numbers, with room above the highest for the legend."""
    from matplotlib.ticker import MaxNLocator

    axis.yaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_ylim(-0.1, top * 1.6 + 0.2)


def plot_simulation(results: Sequence[PolicyResult], arrivals: Sequence[float], path: Path) -> None:
    """Replicas over (trace) time for each policy, with the arrivals on top."""
    figure, axes = _figure(len(results) + 1, 1.3 * (len(results) + 1) + 1)
    axes[0].hist(arrivals, bins=min(200, max(10, len(arrivals) // 20)), color="tab:gray")
    axes[0].set_ylabel("arrivals")
    for axis, result in zip(axes[1:], results, strict=True):
        times = [t for t, _count in result.timeline]
        axis.step(times, [c for _t, c in result.timeline], where="post", color="tab:blue")
        axis.set_ylabel(result.name, rotation=0, ha="right", fontsize="small")
        _integer_axis(axis, max(c for _t, c in result.timeline))
        axis.text(0.99, 0.8, f"{result.replica_seconds / 3600:.2f} replica-h, {result.cold_start_requests} cold",
                  transform=axis.transAxes, ha="right", fontsize="small")  # fmt: skip
    axes[-1].set_xlabel("trace time (s)")
    _save(figure, path)


def plot_pareto(panels: Sequence[tuple[str, float, Sequence[PolicyResult]]], path: Path) -> None:
    """Replica-hours against requests that met a cold start, one panel per (trace, cold start): the fixed idle
    timeouts (grey, joined) and the adaptive keep-alive at each cold-start cost (blue). Lower left is better."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    traces = list(dict.fromkeys(trace for trace, _c, _r in panels))
    colds = sorted({c for _t, c, _r in panels})
    figure, grid = plt.subplots(len(traces), len(colds), figsize=(4.2 * len(colds), 3.2 * len(traces)), squeeze=False)
    for trace, cold, results in panels:
        axis = grid[traces.index(trace)][colds.index(cold)]
        fixed = sorted((r for r in results if r.cold_start_cost_s is None), key=lambda r: r.replica_seconds)
        adaptive = [r for r in results if r.cold_start_cost_s is not None]
        axis.plot([r.replica_seconds / 3600 for r in fixed], [r.cold_start_requests for r in fixed], "o-",
                  color="tab:gray", label="fixed")  # fmt: skip
        axis.plot([r.replica_seconds / 3600 for r in adaptive], [r.cold_start_requests for r in adaptive], "^",
                  color="tab:blue", label="adaptive")  # fmt: skip
        for r in [*fixed, *adaptive]:
            label = r.name.replace("idle ", "").replace("adaptive ", "a")
            axis.annotate(label, (r.replica_seconds / 3600, r.cold_start_requests), fontsize="x-small",
                          xytext=(3, 3), textcoords="offset points")  # fmt: skip
        axis.set_title(f"{trace}, cold start {cold:g} s", fontsize="small")
        axis.set_xlabel("replica-hours", fontsize="small")
        axis.set_ylabel("cold-start requests", fontsize="small")
        axis.grid(alpha=0.3)
    grid[0][0].legend(fontsize="x-small")
    _save(figure, path)


def plot_pool(panels: Sequence[tuple[str, float, Sequence[PolicyResult]]], path: Path) -> None:
    """One row per (trace, cold start): left, GPU replica-hours (log) against cold-start requests for one
    Deployment per model (squares) and the pool (grey: fixed pairs, blue: learned); right, the pool's model
    device-hours against wake requests. Lower left is better."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, grid = plt.subplots(len(panels), 2, figsize=(10, 3.4 * len(panels)), squeeze=False)
    for (trace, cold, results), (gpu, device) in zip(panels, grid, strict=True):
        groups = {
            "deployment per model": ([r for r in results if r.pool is None and r.min_replicas == 0], "s", "tab:gray"),
            "pool, fixed pair": ([r for r in results if r.pool is not None and r.cold_start_cost_s is None], "o",
                                 "tab:gray"),
            "pool, learned": ([r for r in results if r.pool is not None and r.cold_start_cost_s is not None], "^",
                              "tab:blue"),
        }  # fmt: skip
        for label, (rows, marker, colour) in groups.items():
            fill = "none" if marker == "s" else "full"
            gpu.plot([r.replica_seconds / 3600 for r in rows], [r.cold_start_requests for r in rows], marker,
                     color=colour, fillstyle=fill, linestyle="", label=label)  # fmt: skip
            pooled = [r.pool for r in rows if r.pool is not None]
            device.plot([p.device_model_seconds / 3600 for p in pooled], [p.wake_requests for p in pooled], marker,
                        color=colour, linestyle="")  # fmt: skip
            for r in rows:
                name = r.name.replace("pool ", "").replace("idle ", "").replace("adaptive ", "a")
                gpu.annotate(name, (r.replica_seconds / 3600, r.cold_start_requests), fontsize="x-small",
                             xytext=(3, 3), textcoords="offset points")  # fmt: skip
                if r.pool is not None:
                    device.annotate(name, (r.pool.device_model_seconds / 3600, r.pool.wake_requests),
                                    fontsize="x-small", xytext=(3, 3), textcoords="offset points")  # fmt: skip
        gpu.set_xscale("log")
        gpu.set_title(f"{trace}, cold start {cold:g} s", fontsize="small")
        gpu.set_xlabel("GPU replica-hours", fontsize="small")
        gpu.set_ylabel("cold-start requests", fontsize="small")
        device.set_title("pool: the device budget against wakes", fontsize="small")
        device.set_xlabel("model device-hours", fontsize="small")
        device.set_ylabel("wake requests", fontsize="small")
        for axis in (gpu, device):
            axis.grid(alpha=0.3)
    grid[0][0].legend(fontsize="x-small")
    _save(figure, path)


def plot_overhead(latencies: Mapping[str, Sequence[float]], path: Path) -> None:
    """Latency distributions (CDF) of the direct and the gateway side."""
    figure, (axis,) = _figure(1, 4.0)
    for label, values in latencies.items():
        ordered = sorted(v * 1000 for v in values)
        if ordered:
            axis.plot(ordered, [(i + 1) / len(ordered) for i in range(len(ordered))], label=label)
    axis.set_xscale("log")
    axis.xaxis.set_major_formatter(_plain())
    axis.set_xlabel("latency (ms)")
    axis.set_ylabel("fraction of requests")
    axis.grid(alpha=0.3)
    axis.legend()
    _save(figure, path)


def plot_batching(tokens_per_s: Mapping[str, float], path: Path) -> None:
    figure, (axis,) = _figure(1, 3.5)
    labels = list(tokens_per_s)
    axis.bar(labels, [tokens_per_s[k] for k in labels], color=["tab:gray", "tab:blue"][: len(labels)])
    axis.set_ylabel("completion tokens/s")
    axis.grid(alpha=0.3, axis="y")
    _save(figure, path)


def plot_coldstart(phases: Sequence[Phase], path: Path) -> None:
    """The cold start's phases as consecutive bars on one time line."""
    figure, (axis,) = _figure(1, 0.45 * len(phases) + 1.2)
    for row, phase in enumerate(reversed(phases)):
        axis.barh(row, phase.seconds, left=phase.start_s, color="tab:blue" if phase.main else "tab:gray")
        axis.text(phase.start_s + phase.seconds, row, f" {phase.seconds * 1000:.0f} ms", va="center", fontsize="small")
    axis.set_yticks(range(len(phases)), [p.name for p in reversed(phases)])
    axis.set_xlabel("seconds since the request was sent")
    axis.grid(alpha=0.3, axis="x")
    _save(figure, path)


def plot_continuous(rates: Sequence[Mapping[str, Any]], schedulers: Sequence[str], path: Path) -> None:
    """Throughput and TTFT p99 over the arrival rate, one line per scheduler (``bench continuous``'s rows)."""
    figure, (throughput, ttft) = _figure(2, 6.0)
    x = [row["rate_rps"] for row in rates]
    for scheduler in schedulers:
        throughput.plot(x, [row[f"tokens_per_s_{scheduler}"] or 0.0 for row in rates], marker="o", label=scheduler)
        ttft.plot(x, [row[f"ttft_p99_ms_{scheduler}"] or 0.0 for row in rates], marker="o", label=scheduler)
    throughput.set_ylabel("completion tokens/s")
    ttft.set_ylabel("TTFT p99 (ms)")
    ttft.set_yscale("log")
    ttft.yaxis.set_major_formatter(_plain())
    ttft.set_xlabel("arrival rate (requests/s)")
    for axis in (throughput, ttft):
        axis.grid(alpha=0.3)
        axis.legend()
    _save(figure, path)
