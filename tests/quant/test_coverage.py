"""Coverage of a plan: every weight module that stays float is named, with its reason and its shares of weight
parameters and FLOPs, in the report, the plan summary and a CoverageWarning from quantize_model."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from workbench.quant import QuantPlan, QuantSpec, quantize_model
from workbench.quant.coverage import CoverageWarning, format_share, plan_coverage, weight_modules


class CustomLinear(nn.Module):
    """A layer the quantization core cannot swap: its own parameter used through F.linear."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_out, n_in) * 0.1)
        self.bias = nn.Parameter(torch.zeros(n_out))

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)  # 36 weights
        self.fc = nn.Linear(64, 16)  # 1024 weights
        self.head = nn.Sequential(nn.ReLU(), CustomLinear(16, 10))  # head.1: 160 weights, unsupported
        self.norm = nn.LayerNorm(16)  # 1-D parameters: no weight module

    def forward(self, x):
        x = F.adaptive_avg_pool2d(torch.relu(self.conv(x)), 4).flatten(1)
        return self.head(self.norm(self.fc(x)))


WEIGHTS = {"conv": 36, "fc": 1024, "head.1": 160}
TOTAL = sum(WEIGHTS.values())


@pytest.fixture
def net() -> Net:
    torch.manual_seed(0)
    return Net().eval()


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))


def test_weight_modules_are_the_owners_of_2d_parameters_and_the_layers(net):
    found = weight_modules(net)
    assert (
        list(found) == list(WEIGHTS) and {n: sum(p.numel() for p in ps) for n, ps in found.items()} == WEIGHTS
    )


def test_unsupported_custom_layer_is_named_with_its_shares(net, x):
    plan = QuantPlan.from_shorthand("uniform:w8a8:per_channel", net)
    assert list(plan) == ["conv", "fc"]  # the shorthand cannot include the custom layer ...
    cov = plan_coverage(net, plan, x)
    (custom,) = cov.float_layers  # ... and the report says so
    assert (custom.name, custom.type_name, custom.kind) == ("head.1", "CustomLinear", "unsupported")
    assert custom.weight_params == 160 and custom.param_share == pytest.approx(160 / TOTAL, abs=1e-12)
    assert "CustomLinear owns weight [10, 16]" in custom.reason
    flops = {"conv": 2 * 4 * 64 * 9, "fc": 2 * 64 * 16, "head.1": 2 * 16 * 10}  # one sample
    assert cov.flops == sum(flops.values())
    assert custom.flop_share == pytest.approx(flops["head.1"] / cov.flops, abs=1e-12)
    assert cov.covered_flops_fraction == pytest.approx(1 - custom.flop_share, abs=1e-12)
    assert (cov.weight_layers, cov.covered_layers, cov.covered_params) == (3, 2, 1060)
    assert cov.covered_fraction == pytest.approx(1060 / TOTAL, abs=1e-12)
    text = cov.describe()
    assert text.startswith("covers 2 of 3 weight layers, 86.9 % of weight parameters and ")
    assert text.endswith("; float: head.1 (13.1 %, unsupported CustomLinear)")
    summary = plan.summary(net, x)
    assert summary.coverage == (
        "covers 2 of 3 weight layers, 86.9 % of weight parameters; float: head.1 (13.1 %, unsupported CustomLinear)"
    )
    assert summary.weight_covered_fraction == cov.covered_fraction
    assert (summary.weight_layers, summary.covered_weight_layers) == (3, 2)


def test_quantize_model_warns_naming_the_custom_layer_and_its_share(net, x):
    plan = QuantPlan.from_shorthand("uniform:w8a8:per_channel", net)
    with pytest.warns(CoverageWarning, match=r"head\.1 \(13\.1 %, unsupported CustomLinear\)") as record:
        quantize_model(net, plan, [x])
    (w,) = [r for r in record if r.category is CoverageWarning]
    message = str(w.message)
    assert message.startswith("1 weight module(s) stay float32, 13.1 % of weight parameters")
    assert "head.1: CustomLinear owns weight [10, 16]" in message
    assert w.filename == __file__  # points at the caller of quantize_model


def test_missing_layers_are_warned_identity_layers_are_not(net, x):
    plan = QuantPlan({"conv": QuantSpec(w_bits=8, a_bits=8), "fc": QuantSpec(w_bits=32, a_bits=32)})
    cov = plan_coverage(net, plan)
    kinds = {f.name: f.kind for f in cov.float_layers}
    assert kinds == {"fc": "identity", "head.1": "unsupported"} and cov.flops is None
    assert cov.float_layers[0].name == "fc"  # largest first
    assert "fc (83.9 %, kept at 32/32 by the plan)" in cov.describe()
    with pytest.warns(CoverageWarning) as record:
        quantize_model(net, plan, [x])
    message = str(record[0].message)
    assert message.startswith("1 weight module(s) stay float32, 13.1 %") and "head.1" in message
    partial = QuantPlan({"fc": QuantSpec(w_bits=8, a_bits=8)})
    with pytest.warns(CoverageWarning, match=r"conv \(3\.0 %, not in plan\)"):
        quantize_model(net, partial, [x])
    with warnings.catch_warnings():
        warnings.simplefilter("error", CoverageWarning)
        quantize_model(net, QuantPlan({}))  # the float model on purpose
        quantize_model(net, partial, [x], warn_float=False)


def test_tied_and_root_parameters_count_once():
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(10, 4)
            self.head = nn.Linear(4, 10, bias=False)
            self.head.weight = self.embed.weight
            self.pos = nn.Parameter(torch.zeros(1, 3, 4))  # owned by the model itself

        def forward(self, ids):
            return self.head(self.embed(ids) + self.pos)

    model = Tied()
    cov = plan_coverage(model, QuantPlan({"embed": QuantSpec(w_bits=8, a_bits=32)}))
    assert cov.weight_params == 40 + 12 and cov.covered_params == 40
    names = {f.name: (f.kind, f.weight_params) for f in cov.float_layers}
    assert names == {"": ("unsupported", 12), "head": ("not_in_plan", 0)}  # the tied table is covered
    assert "<model> (23.1 %, unsupported Tied)" in cov.describe()


@pytest.mark.parametrize(
    ("fraction", "text"),
    [
        (0.0, "0.0 %"),
        (1e-5, "<0.1 %"),
        (0.0123, "1.2 %"),
        (0.99949, "99.9 %"),
        (0.9996, ">99.9 %"),
        (1.0, "100.0 %"),
    ],
)
def test_shares_never_round_to_full_or_nothing(fraction, text):
    assert format_share(fraction) == text
