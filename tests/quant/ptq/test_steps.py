"""bias_correction, ranges and adaround on a small MobileNet-style block."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from workbench.quant import QuantPlan, quantize_model
from workbench.quant.ptq import AdaRoundConfig, PtqSkipWarning, RangesConfig
from workbench.quant.ptq.adaround import round_layer
from workbench.quant.ptq.data import capture


def _x(data) -> torch.Tensor:
    return torch.cat([b[0] for b in data])


def _plan(model, text="uniform:w4a8:per_channel"):
    return QuantPlan.from_shorthand(text, model)


@torch.no_grad()
def _mean_error(q: nn.Module, model: nn.Module, layer: str, data) -> float:
    """Mean |difference| of the per-channel output means of ``layer`` (quantized vs float model)."""
    x = _x(data)
    outs = {}
    for tag, m in (("q", q), ("f", model)):
        h = m.get_submodule(layer).register_forward_hook(lambda _m, _a, o, tag=tag: outs.__setitem__(tag, o))
        m(x)
        h.remove()
    return float((outs["q"].mean((0, 2, 3)) - outs["f"].mean((0, 2, 3))).abs().mean())


def test_bias_correction_reduces_output_mean_error(ir_model_nobn, ir_data):
    plan = _plan(ir_model_nobn, "uniform:w3a8:per_channel")
    base = quantize_model(ir_model_nobn, plan, ir_data)
    bc = quantize_model(ir_model_nobn, plan, ir_data, ptq=["bias_correction"])
    for layer in ("expand", "dw", "project"):
        assert _mean_error(bc, ir_model_nobn, layer, ir_data) < 0.5 * _mean_error(
            base, ir_model_nobn, layer, ir_data
        )
    x = _x(ir_data)
    with torch.no_grad():
        ref = ir_model_nobn(x)
        assert (bc(x) - ref).pow(2).mean() < (base(x) - ref).pow(2).mean()


def test_bias_correction_names_a_layer_without_bias(ir_model, ir_data):
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.ReLU(), nn.Conv2d(4, 2, 3)).eval()
    with pytest.warns(PtqSkipWarning, match="'bias_correction' skipped layer '0': it has no bias"):
        quantize_model(model, _plan(model), ir_data, ptq=["bias_correction"])


def test_ranges_never_worse_than_minmax(ir_model, ir_data):
    plan = _plan(ir_model, "uniform:w3a4:per_channel")
    q = quantize_model(ir_model, plan, ir_data, ptq=[RangesConfig(calib_samples=48, eval_samples=48)])
    report = q.ptq_reports["ranges"]
    assert set(report) == {"expand", "dw", "project", "fc"}
    assert all(r["mse"] <= r["mse_before"] for r in report.values())
    assert any(r["mse"] < 0.9 * r["mse_before"] for r in report.values())  # somewhere another range wins
    base = quantize_model(ir_model, plan, ir_data)
    for name in report:  # each layer's output error on the same (quantized-model) inputs, minmax vs chosen
        x = capture(q, q.get_submodule(name), [b[0] for b in ir_data])
        layer_q, layer_b = q.get_submodule(name), base.get_submodule(name)
        with torch.no_grad():
            target = layer_q._conv_forward(x, layer_q.weight, layer_q.bias) if name != "fc" else None
            if target is None:
                target = nn.functional.linear(x, layer_q.weight, layer_q.bias)
            assert (layer_q(x) - target).pow(2).mean() <= (layer_b(x) - target).pow(2).mean() * (1 + 1e-6)


@pytest.mark.parametrize("bits", [3, 4])
def test_adaround_lowers_the_reconstruction_error(ir_model, ir_data, bits):
    plan = _plan(ir_model, f"uniform:w{bits}a8:per_channel")
    q = quantize_model(ir_model, plan, ir_data)
    f = quantize_model(ir_model, QuantPlan.from_shorthand("uniform:w16a16:per_channel", ir_model), ir_data)
    batches = [b[0] for b in ir_data]
    layer = q.get_submodule("project")
    x_q = capture(q, layer, batches)
    x_f = capture(f, f.get_submodule("project"), batches)
    float_layer = nn.Conv2d(16, 8, 1)
    with torch.no_grad():
        float_layer.weight.copy_(layer.weight)
        float_layer.bias.copy_(layer.bias)
    rep = round_layer(layer, float_layer, x_q, x_f, AdaRoundConfig(iterations=150, crop=8))
    assert rep["recon_adaround"] < 0.95 * rep["recon_nearest"]
    assert rep["kept"] == "adaround"
    # the rounded weight sits on the grid: the layer's nearest-rounding quantizer reproduces it exactly
    assert torch.allclose(layer.quantized_weight(), layer.weight, atol=1e-6)


def test_adaround_in_quantize_model_skips_high_bit_layers_by_name(ir_model, ir_data):
    with pytest.warns(PtqSkipWarning, match="'adaround' skipped every layer: no quantized layer"):
        quantize_model(ir_model, _plan(ir_model, "uniform:w8a8:per_channel"), ir_data, ptq=["adaround"])
    q = quantize_model(ir_model, _plan(ir_model), ir_data, ptq=[AdaRoundConfig(iterations=20)])
    assert set(q.ptq_reports["adaround"]) == {"expand", "dw", "project", "fc"}
