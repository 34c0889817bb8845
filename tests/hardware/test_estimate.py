"""Kernel dispatch and the cost estimator: hand-computed costs, monotonicity, fallbacks, conversions."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from workbench.hardware import CostEstimator, DispatchWarning, ProfileError, dispatch_plan, estimate_plans
from workbench.hardware.dispatch import int_containers, requested_precision
from workbench.hardware.profile import PrecisionProfile, load_profile
from workbench.models import build_model
from workbench.quant.spec import QuantPlan, QuantSpec

from .test_profile import _minimal


def _uniform(model: nn.Module, text: str) -> QuantPlan:
    return QuantPlan.from_shorthand(text, model)


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return build_model("digits_resnet").eval(), torch.randn(2, 1, 16, 16)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (None, ("fp32", 32, 32, False)),
        (QuantSpec(w_bits=8, a_bits=8), ("int8", 8, 8, False)),
        (QuantSpec(w_bits=4, a_bits=8), ("int8", 4, 8, False)),
        (QuantSpec(w_bits=4, a_bits=4), ("int4", 4, 4, False)),
        (QuantSpec(w_bits=3, a_bits=2), ("int4", 3, 2, False)),
        (QuantSpec(w_bits=2, a_bits=2), ("int2", 2, 2, False)),
        (QuantSpec(w_bits=16, a_bits=16), ("bf16", 16, 16, False)),
        (QuantSpec(w_bits=16, a_bits=16, float16_format="float16"), ("fp16", 16, 16, False)),
        (QuantSpec(w_bits=4, a_bits=32), ("fp32", 32, 32, True)),
        (QuantSpec(w_bits=4, a_bits=16), ("bf16", 16, 16, True)),
    ],
)
def test_requested_precision(spec, expected):
    assert requested_precision(spec) == expected


def test_single_linear_matches_hand_computed_roofline():
    prof = PrecisionProfile.from_dict(_minimal())
    model = nn.Sequential(nn.Linear(64, 32))
    x = torch.randn(1, 64)
    est = CostEstimator(model, x, prof, batch_size=4)
    e = est(QuantPlan({}))
    macs = 4 * 64 * 32
    nbytes = 64 * 32 * 4 + 4 * 64 * 4 + 4 * 32 * 4  # fp32 weights, input, output
    expected = 1e-6 + max(macs / 1e9, nbytes / 10e9)
    assert e.latency_ms == pytest.approx(1e3 * expected)
    assert e.macs == macs and e.bytes_moved == nbytes
    assert e.energy_mj == pytest.approx((macs * 4.0 + nbytes * 100.0) * 1e-9)


def test_int8_is_cheaper_than_fp32_on_every_profile_that_has_it(resnet):
    model, x = resnet
    plans = {"fp32": QuantPlan({}), "int8": _uniform(model, "uniform:w8a8:per_channel")}
    df = estimate_plans(model, x, plans, ["cpu_measured", "nvidia_t4", "nvidia_a100_sxm"], batch_size=32)
    lat = df.pivot(index="profile", columns="plan", values="latency_ms")
    assert (lat["int8"] < lat["fp32"]).all(), lat
    assert len(df) == 6 and (df["fallbacks"] == 0).all()


def test_bit_serial_latency_and_energy_fall_with_bits(resnet):
    model, x = resnet
    est = CostEstimator(model, x, "bitfusion", batch_size=16)
    e = {t: est(_uniform(model, f"uniform:{t}:per_channel")) for t in ("w8a8", "w4a8", "w4a4", "w2a2")}
    lat = [e[t].layer_ms for t in ("w8a8", "w4a8", "w4a4", "w2a2")]
    energy = [e[t].energy_mj for t in ("w8a8", "w4a8", "w4a4", "w2a2")]
    assert lat == sorted(lat, reverse=True) and lat[0] > 2 * lat[-1], lat
    assert energy == sorted(energy, reverse=True) and all(v > 0 for v in energy), energy


def test_conversions_appear_at_integer_float_boundaries(resnet):
    model, x = resnet
    est = CostEstimator(model, x, "cpu_measured", batch_size=32)
    layers = est.layers
    all_int = est(QuantPlan({n: QuantSpec(w_bits=8, a_bits=8) for n in layers}))
    alternating = est(QuantPlan({n: QuantSpec(w_bits=8, a_bits=8) for n in layers[::2]}))
    fp32 = est(QuantPlan({}))
    assert fp32.conversion_ms == 0.0
    assert all_int.conversion_ms > 0  # the input is quantized and the logits dequantized
    assert alternating.conversion_ms > 3 * all_int.conversion_ms
    # residual adds of an all-int8 model run in the integer domain and ReLUs fuse into the convs
    kinds = all_int.layers.set_index("node")
    assert (kinds.loc[kinds["kind"] == "elementwise", "precision"] == "int8").any()
    assert int_containers(
        model, est.dispatch(QuantPlan({n: QuantSpec(w_bits=8, a_bits=8) for n in layers}))
    ) >= {
        "",
        "layer1.0",
    }


def test_missing_kernel_falls_back_with_a_warning_naming_layers_or_errors_when_strict(resnet):
    model, x = resnet
    cpu = load_profile("cpu_measured")
    plan = _uniform(model, "uniform:w4a4:per_channel")
    with pytest.warns(
        DispatchWarning, match=r"no 'int4' kernel for 'conv'.*run at 'int8': conv1, layer1\.0\.conv1"
    ):
        d = dispatch_plan(model, plan, cpu)
    assert {v.precision for v in d.values()} == {"int8"} and all(v.fallback for v in d.values())
    with pytest.raises(ProfileError, match="no 'int4' kernel.*strict"):
        dispatch_plan(model, plan, cpu, strict=True)
    # a float layer on an int8-only NPU runs less precisely, and the warning says so
    with pytest.warns(DispatchWarning, match="LESS precise"):
        d = dispatch_plan(model, QuantPlan({}), load_profile("edge_tpu_int8"))
    assert {v.precision for v in d.values()} == {"int8"}
    # the estimator applies the same fallback and reports the layers
    e = CostEstimator(model, x, cpu, batch_size=8)(plan)
    assert len(e.fallback_layers) == len(d)
    with pytest.raises(ProfileError):
        CostEstimator(model, x, cpu, batch_size=8)(plan, strict=True)


def test_no_warning_when_the_profile_has_every_kernel(resnet):
    model, _ = resnet
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        d = dispatch_plan(model, _uniform(model, "uniform:w4a8:per_channel"), load_profile("cpu_measured"))
    assert {v.precision for v in d.values()} == {"int8"} and not any(v.fallback for v in d.values())
    assert {v.weight_bits for v in d.values()} == {4.0}


def test_weight_only_plans_keep_float_compute_but_read_fewer_weight_bytes(resnet):
    model, x = resnet
    est = CostEstimator(model, x, "nvidia_t4", batch_size=1)
    fp32 = est(QuantPlan({}))
    w4 = est(_uniform(model, "uniform:w4a32:per_channel"))
    assert w4.bytes_moved < fp32.bytes_moved
    assert set(w4.layers.loc[w4.layers["kind"] == "layer", "precision"]) == {"fp32"}
    assert not math.isnan(w4.latency_ms)


def test_search_cost_model_uses_the_profile(resnet):
    from workbench.search.objectives import CostModel

    model, x = resnet
    cm = CostModel(model, x, profile="nvidia_t4", batch_size=8)
    assert cm.latency_source == "profile:nvidia_t4"
    c8, c32 = cm(_uniform(model, "uniform:w8a8:per_channel")), cm(QuantPlan({}))
    assert 0 < c8.latency_ms < c32.latency_ms
    assert math.isnan(c8.energy_mj)  # the T4 profile publishes no energy figures
    bf = CostModel(model, x, profile="bitfusion", batch_size=8)
    assert (
        bf(_uniform(model, "uniform:w4a4:per_channel")).energy_mj
        < bf(_uniform(model, "uniform:w8a8")).energy_mj
    )
