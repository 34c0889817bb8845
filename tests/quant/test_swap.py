"""quantize_model: swap, BatchNorm folding, calibration, exact FP32 reproduction, bad input."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from workbench.quant import (
    ActQuantizer,
    PlanError,
    QuantConv2d,
    QuantLinear,
    QuantPlan,
    QuantSpec,
    quant_modules,
    quantizable_layers,
    quantize_model,
)


def _x(calib):
    return torch.cat([b[0] for b in calib])


def _same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_fp32_plan_reproduces_outputs_exactly(tiny_model, calib_batches):
    x = _x(calib_batches)
    q = quantize_model(
        tiny_model, QuantPlan.uniform(tiny_model, QuantSpec(w_bits=32, a_bits=32)), calib_batches
    )
    with torch.no_grad():
        assert torch.equal(q(x), tiny_model(x))
    q = quantize_model(tiny_model, QuantPlan({}), calib_batches)
    with torch.no_grad():
        assert torch.equal(q(x), tiny_model(x))


def test_input_model_untouched_and_modules_swapped(tiny_model, calib_batches):
    before = copy.deepcopy(tiny_model)
    plan = QuantPlan.uniform(tiny_model, QuantSpec(w_bits=4, a_bits=8))
    q = quantize_model(tiny_model, plan, calib_batches)
    assert _same_state(before, tiny_model)
    assert type(tiny_model.features[0]) is nn.Conv2d and isinstance(tiny_model.features[1], nn.BatchNorm2d)
    assert isinstance(q.features[0], QuantConv2d) and isinstance(q.fc, QuantLinear)
    assert isinstance(q.features[1], nn.Identity)  # folded into the quantized conv
    assert q.folded_bn == [("features.0", "features.1")]
    assert set(quant_modules(q)) == {"features.0", "features.3", "fc"}
    assert all(m.calibrated for m in q.modules() if isinstance(m, ActQuantizer))
    assert q.quant_plan == plan


def test_error_shrinks_with_bits_and_int8_is_close(tiny_model, calib_batches):
    x = _x(calib_batches)
    with torch.no_grad():
        ref = tiny_model(x)
        errs = {}
        for bits in (2, 3, 4, 6, 8):
            q = quantize_model(
                tiny_model, QuantPlan.uniform(tiny_model, QuantSpec(w_bits=bits, a_bits=8)), calib_batches
            )
            errs[bits] = (q(x) - ref).pow(2).mean().item()
    vals = [errs[b] for b in (2, 3, 4, 6, 8)]
    assert all(a > b for a, b in zip(vals, vals[1:])), errs
    assert errs[8] < 1e-3 * ref.pow(2).mean().item()


def test_static_activation_range_from_calibration(tiny_model, calib_batches):
    plan = QuantPlan({"features.0": QuantSpec(w_bits=32, a_bits=8, a_symmetric=False)})
    q = quantize_model(tiny_model, plan, calib_batches)
    aq = q.features[0].a_quant
    x = _x(calib_batches)
    lo, hi = x.min().item(), x.max().item()
    assert aq.scale.item() == pytest.approx((hi - lo) / 255, rel=1e-6)
    with torch.no_grad():
        y = aq(x)
    assert (y - x).abs().max().item() <= aq.scale.item() / 2 * (1 + 1e-5)


def test_dynamic_activations_follow_each_batch(tiny_model, calib_batches):
    plan = QuantPlan({"fc": QuantSpec(w_bits=8, a_bits=4, a_dynamic=True)})
    q = quantize_model(tiny_model, plan)  # dynamic: no calibration data needed
    aq = q.fc.a_quant
    small, big = torch.rand(4, 32) * 0.1, torch.rand(4, 32) * 10
    with torch.no_grad():
        err_small = (aq(small) - small).abs().max()
        err_big = (aq(big) - big).abs().max()
    assert err_small < 0.1 / 15 and err_big < 10 / 15
    assert err_small < err_big / 20


def test_per_channel_activations(tiny_model, calib_batches):
    plan = QuantPlan({"features.3": QuantSpec(w_bits=8, a_bits=4, a_granularity="per_channel")})
    q = quantize_model(tiny_model, plan, calib_batches)
    assert q.features[3].a_quant.scale.shape == (8, 1)
    with torch.no_grad():
        assert torch.isfinite(q(_x(calib_batches))).all()


def test_bad_input_errors(tiny_model, calib_batches):
    plan = QuantPlan.uniform(tiny_model, QuantSpec())
    with pytest.raises(PlanError, match="calibration data is empty"):
        quantize_model(tiny_model, plan, [])
    with pytest.raises(PlanError, match="pass calib_loader"):
        quantize_model(tiny_model, plan)
    with pytest.raises(PlanError, match="no quantizable layers"):
        quantize_model(nn.Sequential(nn.ReLU()), QuantPlan({}), calib_batches)
    with pytest.raises(PlanError, match="must be a QuantPlan"):
        quantize_model(tiny_model, {"fc": {}}, calib_batches)
    broken = copy.deepcopy(tiny_model)
    with torch.no_grad():
        broken.fc.weight[0, 0] = float("nan")
    with pytest.raises(PlanError, match=r"'fc\.weight' has 1 NaN/Inf"):
        quantize_model(broken, plan, calib_batches)


def test_quantized_model_trains_with_ste(tiny_model, calib_batches):
    q = quantize_model(
        tiny_model, QuantPlan.uniform(tiny_model, QuantSpec(w_bits=4, a_bits=8)), calib_batches
    )
    q.train()
    x, _ = calib_batches[0]
    loss = q(x).pow(2).mean()
    loss.backward()
    assert q.fc.weight.grad is not None and q.fc.weight.grad.abs().sum() > 0
    assert q.features[0].weight.grad.abs().sum() > 0


def test_per_channel_activation_scales_match_each_channel(tiny_model, calib_batches):
    plan = QuantPlan({"fc": QuantSpec(w_bits=32, a_bits=4, a_granularity="per_channel")})
    q = quantize_model(tiny_model, plan, calib_batches)
    feats = []
    hook = tiny_model.fc.register_forward_hook(lambda m, i, o: feats.append(i[0]))
    with torch.no_grad():
        for x, _ in calib_batches:
            tiny_model(x)
    hook.remove()
    f = torch.cat(feats)
    lo = torch.minimum(f.amin(0), torch.zeros(()))
    hi = torch.maximum(f.amax(0), torch.zeros(()))
    assert torch.allclose(q.fc.a_quant.scale.reshape(-1), (hi - lo) / 15, rtol=1e-5)
    per_tensor = quantize_model(tiny_model, QuantPlan({"fc": QuantSpec(w_bits=32, a_bits=4)}), calib_batches)
    with torch.no_grad():
        err_pc = (q.fc.a_quant(f) - f).pow(2).mean()
        err_pt = (per_tensor.fc.a_quant(f) - f).pow(2).mean()
    assert err_pc < err_pt


def test_more_bad_inputs_are_named(tiny_model, calib_batches):
    plan = QuantPlan.uniform(tiny_model, QuantSpec())
    bad = [(x.clone(), y) for x, y in calib_batches]
    bad[1][0][0, 0, 0, 0] = float("nan")
    with pytest.raises(PlanError, match="calibration batch 1.*1 NaN/Inf"):
        quantize_model(tiny_model, plan, bad)
    with pytest.raises(PlanError, match="a_dynamic='false' must be true or false"):
        QuantPlan.from_dict({"fc": {"a_dynamic": "false"}})
    with pytest.raises(PlanError, match="channel_bits must be a list of integers"):
        QuantPlan.from_dict({"fc": {"channel_bits": [4.7] * 10}})
    with pytest.raises(PlanError, match="percentile"):
        QuantSpec(percentile="99.9")


class _Branchy(nn.Module):
    """A model whose 'unused' layer never runs in forward."""

    def __init__(self) -> None:
        super().__init__()
        self.used = nn.Linear(4, 4)
        self.unused = nn.Linear(4, 4)

    def forward(self, x):
        return self.used(x)


def test_planned_layer_that_never_runs_is_named():
    model = _Branchy().eval()
    calib = [(torch.randn(8, 4), None)]
    with pytest.raises(PlanError, match=r"\['unused'\] never ran"):
        quantize_model(model, QuantPlan.uniform(model, QuantSpec()), calib)


def test_batchnorm_without_running_stats_is_not_folded(calib_batches):
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4, track_running_stats=False)).eval()
    q = quantize_model(model, QuantPlan.uniform(model, QuantSpec(w_bits=8)), calib_batches)
    assert q.folded_bn == [] and isinstance(q[1], nn.BatchNorm2d)


def test_subclassed_layers_are_not_swapped():
    class StdConv(nn.Conv2d):  # its own forward would be lost by a swap
        def forward(self, x):
            w = (self.weight - self.weight.mean()) / (self.weight.std() + 1e-5)
            return self._conv_forward(x, w, self.bias)

    model = nn.Sequential(StdConv(1, 4, 3), nn.Flatten(), nn.Linear(4 * 36, 2))
    assert quantizable_layers(model) == ["2"]
    with pytest.raises(PlanError, match="unknown layer"):
        QuantPlan({"0": QuantSpec()}).validate(model)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_quantize_on_cuda(tiny_model, calib_batches):
    model = copy.deepcopy(tiny_model).cuda()
    q = quantize_model(model, QuantPlan.uniform(model, QuantSpec(w_bits=4)), calib_batches)
    x = calib_batches[0][0]
    with torch.no_grad():
        cpu = quantize_model(tiny_model, QuantPlan.uniform(tiny_model, QuantSpec(w_bits=4)), calib_batches)(x)
        assert torch.allclose(q(x.cuda()).cpu(), cpu, atol=1e-4)
