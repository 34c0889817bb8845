"""Relaxed bit widths: a softmax mix of one weight quantizer per candidate width, its expected bits (the
granularity penalty) and the discretization to the most likely width after the relaxed phase."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from workbench.qat.config import QATError
from workbench.quant import QuantPlan, QuantSpec, quant_modules
from workbench.quant.introspect import quantizable_layers
from workbench.quant.modules import WeightQuantizer
from workbench.quant.spec import INT_BITS


class MixedBitWeightQuantizer(nn.Module):
    """A weight quantizer with relaxed bit width: softmax(logits)-weighted mix of one quantizer per candidate.

    Each candidate is a :class:`WeightQuantizer` of the layer's spec at that width, calibrated on the weight
    with the spec's observer. :meth:`choice` is the most likely width (ties: the narrowest).
    """

    def __init__(self, spec: QuantSpec, weight: Tensor, candidates: tuple[int, ...], *, init: float) -> None:
        super().__init__()
        self.spec = spec
        self.candidates = tuple(sorted(candidates))
        self.quantizers = nn.ModuleList()
        for b in self.candidates:
            wq = WeightQuantizer(spec.with_(w_bits=b), weight.shape, device=weight.device)
            wq.calibrate(weight.detach())
            self.quantizers.append(wq)
        logits = torch.zeros(len(self.candidates), device=weight.device)
        if spec.w_bits in self.candidates:
            logits[self.candidates.index(spec.w_bits)] = float(init)
        self.logits = nn.Parameter(logits)
        self.register_buffer(
            "bit_values", torch.tensor(self.candidates, dtype=torch.float32, device=weight.device), False
        )

    is_integer = True
    enabled = True

    def probs(self) -> Tensor:
        return torch.softmax(self.logits, dim=0)

    def expected_bits(self) -> Tensor:
        return (self.probs() * self.bit_values).sum()

    def choice(self) -> int:
        return self.candidates[int(torch.argmax(self.logits.detach()))]

    def forward(self, weight: Tensor) -> Tensor:
        p = self.probs()
        out = p[0] * self.quantizers[0](weight)
        for k in range(1, len(self.quantizers)):
            out = out + p[k] * self.quantizers[k](weight)
        return out

    def extra_repr(self) -> str:
        probs = ", ".join(f"{b}:{p:.2f}" for b, p in zip(self.candidates, self.probs().tolist()))
        return f"bits~{{{probs}}}"


def _relaxable(spec: QuantSpec) -> bool:
    return spec.channel_bits is None and spec.rank_ratio is None and spec.w_bits in INT_BITS


def _relax(model: nn.Module, candidates: tuple[int, ...], init: float) -> list[str]:
    """Give every planned integer layer (not low-rank, no per-channel bits) a relaxed weight quantizer."""
    relaxed = []
    for name, mod in quant_modules(model).items():
        if not _relaxable(mod.spec):
            continue
        w = mod.weight * mod.weight_mask if mod.spec.sparsity > 0 else mod.weight
        mod.w_quant = MixedBitWeightQuantizer(mod.spec, w.detach(), candidates, init=init)
        relaxed.append(name)
    return relaxed


def _mixed(model: nn.Module) -> dict[str, MixedBitWeightQuantizer]:
    return {
        n: m.w_quant
        for n, m in quant_modules(model).items()
        if isinstance(m.w_quant, MixedBitWeightQuantizer)
    }


def _discretize(model: nn.Module, bits: Mapping[str, int]) -> None:
    """Replace each relaxed quantizer by its candidate at ``bits[layer]`` (keeping its scales)."""
    modules = quant_modules(model)
    for name, b in bits.items():
        mod = modules[name]
        mixed = mod.w_quant
        if not isinstance(mixed, MixedBitWeightQuantizer):
            raise QATError(f"layer {name!r} has no relaxed bit width to fix")
        if b not in mixed.candidates:
            raise QATError(f"layer {name!r}: {b} bits is not a candidate ({list(mixed.candidates)})")
        wq = mixed.quantizers[mixed.candidates.index(b)]
        spec = mod.spec.with_(w_bits=int(b))
        mod.w_quant = wq
        mod.spec = spec
        mod.a_quant.spec = spec
    plan = getattr(model, "quant_plan", None)
    if isinstance(plan, QuantPlan):
        model.quant_plan = QuantPlan({n: modules[n].spec if n in bits else s for n, s in plan.items()})


def learned_plan(model: nn.Module, plan: QuantPlan) -> QuantPlan:
    """``plan`` with every relaxed layer of ``model`` at its most likely width (a discrete, valid plan)."""
    choices = {n: q.choice() for n, q in _mixed(model).items()}
    return QuantPlan({n: s.with_(w_bits=choices[n]) if n in choices else s for n, s in plan.items()})


def _layer_weight_counts(model: nn.Module) -> dict[str, int]:
    modules = dict(model.named_modules())
    return {n: int(modules[n].weight.numel()) for n in quantizable_layers(model)}


def expected_weight_bits(model: nn.Module, plan: QuantPlan, counts: Mapping[str, int]) -> Tensor:
    """Average weight bits of a (possibly relaxed) quantized model, weighted by each layer's weight count.

    ``counts``: weights per quantizable layer of the float model (layers outside the plan count as 32 bits,
    as in :meth:`QuantPlan.summary`); relaxed layers contribute their expected width (differentiable).
    """
    mixed = _mixed(model)
    total = sum(counts.values())
    const = 0.0
    for name, n in counts.items():
        if name not in mixed:
            spec = plan.get(name)
            const += n * (32.0 if spec is None else spec.mean_weight_bits())
    out = torch.tensor(const, device=next((p.device for p in model.parameters()), None))
    for name, q in mixed.items():
        out = out + counts[name] * q.expected_bits()
    return out / total
