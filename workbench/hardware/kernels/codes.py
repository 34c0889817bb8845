"""The simulation's own weight codes of a fake-quant layer, for kernels that bake them exactly.

:func:`weight_codes` reads a twin's integer codes, scales, zero points and grid ranges per (row, group) and checks
that ``(codes - zero_point) * scale`` rebuilds the weight the simulation's forward pass uses, bit for bit; a
weight it cannot rebuild (low-rank factors, float weights) is a named problem, never a silent approximation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from workbench.quant.spec import QuantSpec


@dataclass(frozen=True)
class WeightCodes:
    """A weight ``[rows, cols]`` on its simulated grid: ``weight = (codes - zero_point) * scale``, each of
    ``scale`` / ``zero_point`` / ``qmin`` / ``qmax`` ``[rows, groups]`` for consecutive groups of ``group``
    columns (``group == cols`` for per-tensor / per-channel scales)."""

    codes: Tensor
    scale: Tensor
    zero_point: Tensor
    qmin: Tensor
    qmax: Tensor
    group: int

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.codes.shape[0]), int(self.codes.shape[1])

    def expand(self, t: Tensor) -> Tensor:
        """A per-(row, group) tensor repeated over the columns of its group: ``[rows, cols]``."""
        return t.repeat_interleave(self.group, dim=1)[:, : self.shape[1]]

    def weight(self) -> Tensor:
        """The float weight ``[rows, cols]`` the codes stand for."""
        return (self.codes.float() - self.expand(self.zero_point)) * self.expand(self.scale)

    def centred(self) -> Tensor:
        """``codes - zero_point`` as int64 (the signed value each code stands for, in units of its scale)."""
        return self.codes - self.expand(self.zero_point).round().to(torch.int64)


def integer_weight_problem(spec: QuantSpec | None) -> str | None:
    """Why ``spec`` does not put a layer's weight on one integer grid a kernel could store (None: it does)."""
    if spec is None:
        return "the layer is not in the plan (float weights)"
    bits = max(spec.channel_bits) if spec.channel_bits is not None else spec.w_bits
    if bits > 8:
        return f"{bits}-bit weights are float, not integer codes"
    if spec.rank_ratio is not None:
        return "low-rank weights (a product of two quantized factors is not on one integer grid)"
    return None


def _grid(t: Tensor, rows: int, groups: int) -> Tensor:
    """A quantizer's per-row parameter ``[rows * groups, 1]`` (or one value) as ``[rows, groups]``."""
    t = t.detach().float().reshape(-1)
    return t.expand(rows * groups).reshape(rows, groups) if t.numel() == 1 else t.reshape(rows, groups)


@torch.no_grad()
def weight_codes(twin: nn.Module) -> WeightCodes | str:
    """The codes of fake-quant layer ``twin`` (:class:`~workbench.quant.modules.QuantLinear`,
    :class:`~workbench.quant.modules.QuantEmbedding`, ...) as :class:`WeightCodes`, or a string naming why
    they do not rebuild its simulated weight exactly."""
    spec = getattr(twin, "spec", None)
    problem = integer_weight_problem(spec)
    if problem is not None:
        return problem
    wq = twin.w_quant
    weight = twin.weight.detach()
    if spec.sparsity > 0:  # pruned weights are zero codes (0.0 is on every grid): the mask is in the codes
        weight = weight * twin.weight_mask
    codes = wq.int_codes(weight)
    rows, cols = codes.shape
    group = int(spec.group_size) if spec.granularity == "per_group" else cols
    groups = -(-cols // group)
    params = (wq.scale, wq.zero_point, wq.qmin, wq.qmax)
    out = WeightCodes(codes, *(_grid(t, rows, groups) for t in params), group=group)
    simulated = twin.quantized_weight().detach().reshape(rows, -1).float()
    if not torch.equal(out.weight(), simulated):
        err = (out.weight() - simulated).abs().max().item()
        return f"its codes do not rebuild the simulated weight exactly (max difference {err:.3g})"
    return out
