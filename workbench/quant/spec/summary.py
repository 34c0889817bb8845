"""PlanSummary: average bits, size, BOPs and coverage of a plan applied to a model."""

from __future__ import annotations

import math
from collections.abc import ItemsView, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from torch import nn

from workbench.quant.coverage import plan_coverage
from workbench.quant.fusion import conv_bn_pairs
from workbench.quant.introspect import WEIGHT_ONLY_TYPES, LayerCost
from workbench.quant.spec.bits import layer_weight_storage_bits, macs_factor
from workbench.quant.spec.layer import ACT_QPARAM_BITS, FP32, QuantSpec


class PlanLike(Protocol):
    """What a summary reads of a :class:`~workbench.quant.spec.plan.QuantPlan` (which builds on this module)."""

    def get(self, name: str, default: QuantSpec | None = None) -> QuantSpec | None: ...

    def items(self) -> ItemsView[str, QuantSpec]: ...


@dataclass(frozen=True)
class PlanSummary:
    """Size and cost of a plan applied to a model.

    ``avg_weight_bits`` / ``avg_act_bits``: bits of each quantizable layer's weights / input activations,
    averaged with the layer's weight-parameter count as weight. ``size_bytes``: inference state of the whole
    model (packed codes, float32 scales, 8-bit zero points, activation ranges, BatchNorm folded into quantized
    convolutions, every other parameter and buffer at its dtype); ``fp32_size_bytes`` the float model's state.
    ``bops``: bit operations per input sample, sum over layers of MACs x weight bits x activation bits (MACs of
    pruned layers scaled by their kept fraction, of low-rank layers by the factorised / dense MAC ratio).
    ``weight_bytes``: storage of the quantizable layers' weights alone (codes, masks, scales, zero points, low-rank
    factors; layers not in the plan at float32); ``fp32_weight_bytes`` the same weights at float32.
    ``covered_params``: weight elements of the layers the plan changes (non-identity specs; a tied weight counted
    once), ``total_params`` every parameter element of the model, ``covered_fraction`` their ratio: the share of
    the model that the bit figures are about. Embedding layers count in the weight figures like any layer, and
    in the activation average not at all (their input is token ids; ``avg_act_bits`` is 32 without such layers).

    Coverage of weight modules (:mod:`workbench.quant.coverage`: every module owning a >= 2-D parameter,
    quantizable or not): ``weight_layers`` of them, ``covered_weight_layers`` changed by the plan,
    ``weight_covered_fraction`` the share of their (>= 2-D) weight parameters the plan covers, and ``coverage``
    all of it in words, naming what stays float and why (``covers 49 of 50 weight layers, 99.1 % of weight
    parameters; float: head.custom (0.9 %, unsupported CustomLayer)``).
    """

    avg_weight_bits: float
    avg_act_bits: float
    size_bytes: int
    fp32_size_bytes: int
    compression: float
    bops: int
    fp32_bops: int
    quantized_layers: int
    total_layers: int
    weight_bytes: int
    fp32_weight_bytes: int
    covered_params: int
    total_params: int
    covered_fraction: float
    weight_layers: int = 0
    covered_weight_layers: int = 0
    weight_covered_fraction: float = 0.0
    coverage: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _state_bits(module: nn.Module) -> int:
    """Storage bits of a module's own parameters and buffers (not its children's)."""
    tensors = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
    return sum(t.numel() * t.element_size() * 8 for t in tensors)


def folded_pairs(plan: PlanLike, model: nn.Module) -> list[tuple[str, str]]:
    """The (conv, bn) pairs :func:`quantize_model` folds for this plan: BatchNorm after a conv whose weight is
    quantized, pruned or factorised (:attr:`QuantSpec.transforms_weight`)."""
    quantized = {n for n, s in plan.items() if s.transforms_weight}
    return [(c, b) for c, b in conv_bn_pairs(model) if c in quantized]


def _covered_weights(plan: PlanLike, modules: Mapping[str, nn.Module]) -> int:
    """Weight elements of the layers ``plan`` changes (a weight shared by two layers counted once)."""
    covered: dict[int, int] = {}  # id(weight) -> elements
    for n, s in plan.items():
        if not s.is_identity and n in modules:
            covered[id(modules[n].weight)] = modules[n].weight.numel()
    return sum(covered.values())


def summarize(
    plan: PlanLike,
    model: nn.Module,
    costs: Mapping[str, LayerCost],
    *,
    bn_pairs: list[tuple[str, str]] | None = None,
) -> PlanSummary:
    """Plan summary from precomputed layer costs (see :func:`layer_costs`).

    Size counts the whole inference state, as :func:`save_packed` stores it: every parameter and buffer at its
    dtype's width, quantized weights at their bits plus float32 scales and 8-bit zero points, static activation
    ranges, and BatchNorm folded into weight-quantized convolutions (its state replaced by a float32 bias).
    ``bn_pairs`` are the folded (conv, bn) pairs; computed with torch.fx when omitted (pass them to save time).

    BOPs of a pruned layer count only its kept weights' MACs (``1 - pruned / total``, which is ``1 - sparsity`` up
    to rounding): this assumes a sparse kernel for unstructured pruning, and for channel pruning that the removed
    output channels are dropped from the layer. A low-rank layer counts ``r x (fan_in + out)`` MACs per output
    position (:func:`workbench.compress.low_rank_macs_ratio`) at the spec's bits (the intermediate activation is
    not quantized).
    """
    modules = dict(model.named_modules())
    pairs = folded_pairs(plan, model) if bn_pairs is None else bn_pairs
    c = plan_costs(plan, model, costs, bn_pairs=pairs, modules=modules)
    covered_params = _covered_weights(plan, modules)
    total_params = sum(p.numel() for p in model.parameters())
    cov = plan_coverage(model, plan)
    return PlanSummary(
        avg_weight_bits=c.avg_weight_bits,
        avg_act_bits=c.avg_act_bits,
        size_bytes=c.size_bytes,
        fp32_size_bytes=c.fp32_size_bytes,
        compression=c.fp32_size_bytes / c.size_bytes if c.size_bytes else float("inf"),
        bops=c.bops,
        fp32_bops=c.fp32_bops,
        quantized_layers=c.quantized_layers,
        total_layers=c.total_layers,
        weight_bytes=c.weight_bytes,
        fp32_weight_bytes=c.fp32_weight_bytes,
        covered_params=covered_params,
        total_params=total_params,
        covered_fraction=covered_params / total_params if total_params else 0.0,
        weight_layers=cov.weight_layers,
        covered_weight_layers=cov.covered_layers,
        weight_covered_fraction=cov.covered_fraction,
        coverage=cov.describe(),
    )


@dataclass(frozen=True)
class PlanCosts:
    """The size, bits and BOPs figures of a :class:`PlanSummary` (its fields of the same names), without the
    coverage: what a search's cost model reads for every candidate plan."""

    avg_weight_bits: float
    avg_act_bits: float
    size_bytes: int
    fp32_size_bytes: int
    bops: int
    fp32_bops: int
    quantized_layers: int
    total_layers: int
    weight_bytes: int
    fp32_weight_bytes: int


def state_bits(model: nn.Module) -> int:
    """Storage bits of a model's whole state (every parameter and buffer at its dtype's width)."""
    return sum(t.numel() * t.element_size() * 8 for t in model.state_dict().values())


def plan_costs(
    plan: PlanLike,
    model: nn.Module,
    costs: Mapping[str, LayerCost],
    *,
    bn_pairs: list[tuple[str, str]],
    modules: Mapping[str, nn.Module] | None = None,
    fp32_bits: int | None = None,
) -> PlanCosts:
    """The :class:`PlanCosts` of ``plan`` (see :func:`summarize`, which adds the coverage); ``modules`` (the
    model's ``named_modules``) and ``fp32_bits`` (:func:`state_bits`) may be passed to save their computation
    when many plans of one model are priced."""
    modules = dict(model.named_modules()) if modules is None else modules
    fp32_bits = state_bits(model) if fp32_bits is None else fp32_bits
    bits_total = float(fp32_bits)
    quant_weight_params = sum(c.weight_params for c in costs.values())
    weight_only_ops = {t.__name__ for t in WEIGHT_ONLY_TYPES}
    act_params = sum(c.weight_params for c in costs.values() if c.op_type not in weight_only_ops)
    weight_bits_sum = act_bits_sum = 0.0
    macs_total = bops = 0
    weight_bits_total = fp32_weight_bits = 0
    for name, cost in costs.items():
        spec = plan.get(name, FP32)
        weight = modules[name].weight
        storage = layer_weight_storage_bits(spec, weight.shape)
        bits_total += storage - weight.numel() * weight.element_size() * 8
        weight_bits_total += storage
        fp32_weight_bits += 32 * weight.numel()
        weight_bits_sum += spec.mean_weight_bits() * cost.weight_params
        if cost.op_type in weight_only_ops:  # input is token ids: no activation range, not an activation
            continue
        if spec.a_bits < 16 and not spec.a_dynamic:
            in_ch = cost.input_shape[0] if cost.input_shape else 1
            bits_total += ACT_QPARAM_BITS * (in_ch if spec.a_granularity == "per_channel" else 1)
        act_bits_sum += spec.a_bits * cost.weight_params
        macs_total += cost.macs
        bops += int(
            round(spec.mean_weight_bits() * spec.a_bits * cost.macs * macs_factor(spec, weight.shape))
        )
    for conv_name, bn_name in bn_pairs:
        bits_total -= _state_bits(modules[bn_name])
        if modules[conv_name].bias is None:
            bits_total += 32 * modules[conv_name].weight.shape[0]
    size_bytes = int(math.ceil(bits_total / 8))
    fp32_bytes = int(math.ceil(fp32_bits / 8))
    n_quant = sum(1 for n in costs if not plan.get(n, FP32).is_identity)
    return PlanCosts(
        avg_weight_bits=weight_bits_sum / quant_weight_params if quant_weight_params else 32.0,
        avg_act_bits=act_bits_sum / act_params if act_params else 32.0,
        size_bytes=size_bytes,
        fp32_size_bytes=fp32_bytes,
        bops=bops,
        fp32_bops=32 * 32 * macs_total,
        quantized_layers=n_quant,
        total_layers=len(costs),
        weight_bytes=int(math.ceil(weight_bits_total / 8)),
        fp32_weight_bytes=int(math.ceil(fp32_weight_bits / 8)),
    )
