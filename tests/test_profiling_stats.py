"""Streaming statistics of the profiler (workbench.profiling_stats) against direct computation."""

from __future__ import annotations

import math

import pytest
import torch

from workbench.profiling_stats import _entropy_bits, _histogram, _Moments, weight_stats


def test_moments_over_chunks_match_the_whole_tensor() -> None:
    x = torch.randn(1000, generator=torch.Generator().manual_seed(0)) * 3 + 1
    x[::10] = 0.0
    m = _Moments()
    for chunk in x.split(137):
        m.update(chunk)
    m.update(torch.empty(0))
    assert m.n == 1000
    assert m.mean == pytest.approx(float(x.double().mean()), rel=1e-12)
    assert m.var == pytest.approx(float(x.double().var()), rel=1e-12)
    assert (m.lo, m.hi) == (float(x.min()), float(x.max()))
    assert m.sparsity == pytest.approx(0.1)
    assert math.isnan(_Moments().var) and math.isnan(_Moments().sparsity)


def test_histogram_entropy_and_weight_stats() -> None:
    counts = _histogram(torch.arange(8.0), 8, 0.0, 7.0)
    assert counts.tolist() == [1.0] * 8
    assert _entropy_bits(counts) == pytest.approx(3.0)
    assert _histogram(torch.ones(5), 4, 1.0, 1.0).tolist() == [5.0, 0.0, 0.0, 0.0]
    stats = weight_stats(torch.tensor([-2.0, -1.0, 1.0, 2.0]), bins=4)
    assert stats["w_absmax"] == 2.0
    assert stats["w_std"] == pytest.approx(math.sqrt(10 / 3))
    assert stats["w_kurtosis"] == pytest.approx(8.5 / 2.5**2 - 3.0)  # m4 / m2^2 - 3
    assert stats["w_entropy"] == pytest.approx(1.5)  # counts 1, 1, 0, 2
    assert all(math.isnan(v) for v in weight_stats(None).values())
