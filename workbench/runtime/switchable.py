"""The switchable model: Conv2d / Linear layers holding their weights pre-quantized at every candidate bit width,
grouped so that a precision map (group -> weight bits) switches them without recomputing anything."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from workbench.devices import model_device
from workbench.quant.introspect import quantizable_layers
from workbench.quant.modules import quantize_weight
from workbench.quant.spec import QuantPlan, QuantSpec
from workbench.quant.swap import conv_bn_pairs, fold_batchnorm, get_module, set_module


class SwitchableLayer(nn.Module):
    """A Conv2d / Linear with weights pre-quantized at every candidate bit width and per-input activation scales.

    ``bits`` selects the weights used by the next forward (32 = float). Activations are fake-quantized per input
    (one asymmetric scale per sample) at ``a_bits`` (32 = float)."""

    def __init__(self, layer: nn.Module, w_bits: Sequence[int], a_bits: int) -> None:
        super().__init__()
        self.kind = "conv" if isinstance(layer, nn.Conv2d) else "linear"
        self.conv_args: dict[str, Any] = {}
        if self.kind == "conv":
            self.conv_args = {
                "stride": layer.stride,
                "padding": layer.padding,
                "dilation": layer.dilation,
                "groups": layer.groups,
            }
        w = layer.weight.detach().clone()
        self.bias = (
            None if layer.bias is None else nn.Parameter(layer.bias.detach().clone(), requires_grad=False)
        )
        bank = {32: w}
        for b in w_bits:
            if b < 32:
                bank[int(b)] = quantize_weight(
                    w, QuantSpec(w_bits=int(b), a_bits=32, granularity="per_channel")
                )
        self.bank = bank
        self.a_bits = int(a_bits)
        self.bits = max(bank)

    def _act(self, x: torch.Tensor) -> torch.Tensor:
        if self.a_bits >= 32:
            return x
        flat = x.reshape(x.shape[0], -1)
        lo = flat.amin(1).clamp(max=0.0)
        hi = flat.amax(1).clamp(min=0.0)
        levels = 2**self.a_bits - 1
        scale = ((hi - lo) / levels).clamp(min=1e-8)
        zero = torch.round(-lo / scale)
        shape = (-1,) + (1,) * (x.dim() - 1)
        s, z = scale.view(shape), zero.view(shape)
        return (torch.clamp(torch.round(x / s) + z, 0, levels) - z) * s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._act(x)
        w = self.bank[self.bits]
        if self.kind == "conv":
            return F.conv2d(x, w, self.bias, **self.conv_args)
        return F.linear(x, w, self.bias)


def _groups_of(layers: Sequence[str], groups: str | Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    if isinstance(groups, Mapping):
        out = {str(g): list(ls) for g, ls in groups.items()}
        seen = [n for ls in out.values() for n in ls]
        unknown = sorted(set(seen) - set(layers))
        if unknown:
            raise ValueError(f"groups name unknown layers {unknown}; layers: {list(layers)}")
        missing = [n for n in layers if n not in seen]
        dup = sorted({n for n in seen if seen.count(n) > 1})
        if missing or dup:
            raise ValueError(f"groups must cover every layer once: missing {missing}, repeated {dup}")
        return out
    if groups == "layer":
        return {n: [n] for n in layers}
    if groups == "stage":
        out: dict[str, list[str]] = {}
        for n in layers:
            out.setdefault(n.split(".")[0], []).append(n)
        return out
    raise ValueError(f"groups={groups!r} is not valid; choose 'stage', 'layer' or a dict group -> layers")


class SwitchableModel(nn.Module):
    """A private copy of ``model`` (BatchNorm folded) whose layer groups switch weight bits per forward.

    It lives on ``model``'s device (the pre-quantized weight banks are built there; move ``model``, not this
    object); :meth:`run` takes inputs on any device and returns logits on the CPU.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        w_bits: Sequence[int] = (2, 3, 4, 6, 8),
        a_bits: int = 8,
        groups: str | Mapping[str, Sequence[str]] = "stage",
    ) -> None:
        super().__init__()
        net = copy.deepcopy(model).eval()
        fold_batchnorm(net, conv_bn_pairs(net))
        self.layers = quantizable_layers(net)
        if not self.layers:
            raise ValueError("the model has no Conv2d / Linear layer to switch")
        self.groups = _groups_of(self.layers, groups)
        self.w_bits = tuple(sorted({int(b) for b in w_bits}))
        for name in self.layers:
            set_module(net, name, SwitchableLayer(get_module(net, name), self.w_bits, a_bits))
        for p in net.parameters():
            p.requires_grad_(False)
        self.net = net
        self.a_bits = a_bits
        self.device = model_device(net)

    @property
    def group_names(self) -> list[str]:
        return list(self.groups)

    def set_map(self, precision_map: Mapping[str, int]) -> None:
        for g, layer_names in self.groups.items():
            b = int(precision_map[g])
            if b not in self.w_bits and b != 32:
                raise ValueError(f"bits {b} for group {g!r} not in the candidates {self.w_bits}")
            for n in layer_names:
                get_module(self.net, n).bits = b

    @torch.inference_mode()
    def run(self, x: torch.Tensor, precision_map: Mapping[str, int]) -> torch.Tensor:
        """Logits of ``x`` (moved to the model's device) under ``precision_map``, on the CPU."""
        self.set_map(precision_map)
        return self.net(x.to(self.device)).cpu()

    def plan(self, precision_map: Mapping[str, int]) -> QuantPlan:
        """The map as a QuantPlan (weights per channel at the group's bits, dynamic ``a_bits`` activations)."""
        specs = {}
        for g, names in self.groups.items():
            b = int(precision_map[g])
            for n in names:
                if b < 32:
                    specs[n] = QuantSpec(w_bits=b, a_bits=self.a_bits, a_dynamic=True)
        return QuantPlan(specs)
