"""Property tests of the uniform quantizers and observers (hypothesis)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from workbench.quant import QuantSpec, quantize_weight
from workbench.quant.observers import estimate_range
from workbench.quant.quantizers import (
    compute_qparams,
    fake_quantize,
    int_range,
    int_range_tensor,
    quantize_to_int,
    to_grid,
)

INT_BITS = [2, 3, 4, 5, 6, 8]


def _weights(seed: int, rows: int, cols: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mags = torch.exp(torch.randn(rows, 1, generator=g))  # channels with different ranges, as in real layers
    return torch.randn(rows, cols, generator=g) * mags


@given(
    seed=st.integers(0, 10_000),
    bits=st.sampled_from(INT_BITS),
    symmetric=st.booleans(),
    rows=st.integers(1, 8),
    cols=st.integers(1, 64),
)
def test_in_range_error_at_most_half_a_step_and_idempotent(seed, bits, symmetric, rows, cols):
    x = _weights(seed, rows, cols)
    qmin, qmax = int_range_tensor(torch.full((rows, 1), float(bits)), symmetric=symmetric)
    lo, hi = estimate_range(x, method="minmax", qmin=qmin, qmax=qmax, symmetric=symmetric)
    scale, zp = compute_qparams(lo, hi, qmin, qmax, symmetric=symmetric)
    xq = fake_quantize(x, scale, zp, qmin, qmax)
    err = (xq - x).abs()
    assert torch.all(err <= scale / 2 * (1 + 1e-5) + 1e-7)
    assert torch.equal(fake_quantize(xq, scale, zp, qmin, qmax), xq)
    q = quantize_to_int(x, scale, zp, qmin, qmax)
    assert torch.all(q >= qmin) and torch.all(q <= qmax)
    assert torch.equal(q, torch.round(q))


@given(seed=st.integers(0, 10_000), bits=st.sampled_from(INT_BITS), symmetric=st.booleans())
def test_zero_is_exact(seed, bits, symmetric):
    x = _weights(seed, 4, 32)
    x[:, 0] = 0.0
    qmin, qmax = int_range_tensor(torch.full((4, 1), float(bits)), symmetric=symmetric)
    lo, hi = estimate_range(x, method="minmax", qmin=qmin, qmax=qmax, symmetric=symmetric)
    scale, zp = compute_qparams(lo, hi, qmin, qmax, symmetric=symmetric)
    assert torch.all(fake_quantize(x, scale, zp, qmin, qmax)[:, 0] == 0.0)


@given(
    seed=st.integers(0, 10_000), bits=st.sampled_from(INT_BITS), observer=st.sampled_from(["minmax", "mse"])
)
def test_per_channel_error_not_above_per_tensor(seed, bits, observer):
    w = _weights(seed, 16, 72).reshape(16, 8, 3, 3)
    pc = quantize_weight(w, QuantSpec(w_bits=bits, granularity="per_channel", w_observer=observer))
    pt = quantize_weight(w, QuantSpec(w_bits=bits, granularity="per_tensor", w_observer=observer))
    assert (pc - w).pow(2).mean() <= (pt - w).pow(2).mean() * (1 + 1e-6)


@given(
    seed=st.integers(0, 10_000),
    granularity=st.sampled_from(["per_tensor", "per_channel"]),
    symmetric=st.booleans(),
)
def test_error_falls_monotonically_with_bits(seed, granularity, symmetric):
    w = _weights(seed, 16, 128)
    errs = [
        (quantize_weight(w, QuantSpec(w_bits=b, granularity=granularity, w_symmetric=symmetric)) - w)
        .pow(2)
        .mean()
        for b in INT_BITS
    ]
    assert all(a > b for a, b in zip(errs, errs[1:])), errs


def test_mse_observer_beats_minmax_on_heavy_tails():
    torch.manual_seed(0)
    w = torch.distributions.StudentT(2.0).sample((32, 256))
    for bits in (2, 3, 4):
        mm = (quantize_weight(w, QuantSpec(w_bits=bits, w_observer="minmax")) - w).pow(2).mean()
        mse = (quantize_weight(w, QuantSpec(w_bits=bits, w_observer="mse")) - w).pow(2).mean()
        assert mse < 0.9 * mm


def test_percentile_observer_clips_to_the_quantile():
    torch.manual_seed(0)
    x = torch.randn(4, 10_000)
    q = torch.zeros(4, 1)
    lo, hi = estimate_range(x, method="percentile", qmin=q, qmax=q + 255, symmetric=False, percentile=99.0)
    assert torch.allclose(hi, torch.quantile(x, 0.99, dim=1, keepdim=True))
    assert torch.allclose(lo, torch.quantile(x, 0.01, dim=1, keepdim=True))
    lo, hi = estimate_range(
        x, method="percentile", qmin=q - 128, qmax=q + 127, symmetric=True, percentile=99.0
    )
    assert torch.allclose(hi, torch.quantile(x.abs(), 0.99, dim=1, keepdim=True)) and torch.equal(lo, -hi)


def test_int_range_and_group_grid():
    assert int_range(4, symmetric=True) == (-7, 7)  # narrow range: symmetric around an exact zero
    assert int_range(4, symmetric=False) == (0, 15)
    assert int_range(2, symmetric=True) == (-1, 1)  # 2-bit symmetric is ternary
    w = torch.arange(2 * 3 * 3, dtype=torch.float32).reshape(2, 1, 3, 3)
    grid = to_grid(w, "per_group", 4)
    assert grid.shape == (2 * 3, 4)  # 9 fan-in values -> 3 groups of 4, last one zero padded
    assert grid[2, 1:].abs().sum() == 0


@given(seed=st.integers(0, 1000), group=st.sampled_from([1, 4, 8, 9, 16]), bits=st.sampled_from(INT_BITS))
def test_per_group_steps_are_finer_than_per_channel(seed, group, bits):
    """Each group's range lies inside its channel's, so its step and worst-case error are no larger."""
    w = _weights(seed, 8, 36).reshape(8, 4, 3, 3)
    pg = quantize_weight(w, QuantSpec(w_bits=bits, granularity="per_group", group_size=group))
    qmax = 2 ** (bits - 1) - 1
    channel_step = w.reshape(8, -1).abs().amax(1, keepdim=True) / qmax
    assert torch.all((pg - w).reshape(8, -1).abs() <= channel_step / 2 * (1 + 1e-5))


def test_per_group_error_below_per_channel_on_average():
    pg_err = pc_err = 0.0
    for seed in range(20):
        w = _weights(seed, 8, 72).reshape(8, 8, 3, 3)
        pg_err += (
            (quantize_weight(w, QuantSpec(w_bits=4, granularity="per_group", group_size=8)) - w).pow(2).mean()
        )
        pc_err += (quantize_weight(w, QuantSpec(w_bits=4, granularity="per_channel")) - w).pow(2).mean()
    assert pg_err < 0.9 * pc_err


def test_channel_bits_give_each_channel_its_own_grid():
    w = _weights(3, 4, 64)
    q = quantize_weight(w, QuantSpec(w_bits=8, channel_bits=(2, 4, 6, 8)))
    levels = [len(torch.unique(q[r])) for r in range(4)]
    assert levels[0] == 3  # 2-bit symmetric: ternary, every code used on 64 gaussian values
    assert levels[1] <= 15 and levels[2] <= 63 and levels[3] <= 255
    errs = (q - w).pow(2).mean(1) / w.pow(2).mean(1)
    assert errs[0] > errs[1] > errs[2] > errs[3]


def test_float16_formats_round_to_their_grids():
    w = _weights(1, 4, 64)
    bf = quantize_weight(w, QuantSpec(w_bits=16, float16_format="bfloat16"))
    fp = quantize_weight(w, QuantSpec(w_bits=16, float16_format="float16"))
    assert torch.equal(bf, w.to(torch.bfloat16).float())
    assert torch.equal(fp, w.to(torch.float16).float())
    assert (fp - w).abs().max() < (bf - w).abs().max()


def test_straight_through_gradient():
    x = torch.linspace(-2, 2, 41, requires_grad=True)
    scale, zp = torch.tensor(0.1), torch.tensor(0.0)
    y = fake_quantize(x, scale, zp, torch.tensor(-8.0), torch.tensor(7.0))
    y.sum().backward()
    r = torch.round(x.detach() / scale)
    inside = (r >= -8) & (r <= 7)
    assert 0 < inside.sum() < len(x)
    assert torch.equal(x.grad, inside.float())


def _reference_fake_quantize(x, scale, zp, qmin, qmax):
    """The textbook composition the fused autograd function replaces."""
    from workbench.quant.quantizers import round_ste

    v = round_ste(x / scale) + zp
    inside = (v >= qmin) & (v <= qmax)
    q = torch.clamp(v, qmin, qmax).detach() + (v - v.detach()) * inside
    return (q - zp) * scale


@pytest.mark.parametrize("per_row", [False, True])
def test_fused_fake_quantize_matches_reference_values_and_gradients(per_row):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 40, generator=g) * 3
    rows = 6 if per_row else 1
    scale = torch.rand(rows, 1, generator=g) * 0.2 + 0.05
    zp = torch.randint(0, 4, (rows, 1), generator=g).float()
    bits = torch.tensor([[2.0], [3.0], [4.0], [4.0], [8.0], [3.0]])[:rows]
    qmin, qmax = torch.zeros_like(bits), 2**bits - 1
    grad_out = torch.randn(6, 40, generator=g)
    results = []
    for fn in (fake_quantize, _reference_fake_quantize):
        xs, ss, zs = (t.clone().requires_grad_(True) for t in (x, scale, zp))
        y = fn(xs, ss, zs, qmin, qmax)
        y.backward(grad_out)
        results.append((y.detach(), xs.grad, ss.grad, zs.grad))
    fused, ref = results
    assert torch.equal(fused[0], ref[0])  # bit-identical forward
    for a, b in zip(fused[1:], ref[1:]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    inside = (torch.round(x / scale) + zp >= qmin) & (torch.round(x / scale) + zp <= qmax)
    assert 0 < int(inside.sum()) < inside.numel()
    with torch.no_grad():  # the in-place inference path gives the same bits
        assert torch.equal(fake_quantize(x, scale, zp, qmin, qmax), ref[0])
    weight = x.clone().requires_grad_(True)  # a parameter under no_grad takes the in-place path too
    with torch.no_grad():
        assert torch.equal(fake_quantize(weight, scale, zp, qmin, qmax), ref[0])
    assert torch.equal(fake_quantize(x, scale, zp, qmin, qmax), ref[0]) and not x.requires_grad
    assert torch.equal(x, torch.randn(6, 40, generator=torch.Generator().manual_seed(3)) * 3)  # x untouched


@pytest.mark.parametrize("granularity", ["per_tensor", "per_channel", "per_sample"])
def test_activation_minmax_equals_the_grid_extremes_in_any_layout(granularity):
    from workbench.quant.observers import minmax_range
    from workbench.quant.quantizers import activation_grid, activation_minmax

    x = torch.randn(4, 6, 5, 3, generator=torch.Generator().manual_seed(0))
    views = [x, x.contiguous(memory_format=torch.channels_last), x[:, :, :, :2], x.flatten(2), x.flatten(1)]
    for t in views + ([x.flatten()] if granularity == "per_sample" else []):
        lo, hi = activation_minmax(t, granularity)
        ref_lo, ref_hi = minmax_range(activation_grid(t, granularity))
        assert lo.shape == ref_lo.shape and torch.equal(lo, ref_lo) and torch.equal(hi, ref_hi)
    with pytest.raises(ValueError, match="per_tensor, per_channel or per_sample"):
        activation_minmax(x, "per_group")
