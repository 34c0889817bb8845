"""``workbench predictor``: measure plans, fit accuracy-loss predictors and evaluate them by k-fold
(:mod:`workbench.predictor`)."""

from __future__ import annotations

import argparse
from typing import Any

from workbench.cli.common import (
    add_task_args,
    config_from_args,
    int_at_least,
    list_arg,
    load_task,
    print_table,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predictor", help="measure plans, fit accuracy-loss predictors, k-fold evaluation")
    add_task_args(p)
    p.add_argument(
        "--plans", type=int_at_least(1), default=300, help="plans to measure (half random, half stratified)"
    )
    list_arg(p, "--models", str, default=("ridge", "mlp", "gbt", "ensemble"), help="predictor models")
    p.add_argument("--folds", type=int_at_least(2), default=5, help="k of the k-fold evaluation (>= 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save", help="fit the best model on all plans and save it here")
    list_arg(p, "--w-bits", int, default=(2, 3, 4, 6, 8), help="weight bits of the measured plans")
    list_arg(p, "--a-bits", int, default=(8,), help="activation bits of the plans (32: weight-only)")
    list_arg(
        p,
        "--sens-metrics",
        str,
        help="sensitivity metrics behind the stratified plans and the features (default: the sensitivity "
        "command's; 'output_mse' alone is much faster on large models)",
    )
    list_arg(p, "--sens-w-bits", int, help="sensitivity probes' weight bits")
    list_arg(
        p,
        "--sens-a-bits",
        int,
        allow_empty=True,
        help="sensitivity probes' activation bits (none: skip them)",
    )
    p.set_defaults(func=run)


def _check_args(args: argparse.Namespace) -> None:
    """Every flag the run reads after minutes of work, checked at once: model names, plans for the folds."""
    from workbench.predictor.config import MIN_FIT_PLANS
    from workbench.predictor.evaluate import min_plans_for_folds
    from workbench.predictor.models import MODEL_NAMES

    unknown = [m for m in args.models if m not in MODEL_NAMES]
    if unknown:
        raise ValueError(f"--models: unknown predictor model(s) {unknown}; choose from {list(MODEL_NAMES)}")
    need = min_plans_for_folds(args.folds)
    if args.plans < need:
        raise ValueError(
            f"--plans {args.plans} is too few for --folds {args.folds}: give --plans >= {need} "
            f"({MIN_FIT_PLANS} plans to fit per fold)"
        )


def _sensitivity_config(args: argparse.Namespace, task=None):
    """The sensitivity config behind the plans and features (label-free metrics for a task without labels)."""
    from workbench.sensitivity import SensitivityConfig
    from workbench.sensitivity.batches import LABEL_FREE_METRICS, has_labels

    sens_kw: dict[str, Any] = {}
    if args.sens_metrics is not None:
        sens_kw["metrics"] = tuple(args.sens_metrics)
    elif task is not None and not has_labels(task):
        sens_kw["metrics"] = LABEL_FREE_METRICS
    if args.sens_w_bits is not None:
        sens_kw["w_bits"] = tuple(args.sens_w_bits)
    if args.sens_a_bits is not None:
        sens_kw["a_bits"] = tuple(args.sens_a_bits)
    return SensitivityConfig(**sens_kw)


def _sensitivity(args: argparse.Namespace, task):
    """The sensitivity result behind the plans and features (cached like the ``sensitivity`` command's)."""
    from workbench.sensitivity import analyze_sensitivity

    return analyze_sensitivity(task, _sensitivity_config(args, task), track=False)


def _summary(args: argparse.Namespace, table, n_plans: int) -> dict[str, Any]:
    """The best predictor of ``table`` (highest spearman) and every predictor's row."""
    best = table.sort_values("spearman", ascending=False).iloc[0]
    return {
        "model": args.model,
        "best_model": best["model"],
        "selected_by": f"highest mean k-fold spearman among {list(table['model'])} (same folds: optimistic)",
        "spearman": float(best["spearman"]),
        "kendall": float(best["kendall"]),
        "mae": float(best["mae"]),
        "n_train": int(best["n_train"]),
        "n_test": int(best["n_test"]),
        "plans_per_second": float(best["plans_per_second"]),
        "n_plans": n_plans,
        "predictors": table.to_dict(orient="records"),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    from workbench.predictor import (
        AccuracyPredictor,
        PlanDatasetConfig,
        PlanFeaturizer,
        build_plan_dataset,
        evaluate_predictors,
    )

    _check_args(args)
    _sensitivity_config(args)  # every flag checked before the task loads
    n_random = args.plans // 2
    config = config_from_args(
        PlanDatasetConfig,
        args,
        ("w_bits", "a_bits", "seed"),
        n_random=n_random,
        n_stratified=args.plans - n_random,
    )
    task = load_task(args)
    sens = _sensitivity(args, task)
    dataset = build_plan_dataset(task, sens, config, track=not args.no_track)
    featurizer = PlanFeaturizer.fit(task, sens, w_bits=config.w_bits, a_bits=config.a_bits)
    table = evaluate_predictors(
        dataset, featurizer, models=tuple(args.models), k=args.folds, seed=args.seed, track=not args.no_track
    )
    print_table(table)
    result = _summary(args, table, len(dataset))
    if args.save:
        best = result["best_model"]
        predictor = AccuracyPredictor.fit(dataset, featurizer, model=str(best), seed=args.seed)
        predictor.save(args.save, overwrite=args.overwrite)
        result["saved"] = args.save
    return result
