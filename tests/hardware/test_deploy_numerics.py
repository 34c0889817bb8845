"""Kernel numerics shared by the simulation and the deployment: engine choice, qnnpack quirks, mirrored grids."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from workbench.hardware.deploy import convert as convert_mod
from workbench.hardware.deploy import deploy, deployment_fidelity, resolve_engine
from workbench.hardware.deploy.numerics import (
    bias_safe_scales,
    clamp_codes,
    kernel_engines,
    onednn_depthwise_exact,
    pad_codes,
)
from workbench.quant.spec import QuantPlan

QNNPACK = "qnnpack" in torch.backends.quantized.supported_engines


def test_resolve_engine_follows_vnni_and_rejects_unknown(monkeypatch):
    monkeypatch.setattr(convert_mod, "cpu_has_vnni", lambda: True)
    assert resolve_engine("auto") == "x86"
    monkeypatch.setattr(convert_mod, "cpu_has_vnni", lambda: False)
    assert resolve_engine("auto") == ("qnnpack" if QNNPACK else "x86")
    assert resolve_engine("onednn") == "onednn"
    with pytest.raises(ValueError, match="engine='tpu'.*auto"):
        resolve_engine("tpu")


def test_reduce_range_only_for_saturating_engines_without_vnni(monkeypatch):
    monkeypatch.setattr(convert_mod, "cpu_has_vnni", lambda: False)
    assert convert_mod._reduce_range("x86", None) and convert_mod._reduce_range("onednn", None)
    assert not convert_mod._reduce_range("qnnpack", None)
    monkeypatch.setattr(convert_mod, "cpu_has_vnni", lambda: True)
    assert not convert_mod._reduce_range("x86", None)


def test_bias_safe_scales_raise_only_dead_channels():
    scale = torch.tensor([0.01, 1e-12, 0.02], dtype=torch.float64)
    bias = torch.tensor([3.0, 2.0, -1.0])
    out = bias_safe_scales(scale, bias, input_scale=0.02)
    assert out[0] == scale[0] and out[2] == scale[2]
    assert 2.0 / (0.02 * float(out[1])) <= 2**30 + 1  # the bias code fits an int32
    assert torch.equal(bias_safe_scales(scale, None, 0.02), scale)


def test_bias_safe_scales_raise_a_per_tensor_scale_to_the_largest_bias():
    """One weight scale for every channel (per-tensor): raised so that every channel's bias fits an int32 code."""
    bias = torch.tensor([0.1, 4.0, -1.0])
    out = bias_safe_scales(torch.tensor([1e-12], dtype=torch.float64), bias, input_scale=0.02)
    assert out.shape == (1,)
    assert 4.0 / (0.02 * float(out[0])) <= 2**30 + 1  # the largest bias code fits an int32
    assert 4.0 / (0.02 * float(out[0])) >= 2**30 - 1  # raised no further than needed
    kept = torch.tensor([0.01], dtype=torch.float64)
    assert torch.equal(bias_safe_scales(kept, bias, input_scale=0.02), kept)


@pytest.mark.skipif(not QNNPACK, reason="qnnpack not in this torch build")
@pytest.mark.parametrize("engine", ["qnnpack", "x86"])
def test_clamp_codes_keeps_channels_last_tensors(engine):
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        x = torch.randn(2, 8, 5, 5, generator=torch.Generator().manual_seed(0)) * 4
        q = torch.quantize_per_tensor(x, 10 / 255, 128, torch.quint8).contiguous(
            memory_format=torch.channels_last
        )
        out = clamp_codes(q, 0.0, 6.0)
        assert torch.equal(out.dequantize(), q.dequantize().clamp(0.0, 6.0))
    finally:
        torch.backends.quantized.engine = previous


class _Net(nn.Module):
    """Conv-BN-ReLU6 (one dead channel with a bias, as BN folding leaves), a residual inverted bottleneck (1x1,
    depthwise 3x3, 1x1), pooling, head."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.act = nn.ReLU6()
        self.expand = nn.Conv2d(8, 16, 1)
        self.act2 = nn.ReLU6()
        self.depthwise = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.act3 = nn.ReLU6()
        self.project = nn.Conv2d(16, 8, 1)
        self.fc = nn.Linear(8, 5)
        with torch.no_grad():
            for m in (self.conv, self.expand, self.depthwise, self.project, self.fc):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) / m.weight[0].numel() ** 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.3)
            self.conv.weight[2].zero_()
            self.conv.bias[2] = 2.0
            self.bn.running_var.fill_(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn(self.conv(x)))
        x = x + self.project(self.act3(self.depthwise(self.act2(self.expand(x)))))
        return self.fc(x.mean((2, 3)))


def _deployed_net(shorthand: str, engine: str):
    """(model, test inputs, deployment) of the seeded :class:`_Net` under the uniform plan ``shorthand``."""
    torch.manual_seed(0)
    model = _Net().eval()
    calib, test = torch.randn(32, 3, 12, 12), torch.randn(64, 3, 12, 12)
    plan = QuantPlan.from_shorthand(shorthand, model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model, test, deploy(model, plan, calib, engine=engine)


@pytest.mark.skipif(not QNNPACK, reason="qnnpack not in this torch build")
def test_qnnpack_deployment_equals_its_simulation():
    """ReLU6 on channels-last codes, a dead channel's int32 bias, 8-bit outputs into a residual add and the
    logits, a depthwise layer (on onednn's kernel where exact): the qnnpack deployment computes what its
    simulation computes."""
    model, test, dep = _deployed_net("uniform:w8a8:per_channel", "qnnpack")
    assert dep.engine == "qnnpack" and dep.precision_counts() == {"int8": 5}
    fid = deployment_fidelity(model, dep.simulated, dep.module, test, engine=dep.engine)
    assert fid["sim_vs_deployed_cosine"] > 0.9999
    assert fid["cosine_to_fp32"] > 0.99
    out = dep(test[:4])
    assert out.shape == (4, 5) and torch.isfinite(out).all()


@pytest.mark.skipif(not QNNPACK, reason="qnnpack not in this torch build")
def test_kernel_engines_send_only_depthwise_layers_to_onednn():
    model = _Net().eval()
    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    paths = {n: n for n in convs}
    engines = kernel_engines(model, paths, "qnnpack")
    assert engines["depthwise"] == ("onednn" if onednn_depthwise_exact() else "qnnpack")
    assert {engines[n] for n in ("conv", "expand", "project")} == {"qnnpack"}
    assert set(kernel_engines(model, paths, "x86").values()) == {"x86"}


def test_pad_codes_pads_on_the_grid_or_requantizes():
    x = torch.rand(2, 4, 5, 5, generator=torch.Generator().manual_seed(1)) * 3 - 1
    q = torch.quantize_per_tensor(x, 0.02, 60, torch.quint8).contiguous(memory_format=torch.channels_last)
    same = pad_codes(q, (0, 1, 0, 1), torch.tensor(0.02), torch.tensor(60))
    assert same.q_scale() == q.q_scale() and same.shape == (2, 4, 6, 6)
    assert torch.equal(same.dequantize(), nn.functional.pad(q.dequantize(), (0, 1, 0, 1)))
    other = pad_codes(q, (1, 1, 1, 1), torch.tensor(0.04), torch.tensor(30))
    assert (
        other.q_scale() == pytest.approx(0.04) and other.q_zero_point() == 30 and other.shape == (2, 4, 7, 7)
    )
    assert float(other.dequantize()[:, :, 0].abs().max()) == 0.0


@pytest.mark.parametrize("engine", ["x86", "qnnpack"] if QNNPACK else ["x86"])
def test_per_tensor_weight_layers_deploy_as_simulated(engine):
    """Per-tensor weight scales (one for the whole layer, the Linear head and the convolutions) pack per-tensor
    int8 weights with the simulation's codes, and the deployment computes what the simulation computes."""
    model, test, dep = _deployed_net("uniform:w8a8:per_tensor", engine)
    assert dep.precision_counts() == {"int8": 5}
    weight = dict(dep.module.named_modules())["fc"]._weight_bias()[0]
    assert weight.qscheme() == torch.per_tensor_affine
    torch.testing.assert_close(
        weight.dequantize(), dep.simulated.fc.quantized_weight().detach(), rtol=0, atol=0
    )
    fid = deployment_fidelity(model, dep.simulated, dep.module, test, engine=dep.engine)
    assert fid["sim_vs_deployed_cosine"] >= 0.999, fid
    assert fid["cosine_to_fp32"] > 0.98, fid
