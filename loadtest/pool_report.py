"""``simulate --pool``'s options, its table and the issue-26 target check: one pool replica for every model of the
trace (``loadtest.pool``) against one Deployment per model (``loadtest.simulate``)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping, Sequence
from typing import Any

from gateway.scaling.parking import HOST_PRICE
from gateway.settings import parse_duration_s
from loadtest.pool import PoolPolicy, PoolSettings, pool_policies
from loadtest.report import Table
from loadtest.results import PolicyResult

__all__ = ["add_pool_arguments", "pool_columns", "pool_policies_from_args", "pool_settings", "pool_table", "target"]

#: The target of issue 26: the learned pool uses at most this share of one-Deployment-per-model's GPU
#: replica-seconds at this fixed timeout...
TARGET_SHARE, TARGET_TIMEOUT_S = 1 / 3, 300.0


def add_pool_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("pool (--pool): every model in one pool replica, three-state keep-alive")
    group.add_argument("--pool", action="store_true", help="add the pool rows (and their table) to every panel")
    group.add_argument("--wake", type=float, default=1.0, metavar="S", help="a parked model's wake. Default 1")
    group.add_argument(
        "--load", type=float, default=None, metavar="S", help="an absent model's load into the running pool replica. "
        "Default: --cold-start",
    )  # fmt: skip
    group.add_argument("--device-models", type=int, default=8, help="models active at once. Default 8")
    group.add_argument("--host-models", type=int, default=None, help="models parked at once. Default: all")
    group.add_argument(
        "--park-afters", default="10s,60s,300s", help="fixed pairs: park after each of these. Default 10s,60s,300s"
    )
    group.add_argument(
        "--pool-idle-timeouts",
        default="300s,1800s,inf",
        help="fixed pairs: unload after each of these ('inf': never). Default 300s,1800s,inf",
    )
    group.add_argument(
        "--host-price",
        type=float,
        default=HOST_PRICE,
        help=f"a host-memory-second in device-seconds, for the learned pairs. Default {HOST_PRICE}",
    )


def _durations(text: str) -> list[float]:
    return [
        math.inf if t.strip() in ("inf", "never") else parse_duration_s(t.strip()) for t in text.split(",") if t.strip()
    ]


def pool_settings(args: argparse.Namespace, cold_start_s: float) -> PoolSettings:
    return PoolSettings(
        cold_start_s=cold_start_s,
        wake_s=args.wake,
        load_s=args.load if args.load is not None else cold_start_s,
        device_models=args.device_models,
        host_models=args.host_models,
        host_price=args.host_price,
        scale_interval_s=args.scale_interval,
        seconds_per_token=args.seconds_per_token,
        max_batch_size=args.max_batch_size,
        horizon_s=args.horizon,
    )


def pool_policies_from_args(args: argparse.Namespace, sim: PoolSettings, costs_s: Sequence[float]) -> list[PoolPolicy]:
    return pool_policies(_durations(args.park_afters), _durations(args.pool_idle_timeouts), costs_s, sim.wake_s,
                         sim.load_s)  # fmt: skip


def pool_columns(result: PolicyResult) -> dict[str, Any]:
    """The pool's figures for one row (a Deployment per model: one model per replica, nothing parked)."""
    pool = result.pool
    return {
        "kind": "deployment" if pool is None else "pool",
        "park_after_s": None if pool is None else pool.park_after_s,
        "device_model_seconds": result.replica_seconds if pool is None else pool.device_model_seconds,
        "host_memory_seconds": 0.0 if pool is None else pool.host_memory_seconds,
        "wake_requests": 0 if pool is None else pool.wake_requests,
        "wake_wait_s": 0.0 if pool is None else pool.wake_wait_s,
        "waiting_s": sum(result.waits_s),
        "loads": None if pool is None else pool.loads,
        "wakes": None if pool is None else pool.wakes,
        "parks": None if pool is None else pool.parks,
        "unloads": None if pool is None else pool.unloads,
        "replica_starts": None if pool is None else pool.replica_starts,
    }


def target(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per learned pool row of one panel: its GPU replica-seconds against one Deployment per model at
    ``TARGET_TIMEOUT_S`` (met: at most ``TARGET_SHARE``), its cold-start requests against theirs (met: no more),
    and whether it is Pareto-better than every fixed pool pair of the panel."""
    deployment = next((r for r in rows if r["kind"] == "deployment" and r["idle_timeout_s"] == TARGET_TIMEOUT_S
                       and r["cold_start_cost_s"] is None), None)  # fmt: skip
    fixed = [r["policy"] for r in rows if r["kind"] == "pool" and r["cold_start_cost_s"] is None]
    checked = []
    for row in (r for r in rows if r["kind"] == "pool" and r["cold_start_cost_s"] is not None):
        share = row["replica_seconds"] / deployment["replica_seconds"] if deployment else None
        missed = [name for name in fixed if name not in row["beats"]]
        checked.append(
            {
                "policy": row["policy"],
                "gpu_share_vs_deployments": share,
                "gpu_met": share is not None and share <= TARGET_SHARE,
                "cold_start_requests": row["cold_start_requests"],
                "deployment_cold_start_requests": deployment["cold_start_requests"] if deployment else None,
                "cold_met": deployment is not None and row["cold_start_requests"] <= deployment["cold_start_requests"],
                "pareto_better_than_every_fixed_pair": not missed,
                "not_better_than": missed,
            }
        )
    return checked


def pool_table(title: str, rows: Sequence[Mapping[str, Any]]) -> Table:
    table = Table(
        f"{title}: one pool replica vs one Deployment per model",
        ["policy", "GPU replica-s", "model device-s", "host-mem-s", "cold requests", "wake requests", "waiting s",
         "p99 wait s", "loads", "wakes", "Pareto-better than", "worse than"],
    )  # fmt: skip
    for row in rows:
        if row["kind"] == "deployment" and row["min_replicas"] > 0:
            continue  # always-on and one replica: in the keep-alive table above
        better, worse = row["beats"], row["beaten_by"]
        table.add(row["policy"] if row["kind"] == "pool" else f"deploy {row['policy']}", row["replica_seconds"],
                  row["device_model_seconds"], row["host_memory_seconds"], row["cold_start_requests"],
                  row["wake_requests"], row["waiting_s"], row["p99_wait_s"], row["loads"], row["wakes"],
                  None if better is None else _names(better), None if worse is None else _names(worse))  # fmt: skip
    return table


def _names(names: Sequence[str]) -> str:
    return ", ".join(n.removeprefix("pool ") for n in names) or "none"


def target_table(checks: Sequence[Mapping[str, Any]]) -> Table:
    table = Table(
        f"issue-26 target: learned pool <= {TARGET_SHARE:.2f} of the GPU replica-s of a Deployment per model at "
        f"{TARGET_TIMEOUT_S:g} s, no more cold requests, Pareto-better than every fixed pair",
        ["panel", "policy", "GPU share", "met", "cold requests", "deployments'", "met", "better than every pair",
         "not better than"],
    )  # fmt: skip
    for c in checks:
        share = c["gpu_share_vs_deployments"]
        table.add(c["panel"], c["policy"], None if share is None else f"{share:.1%}", c["gpu_met"],
                  c["cold_start_requests"], c["deployment_cold_start_requests"], c["cold_met"],
                  c["pareto_better_than_every_fixed_pair"], _names(c["not_better_than"]))  # fmt: skip
    return table
