"""Bring your own model: :func:`task_from_model` wraps any ``nn.Module`` with your own loaders as a
:class:`~workbench.tasks.task.Task`, and :func:`load_task_file` returns the Task a function in a Python file
builds (the CLI's ``--task FILE.py:FUNC``).

Your loaders may yield ``(inputs, targets)`` or the inputs alone, the inputs a tensor, a tuple or a dict of
tensors (see :mod:`workbench.quant.inputs`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from workbench.devices import model_device
from workbench.quant.inputs import (
    FORWARD_STYLES,
    OutputError,
    call_model,
    describe_inputs,
    first_tensor,
    move_inputs,
    primary_output,
    set_forward_style,
    split_batch,
    take_inputs,
    takes_one_dict,
)
from workbench.tasks.metrics import FIDELITY_KINDS, EvalFnMetric, Metric, fidelity_metric
from workbench.tasks.task import Task
from workbench.training import evaluate_accuracy

__all__ = ["TaskFileError", "load_task_file", "task_from_model"]


def _first_batch(loader: Iterable, name: str, *, need_targets: bool = True) -> tuple[Any, Any]:
    """``(inputs, targets)`` of the first batch of ``loader`` (targets None when the batches have none)."""
    shape = (
        "(x, y) batches" if need_targets else "(x, y) batches or inputs alone (tensors / dicts of tensors)"
    )
    if loader is None:
        raise ValueError(f"{name} is None; pass a DataLoader that yields {shape}")
    try:
        length = len(loader)  # type: ignore[arg-type]
    except TypeError:
        length = None
    if length == 0:
        raise ValueError(f"{name} is empty (len 0); it must yield at least one batch")
    try:
        batch = next(iter(loader))
    except StopIteration:
        raise ValueError(f"{name} is empty; it must yield at least one batch") from None
    except TypeError as err:
        raise ValueError(f"{name} is not iterable ({type(loader).__name__}): {err}") from err
    try:
        x, y = split_batch(batch)
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from None
    if first_tensor(x) is None:
        raise ValueError(f"{name} yields inputs without any tensor: {describe_inputs(x)}")
    if need_targets and y is None:
        raise ValueError(
            f"{name} must yield (x, y) tuples of tensors for the default accuracy metric, got "
            f"{type(batch).__name__} batches without targets; for data without labels pass "
            "metric=fidelity_metric(model) or eval_fn=..."
        )
    return x, y


def _check_output_key(output_key: Any) -> None:
    if output_key is not None and (isinstance(output_key, bool) or not isinstance(output_key, (str, int))):
        raise TypeError(
            f"output_key must be a str (a key or attribute of the output), an int (an index into a tuple "
            f"output) or None, got {output_key!r}"
        )


def _resolve_metric(
    model: nn.Module,
    metric: Metric | str | None,
    eval_fn: Callable[[nn.Module], float] | None,
    output_key: str | int | None,
) -> Metric | None:
    """The metric callable ``metric`` / ``eval_fn`` name (None: the default top-1 accuracy)."""
    if metric is not None and eval_fn is not None:
        raise ValueError("pass metric=(model, loader) -> float or eval_fn=(model) -> float, not both")
    if isinstance(metric, str):
        if metric == "accuracy":
            metric = None
        elif metric in FIDELITY_KINDS:
            metric = fidelity_metric(model, metric, output_key=output_key)
        else:
            raise ValueError(
                f"unknown metric {metric!r}; pass a callable (model, loader) -> float, 'accuracy' or a fidelity "
                f"kind {list(FIDELITY_KINDS)}"
            )
    if metric is not None and not callable(metric):
        raise TypeError(f"metric must be callable (model, loader) -> float, got {type(metric).__name__}")
    if eval_fn is not None:
        metric = EvalFnMetric(eval_fn)
    return metric


def _check_loaders(
    calib_loader: Any, val_loader: Any, test_loader: Any, train_loader: Any, *, need_targets: bool
) -> tuple[Any, Any]:
    """``(inputs, targets)`` of the first calibration batch, once every loader yields a usable first batch."""
    x, y = _first_batch(calib_loader, "calib_loader", need_targets=need_targets)
    _first_batch(val_loader, "val_loader", need_targets=need_targets)
    _first_batch(test_loader, "test_loader", need_targets=need_targets)
    if train_loader is not None:
        _first_batch(train_loader, "train_loader")
    return x, y


def task_from_model(
    model: nn.Module,
    *,
    calib_loader: DataLoader,
    val_loader: DataLoader | None = None,
    test_loader: DataLoader | None = None,
    metric: Metric | str | None = None,
    eval_fn: Callable[[nn.Module], float] | None = None,
    name: str = "custom",
    train_loader: DataLoader | None = None,
    num_classes: int | None = None,
    output_key: str | int | None = None,
    forward: str = "auto",
) -> Task:
    """Wrap your own model and loaders as a :class:`Task`.

    Batches pass to the model as they come: a loader may yield ``(inputs, targets)`` tuples or the inputs alone
    (a tensor or a dict of tensors such as ``{"input_ids": ..., "attention_mask": ...}``); inputs are a tensor
    (``model(x)``), a tuple (``model(*x)``) or a dict (``model(**x)``). The output may be a tensor, a tuple, a
    dict or a dataclass-like object; stages use its :func:`~workbench.quant.inputs.primary_output`.

    The score (higher is better) is one of:

    * ``metric(model, loader) -> float``, e.g. :func:`fidelity_metric` against the FP32 model (no labels needed);
    * ``metric="cosine"`` (any of :data:`FIDELITY_KINDS`): that :func:`fidelity_metric` against ``model`` itself,
      comparing the ``output_key`` output; ``metric="accuracy"`` is the default;
    * ``eval_fn(model) -> float`` scoring the model on data of its own (``val_loader`` / ``test_loader`` then
      default to ``calib_loader``; stages that need data beyond the score use them);
    * neither: top-1 accuracy, which needs ``(x, y)`` batches.

    ``output_key`` (a dict key, an attribute name or a tuple index) chooses the output tensor that every stage
    scores, for models whose output holds several (see :attr:`Task.output_key`); a key the output lacks raises
    ValueError naming the keys / fields it has. A metric callable you pass reads the output itself (give a
    :func:`fidelity_metric` you build its own ``output_key``, or pass ``metric="cosine"``).

    ``forward`` says how dict inputs reach the model: ``"kwargs"`` ``model(**x)``, ``"dict"`` ``model(x)`` (a
    forward taking one dict, as sentence-transformers models do), ``"auto"`` (default) ``model(x)`` when the
    forward has one required positional parameter and it is not a key of the dict, else ``model(**x)``. A choice
    other than ``"auto"`` is recorded for the model's class
    (:func:`~workbench.quant.inputs.set_forward_style`), so every stage and every quantized copy calls it alike;
    ``task.info["forward"]`` says which call the task uses.

    Every loader must be non-empty. The model must run on the first calibration sample and give an output with a
    tensor in it; otherwise ValueError names the exception and the input structure (keys, shapes, dtypes).
    ``input_shape`` is the per-sample shape of the first input tensor; ``num_classes`` (if not given) the last
    dimension of the chosen output on one calibration sample. The model is not modified.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    _check_output_key(output_key)
    _check_forward_style(forward)
    metric = _resolve_metric(model, metric, eval_fn, output_key)
    if eval_fn is not None:
        val_loader = calib_loader if val_loader is None else val_loader
        test_loader = calib_loader if test_loader is None else test_loader
    x, y = _check_loaders(calib_loader, val_loader, test_loader, train_loader, need_targets=metric is None)
    call = _forward_call(model, x, forward)
    out = _check_forward(model, take_inputs(x, 1), output_key)
    if num_classes is None:
        num_classes = int(out.shape[-1]) if out.dim() >= 2 else None
    return Task(
        name=name,
        model=model,
        train_loader=train_loader,
        calib_loader=calib_loader,
        val_loader=val_loader,  # type: ignore[arg-type]
        test_loader=test_loader,  # type: ignore[arg-type]
        metric=metric if metric is not None else evaluate_accuracy,
        input_shape=tuple(first_tensor(x).shape[1:]),  # type: ignore[union-attr]
        num_classes=num_classes,
        output_key=output_key,
        info={
            "dataset": "custom",
            "inputs": describe_inputs(take_inputs(x, 1)),
            "labels": y is not None,
            "metric": getattr(metric, "__qualname__", type(metric).__name__) if metric else "accuracy",
            "forward": call,
        },
    )


def _check_forward_style(forward: Any) -> None:
    if not isinstance(forward, str) or forward not in FORWARD_STYLES:
        raise ValueError(
            f"forward must be one of {list(FORWARD_STYLES)} (how dict inputs reach the model: 'kwargs' "
            f"model(**x), 'dict' model(x), 'auto' from the forward's signature), got {forward!r}"
        )


def _forward_call(model: nn.Module, x: Any, forward: str) -> str:
    """Record ``forward`` for the model's class; the call the task's inputs take (``model(x)``,
    ``model(*x)``, ``model(**x)``)."""
    if forward != "auto":
        if not isinstance(x, Mapping):
            raise ValueError(
                f"forward={forward!r} is about dict inputs, but the calibration inputs are {describe_inputs(x)}; "
                "leave forward='auto'"
            )
        set_forward_style(type(model), forward)
    if isinstance(x, Mapping):
        return "model(x)" if takes_one_dict(model, x) else "model(**x)"
    return "model(*x)" if isinstance(x, (tuple, list)) else "model(x)"


def _check_forward(model: nn.Module, x: Any, output_key: str | int | None = None) -> torch.Tensor:
    """The chosen (``output_key``) or primary output of ``model`` on calibration sample ``x``; ValueError naming
    the input structure and the exception when the forward fails, or naming the output when it holds no usable
    tensor (or lacks ``output_key``)."""
    flags = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            out = call_model(model, move_inputs(x, model_device(model)))
    except Exception as err:
        raise ValueError(
            f"model failed on the first calibration sample ({describe_inputs(x)}): {type(err).__name__}: {err}"
        ) from err
    finally:
        for m, flag in flags.items():
            m.training = flag
    try:
        return primary_output(out, key=output_key)
    except OutputError as err:
        raise ValueError(f"model output on the first calibration sample is unusable: {err}") from err


class TaskFileError(ValueError):
    """A task file that is missing, fails to import, lacks the function or returns something not a Task."""


def load_task_file(spec: str | Path) -> Task:
    """The :class:`Task` returned by a function in a Python file: ``"path/to/task.py:make_task"``.

    The function name defaults to ``make_task`` (``"path/to/task.py"``); it is called without arguments. The
    file is imported as a module of its own (registered in ``sys.modules`` under a name derived from its path,
    so dataclasses and pickling work); its folder is appended to ``sys.path`` (if absent) so that it can import
    modules next to it. A missing file, an import error, a missing function, or a function that fails or
    returns something other than a Task raises :class:`TaskFileError` (a ValueError) saying which.
    """
    import importlib.util
    import sys

    text = str(spec)
    path_text, sep, func = text.rpartition(":")
    if not sep or not func.isidentifier() or not path_text:
        path_text, func = text, "make_task"
    path = Path(path_text).expanduser()
    if not path.is_file():
        where = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise TaskFileError(
            f"task file {path} {where}; --task expects path/to/task.py:make_task (a Python file defining a "
            "function that returns a workbench.tasks.Task)"
        )
    path = path.resolve()
    module_name = "workbench_task_" + hashlib.sha1(str(path).encode()).hexdigest()[:12]
    loader_spec = importlib.util.spec_from_file_location(module_name, path)
    if loader_spec is None or loader_spec.loader is None:
        raise TaskFileError(f"task file {path} cannot be imported as Python (use a .py file)")
    if str(path.parent) not in sys.path:
        sys.path.append(str(path.parent))  # modules next to the task file stay importable
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[module_name] = module
    try:
        loader_spec.loader.exec_module(module)
    except Exception as err:
        del sys.modules[module_name]
        raise TaskFileError(f"task file {path} failed to import: {type(err).__name__}: {err}") from err
    factory = getattr(module, func, None)
    if factory is None:
        defined = sorted(
            n for n, v in vars(module).items()
            if callable(v) and not n.startswith("_") and getattr(v, "__module__", None) == module_name
        )  # fmt: skip
        raise TaskFileError(f"task file {path} defines no {func!r}; functions it defines: {defined}")
    if not callable(factory):
        raise TaskFileError(f"{func!r} in task file {path} is a {type(factory).__name__}, not a function")
    try:
        task = factory()
    except TaskFileError:
        raise
    except Exception as err:
        raise TaskFileError(f"{func}() in task file {path} failed: {type(err).__name__}: {err}") from err
    if not isinstance(task, Task):
        raise TaskFileError(
            f"{func}() in task file {path} returned a {type(task).__name__}, not a workbench.tasks.Task; "
            "build one with workbench.tasks.task_from_model(model, calib_loader=..., metric=...)"
        )
    return task
