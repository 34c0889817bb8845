"""``workbench quantize``: quantize a model with a plan and measure its accuracy and size."""

from __future__ import annotations

import argparse
from typing import Any

from workbench.cli.common import add_task_args, load_task, print_table, tracking_flag


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quantize", help="quantize with a plan and measure accuracy and size")
    add_task_args(p)
    p.add_argument("--plan", required=True, help="plan JSON file or shorthand, e.g. uniform:w4a8:per_channel")
    p.add_argument("--out", help="write the packed low-bit model here (.wbq)")
    p.add_argument(
        "--ptq",
        default="default",
        help="post-training quantization steps, comma-separated, run in their fixed order (cle, ranges, gptq, adaround, "
        "bias_correction); 'default' (the measured default, see the README) or 'none'",
    )
    p.set_defaults(func=run)


def cli_ptq(text: str | None) -> tuple[str, ...]:
    """The PTQ step names of ``--ptq`` (``default``: :data:`~workbench.quant.ptq.DEFAULT_PTQ`); a bad name exits
    with an error listing the valid steps."""
    from workbench.quant.ptq import DEFAULT_PTQ, parse_ptq

    if text is None or text.strip() == "default":
        return DEFAULT_PTQ
    return parse_ptq(text)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from workbench import tracking
    from workbench.pipeline import evaluate_plan, resolve_plan, results_table
    from workbench.tasks.metrics import FidelityMetric

    ptq = cli_ptq(args.ptq)  # validated before any work
    task = load_task(args)
    plan = resolve_plan(args.plan, task.model)
    fidelity_task = isinstance(task.metric, FidelityMetric)
    res = evaluate_plan(
        task,
        plan,
        name=str(args.plan),
        packed_path=args.out,
        overwrite=args.overwrite,
        keep_model=fidelity_task,
        ptq=ptq,
    )
    tracking.log_stage(
        "quantize",
        res,
        params={"model": args.model, "plan": str(args.plan), "ptq": ",".join(ptq) or "none"},
        plan=plan,
        run_name=f"quantize-{args.model}",
        enabled=tracking_flag(args),
    )
    print_table(results_table([res]))
    summary = plan.summary(task.model, task.example_input())
    keys = ("covered_fraction", "covered_params", "total_params", "weight_covered_fraction", "weight_layers")
    coverage = {k: getattr(summary, k) for k in (*keys, "covered_weight_layers", "coverage")}
    print(f"the plan {summary.coverage}")
    fidelity = _fidelity(task, res.model) if fidelity_task else None
    if args.out:
        print(f"packed model written to {args.out} ({res.packed_bytes} bytes)")
    return {
        "model": args.model,
        "plan_source": str(args.plan),
        "ptq": list(ptq),
        **res.to_dict(),
        **coverage,
        **({"fidelity": fidelity} if fidelity is not None else {}),
        "plan": plan.to_dict(),
    }


def _fidelity(task: Any, qmodel: Any) -> dict[str, float]:
    """Every fidelity figure of the quantized model on the whole test split, printed beside the task's metric."""
    from workbench.tasks import fidelity_report

    report = fidelity_report(qmodel, task.metric, task.loader("test"))
    k = task.metric.k
    print(
        f"fidelity to FP32 on the {report['samples']} test samples: cosine {report['cosine']:.4f}, "
        f"KL {report['kl']:.4g}, top-{k} overlap {report[f'top{k}_overlap']:.4f}, "
        f"top-1 agreement {report['top1_agreement']:.4f}"
    )
    return report
