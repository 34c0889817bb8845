"""Quantization-aware training benchmark on digits_resnet: the acceptance figures of the QAT stage.

(a) a mixed plan with average weight bits <= 3 (HAWQ-V3 ILP over Omega, the largest weight-size budget whose plan
averages <= 3 bits) fine-tuned with QAT, against FP32 test accuracy (target: within 0.5 pp); (b) uniform 2-bit
before and after QAT; (c) QAT step time over FP32 training step time, measured side by side in one run
(interleaved steps on the same batches, medians). Also: the same mixed plan with other QAT settings, and a plan
learned by the granularity penalty from a uniform 4-bit start.

Writes the "## Quantization-aware training (digits_resnet)" section of docs/BENCHMARKS.md (replacing it in
place; the rest of the file is kept) and bench/out/qat_bench.json. Run: ``python bench/qat_bench.py``
(``make bench-qat``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import time
from pathlib import Path

import pandas as pd
import torch

from workbench.qat import QATConfig, compare_step_times, train_qat
from workbench.quant import QuantPlan
from workbench.search.baselines import ilp_candidates
from workbench.search.objectives import CostModel
from workbench.search.space import SearchSpace, SpaceConfig
from workbench.sensitivity import analyze_sensitivity
from workbench.tasks import load_task

ROOT = Path(__file__).resolve().parents[1]
HEADING = "## Quantization-aware training (digits_resnet)"
W_BITS = (2, 3, 4, 6, 8)


def _search_bench():
    """bench/search_bench.py as a module: its ``splice`` (replace one ``## `` section of a markdown file) and
    ``md_table``."""
    spec = importlib.util.spec_from_file_location("search_bench", ROOT / "bench" / "search_bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def md_table(df: pd.DataFrame) -> str:
    return _search_bench().md_table(df)


def mixed_plan(task, *, max_bits: float) -> tuple[QuantPlan, float, float]:
    """The ILP plan of the largest weight-size budget (fraction of FP32) whose average weight bits <= max_bits."""
    sens = analyze_sensitivity(task, track=False)
    space = SearchSpace(task.model, SpaceConfig(w_bits=W_BITS))
    cost = CostModel(task.model, task.example_input())
    for i in range(40):
        budget = round(max_bits / 32 + 0.01 - 0.0025 * i, 4)
        try:
            cand = ilp_candidates(space, cost, sens, budgets=(budget,), cost="weight_size")[0]
        except ValueError:
            continue
        bits = cost(cand.plan).avg_weight_bits
        if bits <= max_bits:
            return cand.plan, budget, bits
    raise RuntimeError(f"no ILP plan with average weight bits <= {max_bits}")


def row(name: str, r, *, config_label: str) -> dict:
    return {
        "plan": name,
        "QAT settings": config_label,
        "avg w bits": round(r.avg_weight_bits, 3),
        "FP32": r.fp32_accuracy,
        "before QAT": r.accuracy_before,
        "after QAT": r.accuracy_after,
        "drop after (pp)": round(r.drop_after_pp, 3),
        "best epoch": r.best_epoch,
        "packed bytes": r.packed_bytes,
        "seconds": round(r.seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="digits_resnet")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--max-bits", type=float, default=3.0)
    parser.add_argument("--timing-steps", type=int, default=60)
    parser.add_argument("--seeds", type=int, default=3, help="QAT seeds of the main mixed-plan run")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "docs" / "BENCHMARKS.md"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    t_all = time.perf_counter()
    task = load_task(args.model, progress=False)
    plan, budget, bits = mixed_plan(task, max_bits=args.max_bits)

    main_cfg = QATConfig(epochs=args.epochs, distill_weight=0.5)
    variants = [
        ("LSQ + distillation (w 0.5, T 4)", main_cfg),
        ("LSQ", QATConfig(epochs=args.epochs)),
        ("frozen scales", QATConfig(epochs=args.epochs, scale_mode="frozen")),
    ]
    rows, results = [], {}
    mixed_name = f"ILP mixed (weight size <= {100 * budget:.2f} % of FP32)"
    for label, cfg in variants:
        r = train_qat(task, plan, cfg, track=False, progress=False)
        results[("mixed", label)] = r
        rows.append(row(mixed_name, r, config_label=label))
    r2 = train_qat(task, "uniform:w2a8:per_channel", main_cfg, track=False, progress=False)
    results[("w2", "main")] = r2
    rows.append(row("uniform w2a8 per-channel", r2, config_label=variants[0][0]))
    r2b = train_qat(task, "uniform:w2a8:per_channel", main_cfg.with_(lr=2e-3), track=False, progress=False)
    results[("w2", "lr 2e-3")] = r2b
    rows.append(row("uniform w2a8 per-channel", r2b, config_label=f"{variants[0][0]}, lr 2e-3"))
    learned_cfg = main_cfg.with_(bit_penalty=0.2)
    rl = train_qat(task, "uniform:w4a8:per_channel", learned_cfg, track=False, progress=False)
    rows.append(row("learned by bit penalty 0.2 (from uniform w4a8)", rl, config_label=variants[0][0]))
    table = pd.DataFrame(rows)

    timings = [
        ("LSQ + distillation", compare_step_times(task, plan, main_cfg, steps=args.timing_steps, warmup=5)),
        (
            "frozen scales",
            compare_step_times(
                task, plan, main_cfg.with_(scale_mode="frozen", distill_weight=0.0), steps=args.timing_steps
            ),
        ),
    ]
    timing_df = pd.DataFrame(
        [
            {
                "QAT step": label,
                "FP32 train step (ms, median)": round(t.fp32_ms, 2),
                "QAT step (ms, median)": round(t.qat_ms, 2),
                "QAT / FP32": round(t.ratio, 3),
                "steps": t.steps,
            }
            for label, t in timings
        ]
    )
    main_r = results[("mixed", variants[0][0])]
    seed_runs = [main_r] + [
        train_qat(task, plan, main_cfg.with_(seed=s), track=False, progress=False)
        for s in range(1, args.seeds)
    ]
    seed_accs = [r.accuracy_after for r in seed_runs]
    drops = [r.drop_after_pp for r in seed_runs]
    drop = main_r.drop_after_pp
    n_met = sum(d <= 0.5 for d in drops)
    ratio = timings[0][1].ratio
    seconds = time.perf_counter() - t_all
    bits_map = ", ".join(f"{n}={s.w_bits}" for n, s in plan.items())
    learned_map = ", ".join(f"{n}={s.w_bits}" for n, s in rl.final_plan.items())
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [
        HEADING,
        "",
        f"Generated by `make bench-qat` (`python bench/qat_bench.py`), {stamp} on {platform.machine()}, "
        f"torch {torch.__version__}, {args.threads} threads; {seconds:.0f} s in all. Test split (450 images; one "
        "image = 0.22 pp). Every run: AdamW lr 5e-4 with per-step cosine decay, batch 64, "
        f"{args.epochs} epochs, 8-bit activations, BatchNorm folded, the weights of the best validation epoch kept "
        "(`QATConfig` defaults otherwise), seed 0.",
        "",
        f"- (a) Mixed plan at {bits:.3f} average weight bits (HAWQ-V3 ILP over Omega, budget {100 * budget:.2f} % "
        f"of the FP32 weight bytes, bits in {list(W_BITS)}): {bits_map}. After QAT with LSQ and distillation its "
        f"test accuracy is {main_r.accuracy_after:.4f} against FP32 {main_r.fp32_accuracy:.4f}: "
        f"{drop:.2f} pp below FP32 (target <= 0.5 pp: {'met' if drop <= 0.5 else 'NOT met'}); before QAT "
        f"{main_r.accuracy_before:.4f}. With QAT seeds 0-{args.seeds - 1} (data order): "
        f"{', '.join(f'{a:.4f}' for a in seed_accs)}, drops {', '.join(f'{d:.2f}' for d in drops)} pp "
        f"(target met by {n_met} of {len(drops)}).",
        f"- (b) Uniform 2-bit (w2a8 per-channel): {r2.accuracy_before:.4f} before QAT, {r2.accuracy_after:.4f} "
        f"after ({r2b.accuracy_after:.4f} with lr 2e-3).",
        f"- (c) QAT step / FP32 training step: {ratio:.2f} (target <= 2.5: {'met' if ratio <= 2.5 else 'NOT met'}), "
        f"medians of {args.timing_steps} interleaved steps on the same batches after 5 warm-up steps "
        "(`workbench.qat.compare_step_times`; the FP32 step is `train_model`'s, BatchNorm in training mode; the QAT "
        "step includes the teacher's forward pass).",
        "",
        md_table(table),
        "",
        f"Plan learned by the granularity penalty (relaxed bits 2/3/4/6/8 for the first half of the epochs, then "
        f"the most likely width fixed and fine-tuned; {rl.avg_weight_bits:.3f} average bits): {learned_map}.",
        "",
        md_table(timing_df),
        "",
    ]
    _search_bench().splice(Path(args.out), HEADING, lines)
    out_dir = ROOT / "bench" / "out"
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "mixed_plan": plan.to_dict(),
        "budget_fraction": budget,
        "table": table.to_dict(orient="records"),
        "timings": [{"label": label, **t.to_dict()} for label, t in timings],
        "learned_plan": rl.final_plan.to_dict(),
        "histories": {f"{k[0]} {k[1]}": r.history.to_dict(orient="records") for k, r in results.items()},
        "seed_accuracies": seed_accs,
        "seconds": seconds,
    }
    (out_dir / "qat_bench.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
