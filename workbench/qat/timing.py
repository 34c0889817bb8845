"""QAT step time against the FP32 training step, measured side by side on the same batches."""

from __future__ import annotations

import copy
import os
import statistics
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

from workbench.qat.config import QATConfig, QATError, _is_int
from workbench.qat.inputs import TASK_NEEDS, _resolve_plan
from workbench.qat.loop import _split, _train_batches
from workbench.qat.mixed_bits import _layer_weight_counts, _relax
from workbench.qat.trainer import _Trainer
from workbench.quant import QuantPlan, quantize_model
from workbench.quant.inputs import call_model, primary_output
from workbench.tasks.task import TaskLike, check_task


@dataclass(frozen=True)
class StepTimes:
    """Median wall time (ms) of QAT and FP32 training steps measured side by side (interleaved)."""

    fp32_ms: float
    qat_ms: float
    steps: int
    warmup: int
    threads: int
    fp32_times_ms: tuple[float, ...] = field(repr=False)
    qat_times_ms: tuple[float, ...] = field(repr=False)

    @property
    def ratio(self) -> float:
        return self.qat_ms / self.fp32_ms

    def to_dict(self) -> dict[str, Any]:
        return {
            "fp32_ms": self.fp32_ms,
            "qat_ms": self.qat_ms,
            "ratio": self.ratio,
            "steps": self.steps,
            "warmup": self.warmup,
            "threads": self.threads,
        }


def _cycle(loader: Iterable) -> Iterator[Any]:
    while True:
        yield from loader


def compare_step_times(
    task: TaskLike,
    plan: QuantPlan | str | os.PathLike,
    config: QATConfig | None = None,
    *,
    steps: int = 40,
    warmup: int = 5,
) -> StepTimes:
    """QAT step time against the FP32 training step, interleaved on the same batches, medians after ``warmup``.

    The FP32 step is :func:`workbench.models.train_model`'s (AdamW, cross-entropy, BatchNorm in training mode);
    the QAT step is :func:`train_qat`'s with ``config`` (distillation, loss terms and learned scales included).
    Both train private copies; the task's model is not modified.
    """
    config = config if config is not None else QATConfig()
    task = check_task(task, need=TASK_NEEDS, need_train=True, error=QATError)
    if not _is_int(steps) or steps < 1 or not _is_int(warmup) or warmup < 0:
        raise QATError(
            f"steps must be an int >= 1 and warmup an int >= 0, got steps={steps!r}, warmup={warmup!r}"
        )
    plan = _resolve_plan(plan, task.model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        qmodel = quantize_model(
            task.model, plan, task.calib_loader, fold_bn=config.bn == "fold",
            max_calib_batches=config.calib_batches, seed=config.seed,
        )  # fmt: skip
        relaxed = config.relax_epochs > 0
        if relaxed:
            _relax(qmodel, config.bit_candidates, config.bit_init)
        teacher = copy.deepcopy(task.model).eval() if config.distill_weight > 0 else None
        example = task.example_input(1)
        output_key = task.output_key
        trainer = _Trainer(
            qmodel, config, plan=plan, teacher=teacher, counts=_layer_weight_counts(task.model),
            example=example, relaxed=relaxed, output_key=output_key,
        )  # fmt: skip
        fp32 = copy.deepcopy(task.model).train()
        opt = torch.optim.AdamW(fp32.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        trainer.train_mode()

        def fp32_step(x: Tensor, y: Tensor) -> None:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(primary_output(call_model(fp32, x), key=output_key), y).backward()
            opt.step()

        batches = _cycle(_train_batches(task.train_loader, epoch=0, config=config))
        t_fp, t_q = [], []
        for i in range(warmup + steps):
            x, y = _split(next(batches))
            order = (0, 1) if i % 2 == 0 else (1, 0)  # alternate who goes first
            for which in order:
                t0 = time.perf_counter()
                if which == 0:
                    fp32_step(x, y)
                else:
                    trainer.set_lr(1.0)
                    trainer.step(x, y)
                dt = 1e3 * (time.perf_counter() - t0)
                if i >= warmup:
                    (t_fp if which == 0 else t_q).append(dt)
        trainer.close()
    return StepTimes(
        fp32_ms=statistics.median(t_fp),
        qat_ms=statistics.median(t_q),
        steps=steps,
        warmup=warmup,
        threads=torch.get_num_threads(),
        fp32_times_ms=tuple(t_fp),
        qat_times_ms=tuple(t_q),
    )
