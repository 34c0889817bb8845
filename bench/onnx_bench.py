"""ONNX export on ONNX Runtime beside torch.ao: EfficientNet-Lite1 (pretrained, photo crops) and DigitsBert.

Each plan is simulated once (``quantize_model``), exported to ONNX from that simulation
(``workbench.hardware.export.compare_onnx``: QuantizeLinear / DequantizeLinear for integer layers, MatMulNBits
for weight-only Linear layers) and run in ONNX Runtime with every graph optimization, beside the FP32 model and
the same plan and simulation deployed through ``workbench.hardware.deploy.deploy`` (torch.ao FX int8, kernel
menu for weight-only layers), timed interleaved (medians). Fidelity: mean per-sample cosine of the logits of
each variant to the plan's simulation and to FP32, over the test crops / test sequences. Writes its section of
docs/BENCHMARKS.md and bench/out/onnx.json.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from workbench.benchsuite import markdown_table, splice_section
from workbench.benchsuite.machine import machine_info
from workbench.hardware.export.measure import OnnxCompareConfig, compare_onnx
from workbench.quant import QuantPlan, QuantSpec
from workbench.quant.inputs import concat_inputs, split_batch, take_inputs

ROOT = Path(__file__).resolve().parents[1]
HEADING = "## ONNX export on ONNX Runtime beside torch.ao (EfficientNet-Lite1, DigitsBert)"
W8A8 = QuantSpec(w_bits=8, a_bits=8)
W4A8 = QuantSpec(w_bits=4, a_bits=8)
W8 = QuantSpec(w_bits=8, a_bits=32)
W4 = QuantSpec(w_bits=4, a_bits=32, granularity="per_group", group_size=32)
BF16 = QuantSpec(w_bits=16, a_bits=16)


def lite1_plans(model: torch.nn.Module) -> dict[str, QuantPlan]:
    """W8A8 per channel everywhere; mixed: the stem FP32, the last three 1x1 project convs W4A8, the classifier
    weight-only W4 group 32 (MatMulNBits), every other conv W8A8 per channel; mixed_bf16: mixed with the
    depthwise convs in bf16."""
    convs = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    projects = [n for n in convs if n.endswith("_project_conv")][-3:]
    mixed = {n: (W4A8 if n in projects else W8A8) for n in convs if n != "_conv_stem"}
    mixed["_fc"] = W4
    bf16 = {n: (BF16 if n.endswith("_depthwise_conv") else s) for n, s in mixed.items()}
    return {
        "w8a8": QuantPlan.from_shorthand("uniform:w8a8:per_channel", model),
        "mixed": QuantPlan(mixed),
        "mixed_bf16": QuantPlan(bf16),
    }


def bert_plans(model: torch.nn.Module) -> dict[str, QuantPlan]:
    """Weight-only: W8 per channel on every Linear; mixed: attention projections and the intermediate Linear W4
    group 32, the output denses, pooler and classifier W8, the word embedding table int8."""
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    mixed = {
        n: (W4 if n.split(".")[-1] in ("query", "key", "value") or "intermediate" in n else W8)
        for n in linears
    }
    mixed["embeddings.word_embeddings"] = W8
    return {"w8_weight_only": QuantPlan(dict.fromkeys(linears, W8)), "mixed_w4w8": QuantPlan(mixed)}


def _lite1(
    args: argparse.Namespace,
) -> list[tuple[str, torch.nn.Module, Any, Any, Any, dict[str, QuantPlan]]]:
    from workbench.tasks.photos import PhotoCropConfig
    from workbench.tasks.real import real_task

    crops = PhotoCropConfig(calib_size=64, val_size=16, test_size=args.lite1_test, batch_size=16)
    task = real_task("efficientnet_lite1", crops=crops)
    x = take_inputs(split_batch(next(iter(task.test_loader)))[0], 8)
    return [
        ("efficientnet_lite1", task.model, task.calib_loader, x, task.test_loader, lite1_plans(task.model))
    ]


def _bert(args: argparse.Namespace) -> list[tuple[str, torch.nn.Module, Any, Any, Any, dict[str, QuantPlan]]]:
    from workbench.transformer_task import get_digits_bert, token_loaders

    model = get_digits_bert()[0].eval()
    loaders = token_loaders(batch_size=32)
    test = concat_inputs([split_batch(b)[0] for _, b in zip(range(4), loaders["test"], strict=False)])
    plans = bert_plans(model)
    return [
        (f"digits_bert (batch {b})", model, loaders["calib"], take_inputs(test, b), test, plans)
        for b in (1, 32)
    ]


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    cfg = OnnxCompareConfig(threads=args.threads, repeats=args.repeats, warmup=2)
    setups = (_lite1(args) if "lite1" in args.models else []) + (_bert(args) if "bert" in args.models else [])
    with tempfile.TemporaryDirectory() as tmp:
        for name, model, calib, x, data, plans in setups:
            for plan_name, plan in plans.items():
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    df, _ = compare_onnx(model, plan, calib, x, Path(tmp) / "m.onnx", data=data, config=cfg)
                for r in df.to_dict(orient="records"):
                    rows.append({"model": name, "plan": plan_name, **r, "onnx_mb": df.attrs["onnx_size_mb"]})
                print(df.to_string(), df.attrs["notes"], flush=True)
    return rows


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.5f}" if 0.9 < v <= 1.0 else f"{v:.4g}"
    return str(v)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default="lite1,bert", help="comma list of lite1, bert")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--lite1-test", type=int, default=64, help="test crops for Lite1's fidelity")
    parser.add_argument("--note", default="", help="a sentence on the conditions, written into the section")
    parser.add_argument("--doc", default=str(ROOT / "docs" / "BENCHMARKS.md"))
    parser.add_argument("--json", default=str(ROOT / "bench" / "out" / "onnx.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    rows = measure(args)
    seconds, load1 = time.perf_counter() - t0, os.getloadavg()[0]
    info = machine_info()
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"args": vars(args), "machine": info, "rows": rows}, indent=1))
    cols = ["model", "plan", "variant", "median_ms", "speedup_vs_fp32", "cosine_to_sim", "cosine_to_fp32",
            "samples"]  # fmt: skip
    table = markdown_table(rows, cols, _fmt)
    import onnxruntime

    lines = [
        HEADING,
        "",
        f"Command: `python bench/onnx_bench.py --models {args.models} --repeats {args.repeats} --threads "
        f"{args.threads} --lite1-test {args.lite1_test}` ({seconds:.0f} s). Machine: {info['cpu']}, "
        f"{info['cores']} cores (AVX2, no VNNI), shared with other jobs (load average {load0:.1f} before / "
        f"{load1:.1f} after); torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, {args.threads} "
        f"thread(s) for torch and ONNX Runtime alike. Medians of {args.repeats} interleaved runs after 2 warm-ups "
        "of one batch (Lite1: 8 crops of 240x240; DigitsBert: batch 1 and 32 of 64 tokens).",
        "`torch_ao`: `deploy` of the same plan and simulation (torch.ao FX int8, qnnpack engine here; weight-only "
        "layers on the kernel menu); `onnx`: the exported file in ONNX Runtime (all graph optimizations: QDQ "
        "pairs fused into integer kernels, uint8 weights on this non-VNNI CPU). `cosine_to_sim`: mean per-sample "
        f"logit cosine to the plan's simulation over `samples` inputs (Lite1: {args.lite1_test} test crops; "
        "DigitsBert: 128 test sequences). `onnx_fp32`: the FP32 model exported "
        "and run in ONNX Runtime (its float kernels, no plan). Lite1 mixed: stem FP32, the last three 1x1 project "
        "convs W4A8, classifier W4 group 32 weight-only (MatMulNBits), the rest W8A8 per channel; mixed_bf16: "
        "the same with every depthwise conv in bf16 (a failed `deploy` is named in the notes). DigitsBert mixed: Q/K/V and intermediate W4 "
        "group 32, other Linear W8 per channel, word embeddings int8 (all weight-only).",
        *([args.note] if args.note else []),
        "",
        *table,
        "",
    ]
    splice_section(Path(args.doc), HEADING, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
