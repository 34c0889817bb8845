"""Runtime adaptation benchmark: dynamic per-input precision vs the best static precision map of equal cost.

digits_resnet (and digits_cnn), clean test data and three shifted variants (Gaussian noise, halved contrast, 3x3
blur), three budgets (average BOPs per input as a fraction of the all-8-bit map), three policies (rule, learned,
cascade), and the oracle headroom. Static comparison: among the static maps (the probe ladder, uniform maps and
HAWQ-style allocations), the best accuracy on the evaluated data within the dynamic run's average cost - an
optimistic choice for static. Selection overhead is the time spent analysing and choosing over the time spent in
forward passes, measured while serving the test set in batches of 64.

Writes the "## Runtime adaptation" section of docs/BENCHMARKS.md (in place) and bench/out/runtime_bench.json.
Run: ``python bench/runtime_bench.py`` (``make bench-runtime``). ``--deployed``: the deployed-ladder mode instead
(:mod:`runtime_deployed`: real kernels, measured seconds per input, cascade, competing load), which writes its own
section and bench/out/runtime_deployed.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import time
from pathlib import Path

import pandas as pd
import torch

from workbench.runtime import RuntimeConfig, evaluate_runtime
from workbench.tasks import load_task

ROOT = Path(__file__).resolve().parents[1]
HEADING = "## Runtime adaptation (dynamic per-input precision)"


def _search_bench():
    spec = importlib.util.spec_from_file_location("search_bench", ROOT / "bench" / "search_bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fmt(v, pct: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{100 * v:.1f} %" if pct else f"{v:.4f}"


def section(model: str, ev, top: float) -> list[str]:
    t = ev.table
    rows = []
    for _, r in t.iterrows():
        rows.append(
            {
                "data": r["data"],
                "budget": "-" if math.isnan(r["budget_fraction"]) else f"{r['budget_fraction']:.2f}",
                "policy": r["policy"],
                "accuracy": _fmt(r["accuracy"]),
                "avg BOPs (frac of w8)": "-" if math.isnan(r["accuracy"]) else f"{r['avg_cost'] / top:.3f}",
                "avg w bits": "-" if math.isnan(r["accuracy"]) else f"{r['avg_weight_bits']:.2f}",
                "best static acc within cost": _fmt(r.get("static_accuracy")),
                "static cost at equal acc": (
                    "-"
                    if math.isnan(r.get("static_cost_at_equal_accuracy", math.nan))
                    else f"{r['static_cost_at_equal_accuracy'] / top:.3f}"
                ),
                "BOPs saving at equal acc": _fmt(r.get("cost_saving_at_equal_accuracy"), pct=True),
                "overhead": _fmt(r.get("overhead_fraction"), pct=True),
            }
        )
    return [f"### {model}", "", _search_bench().md_table(pd.DataFrame(rows)), ""]


def summary(ev, top: float) -> dict:
    t = ev.table[(ev.table["policy"] != "oracle") & ev.table["accuracy"].notna()]
    wins = t[t["accuracy"] > t["static_accuracy"] + 1e-9]
    return {
        "rows": int(len(t)),
        "dynamic_more_accurate": int(len(wins)),
        "best_saving_at_equal_accuracy": float(t["cost_saving_at_equal_accuracy"].max()),
        "median_saving_at_equal_accuracy": float(t["cost_saving_at_equal_accuracy"].median()),
        "max_overhead_fraction": float(t["overhead_fraction"].max()),
        "median_overhead_fraction": float(t["overhead_fraction"].median()),
        "oracle_saving": {
            r["data"]: float(r["cost_saving_at_equal_accuracy"])
            for _, r in ev.table[ev.table["policy"] == "oracle"].iterrows()
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["digits_resnet", "digits_cnn"])
    ap.add_argument("--budgets", type=float, nargs="+", default=[0.4, 0.45, 0.55])
    ap.add_argument("--doc", default=str(ROOT / "docs" / "BENCHMARKS.md"))
    ap.add_argument("--deployed", action="store_true", help="real-kernel ladder mode (issue 26)")
    args = ap.parse_args()
    if args.deployed:
        deployed_main(args)
        return
    t0 = time.time()
    torch.manual_seed(0)
    cfg = RuntimeConfig()
    out: dict = {
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "budgets": args.budgets,
        "models": {},
    }
    lines = [
        HEADING,
        "",
        "Command: `python bench/runtime_bench.py` (`make bench-runtime`). Weights pre-quantized per channel at "
        f"{list(cfg.w_bits)} bits per layer group (groups = top-level modules), activations at {cfg.a_bits} bits with "
        "per-input scales; a precision map gives each group its bits. Budgets are average BOPs per input as a "
        "fraction of the all-8-bit map. Policies: `rule` (input statistics, no extra pass), `learned` (logistic "
        "controller on input statistics and a probe pass), `cascade` (probe pass, escalate the least confident "
        "inputs; probe / escalation maps and threshold calibrated within the budget). Calibration: the 256 "
        "calibration images only. `oracle`: each input on the cheapest map from which every dearer map keeps "
        "the FP32 answer - the headroom, not a runnable policy. Best static: the most accurate static map on the "
        "evaluated data within the dynamic average cost (optimistic for static). Overhead: analysis and "
        "selection time over forward-pass time while serving.",
        "",
    ]
    for model in args.models:
        task = load_task(model, progress=False)
        ev = evaluate_runtime(task, budgets=tuple(args.budgets), config=cfg, progress=False)
        top = ev.info["top_cost"]
        out["models"][model] = {
            "table": ev.table.to_dict(orient="records"),
            "ladder": ev.info["ladder"],
            "summary": summary(ev, top),
        }
        lines += section(model, ev, top)
        s = out["models"][model]["summary"]
        lines += [
            f"{model}: dynamic more accurate than the best static map of equal cost in {s['dynamic_more_accurate']} "
            f"of {s['rows']} cases; BOPs saving at equal accuracy: best {100 * s['best_saving_at_equal_accuracy']:.1f} "
            f"%, median {100 * s['median_saving_at_equal_accuracy']:.1f} % (goal: >= 20 %); selection overhead: "
            f"median {100 * s['median_overhead_fraction']:.1f} %, max {100 * s['max_overhead_fraction']:.1f} % of "
            "inference time (goal: <= 5 %). Oracle headroom (saving at equal accuracy): "
            + ", ".join(f"{k} {100 * v:.0f} %" for k, v in s["oracle_saving"].items())
            + ".",
            "",
        ]
    out["wall_s"] = time.time() - t0
    lines[2] += (
        f" Whole benchmark: {out['wall_s']:.0f} s, {out['threads']} torch threads, torch {torch.__version__}."
    )
    (ROOT / "bench" / "out").mkdir(parents=True, exist_ok=True)
    (ROOT / "bench" / "out" / "runtime_bench.json").write_text(json.dumps(out, indent=2, default=str) + "\n")
    _search_bench().splice(Path(args.doc), HEADING, lines)
    print("\n".join(lines))


def deployed_main(args) -> None:
    """The ``--deployed`` mode: :func:`runtime_deployed.run` on each model, its section written in place."""
    spec = importlib.util.spec_from_file_location("runtime_deployed", ROOT / "bench" / "runtime_deployed.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    from workbench.benchsuite.machine import machine_info

    info = machine_info()
    machine = f"{info['cpu']} (AVX512-VNNI {info['avx512_vnni']}, AVX512-BF16 {info['avx512_bf16']})"
    torch.manual_seed(0)
    lines: list[str] = []
    out = {}
    for model in args.models:
        res = mod.run(load_task(model, progress=False))
        out[model] = {k: v for k, v in res.items()}
        sec = mod.section(model, res, _search_bench().md_table, machine)
        lines += sec if not lines else sec[2:]
    (ROOT / "bench" / "out").mkdir(parents=True, exist_ok=True)
    (ROOT / "bench" / "out" / "runtime_deployed.json").write_text(
        json.dumps(out, indent=2, default=str) + "\n"
    )
    _search_bench().splice(Path(args.doc), mod.DEPLOYED_HEADING, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
