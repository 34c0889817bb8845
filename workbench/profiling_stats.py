"""Streaming statistics behind :func:`workbench.profiling.profile_model`: per-layer moments (Chan's parallel
update, float64), fixed-range histograms and their entropy, weight statistics, and the record a layer collects
across the profiling passes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

__all__ = ["ZERO_TOL", "weight_stats"]

ZERO_TOL = 1e-8


@dataclass
class _Moments:
    """Streaming count / mean / M2 / min / max / zero count of a tensor stream (Chan's parallel update)."""

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0
    lo: float = math.inf
    hi: float = -math.inf
    zeros: int = 0

    def update(self, x: torch.Tensor) -> None:
        """Fold every element of ``x`` into the running statistics."""
        nb = x.numel()
        if nb == 0:
            return
        xd = x.detach().to(torch.float64)
        bmean = xd.mean()
        bm2 = float(((xd - bmean) ** 2).sum())
        bmean_f = float(bmean)
        total = self.n + nb
        delta = bmean_f - self.mean
        self.mean += delta * nb / total
        self.m2 += bm2 + delta * delta * self.n * nb / total
        self.n = total
        self.lo = min(self.lo, float(xd.min()))
        self.hi = max(self.hi, float(xd.max()))
        self.zeros += int((xd.abs() < ZERO_TOL).sum())

    @property
    def var(self) -> float:
        """Unbiased variance (NaN below two elements)."""
        return self.m2 / (self.n - 1) if self.n > 1 else math.nan

    @property
    def sparsity(self) -> float:
        """Fraction of elements with ``|x| < 1e-8``."""
        return self.zeros / self.n if self.n else math.nan


def _entropy_bits(counts: torch.Tensor) -> float:
    """Shannon entropy (bits) of a histogram."""
    total = counts.sum()
    if total <= 0:
        return math.nan
    p = counts[counts > 0].to(torch.float64) / total
    return float(-(p * torch.log2(p)).sum())


def _histogram(x: torch.Tensor, bins: int, lo: float, hi: float) -> torch.Tensor:
    """Counts of ``x`` in ``bins`` equal bins on ``[lo, hi]`` (all in one bin when ``lo == hi``)."""
    x = x.detach().reshape(-1).to(torch.float32)
    if not hi > lo:
        counts = torch.zeros(bins, dtype=torch.float64)
        counts[0] = x.numel()
        return counts
    return torch.histc(x, bins=bins, min=lo, max=hi).to(torch.float64).cpu()


def weight_stats(weight: torch.Tensor | None, *, bins: int = 256) -> dict[str, float]:
    """``w_std`` (unbiased), ``w_kurtosis`` (excess, population moments), ``w_entropy`` (bits), ``w_absmax``."""
    nan = {"w_std": math.nan, "w_kurtosis": math.nan, "w_entropy": math.nan, "w_absmax": math.nan}
    if weight is None or weight.numel() == 0:
        return nan
    w = weight.detach().reshape(-1).to(torch.float64)
    centred = w - w.mean()
    m2 = float((centred**2).mean())
    m4 = float((centred**4).mean())
    lo, hi = float(w.min()), float(w.max())
    return {
        "w_std": float(w.std()) if w.numel() > 1 else math.nan,
        "w_kurtosis": m4 / (m2 * m2) - 3.0 if m2 > 0 else math.nan,
        "w_entropy": _entropy_bits(_histogram(w, bins, lo, hi)),
        "w_absmax": float(w.abs().max()),
    }


@dataclass
class _LayerRecord:
    """Everything collected for one layer across the passes."""

    depth: int | None = None
    input_shape: tuple[int, ...] | None = None
    output_shape: tuple[int, ...] | None = None
    act: _Moments = field(default_factory=_Moments)
    inp: _Moments = field(default_factory=_Moments)
    hist: torch.Tensor | None = None
    times_ms: list[float] = field(default_factory=list)
