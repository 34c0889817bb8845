"""The search's cost model: the FP32 latency measurement's run count, and the costs of a plan equal to the plan
summary's figures of the same names (the cost model skips only the coverage)."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from workbench.quant.spec import QuantPlan, summarize
from workbench.search.costs import CostModel, measure_fp32_latency_ms


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 5)
    ).eval()


def test_latency_runs_stop_after_three_when_the_time_is_spent():
    net, calls = _net(), []
    net.register_forward_hook(lambda m, i, o: calls.append(1))
    x = torch.randn(2, 3, 8, 8)
    assert measure_fp32_latency_ms(net, x, batch=4, repeats=7, max_seconds=0.0) > 0
    assert len(calls) == 1 + 3  # warm-up, then the minimum of three timed runs
    calls.clear()
    measure_fp32_latency_ms(net, x, batch=4, repeats=5, max_seconds=1e9)
    assert len(calls) == 1 + 5


def test_plan_costs_equal_the_summary_figures():
    net = _net()
    x = torch.randn(2, 3, 8, 8)
    model = CostModel(net, x, fp32_latency_ms=1.0)
    for plan in (QuantPlan({}), QuantPlan.from_shorthand("uniform:w4a8:per_channel", net),
                 QuantPlan.from_shorthand("uniform:w2a32", net)):  # fmt: skip
        cost = model(plan)
        pairs = [p for p in model._pairs if plan.get(p[0]) is not None and plan.get(p[0]).w_bits < 32]
        summary = summarize(plan, net, model.costs, bn_pairs=pairs)
        for field in dataclasses.fields(cost):
            if hasattr(summary, field.name):
                assert getattr(cost, field.name) == getattr(summary, field.name), (plan, field.name)
        assert cost.latency_ms == summary.bops / summary.fp32_bops
    assert model.fp32.bops == model.fp32.fp32_bops


def test_in_context_latency_is_the_measured_layer_estimate(digits_cnn_task, tmp_path, monkeypatch):
    """``profile="in_context"``: latencies per sample from the per-layer costs measured on this machine (the
    estimator's figure over the batch), in the search's trials too; energy needs a profile with figures."""
    import pytest

    from workbench.hardware.layer_costs import IN_CONTEXT, estimate_latency
    from workbench.search import SearchConfig, SearchError, run_search

    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path))  # the per-machine cost cache goes there
    task = digits_cnn_task
    cfg = SearchConfig(strategy="uniform", objectives=("accuracy", "latency"), profile=IN_CONTEXT,
                       latency_batch_size=16, storage=":memory:", track=False, progress=False,
                       final_split=None)  # fmt: skip
    result = run_search(task, cfg)
    model = CostModel(task.model, task.example_input(), profile=IN_CONTEXT, batch_size=16,
                      calib=task.calib_loader)  # fmt: skip
    assert model.latency_source == "in_context" and model.layer_costs.key["input"][0][1][0] == 16
    assert list((tmp_path / "data" / "layer_costs").glob("*.json"))  # measured once, then read back
    for _, row in result.trials.iterrows():
        plan = QuantPlan.from_json(row["plan"])
        assert row["latency_ms"] == estimate_latency(model.layer_costs, plan) / 16
    assert model.fp32_latency_ms == estimate_latency(model.layer_costs, QuantPlan({})) / 16
    with pytest.raises(SearchError, match="energy"):
        SearchConfig(objectives=("accuracy", "energy"), profile=IN_CONTEXT)
