"""LSQ step-size gradients against a hand computation, and the STE gradient."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from workbench.qat import learn_scales, lsq_grad_factor
from workbench.quant import QuantPlan, QuantSpec, quantize_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_lsq_scale_gradients_match_hand_computation():
    lin = nn.Linear(4, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.9, -0.35, 0.2, -0.05], [0.4, 0.1, -0.8, 0.62]]))
        lin.bias.zero_()
    x = torch.tensor([[0.3, -1.2, 0.7, 2.0], [1.5, 0.2, -0.4, -0.9], [0.1, 0.9, -2.2, 0.5]])
    model = nn.Sequential(lin)
    plan = QuantPlan({"0": QuantSpec(w_bits=3, a_bits=4, granularity="per_channel")})
    q = quantize_model(model, plan, [(x, torch.zeros(3))])
    layer = q[0]
    with torch.no_grad():  # smaller steps than calibration so some values clip
        layer.w_quant.scale.mul_(0.7)
        layer.a_quant.scale.mul_(0.8)
    learned = learn_scales(q, x[:1])
    assert len(learned.params) == 2 and all(isinstance(p, nn.Parameter) for p in learned.params)
    q(x).sum().backward()

    # weights: 3-bit symmetric grid [-3, 3], one step per row of 4 values
    s_w = layer.w_quant.scale.detach()
    u = layer.weight.detach() / s_w
    r = torch.round(u)
    inside = (r >= -3) & (r <= 3)
    assert 0 < int(inside.sum()) < inside.numel()
    d_w = torch.where(inside, r - u, torch.clamp(r, -3, 3))
    a_s, a_z = layer.a_quant.scale.detach(), layer.a_quant.zero_point
    v = torch.round(x / a_s) + a_z
    xq = (torch.clamp(v, 0, 15) - a_z) * a_s
    grad_wq = xq.sum(0).expand(2, 4)  # d sum(xq @ Wq^T) / d Wq
    expected_w = (grad_wq * d_w).sum(1, keepdim=True) / math.sqrt(4 * 3)
    torch.testing.assert_close(layer.w_quant.scale.grad, expected_w, rtol=1e-5, atol=1e-7)

    # activations: 4-bit asymmetric grid [0, 15] with zero point, N = 4 values per sample, Qp = 15
    a_inside = (v >= 0) & (v <= 15)
    assert 0 < int(a_inside.sum()) < a_inside.numel()
    d_a = torch.where(a_inside, torch.round(x / a_s) - x / a_s, torch.clamp(v, 0, 15) - a_z)
    wq = layer.quantized_weight().detach()
    grad_xq = wq.sum(0).expand(3, 4)
    expected_a = (grad_xq * d_a).sum() / math.sqrt(4 * 15)
    torch.testing.assert_close(layer.a_quant.scale.grad.reshape(()), expected_a, rtol=1e-5, atol=1e-7)
    assert float(lsq_grad_factor(15.0, 4)) == pytest.approx(1 / math.sqrt(60))

    learned.close()  # back to plain buffers: the model is a quantize_model model again
    assert "scale" in layer.w_quant._buffers and "scale" in layer.a_quant._buffers


def test_ste_gradient_is_identity_inside_and_zero_outside():
    lin = nn.Linear(16, 3)
    q = quantize_model(nn.Sequential(lin), QuantPlan({"0": QuantSpec(w_bits=2, a_bits=32)}))
    layer = q[0]
    with torch.no_grad():
        layer.w_quant.scale.mul_(0.4)
    layer.quantized_weight().sum().backward()
    r = torch.round(layer.weight.detach() / layer.w_quant.scale)
    inside = (r >= -1) & (r <= 1)
    assert 0 < int(inside.sum()) < inside.numel()
    assert torch.equal(layer.weight.grad, inside.float())
