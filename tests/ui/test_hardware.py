"""Figures of hardware profiles, cost estimates and deployments (workbench.ui.hardware)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from workbench.hardware import CostEstimator, PrecisionProfile, load_profile
from workbench.hardware.deploy import DeployConfig, measure_deployment
from workbench.quant import QuantPlan, QuantSpec
from workbench.ui.hardware import (
    deploy_comparison_figure,
    deployed_front_figure,
    estimate_breakdown_figure,
    latency_accuracy_figure,
    profile_comparison_figure,
    search_latency_figure,
    throughput_table,
)

PROFILES = ("cpu_measured", "nvidia_t4", "nvidia_a100_sxm", "bitfusion", "edge_tpu_int8")
ORDER = ("fp32", "tf32", "bf16", "fp16", "fp8", "int8", "int4", "int2")


@pytest.fixture
def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10)).eval()


def _tiny_profile() -> PrecisionProfile:
    """A profile with fp32 conv / linear only (no depthwise kernel)."""
    op = {"fp32": {"macs_per_s": 1e9, "source": "s"}}
    return PrecisionProfile.from_dict(
        {
            "name": "tiny",
            "kind": "reference",
            "device": "test device",
            "memory": {"bandwidth_gbps": 10.0, "source": "s"},
            "ops": {"conv": op, "linear": op},
            "sources": {"s": "made up for a test"},
        }
    )


def test_profile_comparison_bars_follow_the_profiles():
    profs = [load_profile(n) for n in PROFILES]
    fig = profile_comparison_figure(profs)
    assert len(fig.data) == len(PROFILES)
    assert fig.layout.yaxis.type == "log"
    assert "MACs/s" in fig.layout.yaxis.title.text and fig.layout.xaxis.title.text == "precision"
    assert fig.layout.title.text
    by_name = {t.name.split(" ")[0]: t for t in fig.data}
    t4 = by_name["nvidia_t4"]
    assert list(t4.x) == ["fp32", "fp16", "int8", "int4"]
    assert list(t4.y) == [load_profile("nvidia_t4").ops["conv"][p].macs_per_s for p in t4.x]
    # bit-serial: int4 / int8 derived from the int2 brick rate (4 and 16 bricks per MAC), in canonical order
    bf = by_name["bitfusion"]
    assert list(bf.x) == ["int8", "int4", "int2"]
    brick = load_profile("bitfusion").ops["conv"]["int2"].macs_per_s
    assert list(bf.y) == pytest.approx([brick / 16, brick / 4, brick])
    assert list(by_name["edge_tpu_int8"].x) == ["int8"]
    # the category axis lists every precision drawn, in canonical order
    drawn = {p for t in fig.data for p in t.x}
    assert list(fig.layout.xaxis.categoryarray) == [p for p in ORDER if p in drawn]
    # names work as well as profile objects
    assert len(profile_comparison_figure(["nvidia_t4", "bitfusion"]).data) == 2


def test_profile_without_the_op_gets_no_trace_and_is_named():
    fig = profile_comparison_figure([load_profile("nvidia_t4"), _tiny_profile()], op="depthwise_conv")
    has_dw = bool(load_profile("nvidia_t4").precisions("depthwise_conv"))
    assert len(fig.data) == int(has_dw)
    assert "tiny" in fig.layout.title.text
    fig = profile_comparison_figure([_tiny_profile()], op="elementwise")
    assert len(fig.data) == 0 and "elements/s" in fig.layout.yaxis.title.text


def test_throughput_table_matches_op_cost():
    table = throughput_table(PROFILES)
    assert list(table.index) == list(PROFILES)
    precs = [c for c in table.columns if c not in ("kind", "cost_model")]
    assert precs == [p for p in ORDER if p in precs] and "int2" in precs
    for name in PROFILES:
        prof = load_profile(name)
        for p in precs:
            value = table.loc[name, p]
            if p in prof.precisions("conv"):
                assert value == prof.op_cost("conv", p).macs_per_s
            else:
                assert math.isnan(value)
    assert table.loc["bitfusion", "cost_model"] == "bit_serial"
    assert table.loc["cpu_measured", "kind"] == "measured"


def _latency_frame() -> pd.DataFrame:
    rows = []
    for prof, scale in (("p1", 1.0), ("p2", 10.0), ("p3", 0.1)):
        for plan, lat, acc in (("A", 1.0, 0.90), ("B", 2.0, 0.95), ("C", 3.0, 0.93)):
            rows.append(
                {"plan": plan, "profile": prof, "latency_ms": lat * scale, "accuracy": acc, "batch_size": 8}
            )
    return pd.DataFrame(rows)


def test_latency_accuracy_one_subplot_per_profile():
    df = _latency_frame()
    fig = latency_accuracy_figure(df)
    assert len(fig.data) == 2 * 3  # plans + front per profile
    assert len(latency_accuracy_figure(df, front=False).data) == 3
    assert [a.text for a in fig.layout.annotations] == ["p1", "p2", "p3"]
    for axis in ("xaxis", "xaxis2", "xaxis3"):
        ax = fig.layout[axis]
        assert ax.type == "log" and ax.matches is None
        assert ax.title.text == "latency (ms per batch of 8)"
    assert fig.layout.yaxis.title.text == "accuracy (%)"
    points = [t for t in fig.data if "front" not in t.name]
    assert [t.name for t in points] == ["p1", "p2", "p3"]
    assert list(points[1].x) == [10.0, 20.0, 30.0]
    assert list(points[1].y) == pytest.approx([90.0, 95.0, 93.0])
    assert list(points[1].text) == ["A", "B", "C"]
    assert points[1].xaxis == "x2"
    front = [t for t in fig.data if t.name == "p2 front"][0]
    assert list(front.x) == [10.0, 20.0]  # C is slower and less accurate than B
    assert latency_accuracy_figure(df, log_x=False).layout.xaxis.type == "linear"
    with pytest.raises(ValueError, match="lacks column"):
        latency_accuracy_figure(df.drop(columns=["accuracy"]))


def test_latency_accuracy_custom_columns_and_missing_rows():
    df = _latency_frame().rename(
        columns={"plan": "name", "profile": "target", "latency_ms": "ms", "accuracy": "acc"}
    )
    df.loc[0, "acc"] = np.nan
    fig = latency_accuracy_figure(
        df, profile_col="target", latency_col="ms", accuracy_col="acc", label_col="name"
    )
    assert list(fig.data[0].text) == ["B", "C"]


def test_estimate_breakdown_bars_sum_to_the_estimate(model):
    x = torch.randn(1, 1, 8, 8)
    plan = QuantPlan({"0": QuantSpec(w_bits=8, a_bits=8), "3": QuantSpec(w_bits=16, a_bits=16)})
    est = CostEstimator(model, x, "cpu_measured", batch_size=4)(plan)
    fig = estimate_breakdown_figure(est)
    names = [t.name for t in fig.data]
    assert set(names) == set(est.layers["precision"]) and names == [p for p in ORDER if p in names]
    assert {"int8", "bf16"} <= set(names)
    total = sum(float(np.sum(t.y)) for t in fig.data)
    assert total == pytest.approx(est.latency_ms)
    for t in fig.data:
        rows = est.layers[est.layers["precision"] == t.name]
        assert list(t.x) == list(rows["node"])
        assert list(t.y) == pytest.approx(list(rows["latency_ms"]))
    assert list(fig.layout.xaxis.categoryarray) == list(est.layers["node"])
    assert "cpu_measured" in fig.layout.title.text and f"{est.latency_ms:.4g} ms" in fig.layout.title.text
    assert fig.layout.yaxis.title.text == "estimated latency (ms per batch of 4)"


def test_deploy_comparison_shows_every_run(model):
    torch.manual_seed(1)
    calib = torch.randn(16, 1, 8, 8)
    res = measure_deployment(
        model,
        QuantPlan.uniform(model, QuantSpec(w_bits=8, a_bits=8)),
        calib,
        example_input=calib,
        evaluate=lambda m: 0.75,
        profile="cpu_measured",
        config=DeployConfig(batch_size=8, repeats=3, warmup=1, threads=1),
    )
    fig = deploy_comparison_figure(res)
    assert [t.name for t in fig.data] == ["FP32", "deployed"]
    assert list(fig.data[0].y) == list(res.fp32.times_ms) and len(fig.data[1].y) == 3
    assert list(fig.data[1].y) == list(res.deployed.times_ms)
    assert f"speedup {res.speedup:.2f}x" in fig.layout.title.text
    assert "FP32 75.00 %" in fig.layout.title.text and "deployed 75.00 %" in fig.layout.title.text
    assert fig.layout.yaxis.title.text == "latency per batch of 8 (ms)"
    assert len(fig.layout.shapes) == 1 and fig.layout.shapes[0].y0 == pytest.approx(res.estimated_latency_ms)
    unknown = dataclasses.replace(res, accuracy=math.nan, estimated_latency_ms=None)
    fig = deploy_comparison_figure(unknown)
    assert "deployed n/a" in fig.layout.title.text and len(fig.layout.shapes) == 0


def test_search_latency_figure_from_trials():
    trials = pd.DataFrame(
        {
            "label": ["a", "b", "c", "d", "e"],
            "accuracy": [0.90, 0.95, 0.93, 0.99, 0.97],
            "latency_ms": [1.0, 2.0, 3.0, 0.5, 4.0],
            "feasible": [True, True, True, True, False],
            "accuracy_source": ["measured", "measured", "measured", "skipped_over_budget", "measured"],
        }
    )
    fig = search_latency_figure(trials)
    assert len(fig.data) == 2
    assert list(fig.data[0].x) == [1.0, 2.0, 3.0, 4.0]  # the over-budget plan is not drawn
    assert list(fig.data[1].x) == [1.0, 2.0] and list(fig.data[1].text) == ["a", "b"]  # e is infeasible
    assert fig.layout.xaxis.title.text == "estimated latency (ms per sample)"
    assert fig.layout.yaxis.title.text == "accuracy (%)"
    with pytest.raises(TypeError):
        search_latency_figure([1, 2])


def test_latency_accuracy_labels_coincident_plans_once():
    df = pd.DataFrame(
        {
            "plan": ["fp32", "w8a8", "w4a4"],
            "profile": ["edge"] * 3,
            "latency_ms": [0.5, 0.5, 0.3],
            "accuracy": [0.98, 0.98, 0.97],
        }
    )
    fig = latency_accuracy_figure(df)
    assert list(fig.data[0].text) == ["fp32 = w8a8", "", "w4a4"]
    assert list(fig.data[0].customdata) == ["fp32", "w8a8", "w4a4"]
    assert list(fig.data[1].x) == [0.3, 0.5] and fig.layout.xaxis.title.text == "latency (ms)"


def test_deployed_front_figure_draws_searched_uniform_and_estimates():
    table = pd.DataFrame({
        "plan": ["uniform fp32", "uniform int8", "searched 1", "searched 2", "searched 3"],
        "kind": ["uniform", "uniform", "searched", "searched", "searched"],
        "metric": [0.99, 0.97, 0.98, 0.96, 0.99],
        "measured_ms": [10.0, 6.0, 5.0, 5.5, 9.0],
        "estimated_ms": [float("nan"), float("nan"), 4.0, 6.0, 8.0],
    })  # fmt: skip
    fig = deployed_front_figure(table)
    searched, front, uniform, est = fig.data
    assert list(searched.x) == [5.0, 5.5, 9.0] and list(uniform.text) == ["uniform fp32", "uniform int8"]
    assert list(front.x) == [5.0, 9.0] and list(front.y) == [0.98, 0.99]  # searched 2 is beaten by searched 1
    assert list(est.x) == [4.0, 5.0, None, 6.0, 5.5, None, 8.0, 9.0, None]
    with pytest.raises(TypeError, match="DeployedFront"):
        deployed_front_figure([1, 2])
