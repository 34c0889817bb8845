"""The QAT training loop: an epoch's batches (seeded reshuffle, resumable), the learning-rate schedule, the
progress a checkpoint restores, and :func:`run_steps`, the inner loop of optimizer steps over batches."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from workbench.qat.config import QATConfig, QATError
from workbench.qat.trainer import _Trainer
from workbench.quant.inputs import split_batch


def _split(batch: Any) -> tuple[Any, Tensor]:
    """``(inputs, labels)`` of a training batch; inputs may be a tensor, a tuple or a dict of tensors."""
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise QATError(
            f"train batches must be (inputs, labels) tuples (inputs: a tensor, tuple or dict), got "
            f"{type(batch).__name__}"
        )
    x, y = split_batch(batch)
    if not isinstance(y, Tensor):
        raise QATError(f"train batch labels must be a tensor, got {type(y).__name__}")
    return x, y


def _lr_factor(config: QATConfig, step: int, total: int) -> float:
    if config.schedule == "constant" or total <= 0:
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))


def _train_batches(loader: Any, *, epoch: int, config: QATConfig) -> Iterable:
    """The epoch's batches: a DataLoader over a sized dataset is reshuffled with a generator seeded by (seed,
    epoch), so any epoch (and a resumed one) sees the same order; other iterables are used as they are."""
    dataset = getattr(loader, "dataset", None)
    batch_size = config.batch_size or getattr(loader, "batch_size", None)
    if isinstance(loader, DataLoader) and batch_size and hasattr(dataset, "__len__"):
        g = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=True,
            generator=g,
            collate_fn=loader.collate_fn,
            drop_last=loader.drop_last,
        )
    return loader


def _steps_per_epoch(loader: Any, config: QATConfig) -> int:
    batches = _train_batches(loader, epoch=0, config=config)
    try:
        n = len(batches)  # type: ignore[arg-type]
    except TypeError:
        n = sum(1 for _ in batches)
    if n == 0:
        raise QATError("the task's train loader is empty; QAT needs at least one training batch")
    return n


def _state(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@dataclass
class _Progress:
    """Everything a checkpoint restores besides model and optimizer."""

    epoch: int = 0  # completed epochs
    step_in_epoch: int = 0
    global_step: int = 0
    phase: str = "discrete"
    learned_bits: dict[str, int] | None = None
    sums: dict[str, float] = field(default_factory=dict)
    seen: int = 0
    epoch_seconds: float = 0.0
    best_val: float = -1.0
    best_epoch: int | None = None
    best_state: dict[str, Tensor] | None = None
    since_best: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    done: bool = False
    stopped_early: bool = False


def _history_row(prog: _Progress, *, val: float, lr: float, partial: bool, steps: int) -> dict[str, Any]:
    seen = max(prog.seen, 1)
    row: dict[str, Any] = {"epoch": prog.epoch + 1, "phase": prog.phase, "steps": steps}
    for k in ("loss", "ce_loss", "distill_loss", "quant_loss", "expected_bits"):
        row[k] = prog.sums[k] / seen if k in prog.sums else float("nan")
    row.update({"val_accuracy": val, "lr": lr, "seconds": prog.epoch_seconds, "partial": partial})
    return row


def epoch_batches(loader: Any, prog: _Progress, config: QATConfig) -> Iterator[Any]:
    """The batches of epoch ``prog.epoch`` still to train: a resumed epoch skips the ones it already did."""
    batches = iter(_train_batches(loader, epoch=prog.epoch, config=config))
    for _ in range(prog.step_in_epoch):
        next(batches)
    return batches


def run_steps(
    trainer: _Trainer,
    batches: Iterable[Any],
    prog: _Progress,
    *,
    config: QATConfig,
    total_steps: int,
    step_times: list[float],
) -> bool:
    """One optimizer step per batch (learning rate from the schedule), the batch-weighted loss sums and step
    counters kept in ``prog``, each step's wall time appended to ``step_times``. True when ``max_steps`` cut
    the batches short."""
    for batch in batches:
        if config.max_steps is not None and prog.global_step >= config.max_steps:
            return True
        x, y = _split(batch)
        trainer.set_lr(_lr_factor(config, prog.global_step, total_steps))
        t0 = time.perf_counter()
        parts = trainer.step(x, y)
        step_times.append(time.perf_counter() - t0)
        n = int(y.shape[0])
        for k, v in parts.items():
            prog.sums[k] = prog.sums.get(k, 0.0) + v * n
        prog.seen += n
        prog.step_in_epoch += 1
        prog.global_step += 1
    return False


def close_epoch(
    prog: _Progress, *, val: float, lr: float, config: QATConfig, model: nn.Module
) -> dict[str, Any]:
    """Book a finished epoch in ``prog``: its history row (returned), the best epoch of the discrete phase (and
    its weights with ``restore_best``), patience, and empty sums for the next epoch."""
    row = _history_row(prog, val=val, lr=lr, partial=False, steps=prog.step_in_epoch)
    prog.history.append(row)
    if prog.phase == "discrete":
        # patience counts epochs without a better accuracy; among equally good epochs the
        # latest (further down the learning-rate schedule) is kept
        prog.since_best = 0 if val > prog.best_val else prog.since_best + 1
        if val >= prog.best_val:
            prog.best_val, prog.best_epoch = val, prog.epoch + 1
            prog.best_state = _state(model) if config.restore_best else None
    prog.epoch += 1
    prog.step_in_epoch, prog.sums, prog.seen, prog.epoch_seconds = 0, {}, 0, 0.0
    if config.patience is not None and prog.since_best >= config.patience:
        prog.done = prog.stopped_early = True
    return row
