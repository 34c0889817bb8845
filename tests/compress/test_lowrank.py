"""Low-rank factorisation: Eckart-Young error, exact full rank, rank and cost formulas, validation."""

from __future__ import annotations

import math

import pytest
import torch

from workbench.compress import low_rank_factors, low_rank_macs_ratio, low_rank_params, rank_for


@pytest.mark.parametrize("shape", [(16, 8, 3, 3), (10, 37), (40, 12)])
@pytest.mark.parametrize("rank", [1, 3, 7])
def test_reconstruction_error_is_discarded_singular_values(shape, rank):
    torch.manual_seed(0)
    w = torch.randn(shape, dtype=torch.float64)
    a, b = low_rank_factors(w, rank)
    out, fan_in = shape[0], math.prod(shape[1:])
    assert a.shape == (out, rank) and b.shape == (rank, fan_in) and a.dtype == w.dtype
    s = torch.linalg.svdvals(w.reshape(out, -1))
    err = (w.reshape(out, -1) - a @ b).pow(2).sum()
    assert float(err) == pytest.approx(float(s[rank:].pow(2).sum()), rel=1e-6)
    assert torch.linalg.matrix_rank(a @ b) == rank
    assert torch.allclose(a.norm(dim=0), b.norm(dim=1))  # sqrt(S) split evenly between the factors


def test_float32_factors_and_full_rank_is_exact():
    torch.manual_seed(1)
    w = torch.randn(12, 6, 3, 3)
    r = rank_for(w.shape, 1.0)
    assert r == 12
    a, b = low_rank_factors(w, r)
    assert a.dtype == torch.float32
    assert torch.allclose((a @ b).reshape(w.shape), w, atol=1e-5, rtol=0)


def test_rank_and_cost_formulas():
    assert rank_for((64, 32, 3, 3), 0.25) == 16  # min(64, 288) = 64
    assert rank_for((10, 512), 0.3) == 3
    assert rank_for((10, 512), 0.01) == 1  # at least one
    assert low_rank_params((64, 32, 3, 3), 16) == 16 * (288 + 64)
    assert low_rank_macs_ratio((64, 32, 3, 3), 16) == pytest.approx(16 * 352 / (64 * 288))
    assert low_rank_macs_ratio((10, 512), 10) > 1.0  # full rank costs more than the dense layer


@pytest.mark.parametrize("bad", [0, 0.0, -0.5, 1.01, True, None])
def test_bad_rank_ratio_named(bad):
    with pytest.raises(ValueError, match=r"rank_ratio=.*\(0, 1\]"):
        rank_for((8, 8), bad)


@pytest.mark.parametrize("bad", [0, 9, 2.0])
def test_bad_rank_named(bad):
    with pytest.raises(ValueError, match=r"rank=.*\[1, 8\]"):
        low_rank_factors(torch.randn(8, 20), bad)
