"""The deployed (metric, latency) front of a latency-aware search against uniform fp32 / bf16 / int8 deployments.

Issue 25's third acceptance: a search whose latency objective is priced on per-layer costs measured in context
(``SearchConfig(profile="in_context", objectives=("accuracy", "latency"), latency_batch_size=B)``, space per layer:
int8 static W8A8 / W4A8, bf16 (W16A16), weight-only W4 / W8 on float activations), its front plans and the uniform
fp32 / bf16 / int8 (W8A8 per channel) plans deployed with :func:`workbench.hardware.deploy.deploy` (the kernel menu
on), timed side by side at batch B (round-robin, medians) and scored on the test split with the task's metric
(accuracy on digits, logit cosine to FP32 on EfficientNet-Lite1), deployed model against the task's references.
Prints one JSON line per deployed plan and a markdown table; writes bench/out/latency_front_<model>.json.

Run: ``python bench/latency_front_bench.py --model digits_resnet|lite1 [--batch 8] [--budget 20] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from workbench.benchsuite import markdown_table
from workbench.benchsuite.machine import machine_info
from workbench.hardware.deploy import deploy, time_side_by_side
from workbench.hardware.layer_costs import IN_CONTEXT
from workbench.hardware.layer_links import deployed_kernels
from workbench.pipeline import prepare_search
from workbench.quant import QuantPlan
from workbench.search import SearchConfig, SpaceConfig, run_search

ROOT = Path(__file__).resolve().parents[1]
MATCH = 1.03  # latencies within 3 % are a tie: repeated medians of one deployment differ by that much here
UNIFORM = {"uniform fp32": None, "uniform bf16": "uniform:w16a16", "uniform int8": "uniform:w8a8:per_channel"}


def load(name: str) -> Any:
    if name == "digits_resnet":
        from workbench.tasks import load_task

        return load_task("digits_resnet", progress=False)
    if name == "lite1":
        from workbench.tasks.real import real_task

        return real_task("efficientnet_lite1")
    raise SystemExit(f"unknown model {name!r}; choose digits_resnet or lite1")


def searched_plans(task: Any, args: argparse.Namespace) -> tuple[dict[str, QuantPlan], dict[str, Any]]:
    """The front of the latency-aware search, named by their estimated latency."""
    space = SpaceConfig(w_bits=(4, 8, 16), a_bits=(8, 16))
    cfg = SearchConfig(strategy=args.strategy, budget=args.budget, objectives=("accuracy", "latency"),
                       ilp_cost=args.ilp_cost,
                       profile=IN_CONTEXT, latency_batch_size=args.batch, space=space, storage=":memory:",
                       track=False, progress=True, final_split=None, seed=args.seed)  # fmt: skip
    t0 = time.perf_counter()
    sensitivity, predictor = prepare_search(task, cfg)
    result = run_search(task, cfg, sensitivity=sensitivity, predictor=predictor)
    seconds = time.perf_counter() - t0
    front = result.front.sort_values(
        "latency_ms" if "latency_ms" in result.front else result.front.columns[0]
    )
    plans = {f"searched {i + 1}": QuantPlan.from_json(p) for i, p in enumerate(front["plan"])}
    found = {f"searched {i + 1}": {"val_metric": float(a), "estimated_ms_per_sample": float(ms)}
             for i, (a, ms) in enumerate(zip(front["accuracy"], front["latency_ms"], strict=True))}  # fmt: skip
    info = {"search_seconds": seconds, "real_evaluations": result.real_evaluations, "found": found,
            "stage_seconds": result.info.get("stage_seconds")}  # fmt: skip
    return plans, info


def _score(task: Any, dep: Any) -> float:
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = dep.engine
    try:
        return float(task.evaluate(dep.module, "test"))
    finally:
        torch.backends.quantized.engine = previous


def dominance(rows: list[dict[str, Any]]) -> list[str]:
    """For each uniform plan: a searched plan that dominates or matches it (metric >=, latency <= within the
    timing noise :data:`MATCH`), or that none does."""
    searched = [r for r in rows if r["plan"].startswith("searched")]
    lines = []
    for u in (r for r in rows if r["plan"].startswith("uniform")):
        better = [
            s for s in searched if s["metric"] >= u["metric"] and s["measured_ms"] <= u["measured_ms"] * MATCH
        ]
        if better:
            b = min(better, key=lambda s: s["measured_ms"])
            lines.append(f"{u['plan']} ({u['metric']:.4f}, {u['measured_ms']:.2f} ms): dominated or matched by "
                         f"{b['plan']} ({b['metric']:.4f}, {b['measured_ms']:.2f} ms)")  # fmt: skip
        else:
            lines.append(f"{u['plan']} ({u['metric']:.4f}, {u['measured_ms']:.2f} ms): NOT dominated by any "
                         "searched plan")  # fmt: skip
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="digits_resnet")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--budget", type=int, default=20, help="real evaluations of the search")
    ap.add_argument(
        "--strategy", default="ilp", help="ilp: latency-priced budgets; auto allocates weight bits"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ilp-cost", default="latency", help="the cost the allocation trades error against")
    ap.add_argument("--repeats", type=int, default=11)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    task = load(args.model)
    model = task.model.eval()
    plans, info = searched_plans(task, args)
    plans = {
        k: QuantPlan({}) if v is None else QuantPlan.from_shorthand(v, model) for k, v in UNIFORM.items()
    } | plans
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        deployed = {k: deploy(model, p, task.calib_loader) for k, p in plans.items()}
    x = task.example_input(args.batch)
    stats = time_side_by_side(deployed, x, repeats=args.repeats, warmup=2, threads=args.threads)
    rows = []
    for k, p in plans.items():
        kernels = pd.Series(deployed_kernels(model, p)).value_counts().sort_index()
        est = info["found"].get(k, {}).get("estimated_ms_per_sample")
        rows.append({"plan": k, "kernels": ", ".join(f"{n} {c}" for n, c in kernels.items()),
                     "metric": _score(task, deployed[k]), "measured_ms": stats[k].median_ms,
                     "estimated_ms": "" if est is None else est * args.batch})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    info |= {"args": vars(args), "machine": machine_info(), "seconds": time.perf_counter() - t_start,
             "metric_name": str(task.metric_name), "rows": rows, "verdicts": dominance(rows),
             "plans": {k: p.to_dict() for k, p in plans.items()}}  # fmt: skip
    out = ROOT / "bench" / "out" / f"latency_front_{args.model}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(info, indent=1))
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    print("\n".join(markdown_table(rows, ["plan", "kernels", "metric", "measured_ms", "estimated_ms"], fmt)))
    print("\n".join(f"- {line}" for line in info["verdicts"]))
    print(f"search {info['search_seconds']:.0f} s, whole run {info['seconds']:.0f} s; wrote {out}")


if __name__ == "__main__":
    main()
