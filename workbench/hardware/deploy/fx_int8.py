"""The torch.ao FX int8 handler: baked float weights, observers matching the plan's grids, bf16 layers.

torch.ao quantized tensors are deprecated upstream; they are used here and nowhere else.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch
from torch import nn

from workbench.hardware.dispatch import (
    LayerDispatch,
    int_containers,
    int_followers,
)
from workbench.quant.inputs import (
    call_model,
)
from workbench.quant.quantizers import int_range
from workbench.quant.spec import QuantPlan, QuantSpec
from workbench.quant.swap import get_module, quant_modules, quantize_model, set_module


class Bf16Layer(nn.Module):
    """A float layer run in bfloat16: input and weights cast, channels-last for convolutions, output cast back."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.channels_last = any(isinstance(m, nn.Conv2d) for m in layer.modules())
        layer = copy.deepcopy(layer).to(torch.bfloat16)
        if self.channels_last:
            layer = layer.to(memory_format=torch.channels_last)
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.bfloat16)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.layer(x).float()


# ============================================================================================ conversion


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` in channels-last memory format when it is a 4-D image batch (unchanged otherwise)."""
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def _input_channels_last(gm: torch.fx.GraphModule) -> None:
    """Make the deployed graph take its input channels-last: quantized convs run NHWC, and a float stem fed NCHW
    would hand NCHW tensors to every residual add (a slow strided path)."""
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            with gm.graph.inserting_after(node):
                new = gm.graph.call_function(channels_last, (node,))
            node.replace_all_uses_with(new, delete_user_cb=lambda user, new=new: user is not new)
            break
    gm.graph.lint()
    gm.recompile()


def _baked_float_model(model: nn.Module, plan: QuantPlan) -> nn.Module:
    """A float copy of ``model`` whose plan layers carry their quantized / pruned / low-rank weights (BatchNorm
    folded into them); activations untouched."""
    weights_only = QuantPlan(
        {n: s.with_(a_bits=32, a_dynamic=False) for n, s in plan.items() if s.transforms_weight}
    )
    if not len(weights_only):
        return copy.deepcopy(model).eval()
    qmodel = quantize_model(model, weights_only, None, warn_float=False)
    for name, qm in quant_modules(qmodel).items():
        with torch.no_grad():
            w = qm.quantized_weight().detach().clone()
            bias = qm.bias.detach().clone() if qm.bias is not None else None
        if isinstance(qm, nn.Conv2d):
            new: nn.Module = nn.Conv2d(
                qm.in_channels,
                qm.out_channels,
                qm.kernel_size,
                stride=qm.stride,
                padding=qm.padding,
                dilation=qm.dilation,
                groups=qm.groups,
                bias=bias is not None,
                padding_mode=qm.padding_mode,
                device=w.device,
                dtype=w.dtype,
            )
        else:
            new = nn.Linear(
                qm.in_features, qm.out_features, bias=bias is not None, device=w.device, dtype=w.dtype
            )
        with torch.no_grad():
            new.weight.copy_(w)
            if bias is not None:
                new.bias.copy_(bias)
        if qm.pre_op is not None:  # an adapted layer (SAME padding): its pre-op stays in front
            new = nn.Sequential(copy.deepcopy(qm.pre_op), new)
        set_module(qmodel, name, new.eval())
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


def _weight_observer(spec: QuantSpec, d: LayerDispatch):
    from torch.ao.quantization.observer import MinMaxObserver, PerChannelMinMaxObserver

    exact = (
        spec.w_symmetric and spec.channel_bits is None and spec.granularity in ("per_channel", "per_tensor")
    )
    bits = d.w_bits if exact else 8
    qmin, qmax = int_range(min(bits, 8), symmetric=True)
    if spec.granularity == "per_tensor" and exact:
        return MinMaxObserver.with_args(
            dtype=torch.qint8, qscheme=torch.per_tensor_symmetric, quant_min=qmin, quant_max=qmax
        )
    return PerChannelMinMaxObserver.with_args(
        dtype=torch.qint8, qscheme=torch.per_channel_symmetric, quant_min=qmin, quant_max=qmax
    )


def _default_weight_observer():
    from torch.ao.quantization.observer import PerChannelMinMaxObserver

    return PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric)


def _act_observer(a_bits: int, observer: str, reduce_range: bool):
    from torch.ao.quantization.observer import HistogramObserver, MinMaxObserver

    qmax = 2 ** min(a_bits, 8) - 1
    if a_bits >= 8 and reduce_range:
        qmax = 127
    cls = MinMaxObserver if observer == "minmax" else HistogramObserver
    return cls.with_args(dtype=torch.quint8, qscheme=torch.per_tensor_affine, quant_min=0, quant_max=qmax)


def int8_qconfig_mapping(
    model: nn.Module, plan: QuantPlan, disp: dict[str, LayerDispatch], *, reduce_range: bool
) -> tuple[Any, list[str]]:
    """The FX QConfigMapping of a plan's integer layers (observers on the plan's grids) and of the modules
    whose non-layer ops run in the integer domain; with notes on weights re-quantized to int8 per channel."""
    from torch.ao.quantization import QConfig, QConfigMapping

    notes: list[str] = []
    qmap = QConfigMapping().set_global(None)
    for name in [n for n, d in disp.items() if d.is_int]:
        spec = plan.get(name) or QuantSpec()
        d = disp[name]
        if spec.granularity == "per_group" or spec.channel_bits is not None or not spec.w_symmetric:
            notes.append(
                f"{name}: {spec.granularity} / mixed-channel / asymmetric weights re-quantized to int8 per channel"
            )
        qmap.set_module_name(
            name,
            QConfig(
                activation=_act_observer(d.a_bits, spec.a_observer, reduce_range),
                weight=_weight_observer(spec, d),
            ),
        )
    shared = QConfig(
        activation=_act_observer(8, "histogram", reduce_range), weight=_default_weight_observer()
    )
    for path in sorted(int_containers(model, disp) | int_followers(model, disp)):
        if path in disp:
            continue
        if path == "":
            qmap.set_global(shared)
        else:
            qmap.set_module_name(path, shared)
    return qmap, notes


def convert_fx_int8(baked: nn.Module, qmap: Any, batches: list[Any], *, engine: str) -> nn.Module:
    """Prepare, calibrate on ``batches`` and convert ``baked`` with torch.ao FX under ``engine`` (restored
    afterwards); convolutional models are converted channels-last."""
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
            prepared = prepare_fx(baked, qmap, example if isinstance(example, tuple) else (example,))
            with torch.no_grad():
                for x in batches:
                    call_model(prepared, x)
            return convert_fx(prepared)
    finally:
        torch.backends.quantized.engine = previous_engine


def swap_bf16_layers(converted: nn.Module, disp: dict[str, LayerDispatch]) -> list[str]:
    """Replace the layers dispatched to bf16 by :class:`Bf16Layer` in place; notes for layers FX fused away."""
    notes = []
    for name, d in disp.items():
        if d.precision == "bf16":
            try:
                sub = get_module(converted, name)
            except AttributeError:
                notes.append(f"{name}: fused away by FX; left in float32")
                continue
            set_module(converted, name, Bf16Layer(sub))
    return notes
