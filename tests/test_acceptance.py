"""Acceptance figures of the foundation issue on the trained digits models (cached under data/models)."""

from __future__ import annotations

import pytest
import torch

from workbench.pipeline import evaluate_plan
from workbench.quant import QuantPlan, QuantSpec, quantize_model, save_packed, weight_error_table
from workbench.tasks import load_task


@pytest.fixture(scope="module")
def resnet_task():
    return load_task("digits_resnet", progress=False)


@pytest.mark.slow
def test_int8_per_channel_within_half_a_point_on_resnet(resnet_task):
    task = resnet_task
    plan = QuantPlan.uniform(task.model, QuantSpec(w_bits=8, a_bits=8, granularity="per_channel"))
    res = evaluate_plan(task, plan, name="int8")
    assert res.fp32_accuracy >= 0.97
    assert res.accuracy_drop_pp <= 0.5, res
    assert res.fp32_size_bytes / res.size_bytes > 3.8


@pytest.mark.slow
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_packed_file_within_10_percent_of_bit_count(resnet_task, bits, tmp_path):
    task = resnet_task
    plan = QuantPlan.uniform(task.model, QuantSpec(w_bits=bits, a_bits=8))
    q = quantize_model(task.model, plan, task.calib_loader)
    report = save_packed(q, tmp_path / "m.wbq")
    assert report.file_bytes <= 1.10 * report.theoretical_bytes, report
    summary = plan.summary(task.model, task.example_input())
    assert report.file_bytes <= 1.10 * summary.size_bytes, (report, summary)
    from workbench.quant import load_packed

    x = task.example_input(64)
    with torch.no_grad():
        assert torch.equal(load_packed(tmp_path / "m.wbq", task.model)(x), q(x))


@pytest.mark.slow
def test_weight_error_on_trained_layers(resnet_task):
    errors = weight_error_table(resnet_task.model, bits=(2, 3, 4, 5, 6, 8))
    for (_layer, _gran), g in errors.groupby(["layer", "granularity"]):
        mse = g.sort_values("w_bits")["mse"].to_numpy()
        assert (mse[:-1] > mse[1:]).all()
    pivot = errors.pivot_table(index=["layer", "w_bits"], columns="granularity", values="mse")
    assert (pivot["per_channel"] <= pivot["per_tensor"] * (1 + 1e-6)).all()
