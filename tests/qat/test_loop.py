"""The QAT loop: learning-rate schedule, seeded and resumable epoch batches, the inner step loop, epoch books."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from workbench.qat import QATConfig, QATError
from workbench.qat.loop import (
    _lr_factor,
    _Progress,
    _split,
    _steps_per_epoch,
    close_epoch,
    epoch_batches,
    run_steps,
)


def _loader(n=10, bs=3):
    x = torch.arange(n, dtype=torch.float32).reshape(n, 1)
    return DataLoader(TensorDataset(x, torch.arange(n)), batch_size=bs, shuffle=True)


def _labels(batches):
    return [b[1].tolist() for b in batches]


class _FakeTrainer:
    """Records the learning-rate factors it was given and returns fixed loss parts."""

    def __init__(self):
        self.factors = []

    def set_lr(self, factor):
        self.factors.append(factor)

    def step(self, x, y):
        return {"loss": float(y.shape[0]), "ce_loss": 1.0}


def test_lr_factor_cosine_and_constant():
    cfg = QATConfig()
    assert _lr_factor(cfg, 0, 8) == 1.0
    assert _lr_factor(cfg, 4, 8) == pytest.approx(0.5)
    assert _lr_factor(cfg, 2, 8) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert _lr_factor(cfg, 8, 8) == pytest.approx(0.0) and _lr_factor(cfg, 12, 8) == pytest.approx(0.0)
    assert _lr_factor(cfg.with_(schedule="constant"), 5, 8) == 1.0


def test_epoch_batches_are_seeded_per_epoch_and_a_resumed_epoch_skips_its_done_batches():
    loader, cfg = _loader(), QATConfig(seed=3)
    first = _labels(epoch_batches(loader, _Progress(epoch=0), cfg))
    assert [len(b) for b in first] == [3, 3, 3, 1]
    assert sorted(sum(first, [])) == list(range(10))
    assert _labels(epoch_batches(loader, _Progress(epoch=0), cfg)) == first  # same (seed, epoch): same order
    assert _labels(epoch_batches(loader, _Progress(epoch=1), cfg)) != first
    assert _labels(epoch_batches(loader, _Progress(epoch=0, step_in_epoch=2), cfg)) == first[2:]
    assert _steps_per_epoch(loader, cfg) == 4 and _steps_per_epoch(loader, cfg.with_(batch_size=5)) == 2
    with pytest.raises(QATError, match="train loader is empty"):
        _steps_per_epoch([], cfg)
    with pytest.raises(QATError, match=r"\(inputs, labels\) tuples"):
        _split(torch.zeros(3))


def test_run_steps_weights_losses_by_batch_size_and_stops_at_max_steps():
    batches = [(torch.zeros(n, 1), torch.zeros(n, dtype=torch.long)) for n in (3, 3, 1)]
    prog, trainer, times = _Progress(), _FakeTrainer(), []
    cut = run_steps(trainer, batches, prog, config=QATConfig(), total_steps=4, step_times=times)
    assert not cut and prog.global_step == prog.step_in_epoch == 3 and prog.seen == 7 and len(times) == 3
    assert prog.sums == {"loss": 19.0, "ce_loss": 7.0}  # 3*3 + 3*3 + 1*1, then 1 per sample
    assert trainer.factors == [1.0, pytest.approx(0.5 * (1 + math.cos(math.pi / 4))), pytest.approx(0.5)]
    prog2 = _Progress(global_step=5)
    cut = run_steps(
        _FakeTrainer(), batches, prog2, config=QATConfig(max_steps=6), total_steps=8, step_times=[]
    )
    assert cut and prog2.global_step == 6 and prog2.step_in_epoch == 1 and prog2.seen == 3


def test_close_epoch_books_history_best_epoch_and_patience():
    model = torch.nn.Linear(2, 1)
    cfg = QATConfig(patience=2)
    prog = _Progress(sums={"loss": 6.0, "ce_loss": 3.0}, seen=3, step_in_epoch=2, epoch_seconds=1.5)
    row = close_epoch(prog, val=0.5, lr=0.1, config=cfg, model=model)
    assert (
        row["epoch"] == 1 and row["loss"] == 2.0 and row["ce_loss"] == 1.0 and math.isnan(row["quant_loss"])
    )
    assert row["steps"] == 2 and row["seconds"] == 1.5 and row["partial"] is False
    assert prog.history == [row] and prog.epoch == 1 and prog.sums == {} and prog.seen == 0
    assert prog.best_epoch == 1 and prog.best_val == 0.5 and set(prog.best_state) == {"weight", "bias"}
    close_epoch(prog, val=0.5, lr=0.1, config=cfg, model=model)  # as good: the later epoch is kept
    assert prog.best_epoch == 2 and prog.since_best == 1 and not prog.done
    close_epoch(prog, val=0.4, lr=0.1, config=cfg, model=model)
    assert prog.best_epoch == 2 and prog.since_best == 2 and prog.done and prog.stopped_early
    relaxed = _Progress(phase="relaxed")
    close_epoch(relaxed, val=0.9, lr=0.1, config=cfg, model=model)  # the relaxed phase has no best epoch
    assert relaxed.best_epoch is None and relaxed.since_best == 0 and relaxed.history[0]["phase"] == "relaxed"
