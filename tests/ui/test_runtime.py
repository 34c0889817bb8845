"""Figures and the budget explorer of runtime adaptation (workbench.ui.runtime) on the trained digits_cnn task."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from workbench.runtime import (
    AdaptiveRuntime,
    RuntimeConfig,
    ServeResult,
    _inputs,
    _labels,
    evaluate_runtime,
)
from workbench.ui.runtime import (
    BudgetExplorer,
    per_input_figure,
    rung_histogram_figure,
    runtime_tradeoff_figure,
    static_front_figure,
)

CONFIG = RuntimeConfig(probe_samples=32)
BUDGETS = (0.2, 0.45, 0.6)  # 0.2 is below the all-2-bit map (0.25 of the 8-bit cost): infeasible
POLICIES = ("rule", "cascade")


@pytest.fixture(scope="module")
def ev(digits_cnn_task, one_torch_thread):
    return evaluate_runtime(
        digits_cnn_task, budgets=BUDGETS, policies=POLICIES, shifts=("clean", "noise"), config=CONFIG
    )


@pytest.fixture(scope="module")
def test_data(digits_cnn_task):
    loader = digits_cnn_task.test_loader
    return _inputs(loader), _labels(loader)


@pytest.fixture(scope="module")
def explorer(digits_cnn_task, test_data, one_torch_thread):
    x, y = test_data
    return BudgetExplorer(digits_cnn_task, x_eval=x, y_eval=y, config=CONFIG, policy="rule", fraction=0.45)


@pytest.fixture(scope="module")
def served(digits_cnn_task, test_data, explorer):
    """A runtime sharing the explorer's model and probe, and a batch of 12 with input 3 set to NaN."""
    x, _ = test_data
    rt = AdaptiveRuntime(
        digits_cnn_task.model,
        "cascade",
        0.45 * explorer.top_cost,
        calib=explorer.x_cal,
        config=CONFIG,
        smodel=explorer.smodel,
        probe=explorer.probe,
        calib_logits=explorer.calib_logits,
    )
    xb = x[:12].clone()
    xb[3, 0, 2, 2] = float("nan")
    return rt, xb, rt.serve(xb)


def _feasible(table, data):
    rows = table[table["data"] == data]
    return rows[np.isfinite(rows["accuracy"].to_numpy(float))]


# ------------------------------------------------------------------------------------------- tradeoff figures


@pytest.mark.parametrize("data", ["clean", "noise"])
def test_tradeoff_figure_has_a_trace_per_policy_and_the_static_points(ev, data):
    before = ev.table.copy()
    fig = runtime_tradeoff_figure(ev.table, data=data)
    assert ev.table.equals(before), "the figure must not modify the table"
    rows = _feasible(ev.table, data)
    pols = list(dict.fromkeys(rows["policy"]))
    assert set(POLICIES) <= set(pols)
    assert len(fig.data) == len(pols) + 1
    assert fig.layout.title.text and data in fig.layout.title.text
    assert fig.layout.xaxis.title.text == "average BOPs per input (bit operations)"
    assert fig.layout.yaxis.title.text == "accuracy (%)"
    by_name = {t.name: t for t in fig.data}
    for pol in POLICIES:
        r = rows[rows["policy"] == pol].sort_values("budget_fraction")
        t = by_name[pol]
        # the 0.2 budget is infeasible (NaN accuracy) and left out
        assert len(t.x) == len(r) == len(BUDGETS) - 1
        assert np.allclose(t.x, r["avg_bops"]) and np.allclose(t.y, 100 * r["accuracy"])
    static = fig.data[-1]
    st = rows[np.isfinite(rows["static_accuracy"].to_numpy(float))]
    assert len(static.x) == len(st) >= len(POLICIES) * (len(BUDGETS) - 1)
    assert np.allclose(static.x, st["static_cost"]) and np.allclose(static.y, 100 * st["static_accuracy"])
    # the static point never costs more than the dynamic run it is compared with
    dyn = rows.loc[st.index]
    assert (st["static_cost"].to_numpy() <= dyn["avg_cost"].to_numpy() * (1 + 1e-9)).all()


def test_tradeoff_figure_rejects_unknown_data(ev):
    with pytest.raises(ValueError, match="blur"):
        runtime_tradeoff_figure(ev.table, data="blur")


def test_static_front_figure(ev):
    fig = static_front_figure(ev.static_maps, ev.table, data="noise")
    rows = _feasible(ev.table, "noise")
    pols = list(dict.fromkeys(rows["policy"]))
    assert len(fig.data) == 2 + len(pols)
    assert fig.data[0].name == "static maps" and fig.data[1].name == "static Pareto front"
    sm = ev.static_maps[ev.static_maps["data"] == "noise"]
    assert len(fig.data[0].x) == len(sm)
    front_x, front_y = np.array(fig.data[1].x), np.array(fig.data[1].y)
    assert (np.diff(front_x) >= 0).all() and (np.diff(front_y) > 0).all()
    assert math.isclose(front_y[-1], 100 * sm["accuracy"].max())
    assert "BOPs" in fig.layout.xaxis.title.text and fig.layout.yaxis.title.text == "accuracy (%)"
    assert fig.layout.title.text


# ------------------------------------------------------------------------------------------- serving figures


def test_rung_histogram_counts_the_served_inputs(served):
    rt, xb, res = served
    fig = rung_histogram_figure(res, rt)
    assert len(fig.data) == 1
    bar = fig.data[0]
    assert list(bar.x) == list(range(len(rt.ladder)))
    assert int(np.sum(bar.y)) == len(xb) - 1  # input 3 was rejected
    for r in set(res.rung[res.rung >= 0].tolist()):
        assert bar.y[r] == int(np.sum(res.rung == r))
    maps = [c[0] for c in bar.customdata]
    assert maps == [" ".join(f"{g}:{b}" for g, b in m.items()) for m in rt.ladder]
    assert "1 rejected" in fig.layout.title.text
    assert fig.layout.xaxis.title.text.startswith("rung") and fig.layout.yaxis.title.text == "inputs (count)"


def test_per_input_figure_titles(served, test_data):
    rt, xb, res = served
    _, y = test_data
    fig = per_input_figure(xb, res, rt, n=10, labels=y[:12])
    assert len(fig.data) == 10
    titles = [a.text for a in fig.layout.annotations]
    assert titles[3] == "rejected"
    pred = res.logits.argmax(1)
    for i in (0, 1, 2, 4, 9):
        r = int(res.rung[i])
        bits = rt.coster(rt.ladder[r]).avg_bits
        assert titles[i].startswith(f"rung {r} · {bits:.2f} b"), titles[i]
        assert f"pred {int(pred[i])} / true {int(y[i])}" in titles[i]
    assert np.allclose(fig.data[0].z, xb[0, 0].numpy())
    assert fig.layout.title.text
    assert len(per_input_figure(xb, res, rt).data) == 12  # n is capped at the batch


# ------------------------------------------------------------------------------------------- budget explorer


def test_explorer_slider_range_and_initial_values(explorer, test_data):
    x, _ = test_data
    rung_costs = [explorer.coster.value(m, "bops") for m in explorer.probe.ladder]
    assert math.isclose(explorer.slider.min, min(rung_costs) / explorer.top_cost)
    assert 0.2 < explorer.slider.min <= 0.4 and explorer.slider.max == 1.0
    assert set(explorer.policy.options) == {"rule", "learned", "cascade", "static"}
    assert {"accuracy", "avg_bops", "avg_weight_bits", "overhead_fraction"} <= set(explorer.values)
    assert isinstance(explorer.last_result, ServeResult) and len(explorer.last_result.rung) == len(x)
    assert explorer.widget.children


def test_explorer_more_budget_buys_more_bops(explorer):
    explorer.policy.value = "rule"
    explorer.slider.value = 0.4
    low = dict(explorer.values)
    assert low["avg_bops"] <= 0.4 * explorer.top_cost * 1.001
    assert low["accuracy"] >= 0.95, low
    explorer.slider.value = 0.9
    high = dict(explorer.values)
    assert high["avg_bops"] > 1.5 * low["avg_bops"], (low, high)
    assert high["avg_bops"] <= 0.9 * explorer.top_cost * 1.001
    assert high["avg_weight_bits"] > low["avg_weight_bits"] + 2, (low, high)
    # on digits_cnn the rule policy is at the FP32 accuracy at both budgets
    assert high["accuracy"] >= low["accuracy"] - 0.005, (low, high)
    assert "accuracy" in explorer.label.value and f"{100 * high['accuracy']:.2f} %" in explorer.label.value
    assert explorer.figure is not None and int(np.sum(explorer.figure.data[0].y)) == len(explorer.y_eval)


def test_explorer_policies_stay_within_budget(explorer):
    explorer.slider.value = 0.5
    seen = {}
    for pol in ("cascade", "learned", "static"):
        explorer.policy.value = pol
        v = explorer.values
        assert explorer.error is None and explorer.runtime.policy.name == pol
        assert v["avg_bops"] <= 0.5 * explorer.top_cost * 1.001, (pol, v)
        assert v["accuracy"] >= 0.9, (pol, v)
        assert v["overhead_fraction"] > 0
        seen[pol] = v["avg_bops"]
    assert len(set(seen.values())) == 3, seen
    explorer.policy.value = "rule"


def test_explorer_shows_an_infeasible_budget(explorer):
    # the learned policy first runs its probe rung (rung 1 on digits_cnn: the cheapest rung agreeing with FP32 on
    # 90 % of the calibration inputs), dearer than the all-2-bit map at the slider's minimum
    explorer.slider.value = 0.6
    explorer.policy.value = "learned"
    assert explorer.runtime.min_cost > explorer.slider.min * explorer.top_cost * (1 + 1e-6)
    explorer.slider.value = explorer.slider.min
    assert explorer.error is not None and explorer.last_result is None and explorer.runtime is None
    assert "below the cheapest cost" in explorer.label.value and "infeasible" in explorer.label.value
    assert explorer.error in explorer.label.value.replace("&#x27;", "'").replace("&gt;", ">")
    assert math.isnan(explorer.values["accuracy"])
    # the rule policy can run the cheapest map: the same budget is feasible for it
    explorer.policy.value = "rule"
    assert explorer.error is None and explorer.values["avg_bops"] <= explorer.budget * 1.001
    assert (explorer.last_result.rung == 0).all()


def test_explorer_rejects_bad_arguments(digits_cnn_task, test_data):
    x, y = test_data
    with pytest.raises(ValueError, match="policy"):
        BudgetExplorer(digits_cnn_task, x_eval=x, y_eval=y, config=CONFIG, policy="oracle")
    with pytest.raises(ValueError, match="labels"):
        BudgetExplorer(digits_cnn_task, x_eval=x, y_eval=y[:5], config=CONFIG)


def test_served_batch_keeps_the_good_inputs(served):
    _, xb, res = served
    assert set(res.errors) == {3}
    ok = np.arange(len(xb)) != 3
    assert torch.isfinite(res.logits[torch.from_numpy(ok)]).all()
    assert res.rung[3] == -1 and (res.rung[ok] >= 0).all()


def test_explorer_builds_runtimes_and_flat_metrics(explorer, served):
    rt = explorer.make_runtime("cascade", 0.45)
    shared, _, _ = served  # the same policy and budget, built by hand from the explorer's parts
    assert rt.smodel is explorer.smodel and rt.probe is explorer.probe
    assert rt.budget == pytest.approx(shared.budget) and rt.knob == pytest.approx(shared.knob)
    assert (rt.probe_rung, rt.escalation_rung) == (shared.probe_rung, shared.escalation_rung)
    metrics = explorer.to_metrics()
    finite = {k: v for k, v in explorer.values.items() if not math.isnan(v)}
    assert metrics == {f"explorer.{k}": v for k, v in finite.items()} and len(metrics) >= 6
