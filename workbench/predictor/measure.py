"""Measuring one plan: the FP32 reference outputs of a split and :func:`measure_plan`."""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from workbench.devices import model_device
from workbench.models import evaluate_accuracy
from workbench.quant import LayerCost, QuantPlan, quantize_model
from workbench.quant.inputs import call_model, input_tensors, move_inputs, primary_output, split_batch
from workbench.quant.spec import summarize
from workbench.tasks.finite import check_finite_output, model_label
from workbench.tasks.task import TaskLike, check_task


@dataclass(frozen=True, eq=False)
class _Reference:
    """FP32 outputs of one split: logits, targets, the task metric's value, and the data fingerprint."""

    split: str
    logits: torch.Tensor
    targets: torch.Tensor | None
    accuracy: float
    default_metric: bool
    fingerprint: str


@torch.no_grad()
def _logits(
    model: nn.Module, loader: Iterable, output_key: str | int | None = None
) -> tuple[torch.Tensor, torch.Tensor | None, str]:
    """Concatenated outputs of ``model`` over ``loader`` (eval mode; the output ``output_key`` chooses, else the
    primary one), targets if batches have them, and a hash of the inputs and targets."""
    h = hashlib.sha256()
    device = model_device(model)
    modes = {m: m.training for m in model.modules()}
    model.eval()
    outs, ys = [], []
    try:
        for batch in loader:
            x, y = split_batch(batch)  # x: a tensor, a tuple or a dict of tensors, passed as it comes
            y = y if isinstance(y, torch.Tensor) else None
            if isinstance(x, torch.Tensor):
                h.update(x.detach().cpu().contiguous().numpy().tobytes())
            else:
                for path, t in input_tensors(x):
                    h.update(path.encode())
                    h.update(t.detach().cpu().contiguous().numpy().tobytes())
            out = primary_output(call_model(model, move_inputs(x, device)), key=output_key)
            outs.append(out.detach().float().cpu())
            if y is not None:
                h.update(y.detach().cpu().contiguous().numpy().tobytes())
                ys.append(y.detach().cpu())
    finally:
        for m, mode in modes.items():
            m.training = mode
    if not outs:
        raise ValueError("the evaluation loader is empty")
    return torch.cat(outs), (torch.cat(ys) if ys else None), h.hexdigest()


def _reference(task: TaskLike, split: str) -> _Reference:
    loader = task.loader(split)
    logits, targets, fingerprint = _logits(task.model, loader, task.output_key)
    check_finite_output(logits, model=model_label(task.model, task.model, task.name), split=split)
    default = task.metric is evaluate_accuracy and targets is not None and logits.dim() == 2
    acc = _top1(logits, targets) if default else task.evaluate(task.model, split)
    return _Reference(split, logits, targets, acc, default, fingerprint)


def _top1(logits: torch.Tensor, targets: torch.Tensor) -> float:
    return int((logits.argmax(dim=1) == targets).sum()) / int(targets.numel())


def measure_plan(
    task: TaskLike, plan: QuantPlan, reference: _Reference, *, costs: Mapping[str, LayerCost]
) -> dict[str, float]:
    """Quantize ``task.model`` with ``plan`` (calibrated on ``task.calib_loader``) and measure it on the
    reference split: accuracy (the task metric), acc_drop (the metric loss: FP32 metric minus metric, x 100;
    accuracy drop in pp for labelled accuracy), kl (mean KL(FP32 || quantized) of the softmax outputs),
    logit_mse, size_bytes, avg_weight_bits, avg_act_bits, bops, eval_seconds. Outputs are those
    ``task.output_key`` chooses (None: the primary output)."""
    task = check_task(task, need=("model", "calib_loader", "loader", "evaluate"))
    t0 = time.perf_counter()
    qmodel = quantize_model(task.model, plan, task.calib_loader)
    logits, _, _ = _logits(qmodel, task.loader(reference.split), task.output_key)
    check_finite_output(logits, model=model_label(qmodel, task.model, task.name), split=reference.split)
    if reference.default_metric:
        acc = _top1(logits, reference.targets)
    else:
        acc = task.evaluate(qmodel, reference.split)
    ref = reference.logits
    if ref.dim() == 2 and ref.shape[1] > 1:
        logp_ref = torch.log_softmax(ref.double(), dim=1)
        logp_q = torch.log_softmax(logits.double(), dim=1)
        kl = float((logp_ref.exp() * (logp_ref - logp_q)).sum(dim=1).mean())
    else:
        kl = math.nan
    summary = summarize(plan, task.model, costs)
    return {
        "accuracy": float(acc),
        "acc_drop": 100.0 * (reference.accuracy - float(acc)),
        "kl": max(kl, 0.0) if math.isfinite(kl) else kl,
        "logit_mse": float((logits.double() - ref.double()).pow(2).mean()),
        "size_bytes": int(summary.size_bytes),
        "avg_weight_bits": float(summary.avg_weight_bits),
        "avg_act_bits": float(summary.avg_act_bits),
        "bops": int(summary.bops),
        "eval_seconds": time.perf_counter() - t0,
    }
