"""LSQ learned step sizes (Esser et al., 2020): quantizer scales turned into Parameters with the published
step-size gradient scale, and back into buffers."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from workbench.quant.inputs import call_model
from workbench.quant.modules import ActQuantizer, WeightQuantizer

_SCALE_EPS = 1e-8


def lsq_grad_factor(qmax: Tensor | float, n: int) -> Tensor:
    """The published LSQ step-size gradient scale ``1 / sqrt(n * Qp)`` (``n`` values share the step)."""
    return 1.0 / torch.sqrt(torch.as_tensor(qmax, dtype=torch.float32) * float(n))


def _to_parameter(module: nn.Module, name: str) -> nn.Parameter:
    t = module._buffers.pop(name)
    module._non_persistent_buffers_set.discard(name)
    p = nn.Parameter(t.detach().clone())
    module.register_parameter(name, p)
    return p


def _to_buffer(module: nn.Module, name: str) -> None:
    p = module._parameters.pop(name)
    module.register_buffer(name, p.detach().clone())


def _act_numel(model: nn.Module, example: Tensor) -> dict[ActQuantizer, int]:
    """Values per sample each activation quantizer sees (one forward pass of ``example``)."""
    seen: dict[ActQuantizer, int] = {}
    handles = []
    for m in model.modules():
        if isinstance(m, ActQuantizer):

            def hook(mod: nn.Module, args: tuple, _seen=seen) -> None:
                _seen[mod] = int(args[0][0].numel())

            handles.append(m.register_forward_pre_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            call_model(model, example)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return seen


@dataclass
class LearnedScale:
    """One learned step size: its quantizer, the Parameter, its LSQ gradient factor and calibrated magnitude."""

    module: nn.Module
    param: nn.Parameter
    grad_factor: Tensor
    init: float


@dataclass
class LearnedScales:
    """Step sizes turned into Parameters by :func:`learn_scales`; :meth:`close` turns them back into buffers."""

    items: list[LearnedScale] = field(default_factory=list)
    hooks: list[Any] = field(default_factory=list, repr=False)

    @property
    def params(self) -> list[nn.Parameter]:
        return [item.param for item in self.items]

    def clamp_(self) -> None:
        """Keep every step size positive (after an optimizer step)."""
        with torch.no_grad():
            for item in self.items:
                item.param.clamp_(min=_SCALE_EPS)

    def close(self) -> None:
        for h in self.hooks:
            h.remove()
        for item in self.items:
            if isinstance(item.module._parameters.get("scale"), nn.Parameter):
                _to_buffer(item.module, "scale")
        self.items, self.hooks = [], []


def learn_scales(model: nn.Module, example_input: Tensor, *, act: bool = True) -> LearnedScales:
    """LSQ: turn the step sizes of a quantized model's integer weight quantizers (one per grid row: per channel,
    per group or per tensor) and, with ``act``, of its static activation quantizers into Parameters (in place).

    Each step's gradient is multiplied by the published ``g = 1 / sqrt(N * Qp)`` (a hook on the Parameter, the
    same as LSQ's ``grad_scale`` in the forward pass): ``N`` values share the step (a weight-grid row, one
    sample's activation or one channel of it), ``Qp`` is the grid's largest code. ``example_input`` (a batch of
    one is enough) measures the activation sizes.
    """
    out = LearnedScales()
    weight_quantizers = [m for m in model.modules() if isinstance(m, WeightQuantizer) and m.is_integer]
    act_quantizers: list[ActQuantizer] = []
    numel: dict[ActQuantizer, int] = {}
    if act:
        numel = _act_numel(model, example_input)
        act_quantizers = [m for m in model.modules() if isinstance(m, ActQuantizer) and m.needs_calibration]

    def add(m: nn.Module, g: Tensor) -> None:
        p = _to_parameter(m, "scale")
        out.hooks.append(p.register_hook(lambda grad, g=g: grad * g))
        out.items.append(LearnedScale(m, p, g, float(p.detach().abs().mean())))

    for m in weight_quantizers:
        add(m, lsq_grad_factor(m.qmax, _grid_cols(m)).to(m.scale.device))
    for m in act_quantizers:
        if m not in numel:  # never ran (calibration would have refused it): leave it frozen
            continue
        n = numel[m] // (m.scale.numel() if m.per_channel else 1)
        add(m, lsq_grad_factor(m.qmax.reshape(()), max(n, 1)).to(m.scale.device))
    return out


def _grid_cols(wq: WeightQuantizer) -> int:
    """Values per grid row (one scale) of a weight quantizer (a per-group row counts its padding)."""
    spec = wq.spec
    if spec.granularity == "per_group":
        return int(spec.group_size)
    return max(1, math.prod(wq.weight_shape) // int(wq.scale.shape[0]))
