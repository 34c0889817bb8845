"""``workbench profile``: per-layer cost, latency, activation and weight statistics (:mod:`workbench.profiling`)."""

from __future__ import annotations

import argparse
from typing import Any

from workbench.cli.common import add_task_args, config_from_args, load_task, print_table, tracking_flag

COLUMNS = (
    "layer",
    "type",
    "params",
    "macs",
    "latency_ms",
    "act_min",
    "act_max",
    "act_sparsity",
    "w_kurtosis",
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("profile", help="per-layer cost, latency, activation and weight statistics")
    add_task_args(p)
    p.add_argument(
        "--batches",
        dest="max_batches",
        metavar="BATCHES",
        type=int,
        default=4,
        help="calibration batches for activation statistics",
    )
    p.add_argument("--layers", choices=["quantizable", "leaf"], default="quantizable")
    p.add_argument(
        "--repeats",
        dest="latency_repeats",
        metavar="REPEATS",
        type=int,
        default=7,
        help="latency repeats (median)",
    )
    p.add_argument("--csv", help="also write the per-layer table as CSV")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from workbench import tracking
    from workbench.profiling import ProfileConfig, profile_model, profile_summary

    config = config_from_args(ProfileConfig, args, ("max_batches", "layers", "latency_repeats"))
    task = load_task(args)  # after the flags are checked
    df = profile_model(task.model, task.calib_loader, config=config)
    summary = profile_summary(df)
    tracking.log_stage(
        "profile",
        summary,
        params=config,
        tables={"profile": df},
        run_name=f"profile-{args.model}",
        enabled=tracking_flag(args),
    )
    if args.csv:
        df.to_csv(args.csv, index=False)
    print_table(df[[c for c in COLUMNS if c in df]])
    return {"model": args.model, "summary": summary, "layers": df.to_dict(orient="records")}
