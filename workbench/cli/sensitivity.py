"""``workbench sensitivity``: per-layer / per-channel sensitivity to each precision (:mod:`workbench.sensitivity`)."""

from __future__ import annotations

import argparse
from typing import Any

from workbench.cli.common import add_task_args, config_from_args, list_arg, load_task, print_table

AGREEMENT_PAIRS = (("omega", "acc_drop"), ("omega", "output_mse"), ("output_mse", "acc_drop"))


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sensitivity", help="per-layer / per-channel sensitivity to each precision")
    add_task_args(p)
    list_arg(p, "--w-bits", int, default=(2, 3, 4, 6, 8), help="candidate weight bits, e.g. 2,3,4,6,8")
    list_arg(
        p, "--a-bits", int, default=(4, 6, 8), allow_empty=True, help="candidate activation bits (none: skip)"
    )
    list_arg(
        p,
        "--metrics",
        str,
        help="metric names (default: output_mse,output_kl,acc_drop,hessian,fisher; on a task without labels "
        "the label-free output_mse,output_kl)",
    )
    list_arg(
        p,
        "--granularities",
        str,
        default=("per_channel",),
        help="weight probe granularities (default per_channel; per_tensor,per_channel probes both)",
    )
    list_arg(p, "--include", str, default=(), help="analyse only the layers matching these name patterns")
    list_arg(p, "--exclude", str, default=(), help="leave out the layers matching these name patterns")
    p.add_argument("--threads", dest="num_threads", type=int, help="torch threads during the analysis")
    p.add_argument(
        "--calib-batches", type=int, default=2, help="calibration batches for probes and the Hessian"
    )
    p.add_argument("--no-cache", action="store_true", help="recompute even if a cached result exists")
    p.add_argument("--csv", help="also write the tidy sensitivity table as CSV")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from workbench.sensitivity import SensitivityConfig, analyze_sensitivity, rank_agreement
    from workbench.sensitivity.batches import LABEL_FREE_METRICS, has_labels

    names = ("w_bits", "a_bits", "granularities", "calib_batches", "num_threads", "include", "exclude")
    config_from_args(SensitivityConfig, args, names)  # every flag checked before the task loads
    task = load_task(args)
    metrics = args.metrics or (SensitivityConfig().metrics if has_labels(task) else LABEL_FREE_METRICS)
    config = config_from_args(SensitivityConfig, args, names, metrics=tuple(metrics))
    result = analyze_sensitivity(task, config, cache=not args.no_cache, track=not args.no_track)
    if args.csv:
        result.table.to_csv(args.csv, index=False)
    summary: dict[str, Any] = {
        "model": args.model,
        "layers": result.layer_names,
        "metrics": result.metrics(),
        "rows": len(result.table),
        "timings_s": result.info.get("timings_s"),
        "source": result.info.get("source"),
        "rank_agreement": [],
    }
    for a, b in AGREEMENT_PAIRS:
        for bits in (2, 4):
            if {a, b} <= set(result.metrics()) and bits in config.w_bits:
                summary["rank_agreement"].append(rank_agreement(result, (a, bits), (b, bits)))
    rank_metric = "output_mse" if "output_mse" in result.metrics() else result.metrics()[0]
    ranking = result.ranking(rank_metric, bits=4 if 4 in config.w_bits else config.w_bits[0])
    print_table(ranking.head(20))
    summary["ranking"] = ranking.to_dict(orient="records")
    summary["layer_stats"] = result.layers.to_dict(orient="records")
    return summary
