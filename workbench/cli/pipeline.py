"""``workbench pipeline``: end to end on a zoo / torchvision model (:func:`workbench.pipeline.run_pipeline`)."""

from __future__ import annotations

import argparse
from typing import Any

from workbench.cli.common import add_task_args, config_from_args, print_table

NEXT_STEPS = """Next:
  make lab    JupyterLab on the notebooks (notebooks/01_calibration_profiling.ipynb first)
  make ui     MLflow UI on http://127.0.0.1:5000 (runs table: #/experiments/<id>/runs)
  python -m workbench quantize --model digits_resnet --plan uniform:w4a8:per_group:g16
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pipeline", help="end-to-end: train/load, profile, FP32 vs INT8 vs INT4")
    add_task_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from workbench.pipeline import PipelineConfig, run_pipeline

    if getattr(args, "task", None):
        raise ValueError(
            "pipeline runs on zoo / torchvision models (--model); for a --task file run the stages: profile, "
            "sensitivity, quantize, search, ..."
        )
    config = config_from_args(
        PipelineConfig, args, ("model", "dataset", "data_root", "weights", "device"), track=not args.no_track
    )
    result = run_pipeline(config)
    print(f"\nEnd-to-end pipeline on {args.model} (test split)")
    print_table(result.table)
    print("\nstage seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in result.seconds.items()))
    if result.run_id:
        print(f"\nMLflow run {result.run_id}")
    print("\n" + NEXT_STEPS)
    return {"model": args.model, **result.to_dict()}
