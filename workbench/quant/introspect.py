"""Layer discovery and static cost of a model: which layers can be quantized, their MACs and shapes.

Layers are always named by their module path (``layer1.0.conv1``), never by position.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import nn

QUANTIZABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)


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


def is_quantizable(module: nn.Module) -> bool:
    """True for the layer types the quantization core can swap: exactly Conv2d / Linear (a subclass may have its
    own forward, which a swap would drop, as torch.ao also refuses) and their quantized twins."""
    return type(module) in QUANTIZABLE_TYPES or getattr(module, "is_quant_module", False)


def quantizable_layers(model: nn.Module) -> list[str]:
    """Module paths of every Conv2d / Linear in ``model``, in definition order."""
    return [name for name, m in model.named_modules() if name and is_quantizable(m)]


def _macs(module: nn.Module, out: torch.Tensor) -> int:
    per_sample = out[0].numel() if out.dim() > 0 else out.numel()
    if isinstance(module, nn.Conv2d) or getattr(module, "op_type", "") == "Conv2d":
        kh, kw = module.kernel_size
        return int(per_sample * (module.in_channels // module.groups) * kh * kw)
    return int(per_sample * module.in_features)


def layer_costs(model: nn.Module, example_input: torch.Tensor) -> dict[str, LayerCost]:
    """Run one forward pass on ``example_input`` (first sample only) and return per-layer MACs and shapes.

    The sample is moved to the model's device (costs and shapes do not depend on it). The model is not modified: hooks are removed and the training flag restored afterwards.
    """
    if example_input.dim() < 2:
        raise ValueError(f"example_input needs a batch dimension, got shape {tuple(example_input.shape)}")
    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    x = example_input[:1] if first is None else example_input[:1].to(first.device)  # the model's device
    costs: dict[str, LayerCost] = {}
    handles = []

    def make_hook(name: str):
        def hook(mod: nn.Module, inputs, out):
            w = mod.weight
            op = getattr(mod, "op_type", type(mod).__name__)
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
            model(x)
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
    return costs
