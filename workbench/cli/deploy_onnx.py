"""``workbench deploy --engine onnx``: the plan exported to ONNX and run on ONNX Runtime, beside the same plan on
torch.ao and the FP32 model (:func:`workbench.hardware.export.measure.compare_onnx`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from workbench.cli.common import print_table


def run_onnx(args: argparse.Namespace, inputs: tuple, synthetic: bool) -> dict[str, Any]:
    """``inputs``: (model, example batch, calibration data, evaluate, data) as ``deploy`` builds them."""
    from workbench.hardware.export.measure import OnnxCompareConfig, compare_onnx
    from workbench.hardware.export.onnx import OnnxConfig
    from workbench.paths import data_dir
    from workbench.pipeline import resolve_plan

    model, x, calib = inputs[:3]
    plan = resolve_plan(args.plan, model)
    path = Path(args.onnx_out) if args.onnx_out else data_dir() / "exports" / f"{args.model or 'model'}.onnx"
    onnx_cfg = OnnxConfig(on_unsupported="error" if args.strict else "float")
    cfg = OnnxCompareConfig(threads=args.threads, repeats=args.repeats, warmup=args.warmup, onnx=onnx_cfg)
    df, export = compare_onnx(model, plan, calib, x, path, config=cfg)
    print_table(export.table())
    print_table(df)
    rows = df.set_index("variant")
    print(
        f"{args.model} batch {df.attrs['batch_size']}, {df.attrs['threads']} threads: ONNX Runtime "
        f"{rows.loc['onnx', 'median_ms']:.2f} ms ({rows.loc['onnx', 'speedup_vs_fp32']:.2f}x FP32), cosine to the "
        f"simulation {rows.loc['onnx', 'cosine_to_sim']:.5f} on the timed batch; file {path} "
        f"({df.attrs['onnx_size_mb']:.2f} MB)"
    )
    for note in df.attrs["notes"]:
        print(f"note: {note}")
    return {
        "model": args.model,
        "plan_source": str(args.plan),
        "synthetic_inputs": synthetic,
        "engine": "onnx",
        "onnx_path": str(path),
        "onnx_size_mb": df.attrs["onnx_size_mb"],
        "batch_size": df.attrs["batch_size"],
        "threads": df.attrs["threads"],
        "cpu": df.attrs["cpu"],
        "deployed_latency_ms": float(rows.loc["onnx", "median_ms"]),
        "fp32_latency_ms": float(rows.loc["fp32", "median_ms"]),
        "sim_vs_deployed_cosine": float(rows.loc["onnx", "cosine_to_sim"]),
        "notes": list(df.attrs["notes"]),
        "rows": df.to_dict(orient="records"),
        "layers": export.table().to_dict(orient="records"),
        "plan": plan.to_dict(),
    }
