"""Range estimation: min-max, percentile and MSE-optimal clipping, static (calibrated) or per batch.

All estimators work row-wise on a grid ``[rows, cols]`` (see :mod:`workbench.quant.quantizers`) and return
``(lo, hi)`` of shape ``[rows, 1]``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from workbench.quant.quantizers import (
    activation_grid,
    activation_minmax,
    compute_qparams,
    dequantize,
    quantize_to_int,
)

MSE_GRID = 96  # clipping ratios tried by the MSE observer, from MSE_MIN_RATIO to 1
MSE_MIN_RATIO = 0.05
_QUANTILE_MAX = 2**24 - 1  # torch.quantile refuses larger inputs


def _row_quantile(x: Tensor, q: float) -> Tensor:
    """Row-wise quantile; subsamples evenly when a row is too long for torch.quantile."""
    if x.shape[1] > _QUANTILE_MAX // max(1, x.shape[0]):
        step = -(-x.shape[1] * x.shape[0] // _QUANTILE_MAX)
        x = x[:, ::step]
    return torch.quantile(x, q, dim=1, keepdim=True)


def minmax_range(grid: Tensor) -> tuple[Tensor, Tensor]:
    return grid.amin(dim=1, keepdim=True), grid.amax(dim=1, keepdim=True)


def percentile_range(grid: Tensor, percentile: float, *, symmetric: bool) -> tuple[Tensor, Tensor]:
    """Clip to the ``percentile`` of |x| (symmetric) or to the two tails (asymmetric)."""
    p = percentile / 100.0
    if symmetric:
        amax = _row_quantile(grid.abs(), p)
        return -amax, amax
    return _row_quantile(grid, 1.0 - p), _row_quantile(grid, p)


def mse_range(grid: Tensor, qmin: Tensor, qmax: Tensor, *, symmetric: bool) -> tuple[Tensor, Tensor]:
    """The clipping of the min-max range (ratio in [MSE_MIN_RATIO, 1]) that minimises each row's squared error."""
    lo0, hi0 = minmax_range(grid)
    best_err = torch.full_like(lo0, float("inf"))
    best_lo, best_hi = lo0.clone(), hi0.clone()
    for ratio in torch.linspace(MSE_MIN_RATIO, 1.0, MSE_GRID).tolist():
        lo, hi = lo0 * ratio, hi0 * ratio
        scale, zp = compute_qparams(lo, hi, qmin, qmax, symmetric=symmetric)
        err = (
            (dequantize(quantize_to_int(grid, scale, zp, qmin, qmax), scale, zp) - grid)
            .pow(2)
            .sum(1, keepdim=True)
        )
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_lo = torch.where(better, lo, best_lo)
        best_hi = torch.where(better, hi, best_hi)
    return best_lo, best_hi


def estimate_range(
    grid: Tensor, *, method: str, qmin: Tensor, qmax: Tensor, symmetric: bool, percentile: float = 99.99
) -> tuple[Tensor, Tensor]:
    """Row-wise ``(lo, hi)`` of ``grid`` by ``method`` (minmax, percentile, mse)."""
    grid = grid.detach().float()
    if method == "minmax":
        return minmax_range(grid)
    if method == "percentile":
        return percentile_range(grid, percentile, symmetric=symmetric)
    if method == "mse":
        return mse_range(grid, qmin, qmax, symmetric=symmetric)
    raise ValueError(f"observer {method!r} unknown; choose one of 'minmax', 'percentile', 'mse'")


class RangeCollector:
    """Streams activation statistics over calibration batches.

    Keeps the exact running min / max per row, and for the percentile and MSE observers a seeded random sample
    of at most ``samples_per_batch`` values per row and batch (capped at ``max_samples`` per row in total), from
    which the clipping range is estimated at :meth:`finalize`.
    """

    def __init__(
        self, *, method: str, samples_per_batch: int = 4096, max_samples: int = 1 << 17, seed: int = 0
    ) -> None:
        self.method = method
        self.samples_per_batch = samples_per_batch
        self.max_samples = max_samples
        self.lo: Tensor | None = None
        self.hi: Tensor | None = None
        self.samples: list[Tensor] = []
        self.n_sampled = 0
        self.batches = 0
        self._gen = torch.Generator().manual_seed(seed)

    def observe(self, x: Tensor, granularity: str) -> None:
        """:meth:`update` with ``activation_grid(x, granularity)``; the min-max observer reduces ``x`` in place
        (the same extremes, no grid copy)."""
        if self.method != "minmax":
            self.update(activation_grid(x, granularity))
            return
        x = x.detach().float()
        self._merge(*activation_minmax(x, granularity), x)

    def update(self, grid: Tensor) -> None:
        grid = grid.detach().float()
        self._merge(*minmax_range(grid), grid)
        if self.method != "minmax" and self.n_sampled < self.max_samples:
            n = grid.shape[1]
            k = min(n, self.samples_per_batch, self.max_samples - self.n_sampled)
            # sampled on the CPU (seeded generator): the same values are kept on every device
            idx = torch.randperm(n, generator=self._gen)[:k] if k < n else torch.arange(n)
            self.samples.append(grid[:, idx.to(grid.device)])
            self.n_sampled += k

    def _merge(self, lo: Tensor, hi: Tensor, values: Tensor) -> None:
        """Fold one batch's row extremes into the running ones (``values``: the batch, for the error)."""
        # NaN propagates through amin / amax: finite extremes, finite values
        if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()):
            bad = int((~torch.isfinite(values)).sum())
            raise ValueError(
                f"calibration activations contain {bad} NaN/Inf values; clean the calibration data"
            )
        if self.lo is None:
            self.lo, self.hi = lo, hi
        else:
            if lo.shape != self.lo.shape:
                raise ValueError(
                    f"activation channels changed between batches: {lo.shape[0]} vs {self.lo.shape[0]}"
                )
            self.lo, self.hi = torch.minimum(self.lo, lo), torch.maximum(self.hi, hi)
        self.batches += 1

    def finalize(
        self, *, qmin: Tensor, qmax: Tensor, symmetric: bool, percentile: float
    ) -> tuple[Tensor, Tensor]:
        if self.lo is None:
            raise ValueError("no calibration batch reached this activation quantizer")
        if self.method == "minmax":
            return self.lo, self.hi
        sample = torch.cat(self.samples, dim=1)
        lo, hi = estimate_range(
            sample, method=self.method, qmin=qmin, qmax=qmax, symmetric=symmetric, percentile=percentile
        )
        # never clip beyond what was actually seen
        return torch.maximum(lo, self.lo), torch.minimum(hi, self.hi)
