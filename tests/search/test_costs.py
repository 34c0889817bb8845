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
