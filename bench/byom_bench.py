"""Bring your own model: weight-only mixed precision on DigitsBert, fidelity vs element-weighted average bits.

The local transformer (``workbench.transformer_task``: a BERT-style encoder, dict inputs with attention masks,
an output object) is scored by a fidelity metric, the mean cosine similarity of its logits to the FP32 model's
logits. Every quantizable layer (word / position embeddings, the attention and feed-forward Linear layers, the
pooler and the classifier) is weight-only quantized (activations left in float, per-channel scales).

* **Uniform**: every layer at 8, 6, 5, 4 and 3 bits.
* **Searched mixed**: ``run_search`` (Optuna TPE, warm-started from the HAWQ-V3 ILP on label-free output-MSE
  sensitivities) over weight bits {2, 3, 4, 5, 6, 8} per layer under an element-weighted average-bits budget of
  4.0, 4.5, 5.0 and 6.0, one search per budget and seed. The search scores plans on the validation split; the
  plan it returns (best validation fidelity within the budget) is then measured on the test split.

A mixed plan beats uniform at a budget when its test fidelity is above the best uniform plan within the same
budget (uniform 4 for budget 4.5) for every seed; the stricter comparison against the straight line between the
two neighbouring uniform plans (4 and 5 bits for 4.5) is reported too. Writes its section of docs/BENCHMARKS.md
and bench/out/byom.json.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from workbench.benchsuite import markdown_table, splice_section
from workbench.quant import QuantPlan, QuantSpec
from workbench.quant.inputs import call_model, primary_output, split_batch
from workbench.quant.swap import quantize_model
from workbench.search import SearchConfig, SpaceConfig, run_search
from workbench.sensitivity import SensitivityConfig, analyze_sensitivity
from workbench.transformer_task import transformer_task

ROOT = Path(__file__).resolve().parents[1]
HEADING = "## Bring your own model: weight-only mixed precision on DigitsBert"
UNIFORM_BITS = (8, 6, 5, 4, 3)
BUDGETS = (4.0, 4.5, 5.0, 6.0)
SEARCH_BITS = (2, 3, 4, 5, 6, 8)


def _test_metrics(task: Any, plan: QuantPlan) -> dict[str, float]:
    """Fidelity of ``plan`` to FP32 on the test split: mean / min cosine of the logits, relative MSE, top-1
    agreement, and labelled accuracy."""
    qmodel = quantize_model(task.model, plan, task.calib_loader, seed=0).eval()
    cos_sum = n = agree = correct = 0
    cos_min = math.inf
    se = ref_se = 0.0
    with torch.no_grad():
        for batch in task.test_loader:
            x, y = split_batch(batch)
            ref = primary_output(call_model(task.model, x)).float()
            out = primary_output(call_model(qmodel, x)).float()
            cos = torch.nn.functional.cosine_similarity(out, ref, dim=1)
            cos_sum += float(cos.sum())
            cos_min = min(cos_min, float(cos.min()))
            se += float((out - ref).pow(2).sum())
            ref_se += float(ref.pow(2).sum())
            agree += int((out.argmax(1) == ref.argmax(1)).sum())
            correct += int((out.argmax(1) == y).sum())
            n += len(cos)
    return {
        "test_cosine": cos_sum / n,
        "test_min_cosine": cos_min,
        "test_rel_mse": se / ref_se,
        "test_top1_agreement": agree / n,
        "test_accuracy": correct / n,
    }


def _uniform_plan(task: Any, bits: int) -> QuantPlan:
    return QuantPlan.from_patterns(
        task.model, {"*": QuantSpec(w_bits=bits, a_bits=32, granularity="per_channel")}
    )


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) >= 1e-3 or v == 0 else f"{v:.3g}"
    return str(v)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--budget", type=int, default=48, help="measured plans per search")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--budgets", type=float, nargs="+", default=list(BUDGETS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--doc", default=str(ROOT / "docs" / "BENCHMARKS.md"))
    parser.add_argument("--json", default=str(ROOT / "bench" / "out" / "byom.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    task = transformer_task(metric="cosine")
    total_params = sum(p.numel() for p in task.model.parameters())

    uniform = []
    for bits in UNIFORM_BITS:
        plan = _uniform_plan(task, bits)
        s = plan.summary(task.model, task.example_input(1))
        uniform.append(
            {
                "plan": f"uniform w{bits}",
                "avg_weight_bits": s.avg_weight_bits,
                "covered_fraction": s.covered_fraction,
                **_test_metrics(task, plan),
            }  # fmt: skip
        )
    by_bits = {round(r["avg_weight_bits"]): r for r in uniform}

    sens = analyze_sensitivity(
        task,
        SensitivityConfig(
            metrics=("output_mse",),
            w_bits=SEARCH_BITS,
            a_bits=(8,),
            granularities=("per_channel",),
            progress=False,
        ),  # fmt: skip
        track=False,
    )
    mixed = []
    for budget in args.budgets:
        for seed in args.seeds:
            cfg = SearchConfig(
                strategy="tpe",
                budget=args.budget,
                seed=seed,
                max_avg_weight_bits=budget,
                objectives=("accuracy", "weight_size"),
                warm_start="ilp",
                warm_start_plans=6,
                sensitivity_metric="output_mse",
                space=SpaceConfig(w_bits=SEARCH_BITS, a_bits=(32,), granularities=("per_channel",)),
                final_split=None,
                storage=":memory:",
                track=False,
                progress=False,
            )
            t = time.perf_counter()
            res = run_search(task, cfg, sensitivity=sens)
            best = res.best(max_avg_weight_bits=budget)
            plan = QuantPlan.from_dict(json.loads(best["plan"]))
            s = plan.summary(task.model, task.example_input(1))
            row = {
                "budget": budget,
                "seed": seed,
                "avg_weight_bits": s.avg_weight_bits,
                "covered_fraction": s.covered_fraction,
                "val_cosine": float(best["accuracy"]),
                "evaluations": res.real_evaluations,
                "cache_hits": int(res.trials["cache_hit"].sum()) if not res.trials.empty else 0,
                "found_by": "ILP warm start" if str(best["label"]).startswith("warm start") else "TPE",
                "seconds": time.perf_counter() - t,
                "bits": {n: sp.w_bits for n, sp in plan.items()},
                **_test_metrics(task, plan),
            }
            floor = max(b for b in by_bits if b <= budget + 1e-9)
            ceil_ = min((b for b in by_bits if b >= budget - 1e-9), default=floor)
            lo, hi = by_bits[floor]["test_cosine"], by_bits[ceil_]["test_cosine"]
            interp = lo if ceil_ == floor else lo + (hi - lo) * (budget - floor) / (ceil_ - floor)
            row.update(uniform_within=f"w{floor}", uniform_cosine=lo, uniform_interp_cosine=interp)
            row["beats_uniform"] = row["test_cosine"] > lo
            row["beats_interp"] = row["test_cosine"] > interp
            mixed.append(row)
    seconds = time.perf_counter() - t0

    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(
        json.dumps({"args": vars(args), "uniform": uniform, "mixed": mixed, "seconds": seconds}, indent=1)
    )
    summary = []
    for budget in args.budgets:
        rows = [r for r in mixed if r["budget"] == budget]
        cos = [r["test_cosine"] for r in rows]
        summary.append(
            {
                "budget (avg bits)": budget,
                "mixed avg bits (mean)": statistics.mean(r["avg_weight_bits"] for r in rows),
                "mixed test cosine (mean)": statistics.mean(cos),
                "min over seeds": min(cos),
                "max over seeds": max(cos),
                "uniform within budget": f"{rows[0]['uniform_within']}: {_fmt(rows[0]['uniform_cosine'])}",
                "uniform line": rows[0]["uniform_interp_cosine"],
                "mixed rel MSE (mean)": statistics.mean(r["test_rel_mse"] for r in rows),
                "mixed top-1 agreement (mean)": statistics.mean(r["test_top1_agreement"] for r in rows),
                "beats uniform (seeds)": f"{sum(r['beats_uniform'] for r in rows)}/{len(rows)}",
                "beats uniform line (seeds)": f"{sum(r['beats_interp'] for r in rows)}/{len(rows)}",
                "found by TPE (seeds)": f"{sum(r['found_by'] == 'TPE' for r in rows)}/{len(rows)}",
            }
        )
    ucols = ["plan", "avg_weight_bits", "covered_fraction", "test_cosine", "test_min_cosine", "test_rel_mse",
             "test_top1_agreement", "test_accuracy"]  # fmt: skip
    mcols = ["budget", "seed", "avg_weight_bits", "val_cosine", "test_cosine", "test_min_cosine", "test_rel_mse",
             "test_top1_agreement", "test_accuracy", "evaluations", "found_by"]  # fmt: skip
    fp32_acc = task.info.get("trained", {}).get("test_accuracy")
    hits = sum(r["cache_hits"] for r in mixed)
    measured = sum(r["evaluations"] for r in mixed)
    cache = (
        f"; {hits} of {measured} plan evaluations read from the evaluation cache of earlier runs"
        if hits
        else ""
    )
    lines = [
        HEADING,
        "",
        f"Command: `python bench/byom_bench.py` ({seconds / 60:.1f} min, {args.threads} threads{cache}). Model:",
        f"`workbench.transformer_task.DigitsBert` ({total_params:,} parameters, 2 encoder layers, hidden 64; FP32",
        f"test accuracy {_fmt(fp32_acc) if fp32_acc is not None else 'see above'}), dict inputs `input_ids` +",
        "`attention_mask`. Metric: mean cosine similarity of the logits to FP32 (`fidelity_metric(model,",
        '"cosine")`); searched on the validation split, reported on the 450 test digits. Weight-only, per-channel,',
        "every quantizable layer (embeddings included); `avg_weight_bits` is weighted by element count, and",
        "`covered_fraction` is the share of all parameters those layers hold (LayerNorms and biases stay float).",
        f"Mixed: TPE, {args.budget} measured plans per search, warm-started from the ILP on output-MSE",
        f"sensitivities, weight bits {{{', '.join(map(str, SEARCH_BITS))}}} per layer, seeds {args.seeds}.",
        "`found_by`: whether the plan a search returned was one of its ILP warm-start trials or a TPE proposal.",
        "",
        "Uniform plans:",
        "",
        *markdown_table(uniform, ucols, _fmt),
        "",
        'Searched mixed plans against uniform at the same budget ("uniform within budget": the best uniform plan',
        'whose average bits fit; "uniform line": straight line between the neighbouring uniform plans):',
        "",
        *markdown_table(summary, list(summary[0]), _fmt),
        "",
        "Every search:",
        "",
        *markdown_table(mixed, mcols, _fmt),
        "",
    ]
    splice_section(Path(args.doc), HEADING, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
