"""The :class:`Task`: a model together with its calibration / validation / test data and a metric.

:class:`TaskLike` describes what the stages read from a task (a :class:`Task` or any object with the same
attributes); :func:`check_task` is the one validation of a task: :class:`Task` runs it once when it is built,
and every stage runs it at its boundary (a :class:`Task` passes through unchanged; another task-like object
lacking an optional attribute gets a copy with the attribute's default, see :data:`TASK_DEFAULTS`).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader

from workbench.data import SPLITS
from workbench.devices import model_device, on_device
from workbench.quant.inputs import batch_size, concat_inputs, split_batch, take_inputs
from workbench.tasks.finite import finite_outputs, model_label
from workbench.tasks.metrics import Metric, _check_score, metric_name
from workbench.training import evaluate_accuracy

__all__ = ["SPLITS", "TASK_DEFAULTS", "Metric", "Task", "TaskLike", "check_task"]

TASK_LOADERS: tuple[str, ...] = ("calib_loader", "val_loader", "test_loader")
"""Loaders every :class:`Task` holds (``train_loader`` is optional)."""

TASK_DEFAULTS: dict[str, str] = {
    "name": "the model's class name",
    "output_key": "None (the primary output; else a key, attribute or index of the model's output)",
    "metric": "None (the task scores itself through evaluate())",
    "metric_name": "the metric's name ('accuracy' without a metric)",
    "info": "{} (provenance)",
    "train_loader": "None (no training data)",
    "val_loader": "None (no validation split)",
    "test_loader": "None (no test split)",
}
"""The optional :class:`TaskLike` attributes and the defaults :func:`check_task` fills in for a task-like
object that lacks them (a ``metric_name`` that is not a str counts as lacking). Every other attribute a stage
reads must be there (the stage names it in ``need``)."""


class TaskLike(Protocol):
    """What the stages read from a task: a model, its loaders, the metric that scores it and its provenance.

    :class:`Task` is the implementation; stages accept any object with these attributes, checked (and the
    optional ones of :data:`TASK_DEFAULTS` filled in) by :func:`check_task` at the stage's boundary.
    """

    name: str
    model: nn.Module
    info: dict[str, Any]
    output_key: str | int | None

    @property
    def calib_loader(self) -> Iterable[Any]:
        """Calibration batches: inputs, or ``(inputs, targets)``."""
        ...

    @property
    def val_loader(self) -> Iterable[Any] | None:
        """Validation batches (None: no validation split)."""
        ...

    @property
    def test_loader(self) -> Iterable[Any] | None:
        """Test batches (None: no test split)."""
        ...

    @property
    def train_loader(self) -> Iterable[Any] | None:
        """Training batches (None: no training data; QAT needs them)."""
        ...

    @property
    def metric(self) -> Metric | None:
        """``metric(model, loader) -> float`` (higher is better); None: :meth:`evaluate` scores by itself."""
        ...

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
) -> TaskLike:
    """Validate a task (a :class:`Task` or a :class:`TaskLike` object) at a stage's boundary; return it.

    Every attribute in ``need`` must be present and not None, ``task.model`` must be a ``torch.nn.Module`` and,
    with ``need_train``, the task must have a ``train_loader`` (QAT trains on it). Raises ``error`` (ValueError
    or a subclass of it, e.g. a stage's own error type) naming the missing attribute or the bad type.

    A task with every attribute of :data:`TASK_DEFAULTS` (every :class:`Task`) is returned as it is; for a
    task-like object lacking some, a shallow copy with their defaults (the object itself is not changed). An
    object that cannot be copied or take them raises ``error`` naming them and their valid values.
    """
    need = tuple(need)
    for attr in need:
        if getattr(task, attr, None) is None:
            raise error(
                f"task must be a workbench.tasks.Task (missing {attr!r}), got {type(task).__name__}; "
                f"this stage reads {list(need)} (see workbench.tasks.TaskLike)"
            )
    if not isinstance(getattr(task, "model", None), nn.Module):
        raise error(
            f"task.model must be a torch.nn.Module, got {type(getattr(task, 'model', None)).__name__}"
        )
    if need_train and getattr(task, "train_loader", None) is None:
        raise error(
            f"task {getattr(task, 'name', '?')!r} has no train loader; QAT needs training data "
            "(task_from_model(..., train_loader=...))"
        )
    lacking = [a for a in TASK_DEFAULTS if not hasattr(task, a)]
    if "metric_name" not in lacking and not isinstance(task.metric_name, str):
        lacking.append("metric_name")
    return _completed(task, lacking, error) if lacking else task


def _completed(task: Any, lacking: list[str], error: type[ValueError]) -> TaskLike:
    """A shallow copy of ``task`` holding the defaults of the ``lacking`` attributes."""
    metric = getattr(task, "metric", None)
    defaults: dict[str, Any] = {
        "name": type(task.model).__name__,
        "output_key": None,
        "metric": None,
        "metric_name": metric_name(metric) if metric is not None else "accuracy",
        "info": {},
        "train_loader": None,
        "val_loader": None,
        "test_loader": None,
    }
    try:
        done = copy.copy(task)
        for attr in lacking:
            object.__setattr__(done, attr, defaults[attr])
    except Exception as err:  # any failure of a user's object is reported as one error
        choices = "; ".join(f"{a}: {TASK_DEFAULTS[a]}" for a in lacking)
        raise error(
            f"task {type(task).__name__} lacks {lacking} and they cannot be set on a copy of it "
            f"({type(err).__name__}: {err}); give it these attributes ({choices}) or wrap the model with "
            "workbench.tasks.task_from_model"
        ) from err
    return done


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
        something that is not a number raises ValueError naming the value, and a model giving NaN / Inf outputs
        raises :class:`~workbench.tasks.finite.NonFiniteOutputError` naming the model and the split."""
        model = self.model if model is None else model
        label = model_label(model, self.model, self.name)
        with finite_outputs(model, label=label, split=split, output_key=self.output_key):
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
        return model_device(self.model)

    def to(self, device: str | torch.device) -> Task:
        """This task with its model on ``device`` (a copy; this task's model is not moved)."""
        return on_device(self, device)
