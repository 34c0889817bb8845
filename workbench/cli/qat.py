"""``workbench qat``: quantization-aware training of a plan (:func:`workbench.qat.train_qat`), also under
torchrun; flags map onto :class:`~workbench.qat.QATConfig`."""

from __future__ import annotations

import argparse
from typing import Any

from workbench.cli.common import add_task_args, config_from_args, load_task, print_table

CONFIG_FLAGS = (
    "epochs", "lr", "optimizer", "batch_size", "scale_mode", "bn", "distill_weight", "temperature",
    "quant_loss_weight", "bit_penalty", "patience", "seed", "checkpoint", "resume", "overwrite", "max_steps",
)  # fmt: skip


def add_parser(sub: argparse._SubParsersAction) -> None:
    from workbench.qat import BN_MODES, OPTIMIZERS, SCALE_MODES

    p = sub.add_parser(
        "qat", help="quantization-aware training of a plan (STE / LSQ, distillation, bit penalty)"
    )
    add_task_args(p)
    p.add_argument("--plan", required=True, help="plan JSON file or shorthand, e.g. uniform:w2a8:per_channel")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--lr", type=float, default=5e-4, help="learning rate in (0, 1]")
    p.add_argument("--optimizer", choices=list(OPTIMIZERS), default="adamw")
    p.add_argument("--batch-size", type=int, help="training batch size (default: the task's)")
    p.add_argument("--scale-mode", choices=list(SCALE_MODES), default="lsq", help="learn step sizes (LSQ)")
    p.add_argument("--bn", choices=list(BN_MODES), default="fold", help="fold BatchNorm or freeze its stats")
    p.add_argument("--distill-weight", type=float, default=0.0, help="weight of distillation from FP32")
    p.add_argument("--temperature", type=float, default=4.0, help="distillation temperature")
    p.add_argument("--quant-loss-weight", type=float, default=0.0, help="weight of ||W - Q(W)||^2 / ||W||^2")
    p.add_argument("--bit-penalty", type=float, default=0.0, help="learn per-layer bits with this penalty")
    p.add_argument("--patience", type=int, help="early stopping: epochs without better val accuracy")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", help="checkpoint file, written every epoch")
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    p.add_argument("--out", help="write the packed low-bit model here (.wbq)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from workbench import distributed
    from workbench.pipeline import resolve_plan
    from workbench.qat import QATConfig, qat_table, train_qat

    config = config_from_args(QATConfig, args, CONFIG_FLAGS)
    info = distributed.init_from_env(args.device)  # under torchrun: join the process group (gloo / nccl)
    try:
        task = load_task(args)
        plan = resolve_plan(args.plan, task.model)
        result = train_qat(
            task, plan, config, packed_path=args.out, track=not args.no_track,
            progress=not args.quiet and info.is_main,
        )  # fmt: skip
    finally:
        distributed.shutdown()
    if not info.is_main:  # rank 0 alone reports and writes --json
        args.json = None
        return {"rank": info.rank}
    print_table(qat_table({str(args.plan): result}))
    if args.out:
        print(f"packed model written to {args.out} ({result.packed_bytes} bytes)")
    return {"model": args.model, "plan_source": str(args.plan), **result.to_dict()}
