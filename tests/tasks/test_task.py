"""Task validation (check_task, once when a Task is built) and the TaskLike protocol."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from workbench.tasks import Task, TaskLike, check_task


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(4, 3, generator=g), torch.tensor([0, 1, 0, 1])) for _ in range(2)]


def _task(**overrides) -> Task:
    batches = _batches()
    fields = dict(name="t", model=nn.Linear(3, 2), calib_loader=batches, val_loader=batches,
                  test_loader=batches, input_shape=(3,))  # fmt: skip
    return Task(**{**fields, **overrides})


def test_task_is_validated_when_built() -> None:
    task = _task()
    assert task.input_shape == (3,) and task.train_loader is None
    with pytest.raises(ValueError, match="task.model must be a torch.nn.Module, got str"):
        _task(model="resnet18")
    with pytest.raises(ValueError, match="missing 'val_loader'"):
        _task(val_loader=None)
    with pytest.raises(ValueError, match="missing 'calib_loader'"):
        replace(task, calib_loader=None)  # a copy is validated too


def test_check_task_on_task_like_objects() -> None:
    task = _task()
    check_task(task)
    with pytest.raises(ValueError, match="has no train loader; QAT needs training data"):
        check_task(task, need_train=True)
    check_task(replace(task, train_loader=_batches()), need_train=True)
    like = SimpleNamespace(model=nn.Linear(3, 2), calib_loader=_batches())
    check_task(like)
    with pytest.raises(ValueError, match=r"missing 'evaluate'\), got SimpleNamespace"):
        check_task(like, need=("model", "calib_loader", "evaluate"))

    class StageError(ValueError):
        pass

    with pytest.raises(StageError, match="got NoneType"):
        check_task(SimpleNamespace(model=None, calib_loader=[]), need=(), error=StageError)


def test_task_satisfies_task_like() -> None:
    task: TaskLike = _task()
    assert task.metric_name == "accuracy"
    assert task.evaluate(split="calib") in {k / 8 for k in range(9)}
    assert task.example_input(batch=5).shape == (5, 3)
    assert len(list(task.loader("val"))) == 2
