"""Empirical bias correction (Nagel et al. 2019, section 4.2, the empirical variant).

Quantization shifts the mean of a layer's output (``E[W~ x~] != E[W x]``). Layer by layer, in execution order, the
per-channel mean of the quantized layer's output (on the quantized model's own inputs, with the corrections of the
layers before it already applied) is compared with the float model's (on the float model's inputs), and the
difference is added to the layer's bias. A layer without a bias is skipped by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from workbench.quant.ptq.data import (
    calib_batches,
    channel_dim,
    channel_means,
    layer_by_layer,
    output_channel_sum,
)
from workbench.quant.ptq.layers import progress_bar, tunable_layers
from workbench.quant.ptq.registry import PtqContext, register_ptq_step, skip
from workbench.quant.spec import PlanError


@dataclass(frozen=True)
class BiasCorrectionConfig:
    """Bias-correction knobs: ``calib_samples`` calibration samples the output means are taken over."""

    name: ClassVar[str] = "bias_correction"
    calib_samples: int = 64

    def __post_init__(self) -> None:
        if self.calib_samples < 1:
            raise PlanError("BiasCorrectionConfig.calib_samples must be >= 1")


@register_ptq_step(
    "bias_correction",
    stage="after_calibration",
    order=30,
    config_type=BiasCorrectionConfig,
    needs_data=True,
    needs_float_reference=True,
    summary="empirical bias correction: per-channel output means of each quantized layer matched to the float model",
)
@torch.no_grad()
def run_bias_correction(model: nn.Module, cfg: BiasCorrectionConfig, ctx: PtqContext) -> dict[str, Any]:
    assert ctx.float_model is not None
    (inputs,) = calib_batches(ctx.calib_loader, max_samples=cfg.calib_samples, step="bias_correction")
    layers = tunable_layers(model, "bias_correction")
    for name in [n for n, m in layers.items() if m.bias is None]:
        skip("bias_correction", f"layer {name!r}", "it has no bias to correct")
        del layers[name]
    float_means = channel_means(
        ctx.float_model, {n: ctx.float_model.get_submodule(n) for n in layers}, [inputs]
    )
    report: dict[str, float] = {}

    def correct(name: str, layer: nn.Module, out: Tensor) -> Tensor:
        dim = channel_dim(layer)
        s, c = output_channel_sum(out, dim)
        shift = (float_means[name] - s / c).to(out.dtype)
        layer.bias.add_(shift)
        report[name] = float(shift.abs().mean())
        shape = [1] * out.dim()
        shape[dim] = -1
        return out + shift.reshape(shape)  # what the layer now outputs, for the layers after it

    layer_by_layer(
        model, layers, inputs, after=correct, progress=progress_bar(ctx, "bias_correction", len(layers))
    )
    return report
