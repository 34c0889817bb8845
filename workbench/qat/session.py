"""A QAT run's setup and state: the checked inputs and checkpoint (:class:`_Setup`), the quantized model with
its trainer and progress (:class:`_Session`), resuming from a checkpoint and the checkpoint hook."""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from workbench import distributed
from workbench.devices import on_device
from workbench.qat.checkpoint import _open_checkpoint, _run_key, _save_checkpoint, model_fingerprint
from workbench.qat.config import QATConfig, QATError
from workbench.qat.inputs import TASK_NEEDS, _resolve_plan
from workbench.qat.loop import _Progress, _steps_per_epoch
from workbench.qat.mixed_bits import _discretize, _layer_weight_counts, _relax
from workbench.qat.trainer import _Trainer
from workbench.quant import QuantPlan, quantize_model
from workbench.quant.inputs import move_inputs
from workbench.tasks.task import TaskLike, check_task


@dataclass
class _Setup:
    """What :func:`train_qat` settles before training: checked inputs, the run key and the checkpoint to resume."""

    task: TaskLike
    plan: QuantPlan
    config: QATConfig
    packed_path: Path | None
    dist_info: distributed.DistInfo
    total_steps: int
    output_key: str | int | None
    key: dict[str, Any]
    fingerprint: str
    ckpt: dict[str, Any] | None
    t_start: float
    counts: dict[str, int]
    example: Any


@dataclass
class _Session:
    """A QAT run under way: the quantized model, its teacher, trainer and progress, and what was measured."""

    qmodel: nn.Module
    example: Any  # on the quantized model's device
    fp32_acc: float
    acc_before: float
    val_before: float
    teacher: nn.Module | None
    prog: _Progress
    trainer: _Trainer = field(init=False, repr=False)  # set by _start; replaced when the relaxed phase ends
    resumed_at: int | None = None
    step_times: list[float] = field(default_factory=list)
    interrupted: bool = False
    partial_row: dict[str, Any] | None = None


def _prepare(
    task: TaskLike,
    plan: QuantPlan | str | os.PathLike,
    config: QATConfig,
    *,
    packed_path: str | os.PathLike | None,
    device: str | torch.device | None,
) -> _Setup:
    """Check config, task, plan and packed path, move the task to ``device`` and open the checkpoint."""
    if not isinstance(config, QATConfig):
        raise QATError(f"config must be a QATConfig, got {type(config).__name__}")
    task = check_task(task, need=TASK_NEEDS, need_train=True, error=QATError)
    dist_info = distributed.current()
    if device is not None:
        task = on_device(task, distributed.process_device(device))
    plan = _resolve_plan(plan, task.model)
    if packed_path is not None:
        packed_path = Path(packed_path)
        if packed_path.exists() and not config.overwrite:
            raise FileExistsError(f"packed model {packed_path} exists; pass overwrite=True to replace it")
    steps_per_epoch = _steps_per_epoch(task.train_loader, config)
    output_key = task.output_key
    key = _run_key(config, plan, steps_per_epoch, output_key)
    fingerprint = model_fingerprint(task.model)
    ckpt = _open_checkpoint(config, key, fingerprint)
    total_steps = config.epochs * steps_per_epoch
    t_start = time.perf_counter()
    counts = _layer_weight_counts(task.model)
    example = task.example_input(1)
    return _Setup(
        task=task, plan=plan, config=config, packed_path=packed_path, dist_info=dist_info,
        total_steps=total_steps, output_key=output_key, key=key, fingerprint=fingerprint, ckpt=ckpt,
        t_start=t_start, counts=counts, example=example,
    )  # fmt: skip


def _teacher(model: nn.Module, config: QATConfig) -> nn.Module | None:
    """A frozen copy of the FP32 model to distill from (None without distillation)."""
    if config.distill_weight <= 0:
        return None
    teacher = copy.deepcopy(model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def _new_trainer(s: _Setup, run: _Session, *, plan: QuantPlan, relaxed: bool) -> _Trainer:
    """A trainer of the run's model for ``plan`` (``relaxed``: also train the bit logits with the penalty)."""
    return _Trainer(
        run.qmodel, s.config, plan=plan, teacher=run.teacher, counts=s.counts, example=run.example,
        relaxed=relaxed, output_key=s.output_key,
    )  # fmt: skip


def _restore_progress(run: _Session, ckpt: dict[str, Any]) -> None:
    """Progress, phase (the widths learned before it) and model state of a checkpoint."""
    prog = run.prog
    for k, v in ckpt["progress"].items():
        setattr(prog, k, v)
    prog.best_state = ckpt["best_state"]
    if prog.phase == "discrete" and prog.learned_bits:
        _discretize(run.qmodel, prog.learned_bits)
    run.qmodel.load_state_dict(ckpt["model_state"])
    run.resumed_at = prog.global_step


def _restore_optimizers(trainer: _Trainer, ckpt: dict[str, Any]) -> None:
    """Optimizer states and the RNG state of a checkpoint (the RNG last: nothing may draw after it)."""
    trainer.optimizer.load_state_dict(ckpt["optimizer_state"])
    if trainer.bit_optimizer is not None:
        trainer.bit_optimizer.load_state_dict(ckpt["bit_optimizer_state"])
    torch.set_rng_state(ckpt["rng"])


def _start(s: _Setup) -> _Session:
    """Quantize (calibrated), measure before training, relax the bit widths, resume a checkpoint and build the
    trainer; called inside the run's seeded RNG, whose draws happen in exactly this order."""
    task, config = s.task, s.config
    qmodel = quantize_model(
        task.model, s.plan, task.calib_loader, fold_bn=config.bn == "fold",
        max_calib_batches=config.calib_batches, seed=config.seed,
    )  # fmt: skip
    example = move_inputs(s.example, next(qmodel.parameters()).device)
    fp32_acc = task.evaluate(task.model, "test")
    acc_before = task.evaluate(qmodel, "test")
    val_before = task.evaluate(qmodel, "val")
    teacher = _teacher(task.model, config)
    prog = _Progress(phase="relaxed" if config.relax_epochs > 0 else "discrete")
    run = _Session(
        qmodel=qmodel, example=example, fp32_acc=fp32_acc, acc_before=acc_before, val_before=val_before,
        teacher=teacher, prog=prog,
    )  # fmt: skip
    if prog.phase == "relaxed":
        _relax(qmodel, config.bit_candidates, config.bit_init)
    if s.ckpt is not None:
        _restore_progress(run, s.ckpt)
    run.trainer = _new_trainer(s, run, plan=s.plan, relaxed=prog.phase == "relaxed")
    if s.ckpt is not None:
        _restore_optimizers(run.trainer, s.ckpt)
    return run


def _save(s: _Setup, run: _Session) -> None:
    """The checkpoint hook: write the run's state (rank 0 only; nothing without ``config.checkpoint``)."""
    if s.config.checkpoint and s.dist_info.is_main:
        _save_checkpoint(
            Path(s.config.checkpoint), key=s.key, fingerprint=s.fingerprint, model=run.qmodel,
            trainer=run.trainer, prog=run.prog,
        )  # fmt: skip
