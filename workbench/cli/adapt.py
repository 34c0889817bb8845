"""``workbench adapt``: per-input dynamic precision under a budget against the best static map
(:mod:`workbench.runtime`); flags map onto :class:`~workbench.runtime.RuntimeConfig`."""

from __future__ import annotations

import argparse
import math
from typing import Any

from workbench.cli.common import add_task_args, config_from_args, load_task, tracking_flag

CONFIG_FLAGS = ("w_bits", "a_bits", "groups", "budget_kind", "probe_samples", "seed")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("adapt", help="per-input dynamic precision under a budget vs the best static map")
    add_task_args(p)
    p.add_argument(
        "--budget", type=float, required=True, help="average cost per input, fraction of the all-8-bit map"
    )
    p.add_argument("--budget-kind", choices=["bops", "avg_bits", "latency"], default="bops")
    p.add_argument("--profile", help="hardware profile for --budget-kind latency")
    p.add_argument("--policy", choices=["rule", "learned", "cascade", "static"], default="rule")
    p.add_argument(
        "--shift", choices=["clean", "noise", "contrast", "blur"], default="clean", help="data variant"
    )
    p.add_argument("--split", choices=["val", "test"], default="test")
    p.add_argument("--w-bits", type=int, nargs="+", default=[2, 3, 4, 6, 8], help="candidate weight bits")
    p.add_argument("--a-bits", type=int, default=8, help="activation bits (per-input dynamic scales)")
    p.add_argument(
        "--groups", choices=["stage", "layer"], default="stage", help="layers sharing one decision"
    )
    p.add_argument("--probe-samples", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _summary(args: argparse.Namespace, cfg, ev) -> dict[str, Any]:
    """The policy's row against the best static map within its cost and the oracle."""
    row = ev.table[ev.table["policy"] == args.policy].iloc[0]
    if math.isnan(row["accuracy"]):
        raise ValueError(row["note"])
    oracle = ev.table[ev.table["policy"] == "oracle"].iloc[0]
    sm = ev.static_maps[ev.static_maps["data"] == args.shift]
    match = sm[sm["map"] == row["static_map"]]
    static = match.iloc[0] if len(match) else sm.sort_values("cost").iloc[0]
    return {
        "model": args.model,
        "policy": args.policy,
        "data": args.shift,
        "split": args.split,
        "budget_kind": cfg.budget_kind,
        "budget_fraction": args.budget,
        "budget": float(row["budget"]),
        "fp32_accuracy": float(row["fp32_accuracy"]),
        "dynamic": {
            "accuracy": float(row["accuracy"]),
            "avg_bops": float(row["avg_bops"]),
            "avg_weight_bits": float(row["avg_weight_bits"]),
            "avg_cost": float(row["avg_cost"]),
            "overhead_fraction": float(row["overhead_fraction"]),
            "overrides": int(row["overrides"]),
        },
        "static": {
            "accuracy": float(static["accuracy"]),
            "avg_bops": float(static["bops"]),
            "avg_weight_bits": float(static["avg_bits"]),
            "avg_cost": float(static["cost"]),
            "map": static["map"],
        },
        "cost_saving_at_equal_accuracy": float(row["cost_saving_at_equal_accuracy"]),
        "oracle": {
            "accuracy": float(oracle["accuracy"]),
            "avg_bops": float(oracle["avg_bops"]),
            "avg_weight_bits": float(oracle["avg_weight_bits"]),
            "note": oracle["note"],
        },
        "ladder": ev.info["ladder"],
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    from workbench import tracking
    from workbench.runtime import RuntimeConfig, evaluate_runtime

    cfg = config_from_args(RuntimeConfig, args, CONFIG_FLAGS)
    if not 0 < args.budget <= 1:
        raise ValueError(
            f"--budget {args.budget} must be a fraction in (0, 1] of the all-{max(cfg.w_bits)}-bit cost"
        )
    task = load_task(args)  # after the flags are checked
    ev = evaluate_runtime(
        task,
        budgets=(args.budget,),
        policies=(args.policy,),
        shifts=(args.shift,),
        config=cfg,
        profile=args.profile,
        split=args.split,
        progress=not args.quiet,
        track=False,  # the run below holds the policy's summary against the static map
    )
    result = _summary(args, cfg, ev)
    tracking.log_stage(
        "runtime",
        metrics={
            **{f"dynamic_{k}": v for k, v in result["dynamic"].items()},
            **{f"static_{k}": v for k, v in result["static"].items() if k != "map"},
        },
        params={"model": args.model, "policy": args.policy, "budget": args.budget, "data": args.shift},
        tables={"runtime_table": ev.table},
        run_name=f"adapt-{args.model}-{args.policy}",
        enabled=tracking_flag(args),
    )
    d, st = result["dynamic"], result["static"]
    print(
        f"{args.model} on {args.shift} data, budget {args.budget:.2f} of the all-{max(cfg.w_bits)}-bit {cfg.budget_kind}: "
        f"dynamic ({args.policy}) accuracy {d['accuracy']:.4f} at {d['avg_bops']:.4g} BOPs / {d['avg_weight_bits']:.2f} "
        f"bits per input (overhead {100 * d['overhead_fraction']:.1f} % of inference); best static map within that "
        f"cost: accuracy {st['accuracy']:.4f} at {st['avg_bops']:.4g} BOPs ({st['map']})"
    )
    return result
