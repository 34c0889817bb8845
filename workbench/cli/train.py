"""``workbench train``: train a zoo model on digits (or load it from the cache) and report its accuracy."""

from __future__ import annotations

import argparse
from typing import Any

import pandas as pd

from workbench.cli.common import add_task_args, load_task, tracking_flag


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a zoo model on digits (or load it from the cache)")
    add_task_args(p)
    p.add_argument("--retrain", action="store_true", help="train again even if a cached model exists")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from workbench import tracking

    task = load_task(args, retrain=args.retrain)
    acc = {s: task.evaluate(split=s) for s in ("val", "test")}
    history = task.info.get("history")
    tracking.log_stage(
        "train",
        metrics={f"{s}_accuracy": v for s, v in acc.items()},
        params={"model": args.model, "source": task.info.get("source", "user")},
        tables={"history": pd.DataFrame(history) if history else None},
        run_name=f"train-{args.model}",
        enabled=tracking_flag(args),
    )
    info = {
        k: v for k, v in task.info.items() if isinstance(v, (str, int, float, bool, dict, list, type(None)))
    }
    result = {"model": args.model, "val_accuracy": acc["val"], "test_accuracy": acc["test"], "info": info}
    print(
        f"{args.model}: val accuracy {acc['val']:.4f}, test accuracy {acc['test']:.4f} ({info.get('source', '')})"
    )
    return result
