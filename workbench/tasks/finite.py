"""Non-finite model outputs caught where a model is evaluated: :func:`check_finite_output` on a tensor of
outputs, :func:`finite_outputs` around a metric (a forward hook on the model checks every output it gives).

An all-NaN output still has an argmax, so without this a broken model reads as "accuracy 0.2188, drop 0 pp".
Every evaluation funnels through :meth:`workbench.tasks.Task.evaluate` (FP32 and quantized: quantize, search,
QAT, deploy, the predictor's measurements), the sensitivity stage's FP32 reference
(:meth:`~workbench.sensitivity.probes.ProbeContext.reference`) or the predictor's logits
(:func:`workbench.predictor.measure.measure_plan`); each raises :class:`NonFiniteOutputError` naming the
model and the split before any figure is computed, printed or logged.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from workbench.quant.inputs import OutputError, primary_output

__all__ = ["NonFiniteOutputError", "check_finite_output", "finite_outputs", "model_label"]


class NonFiniteOutputError(ValueError):
    """A model gave NaN or Inf outputs (the message names the model, the split and the batch)."""


def model_label(model: nn.Module, reference: nn.Module | None, task_name: str) -> str:
    """How messages name ``model``: ``the FP32 model NaNNet of task 'x'`` when it is the task's own
    ``reference`` model, else ``the evaluated (quantized or deployed) model NaNNet of task 'x'``."""
    kind = "FP32" if model is reference else "evaluated (quantized or deployed)"
    return f"the {kind} model {type(model).__name__} of task {task_name!r}"


def check_finite_output(output: Tensor, *, model: str, split: str, batch: int | None = None) -> Tensor:
    """``output`` itself when every value is finite; else :class:`NonFiniteOutputError` naming ``model`` (a
    label, see :func:`model_label`), ``split`` and the ``batch`` (its index, when given)."""
    if not torch.is_floating_point(output) and not torch.is_complex(output):
        return output
    finite = torch.isfinite(output.detach())
    if bool(finite.all()):
        return output
    bad = int((~finite).sum())
    n_nan = int(torch.isnan(output.detach()).sum())
    where = f"the {split} split" + ("" if batch is None else f" (batch {batch})")
    raise NonFiniteOutputError(
        f"{model} gave non-finite outputs on {where}: {bad} of {output.numel()} values are NaN or Inf "
        f"({n_nan} NaN); no metric is computed from them. Check the model, its weights and its inputs"
    )


@contextmanager
def finite_outputs(
    model: Any, *, label: str, split: str, output_key: str | int | None = None
) -> Iterator[None]:
    """Within the block, every call of ``model`` checks its :func:`~workbench.quant.inputs.primary_output`
    (``output_key``'s tensor) with :func:`check_finite_output`; the hook is removed afterwards. An output without
    such a tensor is left to the metric (which names it); a model without forward hooks runs unchecked."""
    calls = [0]

    def hook(module: nn.Module, args: Any, out: Any) -> None:
        batch = calls[0]
        calls[0] += 1
        try:
            tensor = primary_output(out, key=output_key)
        except OutputError:
            return
        check_finite_output(tensor, model=label, split=split, batch=batch)

    handle = None
    if isinstance(model, nn.Module) and not isinstance(model, torch.jit.ScriptModule):
        handle = model.register_forward_hook(hook)
    try:
        yield
    finally:
        if handle is not None:
            handle.remove()
