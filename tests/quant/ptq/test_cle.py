from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from workbench.quant import QuantPlan, QuantSpec, quantize_model
from workbench.quant.ptq import CleConfig, PtqSkipWarning, cle_pairs


def _fp32_plan(model: nn.Module) -> QuantPlan:
    return QuantPlan.uniform(model, QuantSpec(w_bits=32, a_bits=32))


def _imbalance(conv: nn.Conv2d) -> float:
    r = conv.weight.detach().abs().reshape(conv.out_channels, -1).amax(1)
    return float(r.max() / r.min())


def _x(data) -> torch.Tensor:
    return torch.cat([b[0] for b in data])


def test_cle_finds_the_inverted_residual_pairs(ir_model_nobn):
    pairs = cle_pairs(ir_model_nobn)
    assert [(p.first, p.second, p.clamp) for p in pairs] == [("expand", "dw", 6.0), ("dw", "project", 6.0)]


def test_cle_keeps_the_float_function_and_equalizes(ir_model_nobn, ir_data):
    x = _x(ir_data)
    q = quantize_model(ir_model_nobn, _fp32_plan(ir_model_nobn), ir_data, ptq=["cle"])
    with torch.no_grad():
        assert torch.allclose(q(x), ir_model_nobn(x), atol=1e-4)
    assert q.ptq_reports["cle"]["pairs"] == 2
    assert _imbalance(q.expand) < 0.5 * _imbalance(ir_model_nobn.expand)
    assert not torch.equal(q.expand.weight, ir_model_nobn.expand.weight)


def test_cle_relu6_clamp_is_respected(ir_model_nobn, ir_data):
    """Channels whose pre-activation reaches 6 keep their scale; the others stay below the clamp."""
    x = _x(ir_data) * 3  # push many channels into the clamp
    data = [(x[i : i + 16], None) for i in range(0, len(x), 16)]
    pre = ir_model_nobn.expand(x)
    assert (pre.amax((0, 2, 3)) > 6).any() and (pre.amax((0, 2, 3)) < 6).any()
    q = quantize_model(ir_model_nobn, _fp32_plan(ir_model_nobn), data, ptq=[CleConfig(iterations=5)])
    with torch.no_grad():
        assert torch.allclose(q(x), ir_model_nobn(x), atol=1e-4)


def test_cle_after_batchnorm_folding(ir_model, ir_data):
    x = _x(ir_data)
    plan = QuantPlan.uniform(ir_model, QuantSpec(w_bits=8, a_bits=8, granularity="per_tensor"))
    base = quantize_model(ir_model, plan, ir_data)
    q = quantize_model(ir_model, plan, ir_data, ptq=["cle"])
    assert q.ptq_reports["cle"]["pairs"] == 2
    with torch.no_grad():
        ref = ir_model(x)
        err_cle = (q(x) - ref).pow(2).mean()
        err_base = (base(x) - ref).pow(2).mean()
    assert err_cle < err_base  # per-tensor weights: equalized ranges quantize better


def test_cle_without_pairs_is_a_named_skip(ir_data):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 10 * 10, 2)).eval()
    with pytest.warns(PtqSkipWarning, match="'cle' skipped the whole model: no conv"):
        quantize_model(model, _fp32_plan(model), ir_data, ptq=["cle"])


def test_cle_relu6_without_data_is_a_named_skip(ir_model_nobn):
    plan = QuantPlan.uniform(
        ir_model_nobn, QuantSpec(w_bits=8, a_bits=32)
    )  # weight-only: no calibration data
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        quantize_model(ir_model_nobn, plan, None, ptq=["cle"])
    msgs = [str(w.message) for w in rec if issubclass(w.category, PtqSkipWarning)]
    assert any("pair expand -> dw" in m and "no calibration data" in m for m in msgs)


def test_cle_never_mutates_the_callers_model(ir_model, ir_data):
    before = {k: v.clone() for k, v in ir_model.state_dict().items()}
    quantize_model(
        ir_model, QuantPlan.from_shorthand("uniform:w4a8:per_channel", ir_model), ir_data, ptq=["cle"]
    )
    assert all(torch.equal(before[k], v) for k, v in ir_model.state_dict().items())


def test_relu_pairs_need_no_data():
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).eval()
    pairs = cle_pairs(model)
    assert len(pairs) == 1 and math.isinf(pairs[0].clamp)
    x = torch.randn(8, 4)
    q = quantize_model(model, _fp32_plan(model), None, ptq=["cle"])
    with torch.no_grad():
        assert torch.allclose(q(x), model(x), atol=1e-5)
