"""Quantization-aware training of a QuantPlan on a Task: :func:`train_qat`, composed of its stages (settle the
inputs, quantize and measure, resume: :mod:`workbench.qat.session`; train epochs with the loop of
:mod:`workbench.qat.loop`, checkpointing after each; discretize, pack, measure and log), and :func:`train_steps`
(a run stopped after a few optimizer steps).

Everything from quantization to the last evaluation runs inside one forked RNG seeded by ``config.seed``, in a
fixed order, so a run (and a resumed one) is reproducible bit for bit.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from workbench import tracking
from workbench.qat.config import QATConfig
from workbench.qat.loop import _history_row, close_epoch, epoch_batches, run_steps
from workbench.qat.mixed_bits import _discretize, _mixed
from workbench.qat.result import HISTORY_COLUMNS, QATResult
from workbench.qat.session import _new_trainer, _prepare, _save, _Session, _Setup, _start
from workbench.quant import QuantPlan, save_packed
from workbench.tasks.task import TaskLike


def _start_tracking(s: _Setup, run: _Session, track: bool) -> AbstractContextManager[Any]:
    """The MLflow run of stage ``"qat"`` (rank 0 only; a no-op run when ``track`` is off)."""
    name = s.task.name
    run_params = {
        "task": name,
        "plan_layers": len(s.plan),
        "world_size": s.dist_info.world_size,
        "device": str(next(run.qmodel.parameters()).device),
        **s.config.to_dict(),
    }
    return tracking.start_run(
        "qat",
        run_name=f"qat-{name}",
        params={k: v for k, v in run_params.items() if v is not None},
        enabled=None if track and s.dist_info.is_main else False,
        tags={"resumed_at_step": run.resumed_at} if run.resumed_at is not None else None,
    )


def _to_discrete(s: _Setup, run: _Session) -> None:
    """End of the relaxed phase: every layer takes its most likely width, a new trainer fine-tunes that plan."""
    run.trainer.close()
    run.prog.learned_bits = {n: q.choice() for n, q in _mixed(run.qmodel).items()}
    _discretize(run.qmodel, run.prog.learned_bits)
    run.prog.phase = "discrete"
    run.trainer = _new_trainer(s, run, plan=run.qmodel.quant_plan, relaxed=False)


def _stop_midway(s: _Setup, run: _Session, lr: float) -> None:
    """``max_steps`` stopped the run inside an epoch: checkpoint, and a partial history row if it took steps."""
    _save(s, run)
    prog = run.prog
    if prog.step_in_epoch:
        val = s.task.evaluate(run.qmodel, "val")
        run.partial_row = _history_row(prog, val=val, lr=lr, partial=True, steps=prog.step_in_epoch)


def _end_epoch(s: _Setup, run: _Session, mlrun: Any, bar: Any, lr: float) -> None:
    """A finished epoch: validate, book it, log its metrics, advance the bar and checkpoint."""
    val = s.task.evaluate(run.qmodel, "val")
    row = close_epoch(run.prog, val=val, lr=lr, config=s.config, model=run.qmodel)
    metrics = {k: v for k, v in row.items() if k not in ("epoch", "phase", "partial")}
    mlrun.log_metrics(metrics, step=row["epoch"])
    bar.update(1)
    bar.set_postfix(loss=f"{row['loss']:.4f}", val_acc=f"{val:.4f}")
    _save(s, run)


def _train_epochs(s: _Setup, run: _Session, mlrun: Any, bar: Any) -> None:
    """Epochs until the last one, early stopping or ``max_steps`` (which sets ``run.interrupted``)."""
    config, prog = s.config, run.prog
    while not prog.done and prog.epoch < config.epochs:
        if config.max_steps is not None and prog.global_step >= config.max_steps:
            run.interrupted = True
            return
        if prog.phase == "relaxed" and prog.epoch >= config.relax_epochs:
            _to_discrete(s, run)
        run.trainer.train_mode()
        batches = epoch_batches(s.task.train_loader, prog, config)
        t_epoch = time.perf_counter()
        run.interrupted = run_steps(
            run.trainer, batches, prog, config=config, total_steps=s.total_steps, step_times=run.step_times
        )
        prog.epoch_seconds += time.perf_counter() - t_epoch
        lr = run.trainer.optimizer.param_groups[0]["lr"]
        if run.interrupted:
            _stop_midway(s, run, lr)
            return
        _end_epoch(s, run, mlrun, bar, lr)


def _train_with_bar(s: _Setup, run: _Session, mlrun: Any, progress: bool) -> None:
    """The epochs under a progress bar of epochs (shown with ``progress``), closed whatever happens."""
    from tqdm.auto import tqdm

    bar = tqdm(
        total=s.config.epochs, initial=run.prog.epoch, desc=f"qat {s.task.name}".strip(),
        disable=not progress, leave=False,
    )  # fmt: skip
    try:
        _train_epochs(s, run, mlrun, bar)
    finally:
        bar.close()


def _final_model(s: _Setup, run: _Session) -> QuantPlan:
    """Learned scales back to buffers, relaxed widths fixed, the best epoch's weights restored (unless the run
    was interrupted); returns the model's final plan."""
    run.trainer.close()
    qmodel, prog = run.qmodel, run.prog
    if prog.phase == "relaxed":  # stopped inside the relaxed phase: fix the most likely widths
        _discretize(qmodel, {n: q.choice() for n, q in _mixed(qmodel).items()})
    if not run.interrupted and s.config.restore_best and prog.best_state is not None:
        qmodel.load_state_dict(prog.best_state)
    qmodel.eval()
    return qmodel.quant_plan


def _pack(s: _Setup, run: _Session, mlrun: Any) -> int:
    """Write the packed model (``packed_path`` on rank 0, a temporary file otherwise), log it, return its size."""
    with tempfile.TemporaryDirectory() as tmp:
        own = s.packed_path is not None and s.dist_info.is_main
        target = s.packed_path if own else Path(tmp) / "model.wbq"
        packed = save_packed(run.qmodel, target, overwrite=s.config.overwrite).file_bytes
        mlrun.log_artifact(target, "packed")
    return packed


def _finish(s: _Setup, run: _Session, mlrun: Any) -> QATResult:
    """The trained model's final plan, measurements and packed size as a :class:`QATResult`, logged."""
    task, prog = s.task, run.prog
    final_plan = _final_model(s, run)
    acc_after = task.evaluate(run.qmodel, "test")
    val_after = task.evaluate(run.qmodel, "val")
    summary = final_plan.summary(task.model, run.example)
    in_summary = s.plan.summary(task.model, run.example)
    packed = _pack(s, run, mlrun)
    history = pd.DataFrame(
        prog.history + ([run.partial_row] if run.partial_row else []), columns=HISTORY_COLUMNS
    )
    result = QATResult(
        task=task.name,
        plan=s.plan,
        final_plan=final_plan,
        config=s.config,
        fp32_accuracy=run.fp32_acc,
        accuracy_before=run.acc_before,
        accuracy_after=acc_after,
        val_accuracy_before=run.val_before,
        val_accuracy_after=val_after,
        avg_weight_bits=summary.avg_weight_bits,
        input_avg_weight_bits=in_summary.avg_weight_bits,
        avg_act_bits=summary.avg_act_bits,
        size_bytes=summary.size_bytes,
        fp32_size_bytes=summary.fp32_size_bytes,
        packed_bytes=packed,
        packed_path=str(s.packed_path) if s.packed_path is not None else None,
        steps=prog.global_step,
        epochs_run=prog.epoch,
        best_epoch=prog.best_epoch,
        stopped_early=prog.stopped_early,
        interrupted=run.interrupted,
        resumed_at_step=run.resumed_at,
        step_ms=1e3 * statistics.median(run.step_times) if run.step_times else None,
        seconds=time.perf_counter() - s.t_start,
        history=history,
        run_id=getattr(mlrun, "run_id", None),
        world_size=s.dist_info.world_size,
        metric_name=task.metric_name,
        output_key=s.output_key,
        model=run.qmodel,
    )
    _log_result(mlrun, result, step=prog.epoch)
    return result


def _log_result(mlrun: Any, result: QATResult, *, step: int) -> None:
    """The run's final metrics, its input and final plans, history table and result."""
    mlrun.log_metrics(
        {
            "fp32_accuracy": result.fp32_accuracy,
            "accuracy_before": result.accuracy_before,
            "accuracy_after": result.accuracy_after,
            "avg_weight_bits": result.avg_weight_bits,
            "packed_bytes": result.packed_bytes,
            "step_ms": result.step_ms,
        },
        step=step,
    )
    mlrun.log_plan(result.plan, "input_plan")
    mlrun.log_plan(result.final_plan, "final_plan")
    mlrun.log_dataframe(result.history, "history")
    mlrun.log_json(result.to_dict(), "qat_result")


def train_qat(
    task: TaskLike,
    plan: QuantPlan | str | os.PathLike,
    config: QATConfig | None = None,
    *,
    packed_path: str | os.PathLike | None = None,
    track: bool = True,
    progress: bool = True,
    device: str | torch.device | None = None,
) -> QATResult:
    """Quantization-aware training of ``plan`` on ``task``; returns the trained model and its measurements.

    ``plan``: a :class:`QuantPlan`, a plan JSON path or a shorthand (``uniform:w2a8:per_channel``). The model
    is a quantized copy of ``task.model`` (never modified). ``packed_path``: where the packed low-bit model is
    written (refused if it exists, unless ``config.overwrite``); a temporary file otherwise, removed once its
    size is read (and logged). ``track``: one MLflow run of stage ``"qat"`` with per-epoch metrics (step =
    epoch), the input and final plans, the history table and the packed model as artifacts. ``device``:
    where to train (``cpu``, ``cuda``, ``cuda:N``; None: where the task's model is). The cross-entropy and
    distillation losses take the output ``task.output_key`` chooses (a key, attribute or tuple index; None: the
    primary output, see :func:`~workbench.quant.inputs.primary_output`).

    Data parallel: inside a torch.distributed process group (``torchrun``, see :mod:`workbench.distributed`)
    every process trains a DistributedDataParallel replica on its slice of each global batch, so the run
    equals a single-process run up to floating-point summation order; rank 0 alone tracks, writes the
    checkpoint and the packed file.
    """
    config = config if config is not None else QATConfig()
    s = _prepare(task, plan, config, packed_path=packed_path, device=device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        run = _start(s)
        with _start_tracking(s, run, track) as mlrun:
            _train_with_bar(s, run, mlrun, progress)
            result = _finish(s, run, mlrun)
    return result


def train_steps(
    task: TaskLike,
    plan: QuantPlan | str | os.PathLike,
    config: QATConfig | None = None,
    *,
    max_steps: int = 3,
    track: bool = False,
    progress: bool = False,
) -> QATResult:
    """:func:`train_qat` stopped after ``max_steps`` optimizer steps (the cheap entry point for tests)."""
    config = config if config is not None else QATConfig()
    return train_qat(task, plan, config.with_(max_steps=max_steps), track=track, progress=progress)
