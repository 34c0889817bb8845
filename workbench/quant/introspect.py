"""Layer discovery and static cost of a model: which layers can be quantized, their MACs and shapes.

Layers are always named by their module path (``layer1.0.conv1``), never by position.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
from torch import nn

from workbench.quant.adapters import ADAPTERS, adapter_for, adapter_refusal
from workbench.quant.inputs import call_model, move_inputs, take_inputs

QUANTIZABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Linear, nn.Embedding)
"""Layer types the quantization core swaps for fake-quant twins (see :func:`is_quantizable` for subclasses)."""

WEIGHT_ONLY_TYPES: tuple[type[nn.Module], ...] = (nn.Embedding,)
"""Types whose input is not an activation (integer token ids): only their weight is quantized, whatever the
spec's ``a_*`` fields say; they have no MACs (a lookup) and no activation quantizer."""

_BYPASSED_TYPES: tuple[type[nn.Module], ...] = (nn.modules.linear.NonDynamicallyQuantizableLinear,)
"""Linear subclasses whose owner reads ``.weight`` directly and never calls their forward
(``nn.MultiheadAttention.out_proj``): a swapped twin would silently not be used, so they are not quantizable."""


@dataclass(frozen=True)
class LayerCost:
    """Static cost of one quantizable layer for one input sample."""

    name: str
    op_type: str
    params: int
    weight_params: int
    out_channels: int
    macs: int
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]


def quantizable_type(module: nn.Module) -> type[nn.Module] | None:
    """The supported base type of ``module`` (one of :data:`QUANTIZABLE_TYPES`), or None.

    Exact Conv1d / Conv2d / Linear / Embedding are supported, and so are their quantized twins. A subclass is
    supported when it keeps the base class's computation (it overrides neither ``forward`` nor, for
    convolutions, ``_conv_forward``), or when a layer adapter (:mod:`workbench.quant.adapters`, e.g. SAME
    padding) splits its own forward into a pre-op and an exact base layer; any other own forward is not (a swap
    replaces the module by a twin of the base type, which would drop it). :data:`_BYPASSED_TYPES`
    (``MultiheadAttention.out_proj``, whose forward is never called) are never supported.
    """
    if getattr(module, "is_quant_module", False):
        return next((t for t in QUANTIZABLE_TYPES if isinstance(module, t)), None)
    if isinstance(module, _BYPASSED_TYPES):
        return None
    for base in QUANTIZABLE_TYPES:
        if not isinstance(module, base):
            continue
        cls = type(module)
        if cls is base:
            return base
        own = cls.forward is not base.forward or (
            hasattr(base, "_conv_forward") and cls._conv_forward is not base._conv_forward
        )
        if not own:
            return base
        adapter = adapter_for(module)
        return adapter.base if adapter is not None else None
    return None


def is_quantizable(module: nn.Module) -> bool:
    """True for the layer types the quantization core can swap (see :func:`quantizable_type`)."""
    return quantizable_type(module) is not None


def is_weight_only(module: nn.Module) -> bool:
    """True for quantizable layers whose activations are never quantized (Embedding: its input is token ids)."""
    return isinstance(module, WEIGHT_ONLY_TYPES)


def layer_type(module: nn.Module) -> str:
    """``'Conv1d'``, ``'Conv2d'``, ``'Linear'`` or ``'Embedding'`` for a quantizable layer (its twin too); the
    class name otherwise."""
    base = quantizable_type(module)
    return base.__name__ if base is not None else type(module).__name__


def unsupported_reason(module: nn.Module) -> str:
    """Why ``module`` cannot be quantized, naming its type and the supported types (for error messages)."""
    supported = ", ".join(t.__name__ for t in QUANTIZABLE_TYPES)
    name = type(module).__name__
    if isinstance(module, _BYPASSED_TYPES):
        why = f"{name}: its owner (e.g. MultiheadAttention) reads its weight directly and never calls it"
    elif isinstance(module, QUANTIZABLE_TYPES):
        base = next(t.__name__ for t in QUANTIZABLE_TYPES if isinstance(module, t))
        refusal = adapter_refusal(module)
        why = f"{name}, a {base} subclass with its own forward, which a swap would drop" + (
            f" ({refusal})"
            if refusal
            else f" and no layer adapter matches (registered: {', '.join(ADAPTERS)})"
        )
    else:
        why = name
    return (
        f"{why}, an unknown layer type for quantization; supported types: {supported} "
        "(exact types, subclasses that keep the base forward, or subclasses a layer adapter splits: "
        "workbench.quant.adapters.register_adapter)"
    )


def quantizable_layers(model: nn.Module) -> list[str]:
    """Module paths of every quantizable layer (Conv1d / Conv2d / Linear / Embedding) in ``model``, found by
    ``named_modules()`` through any nesting of containers, in definition order."""
    return [name for name, m in model.named_modules() if name and is_quantizable(m)]


def _macs(module: nn.Module, out: torch.Tensor) -> int:
    per_sample = out[0].numel() if out.dim() > 0 else out.numel()
    kind = layer_type(module)
    if kind == "Embedding":  # a table lookup: no multiply-accumulates
        return 0
    if kind in ("Conv1d", "Conv2d"):
        return int(per_sample * (module.in_channels // module.groups) * math.prod(module.kernel_size))
    return int(per_sample * module.in_features)


def layer_costs(model: nn.Module, example_input: torch.Tensor) -> dict[str, LayerCost]:
    """Run one forward pass on ``example_input`` (first sample only) and return per-layer MACs and shapes.

    The sample is moved to the model's device (costs and shapes do not depend on it). The model is not modified: hooks are removed and the training flag restored afterwards.
    """
    if isinstance(example_input, torch.Tensor) and example_input.dim() < 2:
        raise ValueError(f"example_input needs a batch dimension, got shape {tuple(example_input.shape)}")
    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    x = take_inputs(example_input, 1)  # any input structure (tensor, tuple, dict), first sample only
    x = x if first is None else move_inputs(x, first.device)  # the model's device
    costs: dict[str, LayerCost] = {}
    handles = []

    def make_hook(name: str):
        def hook(mod: nn.Module, inputs, out):
            w = mod.weight
            op = layer_type(mod)
            costs[name] = LayerCost(
                name=name,
                op_type=op,
                params=sum(p.numel() for p in mod.parameters(recurse=False)),
                weight_params=int(w.numel()),
                out_channels=int(w.shape[0]),
                macs=_macs(mod, out),
                input_shape=tuple(inputs[0].shape[1:]),
                output_shape=tuple(out.shape[1:]),
            )

        return hook

    for name, mod in model.named_modules():
        if name and is_quantizable(mod):
            handles.append(mod.register_forward_hook(make_hook(name)))
    modes = {m: m.training for m in model.modules()}  # each module's own flag, restored exactly
    try:
        model.eval()
        with torch.no_grad():
            call_model(model, x)
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
    return costs


def get_module(model: nn.Module, path: str) -> nn.Module:
    return model.get_submodule(path)


def set_module(model: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, attr, new)
