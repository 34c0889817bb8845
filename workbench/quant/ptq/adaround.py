"""AdaRound (Nagel et al. 2020, "Up or Down? Adaptive Rounding for Post-Training Quantization").

Each low-bit layer (``w_bits <= max_bits``), in execution order, learns whether each weight rounds up or down:
``w = s * (clamp(floor(W / s) + z + h(V), qmin, qmax) - z)`` with the rectified sigmoid ``h`` and a regulariser
``lambda * sum(1 - |2h - 1|^beta)`` (beta annealed from 20 to 2) that pushes ``h`` to 0 or 1. The loss is the
asymmetric reconstruction error of the layer output: the quantized model's input (quantized by the layer's own
activation quantizer) against the float model's output on the float input. Iterations are budgeted (a few hundred
per layer, on random sub-batches and, for convolutions, random spatial crops), so EfficientNet-Lite1 takes minutes on
a CPU. The learned codes are written back as the layer's float weight (exactly on the grid), so the layer's
nearest-rounding quantizer reproduces them; a layer whose reconstruction error on the calibration data would grow
keeps nearest rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from workbench.quant.ptq.data import calib_batches
from workbench.quant.ptq.layers import forward_with, tunable_layers, tune_against_float
from workbench.quant.ptq.registry import PtqContext, register_ptq_step, skip
from workbench.quant.quantizers import from_grid, to_grid
from workbench.quant.spec import PlanError

ZETA, GAMMA = 1.1, -0.1


@dataclass(frozen=True)
class AdaRoundConfig:
    """AdaRound knobs: layers with ``w_bits <= max_bits``; ``iterations`` per layer on sub-batches of
    ``batch_size`` samples (convolution inputs cropped to ``crop`` x ``crop``), from ``calib_samples`` samples;
    Adam learning rate ``lr``, rounding regulariser weight ``reg``, beta annealed from ``beta_start`` to
    ``beta_end`` after ``warmup`` (fraction of iterations without the regulariser)."""

    name: ClassVar[str] = "adaround"
    max_bits: int = 4
    iterations: int = 200
    batch_size: int = 8
    crop: int = 24
    calib_samples: int = 32
    lr: float = 1e-2
    reg: float = 0.01
    beta_start: float = 20.0
    beta_end: float = 2.0
    warmup: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.iterations < 1 or self.batch_size < 1 or self.calib_samples < 1 or self.crop < 1:
            raise PlanError("AdaRoundConfig iterations, batch_size, crop and calib_samples must be >= 1")
        if not 2 <= self.max_bits <= 16:
            raise PlanError(f"AdaRoundConfig.max_bits={self.max_bits} must lie in [2, 16]")


def _h(v: Tensor) -> Tensor:
    return (torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)


def _init_v(rest: Tensor) -> Tensor:
    """V such that h(V) equals the fractional part ``rest`` (so training starts at the float weight)."""
    p = ((rest - GAMMA) / (ZETA - GAMMA)).clamp(1e-4, 1 - 1e-4)
    return torch.log(p / (1 - p))


class _Rounder:
    """The soft-rounded weight of one layer as a function of the rounding variables ``v``."""

    def __init__(self, layer: nn.Module) -> None:
        wq = layer.w_quant
        self.layer, self.wq = layer, wq
        grid = to_grid(layer.weight.detach(), wq.spec.granularity, wq.spec.group_size)
        u = grid / wq.scale
        self.floor = torch.floor(u)
        self.v = _init_v(u - self.floor).requires_grad_(True)

    def weight(self, hard: bool = False) -> Tensor:
        h = (self.v >= 0).float() if hard else _h(self.v)
        wq = self.wq
        q = torch.clamp(self.floor + wq.zero_point + h, wq.qmin, wq.qmax)
        return from_grid((q - wq.zero_point) * wq.scale, self.layer.weight.shape, wq.spec.granularity)


class _Adam:
    """Adam on one tensor (torch.optim would import torch._dynamo: seconds on a loaded CPU)."""

    def __init__(
        self, p: Tensor, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8
    ) -> None:
        self.p, self.lr, self.betas, self.eps, self.t = p, lr, betas, eps, 0
        self.m = torch.zeros_like(p)
        self.v = torch.zeros_like(p)

    @torch.no_grad()
    def step(self) -> None:
        b1, b2 = self.betas
        self.t += 1
        g = self.p.grad
        self.m.mul_(b1).add_(g, alpha=1 - b1)
        self.v.mul_(b2).addcmul_(g, g, value=1 - b2)
        denom = (self.v / (1 - b2**self.t)).sqrt_().add_(self.eps)
        self.p.addcdiv_(self.m, denom, value=-self.lr / (1 - b1**self.t))


def _sample(x_q: Tensor, x_f: Tensor, cfg: AdaRoundConfig, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    idx = torch.randint(0, x_q.shape[0], (min(cfg.batch_size, x_q.shape[0]),), generator=gen)
    xq, xf = x_q[idx], x_f[idx]
    if xq.dim() >= 3:  # crop the spatial dims of a convolution's input
        for d in range(2, xq.dim()):
            n = xq.shape[d]
            if n > cfg.crop:
                start = int(torch.randint(0, n - cfg.crop + 1, (1,), generator=gen))
                xq, xf = xq.narrow(d, start, cfg.crop), xf.narrow(d, start, cfg.crop)
    return xq, xf


def _recon(out: Tensor, target: Tensor) -> Tensor:
    dim = -1 if out.dim() == 2 else 1
    return (out - target).pow(2).sum(dim).mean()


def round_layer(
    layer: nn.Module, float_layer: nn.Module, x_q: Tensor, x_f: Tensor, cfg: AdaRoundConfig
) -> dict:
    """Learn the rounding of ``layer`` from its raw quantized-model inputs ``x_q`` and the float model's inputs
    ``x_f``; writes the rounded weight into ``layer.weight`` unless nearest rounding reconstructs better."""
    with torch.enable_grad():  # also inside the no-grad forward pass of layer_by_layer
        return _round_layer(layer, float_layer, x_q, x_f, cfg)


def _round_layer(
    layer: nn.Module, float_layer: nn.Module, x_q: Tensor, x_f: Tensor, cfg: AdaRoundConfig
) -> dict:
    gen = torch.Generator().manual_seed(cfg.seed)
    with torch.no_grad():
        xq_all = layer.a_quant(x_q)
    r = _Rounder(layer)
    opt = _Adam(r.v, cfg.lr)
    warm = int(cfg.warmup * cfg.iterations)
    for it in range(cfg.iterations):
        idx_q, idx_f = _sample(xq_all, x_f, cfg, gen)
        with torch.no_grad():
            target = float_layer(idx_f)
        loss = _recon(forward_with(layer, idx_q, r.weight()), target)
        if it >= warm:
            frac = (it - warm) / max(1, cfg.iterations - warm)
            beta = cfg.beta_end + 0.5 * (cfg.beta_start - cfg.beta_end) * (1 + math.cos(math.pi * frac))
            loss = loss + cfg.reg * (1 - (2 * _h(r.v) - 1).abs().pow(beta)).sum()
        r.v.grad = None
        loss.backward()
        opt.step()
    with torch.no_grad():
        target = float_layer(x_f)
        nearest = layer.quantized_weight()
        hard = r.weight(hard=True)
        before = float(_recon(forward_with(layer, xq_all, nearest), target))
        after = float(_recon(forward_with(layer, xq_all, hard), target))
        if after < before:
            layer.weight.copy_(hard)
    return {
        "recon_nearest": before,
        "recon_adaround": after,
        "kept": "adaround" if after < before else "nearest",
    }


@register_ptq_step(
    "adaround",
    stage="after_calibration",
    order=20,
    config_type=AdaRoundConfig,
    needs_data=True,
    needs_float_reference=True,
    summary="AdaRound weight rounding of <= max_bits layers, layer by layer on calibration data",
)
def run_adaround(model: nn.Module, cfg: AdaRoundConfig, ctx: PtqContext) -> dict[str, Any]:
    assert ctx.float_model is not None
    (inputs,) = calib_batches(ctx.calib_loader, max_samples=cfg.calib_samples, step="adaround")
    layers = tunable_layers(model, "adaround")
    chosen = {
        n: m for n, m in layers.items() if m.w_quant.is_integer and m.w_quant.bits.max() <= cfg.max_bits
    }
    if not chosen:
        skip("adaround", "every layer", f"no quantized layer has integer weights of <= {cfg.max_bits} bits")
        return {}
    return tune_against_float(
        model, ctx, chosen, inputs, lambda m, f, xq, xf: round_layer(m, f, xq, xf, cfg), "adaround"
    )
