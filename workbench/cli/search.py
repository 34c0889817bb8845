"""``workbench search``: search per-layer bits / methods with Optuna, an RL controller or baselines
(:mod:`workbench.search`); flags map onto :class:`~workbench.search.SearchConfig` and its
:class:`~workbench.search.SpaceConfig`."""

from __future__ import annotations

import argparse
import json
from typing import Any

from workbench.cli.common import add_task_args, config_from_args, list_arg, load_task, print_table

FRONT_COLUMNS = [
    "label",
    "accuracy",
    "test_accuracy",
    "weight_bytes",
    "bops",
    "latency_ms",
    "space_avg_bits",
    "avg_weight_bits",
]
# flags named as SearchConfig's fields (the others are computed in _search_config)
CONFIG_FLAGS = (
    "strategy", "split", "max_trials", "ilp_cost", "profile", "latency_batch_size", "accuracy",
    "objectives", "seed", "max_weight_fraction", "max_size_bytes", "max_avg_weight_bits", "max_avg_mac_bits",
    "max_accuracy_drop", "complexity_penalty", "diversity_penalty", "screen_trials", "study_name", "storage",
    "resume", "workers", "sensitivity_metric",
)  # fmt: skip


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "search", help="search per-layer bits / methods with Optuna, an RL controller or baselines"
    )
    add_task_args(p)
    _add_trial_flags(p)
    _add_space_flags(p)
    _add_constraint_flags(p)
    _add_study_flags(p)
    p.set_defaults(func=run)


def _add_trial_flags(p: argparse.ArgumentParser) -> None:
    """Strategy, budget, splits, objectives and seed."""
    from workbench.search.objectives import ACCURACY_MODES, OBJECTIVES
    from workbench.search.study import STRATEGIES

    p.add_argument(
        "--strategy",
        choices=list(STRATEGIES),
        default="auto",
        help="auto (default): sensitivity-first allocation, then local moves; or a sampler / baseline",
    )
    p.add_argument(
        "--sens-metric",
        dest="sensitivity_metric",
        default="auto",
        help="sensitivity metric the allocations minimise (auto: an output error; omega for ilp when computed)",
    )
    p.add_argument(
        "--budget",
        type=int,
        help="real evaluations (trials with --accuracy predicted); default 40, or the stored one",
    )
    p.add_argument(
        "--split", default="val", choices=["calib", "val", "test", "train"], help="split searched on"
    )
    p.add_argument("--final-split", default="test", help="split the front is re-measured on ('none' to skip)")
    p.add_argument(
        "--max-trials", type=int, help="cap on trials (duplicates cost a trial, not an evaluation)"
    )
    p.add_argument("--ilp-cost", default="weight_size", choices=["weight_size", "size", "bops", "latency", "energy"],
                   help="cost the ILP / greedy baselines budget")  # fmt: skip
    p.add_argument("--accuracy", choices=list(ACCURACY_MODES), default="measured")
    list_arg(p, "--objectives", str, default=("accuracy", "weight_size"), help=f"from {list(OBJECTIVES)}")
    p.add_argument("--seed", type=int, default=0)


def _add_space_flags(p: argparse.ArgumentParser) -> None:
    """The search space (:class:`~workbench.search.SpaceConfig`): choices per layer, layers left out or tied."""
    list_arg(p, "--w-bits", int, default=(2, 3, 4, 6, 8, 16), help="e.g. 2,3,4,6,8,16 or 2 3 4 6 8 16")
    list_arg(p, "--a-bits", int, default=(8,), help="e.g. 4,6,8,16")
    list_arg(p, "--granularities", str, default=("per_channel",), help="per_channel,per_tensor,per_group")
    list_arg(p, "--methods", str, default=("quantize",), help="quantize,prune,lowrank,none")
    p.add_argument("--skip", nargs="*", default=[], help="layers left in float32")
    list_arg(
        p,
        "--include",
        str,
        help="glob patterns on layer names, comma-separated: only these layers are searched (the others stay "
        "float32), e.g. 'encoder.*,*.intermediate.dense'",
    )
    list_arg(
        p,
        "--exclude",
        str,
        help="glob patterns on layer names, comma-separated: layers left in float32, e.g. 'pooler*,classifier'",
    )
    p.add_argument("--fix8", nargs="*", default=[], help="layers fixed at w8a8 (e.g. the first and last)")
    p.add_argument(
        "--group",
        action="append",
        default=[],
        metavar="NAME=L1,L2",
        help="layers that share one choice (repeatable), e.g. res2=layer2.0.conv2,layer2.0.downsample.0",
    )
    p.add_argument("--residual-groups", action="store_true", help="residual partners share one choice")


def _add_constraint_flags(p: argparse.ArgumentParser) -> None:
    """Constraints, reward shaping, the predictor and the hypervolume reference."""
    p.add_argument("--max-weight-fraction", type=float, help="constraint: weight bytes / FP32 weight bytes")
    p.add_argument(
        "--max-avg-weight-bits",
        type=float,
        help="constraint: weight bits averaged over the searched layers' weights (element-weighted; a searched "
        "layer left float counts 32; layers outside the space do not count)",
    )
    p.add_argument(
        "--max-avg-mac-bits",
        type=float,
        help="constraint: weight bits averaged over the searched layers, weighted by their MACs (BOPs-like)",
    )
    p.add_argument("--max-size-bytes", type=int, help="constraint: whole-model bytes")
    p.add_argument("--max-accuracy-drop", type=float, help="constraint: accuracy drop in pp")
    p.add_argument("--complexity-penalty", type=float, default=0.0)
    p.add_argument("--diversity-penalty", type=float, default=0.0)
    p.add_argument(
        "--screen-trials", type=int, default=300, help="predictor trials of --accuracy multifidelity"
    )
    p.add_argument("--predictor", help="a saved predictor (python -m workbench predictor --save PATH)")
    p.add_argument(
        "--hv-size-fraction", type=float, default=0.25, help="hypervolume reference: size fraction"
    )
    p.add_argument(
        "--hv-max-drop", type=float, default=10.0, help="hypervolume reference: accuracy drop (pp)"
    )


def _add_study_flags(p: argparse.ArgumentParser) -> None:
    """The study (name, storage, resume, workers), warm start, latency profile and outputs."""
    p.add_argument(
        "--study",
        dest="study_name",
        metavar="STUDY",
        help="study name (default <model>-<strategy>-<accuracy>-s<seed>)",
    )
    p.add_argument("--storage", help="sqlite:///path.db, postgresql://user@host:port/db or :memory:")
    p.add_argument(
        "--warm-start",
        choices=["auto", "uniform", "greedy", "ilp", "aimet", "none"],
        default="auto",
        help="first trials of a sampler strategy: auto's allocated front (default) or a baseline's plans "
        "(counted in the budget); none: start cold",
    )
    p.add_argument(
        "--profile",
        help="hardware precision profile (name or JSON path) for the latency / energy objectives, or in_context: "
        "latency from the model's per-layer costs measured on this machine (deployed kernels, cached)",
    )
    p.add_argument(
        "--latency-batch-size",
        type=int,
        help="batch size of latency estimates (default: the profile's; 32 for in_context)",
    )
    p.add_argument("--resume", action="store_true", help="continue an existing study (e.g. after a crash)")
    p.add_argument("--join", action="store_true", help="add this process as a worker of an existing study")
    p.add_argument("--workers", type=int, default=1, help="worker processes on this machine")
    p.add_argument(
        "--worker-threads",
        "--threads",
        dest="worker_threads",
        type=int,
        help="torch threads of each worker and of the sensitivity pass (default: torch's; 1 with --workers = "
        "cores)",
    )
    p.add_argument(
        "--save-best",
        metavar="PLAN.json",
        help="write the front plan scoring highest on --split as a plan file (for quantize / qat / deploy --plan)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def parse_groups(specs: list[str]) -> dict[str, tuple[str, ...]] | None:
    """``NAME=layer,layer`` strings -> {NAME: layers}."""
    groups: dict[str, tuple[str, ...]] = {}
    for text in specs:
        name, sep, layers = text.partition("=")
        if not sep or not name or not layers:
            raise ValueError(f"--group {text!r}: expected NAME=layer,layer (module paths)")
        groups[name] = tuple(v.strip() for v in layers.split(",") if v.strip())
    return groups or None


def _space_config(args: argparse.Namespace):
    from workbench.search import SpaceConfig

    return config_from_args(
        SpaceConfig,
        args,
        ("w_bits", "a_bits", "granularities", "methods", "skip"),
        fixed={name: {"w_bits": 8, "a_bits": 8} for name in args.fix8},
        groups="residual" if args.residual_groups else parse_groups(args.group),
        include=args.include or None,
        exclude=args.exclude or (),
    )


def _budget(args: argparse.Namespace) -> int:
    """``--budget``, else the resumed study's stored budget, else 40."""
    budget = args.budget
    if budget is None and args.resume and args.study_name:
        from workbench.search.study import default_storage, stored_config

        stored = stored_config(args.storage or default_storage(), args.study_name)
        budget = stored.budget if stored is not None else None
    return budget if budget is not None else 40


def _search_config(args: argparse.Namespace):
    from workbench.search import SearchConfig
    from workbench.search.objectives import HypervolumeRef

    space = _space_config(args)
    return config_from_args(
        SearchConfig,
        args,
        CONFIG_FLAGS,
        budget=_budget(args),
        warm_start=None if args.warm_start == "none" else args.warm_start,
        worker_threads=args.worker_threads,
        final_split=None if args.final_split == "none" else args.final_split,
        track=not args.no_track,
        hv_ref=HypervolumeRef(size_fraction=args.hv_size_fraction, max_drop_pp=args.hv_max_drop),
        space=space,
        progress=not args.quiet,
    )


def _best(args: argparse.Namespace, result) -> dict[str, Any]:
    """The front plan scoring highest on the searched split (ties: the smaller), written to ``--save-best``."""
    best = result.best()
    plan = json.loads(best["plan"])
    out = {
        "label": best["label"],
        "trial": int(best["trial"]),
        "accuracy": float(best["accuracy"]),
        "avg_weight_bits": float(best["avg_weight_bits"]),
        "space_avg_bits": float(best["space_avg_bits"]),
        "weight_bytes": int(best["weight_bytes"]),
        "plan": plan,
    }
    if args.save_best:
        from workbench.quant import QuantPlan

        QuantPlan.from_dict(plan).save(args.save_best, overwrite=args.overwrite)
        out["saved"] = args.save_best
        print(
            f"best plan ({best['label']}, {best['avg_weight_bits']:.2f} weight bits) written to {args.save_best}"
        )
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    from workbench.pipeline import search_with_defaults

    config = _search_config(args)
    task = load_task(args)
    predictor = None
    if args.predictor:
        from workbench.predictor import AccuracyPredictor

        predictor = AccuracyPredictor.load(args.predictor)
    from workbench.ui.search import search_figures

    # the sensitivity result and the predictor (unless --predictor) the strategy needs: built with the defaults
    result = search_with_defaults(task, config, predictor=predictor, join=args.join, figures=search_figures)
    if not result.front.empty:
        print_table(result.front[[c for c in FRONT_COLUMNS if c in result.front]])
    print(
        f"study {result.study_name}: {len(result.trials)} trials, {result.real_evaluations} real evaluations, "
        f"hypervolume {result.hypervolume:.4f}, front of {len(result.front)} plans ({result.seconds:.1f} s)"
    )
    out = {"model": args.model, **result.to_dict(), "best": None}
    if not result.front.empty:
        out["best"] = _best(args, result)
    elif args.save_best:
        raise ValueError("the search found no feasible plan: nothing to write to --save-best")
    return out
