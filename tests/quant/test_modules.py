"""Fake-quant twins of Linear / Conv1d / Conv2d / Embedding, the weight and activation quantizers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from workbench.quant import QuantSpec
from workbench.quant.modules import (
    ActQuantizer,
    QuantConv1d,
    QuantConv2d,
    QuantEmbedding,
    QuantLinear,
    WeightQuantizer,
    quant_twin,
    quantize_weight,
)

FP32_SPEC = QuantSpec(w_bits=32, a_bits=32, granularity="per_tensor")


def _layers() -> dict[str, tuple[nn.Module, torch.Tensor]]:
    """A seeded float layer of each quantizable type with a matching input."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    return {
        "linear": (nn.Linear(12, 5), torch.randn(3, 12, generator=g)),
        "conv1d": (nn.Conv1d(4, 6, 3, padding=1), torch.randn(2, 4, 9, generator=g)),
        "conv2d": (nn.Conv2d(4, 6, 3, padding=1, groups=2), torch.randn(2, 4, 5, 5, generator=g)),
        "embedding": (nn.Embedding(10, 7), torch.tensor([[0, 3, 9], [9, 1, 1]])),
    }


def _half_step_bound(wq: WeightQuantizer, weight: torch.Tensor) -> torch.Tensor:
    """Per element: half the step of its row's scale, plus float32 rounding of ``w / s`` (a few ulps of |w|)."""
    scale = wq.scale.reshape(-1, *([1] * (weight.dim() - 1)))  # one scale per output channel (dim 0)
    return scale / 2 + 4 * torch.finfo(torch.float32).eps * weight.abs()


@pytest.mark.parametrize("kind", ["linear", "conv1d", "conv2d", "embedding"])
def test_32_bit_twin_equals_the_float_layer(kind):
    layer, x = _layers()[kind]
    q = quant_twin(layer, FP32_SPEC)
    assert isinstance(q, layer.__class__) and isinstance(q.a_quant, nn.Identity)
    with torch.no_grad():
        assert torch.equal(q(x), layer(x))
        assert torch.equal(q.quantized_weight(), layer.weight)


@pytest.mark.parametrize("kind", ["linear", "conv1d", "conv2d", "embedding"])
@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("symmetric", [True, False])
def test_weight_error_at_most_half_a_step(kind, bits, symmetric):
    layer, _ = _layers()[kind]
    spec = QuantSpec(w_bits=bits, a_bits=32, granularity="per_channel", w_symmetric=symmetric)
    q = quant_twin(layer, spec)
    w = layer.weight.detach()
    with torch.no_grad():
        wq = q.quantized_weight()
    assert q.w_quant.scale.shape == (w.shape[0], 1)  # one scale per output channel (embedding row)
    assert torch.all((wq - w).abs() <= _half_step_bound(q.w_quant, w))
    # every row uses at most 2^bits levels (2^bits - 1 on the narrow symmetric grid)
    levels = 2**bits - (1 if symmetric else 0)
    rows = wq.reshape(w.shape[0], -1)
    assert max(len(torch.unique(r)) for r in rows) <= levels
    # integer codes lie on the grid and dequantize to exactly the fake-quantized weight
    codes = q.w_quant.int_codes(w).float()
    qmin, qmax = q.w_quant.qmin, q.w_quant.qmax
    assert torch.all(codes >= qmin) and torch.all(codes <= qmax)
    deq = (codes - q.w_quant.zero_point) * q.w_quant.scale
    assert torch.equal(deq.reshape(w.shape), wq)


def test_symmetric_minmax_scale_is_row_amax_over_qmax():
    conv = _layers()["conv2d"][0]
    q = QuantConv2d.from_float(conv, QuantSpec(w_bits=4, a_bits=32, granularity="per_channel"))
    amax = conv.weight.detach().reshape(6, -1).abs().amax(1, keepdim=True)
    assert torch.equal(q.w_quant.scale, amax / 7.0) and torch.all(q.w_quant.zero_point == 0)


def test_error_falls_from_4_to_8_bits():
    layer, _ = _layers()["linear"]
    w = layer.weight.detach()
    errs = [(quantize_weight(w, QuantSpec(w_bits=b)) - w).pow(2).sum().item() for b in (2, 4, 8)]
    assert errs[0] > errs[1] > errs[2] > 0


def test_weight_only_leaves_activations_float():
    layer, x = _layers()["linear"]
    q = QuantLinear.from_float(layer, QuantSpec(w_bits=4, a_bits=32))
    assert isinstance(q.a_quant, nn.Identity)
    with torch.no_grad():
        expected = nn.functional.linear(x, q.quantized_weight(), layer.bias)
        assert torch.equal(q(x), expected)
        # to_float carries the effective weight, so with float activations it computes the same
        f = q.to_float()
        assert type(f) is nn.Linear and torch.equal(f(x), q(x))
    # an Embedding is weight-only whatever its spec says; its output is rows of the quantized table
    emb, ids = _layers()["embedding"]
    qe = QuantEmbedding.from_float(emb, QuantSpec(w_bits=4, a_bits=8))
    assert isinstance(qe.a_quant, nn.Identity)
    with torch.no_grad():
        assert torch.equal(qe(ids), qe.quantized_weight()[ids])


def test_conv_twins_keep_the_layer_configuration():
    layers = _layers()
    c1 = QuantConv1d.from_float(layers["conv1d"][0], QuantSpec(w_bits=8, a_bits=32))
    c2 = QuantConv2d.from_float(layers["conv2d"][0], QuantSpec(w_bits=8, a_bits=32))
    assert c1.padding == (1,) and c2.groups == 2 and c2.padding == (1, 1)
    assert type(c1.to_float()) is nn.Conv1d and type(c2.to_float()) is nn.Conv2d
    for q, (layer, x) in ((c1, layers["conv1d"]), (c2, layers["conv2d"])):
        with torch.no_grad():
            # output error of the 8-bit weight is bounded by |x| times the weight error, per output element
            diff = (q(x) - layer(x)).abs().max().item()
            step = q.w_quant.scale.max().item()
            fan_in = layer.weight[0].numel()
            assert diff <= 0.5 * step * fan_in * x.abs().max().item() * (1 + 1e-4)


def test_per_channel_beats_per_tensor_on_rows_of_different_scale():
    g = torch.Generator().manual_seed(5)
    w = torch.rand(3, 16, generator=g) * 2 - 1  # |w| <= 1
    w[2] *= 100.0
    pt = quantize_weight(w, QuantSpec(w_bits=4, granularity="per_tensor"))
    pc = quantize_weight(w, QuantSpec(w_bits=4, granularity="per_channel"))
    # per tensor the step is max|w| / 7 >= 100 / 7 * 0.9: the small rows all round to exactly zero
    assert torch.equal(pt[:2], torch.zeros(2, 16))
    assert torch.equal(pc[2], pt[2])  # the large row sets both scales alike
    err_pc, err_pt = (pc - w).pow(2).sum(1), (pt - w).pow(2).sum(1)
    assert torch.all(err_pc[:2] < err_pt[:2]) and err_pc.sum() < err_pt.sum()
    # the per-channel bound: half of each row's own step
    step = w.abs().amax(1, keepdim=True) / 7
    assert torch.all((pc - w).abs() <= step / 2 + 4 * torch.finfo(torch.float32).eps * w.abs())


def test_quantize_weight_leaves_32_bits_alone_and_casts_16():
    w = torch.tensor([[1.0 + 2**-10, -3.0]])
    assert torch.equal(quantize_weight(w, QuantSpec(w_bits=32, a_bits=32)), w)
    bf = quantize_weight(w, QuantSpec(w_bits=16, a_bits=32))
    assert torch.equal(bf, torch.tensor([[1.0, -3.0]]))  # 2^-10 is below bfloat16's 8-bit mantissa


def _act_spec(**kw) -> QuantSpec:
    return QuantSpec(w_bits=8, a_bits=8, a_symmetric=False, a_observer="minmax", **kw)


def test_act_quantizer_calibrates_then_keeps_a_fixed_range():
    aq = ActQuantizer(_act_spec())
    assert aq.needs_calibration
    with pytest.raises(RuntimeError, match="not calibrated"):
        aq(torch.ones(2, 3))
    aq.start_observing()
    batches = [torch.tensor([[0.5, -1.0, 2.0]]), torch.tensor([[3.0, 0.0, -0.5]])]
    for b in batches:
        assert torch.equal(aq(b), b)  # observing passes activations through
    aq.finish_observing()
    assert bool(aq.calibrated)
    # min-max over both batches: [-1, 3] on the 8-bit asymmetric grid [0, 255]
    assert aq.scale.item() == pytest.approx(4.0 / 255.0, rel=1e-6)
    assert aq.zero_point.item() == round(1.0 / (4.0 / 255.0))
    scale, zp = aq.scale.clone(), aq.zero_point.clone()
    x = torch.tensor([[-10.0, -1.0, 0.0, 1.234, 3.0, 10.0]])
    y = aq(x)
    assert torch.equal(aq.scale, scale) and torch.equal(aq.zero_point, zp)  # no update after calibration
    top, bottom = (255 - zp) * scale, (0 - zp) * scale
    assert y.max().item() == pytest.approx(top.item()) and y.min().item() == pytest.approx(bottom.item())
    inside = x[:, 1:5]
    assert torch.all((y[:, 1:5] - inside).abs() <= scale / 2 * (1 + 1e-5))
    assert y[0, 2].item() == 0.0  # zero is exact


def test_act_quantizer_errors_and_dynamic_ranges():
    aq = ActQuantizer(_act_spec())
    aq.start_observing()
    with pytest.raises(RuntimeError, match="saw no calibration batch"):
        aq.finish_observing()
    dyn = ActQuantizer(_act_spec(a_dynamic=True))
    assert not dyn.needs_calibration
    for x in (torch.tensor([[0.0, 1.0, 2.0]]), torch.tensor([[-50.0, 0.0, 100.0]])):
        y = dyn(x)  # each batch gets its own min-max range: nothing is clipped
        step = (x.max() - torch.clamp(x.min(), max=0.0)) / 255
        assert torch.all((y - x).abs() <= step / 2 * (1 + 1e-5))


def test_act_quantizer_per_channel_scales():
    aq = ActQuantizer(_act_spec(a_granularity="per_channel"))
    aq.start_observing()
    x = torch.zeros(2, 3, 4)
    x[:, 0] = 1.0
    x[:, 1] = 10.0
    x[:, 2] = torch.linspace(-2.0, 2.0, 4)
    aq(x)
    aq.finish_observing()
    assert aq.scale.shape == (3, 1)
    expected = torch.tensor([[1.0], [10.0], [4.0]]) / 255
    assert torch.allclose(aq.scale, expected, rtol=1e-6)


def test_quant_twin_refuses_unsupported_and_quantized_layers():
    with pytest.raises(ValueError, match="cannot quantize"):
        quant_twin(nn.ReLU(), FP32_SPEC)
    q = quant_twin(nn.Linear(2, 2), FP32_SPEC)
    with pytest.raises(ValueError, match="already quantized"):
        quant_twin(q, FP32_SPEC)
