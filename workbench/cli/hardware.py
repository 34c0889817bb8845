"""``workbench hardware``: precision profiles (:mod:`workbench.hardware`): list them, show one, measure this
CPU into one, or estimate a plan's cost on some."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pandas as pd

from workbench.cli.common import add_task_args, config_from_args, int_at_least, load_task, print_table

ESTIMATE_COLUMNS = [
    "profile",
    "batch_size",
    "latency_ms",
    "fp32_latency_ms",
    "speedup",
    "energy_mj",
    "bytes_moved",
]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("hardware", help="precision profiles: list, show, measure this CPU, estimate a plan")
    add_task_args(p)
    p.add_argument("--measure", action="store_true", help="benchmark this CPU's kernels and write a profile")
    p.add_argument("--quick", action="store_true", help="with --measure: a small shape grid")
    p.add_argument("--name", default="cpu_measured", help="with --measure: the profile's name")
    p.add_argument("--out", help="with --measure: profile path (default data/profiles/<name>.json)")
    p.add_argument("--threads", type=int_at_least(1), help="torch threads (default: torch's)")
    p.add_argument("--batch-size", type=int_at_least(1), default=32)
    p.add_argument("--repeats", type=int_at_least(1), default=7, help="timed runs per shape (median)")
    p.add_argument("--engine", choices=["x86", "onednn", "fbgemm"], default="x86")
    p.add_argument("--show", metavar="PROFILE", help="print a profile (name or JSON path), validated")
    p.add_argument("--estimate", action="store_true", help="estimate --plan on each --profile")
    p.add_argument("--plan", help="with --estimate: plan JSON file or shorthand")
    p.add_argument("--profile", nargs="+", help="with --estimate: profile names or paths")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def profile_summary(prof) -> dict[str, Any]:
    """A profile's name, kind, device, cost model, file and precisions per op."""
    return {
        "name": prof.name,
        "kind": prof.kind,
        "device": prof.device,
        "cost_model": prof.cost_model,
        "path": prof.path,
        "precisions": {op: list(prof.precisions(op)) for op in prof.ops},
    }


def _measure(args: argparse.Namespace) -> dict[str, Any]:
    """``--measure``: benchmark this CPU's kernels and write the profile."""
    from workbench.hardware.measure import MeasureConfig, measure_profile
    from workbench.hardware.profile import user_profile_dir

    out = Path(args.out) if args.out else user_profile_dir() / f"{args.name}.json"
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    cfg = config_from_args(
        MeasureConfig, args, ("name", "batch_size", "threads", "repeats", "engine", "quick")
    )
    prof = measure_profile(cfg, progress=not args.quiet)
    prof.save(out, overwrite=args.overwrite)
    rows = [
        {"op": op, "precision": p, "macs_per_s": c.macs_per_s, "overhead_us": c.overhead_us}
        for op, t in prof.ops.items()
        for p, c in t.items()
    ]
    print_table(pd.DataFrame(rows))
    print(f"memory bandwidth {prof.memory.bandwidth_gbps:.1f} GB/s; profile written to {out}")
    return {"profile": prof.to_dict(), "path": str(out)}


def _estimate(args: argparse.Namespace) -> dict[str, Any]:
    """``--estimate``: the plan's latency, energy and bytes moved on each ``--profile`` against FP32."""
    from workbench.hardware.estimate import CostEstimator
    from workbench.hardware.profile import load_profile
    from workbench.pipeline import resolve_plan

    if not args.plan:
        raise ValueError("--estimate needs --plan (a plan JSON file or a shorthand such as uniform:w8a8)")
    for name in args.profile or ["cpu_measured"]:
        load_profile(name)  # a bad profile name or file fails before the task loads
    task = load_task(args)
    plan = resolve_plan(args.plan, task.model)
    rows = []
    for name in args.profile or ["cpu_measured"]:
        est = CostEstimator(task.model, task.example_input(), name, batch_size=args.batch_size)
        e, fp = est(plan), est(type(plan)({}))
        rows.append(
            {**e.to_dict(), "fp32_latency_ms": fp.latency_ms, "speedup": fp.latency_ms / e.latency_ms}
        )
    print_table(pd.DataFrame(rows)[ESTIMATE_COLUMNS])
    return {"model": args.model, "plan": plan.to_dict(), "estimates": rows}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from workbench.hardware.profile import PrecisionProfile, available_profiles, load_profile

    if args.measure:
        return _measure(args)
    if args.estimate:
        return _estimate(args)
    if args.show:
        prof = (
            PrecisionProfile.load(args.show) if Path(args.show).suffix == ".json" else load_profile(args.show)
        )
        print(prof.to_json())
        return {"profile": prof.to_dict()}
    rows = [profile_summary(load_profile(n)) for n in available_profiles()]
    print_table(pd.DataFrame([{**r, "precisions": r["precisions"].get("conv")} for r in rows]))
    return {"profiles": rows}
