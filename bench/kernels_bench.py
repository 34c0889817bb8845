"""The kernel menu on a transformer: FP32 vs bf16 vs int8 / int4 weight-only vs a mixed 4/8 weight-only plan.

Every variant is a plan on the Linear layers (embedding tables stay float) deployed by
``workbench.hardware.deploy.deploy`` (weight-only layers on ``aten._weight_int8pack_mm`` /
``aten._weight_int4pack_mm_for_cpu``, bf16 layers on bf16 ``nn.Linear``), timed side by side (interleaved
runs, medians) at batch 1 and batch 32, with the cosine of the logits and of the last hidden state to FP32 and
to the plan's own simulation beside each. The mixed plan puts the ``--mixed-frac`` most sensitive Linear layers
(output cosine with that layer alone at 4 bits) at 8 bits, the rest at 4 (group 32). Writes its section of
docs/BENCHMARKS.md and bench/out/kernels.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from workbench.benchsuite import markdown_table, splice_section
from workbench.benchsuite.machine import machine_info
from workbench.hardware.deploy import deploy, time_side_by_side
from workbench.quant import QuantPlan, QuantSpec
from workbench.quant.inputs import call_model
from workbench.quant.swap import quantize_model
from workbench.transformer_task import BertConfig, DigitsBert, get_digits_bert, token_loaders

ROOT = Path(__file__).resolve().parents[1]
HEADING = "## Kernel menu: weight-only Linear kernels on a transformer (batch 1 and 32, {seq} tokens)"
W8 = QuantSpec(w_bits=8, a_bits=32)
W4 = QuantSpec(w_bits=4, a_bits=32, granularity="per_group", group_size=32)
BF16 = QuantSpec(w_bits=16, a_bits=16)
MODELS = ("digits_bert", "minilm_size")


def build_model(name: str) -> torch.nn.Module:
    """``digits_bert``: the trained DigitsBert (hidden 64, 2 layers); ``minilm_size``: a DigitsBert of
    all-MiniLM-L6's shape (hidden 384, 6 layers, 12 heads, intermediate 1536), random weights (seed 0)."""
    if name == "digits_bert":
        return get_digits_bert()[0].eval()
    torch.manual_seed(0)
    return DigitsBert(BertConfig(hidden=384, layers=6, heads=12, intermediate=1536, dropout=0.0)).eval()


def linear_layers(model: torch.nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if type(m) is torch.nn.Linear]


def _outputs(model: Any, x: dict) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.inference_mode():
        out = call_model(model, x)
    return out.logits.float(), out.last_hidden_state.float()


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return F.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()


def mixed_plan(model: torch.nn.Module, x: dict, frac: float) -> tuple[QuantPlan, list[str]]:
    """8 bits for the ``frac`` most sensitive Linear layers (logit cosine with that layer alone at W4), 4 else."""
    ref = _outputs(model, x)[0]
    layers = linear_layers(model)
    drop = {}
    for name in layers:
        sim = quantize_model(model, QuantPlan({name: W4}), None, warn_float=False).eval()
        drop[name] = 1.0 - _cos(_outputs(sim, x)[0], ref)
    eight = sorted(layers, key=lambda n: -drop[n])[: max(1, round(frac * len(layers)))]
    return QuantPlan({n: (W8 if n in eight else W4) for n in layers}), eight


def variants(model: torch.nn.Module, x: dict, frac: float) -> tuple[dict[str, QuantPlan | None], list[str]]:
    layers = linear_layers(model)
    mixed, eight = mixed_plan(model, x, frac)
    return {
        "fp32": None,
        "bf16": QuantPlan({n: BF16 for n in layers}),
        "int8 weight-only": QuantPlan({n: W8 for n in layers}),
        "int4 weight-only (g32)": QuantPlan({n: W4 for n in layers}),
        f"mixed 4/8 weight-only ({len(eight)} of {len(layers)} at 8)": mixed,
    }, eight


def avg_bits(model: torch.nn.Module, plan: QuantPlan | None) -> float:
    mods = dict(model.named_modules())
    sizes = {n: mods[n].weight.numel() for n in linear_layers(model)}
    bits = {n: 32 if plan is None or n not in plan else plan[n].w_bits for n in sizes}
    return sum(bits[n] * sizes[n] for n in sizes) / sum(sizes.values())


def measure(name: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    model = build_model(name)
    batch = next(iter(token_loaders(batch_size=32, seed=0)["test"]))[0]
    batch = {k: v[:, : args.seq_len] for k, v in batch.items()}  # the first tokens of each sequence
    plans, _ = variants(model, {k: v[:8] for k, v in batch.items()}, args.mixed_frac)
    deployed, sims = {}, {}
    for label, plan in plans.items():
        if plan is None:
            deployed[label], sims[label] = model, model
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dep = deploy(model, plan, {k: v[:8] for k, v in batch.items()}, strict=True)
        deployed[label], sims[label] = dep.module, dep.simulated
    rows = []
    for bs in (1, 32):
        x = {k: v[:bs] for k, v in batch.items()}
        stats = time_side_by_side(deployed, x, repeats=args.repeats, warmup=2, threads=args.threads)
        ref = _outputs(model, x)
        for label, plan in plans.items():
            out, sim = _outputs(deployed[label], x), _outputs(sims[label], x)
            rows.append({
                "model": name, "batch": bs, "variant": label, "avg_w_bits": avg_bits(model, plan),
                "median_ms": stats[label].median_ms, "min_ms": stats[label].min_ms,
                "speedup_vs_fp32": stats["fp32"].median_ms / stats[label].median_ms,
                "logit_cos_fp32": _cos(out[0], ref[0]), "hidden_cos_fp32": _cos(out[1], ref[1]),
                "hidden_cos_sim": _cos(out[1], sim[1]),
            })  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--mixed-frac", type=float, default=0.25)
    parser.add_argument(
        "--seq-len", type=int, default=64, help="tokens per sequence (the digits' 64 or fewer)"
    )
    parser.add_argument("--note", default="", help="a sentence on the conditions, written into the section")
    parser.add_argument("--doc", default=str(ROOT / "docs" / "BENCHMARKS.md"))
    parser.add_argument("--json", default=str(ROOT / "bench" / "out" / "kernels.json"))
    args = parser.parse_args()
    models = [m for m in args.models.split(",") if m]
    bad = [m for m in models if m not in MODELS]
    if bad:
        raise SystemExit(f"--models {bad} unknown; choose from {MODELS}")
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    load0 = os.getloadavg()[0]
    rows = [r for m in models for r in measure(m, args)]
    seconds, load1 = time.perf_counter() - t0, os.getloadavg()[0]
    info = machine_info()
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"args": vars(args), "machine": info, "rows": rows}, indent=1))
    cols = ["model", "batch", "variant", "avg_w_bits", "median_ms", "speedup_vs_fp32", "logit_cos_fp32",
            "hidden_cos_fp32", "hidden_cos_sim"]  # fmt: skip
    table = markdown_table(rows, cols, lambda v: f"{v:.4g}" if isinstance(v, float) else str(v))
    lines = [
        HEADING.format(seq=args.seq_len),
        "",
        f"Command: `python bench/kernels_bench.py --repeats {args.repeats} --threads {args.threads} --mixed-frac "
        f"{args.mixed_frac} --seq-len {args.seq_len}` "
        f"({seconds:.0f} s). Machine: {info['cpu']}, {info['cores']} cores, AVX512-VNNI {info['avx512_vnni']}, "
        f"AVX512-BF16 {info['avx512_bf16']}, torch {torch.__version__}, {args.threads} threads; load average "
        f"{load0:.1f} before / {load1:.1f} after. Medians of {args.repeats} "
        f"interleaved runs after 2 warm-ups; inputs: the first {args.seq_len} tokens of digits test sequences "
        f"(batch 1: {args.seq_len} rows per Linear, batch 32: {32 * args.seq_len}).",
        "Every plan covers the Linear layers only (embedding tables stay float); weight-only layers run on the "
        "kernel menu (`aten._weight_int8pack_mm`, `aten._weight_int4pack_mm_for_cpu`, bf16 activations), "
        "`bf16` on bf16 `nn.Linear`. `hidden_cos_sim`: deployed vs the plan's own fake-quant simulation. "
        f"Mixed: the {args.mixed_frac:.0%} most sensitive Linear layers (logit cosine with that layer alone at "
        "W4) at 8 bits per channel, the rest W4 group 32. `minilm_size` has random weights (no pretrained "
        "sentence encoder is installed here): its fidelity columns measure kernels, not task quality.",
        *([args.note] if args.note else []),
        "",
        *table,
        "",
    ]
    splice_section(Path(args.doc), HEADING.format(seq=args.seq_len), lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
