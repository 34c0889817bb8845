"""The deployed int8 model computes what its fake-quant simulation computes; fidelity side by side, whole split."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from workbench.hardware.deploy import (
    DeployConfig,
    SimulationMismatchWarning,
    deploy,
    deployment_fidelity,
    measure_deployment,
)
from workbench.hardware.deploy import compare as deploy_compare
from workbench.quant.spec import QuantPlan, QuantSpec

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Block(nn.Module):
    """conv-bn-relu, ZeroPad2d + depthwise conv-bn-relu6, 1x1 project conv-bn, residual add."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.expand = nn.Sequential(nn.Conv2d(c, 2 * c, 1, bias=False), nn.BatchNorm2d(2 * c), nn.ReLU())
        self.pad = nn.ZeroPad2d((0, 1, 0, 1))
        self.dw = nn.Conv2d(2 * c, 2 * c, 2, groups=2 * c, bias=False)
        self.bn = nn.BatchNorm2d(2 * c)
        self.act = nn.ReLU6()
        self.project = nn.Sequential(nn.Conv2d(2 * c, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        y = self.act(self.bn(self.dw(self.pad(self.expand(x)))))
        return x + self.project(y)


class Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6())
        self.blocks = nn.Sequential(Block(8), Block(8))
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Sequential(
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        return self.fc(self.head(self.pool(self.blocks(self.stem(x)))))


def _small():
    torch.manual_seed(0)
    model = Small().eval()
    for m in model.modules():  # BatchNorm statistics away from identity, as after training
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    gen = torch.Generator().manual_seed(1)
    calib = [(torch.randn(16, 3, 12, 12, generator=gen), torch.zeros(16)) for _ in range(2)]
    test = [(torch.randn(16, 3, 12, 12, generator=gen), torch.zeros(16)) for _ in range(3)]
    return model, calib, test


def test_small_conv_relu6_depthwise_pad_residual_model_deploys_as_simulated():
    model, calib, test = _small()
    plan = QuantPlan.from_shorthand("uniform:w8a8:per_channel", model)
    dep = deploy(model, plan, calib)
    assert set(dep.table()["precision"]) == {"int8"}
    fid = deployment_fidelity(model, dep.simulated, dep.module, test)
    assert fid["fidelity_samples"] == 48
    assert fid["sim_vs_deployed_cosine"] >= 0.999, fid
    assert fid["cosine_to_fp32"] >= 0.98, fid
    # the int8 kernels multiply with the simulation's weight codes and scales exactly
    mods = dict(dep.module.named_modules())
    sim = dict(dep.simulated.named_modules())
    for name in ("blocks.0.dw", "blocks.1.project.0", "fc"):
        w = mods[name]._weight_bias()[0]
        torch.testing.assert_close(w.dequantize(), sim[name].quantized_weight().detach(), rtol=0, atol=0)


def test_digits_resnet_deploys_as_simulated_on_the_whole_split():
    from workbench.tasks import load_task

    task = load_task("digits_resnet", progress=False)
    plan = QuantPlan.from_shorthand("uniform:w8a8:per_channel", task.model)
    dep = deploy(task.model, plan, task.calib_loader)
    fid = deployment_fidelity(task.model, dep.simulated, dep.module, task.loader("test"))
    assert fid["fidelity_samples"] == len(task.loader("test").dataset)
    assert fid["sim_vs_deployed_cosine"] >= 0.999, fid
    assert fid["sim_vs_deployed_top1"] >= 0.99, fid


def test_a_layer_no_kernel_computes_as_simulated_runs_its_twin_in_float_with_a_reason():
    model, calib, test = _small()
    plan = QuantPlan.from_shorthand("uniform:w8a8:per_channel", model)
    plan = QuantPlan({**plan.layers, "fc": QuantSpec(granularity="per_group", group_size=8)})
    dep = deploy(model, plan, calib)
    table = dep.table().set_index("layer")
    assert table.loc["fc", "precision"] == "fp32" and table.loc["blocks.0.dw", "precision"] == "int8"
    assert any(n.startswith("fc: runs in float32 as simulated") and "per-group" in n for n in dep.notes)
    fid = deployment_fidelity(model, dep.simulated, dep.module, test)
    assert fid["sim_vs_deployed_cosine"] >= 0.999, fid


def test_measure_deployment_reports_both_on_every_batch_and_warns_when_they_differ(monkeypatch):
    model, calib, test = _small()
    plan = QuantPlan.from_shorthand("uniform:w8a8:per_channel", model)
    cfg = DeployConfig(batch_size=8, repeats=1, warmup=0, threads=1)
    res = measure_deployment(model, plan, calib, example_input=test[0][0], config=cfg, track=False, data=test)
    assert res.fidelity_samples == 48 and res.sim_vs_deployed_cosine >= 0.999
    df = res.fidelity()
    assert list(df["model"]) == ["simulated", "deployed"] and df["cosine_to_fp32"].between(0.9, 1).all()
    assert {"sim_vs_deployed_cosine", "sim_cosine_to_fp32", "cosine_to_fp32"} <= set(res.to_metrics())
    assert not any("differs from its simulation" in n for n in res.notes)

    real_deploy = deploy_compare.deploy

    def mismatched(*args, **kwargs):  # a deployment whose kernels do not compute what the simulation does
        dep = real_deploy(*args, **kwargs)
        with torch.no_grad():
            dep.simulated.fc.weight.mul_(-1.0)
        return dep

    monkeypatch.setattr(deploy_compare, "deploy", mismatched)
    with pytest.warns(SimulationMismatchWarning, match="differs from its simulation"):
        res = measure_deployment(model, plan, calib, example_input=test[0][0], config=cfg, track=False)
    assert res.sim_vs_deployed_cosine < 0.999
    assert any("differs from its simulation" in n for n in res.notes)
    assert any("timed batch only (8 inputs)" in n for n in res.notes) and res.fidelity_samples == 8


def test_deploy_follows_a_given_simulation_and_refuses_another_plans():
    from workbench.quant.spec import PlanError
    from workbench.quant.swap import quantize_model

    model, calib, test = _small()
    plan = QuantPlan.from_shorthand("uniform:w8a8:per_channel", model)
    sim = quantize_model(model, plan, calib)
    with torch.no_grad():  # as a post-training step (bias correction) would
        sim.fc.bias.add_(0.5)
    scale = sim.fc.a_quant.scale.clone()
    dep = deploy(model, plan, calib, simulated=sim)
    assert torch.equal(sim.fc.a_quant.scale, scale)  # the caller's simulation is not changed
    torch.testing.assert_close(dict(dep.module.named_modules())["fc"]._weight_bias()[1], sim.fc.bias.detach())
    fid = deployment_fidelity(model, dep.simulated, dep.module, test)
    assert fid["sim_vs_deployed_cosine"] >= 0.999, fid
    other = QuantPlan({n: QuantSpec(w_bits=4) for n in plan.layers})
    with pytest.raises(PlanError, match="another plan"):
        deploy(model, other, calib, simulated=sim)


def test_inputs_past_the_calibrated_range_are_clamped_as_simulated():
    """7-bit reduce_range grids on the x86 kernels: inputs far past the calibrated ranges clamp as simulated."""
    model, calib, test = _small()
    plan = QuantPlan.from_shorthand("uniform:w8a8:per_channel", model)
    dep = deploy(model, plan, calib, reduce_range=True, engine="x86")
    assert any("reduce_range" in n for n in dep.notes)
    assert int(dict(dep.simulated.named_modules())["blocks.0.dw"].a_quant.qmax) == 127
    wide = [(3.0 * x, y) for x, y in test]
    fid = deployment_fidelity(model, dep.simulated, dep.module, wide, engine="x86")
    assert fid["sim_vs_deployed_cosine"] >= 0.999, fid
