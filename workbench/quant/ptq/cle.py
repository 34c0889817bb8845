"""Cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization"), ReLU6-aware.

For two layers joined by a positively homogeneous op (``conv -> [folded BN] -> ReLU / ReLU6 / none -> conv``,
depthwise and grouped convolutions and Linear included; zero padding, identities and dropout may sit between),
output channel ``i`` of the first layer is divided by ``s_i`` and input channel ``i`` of the second multiplied by
``s_i``, with ``s_i = sqrt(r1_i / r2_i)`` (``r``: the channel's weight range), so both channels end with the same
range ``sqrt(r1_i r2_i)``. Pairs are equalized in turn, repeatedly, until the scales settle (inverted residual
blocks chain pointwise -> depthwise -> pointwise).

ReLU6: ``relu6(x / s) = relu6(x) / s`` only while the clamp at 6 is not reached, before and after scaling. AIMET
replaces every ReLU6 by a ReLU before equalizing, which changes the network's function. Here the function is kept
on the calibration data instead: a channel whose pre-activation reaches the clamp on the calibration data keeps
``s_i = 1``; any other channel gets ``s_i >= m_i / 6`` (``m_i``: its largest pre-activation on the calibration data),
so its scaled pre-activation stays below the clamp. Inputs beyond the calibration maximum may hit the clamp where
the original did not: the function is kept exactly on the calibration data, approximately elsewhere. Without
calibration data the ReLU6 pairs are skipped by name (``relu6="skip"`` skips them always).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from workbench.quant.inputs import call_model, move_inputs
from workbench.quant.ptq.data import calib_batches, model_device
from workbench.quant.ptq.registry import PtqContext, register_ptq_step, skip
from workbench.quant.spec import PlanError

RELU6_MODES: tuple[str, ...] = ("limit", "skip")
_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Linear)
_ACT_FUNCS = {F.relu: math.inf, torch.relu: math.inf, F.relu6: 6.0}


@dataclass(frozen=True)
class CleConfig:
    """Cross-layer equalization knobs.

    ``iterations``: sweeps over all pairs at most; ``tol``: stop when no scale changed by more than this
    (relative). ``relu6``: ``limit`` (keep the ReLU6 clamp equivalent on the calibration data, see the module
    doc) or ``skip`` (leave pairs through a ReLU6 alone). ``calib_samples``: samples used to measure
    pre-activation maxima.
    """

    name: ClassVar[str] = "cle"
    iterations: int = 20
    tol: float = 1e-4
    relu6: str = "limit"
    calib_samples: int = 64

    def __post_init__(self) -> None:
        if self.relu6 not in RELU6_MODES:
            raise PlanError(f"CleConfig.relu6={self.relu6!r} unknown; choose one of {RELU6_MODES}")
        if self.iterations < 1 or self.calib_samples < 1:
            raise PlanError("CleConfig.iterations and calib_samples must be >= 1")


@dataclass
class ClePair:
    """Two layers ``first -> (activation with clamp ``clamp``) -> second`` that can be equalized."""

    first: str
    second: str
    clamp: float  # math.inf for ReLU / no activation, 6 for ReLU6


class _LeafTracer(torch.fx.Tracer):
    """Keeps every Conv / Linear (subclasses with their own forward included) as one module call."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, _LAYERS) or super().is_leaf_module(m, qualname)


def _clamp_of(node: torch.fx.Node, modules: dict[str, nn.Module]) -> float | None:
    """The upper clamp of a positively homogeneous activation node (inf for ReLU), None if it is not one."""
    if node.op == "call_function":
        return _ACT_FUNCS.get(node.target)
    if node.op != "call_module":
        return None
    m = modules[str(node.target)]
    if type(m) is nn.ReLU:
        return math.inf
    if isinstance(m, nn.Hardtanh) and m.min_val == 0.0:  # ReLU6 is a Hardtanh(0, 6)
        return float(m.max_val)
    return None


def _passes_through(node: torch.fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op != "call_module":
        return False
    m = modules[str(node.target)]
    if isinstance(m, (nn.Identity, nn.Dropout)):
        return True
    return isinstance(m, (nn.ConstantPad1d, nn.ConstantPad2d)) and m.value == 0.0


def _follow(node: torch.fx.Node, modules: dict[str, nn.Module], calls: dict[str, int]) -> ClePair | None:
    """The pair starting at layer ``node``, following single-user nodes to the next layer."""
    clamp, cur = math.inf, node
    seen_act = False
    while len(cur.users) == 1:
        cur = next(iter(cur.users))
        target = str(cur.target)
        if cur.op == "call_module" and isinstance(modules[target], _LAYERS):
            if calls[target] != 1:
                return None
            return ClePair(str(node.target), target, clamp)
        c = _clamp_of(cur, modules)
        if c is not None and not seen_act:
            clamp, seen_act = c, True
        elif not _passes_through(cur, modules):
            return None
    return None


def cle_pairs(model: nn.Module) -> list[ClePair]:
    """Every equalizable pair of ``model`` in graph order (traced by torch.fx; PlanError if it cannot be)."""
    try:
        graph = _LeafTracer().trace(model)
    except Exception as e:  # noqa: BLE001 - reported by name
        raise PlanError(f"the model cannot be traced by torch.fx ({e})") from None
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[str(node.target)] = calls.get(str(node.target), 0) + 1
    pairs = []
    for node in graph.nodes:
        target = str(node.target)
        if node.op == "call_module" and isinstance(modules[target], _LAYERS) and calls[target] == 1:
            pair = _follow(node, modules, calls)
            if pair is not None and _compatible(modules[pair.first], modules[pair.second]):
                pairs.append(pair)
    return pairs


def _compatible(first: nn.Module, second: nn.Module) -> bool:
    out = first.out_features if isinstance(first, nn.Linear) else first.out_channels
    inp = second.in_features if isinstance(second, nn.Linear) else second.in_channels
    return out == inp


def _groups(layer: nn.Module) -> int:
    return 1 if isinstance(layer, nn.Linear) else layer.groups


def _in_view(layer: nn.Module) -> Tensor:
    """The second layer's weight as ``[groups, out / groups, in / groups, rest]`` (a view)."""
    w = layer.weight
    g = _groups(layer)
    return w.reshape(g, w.shape[0] // g, w.shape[1], -1)


def _ranges(first: nn.Module, second: nn.Module) -> tuple[Tensor, Tensor]:
    r1 = first.weight.detach().abs().reshape(first.weight.shape[0], -1).amax(1)
    r2 = _in_view(second).detach().abs().amax(dim=(1, 3)).reshape(-1)
    return r1, r2


@torch.no_grad()
def _apply(first: nn.Module, second: nn.Module, s: Tensor) -> None:
    shape = (-1,) + (1,) * (first.weight.dim() - 1)
    first.weight.div_(s.reshape(shape))
    if first.bias is not None:
        first.bias.div_(s)
    g = _groups(second)
    view = _in_view(second)
    view.mul_(s.reshape(g, 1, -1, 1))


def _pre_activation_max(model: nn.Module, pairs: list[ClePair], ctx: PtqContext, cfg: CleConfig) -> dict:
    """Per-channel maxima of the first layers' outputs over the calibration samples (one pass)."""
    maxima: dict[str, Tensor] = {}
    modules = dict(model.named_modules())

    def make(name: str):
        def hook(_m, _args, out):
            dim = -1 if isinstance(modules[name], nn.Linear) else 1
            m = out.detach().movedim(dim, 0).reshape(out.shape[dim], -1).amax(1)
            maxima[name] = torch.maximum(maxima[name], m) if name in maxima else m

        return hook

    if not pairs:
        return maxima
    handles = [modules[p.first].register_forward_hook(make(p.first)) for p in pairs]
    try:
        with torch.no_grad():
            for inputs in calib_batches(ctx.calib_loader, max_samples=cfg.calib_samples, step="cle"):
                call_model(model, move_inputs(inputs, model_device(model)))
    finally:
        for h in handles:
            h.remove()
    return maxima


def _bounds(pair: ClePair, maxima: dict[str, Tensor], n: int, device) -> tuple[Tensor, Tensor]:
    """(lower, upper) bounds of the total scale of each channel of ``pair.first``."""
    lo = torch.zeros(n, device=device)
    hi = torch.full((n,), math.inf, device=device)
    if math.isinf(pair.clamp):
        return lo, hi
    m = maxima[pair.first]
    saturated = m > pair.clamp
    lo = torch.where(saturated, torch.ones_like(m), (m / pair.clamp).clamp(min=0.0))
    hi = torch.where(saturated, torch.ones_like(m), hi)
    return lo, hi


def equalize(model: nn.Module, pairs: list[ClePair], maxima: dict[str, Tensor], cfg: CleConfig) -> int:
    """Equalize ``pairs`` of ``model`` in place; returns the sweeps run."""
    modules = dict(model.named_modules())
    totals = {p.first: modules[p.first].weight.new_ones(modules[p.first].weight.shape[0]) for p in pairs}
    bounds = {p.first: _bounds(p, maxima, totals[p.first].numel(), totals[p.first].device) for p in pairs}
    for sweep in range(1, cfg.iterations + 1):
        change = 0.0
        for p in pairs:
            first, second = modules[p.first], modules[p.second]
            r1, r2 = _ranges(first, second)
            ok = (r1 > 1e-12) & (r2 > 1e-12)
            s = torch.where(ok, (r1 / r2.clamp(min=1e-12)).sqrt(), torch.ones_like(r1))
            lo, hi = bounds[p.first]
            total = totals[p.first]
            s = torch.minimum(torch.maximum(s * total, lo), hi) / total
            s = torch.where(torch.isfinite(s) & (s > 0), s, torch.ones_like(s))
            _apply(first, second, s)
            totals[p.first] = total * s
            change = max(change, float((s - 1).abs().max()))
        if change < cfg.tol:
            return sweep
    return cfg.iterations


@register_ptq_step(
    "cle",
    stage="before_swap",
    order=10,
    config_type=CleConfig,
    needs_data=False,
    summary="cross-layer equalization of conv -> ReLU/ReLU6 -> conv pairs (ReLU6 clamp kept on calibration data)",
)
def run_cle(model: nn.Module, cfg: CleConfig, ctx: PtqContext) -> dict[str, Any]:
    try:
        pairs = cle_pairs(model)
    except PlanError as e:
        skip("cle", "the whole model", str(e))
        return {"pairs": 0}
    if cfg.relu6 == "skip" or ctx.calib_loader is None:
        why = "relu6='skip'" if cfg.relu6 == "skip" else "no calibration data to bound the ReLU6 clamp"
        for p in [p for p in pairs if not math.isinf(p.clamp)]:
            skip("cle", f"pair {p.first} -> {p.second}", why)
        pairs = [p for p in pairs if math.isinf(p.clamp)]
    if not pairs:
        skip("cle", "the whole model", "no conv -> ReLU/ReLU6 -> conv pair (with a single consumer) found")
        return {"pairs": 0}
    maxima = _pre_activation_max(model, [p for p in pairs if not math.isinf(p.clamp)], ctx, cfg)
    sweeps = equalize(model, pairs, maxima, cfg)
    return {"pairs": len(pairs), "sweeps": sweeps}
