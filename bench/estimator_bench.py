"""Latency estimator on per-layer costs measured in context (issue 25) against deployed plans' measured latency.

For each model (default digits_resnet, digits_cnn and digits_mobilenet, batch 32): >= 12 plans are deployed (fp32,
bf16, int8, w4a8, weight-only int8 / int4 Linears where the model has them, fallbacks, halves and mixes); the
per-layer costs are measured in context (:func:`workbench.hardware.layer_costs.measure_layer_costs`, fresh unless
``--use-cache``), then the plans are timed round-robin in one loop with
:func:`workbench.hardware.timing.time_side_by_side` (drift hits all plans alike) and compared with
:func:`~workbench.hardware.layer_costs.estimate_latency` (and, for reference, the profile-based
:class:`~workbench.hardware.CostEstimator`): Spearman rank correlation and median absolute percentage error per
model. Also checks that the estimator's kernel for every layer is the one deployment built. Other models:
``resnet18`` (torchvision, random weights, 224 x 224: latency only) and the transformers ``digits_bert`` /
``minilm_size`` (token ids: bf16 and weight-only Linear plans, ``--seq-len`` tokens).

Prints markdown tables and writes bench/out/estimator_bench.json. Run:
``python bench/estimator_bench.py [--models digits_resnet digits_cnn digits_mobilenet] [--repeats 21]``.
Threads default to 1: on a shared 2-core machine two torch threads wait on each other and time the load.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torchvision
from scipy.stats import spearmanr
from torch import nn

from workbench.hardware import CostEstimator
from workbench.hardware.deploy import cpu_name, deploy, time_side_by_side
from workbench.hardware.kernels import layer_kind
from workbench.hardware.layer_costs import (
    LayerCostConfig,
    deployed_kernels,
    estimate_latency,
    kernel_of_module,
    measure_layer_costs,
)
from workbench.quant import QuantPlan, QuantSpec
from workbench.quant.introspect import quantizable_layers
from workbench.quant.swap import get_module
from workbench.tasks import load_task
from workbench.transformer_task import token_loaders

ROOT = Path(__file__).resolve().parents[1]
W8A8, W4A8, BF16 = (
    QuantSpec(w_bits=8, a_bits=8),
    QuantSpec(w_bits=4, a_bits=8),
    QuantSpec(w_bits=16, a_bits=16),
)
WO8, WO4 = QuantSpec(w_bits=8, a_bits=32), QuantSpec(w_bits=4, a_bits=32)
ASYM = QuantSpec(w_bits=8, a_bits=8, w_symmetric=False)  # no int8 kernel takes it: the fake-quant twin runs
ASYM_WO = QuantSpec(w_bits=8, a_bits=32, w_symmetric=False, granularity="per_group", group_size=32)


def _bench_module(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def md_table(df: pd.DataFrame) -> str:
    return _bench_module("search_bench").md_table(df)


def bench_plans(model: nn.Module) -> dict[str, QuantPlan]:
    """Plans spanning the static deployment path's kernels: uniform, halves, alternating, mixes, weight-only."""
    layers = quantizable_layers(model)
    modules = dict(model.named_modules())
    linears = [n for n in layers if layer_kind(modules[n]) == "linear"]
    convs = [n for n in layers if layer_kind(modules[n]) == "conv"]
    half = len(layers) // 2

    def plan(*parts: tuple[list[str], QuantSpec]) -> QuantPlan:
        return QuantPlan({n: spec for names, spec in parts for n in names})

    plans = {
        "fp32": plan(),
        "int8": plan((layers, W8A8)),
        "w4a8": plan((layers, W4A8)),
        "bf16": plan((layers, BF16)),
        "int8 first half": plan((layers[:half], W8A8)),
        "int8 second half": plan((layers[half:], W8A8)),
        "int8 except first and last": plan((layers[1:-1], W8A8)),
        "int8 every other layer": plan((layers[::2], W8A8)),
        "bf16 first half": plan((layers[:half], BF16)),
        "int8 + bf16 mix": plan((layers[:half], W8A8), (layers[half:-1], BF16)),
        "bf16 + int8 mix": plan((layers[:half], BF16), (layers[half:], W8A8)),
        "asymmetric int8 first half (fallback)": plan((layers[:half], ASYM)),
    }
    if convs:
        plans["int8 convs"] = plan((convs, W8A8))
    if linears:
        plans |= {
            "weight-only int8 linears": plan((linears, WO8)),
            "weight-only int4 linears": plan((linears, WO4)),
            "int8 convs + int4 weight-only linears": plan((convs, W8A8), (linears, WO4)),
            "bf16 convs + int8 weight-only linears": plan((convs, BF16), (linears, WO8)),
        }
    return plans


def token_plans(model: nn.Module) -> dict[str, QuantPlan]:
    """Plans for a model fed token ids, which static int8 cannot take: bf16 and int8 / int4 weight-only Linears
    (per channel: the grouping the costs are measured at), halves, alternations and mixes; tables stay float."""
    modules = dict(model.named_modules())
    lin = [n for n in quantizable_layers(model) if layer_kind(modules[n]) == "linear"]
    half = len(lin) // 2

    def plan(*parts: tuple[list[str], QuantSpec]) -> QuantPlan:
        return QuantPlan({n: spec for names, spec in parts for n in names})

    return {
        "fp32": plan(), "bf16": plan((lin, BF16)),
        "weight-only int8": plan((lin, WO8)), "weight-only int4": plan((lin, WO4)),
        "int4 first half": plan((lin[:half], WO4)), "int8 second half": plan((lin[half:], WO8)),
        "int4 every other layer": plan((lin[::2], WO4)), "int8 every other layer": plan((lin[1::2], WO8)),
        "int4 / int8 alternating": plan((lin[::2], WO4), (lin[1::2], WO8)),
        "int8 first half, int4 second": plan((lin[:half], WO8), (lin[half:], WO4)),
        "bf16 first half": plan((lin[:half], BF16)), "bf16 second half, int4 first": plan((lin[:half], WO4), (lin[half:], BF16)),
        "int4 except first and last": plan((lin[1:-1], WO4)),
        "asymmetric int8 weight-only (fallback) first half": plan((lin[:half], ASYM_WO)),
    }  # fmt: skip


def bench_inputs(name: str, args: argparse.Namespace) -> tuple[nn.Module, Any, Any, dict[str, QuantPlan]]:
    """(model, timed batch, calibration data, plans): a workbench task; ``resnet18`` (torchvision, random
    weights, 224 x 224, random calibration images: latency only); ``digits_bert`` / ``minilm_size`` (the
    transformers of bench/kernels_bench.py, the first ``--seq-len`` tokens of digits test sequences)."""
    if name == "resnet18":
        model = torchvision.models.resnet18(weights=None).eval()
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(args.batch, 3, 224, 224, generator=gen)
        return model, x, [torch.randn(8, 3, 224, 224, generator=gen) for _ in range(2)], bench_plans(model)
    if name in ("digits_bert", "minilm_size"):
        kb = _bench_module("kernels_bench")
        model = kb.build_model(name)
        batch = next(iter(token_loaders(batch_size=max(32, args.batch), seed=0)["test"]))[0]
        batch = {k: v[:, : args.seq_len] for k, v in batch.items()}
        x = {k: v[: args.batch] for k, v in batch.items()}
        return model, x, {k: v[:8] for k, v in batch.items()}, token_plans(model)
    task = load_task(name, progress=False)
    model = task.model.eval()
    return model, task.example_input(args.batch), task.calib_loader, bench_plans(model)


def run_model(name: str, args: argparse.Namespace) -> dict:
    model, x, calib, plans = bench_inputs(name, args)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        deployed = {p: deploy(model, plan, calib) for p, plan in plans.items()}
        profile_est = CostEstimator(model, x, "cpu_measured", batch_size=args.batch)
        profile_ms = {p: profile_est.estimate(plans[p], d.dispatch).latency_ms for p, d in deployed.items()}
    # costs measured just before the plans are timed: the load of a shared machine drifts
    cfg = LayerCostConfig(repeats=args.cost_repeats, threads=args.threads, use_cache=args.use_cache)
    t0 = time.time()
    costs = measure_layer_costs(model, x, config=cfg, calib=calib)
    cost_s = time.time() - t0
    stats = time_side_by_side(deployed, x, repeats=args.repeats, warmup=2, threads=args.threads)
    rows = []
    for p, plan in plans.items():
        built = {n: kernel_of_module(get_module(deployed[p].module, n)) for n in costs.layers}
        kernels = pd.Series(built).value_counts().sort_index()
        est, meas = estimate_latency(costs, plan), stats[p].median_ms
        rows.append({"plan": p, "kernels": ", ".join(f"{k} {v}" for k, v in kernels.items()),
                     "kernels_agree": deployed_kernels(model, plan) == built, "measured_ms": meas,
                     "min_ms": stats[p].min_ms, "max_ms": stats[p].max_ms, "estimated_ms": est,
                     "error_pct": 100 * (est - meas) / meas, "profile_estimate_ms": profile_ms[p],
                     "profile_error_pct": 100 * (profile_ms[p] - meas) / meas})  # fmt: skip
    df = pd.DataFrame(rows)
    return {"rows": df, "cost_seconds": cost_s, "summary": summarize(name, df, costs)}


def summarize(name: str, df: pd.DataFrame, costs) -> dict:
    def stats(col: str, err: str) -> dict:
        return {"spearman": float(spearmanr(df["measured_ms"], df[col]).statistic),
                "median_abs_error_pct": float(np.median(df[err].abs())),
                "mean_abs_error_pct": float(df[err].abs().mean()), "max_abs_error_pct": float(df[err].abs().max())}  # fmt: skip

    new, old = stats("estimated_ms", "error_pct"), stats("profile_estimate_ms", "profile_error_pct")
    return {"model": name, "plans": len(df), "kernels_agree": int(df["kernels_agree"].sum()),
            "spearman": new["spearman"], "median_abs_error_pct": new["median_abs_error_pct"],
            "mean_abs_error_pct": new["mean_abs_error_pct"], "max_abs_error_pct": new["max_abs_error_pct"],
            "profile_spearman": old["spearman"], "profile_median_abs_error_pct": old["median_abs_error_pct"],
            "fp32_model_ms": costs.model_ms["fp32"], "rest_ms": costs.rest_ms,
            "context_ms": costs.context_ms}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["digits_resnet", "digits_cnn", "digits_mobilenet"])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=8, help="tokens per sequence for the transformers")
    ap.add_argument("--repeats", type=int, default=21, help="timed runs of each deployed plan (medians)")
    ap.add_argument("--cost-repeats", type=int, default=15, help="timed runs of each layer cost (medians)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--use-cache", action="store_true", help="layer costs from the per-machine cache when it has them"
    )
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "estimator_bench.json"))
    args = ap.parse_args()
    torch.manual_seed(0)
    t_start = time.time()
    results = {m: run_model(m, args) for m in args.models}
    summary = pd.DataFrame([r["summary"] for r in results.values()])
    for m, r in results.items():
        print(f"### {m} (batch {args.batch}, {args.threads} thread(s), medians of {args.repeats} runs)\n")
        print(md_table(r["rows"]) + "\n")
    print(md_table(summary))
    out = {"cpu": cpu_name(), "torch": torch.__version__, "python": platform.python_version(),
           "threads": args.threads, "batch": args.batch, "repeats": args.repeats, "cost_repeats": args.cost_repeats,
           "seconds": time.time() - t_start, "summary": summary.to_dict(orient="records"),
           "models": {m: {"cost_seconds": r["cost_seconds"], "plans": r["rows"].to_dict(orient="records")}
                      for m, r in results.items()}}  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"\nwrote {args.out} ({out['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
