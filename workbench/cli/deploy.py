"""``workbench deploy``: run a plan on real int8 / bf16 kernels and compare latency and accuracy with FP32
(:mod:`workbench.hardware.deploy`); flags map onto :class:`~workbench.hardware.deploy.DeployConfig`."""

from __future__ import annotations

import argparse
from typing import Any

from workbench.cli.common import add_task_args, config_from_args, load_task, print_table, tracking_flag

CONFIG_FLAGS = ("batch_size", "threads", "repeats", "warmup", "engine", "strict")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("deploy", help="run a plan on real int8 / bf16 kernels; latency and accuracy vs FP32")
    add_task_args(p)
    p.add_argument("--plan", required=True, help="plan JSON file or shorthand, e.g. uniform:w8a8:per_channel")
    p.add_argument("--profile", default="cpu_measured", help="precision profile (name or path) for dispatch")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, help="torch threads while timing (default: torch's)")
    p.add_argument("--repeats", type=int, default=7, help="timed runs of each model, interleaved (median)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument(
        "--engine",
        choices=["auto", "x86", "onednn", "fbgemm", "qnnpack", "onnx"],
        default="auto",
        help="torch.ao quantized engine (auto: x86 on a CPU with VNNI, qnnpack without, where x86 needs 7-bit "
        "activations); onnx: the plan exported to ONNX (QDQ int8, MatMulNBits weight-only Linear) and run on "
        "ONNX Runtime beside torch.ao and FP32 (needs the [onnx] extra)",
    )
    p.add_argument("--onnx-out", metavar="PATH", help="--engine onnx: the ONNX file (default data/exports/)")
    p.add_argument(
        "--kernels",
        choices=["auto", "static", "dynamic", "bf16", "menu"],
        default="auto",
        help="static: int8 through torch.ao FX (calibrated activations; float-input models); dynamic: FP32, "
        "dynamic int8 Linear kernels and bf16 side by side (token ids, dict inputs); bf16: FP32 vs bf16; "
        "menu: the plan deployed as it is, weight-only layers on the kernel menu (int4 / int8 weight-only "
        "Linear, packed Embedding; token-id models too when no layer needs static int8); "
        "auto (default): static for a single float input, dynamic otherwise",
    )
    p.add_argument(
        "--split", choices=["val", "test"], default="test", help="split the task's metric is measured on"
    )
    p.add_argument("--strict", action="store_true", help="error instead of falling back on missing kernels")
    p.add_argument("--input-size", type=int, default=224, help="torchvision models without data: image side")
    p.add_argument("--num-classes", type=int, default=1000, help="torchvision models without data: classes")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def _synthetic_inputs(args: argparse.Namespace):
    """(model, example input, calibration batches, None): a torchvision model on random inputs (speed only)."""
    import torch

    from workbench.models import build_model

    if args.kernels in ("dynamic", "bf16"):
        raise ValueError(
            f"--kernels {args.kernels} measures a task's metric on its data: give --task, a zoo model or "
            "--dataset (a torchvision model without data deploys with --kernels static)"
        )
    torch.manual_seed(args.seed)
    model = build_model(args.model, num_classes=args.num_classes).eval()
    if args.weights:
        from workbench.tasks import _load_weights

        _load_weights(model, args.weights)  # tensors only; errors name the file
    gen = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.batch_size, 3, args.input_size, args.input_size, generator=gen)
    calib: Any = [torch.randn(8, 3, args.input_size, args.input_size, generator=gen) for _ in range(2)]
    return model, x, calib, None, None


def _task_inputs(args: argparse.Namespace, task):
    """(model, example input, calibration loader, evaluate, data): the task's, measured on ``--split`` (fidelity
    on the whole split too)."""
    dataset = getattr(task.calib_loader, "dataset", None)
    n = len(dataset) if dataset is not None and hasattr(dataset, "__len__") else args.batch_size
    x = task.example_input(min(args.batch_size, n))
    split = args.split

    def evaluate(m):
        return task.evaluate(m, split)

    return task.model, x, task.calib_loader, evaluate, task.loader(split)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from workbench.hardware.deploy import DeployConfig, choose_kernels
    from workbench.models import REAL_MODELS, ZOO_MODELS
    from workbench.pipeline import resolve_plan

    cfg = None if args.engine == "onnx" else config_from_args(DeployConfig, args, CONFIG_FLAGS)
    has_task = args.model in ZOO_MODELS or args.model in REAL_MODELS or getattr(args, "task", None)
    synthetic = args.dataset is None and not has_task
    task = None
    if synthetic:
        inputs = _synthetic_inputs(args)
    else:
        task = load_task(args)
        inputs = _task_inputs(args, task)
    if args.engine == "onnx":
        from workbench.cli.deploy_onnx import run_onnx

        return run_onnx(args, inputs, synthetic)
    x = inputs[1]
    kernels, reason = args.kernels, f"--kernels {args.kernels}"
    if kernels == "auto":
        kernels, reason = choose_kernels(x)
    plan = resolve_plan(args.plan, inputs[0])
    if kernels not in ("static", "menu"):
        return _deploy_dynamic(args, task, plan, cfg, kernels, reason)
    res = _measure_static(args, plan, cfg, kernels, inputs)
    return _report_static(args, res, plan, synthetic, kernels, reason)


def _measure_static(args: argparse.Namespace, plan, cfg, kernels: str, inputs: tuple):
    """Deploy ``plan`` on static int8 kernels (:func:`~workbench.hardware.deploy.measure_deployment`), logged."""
    from workbench.hardware.deploy import measure_deployment

    model, x, calib, evaluate, data = inputs
    return measure_deployment(
        model, plan, calib, example_input=x, evaluate=evaluate, profile=args.profile, config=cfg,
        track=tracking_flag(args), name=args.model, plan_name=str(args.plan), data=data,
    )  # fmt: skip


def _report_static(
    args: argparse.Namespace, res, plan, synthetic: bool, kernels: str, reason: str
) -> dict[str, Any]:
    print_table(res.layers)
    d = res.to_dict()
    for key in ("fp32_accuracy", "accuracy"):
        if d[key] != d[key]:  # NaN: no labelled data (synthetic inputs)
            d[key] = None
    acc = "n/a (synthetic inputs)" if synthetic else f"{res.fp32_accuracy:.4f} -> {res.accuracy:.4f}"
    print(
        f"{args.model} batch {res.batch_size}, {res.threads} threads: FP32 {res.fp32_latency_ms:.2f} ms, deployed "
        f"{res.deployed_latency_ms:.2f} ms, speedup {res.speedup:.2f}x; accuracy {acc}; estimate on "
        f"{res.profile}: {res.estimated_latency_ms:.2f} ms"
    )
    print_table(res.fidelity())
    print(
        f"fidelity on {res.fidelity_samples} inputs: simulated vs FP32 cosine {res.sim_cosine_to_fp32:.4f}, top-1 "
        f"{res.sim_top1_agreement:.4f}; deployed vs FP32 cosine {res.cosine_to_fp32:.4f}, top-1 "
        f"{res.top1_agreement:.4f}; simulated vs deployed cosine {res.sim_vs_deployed_cosine:.5f}"
    )
    for note in res.notes:
        print(f"note: {note}")
    return {
        "model": args.model,
        "plan_source": str(args.plan),
        "synthetic_inputs": synthetic,
        "kernels": kernels,
        "kernels_reason": reason,
        **d,
        "plan": plan.to_dict(),
    }


def _deploy_dynamic(args, task, plan, cfg, kernels: str, reason: str) -> dict[str, Any]:
    """``deploy --kernels dynamic|bf16`` (or auto on a model fed token ids): FP32, dynamic int8 and / or bf16
    side by side (:func:`workbench.hardware.deploy.compare_kernels`)."""
    from workbench.hardware.deploy import compare_kernels

    df = compare_kernels(
        task, plan, kernels=kernels, config=cfg, split=args.split, track=tracking_flag(args), name=args.model,
        plan_name=str(args.plan),
    )  # fmt: skip
    print_table(df)
    deployed = "dynamic_int8" if kernels == "dynamic" else "bf16"
    return _report_dynamic(args, df, plan, cfg, kernels, reason, deployed)


def _report_dynamic(args, df, plan, cfg, kernels: str, reason: str, deployed: str) -> dict[str, Any]:
    rows = df.set_index("variant")
    fp, dep = rows.loc["fp32"], rows.loc[deployed]
    print(
        f"{args.model} on {kernels} kernels ({reason}); batch {cfg.batch_size}, {df.attrs['threads']} threads: "
        f"FP32 {fp['median_ms']:.2f} ms, {deployed} {dep['median_ms']:.2f} ms, speedup "
        f"{dep['speedup_vs_fp32']:.2f}x; metric on {args.split} {fp['metric']:.4f} -> {dep['metric']:.4f}; "
        f"cosine to FP32 {dep['cosine_to_fp32']:.4f}, top-1 agreement {dep['top1_agreement']:.4f}"
    )
    for note in df.attrs["notes"]:
        print(f"note: {note}")
    return {
        "model": args.model,
        "plan_source": str(args.plan),
        "synthetic_inputs": False,
        "kernels": kernels,
        "kernels_reason": reason,
        "deployed_variant": deployed,
        "fp32_latency_ms": float(fp["median_ms"]),
        "deployed_latency_ms": float(dep["median_ms"]),
        "speedup": float(dep["speedup_vs_fp32"]),
        "fp32_accuracy": float(fp["metric"]),
        "accuracy": float(dep["metric"]),
        "cosine_to_fp32": float(dep["cosine_to_fp32"]),
        "top1_agreement": float(dep["top1_agreement"]),
        "split": args.split,
        **{k: df.attrs[k] for k in ("batch_size", "repeats", "threads", "engine", "cpu", "device", "notes")},
        "rows": df.to_dict(orient="records"),
        "plan": plan.to_dict(),
    }
