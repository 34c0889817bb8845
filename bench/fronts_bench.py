"""Accuracy vs size / BOPs fronts of every strategy on both digits models, under one real-evaluation budget.

Writes the "## Fronts" section of docs/BENCHMARKS.md (in place), bench/out/fronts.json and the Pareto plot
docs/images/fronts.png. Run: ``python bench/fronts_bench.py`` (part of ``make bench``).

Every strategy gets the same budget of real evaluations (quantize + calibrate + evaluate on val; repeated plans
are free). Uniform plans are points (8/4/3/2 bits, per-tensor and per-channel). "ours" is the workbench's
recommended search: predictor-guided TPE whose first trials are HAWQ-V3 ILP plans. A plan's test accuracy is
measured once it is picked on val, so every comparison on test is out of sample.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from workbench.qat import QATConfig, train_qat
from workbench.quant import QuantPlan
from workbench.search import SearchConfig, run_search
from workbench.search.objectives import CostModel, PlanEvaluator, hypervolume_2d
from workbench.search.study import default_predictor
from workbench.sensitivity import analyze_sensitivity
from workbench.tasks import load_task

ROOT = Path(__file__).resolve().parents[1]
HEADING = "## Fronts: every strategy on both digits models"
UNIFORM_BITS = (8, 4, 3, 2)
SIZE_REF = 0.25  # hypervolume box: weight bytes below 1/4 of FP32 ...
BOPS_REF = 1 / 16  # ... or BOPs below those of W8A8 (1/16 of FP32), accuracy above FP32 - 10 pp
DROP_PP = 10.0
BUDGETS = (1 / 4, 1 / 6, 1 / 8, 1 / 10, 1 / 12)  # weight-size budgets of the comparison (fraction of FP32)
OURS = "ours: predictor-guided tpe + ilp warm start"
# label -> (SearchConfig fields, needs the predictor, needs the sensitivity); seeds matter for the first four
SEARCHES: dict[str, tuple[dict, bool, bool]] = {
    "tpe": ({"strategy": "tpe"}, False, False),
    "nsga2": ({"strategy": "nsga2"}, False, False),
    "rl": ({"strategy": "rl"}, False, False),
    "predictor-guided tpe": ({"strategy": "tpe", "accuracy": "multifidelity"}, True, False),
    OURS: ({"strategy": "tpe", "accuracy": "multifidelity", "warm_start": "ilp"}, True, True),
    "greedy": ({"strategy": "greedy"}, True, True),
    "ilp": ({"strategy": "ilp"}, True, True),
}
DETERMINISTIC = {"greedy", "ilp"}


def _helpers():
    spec = importlib.util.spec_from_file_location("search_bench", ROOT / "bench" / "search_bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def points_frame(trials: pd.DataFrame, fp32_weight: float, fp32_bops: float) -> pd.DataFrame:
    """The measured plans of a run as (val accuracy, weight fraction, BOPs fraction, plan)."""
    done = trials[trials["accuracy"].notna() & trials["accuracy_source"].eq("measured")]
    if "feasible" in done:
        done = done[done["feasible"].astype(bool)]
    return pd.DataFrame(
        {
            "val_accuracy": done["accuracy"].astype(float).to_numpy(),
            "weight_fraction": done["weight_bytes"].to_numpy(dtype=float) / fp32_weight,
            "bops_fraction": done["bops"].to_numpy(dtype=float) / fp32_bops,
            "avg_weight_bits": done["avg_weight_bits"].astype(float).to_numpy(),
            "plan": done["plan"].to_numpy(),
        }
    ).drop_duplicates("plan")


def pareto(points: pd.DataFrame, cost: str, acc: str = "val_accuracy") -> pd.DataFrame:
    """Non-dominated rows (accuracy up, ``cost`` down), cheapest first."""
    df = points.sort_values([cost, acc], ascending=[True, False])
    keep, best = [], -math.inf
    for i, r in df.iterrows():
        if r[acc] > best:
            keep.append(i)
            best = r[acc]
    return df.loc[keep]


def hv(points: pd.DataFrame, cost: str, ref_cost: float, fp32_val: float) -> float:
    return hypervolume_2d(
        points["val_accuracy"].to_numpy(dtype=float),
        points[cost].to_numpy(dtype=float),
        ref_accuracy=fp32_val - DROP_PP / 100,
        ref_size_fraction=ref_cost,
    )


def pick(points: pd.DataFrame, budget: float) -> pd.Series | None:
    """The plan a user would take at a weight-size budget: best val accuracy within it (smaller on ties)."""
    ok = points[points["weight_fraction"] <= budget + 1e-12]
    if ok.empty:
        return None
    return ok.sort_values(["val_accuracy", "weight_fraction"], ascending=[False, True]).iloc[0]


def dominates_or_matches(ours: pd.DataFrame, point: pd.Series, acc: str = "test_accuracy") -> bool:
    """Whether some plan of ``ours`` is at most as large and at least as accurate as ``point`` (on ``acc``)."""
    ok = ours[(ours["weight_fraction"] <= point["weight_fraction"] + 1e-12) & ours[acc].notna()]
    return bool((ok[acc] >= point[acc] - 1e-12).any())


def run_model(name: str, *, budget: int, seeds: int, qat_epochs: int, predictor_plans: int = 300) -> dict:
    task = load_task(name, progress=False)
    t0 = time.perf_counter()
    sens = analyze_sensitivity(task, track=False)
    sens_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    predictor = default_predictor(task, sens, n_plans=predictor_plans, seed=0)
    pred_s = time.perf_counter() - t0
    cost = CostModel(task.model, task.example_input())
    fp32_w, fp32_b = float(cost.fp32_cost.weight_bytes), float(cost.fp32_cost.bops)
    val_eval, test_eval = PlanEvaluator(task, split="val"), PlanEvaluator(task, split="test")
    fp32_val, fp32_test = val_eval.fp32_accuracy, test_eval.fp32_accuracy

    methods: dict[str, list[dict]] = {}  # label -> one entry per seed
    for bits in UNIFORM_BITS:
        for gran in ("per_tensor", "per_channel"):
            plan = QuantPlan.from_shorthand(f"uniform:w{bits}a8:{gran}", task.model)
            c = cost(plan)
            label = f"uniform {gran.replace('_', '-')}"
            entry = methods.setdefault(label, [{"seed": 0, "points": [], "seconds": 0.0, "real": 0}])[0]
            t0 = time.perf_counter()
            val, _ = val_eval(plan)
            test, _ = test_eval(plan)
            entry["seconds"] += time.perf_counter() - t0
            entry["real"] += 1
            entry["points"].append(
                {
                    "val_accuracy": val,
                    "test_accuracy": test,
                    "weight_fraction": c.weight_bytes / fp32_w,
                    "bops_fraction": c.bops / fp32_b,
                    "avg_weight_bits": c.avg_weight_bits,
                    "plan": json.dumps(plan.to_dict(), sort_keys=True),
                    "label": f"W{bits}A8",
                }
            )
    common = {"storage": ":memory:", "track": False, "progress": False, "final_split": None, "budget": budget}
    for label, (fields, needs_pred, needs_sens) in SEARCHES.items():
        for seed in range(1 if label in DETERMINISTIC else seeds):
            kw = {}
            if needs_pred:
                kw["predictor"] = predictor
            if needs_sens:
                kw["sensitivity"] = sens
            extra = {"screen_trials": 20 * budget} if fields.get("accuracy") == "multifidelity" else {}
            config = SearchConfig(seed=seed, **common, **fields, **extra)
            t0 = time.perf_counter()
            r = run_search(task, config, **kw)
            seconds = time.perf_counter() - t0
            pts = points_frame(r.trials, fp32_w, fp32_b)
            methods.setdefault(label, []).append(
                {
                    "seed": seed,
                    "points": pts.to_dict("records"),
                    "seconds": seconds,
                    "real": r.real_evaluations,
                }
            )
    # test accuracy of every plan on a front or picked at a budget (each measured once: the evaluator caches)
    rows, picks = [], []
    for label, entries in methods.items():
        for e in entries:
            pts = pd.DataFrame(e["points"])
            fronts = pd.concat([pareto(pts, "weight_fraction"), pareto(pts, "bops_fraction")])
            wanted = set(fronts["plan"])
            for b in BUDGETS:
                p = pick(pts, b)
                if p is not None:
                    wanted.add(p["plan"])
            if "test_accuracy" not in pts:
                pts["test_accuracy"] = np.nan
            for i, r in pts.iterrows():
                if r["plan"] in wanted and pd.isna(r["test_accuracy"]):
                    pts.loc[i, "test_accuracy"] = test_eval(QuantPlan.from_dict(json.loads(r["plan"])))[0]
            e["points"] = pts.to_dict("records")
            e["hv_size"] = hv(pts, "weight_fraction", SIZE_REF, fp32_val)
            e["hv_bops"] = hv(pts, "bops_fraction", BOPS_REF, fp32_val)
            for b in BUDGETS:
                p = pick(pts, b)
                picks.append(
                    {
                        "method": label,
                        "seed": e["seed"],
                        "budget": b,
                        "test_accuracy": None if p is None else float(p["test_accuracy"]),
                        "weight_fraction": None if p is None else float(p["weight_fraction"]),
                    }
                )
        hs = [e["hv_size"] for e in entries]
        hb = [e["hv_bops"] for e in entries]
        rows.append(
            {
                "method": label,
                "seeds": len(entries),
                "real evals": int(statistics.median(e["real"] for e in entries)),
                "HV size (median)": statistics.median(hs),
                "HV size min-max": f"{min(hs):.3f}-{max(hs):.3f}",
                "HV BOPs (median)": statistics.median(hb),
                "HV BOPs min-max": f"{min(hb):.3f}-{max(hb):.3f}",
                "seconds (median)": statistics.median(e["seconds"] for e in entries),
            }
        )
    # does our search match or beat each other method's pick at each budget (test accuracy, seed by seed)?
    pk = pd.DataFrame(picks)
    ours = pk[pk["method"] == OURS]
    comparison = []
    for b in BUDGETS:
        ours_b = ours[ours["budget"] == b]["test_accuracy"].dropna()
        row = {"weight budget": f"1/{round(1 / b)}", OURS: _median(ours_b)}
        beaten_by = []
        for label in methods:
            if label == OURS:
                continue
            other = pk[(pk["method"] == label) & (pk["budget"] == b)]["test_accuracy"].dropna()
            row[label] = _median(other)
            if len(other) and (
                not len(ours_b) or statistics.median(ours_b) < statistics.median(other) - 1e-12
            ):
                beaten_by.append(label)
        row["ours matches or beats all?"] = "yes" if not beaten_by else "no: " + ", ".join(beaten_by)
        comparison.append(row)

    qat_rows = []
    if qat_epochs > 0:
        best_ours = pk[(pk["method"] == OURS) & (pk["budget"] == 1 / 8) & (pk["seed"] == 0)]
        ours_pts = pd.DataFrame(methods[OURS][0]["points"])
        p = pick(ours_pts, 1 / 8) if not best_ours.empty else None
        plans = {"uniform W2A8 per-channel": QuantPlan.from_shorthand("uniform:w2a8:per_channel", task.model)}
        if p is not None:
            plans["ours at 1/8 weight size"] = QuantPlan.from_dict(json.loads(p["plan"]))
        for plan_label, plan in plans.items():
            res = train_qat(task, plan, QATConfig(epochs=qat_epochs), track=False, progress=False)
            qat_rows.append(
                {
                    "plan": plan_label,
                    "avg weight bits": round(cost(plan).avg_weight_bits, 3),
                    "weight fraction": round(cost(plan).weight_bytes / fp32_w, 4),
                    "test acc before QAT": res.accuracy_before,
                    "test acc after QAT": res.accuracy_after,
                    "FP32": res.fp32_accuracy,
                    "epochs": qat_epochs,
                    "seconds": round(res.seconds, 1),
                }
            )
    return {
        "model": name,
        "fp32_val": fp32_val,
        "fp32_test": fp32_test,
        "fp32_weight_bytes": fp32_w,
        "fp32_bops": fp32_b,
        "sensitivity_s": sens_s,
        "predictor_s": pred_s,
        "summary": rows,
        "comparison": comparison,
        "qat": qat_rows,
        "methods": methods,
    }


def _median(values: pd.Series) -> float:
    return float(values.median()) if len(values) else float("nan")


NOISE_PP = 100 * 2 / 450  # two test images: differences this small are within the split's noise


def verdict(row: dict) -> str:
    """Whether ``OURS`` matches or beats every other method of a comparison row; else who beats it, by how much
    (test accuracy, percentage points), and whether that is within two test images."""
    ours = row.get(OURS)
    beaten = []
    for label, value in row.items():
        if label in (OURS, "weight budget", "ours matches or beats all?") or value is None:
            continue
        if isinstance(value, float) and math.isnan(value):
            continue
        if ours is None or (isinstance(ours, float) and math.isnan(ours)) or ours < value - 1e-12:
            gap = float("inf") if ours is None or math.isnan(ours) else 100 * (value - ours)
            beaten.append((label, gap))
    if not beaten:
        return "yes"
    text = ", ".join(
        f"{lab} +{gap:.2f} pp" if math.isfinite(gap) else f"{lab} (ours has none)" for lab, gap in beaten
    )
    worst = max(gap for _, gap in beaten)
    return f"no: {text}" + (" (within 2 test images)" if worst <= NOISE_PP + 1e-9 else "")


def fronts_figure(results: list[dict]):
    """Test accuracy vs weight fraction of each method's size front (seed 0), one panel per model."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=len(results), subplot_titles=[r["model"] for r in results])
    palette = [
        "#636efa",
        "#ef553b",
        "#00cc96",
        "#ab63fa",
        "#ffa15a",
        "#19d3f3",
        "#ff6692",
        "#b6e880",
        "#222222",
    ]
    labels = list(results[0]["methods"])
    for col, res in enumerate(results, start=1):
        for k, label in enumerate(labels):
            pts = pd.DataFrame(res["methods"][label][0]["points"])
            front = pareto(pts, "weight_fraction").dropna(subset=["test_accuracy"])
            front = front[front["weight_fraction"] <= 0.3]
            is_ours = label == OURS
            fig.add_trace(
                go.Scatter(
                    x=front["weight_fraction"],
                    y=100 * front["test_accuracy"],
                    mode="lines+markers" if not label.startswith("uniform") else "markers",
                    line={"shape": "hv", "width": 3 if is_ours else 1.5},
                    marker={"size": 9 if is_ours else 6, "color": palette[k % len(palette)]},
                    name=label,
                    legendgroup=label,
                    showlegend=col == 1,
                ),
                row=1,
                col=col,
            )
        fig.add_hline(y=100 * res["fp32_test"], line_dash="dash", line_color="grey", row=1, col=col)
        fig.update_xaxes(title_text="weight bytes / FP32 weight bytes", row=1, col=col)
        fig.update_yaxes(title_text="test accuracy (%)", range=[80, 100.5], row=1, col=col)
    fig.update_layout(
        title="Accuracy vs weight size: fronts picked on val, measured on test (dashed: FP32)",
        height=520,
        width=1300,
    )
    return fig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="+", default=["digits_cnn", "digits_resnet"])
    parser.add_argument("--budget", type=int, default=20, help="real evaluations per strategy and seed")
    parser.add_argument("--seeds", type=int, default=1, help="seeds of the stochastic strategies")
    parser.add_argument(
        "--qat-epochs", type=int, default=3, help="QAT epochs of the before/after rows (0: skip)"
    )
    parser.add_argument(
        "--predictor-plans", type=int, default=300, help="measured plans behind the predictor"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--doc", default=str(ROOT / "docs" / "BENCHMARKS.md"))
    parser.add_argument("--json", default=str(ROOT / "bench" / "out" / "fronts.json"))
    parser.add_argument("--figure", default=str(ROOT / "docs" / "images" / "fronts.png"))
    parser.add_argument("--from-json", help="only re-render the section and the plot from an earlier --json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    helpers = _helpers()
    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        results, total = saved["results"], saved["seconds"]
        for key in ("models", "budget", "seeds", "qat_epochs", "threads", "predictor_plans"):
            setattr(args, key, saved["args"].get(key, 300))
    else:
        t_all = time.perf_counter()
        results = [
            run_model(
                m,
                budget=args.budget,
                seeds=args.seeds,
                qat_epochs=args.qat_epochs,
                predictor_plans=args.predictor_plans,
            )
            for m in args.models
        ]
        total = time.perf_counter() - t_all
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(
            json.dumps({"args": vars(args), "seconds": total, "results": results}, indent=1, default=str)
        )
    figure_note = ""
    if args.figure:
        fig = fronts_figure(results)
        Path(args.figure).parent.mkdir(parents=True, exist_ok=True)
        fig.write_html(Path(args.json).with_suffix(".html"), include_plotlyjs=True)
        try:  # the PNG needs a Chromium for kaleido (scripts/install-system-deps.sh installs it)
            fig.write_image(args.figure, scale=1)
            figure_note = (
                f"Plot: `{os.path.relpath(args.figure, ROOT)}` (interactive: `bench/out/fronts.html`)."
            )
        except RuntimeError as e:
            print(f"warning: {args.figure} not rendered ({str(e).strip().splitlines()[0]})", file=sys.stderr)
            figure_note = "Plot: `bench/out/fronts.html` (the PNG was not rendered: no Chromium for kaleido)."
    cmd = (
        f"python bench/fronts_bench.py --models {' '.join(args.models)} --budget {args.budget} "
        f"--seeds {args.seeds} --qat-epochs {args.qat_epochs} --predictor-plans {args.predictor_plans}"
    )
    lines = [
        HEADING,
        "",
        f"Command: `{cmd}` (in `make bench`); {total:.0f} s, {args.threads} torch threads. Space: every Conv2d /",
        "Linear picks weight bits from {2, 3, 4, 6, 8, 16} per-channel, activations 8-bit. Every method gets the",
        f"same budget of {args.budget} real evaluations per seed (val split, 270 images); stochastic methods run",
        f"{args.seeds} seed(s) (0..{args.seeds - 1}), greedy and ILP are deterministic. Hypervolumes are computed",
        "over each run's measured plans on val: accuracy above FP32 - 10 pp and weight bytes below 1/4 of FP32",
        "(`HV size`) or BOPs below 1/16 of FP32, i.e. below W8A8 (`HV BOPs`), normalised to [0, 1].",
        f"`{OURS}` screens {20 * args.budget} TPE trials on the accuracy predictor (trained once",
        f"per model on {args.predictor_plans} measured plans, not counted in the budget) and starts from HAWQ-V3 ILP plans.",
        "The budget comparison takes, for each method, the plan with the best val accuracy within the weight",
        "budget and reports its test accuracy (450 images; one image = 0.22 pp), median over seeds.",
        figure_note,
        "",
    ]
    for res in results:
        lines += [
            f"### {res['model']} (FP32: val {res['fp32_val']:.4f}, test {res['fp32_test']:.4f}; sensitivity "
            f"{res['sensitivity_s']:.0f} s, predictor {res['predictor_s']:.0f} s, both cached after the first run)",
            "",
            helpers.md_table(pd.DataFrame(res["summary"])),
            "",
            "Test accuracy of each method's pick at a weight-size budget:",
            "",
            helpers.md_table(
                pd.DataFrame([{**r, "ours matches or beats all?": verdict(r)} for r in res["comparison"]])
            ),
            "",
        ]
        if res["qat"]:
            lines += [
                "Before and after quantization-aware training (LSQ, "
                f"{res['qat'][0]['epochs']} epochs, test split):",
                "",
                helpers.md_table(pd.DataFrame(res["qat"])),
                "",
            ]
    helpers.splice(Path(args.doc), HEADING, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
