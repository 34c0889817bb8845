"""Range observers on hand-made rows: min-max, percentile, MSE, the dispatcher and the streaming collector."""

from __future__ import annotations

import pytest
import torch

from workbench.quant import observers
from workbench.quant.observers import (
    MSE_MIN_RATIO,
    RangeCollector,
    estimate_range,
    minmax_range,
    mse_range,
    percentile_range,
)
from workbench.quant.quantizers import compute_qparams, dequantize, int_range_tensor, quantize_to_int


def _qrange(bits: int, rows: int, *, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    return int_range_tensor(torch.full((rows, 1), float(bits)), symmetric=symmetric)


def _row_sq_error(grid, lo, hi, qmin, qmax, *, symmetric: bool) -> torch.Tensor:
    scale, zp = compute_qparams(lo, hi, qmin, qmax, symmetric=symmetric)
    q = dequantize(quantize_to_int(grid, scale, zp, qmin, qmax), scale, zp)
    return (q - grid).pow(2).sum(1, keepdim=True)


def test_minmax_range_is_exact_per_row():
    grid = torch.tensor([[3.0, -1.0, 2.0, 0.5], [0.25, 0.5, 4.0, 1.0]])
    lo, hi = minmax_range(grid)
    assert lo.shape == hi.shape == (2, 1)
    assert lo.flatten().tolist() == [-1.0, 0.25] and hi.flatten().tolist() == [3.0, 4.0]


def test_percentile_clips_an_outlier_to_the_quantile():
    # 0, 1, ..., 98, 99, 99, 1000: the 99th percentile lies between two equal values, so it is exactly 99
    row = torch.cat([torch.arange(100.0), torch.tensor([99.0, 1000.0])]).reshape(1, -1)
    n = row.shape[1]
    p = 100.0 * 99.5 / (n - 1)  # rank 99.5 of 0..n-1: between the two 99s
    lo, hi = percentile_range(row, p, symmetric=False)
    assert hi.item() == 99.0 and hi.item() < row.max().item()
    # the low tail: rank (1 - p) * (n - 1) = 1.5 -> between 1 and 2
    assert lo.item() == pytest.approx(1.5, abs=1e-3)
    slo, shi = percentile_range(row, p, symmetric=True)
    assert shi.item() == 99.0 and torch.equal(slo, -shi)


def test_symmetric_percentile_uses_the_larger_tail():
    row = torch.tensor([[-8.0, -8.0, -8.0, 1.0, 2.0]])  # |x| quantiles are dominated by the negative side
    lo, hi = percentile_range(row, 100.0, symmetric=True)
    assert hi.item() == 8.0 and lo.item() == -8.0
    alo, ahi = percentile_range(row, 100.0, symmetric=False)
    assert (alo.item(), ahi.item()) == (-8.0, 2.0)


def test_percentile_100_equals_minmax():
    g = torch.Generator().manual_seed(0)
    grid = torch.randn(3, 50, generator=g)
    lo, hi = percentile_range(grid, 100.0, symmetric=False)
    mlo, mhi = minmax_range(grid)
    assert torch.equal(lo, mlo) and torch.equal(hi, mhi)


def test_long_rows_are_subsampled_evenly(monkeypatch):
    monkeypatch.setattr(observers, "_QUANTILE_MAX", 10)
    row = torch.arange(40.0).reshape(1, 40)  # step ceil(40 / 10) = 4: keeps 0, 4, ..., 36
    lo, hi = percentile_range(row, 100.0, symmetric=False)
    assert (lo.item(), hi.item()) == (0.0, 36.0)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_mse_range_never_worse_than_minmax_on_the_same_grid(bits, symmetric):
    g = torch.Generator().manual_seed(bits)
    grid = torch.randn(6, 200, generator=g) * torch.tensor([[0.1], [1.0], [10.0], [1.0], [1.0], [3.0]])
    grid[3, 7] = 40.0  # one row with an outlier
    qmin, qmax = _qrange(bits, 6, symmetric=symmetric)
    lo, hi = mse_range(grid, qmin, qmax, symmetric=symmetric)
    mlo, mhi = minmax_range(grid)
    err = _row_sq_error(grid, lo, hi, qmin, qmax, symmetric=symmetric)
    merr = _row_sq_error(grid, mlo, mhi, qmin, qmax, symmetric=symmetric)
    assert torch.all(err <= merr)  # the ratio 1.0 (min-max itself) is one of the candidates
    # the chosen range is the min-max range shrunk by one ratio in [MSE_MIN_RATIO, 1]
    ratio_hi = hi / mhi
    assert torch.all(ratio_hi >= MSE_MIN_RATIO * (1 - 1e-6)) and torch.all(ratio_hi <= 1.0)
    assert torch.allclose(lo, mlo * ratio_hi, rtol=1e-6, atol=0.0)


def test_mse_range_clips_an_outlier_at_low_bits():
    g = torch.Generator().manual_seed(0)
    row = torch.randn(1, 10_000, generator=g)  # enough body values that their rounding error dominates
    row[0, 0] = 50.0
    qmin, qmax = _qrange(4, 1, symmetric=True)
    lo, hi = mse_range(row, qmin, qmax, symmetric=True)
    assert hi.item() < 25.0  # min-max would spend the whole 4-bit grid on the single outlier
    err = _row_sq_error(row, lo, hi, qmin, qmax, symmetric=True)
    merr = _row_sq_error(row, *minmax_range(row), qmin, qmax, symmetric=True)
    assert err.item() < 0.5 * merr.item()


def test_estimate_range_dispatches_and_detaches():
    g = torch.Generator().manual_seed(3)
    grid = torch.randn(2, 64, generator=g, dtype=torch.float64).requires_grad_()
    f = grid.detach().float()
    qmin, qmax = _qrange(4, 2, symmetric=False)
    kw = dict(qmin=qmin, qmax=qmax, symmetric=False)
    for lo, hi in (
        estimate_range(grid, method="minmax", **kw),
        estimate_range(grid, method="percentile", percentile=99.0, **kw),
        estimate_range(grid, method="mse", **kw),
    ):
        assert lo.dtype == hi.dtype == torch.float32 and not lo.requires_grad and not hi.requires_grad
    assert all(
        torch.equal(a, b) for a, b in zip(estimate_range(grid, method="minmax", **kw), minmax_range(f))
    )
    got = estimate_range(grid, method="percentile", percentile=99.0, **kw)
    assert all(torch.equal(a, b) for a, b in zip(got, percentile_range(f, 99.0, symmetric=False)))
    got = estimate_range(grid, method="mse", **kw)
    assert all(torch.equal(a, b) for a, b in zip(got, mse_range(f, qmin, qmax, symmetric=False)))
    with pytest.raises(ValueError, match="observer 'kl' unknown"):
        estimate_range(grid, method="kl", **kw)


def test_symmetric_estimates_are_symmetric():
    g = torch.Generator().manual_seed(4)
    grid = torch.randn(3, 100, generator=g) + 0.5
    qmin, qmax = _qrange(8, 3, symmetric=True)
    lo, hi = estimate_range(grid, method="percentile", qmin=qmin, qmax=qmax, symmetric=True, percentile=99.0)
    assert torch.equal(lo, -hi)
    # the MSE observer's range may be lopsided, but its scale is set by max(|lo|, |hi|) and zero point is 0
    lo, hi = estimate_range(grid, method="mse", qmin=qmin, qmax=qmax, symmetric=True)
    _, zp = compute_qparams(lo, hi, qmin, qmax, symmetric=True)
    assert torch.all(zp == 0)


# -- RangeCollector ---------------------------------------------------------------------------------------
def test_collector_keeps_the_exact_running_min_max():
    c = RangeCollector(method="minmax")
    c.update(torch.tensor([[1.0, 2.0], [-1.0, 0.0]]))
    c.update(torch.tensor([[-3.0, 0.5], [5.0, 1.0]]))
    assert c.batches == 2 and c.samples == [] and c.n_sampled == 0  # min-max keeps no samples
    q = torch.zeros(2, 1)
    lo, hi = c.finalize(qmin=q, qmax=q + 255, symmetric=False, percentile=99.0)
    assert lo.flatten().tolist() == [-3.0, -1.0] and hi.flatten().tolist() == [2.0, 5.0]


def test_collector_caps_its_samples_and_is_seeded():
    def run(seed: int) -> RangeCollector:
        c = RangeCollector(method="percentile", samples_per_batch=3, max_samples=5, seed=seed)
        g = torch.Generator().manual_seed(9)
        for _ in range(3):
            c.update(torch.randn(2, 10, generator=g))
        return c

    a, b = run(0), run(0)
    assert a.n_sampled == 5 and [s.shape[1] for s in a.samples] == [3, 2]  # 3, then 5 - 3, then none
    assert a.batches == 3
    assert all(torch.equal(x, y) for x, y in zip(a.samples, b.samples))
    other = run(1)
    assert not all(torch.equal(x, y) for x, y in zip(a.samples, other.samples))


def test_collector_finalize_matches_estimate_on_all_values_and_never_exceeds_seen_range():
    g = torch.Generator().manual_seed(2)
    batches = [torch.randn(1, 8, generator=g) for _ in range(3)]
    c = RangeCollector(method="percentile", samples_per_batch=100)  # keeps every value
    for x in batches:
        c.update(x)
    full = torch.cat(batches, dim=1)
    q = torch.zeros(1, 1)
    lo, hi = c.finalize(qmin=q, qmax=q + 255, symmetric=False, percentile=90.0)
    elo, ehi = percentile_range(full, 90.0, symmetric=False)
    assert torch.equal(lo, elo) and torch.equal(hi, ehi)
    # symmetric: |x| percentile can lie beyond the smaller tail; finalize clips it to what was seen
    lo, hi = c.finalize(qmin=q - 127, qmax=q + 127, symmetric=True, percentile=100.0)
    assert lo.item() == full.min().item() and hi.item() == full.max().item()


def test_collector_errors():
    c = RangeCollector(method="mse")
    q = torch.zeros(1, 1)
    with pytest.raises(ValueError, match="no calibration batch"):
        c.finalize(qmin=q, qmax=q + 255, symmetric=False, percentile=99.0)
    with pytest.raises(ValueError, match="contain 2 NaN/Inf"):
        c.update(torch.tensor([[1.0, float("nan"), float("inf")]]))
    c.update(torch.ones(2, 4))
    with pytest.raises(ValueError, match="channels changed between batches: 3 vs 2"):
        c.update(torch.ones(3, 4))
