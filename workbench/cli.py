"""``python -m workbench ...``: thin subcommands over the package; each writes its summary to ``--json PATH``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import pandas as pd

NEXT_STEPS = """Next:
  make lab    JupyterLab on the notebooks (notebooks/01_calibration_profiling.ipynb first)
  make ui     MLflow UI on http://127.0.0.1:5000 (runs table: #/experiments/<id>/runs)
  python -m workbench quantize --model digits_resnet --plan uniform:w4a8:per_group:g16
"""


def _write_json(path: str | None, payload: dict[str, Any]) -> None:
    if path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(payload, indent=2, default=str) + "\n")


def _print_table(df: pd.DataFrame) -> None:
    with pd.option_context(
        "display.max_columns", 30, "display.width", 160, "display.float_format", "{:.4g}".format
    ):
        print(df.to_string(index=False))


def _task_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", default="digits_resnet", help="zoo model (digits_cnn, digits_resnet) or torchvision name"
    )
    p.add_argument(
        "--dataset", choices=["cifar10", "imagefolder"], help="torchvision dataset on disk (default: digits)"
    )
    p.add_argument("--data-root", help="folder holding --dataset (nothing is downloaded)")
    p.add_argument("--weights", help="state_dict file for a torchvision model")
    p.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    p.add_argument("--json", metavar="PATH", help="write the result summary as JSON to PATH")
    p.add_argument(
        "--overwrite", action="store_true", help="replace existing output files (--json, --csv, --out)"
    )


def _task(args: argparse.Namespace, *, retrain: bool = False):
    from workbench.pipeline import make_task

    return make_task(
        args.model, dataset=args.dataset, data_root=args.data_root, weights=args.weights, retrain=retrain
    )


def cmd_train(args: argparse.Namespace) -> dict[str, Any]:
    from workbench import tracking

    task = _task(args, retrain=args.retrain)
    with tracking.start_run(
        "train", run_name=f"train-{args.model}", enabled=False if args.no_track else None
    ) as run:
        acc = {s: task.evaluate(split=s) for s in ("val", "test")}
        run.log_params({"model": args.model, "source": task.info.get("source", "user")})
        run.log_metrics({f"{s}_accuracy": v for s, v in acc.items()})
        if task.info.get("history"):
            run.log_dataframe(pd.DataFrame(task.info["history"]), "history")
    info = {
        k: v for k, v in task.info.items() if isinstance(v, (str, int, float, bool, dict, list, type(None)))
    }
    result = {"model": args.model, "val_accuracy": acc["val"], "test_accuracy": acc["test"], "info": info}
    print(
        f"{args.model}: val accuracy {acc['val']:.4f}, test accuracy {acc['test']:.4f} ({info.get('source', '')})"
    )
    return result


def cmd_profile(args: argparse.Namespace) -> dict[str, Any]:
    from workbench import tracking
    from workbench.profiling import ProfileConfig, profile_model, profile_summary

    task = _task(args)
    config = ProfileConfig(max_batches=args.batches, layers=args.layers, latency_repeats=args.repeats)
    with tracking.start_run(
        "profile", run_name=f"profile-{args.model}", params=config, enabled=False if args.no_track else None
    ) as run:
        df = profile_model(task.model, task.calib_loader, config=config)
        summary = profile_summary(df)
        run.log_dataframe(df, "profile")
        run.log_metrics({k: v for k, v in summary.items() if isinstance(v, (int, float))})
    if args.csv:
        df.to_csv(args.csv, index=False)
    cols = [
        c
        for c in (
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
        if c in df
    ]
    _print_table(df[cols])
    return {"model": args.model, "summary": summary, "layers": df.to_dict(orient="records")}


def cmd_quantize(args: argparse.Namespace) -> dict[str, Any]:
    from workbench import tracking
    from workbench.pipeline import evaluate_plan, resolve_plan, results_table

    task = _task(args)
    plan = resolve_plan(args.plan, task.model)
    with tracking.start_run(
        "quantize",
        run_name=f"quantize-{args.model}",
        params={"model": args.model, "plan": str(args.plan)},
        enabled=False if args.no_track else None,
    ) as run:
        res = evaluate_plan(task, plan, name=str(args.plan), packed_path=args.out, overwrite=args.overwrite)
        run.log_plan(plan)
        run.log_metrics({k: v for k, v in res.to_dict().items() if isinstance(v, (int, float))})
    _print_table(results_table([res]))
    if args.out:
        print(f"packed model written to {args.out} ({res.packed_bytes} bytes)")
    return {"model": args.model, "plan_source": str(args.plan), **res.to_dict(), "plan": plan.to_dict()}


def cmd_pipeline(args: argparse.Namespace) -> dict[str, Any]:
    from workbench.pipeline import PipelineConfig, run_pipeline

    config = PipelineConfig(
        model=args.model,
        dataset=args.dataset,
        data_root=args.data_root,
        weights=args.weights,
        track=not args.no_track,
    )
    result = run_pipeline(config)
    print(f"\nEnd-to-end pipeline on {args.model} (test split)")
    _print_table(result.table)
    if result.run_id:
        print(f"\nMLflow run {result.run_id}")
    print("\n" + NEXT_STEPS)
    return {"model": args.model, **result.to_dict()}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="workbench", description="Adaptive mixed-precision quantization workbench"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a zoo model on digits (or load it from the cache)")
    _task_args(p)
    p.add_argument("--retrain", action="store_true", help="train again even if a cached model exists")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("profile", help="per-layer cost, latency, activation and weight statistics")
    _task_args(p)
    p.add_argument("--batches", type=int, default=4, help="calibration batches for activation statistics")
    p.add_argument("--layers", choices=["quantizable", "leaf"], default="quantizable")
    p.add_argument("--repeats", type=int, default=7, help="latency repeats (median)")
    p.add_argument("--csv", help="also write the per-layer table as CSV")
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser("quantize", help="quantize with a plan and measure accuracy and size")
    _task_args(p)
    p.add_argument("--plan", required=True, help="plan JSON file or shorthand, e.g. uniform:w4a8:per_channel")
    p.add_argument("--out", help="write the packed low-bit model here (.wbq)")
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("pipeline", help="end-to-end: train/load, profile, FP32 vs INT8 vs INT4")
    _task_args(p)
    p.set_defaults(func=cmd_pipeline)
    return parser


def _check_outputs(args: argparse.Namespace) -> None:
    """Refuse to replace an existing output file unless --overwrite was given."""
    for opt in ("json", "csv", "out"):
        path = getattr(args, opt, None)
        if path and Path(path).exists() and not args.overwrite:
            raise FileExistsError(f"--{opt} {path} exists; pass --overwrite to replace it")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _check_outputs(args)
        result = args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    _write_json(args.json, {"command": args.command, **result})
    return 0
