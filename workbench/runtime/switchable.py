"""The switchable model: every quantizable layer (Conv1d, Conv2d, Linear, Embedding) holding one fake-quant variant
per candidate weight bit width, grouped so that a precision map (group -> weight bits), or the QuantPlan it stands
for, switches them without recomputing anything.

The variants are the quantization core's own layers: each candidate plan (one uniform plan per bit width, or the
rungs given to :meth:`SwitchableModel.from_plans`) is applied with :func:`~workbench.quant.swap.quantize_model`,
and each twin's effective weight (``quantized_weight()``) is computed once (:func:`frozen_twin`) behind the twin's
own activation quantizer. The runtime's spec (:func:`runtime_spec`) quantizes weights per output channel and
activations with one dynamic asymmetric range per input (``a_granularity='per_sample'``).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from workbench.devices import model_device
from workbench.quant.introspect import get_module, quantizable_layers, set_module
from workbench.quant.spec import PlanError, QuantPlan, QuantSpec
from workbench.quant.swap import conv_bn_pairs, fold_batchnorm, quantize_model

FLOAT_BITS = 32
"""The map value of a layer's float-weight variant (its activations are still quantized by the runtime's spec)."""

Variants = dict[str, dict[int, tuple[QuantSpec | None, nn.Module]]]
"""Layer -> weight bits -> (spec, layer computing it); spec None is the float layer as it is."""


def runtime_spec(w_bits: int, a_bits: int) -> QuantSpec:
    """A runtime layer's spec: weights per output channel (symmetric, min-max) at ``w_bits`` (32: float) and
    activations at ``a_bits`` with one dynamic asymmetric min-max range per input (range extended to contain 0)."""
    return QuantSpec(w_bits=int(w_bits), a_bits=int(a_bits), a_dynamic=True, a_granularity="per_sample")


def frozen_twin(module: nn.Module) -> nn.Module:
    """A layer of a quantized model with its effective weight computed once: a fake-quant twin becomes its
    activation quantizer followed by the float layer carrying its ``quantized_weight()`` (``to_float()``), the
    same outputs without re-quantizing the weight at every forward; a float layer is returned as it is."""
    if not getattr(module, "is_quant_module", False):
        return module
    return nn.Sequential(module.a_quant, module.to_float())


class SwitchableLayer(nn.Module):
    """A quantizable layer with one variant per candidate weight bit width (32 = float weight).

    ``bits`` selects the variant the next forward runs; ``specs`` holds each variant's spec (None: the float layer
    as it is). Variants are built by :class:`SwitchableModel` with the quantization core (:func:`frozen_twin`)."""

    def __init__(self, variants: Mapping[int, tuple[QuantSpec | None, nn.Module]]) -> None:
        super().__init__()
        order = sorted(int(b) for b in variants)
        self.specs: dict[int, QuantSpec | None] = {b: variants[b][0] for b in order}
        self.variants = nn.ModuleDict({str(b): variants[b][1] for b in order})
        self.bits = max(order)

    @property
    def candidates(self) -> tuple[int, ...]:
        """The weight bits this layer can switch to, ascending (32 included)."""
        return tuple(self.specs)

    def forward(self, x: Any) -> Any:
        return self.variants[str(self.bits)](x)


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


def _switch_key(spec: QuantSpec | None, where: str) -> tuple[int, QuantSpec | None]:
    """(weight bits, spec) of a planned layer; an unplanned or identity layer is the float layer (32, None)."""
    if spec is None or spec.is_identity:
        return FLOAT_BITS, None
    if spec.channel_bits is not None:
        raise PlanError(
            f"{where}: channel_bits (bits per output channel) cannot be switched; give the layer one w_bits"
        )
    return spec.w_bits, spec


def _calib_batches(calib: Any) -> Any:
    """Calibration batches for :func:`quantize_model`: a tensor of inputs in batches of 64, else as given."""
    return list(calib.split(64)) if isinstance(calib, torch.Tensor) else calib


def _build_variants(
    net: nn.Module, layers: Sequence[str], plans: Sequence[QuantPlan], calib: Any
) -> Variants:
    """Each layer's variant per weight bits: every plan that brings a new (layer, bits) is applied to ``net`` with
    :func:`quantize_model` (static activation ranges calibrated in that plan's context) and its twins frozen; a
    layer's float variant is ``net``'s own layer unless a plan gives it a float-weight spec."""
    out: Variants = {n: {} for n in layers}
    for i, plan in enumerate(plans):
        keys = {n: _switch_key(plan.get(n), f"rung {i}, layer {n!r}") for n in layers}
        new = []
        for n, (bits, spec) in keys.items():
            if bits in out[n] and out[n][bits][0] != spec:
                raise PlanError(
                    f"rung {i}, layer {n!r}: two specs at w_bits={bits} ({out[n][bits][0]} and {spec}); the "
                    "runtime switches a layer by its weight bits, so each (layer, w_bits) needs one spec"
                )
            if bits not in out[n]:
                new.append(n)
        quantized = [n for n in new if keys[n][1] is not None]
        qnet = quantize_model(net, plan, _calib_batches(calib)) if quantized else net
        for n in new:
            bits, spec = keys[n]
            out[n][bits] = (
                spec,
                frozen_twin(get_module(qnet, n)) if spec is not None else get_module(net, n),
            )
    for n in layers:
        out[n].setdefault(FLOAT_BITS, (None, get_module(net, n)))
    return out


class SwitchableModel(nn.Module):
    """A private copy of ``model`` (BatchNorm folded) whose layer groups switch weight bits per forward.

    Built from ``w_bits`` and ``a_bits`` (every layer gets :func:`runtime_spec` at each bit width, and at 32: float
    weights, quantized activations), or from a list of QuantPlans (``plans``, see :meth:`from_plans`; ``w_bits``
    and ``a_bits`` are then read off the plans). It lives on
    ``model``'s device (the variants are built there; move ``model``, not this object); :meth:`run` takes inputs
    on any device and returns logits on the CPU.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        w_bits: Sequence[int] = (2, 3, 4, 6, 8),
        a_bits: int = 8,
        groups: str | Mapping[str, Sequence[str]] = "stage",
        plans: Sequence[QuantPlan] | None = None,
        calib: Any = None,
    ) -> None:
        super().__init__()
        given = plans is not None
        if given:
            _validate_plans(model, plans)
        net = copy.deepcopy(model).eval()
        fold_batchnorm(net, conv_bn_pairs(net))
        self.layers = quantizable_layers(net)
        if not self.layers:
            raise ValueError("the model has no Conv1d / Conv2d / Linear / Embedding layer to switch")
        self.groups = _groups_of(self.layers, groups)
        if not given:
            bits = sorted({int(b) for b in w_bits if int(b) < FLOAT_BITS}) + [FLOAT_BITS]
            plans = [QuantPlan({n: runtime_spec(b, a_bits) for n in self.layers}) for b in bits]
        variants = _build_variants(net, self.layers, plans, calib)
        for name in self.layers:
            set_module(net, name, SwitchableLayer(variants[name]))
        for p in net.parameters():
            p.requires_grad_(False)
        self.net = net
        self.layer_specs = {n: get_module(net, n).specs for n in self.layers}
        self.w_bits = tuple(sorted({b for s in self.layer_specs.values() for b in s if b < FLOAT_BITS}))
        a_set = {s.a_bits for specs in self.layer_specs.values() for s in specs.values() if s is not None}
        # the activation bits (None when the plans mix several)
        self.a_bits: int | None = a_set.pop() if len(a_set) == 1 else (None if given else a_bits)
        self.device = model_device(net)
        for plan in plans:
            self.map_of(plan)  # every rung is a map of this model's groups

    @classmethod
    def from_plans(
        cls,
        model: nn.Module,
        plans: Sequence[QuantPlan],
        calib: Any = None,
        *,
        groups: str | Mapping[str, Sequence[str]] = "layer",
    ) -> SwitchableModel:
        """A switchable model whose variants are the layers of ``plans`` (e.g. a precision ladder, one plan per
        rung), each plan validated against ``model``. A layer missing from a plan (or float32 there) is float in
        that rung. Each (layer, w_bits) must have one spec over all plans, and the layers of a group the same
        w_bits in each plan (:meth:`map_of` gives a plan's map). ``calib`` (a tensor of inputs or a loader of
        batches) is needed only by specs with static activation ranges."""
        return cls(model, groups=groups, plans=plans, calib=calib)

    @property
    def group_names(self) -> list[str]:
        return list(self.groups)

    def spec_of(self, layer: str, bits: int) -> QuantSpec | None:
        """The spec ``layer`` runs at ``bits`` (None: the float layer as it is)."""
        return self.layer_specs[layer][int(bits)]

    def set_map(self, precision_map: Mapping[str, int] | QuantPlan) -> None:
        """Switch every group to its bits in ``precision_map`` (or to the map of a plan, see :meth:`map_of`)."""
        if isinstance(precision_map, QuantPlan):
            precision_map = self.map_of(precision_map)
        for g, layer_names in self.groups.items():
            b = int(precision_map[g])
            for n in layer_names:
                layer = get_module(self.net, n)
                if b not in layer.candidates:
                    cands = tuple(c for c in layer.candidates if c < FLOAT_BITS)
                    raise ValueError(f"bits {b} for group {g!r} not in the candidates {cands}")
                layer.bits = b

    @torch.inference_mode()
    def run(self, x: torch.Tensor, precision_map: Mapping[str, int] | QuantPlan) -> torch.Tensor:
        """Logits of ``x`` (moved to the model's device) under ``precision_map`` (or a plan), on the CPU."""
        self.set_map(precision_map)
        return self.net(x.to(self.device)).cpu()

    def plan(self, precision_map: Mapping[str, int]) -> QuantPlan:
        """The map as the QuantPlan the model runs: each layer's spec at its group's bits (float layers left out);
        :func:`quantize_model` applies it with the same numerics."""
        specs = {}
        for g, names in self.groups.items():
            b = int(precision_map[g])
            for n in names:
                spec = self.spec_of(n, b)
                if spec is not None:
                    specs[n] = spec
        return QuantPlan(specs)

    def map_of(self, plan: QuantPlan) -> dict[str, int]:
        """The precision map that runs ``plan``: raises :class:`PlanError` when a group's layers differ in bits
        or a layer's spec is not the one this model holds at those bits."""
        out = {}
        for g, names in self.groups.items():
            keys = {n: _switch_key(plan.get(n), f"layer {n!r}") for n in names}
            bits = {b for b, _ in keys.values()}
            if len(bits) != 1:
                raise PlanError(f"group {g!r} mixes weight bits {sorted(bits)} over its layers {names}")
            b = bits.pop()
            for n, (_, spec) in keys.items():
                if self.layer_specs[n].get(b, "missing") != spec:
                    raise PlanError(
                        f"layer {n!r}: spec {spec} at w_bits={b} is not a candidate of this model"
                    )
            out[g] = b
        return out


def _validate_plans(model: nn.Module, plans: Sequence[QuantPlan]) -> None:
    """Every rung is a QuantPlan valid for ``model`` (:meth:`QuantPlan.validate`); there is at least one."""
    if isinstance(plans, QuantPlan) or len(plans) == 0:
        raise PlanError("plans must be a non-empty list of QuantPlans (one per rung)")
    for i, plan in enumerate(plans):
        if not isinstance(plan, QuantPlan):
            raise PlanError(f"rung {i}: expected a QuantPlan, got {type(plan).__name__}")
        try:
            plan.validate(model)
        except PlanError as e:
            raise PlanError(f"rung {i}: {e}") from e
