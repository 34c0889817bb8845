"""Calibration data for the PTQ steps: a capped list of input batches joined into one, truncated forward passes
that capture one layer's input or output, and :func:`layer_by_layer`, one forward pass in which each layer is tuned
on its actual input (as produced by the layers before it, already tuned) right before it runs, so a layer-by-layer
step costs one model pass instead of one per layer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from workbench.quant.inputs import (
    batch_size,
    call_model,
    concat_inputs,
    move_inputs,
    split_batch,
    take_inputs,
)
from workbench.quant.spec import PlanError


class _Stop(Exception):  # noqa: N818 - control flow, not an error
    """Raised by a capture hook to end a forward pass early."""


def calib_batches(loader: Any, *, max_samples: int, step: str) -> list[Any]:
    """The first ``max_samples`` samples of ``loader`` as one input batch in a list (targets dropped).

    Raises PlanError naming ``step`` when the loader is missing or empty."""
    if loader is None:
        raise PlanError(f"PTQ step {step!r} needs calibration data: pass calib_loader to quantize_model")
    out: list[Any] = []
    n = 0
    for batch in loader:
        try:
            inputs = split_batch(batch)[0]
        except ValueError as e:
            raise PlanError(f"PTQ step {step!r}: {e}") from None
        k = batch_size(inputs)
        if n + k > max_samples:
            inputs, k = take_inputs(inputs, max_samples - n), max_samples - n
        out.append(inputs)
        n += k
        if n >= max_samples:
            break
    if not out:
        raise PlanError(f"PTQ step {step!r}: calibration data is empty")
    return [concat_inputs(out)]


def model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def capture(model: nn.Module, layer: nn.Module, batches: list[Any], *, what: str = "input") -> Tensor:
    """``layer``'s first input (``what="input"``) or its output (``"output"``) over ``batches``, concatenated
    along dim 0 (on the model's device). Each forward pass stops right after ``layer``."""
    seen: list[Tensor] = []

    def pre_hook(_m, args):
        seen.append(args[0].detach())
        if what == "input":
            raise _Stop

    def hook(_m, _args, out):
        seen.append(out.detach())
        raise _Stop

    handle = (
        layer.register_forward_pre_hook(pre_hook) if what == "input" else layer.register_forward_hook(hook)
    )
    device = model_device(model)
    try:
        for inputs in batches:
            try:
                call_model(model, move_inputs(inputs, device))
            except _Stop:
                continue
    finally:
        handle.remove()
    if len(seen) != len(batches):
        raise PlanError(f"layer {type(layer).__name__} did not run once per calibration batch")
    return torch.cat(seen)


@torch.no_grad()
def channel_means(model: nn.Module, layers: dict[str, nn.Module], batches: list[Any]) -> dict[str, Tensor]:
    """Per-output-channel means of each layer's output over ``batches`` (one full pass per batch); channels are
    dim 1 of a convolution's output and the last dim of a Linear's."""
    sums: dict[str, Tensor] = {}
    counts: dict[str, int] = {}

    def make(name: str, dim: int):
        def hook(_m, _args, out):
            s, c = output_channel_sum(out.detach(), dim)
            sums[name] = sums[name] + s if name in sums else s
            counts[name] = counts.get(name, 0) + c

        return hook

    handles = [m.register_forward_hook(make(n, channel_dim(m))) for n, m in layers.items()]
    device = model_device(model)
    try:
        for inputs in batches:
            call_model(model, move_inputs(inputs, device))
    finally:
        for h in handles:
            h.remove()
    return {n: sums[n] / counts[n] for n in sums}


def channel_dim(layer: nn.Module) -> int:
    """The channel axis of ``layer``'s output: -1 for Linear, 1 for convolutions."""
    return -1 if isinstance(layer, nn.Linear) else 1


def output_channel_sum(out: Tensor, dim: int) -> tuple[Tensor, int]:
    """(sum over everything but the channel axis ``dim``, count of summed positions)."""
    flat = out.float().movedim(dim, 0).reshape(out.shape[dim], -1)
    return flat.sum(1), flat.shape[1]


def layer_by_layer(
    model: nn.Module,
    layers: dict[str, nn.Module],
    inputs: Any,
    *,
    before: Callable[[str, nn.Module, Tensor], None] | None = None,
    after: Callable[[str, nn.Module, Tensor], Tensor | None] | None = None,
    progress: Any = None,
) -> None:
    """One forward pass of ``model`` on ``inputs`` in which ``before(name, layer, x)`` runs on each layer's input
    right before the layer's first call, and ``after(name, layer, out)`` (which may return a replacement output)
    right after it. Later calls of a shared layer run unchanged. ``progress``: a tqdm bar to advance per layer."""
    done: set[str] = set()
    busy: set[str] = set()

    def make(name: str):
        def pre(m, args):
            if name in done or name in busy or before is None:
                return
            busy.add(name)  # calls of the layer made by ``before`` itself run unhooked
            try:
                before(name, m, args[0])
            finally:
                busy.discard(name)

        def post(m, _args, out):
            if name in done or name in busy:
                return None
            done.add(name)
            if progress is not None:
                progress.update(1)
            return after(name, m, out) if after is not None else None

        return pre, post

    handles = []
    for name, layer in layers.items():
        pre, post = make(name)
        handles += [layer.register_forward_pre_hook(pre), layer.register_forward_hook(post)]
    try:
        with torch.no_grad():
            call_model(model, move_inputs(inputs, model_device(model)))
    finally:
        for h in handles:
            h.remove()
    missing = [n for n in layers if n not in done]
    if missing:
        raise PlanError(f"layer(s) {missing} never ran on the calibration data")


def layer_inputs(model: nn.Module, layers: dict[str, nn.Module], inputs: Any) -> dict[str, Tensor]:
    """Each layer's input at its first call, from one forward pass of ``model`` on ``inputs``."""
    seen: dict[str, Tensor] = {}
    layer_by_layer(model, layers, inputs, before=lambda n, _m, x: seen.__setitem__(n, x.detach()))
    return seen
