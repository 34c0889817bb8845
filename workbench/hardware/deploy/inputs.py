"""Which deployment path suits a model's inputs: static int8 needs one float input, the rest go dynamic."""

from __future__ import annotations

from typing import Any

import torch

from workbench.quant.inputs import (
    input_tensors,
)

KERNELS: tuple[str, ...] = ("auto", "static", "dynamic", "bf16", "menu")
"""Deployment paths: ``static`` int8 through torch.ao FX (float-input models, :func:`measure_deployment`),
``dynamic`` int8 Linear kernels with bf16 and FP32 side by side, ``bf16`` alone against FP32
(:func:`compare_kernels`), ``menu``: :func:`measure_deployment` of the plan as it is, its weight-only layers on
the kernel menu (:mod:`workbench.hardware.kernels`; no tracing when no layer needs static int8, so token-id models
deploy), ``auto`` = :func:`choose_kernels`."""


class DeployInputError(ValueError):
    """The model's inputs do not suit the requested deployment path (e.g. token ids under static int8)."""


def integer_inputs(inputs: Any) -> list[tuple[str, str]]:
    """``(name, dtype)`` of every non-float tensor in one batch of inputs (a tensor, a tuple or a dict of
    tensors), e.g. ``[("input_ids", "int64"), ("attention_mask", "int64")]``; a bare tensor is ``"input"``."""
    return [
        (path or "input", str(t.dtype).removeprefix("torch."))
        for path, t in input_tensors(inputs)
        if not (t.is_floating_point() or t.is_complex())
    ]


def static_input_problem(inputs: Any) -> str | None:
    """Why static int8 (FX) cannot deploy a model fed ``inputs`` (one batch), or None when it can: static int8
    observes and quantizes the model's float input, so integer tensors (token ids, masks) have no place in it."""
    if not input_tensors(inputs):
        return f"the inputs hold no tensor ({type(inputs).__name__})"
    ints = integer_inputs(inputs)
    if not ints:
        return None
    (name, dtype), rest = ints[0], ints[1:]
    also = f" (also {', '.join(f'{n!r}: {d}' for n, d in rest)})" if rest else ""
    return (
        f"input {name!r} is {dtype}{also}: static int8 quantizes float inputs; use --kernels dynamic or bf16 "
        "(in Python workbench.hardware.deploy.compare_kernels: dynamic int8 Linear kernels or bf16, no tracing)"
    )


def choose_kernels(inputs: Any) -> tuple[str, str]:
    """``(kernels, reason)`` for ``kernels="auto"``, from one batch of the model's inputs: ``"static"`` (int8
    through FX, as for CNNs) when the model is fed a single float tensor, ``"dynamic"`` otherwise (integer
    inputs such as token ids, or several inputs): dynamic int8 and bf16 side by side with FP32."""
    ints = integer_inputs(inputs)
    if ints:
        named = ", ".join(f"{n!r} ({d})" for n, d in ints)
        return (
            "dynamic",
            f"integer input(s) {named}: dynamic int8 / bf16 (static int8 quantizes float inputs)",
        )
    if not isinstance(inputs, torch.Tensor):
        n = len(input_tensors(inputs))
        return "dynamic", f"{n} input tensors: dynamic int8 / bf16 (static int8 is for a single float input)"
    return "static", "a single float input: static int8 through torch.ao FX"
