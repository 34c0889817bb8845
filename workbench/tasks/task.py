"""The :class:`Task`: a model together with its calibration / validation / test data and a metric.

:class:`TaskLike` describes what the stages read from a task (a :class:`Task` or any object with the same
attributes); :func:`check_task` is the one validation of a task: :class:`Task` runs it once when it is built,
and a stage handed some other task-like object runs it at its boundary.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader

from workbench.data import SPLITS
from workbench.quant.inputs import batch_size, concat_inputs, split_batch, take_inputs
from workbench.tasks.metrics import Metric, _check_score, metric_name
from workbench.training import evaluate_accuracy

__all__ = ["SPLITS", "Metric", "Task", "TaskLike", "check_task"]

TASK_LOADERS: tuple[str, ...] = ("calib_loader", "val_loader", "test_loader")
"""Loaders every :class:`Task` holds (``train_loader`` is optional)."""


class TaskLike(Protocol):
    """What the stages read from a task: a model, its loaders, the metric that scores it and its provenance.

    :class:`Task` is the implementation; stages accept any object with these attributes (see :func:`check_task`).
    """

    name: str
    model: nn.Module
    calib_loader: Iterable[Any]
    val_loader: Iterable[Any]
    test_loader: Iterable[Any]
    train_loader: Iterable[Any] | None
    input_shape: tuple[int, ...]
    num_classes: int | None
    metric: Metric
    info: dict[str, Any]
    output_key: str | int | None

    @property
    def metric_name(self) -> str:
        """What :attr:`metric` measures (``"accuracy"``, a fidelity kind, ...)."""
        ...

    def loader(self, split: str) -> Iterable[Any]:
        """The loader of ``split``: ``calib``, ``val``, ``test`` or ``train``."""
        ...

    def evaluate(self, model: nn.Module | None = None, split: str = "test") -> float:
        """The metric of ``model`` (default the task's own) on ``split``."""
        ...

    def example_input(self, batch: int = 1) -> Any:
        """The first ``batch`` real inputs of the calibration loader."""
        ...


def check_task(
    task: Any,
    *,
    need: Iterable[str] = ("model", "calib_loader"),
    need_train: bool = False,
    error: type[ValueError] = ValueError,
) -> None:
    """Validate a task (a :class:`Task` or a :class:`TaskLike` object) at a stage's boundary.

    Every attribute in ``need`` must be present and not None, ``task.model`` must be a ``torch.nn.Module`` and,
    with ``need_train``, the task must have a ``train_loader`` (QAT trains on it). Raises ``error`` (ValueError
    or a subclass of it, e.g. a stage's own error type) naming the missing attribute or the bad type.
    """
    for attr in need:
        if getattr(task, attr, None) is None:
            raise error(f"task must be a workbench.tasks.Task (missing {attr!r}), got {type(task).__name__}")
    if not isinstance(getattr(task, "model", None), nn.Module):
        raise error(
            f"task.model must be a torch.nn.Module, got {type(getattr(task, 'model', None)).__name__}"
        )
    if need_train and getattr(task, "train_loader", None) is None:
        raise error(
            f"task {getattr(task, 'name', '?')!r} has no train loader; QAT needs training data "
            "(task_from_model(..., train_loader=...))"
        )


@dataclass(kw_only=True)
class Task:
    """A model, its data and the metric that scores it (higher is better; default top-1 accuracy).

    ``input_shape`` is the shape of one sample (``(C, H, W)`` for images; of the first input tensor for
    structured inputs). ``train_loader`` may be None (then QAT and
    ``evaluate(split="train")`` are unavailable). ``info`` holds provenance: configs, cache path, accuracy
    measured at training time, dataset sizes.

    ``output_key`` chooses the output tensor every stage looks at when the model's output is structured (a key
    of a dict output, an attribute of an output object, or an index into a tuple output); None takes
    :func:`~workbench.quant.inputs.primary_output`'s default (``logits``, ``last_hidden_state`` or the first
    tensor). It reaches the default accuracy metric, sensitivity probes and losses, the predictor's logits, the
    QAT loss and distillation, and the fidelity of deployments. A metric of your own reads the output itself.

    Stages report *metric loss*: the FP32 metric minus the quantized model's metric (accuracy drop for
    labelled accuracy; columns and fields keep their historical ``acc_drop`` / ``accuracy`` names).
    :attr:`metric_name` says which metric that is.
    """

    name: str
    model: nn.Module = field(repr=False)
    calib_loader: DataLoader = field(repr=False)
    val_loader: DataLoader = field(repr=False)
    test_loader: DataLoader = field(repr=False)
    input_shape: tuple[int, ...]
    num_classes: int | None = None
    train_loader: DataLoader | None = field(default=None, repr=False)
    metric: Metric = field(default=evaluate_accuracy, repr=False)
    info: dict[str, Any] = field(default_factory=dict, repr=False)
    output_key: str | int | None = None

    def __post_init__(self) -> None:
        check_task(self, need=("model", *TASK_LOADERS))

    @property
    def metric_name(self) -> str:
        """What :attr:`metric` measures: ``"accuracy"`` (the default labelled top-1), the kind of a
        :func:`fidelity_metric` (``"cosine"``, ...), the name of an ``eval_fn``, else the metric callable's name."""
        return metric_name(self.metric)

    def loader(self, split: str) -> DataLoader:
        """The loader of ``split``: ``calib``, ``val``, ``test`` or ``train``."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {list(SPLITS)}")
        loader = getattr(self, f"{split}_loader")
        if loader is None:
            raise ValueError(f"task {self.name!r} has no {split} loader")
        return loader

    def evaluate(self, model: nn.Module | None = None, split: str = "test") -> float:
        """``metric`` of ``model`` (default the task's own model) on ``split``; a metric returning NaN or
        something that is not a number raises ValueError naming the value."""
        model = self.model if model is None else model
        if self.metric is evaluate_accuracy and self.output_key is not None:
            value = evaluate_accuracy(model, self.loader(split), output_key=self.output_key)
        else:
            value = self.metric(model, self.loader(split))
        return _check_score(value, f"the metric {self.metric_name!r} of task {self.name!r}")

    def example_input(self, batch: int = 1) -> Any:
        """The first ``batch`` real inputs of the calibration loader (concatenating batches if needed), in the
        structure the loader yields them: a tensor, a tuple or a dict of tensors (targets are dropped)."""
        if not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be an int >= 1, got {batch!r}")
        parts: list[Any] = []
        have = 0
        for item in self.calib_loader:
            x = split_batch(item)[0]
            parts.append(x)
            have += batch_size(x)
            if have >= batch:
                break
        if have < batch:
            raise ValueError(f"calibration loader holds only {have} samples, asked for batch={batch}")
        return take_inputs(concat_inputs(parts), batch)

    @property
    def device(self) -> torch.device:
        """Where the task's model (and so every stage run on this task) lives."""
        from workbench.devices import model_device

        return model_device(self.model)

    def to(self, device: str | torch.device) -> Task:
        """This task with its model on ``device`` (a copy; this task's model is not moved)."""
        from workbench.devices import on_device

        return on_device(self, device)
