"""The runtime on the quantization core: Conv1d / Embedding / Linear switch through the core's twins, the ladder
as QuantPlans, and a runtime built from a list of QuantPlans."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from workbench.quant import QuantPlan, QuantSpec, quantize_model
from workbench.quant.modules import ActQuantizer, WeightQuantizer
from workbench.quant.spec import PlanError
from workbench.quant.swap import get_module
from workbench.runtime import (
    AdaptiveRuntime,
    MapCoster,
    ProbeEngine,
    RuntimeConfig,
    SwitchableModel,
    runtime_spec,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class TokenNet(nn.Module):
    """Token ids -> Embedding -> Conv1d -> Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 6)
        self.conv = nn.Conv1d(6, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(self.emb(tokens).transpose(1, 2)))
        return self.fc(h.mean(2))


class SignalNet(nn.Module):
    """Float signals -> Conv1d plus a learned positional Embedding -> Linear (float inputs: servable)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(3, 8, 3, padding=1)
        self.pos = nn.Embedding(12, 8)
        self.fc = nn.Linear(96, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x) + self.pos(torch.arange(x.shape[2], device=x.device)).T
        return self.fc(torch.relu(h).flatten(1))


@pytest.fixture(scope="module")
def tokens():
    torch.manual_seed(0)
    return TokenNet().eval(), torch.randint(0, 20, (32, 10))


def _run(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def test_conv1d_embedding_linear_switch_exactly_as_quantize_model_applies_the_map(tokens):
    net, x = tokens
    sm = SwitchableModel(net, w_bits=(2, 4, 8), a_bits=8, groups="layer")
    assert sm.group_names == ["emb", "conv", "fc"] and sm.w_bits == (2, 4, 8)
    outs = {}
    for name, m in {
        "fp": {"emb": 32, "conv": 32, "fc": 32},
        "w2": {"emb": 2, "conv": 2, "fc": 2},
        "mixed": {"emb": 4, "conv": 8, "fc": 2},
    }.items():
        plan = sm.plan(m)
        assert all(s.a_granularity == "per_sample" and s.a_dynamic for s in plan.layers.values())
        outs[name] = sm.run(x, m)
        assert torch.equal(outs[name], _run(quantize_model(net, plan), x)), name
        assert torch.equal(sm.run(x, plan), outs[name])  # a plan switches like its map
    assert (outs["w2"] - outs["fp"]).abs().max() > 1e-3
    # the embedding is weight-only; conv and fc quantize their input per sample; weights are precomputed
    emb, conv = get_module(sm.net, "emb"), get_module(sm.net, "conv")
    assert isinstance(emb.variants["4"][0], nn.Identity)
    assert isinstance(conv.variants["4"][0], ActQuantizer) and conv.variants["4"][0].spec == runtime_spec(
        4, 8
    )
    assert not any(isinstance(m, WeightQuantizer) for m in sm.modules())
    twin = quantize_model(net, QuantPlan({"emb": runtime_spec(2, 8)})).emb
    assert torch.equal(emb.variants["2"][1].weight, twin.quantized_weight())
    assert emb.candidates == (2, 4, 8, 32)


def test_from_plans_holds_each_rungs_specs_and_runs_them_like_quantize_model(tokens):
    net, x = tokens
    low = QuantPlan(
        {
            "emb": QuantSpec(w_bits=4, a_bits=32),
            "conv": QuantSpec(w_bits=4, a_bits=6, a_dynamic=True),
            "fc": QuantSpec(w_bits=4, a_bits=8),  # a static range: calibrated in this rung's context
        }
    )
    high = QuantPlan(
        {"emb": QuantSpec(w_bits=8, a_bits=32), "conv": QuantSpec(w_bits=8, a_bits=8)}
    )  # fc float
    sm = SwitchableModel.from_plans(net, [low, high], x)
    assert sm.group_names == ["emb", "conv", "fc"] and sm.w_bits == (4, 8) and sm.a_bits is None
    assert sm.map_of(low) == {"emb": 4, "conv": 4, "fc": 4}
    assert sm.map_of(high) == {"emb": 8, "conv": 8, "fc": 32}
    for plan in (low, high):
        assert sm.plan(sm.map_of(plan)) == plan
        assert torch.equal(sm.run(x, plan), _run(quantize_model(net, plan, [x]), x))
    with pytest.raises(ValueError, match=r"bits 2 for group 'conv' not in the candidates \(4, 8\)"):
        sm.run(x, {"emb": 4, "conv": 2, "fc": 4})


def test_from_plans_validates_every_rung(tokens):
    net, x = tokens
    ok = QuantPlan({"conv": QuantSpec(w_bits=4, a_bits=8, a_dynamic=True)})
    with pytest.raises(PlanError, match=r"rung 1: plan names unknown layer\(s\) \['conv2'\]"):
        SwitchableModel.from_plans(net, [ok, QuantPlan({"conv2": QuantSpec()})])
    with pytest.raises(PlanError, match="rung 1, layer 'conv': two specs at w_bits=4"):
        SwitchableModel.from_plans(
            net, [ok, QuantPlan({"conv": QuantSpec(w_bits=4, a_bits=4, a_dynamic=True)})]
        )
    with pytest.raises(PlanError, match="channel_bits"):
        SwitchableModel.from_plans(net, [QuantPlan({"fc": QuantSpec(channel_bits=(4, 4, 8, 8))})])
    with pytest.raises(PlanError, match="non-empty list"):
        SwitchableModel.from_plans(net, [])
    with pytest.raises(PlanError, match="pass calib_loader"):
        SwitchableModel.from_plans(net, [QuantPlan({"fc": QuantSpec(w_bits=4, a_bits=8)})])
    mixed = QuantPlan(
        {"emb": QuantSpec(w_bits=4, a_bits=32), "conv": QuantSpec(w_bits=8, a_bits=8, a_dynamic=True)}
    )
    with pytest.raises(PlanError, match="group 'all' mixes weight bits"):
        SwitchableModel.from_plans(net, [mixed], groups={"all": ["emb", "conv", "fc"]})


def test_adaptive_runtime_serves_a_ladder_of_quantplans():
    torch.manual_seed(1)
    model = SignalNet().eval()
    x_cal, x = torch.randn(64, 3, 12), torch.randn(16, 3, 12)
    plans = [QuantPlan.uniform(model, runtime_spec(b, 8), embeddings=True) for b in (2, 4, 8)]
    cfg = RuntimeConfig(probe_samples=32)
    rt = AdaptiveRuntime(model, "static", 1e12, calib=x_cal, config=cfg, plans=plans)
    assert rt.ladder_plans == plans and rt.probe.ladder_plans == plans
    assert rt.ladder == [{"conv": b, "pos": b, "fc": b} for b in (2, 4, 8)]
    assert list(rt.rung_costs) == sorted(rt.rung_costs) and rt.rung_costs[0] == pytest.approx(
        rt.rung_costs[2] / 4
    )
    assert rt.probe.ladder_kl[0] > rt.probe.ladder_kl[2] >= 0
    res = rt.serve(x)
    assert (res.rung == 2).all()
    assert torch.equal(res.logits, _run(quantize_model(model, plans[2]), x))
    with pytest.raises(ValueError, match="cheapest rung first: rung 1 costs"):
        AdaptiveRuntime(model, "static", 1e12, calib=x_cal, config=cfg, plans=plans[::-1])


def test_the_probe_ladder_is_a_list_of_quantplans(tokens):
    net, x = tokens
    sm = SwitchableModel(net, w_bits=(4, 8), a_bits=8, groups="layer")
    probe = ProbeEngine(sm, MapCoster(net, sm, x[:1])).run(x[:16])
    assert len(probe.ladder_plans) == len(probe.ladder) == 4
    for m, plan in zip(probe.ladder, probe.ladder_plans, strict=True):
        assert plan == QuantPlan({n: runtime_spec(b, 8) for n, b in m.items()})
        plan.validate(net)
