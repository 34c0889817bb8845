"""Better weight and activation ranges, chosen per layer where they win.

For each quantized layer (in execution order, on inputs produced by the already-tuned layers before it), the
candidate ranges of its weights (min-max, MSE-optimal clipping, percentiles) and then of its static input
activations (the calibrated range, min-max, MSE, percentiles, from the layer's calibration inputs) are tried, and
the one with the smallest output error against the float layer on the same inputs wins: the layer's output SQNR
(signal over quantization noise, the criterion of SQNR-based range setting) is maximal. The current (calibrated)
range is always a candidate, so a layer's output error never grows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from workbench.quant.modules import ActQuantizer
from workbench.quant.observers import estimate_range
from workbench.quant.ptq.data import calib_batches, layer_by_layer
from workbench.quant.ptq.layers import float_forward, progress_bar, tunable_layers
from workbench.quant.ptq.registry import PtqContext, register_ptq_step
from workbench.quant.quantizers import activation_grid, compute_qparams, to_grid
from workbench.quant.spec import OBSERVERS, PlanError

_MAX_ACT_SAMPLES = 1 << 16  # values per activation channel the candidates are estimated from


@dataclass(frozen=True)
class RangesConfig:
    """Range-setting knobs: the candidate observers for weights and activations (from minmax, mse, percentile),
    the percentiles tried, the calibration samples activation ranges are estimated from (``calib_samples``) and
    those a candidate's output error is measured on (``eval_samples``, the first of them)."""

    name: ClassVar[str] = "ranges"
    weight_observers: tuple[str, ...] = ("minmax", "mse", "percentile")
    act_observers: tuple[str, ...] = ("minmax", "mse", "percentile")
    percentiles: tuple[float, ...] = (99.9, 99.99)
    calib_samples: int = 32
    eval_samples: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        for obs in (*self.weight_observers, *self.act_observers):
            if obs not in OBSERVERS:
                raise PlanError(f"RangesConfig observer {obs!r} unknown; choose from {OBSERVERS}")
        if self.calib_samples < 1 or self.eval_samples < 1:
            raise PlanError("RangesConfig.calib_samples and eval_samples must be >= 1")


def _candidates(observers: tuple[str, ...], percentiles: tuple[float, ...]) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    for obs in observers:
        out += [(obs, p) for p in percentiles] if obs == "percentile" else [(obs, 100.0)]
    return out


def _error(layer: nn.Module, x: Tensor, target: Tensor) -> float:
    return float((layer(x) - target).pow(2).mean())


def _try_weights(layer: nn.Module, x: Tensor, target: Tensor, cfg: RangesConfig) -> tuple[str, float, float]:
    wq = layer.w_quant
    grid = to_grid(layer.weight.detach(), wq.spec.granularity, wq.spec.group_size)
    best = ("calibrated", _error(layer, x, target), wq.scale.clone(), wq.zero_point.clone())
    base = best[1]
    for obs, pct in _candidates(cfg.weight_observers, cfg.percentiles):
        lo, hi = estimate_range(grid, method=obs, qmin=wq.qmin, qmax=wq.qmax, symmetric=wq.spec.w_symmetric,
                                percentile=pct)  # fmt: skip
        scale, zp = compute_qparams(lo, hi, wq.qmin, wq.qmax, symmetric=wq.spec.w_symmetric)
        wq.scale.copy_(scale)
        wq.zero_point.copy_(zp)
        err = _error(layer, x, target)
        if err < best[1]:
            best = (f"{obs}" if obs != "percentile" else f"percentile {pct}", err, scale, zp)
    wq.scale.copy_(best[2])
    wq.zero_point.copy_(best[3])
    return best[0], base, best[1]


def _try_acts(layer: nn.Module, x: Tensor, target: Tensor, cfg: RangesConfig) -> tuple[str, float, float]:
    aq: ActQuantizer = layer.a_quant
    grid = activation_grid(x, aq.spec.a_granularity).float()
    x, target = x[: cfg.eval_samples], target[: cfg.eval_samples]
    if grid.shape[1] > _MAX_ACT_SAMPLES:
        gen = torch.Generator().manual_seed(cfg.seed)
        idx = torch.randperm(grid.shape[1], generator=gen)[:_MAX_ACT_SAMPLES].to(grid.device)
        seen_lo, seen_hi = grid.amin(1, keepdim=True), grid.amax(1, keepdim=True)
        grid = grid[:, idx]
    else:
        seen_lo, seen_hi = grid.amin(1, keepdim=True), grid.amax(1, keepdim=True)
    best = ("calibrated", _error(layer, x, target), aq.scale.clone(), aq.zero_point.clone())
    base = best[1]
    for obs, pct in _candidates(cfg.act_observers, cfg.percentiles):
        lo, hi = estimate_range(grid, method=obs, qmin=aq.qmin, qmax=aq.qmax, symmetric=aq.spec.a_symmetric,
                                percentile=pct)  # fmt: skip
        lo, hi = torch.maximum(lo, seen_lo), torch.minimum(hi, seen_hi)
        aq.scale, aq.zero_point = compute_qparams(lo, hi, aq.qmin, aq.qmax, symmetric=aq.spec.a_symmetric)
        err = _error(layer, x, target)
        if err < best[1]:
            best = (f"{obs}" if obs != "percentile" else f"percentile {pct}", err, aq.scale, aq.zero_point)
    aq.scale, aq.zero_point = best[2].clone(), best[3].clone()
    return best[0], base, best[1]


@torch.no_grad()
def tune_layer_ranges(layer: nn.Module, x: Tensor, cfg: RangesConfig) -> dict[str, Any]:
    """Choose the weight, then the activation range of one fake-quant layer on its raw inputs ``x``."""
    target = float_forward(layer, x)
    report: dict[str, Any] = {}
    if layer.w_quant.is_integer:
        xs, ts = x[: cfg.eval_samples], target[: cfg.eval_samples]
        report["weight"], report["mse_before"], report["mse"] = _try_weights(layer, xs, ts, cfg)
    if isinstance(layer.a_quant, ActQuantizer) and layer.a_quant.needs_calibration:
        report["act"], before, report["mse"] = _try_acts(layer, x, target, cfg)
        report.setdefault("mse_before", before)
    return report


@register_ptq_step(
    "ranges",
    stage="after_calibration",
    order=10,
    config_type=RangesConfig,
    needs_data=True,
    summary="per-layer weight and activation ranges (minmax / MSE / percentile) chosen by output SQNR",
)
def run_ranges(model: nn.Module, cfg: RangesConfig, ctx: PtqContext) -> dict[str, Any]:
    (inputs,) = calib_batches(ctx.calib_loader, max_samples=cfg.calib_samples, step="ranges")
    layers = tunable_layers(model, "ranges")
    report: dict[str, Any] = {}
    bar = progress_bar(ctx, "ranges", len(layers))
    layer_by_layer(model, layers, inputs, progress=bar,
                   before=lambda name, layer, x: report.__setitem__(name, tune_layer_ranges(layer, x, cfg)))  # fmt: skip
    return report
