"""Bring your own model: DigitsBert (a BERT-style encoder with dict inputs) on real kernels.

FP32, torch.ao dynamic int8 (per-channel weights) and bf16, timed side by side on one batch of 32 sequences of
64 tokens with 2 torch threads (interleaved runs, medians), with test accuracy and fidelity to FP32. Writes the
section below into docs/BENCHMARKS.md and bench/out/transformer.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from workbench.benchsuite import markdown_table, splice_section
from workbench.hardware.dynamic import compare_linear_deployments
from workbench.transformer_task import transformer_task

ROOT = Path(__file__).resolve().parents[1]
HEADING = "## Bring your own model: DigitsBert on dynamic int8 and bf16 kernels"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=31)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--doc", default=str(ROOT / "docs" / "BENCHMARKS.md"))
    parser.add_argument("--json", default=str(ROOT / "bench" / "out" / "transformer.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    task = transformer_task()
    df = compare_linear_deployments(
        task, batch_size=args.batch_size, repeats=args.repeats, threads=args.threads
    )
    seconds = time.perf_counter() - t0
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"args": vars(args), "rows": df.to_dict("records")}, indent=1))
    cols = ["variant", "median_ms", "min_ms", "max_ms", "speedup_vs_fp32", "metric", "cosine_to_fp32",
            "top1_agreement"]  # fmt: skip
    table = markdown_table(
        df[cols].to_dict("records"), cols, lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)
    )
    n_params = sum(p.numel() for p in task.model.parameters())
    lines = [
        HEADING,
        "",
        f"Command: `python bench/transformer_bench.py` ({seconds:.0f} s). `workbench.transformer_task.DigitsBert`:",
        f"2 encoder layers, hidden 64, {n_params:,} parameters; inputs `{{input_ids, attention_mask}}`, batch",
        f"{args.batch_size} x 64 tokens, {args.threads} torch threads, {args.repeats} interleaved runs after 3",
        "warm-ups. `metric`: test accuracy (450 digits read as token sequences). Dynamic int8: torch.ao",
        "`quantize_dynamic` of every Linear with per-channel weights (activations quantized per batch on the fly).",
        "At hidden size 64 dynamic int8 is not faster than FP32 here; the likely cause (per-batch activation",
        "quantization costing about what the small int8 matmuls save) was not measured separately.",
        "",
        *table,
        "",
    ]
    splice_section(Path(args.doc), HEADING, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
