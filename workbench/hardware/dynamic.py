"""Real kernels for Linear-heavy models (transformers): dynamic int8 and bf16, against FP32 side by side.

``dynamic_int8``: torch.ao dynamic quantization. Weights are stored as int8 (per output channel by default) and
activations are quantized on the fly per batch, so no calibration data and no graph tracing are needed: the
path that works for models whose forward takes dicts of tensors and returns output objects. Only ``nn.Linear``
layers have dynamic int8 kernels; with a plan, only the plan's Linear layers with integer weights of at most 8
bits are converted. ``bf16``: a copy of the model in bfloat16 (integer inputs such as token ids stay integers).

:func:`compare_linear_deployments` times FP32, dynamic int8 and bf16 on the same batch, interleaved run by run,
and measures their fidelity to FP32 (cosine of the primary outputs, or of the outputs ``task.output_key``
chooses; top-1 agreement; the task metric).
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from typing import Any

import pandas as pd
import torch
from torch import nn

from workbench.devices import model_device
from workbench.hardware.timing import time_side_by_side
from workbench.quant import QuantPlan
from workbench.quant.inputs import (
    call_model,
    map_inputs,
    move_inputs,
    primary_output,
    split_batch,
    take_inputs,
)
from workbench.tasks.task import TaskLike, check_task

VARIANTS = ("fp32", "dynamic_int8", "bf16")

TASK_NEEDS: tuple[str, ...] = ("model", "example_input", "loader", "evaluate")
"""What the side-by-side comparison reads from a task (checked by :func:`~workbench.tasks.check_task`)."""


def _int8_linear_names(model: nn.Module, plan: QuantPlan | None) -> set[str]:
    names = {n for n, m in model.named_modules() if type(m) is nn.Linear}
    if plan is None:
        return names
    chosen = set()
    for name in names:
        spec = plan.get(name)
        if spec is not None and spec.w_bits is not None and spec.w_bits <= 8:
            chosen.add(name)
    return chosen


def dynamic_int8(model: nn.Module, plan: QuantPlan | None = None, *, per_channel: bool = True) -> nn.Module:
    """A dynamically quantized int8 copy of ``model`` (``model`` is not changed); CPU only.

    Converts every ``nn.Linear`` (or, with ``plan``, the plan's Linear layers at <= 8 weight bits). Raises
    ``ValueError`` when nothing would be converted, or when the model is not on the CPU."""
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

    dev = model_device(model)
    if dev.type != "cpu":
        raise ValueError(f"dynamic int8 kernels (torch.ao) run on the CPU only; the model is on {dev}")
    names = _int8_linear_names(model, plan)
    if not names:
        raise ValueError(
            "no nn.Linear layer to convert to dynamic int8"
            + (" (the plan quantizes none of them to <= 8 bits)" if plan is not None else "")
        )
    qconfig = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
    with warnings.catch_warnings():  # torch's own notice that quantized tensor types will be replaced
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*deprecated")
        return quantize_dynamic(copy.deepcopy(model).eval(), {n: qconfig for n in names}, dtype=torch.qint8)


class _Bf16(nn.Module):
    """A bfloat16 copy of a model; float inputs are cast to bf16, outputs back to float32."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = copy.deepcopy(model).eval().to(torch.bfloat16)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        def cast(t: torch.Tensor) -> torch.Tensor:
            return t.to(torch.bfloat16) if t.is_floating_point() else t

        return _to_float(self.model(*map_inputs(args, cast), **map_inputs(kwargs, cast)))


def _to_float(out: Any) -> Any:
    """``out`` with every floating tensor in float32 (tensors, tuples, dicts and dataclass outputs)."""
    if dataclasses.is_dataclass(out) and not isinstance(out, type):
        return dataclasses.replace(
            out, **{f.name: _to_float(getattr(out, f.name)) for f in dataclasses.fields(out)}
        )
    return map_inputs(out, lambda t: t.float() if t.is_floating_point() else t)


def bf16(model: nn.Module) -> nn.Module:
    """A bfloat16 copy of ``model`` (``model`` is not changed) that takes and returns float32 tensors."""
    return _Bf16(model).eval()


def _fidelity(
    reference: nn.Module, model: nn.Module, loader: Any, *, output_key: str | int | None = None
) -> dict[str, float]:
    """Mean cosine (outputs flattened per sample) and top-1 agreement of ``model``'s outputs with
    ``reference``'s over ``loader``, on the output ``output_key`` chooses (None: the primary output)."""
    cos, agree, n = 0.0, 0, 0
    device = model_device(reference)
    with torch.inference_mode():
        for batch in loader:
            x = move_inputs(split_batch(batch)[0], device)
            a = primary_output(call_model(reference, x), key=output_key).float().flatten(1)
            b = primary_output(call_model(model, x), key=output_key).float().flatten(1)
            cos += float(torch.nn.functional.cosine_similarity(a, b, dim=1).sum())
            agree += int((a.argmax(1) == b.argmax(1)).sum())
            n += a.shape[0]
    return {"cosine_to_fp32": cos / max(n, 1), "top1_agreement": agree / max(n, 1)}


def compare_linear_deployments(
    task: TaskLike,
    plan: QuantPlan | None = None,
    *,
    batch_size: int = 32,
    repeats: int = 21,
    warmup: int = 3,
    threads: int = 2,
    split: str = "test",
    variants: tuple[str, ...] = ("dynamic_int8", "bf16"),
) -> pd.DataFrame:
    """FP32, dynamic int8 and bf16 (``variants``: a subset of those two) of ``task.model`` side by side: median / min / max latency of one batch of
    ``batch_size`` inputs (interleaved runs, ``threads`` torch threads), speed-up over FP32, the task metric on
    ``split``, and fidelity to FP32 (mean cosine of the primary outputs, top-1 agreement) on ``split``.

    The fidelity compares the output ``task.output_key`` chooses (None: the primary output). The task's model
    runs in eval mode and gets its training flags back afterwards; it is not otherwise changed.
    ``df.attrs`` records the settings, ``metric_name`` (what the ``metric`` column is) and ``output_key``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    task = check_task(task, need=TASK_NEEDS)
    output_key = task.output_key
    modes = {m: m.training for m in task.model.modules()}
    try:
        builders = {"dynamic_int8": lambda: dynamic_int8(task.model, plan), "bf16": lambda: bf16(task.model)}
        bad = [v for v in variants if v not in builders]
        if bad or not variants:
            raise ValueError(f"variants={variants!r}: choose a non-empty subset of {list(builders)}")
        models = {"fp32": task.model.eval(), **{v: builders[v]() for v in variants}}
        x = move_inputs(take_inputs(task.example_input(batch_size), batch_size), model_device(task.model))
        stats = time_side_by_side(models, x, repeats=repeats, warmup=warmup, threads=threads)
        loader = task.loader(split)
        rows = []
        for name, model in models.items():
            s = stats[name]
            rows.append(
                {
                    "variant": name,
                    "median_ms": s.median_ms,
                    "min_ms": s.min_ms,
                    "max_ms": s.max_ms,
                    "speedup_vs_fp32": stats["fp32"].median_ms / s.median_ms,
                    "metric": task.evaluate(model, split),
                    **_fidelity(task.model, model, loader, output_key=output_key),
                }
            )
    finally:
        for m, mode in modes.items():
            m.training = mode
    df = pd.DataFrame(rows)
    df.attrs.update(
        {
            "batch_size": batch_size, "repeats": repeats, "threads": threads, "split": split,
            "metric_name": task.metric_name, "output_key": output_key,
        }
    )  # fmt: skip
    return df
