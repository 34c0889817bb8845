"""The torch.ao FX int8 handler: baked float weights, observers matching the plan's grids, bf16 layers.

The kernel menu (:mod:`workbench.hardware.kernels`) registers it as ``int8_static``, a whole-graph pass.

torch.ao quantized tensors are deprecated upstream; they are used here and nowhere else. The graph passes it runs
live in :mod:`workbench.hardware.deploy.fx_graph`.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch
from torch import nn

from workbench.hardware.deploy.fx_graph import (
    FLOAT_OUTPUT_ENGINES,
    clamp_layer_inputs,
    float_operands,
    float_outputs,
    pin_observers,
)
from workbench.hardware.deploy.numerics import (
    bias_safe_scales,
    kernel_engines,
    layout_safe_clamps,
    mirror_int32_bias,
    mirror_output_grids,
    quantized_pads,
)
from workbench.hardware.dispatch import LayerDispatch, int_followers
from workbench.hardware.kernels.modules import Bf16Layer
from workbench.quant.inputs import (
    call_model,
)
from workbench.quant.spec import QuantPlan
from workbench.quant.swap import get_module, quant_modules, quantize_model, set_module

# ============================================================================================ conversion


@torch.no_grad()
def reduce_activation_range(simulated: nn.Module) -> int:
    """Put every 8-bit static activation grid of ``simulated`` (in place: a private copy) on 7 bits over the same
    calibrated range, the ``reduce_range`` grid that int8 kernels without VNNI compute exactly (their 16-bit
    pair sums cannot saturate on 7-bit inputs); returns how many grids changed."""
    from workbench.quant.modules import ActQuantizer
    from workbench.quant.quantizers import compute_qparams

    changed = 0
    for aq in simulated.modules():
        if not isinstance(aq, ActQuantizer) or not aq.needs_calibration or aq.spec.a_bits != 8:
            continue
        lo = (aq.qmin - aq.zero_point) * aq.scale
        hi = (aq.qmax - aq.zero_point) * aq.scale
        half = torch.div(aq.qmax - aq.qmin, 2, rounding_mode="floor")
        qmin, qmax = (
            (-torch.floor(half / 2), torch.floor(half / 2))
            if aq.spec.a_symmetric
            else (aq.qmin, aq.qmin + half)
        )
        scale, zp = compute_qparams(lo, hi, qmin, qmax, symmetric=aq.spec.a_symmetric)
        aq.qmin, aq.qmax, aq.scale, aq.zero_point = qmin, qmax, scale, zp
        changed += 1
    return changed


def sim_input_grids(simulated: nn.Module, layers: list[str]) -> dict[str, tuple[float, int]]:
    """``(scale, zero point)`` of each of ``layers``' calibrated input grid in the simulation, its codes shifted
    into the quint8 container (a symmetric ``-127..127`` grid gets zero point 127)."""
    mods = quant_modules(simulated)
    out = {}
    for name in layers:
        aq = mods[name].a_quant
        out[name] = (float(aq.scale), int(aq.zero_point) - int(aq.qmin))
    return out


def sim_input_ranges(simulated: nn.Module, layers: list[str]) -> dict[str, tuple[float, float]]:
    """``(lo, hi)`` of each of ``layers``' input grid in the simulation whose codes do not fill the quint8
    container (7-bit reduce_range grids, low-bit grids): the deployed inputs are clamped there, as simulated."""
    mods = quant_modules(simulated)
    out = {}
    for name in layers:
        aq = mods[name].a_quant
        if int(aq.qmax) - int(aq.qmin) < 255:
            scale, zp = float(aq.scale), int(aq.zero_point)
            out[name] = ((int(aq.qmin) - zp) * scale, (int(aq.qmax) - zp) * scale)
    return out


def _baked_float_model(
    model: nn.Module, plan: QuantPlan, *, simulated: nn.Module | None = None, keep: tuple[str, ...] = ()
) -> nn.Module:
    """A float copy of ``model`` whose plan layers carry their quantized / pruned / low-rank weights (BatchNorm
    folded into them), taken from ``simulated`` (the plan's fake-quant model; None: weights-only quantization of
    ``model``); activations untouched, except in the layers of ``keep``, which stay the simulation's twins."""
    if simulated is None:
        weights_only = QuantPlan(
            {n: s.with_(a_bits=32, a_dynamic=False) for n, s in plan.items() if s.transforms_weight}
        )
        if not len(weights_only):
            return copy.deepcopy(model).eval()
        simulated = quantize_model(model, weights_only, None, warn_float=False)
    qmodel = copy.deepcopy(simulated)
    for name, qm in quant_modules(qmodel).items():
        if name not in keep:
            set_module(qmodel, name, qm.to_float().eval())
    # the BatchNorms folded into the baked weights become exact identities (eps 0, unit variance), not
    # nn.Identity: FX then still matches conv-bn-relu and fuses the ReLU into the integer kernel
    for _conv, bn_name in getattr(qmodel, "folded_bn", []):
        old = get_module(model, bn_name)
        ident = nn.BatchNorm2d(old.num_features, eps=0.0, device=old.running_mean.device).eval()
        set_module(qmodel, bn_name, ident)
    for attr in ("quant_plan", "folded_bn"):
        if hasattr(qmodel, attr):
            delattr(qmodel, attr)
    return qmodel.eval()


def _act_observer(reduce_range: bool):
    from torch.ao.quantization.observer import MinMaxObserver

    return MinMaxObserver.with_args(
        dtype=torch.quint8,
        qscheme=torch.per_tensor_affine,
        quant_min=0,
        quant_max=127 if reduce_range else 255,
    )


def _weight_observer():
    from torch.ao.quantization.observer import PerChannelMinMaxObserver

    return PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric)


_AVG_POOLS = (nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)


def int8_qconfig_mapping(
    model: nn.Module, disp: dict[str, LayerDispatch], *, reduce_range: bool = False
) -> Any:
    """The FX QConfigMapping of the integer layers of ``disp`` and of the pass-through modules (ReLU, pooling)
    they feed. Every other op (residual adds, concatenations) runs in float, as in the simulation, which
    quantizes layer inputs only. The observers only place the quantization points: the input grids are pinned
    to the simulation's (:func:`pin_observers`), the weights set from it (:func:`set_sim_weights`); the other
    points (outputs feeding float ops) keep their calibrated 8-bit min-max range."""
    from torch.ao.quantization import QConfig, QConfigMapping

    qmap = QConfigMapping().set_global(None)
    qconfig = QConfig(activation=_act_observer(reduce_range), weight=_weight_observer())
    for name in [n for n, d in disp.items() if d.is_int]:
        qmap.set_module_name(name, qconfig)
    modules = dict(model.named_modules())
    for path in sorted(int_followers(model, disp)):  # average pooling does not commute with a grid: float
        if path not in disp and not isinstance(modules.get(path), _AVG_POOLS):
            qmap.set_module_name(path, qconfig)
    return qmap


def kernel_paths(baked: nn.Module, layers: list[str]) -> dict[str, str]:
    """Each plan layer's path to its kernel module in ``baked``: the layer itself, or for an adapted layer
    (``Sequential(pre_op, layer)``, e.g. a SAME-padding conv) its last child, the layer behind the pre-op."""
    mods = dict(baked.named_modules())
    return {n: f"{n}.{len(mods[n]) - 1}" if isinstance(mods.get(n), nn.Sequential) else n for n in layers}


def set_sim_weights(
    converted: nn.Module,
    simulated: nn.Module,
    layers: dict[str, str],
    grids: dict[str, tuple[float, int]],
    engines: dict[str, str] | None = None,
) -> None:
    """Pack each integer layer's weight with the simulation's own scales (codes exactly the simulation's;
    re-observing the baked weight could drift by an ulp and a mixed-bit channel would get the wrong scale), raised
    only where its bias would overflow an int32 code (:func:`bias_safe_scales`). ``layers``: plan layer name ->
    path of its kernel in ``converted`` (:func:`kernel_paths`); ``grids``: their input grids; ``engines``: the
    engine each is packed for (None: the current one; :func:`kernel_engines`)."""
    mods = dict(converted.named_modules())
    sims = quant_modules(simulated)
    for name, path in layers.items():
        sim, mod = sims[name], mods[path]
        bias = mod._weight_bias()[1]
        with torch.no_grad():
            w = sim.quantized_weight().detach().float()
            scale = bias_safe_scales(sim.w_quant.scale.detach().double().reshape(-1), bias, grids[name][0])
        if scale.numel() == 1:
            qw = torch.quantize_per_tensor(w, float(scale), 0, torch.qint8)
        else:
            zeros = torch.zeros(scale.numel(), dtype=torch.long)
            qw = torch.quantize_per_channel(w, scale, zeros, 0, torch.qint8)
        previous = torch.backends.quantized.engine
        torch.backends.quantized.engine = (engines or {}).get(name, previous)
        try:
            mod.set_weight_bias(qw, bias)
        finally:
            torch.backends.quantized.engine = previous


def convert_fx_int8(
    baked: nn.Module,
    qmap: Any,
    batches: list[Any],
    *,
    engine: str,
    grids: dict[str, tuple[float, int]] | None = None,
    leaf_types: tuple[type[nn.Module], ...] = (),
    simulated: nn.Module | None = None,
) -> nn.Module:
    """Prepare, calibrate on ``batches`` and convert ``baked`` with torch.ao FX under ``engine`` (restored
    afterwards); convolutional models are converted channels-last. ``grids``: the simulation's input grids
    the observers are pinned to (:func:`pin_observers`); ``leaf_types``: module types FX must not trace into;
    ``simulated``: the simulation whose weights (and scales) the layers of ``grids`` take (:func:`set_sim_weights`,
    packed under ``engine`` too)."""
    from torch.ao.quantization.fx.custom_config import PrepareCustomConfig
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    previous_engine = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module="torch.ao")
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            if any(isinstance(m, nn.Conv2d) for m in baked.modules()):
                baked = baked.to(memory_format=torch.channels_last)
            first = batches[0]
            example = tuple(first.values()) if isinstance(first, dict) else first
            custom = PrepareCustomConfig().set_non_traceable_module_classes(list(leaf_types))
            prepared = prepare_fx(
                baked,
                qmap,
                example if isinstance(example, tuple) else (example,),
                prepare_custom_config=custom,
            )
            with torch.no_grad():
                for x in batches:
                    call_model(prepared, x)
            paths = kernel_paths(baked, list(grids or ()))
            if grids:
                pin_observers(prepared, {paths[n]: g for n, g in grids.items()})
            converted = convert_fx(prepared)
            float_operands(converted)
            layout_safe_clamps(converted)
            quantized_pads(converted)
            if simulated is not None and grids:
                engines = kernel_engines(converted, paths, engine)
                set_sim_weights(converted, simulated, paths, grids, engines)
                if engine in FLOAT_OUTPUT_ENGINES:
                    float_outputs(converted)
                mirror_output_grids(simulated, converted, paths)
                mirror_int32_bias(simulated, paths, converted, grids, engines)
                ranges = sim_input_ranges(simulated, list(grids))
                clamp_layer_inputs(converted, {paths[n]: r for n, r in ranges.items()})
            return converted
    finally:
        torch.backends.quantized.engine = previous_engine


def swap_bf16_layers(
    converted: nn.Module, disp: dict[str, LayerDispatch], *, baked: nn.Module | None = None
) -> list[str]:
    """Replace the layers dispatched to bf16 by :class:`Bf16Layer` in place; notes for layers FX fused away.
    An adapted layer (``Sequential(pre_op, layer)`` in ``baked``, the float model ``converted`` came from; None:
    ``converted`` itself) has its kernel swapped, the layer behind the pre-op (:func:`kernel_paths`): its pad
    stays in front, in float (a zero pad commutes with the bf16 cast), and the graph's call of it stays valid."""
    layers = [n for n, d in disp.items() if d.precision == "bf16"]
    notes = []
    for name, path in kernel_paths(converted if baked is None else baked, layers).items():
        try:
            sub = get_module(converted, path)
        except AttributeError:
            notes.append(f"{name}: fused away by FX; left in float32")
            continue
        set_module(converted, path, Bf16Layer(sub))
    return notes
