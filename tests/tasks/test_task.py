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


def top5(model: nn.Module, loader: object) -> float:
    return 1.0


def test_check_task_fills_in_what_a_task_like_object_lacks() -> None:
    task = _task()
    assert check_task(task) is task  # a Task has every attribute: passed through
    like = SimpleNamespace(model=nn.Linear(3, 2), calib_loader=_batches(), metric=top5)
    done = check_task(like)
    assert done is not like and done.model is like.model and done.calib_loader is like.calib_loader
    assert (done.name, done.output_key, done.metric_name, done.info) == ("Linear", None, "top5", {})
    assert (done.metric, done.val_loader, done.test_loader, done.train_loader) == (top5, None, None, None)
    assert not hasattr(like, "name") and not hasattr(like, "output_key")  # the caller's object is unchanged
    named = SimpleNamespace(**vars(like), name="mine", output_key="logits", metric_name=None, info={"a": 1})
    done = check_task(named)
    assert (done.name, done.output_key, done.metric_name, done.info) == ("mine", "logits", "top5", {"a": 1})
    assert check_task(SimpleNamespace(model=nn.Linear(3, 2), calib_loader=[])).metric_name == "accuracy"


def test_check_task_names_what_it_cannot_fill_in() -> None:
    class Slotted:
        __slots__ = ("calib_loader", "model", "name")

        def __init__(self) -> None:
            self.model, self.calib_loader, self.name = nn.Linear(3, 2), _batches(), "slotted"

    class StageError(ValueError):
        pass

    with pytest.raises(
        StageError, match=r"task Slotted lacks \['output_key', 'metric', 'metric_name', 'info'"
    ) as err:
        check_task(Slotted(), error=StageError)
    assert "output_key: None (the primary output" in str(err.value) and "task_from_model" in str(err.value)
