"""The default search (``auto``) against uniform, the sensitivity greedy and the ILP at equal average weight bits.

For each model and each budget of average weight bits over the searched layers (element-weighted): the best plan
``auto`` finds within the budget (``--evaluations`` real evaluations on the validation split), uniform
per-channel at the budget's bits, the greedy curve's plan within the budget (seed 000's cost-benefit order on the
same sensitivity) and the ILP's plan (HAWQ-V3's program: ``omega`` where the model has labels and a Hessian,
else the output error ``auto`` allocates with, i.e. ``auto``'s allocation before any evaluation). Every plan is
then measured on the test split by the same evaluator; the table says whether ``auto`` matches or beats each.

Models: ``digits_resnet`` (labelled accuracy), ``digits_bert`` (weight-only on its Linear layers, fidelity cosine
to FP32 logits), ``lite1`` (EfficientNet-Lite1, pretrained, fidelity cosine on photo crops; ``make install-real``).

Run: ``PYTHONPATH=. python bench/auto_bench.py --models digits_resnet digits_bert --bits 3 4 5 6``.
Writes ``bench/out/auto_bench.json`` and prints a markdown table (the section "Default search (auto) vs
uniform, greedy and ILP" of docs/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from workbench.quant.spec import QuantPlan
from workbench.search import SearchConfig, SpaceConfig, run_search
from workbench.search.baselines import greedy_candidates
from workbench.search.context import prepare
from workbench.search.evaluator import PlanEvaluator
from workbench.search.inputs import search_sensitivity

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out" / "auto_bench.json"
W_BITS = (2, 3, 4, 5, 6, 8)


def _task(name: str) -> tuple[Any, SpaceConfig]:
    if name == "digits_resnet":
        from workbench.tasks import load_task

        return load_task("digits_resnet", progress=False), SpaceConfig(w_bits=W_BITS)
    if name == "digits_bert":
        from workbench.tasks.digits_bert import transformer_task

        return transformer_task(metric="cosine"), SpaceConfig(
            w_bits=W_BITS, a_bits=(32,), exclude=("*embed*",)
        )
    if name == "lite1":
        from workbench.tasks.real import real_task

        return real_task("efficientnet_lite1"), SpaceConfig(w_bits=W_BITS)
    raise SystemExit(f"unknown model {name!r}; choose digits_resnet, digits_bert, lite1")


def _baselines(task: Any, space: SpaceConfig, bits: float, probe: Any) -> dict[str, Any]:
    """Uniform, greedy and ILP plans within ``bits`` (average weight bits over the searched layers)."""
    from workbench.search.auto import AllocationTables, allocate, allocation_tables
    from workbench.search.candidates import _plan

    cfg = SearchConfig(max_avg_weight_bits=bits, space=space, storage=":memory:", track=False, progress=False,
                       probe_bits=probe)  # fmt: skip
    ctx = prepare(task, cfg, None, ":memory:")
    sens = search_sensitivity(task, cfg)
    out: dict[str, Any] = {}
    if float(bits).is_integer() and int(bits) in W_BITS:
        a = 32 if space.a_bits == (32,) else 8
        out["uniform"] = ctx.space.uniform_plan(int(bits), a_bits=a)
    curve = greedy_candidates(ctx.space, ctx.cost_model, sens, metric=_metric(task, sens))
    fits = [c for c in curve if ctx.space_bits(c.plan)["space_avg_bits"] <= bits + 1e-9]
    out["greedy"] = fits[0].plan
    tables: AllocationTables = allocation_tables(ctx, sens)
    out["ilp (output error)"] = _plan(ctx.space, tables.bits_of(allocate(tables, tables.levels[0])))
    return out


def _metric(task: Any, sens: Any) -> str:
    from workbench.search.auto import resolve_metric

    return resolve_metric(sens, "auto", str(task.metric_name))


def run_model(name: str, bits_list: list[float], evaluations: int, probe: Any) -> list[dict[str, Any]]:
    task, space = _task(name)
    test = PlanEvaluator(task, split="test")
    rows = []
    for bits in bits_list:
        t0 = time.perf_counter()
        cfg = SearchConfig(budget=evaluations, max_avg_weight_bits=bits, space=space, storage=":memory:",
                           track=False, progress=False, final_split=None, probe_bits=probe)  # fmt: skip
        result = run_search(task, cfg)
        seconds = time.perf_counter() - t0
        best = result.best(max_avg_weight_bits=bits)
        plans = {"auto": QuantPlan.from_json(best["plan"]), **_baselines(task, space, bits, probe)}
        scores = {k: test(p)[0] for k, p in plans.items()}
        rows.append({"model": name, "bits": bits, "metric": str(task.metric_name), "auto_seconds": seconds,
                     "real_evaluations": result.real_evaluations, "test": scores,
                     "stage_seconds": result.info.get("stage_seconds"),
                     "probe_bits": cfg.probe_bits,
                     "fp32_test": test.fp32_accuracy})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| model (metric) | avg bits | auto | uniform | greedy | ILP (output error) | auto matches or beats all? | auto time (s, evals) |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        t = r["test"]
        others = [v for k, v in t.items() if k != "auto"]
        verdict = "yes" if all(t["auto"] >= v - 1e-12 for v in others) else "no"
        cell = {
            k: f"{t[k]:.4f}" if k in t else "-" for k in ("auto", "uniform", "greedy", "ilp (output error)")
        }
        lines.append(f"| {r['model']} ({r['metric']}) | {r['bits']:g} | {cell['auto']} | {cell['uniform']} | "
                     f"{cell['greedy']} | {cell['ilp (output error)']} | {verdict} | "
                     f"{r['auto_seconds']:.0f} ({r['real_evaluations']}) |")  # fmt: skip
    return "\n".join(lines)


HEADING = "## Default search (auto) vs uniform, greedy and ILP at equal average bits"


def section(rows: list[dict[str, Any]]) -> list[str]:
    """The BENCHMARKS.md section of ``rows``."""
    from workbench.benchsuite.machine import machine_info

    m = machine_info()
    stages = [
        f"- {r['model']} at {r['bits']:g} bits: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in (r.get("stage_seconds") or {}).items())
        for r in rows
    ]
    return [
        HEADING,
        "",
        "Command: `PYTHONPATH=. python bench/auto_bench.py --models digits_resnet digits_bert lite1 --bits 3 4 5 6` "
        "(one model at a time is fine: rows of other models are kept in `bench/out/auto_bench.json`).",
        f"Machine: {m.get('cpu_model', m.get('cpu', '?'))}, {m.get('cores', '?')} cores (shared with other jobs while "
        "measured: times are upper bounds).",
        "",
        "Each budget is an average of weight bits over the searched layers (element-weighted). `auto`: the default "
        "search, 20 real evaluations on the validation split, its best plan within the budget; the baselines get "
        "the same sensitivity (probes at 2 and 4 bits, the other widths scaled by the weight quantization noise): "
        "uniform per-channel at the budget's bits, the greedy curve's plan within the budget, and the ILP's plan "
        "(the exact optimum of the additive output-error model, i.e. `auto` before any evaluation). Every plan is "
        "scored on the test split by the same evaluator (digits_resnet: accuracy on 450 images, one image = "
        "0.0022; digits_bert / lite1: mean cosine of the logits to FP32). Weight-only on digits_bert (its Linear "
        "layers; embeddings stay float), W*A8 elsewhere. Deterministic: one run per row.",
        "",
        table(rows),
        "",
        "Stage times (sensitivity pass, allocation, trials incl. the FP32 evaluation; the sensitivity pass is "
        "cached after the first budget of a model):",
        "",
        *stages,
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["digits_resnet", "digits_bert"])
    ap.add_argument("--bits", nargs="+", type=float, default=[3.0, 4.0, 5.0, 6.0])
    ap.add_argument("--evaluations", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--doc", action="store_true", help="rewrite the section in docs/BENCHMARKS.md")
    ap.add_argument("--probe-bits", nargs="+", default=["2", "4"], help="widths probed per layer, or 'all'")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    probe = None if args.probe_bits == ["all"] else tuple(int(b) for b in args.probe_bits)
    rows = [r for m in args.models for r in run_model(m, args.bits, args.evaluations, probe)]
    # rows of other models / budgets measured earlier are kept (one file for the whole table)
    new = {(r["model"], r["bits"]) for r in rows}
    old = json.loads(OUT.read_text()) if OUT.exists() else []
    rows = [r for r in old if (r["model"], r["bits"]) not in new] + rows
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(rows, indent=1))
    print(table(rows))
    if args.doc:
        from workbench.benchsuite import splice_section

        splice_section(ROOT / "docs" / "BENCHMARKS.md", HEADING, section(rows))


if __name__ == "__main__":
    main()
