"""Probing a deployment for :mod:`workbench.hardware.layer_costs`: each layer's module, input and output in it
(:func:`capture_layers`), calls fixed on their arguments for the timers (:func:`fixed_call`), the int8 region's
conversions at each int8 layer (:func:`conversion_calls`) and the quantized engine a block runs under."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from workbench.quant.swap import get_module


@contextlib.contextmanager
def engine_scope(engine: str) -> Iterator[None]:
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        yield
    finally:
        torch.backends.quantized.engine = previous


def capture_layers(
    module: nn.Module, run: Callable[[], Any], layers: list[str]
) -> dict[str, tuple[nn.Module, Any, Any]]:
    """Layer -> (its module in ``module``, its input, its output) from one ``run()`` (a layer fused away or
    traced through by FX, whose module is never called, is missing)."""
    seen: dict[str, tuple[nn.Module, Any, Any]] = {}
    handles = []
    for name in layers:
        try:
            mod = get_module(module, name)
        except AttributeError:  # fused away by FX: no module of its own
            continue
        handles.append(mod.register_forward_hook(_recorder(seen, name)))
    try:
        with torch.inference_mode():
            run()
    finally:
        for h in handles:
            h.remove()
    return seen


def _recorder(seen: dict[str, tuple[nn.Module, Any, Any]], name: str) -> Callable[..., None]:
    def hook(module: nn.Module, args: tuple, out: Any) -> None:  # first call only; returns None: output kept
        seen.setdefault(name, (module, args[0], out))

    return hook


def fixed_call(fn: Callable[..., Any], *args: Any) -> Callable[..., Any]:
    """``fn(*args)`` whatever the timer passes (it calls each function on the example: a tensor, a tuple or a
    dict of keyword inputs such as token ids)."""
    return lambda *_, **__: fn(*args)


def conversion_calls(captured: dict[str, dict[str, tuple]]) -> dict[str, Callable[..., Any]]:
    """``quantize`` of each int8 layer's float input (its FP32 deployment's, onto the int8 layer's grid) and
    ``dequantize`` of its int8 output."""
    fns: dict[str, Callable[..., Any]] = {}
    for name, (_, xq, out) in captured.get("int8_static", {}).items():
        fp32 = captured["fp32"].get(name)
        if isinstance(xq, torch.Tensor) and xq.is_quantized and fp32 is not None:
            s, z = xq.q_scale(), xq.q_zero_point()
            fns[f"{name}|quantize"] = fixed_call(torch.quantize_per_tensor, fp32[1], s, z, xq.dtype)
        if isinstance(out, torch.Tensor) and out.is_quantized:
            fns[f"{name}|dequantize"] = fixed_call(out.dequantize)
    return fns
