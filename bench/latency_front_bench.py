"""The deployed (metric, latency) front of a latency-aware search against uniform fp32 / bf16 / int8 deployments.

Issue 25's third acceptance: a search whose latency objective is priced on per-layer costs measured in context
(``SearchConfig(profile="in_context", objectives=("accuracy", "latency"), latency_batch_size=B)``, space per layer:
int8 static W8A8 / W4A8, bf16 (W16A16), weight-only W4 / W8 on float activations), its front plans and the uniform
fp32 / bf16 / int8 (W8A8 per channel) plans deployed, timed side by side at batch B (round-robin, medians) and
scored on the test split with the task's metric (accuracy on digits, logit cosine to FP32 on EfficientNet-Lite1):
:func:`workbench.hardware.deployed_front.deploy_front`, which notebook 05 calls too.
Prints one JSON line per deployed plan and a markdown table; writes bench/out/latency_front_<model>.json.

Run: ``python bench/latency_front_bench.py --model digits_resnet|lite1 [--batch 8] [--budget 20] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from workbench.benchsuite import markdown_table
from workbench.benchsuite.machine import machine_info
from workbench.hardware.deployed_front import DeployedFrontConfig, deploy_front, front_plans
from workbench.hardware.layer_costs import IN_CONTEXT
from workbench.pipeline import prepare_search
from workbench.quant import QuantPlan
from workbench.search import SearchConfig, SpaceConfig, run_search

ROOT = Path(__file__).resolve().parents[1]


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
    # fp32 too: the fastest kernel on a CPU without int8 dot-product or bf16 instructions
    space = SpaceConfig(w_bits=(4, 8, 16, 32), a_bits=(8, 16, 32))
    cfg = SearchConfig(strategy=args.strategy, budget=args.budget, objectives=("accuracy", "latency"),
                       ilp_cost=args.ilp_cost,
                       profile=IN_CONTEXT, latency_batch_size=args.batch, space=space, storage=":memory:",
                       track=False, progress=True, final_split=None, seed=args.seed)  # fmt: skip
    t0 = time.perf_counter()
    sensitivity, predictor = prepare_search(task, cfg)
    result = run_search(task, cfg, sensitivity=sensitivity, predictor=predictor)
    seconds = time.perf_counter() - t0
    plans, estimated = front_plans(result, batch_size=args.batch)
    info = {"search_seconds": seconds, "real_evaluations": result.real_evaluations, "estimated_ms": estimated,
            "stage_seconds": result.info.get("stage_seconds")}  # fmt: skip
    return plans, info


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
    plans, info = searched_plans(task, args)
    cfg = DeployedFrontConfig(batch_size=args.batch, repeats=args.repeats, threads=args.threads)
    front = deploy_front(task, plans, estimated_ms=info["estimated_ms"], config=cfg)
    rows = front.table.to_dict("records")
    for row in rows:
        print(json.dumps(row), flush=True)
    info |= front.to_dict() | {"args": vars(args), "machine": machine_info(),
                                "seconds": time.perf_counter() - t_start, "verdicts": verdict_lines(front)}  # fmt: skip
    out = ROOT / "bench" / "out" / f"latency_front_{args.model}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(info, indent=1, default=str))
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    print("\n".join(markdown_table(rows, ["plan", "kernels", "metric", "measured_ms", "estimated_ms"], fmt)))
    print("\n".join(f"- {line}" for line in info["verdicts"]))
    print(f"search {info['search_seconds']:.0f} s, whole run {info['seconds']:.0f} s; wrote {out}")


def verdict_lines(front: Any) -> list[str]:
    """One line per uniform deployment: the searched plan that dominates or matches it, or that none does."""
    lines = []
    for v in front.verdicts.to_dict("records"):
        head = f"{v['uniform']} ({v['metric']:.4f}, {v['measured_ms']:.2f} ms)"
        lines.append(f"{head}: dominated or matched by {v['by']} ({v['by_metric']:.4f}, {v['by_measured_ms']:.2f} ms)"
                     if v["covered"] else f"{head}: NOT dominated by any searched plan")  # fmt: skip
    return lines


if __name__ == "__main__":
    main()
