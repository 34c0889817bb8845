"""Runtime adaptation: switchable weights, per-input scales, probe ladder, policies, budget enforcement, bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from workbench.runtime import (
    AdaptiveRuntime,
    MapCoster,
    Policy,
    ProbeEngine,
    ResourceManager,
    RuntimeBudgetError,
    RuntimeConfig,
    RuntimeInputError,
    SwitchableModel,
    _inputs,
    _labels,
    evaluate_runtime,
    shift_inputs,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CFG = RuntimeConfig(probe_samples=32)


@pytest.fixture(scope="module")
def shared(digits_cnn_task):
    task = digits_cnn_task
    x_cal = _inputs(task.calib_loader)
    smodel = SwitchableModel(task.model, w_bits=CFG.w_bits, a_bits=CFG.a_bits, groups=CFG.groups)
    coster = MapCoster(task.model, smodel, x_cal[:1])
    probe = ProbeEngine(smodel, coster).run(x_cal[:32])
    return task, x_cal, smodel, coster, probe


def _runtime(shared, policy, fraction, **kw):
    task, x_cal, smodel, coster, probe = shared
    top = coster.value({g: 8 for g in smodel.group_names}, "bops")
    return AdaptiveRuntime(
        task.model, policy, fraction * top, calib=x_cal, config=CFG, smodel=smodel, probe=probe, **kw
    )


def test_switchable_model_matches_float_and_leaves_the_model_alone(digits_cnn_task):
    task = digits_cnn_task
    before = {k: v.clone() for k, v in task.model.state_dict().items()}
    sm = SwitchableModel(task.model, a_bits=32, groups="layer")
    x = task.example_input(16)
    with torch.no_grad():
        ref = task.model(x)
    out = sm.run(x, {g: 32 for g in sm.group_names})
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    assert sm.group_names == ["conv1", "conv2", "fc1", "fc2"]
    assert all(torch.equal(before[k], v) for k, v in task.model.state_dict().items())


def test_activation_scales_are_per_input(shared):
    _, x_cal, smodel, _, _ = shared
    x = x_cal[:4].clone()
    m = {g: 4 for g in smodel.group_names}
    out = smodel.run(x, m)
    x2 = x.clone()
    x2[1] *= 5.0  # a different input in the batch must not change input 0's quantization
    out2 = smodel.run(x2, m)
    assert torch.equal(out[0], out2[0]) and torch.equal(out[2:], out2[2:])
    assert not torch.equal(out[1], out2[1])


def test_probe_ladder_runs_from_all_low_to_all_high_and_cost_rises(shared):
    _, _, smodel, coster, probe = shared
    costs = [coster.value(m, "bops") for m in probe.ladder]
    assert costs == sorted(costs) and len(probe.ladder) == len(smodel.group_names) * (len(CFG.w_bits) - 1) + 1
    assert set(probe.ladder[0].values()) == {2} and set(probe.ladder[-1].values()) == {8}
    t = probe.table.set_index(["group", "w_bits"])
    for g in smodel.group_names:
        assert t.loc[(g, 2), "downstream_kl"] > t.loc[(g, 8), "downstream_kl"]
        assert t.loc[(g, 2), "local_rel_mse"] > t.loc[(g, 8), "local_rel_mse"]
    # the cheap end really is cheap: all-2-bit BOPs are a quarter of all-8-bit
    assert costs[0] == pytest.approx(costs[-1] / 4)


@pytest.mark.parametrize("policy", ["static", "rule", "learned", "cascade"])
def test_every_policy_stays_within_the_budget_on_a_stream(shared, policy):
    task = shared[0]
    rt = _runtime(shared, policy, 0.55)
    x, y = _inputs(task.test_loader), _labels(task.test_loader)
    total_cost, correct = 0.0, 0
    for start in range(0, len(x), 64):
        res = rt.serve(x[start : start + 64])
        total_cost += res.cost.sum()
        correct += int((res.logits.argmax(1) == y[start : start + 64]).sum())
        assert res.inference_s > 0 and res.overhead_s >= 0
    assert total_cost / len(x) <= rt.budget * (1 + 1e-9)
    assert correct / len(x) >= 0.8, (policy, correct / len(x))
    if policy == "static":
        assert len(np.unique(rt.serve(x[:64]).rung)) == 1


def test_resource_manager_overrides_a_greedy_policy():
    class Greedy(Policy):
        name = "greedy"

        def scores(self, runtime, x, probe_logits):
            return np.zeros(x.shape[0])

        def choose(self, scores, knob, n_rungs):
            return np.full(len(scores), n_rungs - 1)

    manager = ResourceManager(5.0, np.array([1.0, 4.0, 10.0]))
    picks = []
    for _ in range(10):
        r = manager.admit(2)
        manager.charge([1.0, 4.0, 10.0][r])
        picks.append(r)
    assert manager.spent / manager.served <= 5.0 and manager.overrides > 0 and 2 in picks
    with pytest.raises(RuntimeBudgetError, match="feasible budgets are >= 1"):
        ResourceManager(0.5, np.array([1.0, 4.0]))
    assert Greedy().choose(np.zeros(3), 0.0, 4).tolist() == [3, 3, 3]


def test_infeasible_budget_names_the_cheapest_feasible(shared):
    with pytest.raises(RuntimeBudgetError, match="feasible budgets are >="):
        _runtime(shared, "rule", 0.1)  # below the all-2-bit map (0.25 of all-8-bit)


def test_bad_inputs_are_rejected_and_the_runtime_keeps_serving(shared):
    task = shared[0]
    rt = _runtime(shared, "rule", 0.5)
    x = _inputs(task.test_loader)[:8].clone()
    x[3, 0, 0, 0] = math.nan
    x[5, 0, 1, 1] = math.inf
    res = rt.serve(x)
    assert set(res.errors) == {3, 5} and "NaN or Inf" in res.errors[3]
    assert res.rung[3] == -1 and torch.isnan(res.logits[3]).all()
    ok = [i for i in range(8) if i not in (3, 5)]
    assert torch.isfinite(res.logits[ok]).all() and (res.rung[ok] >= 0).all()
    with pytest.raises(RuntimeInputError, match=r"do not match the model's input shape \[N, 1, 8, 8\]"):
        rt.serve(torch.zeros(2, 3, 8, 8))
    with pytest.raises(RuntimeInputError, match="floating point"):
        rt.serve(torch.zeros(2, 1, 8, 8, dtype=torch.int64))
    assert torch.isfinite(rt.serve(x[ok]).logits).all()  # still serving
    single = rt.serve(x[0])  # one unbatched input
    assert single.logits.shape == (1, 10)


def test_shifted_variants():
    torch.manual_seed(0)
    x = torch.randn(4, 1, 8, 8)
    assert torch.equal(shift_inputs(x, "clean"), x)
    assert torch.equal(shift_inputs(x, "noise", seed=1), shift_inputs(x, "noise", seed=1))
    c = shift_inputs(x, "contrast")
    assert c.reshape(4, -1).std(1) == pytest.approx(0.5 * x.reshape(4, -1).std(1), rel=1e-5)
    b = shift_inputs(x, "blur")
    assert b.shape == x.shape and b.reshape(4, -1).std(1).max() < x.reshape(4, -1).std(1).max()
    with pytest.raises(ValueError, match="shift 'rain' not valid"):
        shift_inputs(x, "rain")


def test_evaluate_runtime_compares_with_the_best_static_map_of_equal_cost(digits_cnn_task):
    ev = evaluate_runtime(
        digits_cnn_task, budgets=(0.5,), policies=("rule",), shifts=("clean", "blur"), config=CFG
    )
    oracle = ev.table[ev.table["policy"] == "oracle"]
    t = ev.table[ev.table["policy"] != "oracle"]
    assert list(t["data"]) == ["clean", "blur"] and (t["avg_cost"] <= t["budget"] * (1 + 1e-9)).all()
    # the oracle keeps the FP32 answer wherever some rung does, at no more than the all-8-bit cost
    assert (oracle["accuracy"] >= oracle["fp32_accuracy"] - 0.01).all() and len(oracle) == 2
    assert (oracle["avg_cost"] <= ev.info["top_cost"]).all()
    for _, row in t.iterrows():
        sm = ev.static_maps[ev.static_maps["data"] == row["data"]]
        within = sm[sm["cost"] <= row["avg_cost"] * (1 + 1e-9)]
        assert row["static_accuracy"] == pytest.approx(within["accuracy"].max())
        assert 2 <= row["avg_weight_bits"] <= 8 and row["overhead_fraction"] >= 0
    assert t["accuracy"].iloc[0] >= 0.9


def test_runtime_config_validation():
    with pytest.raises(ValueError, match="w_bits"):
        RuntimeConfig(w_bits=(1, 8))
    with pytest.raises(ValueError, match="budget_kind"):
        RuntimeConfig(budget_kind="watts")


def test_cli_adapt_writes_static_and_dynamic(tmp_path, monkeypatch):
    from workbench.cli import main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    path = tmp_path / "a.json"
    argv = [
        "adapt",
        "--model",
        "digits_cnn",
        "--budget",
        "0.5",
        "--probe-samples",
        "32",
        "--quiet",
        "--json",
        str(path),
    ]
    assert main(argv) == 0
    d = json.loads(path.read_text())
    for key in ("accuracy", "avg_bops", "avg_weight_bits"):
        assert d["static"][key] > 0 and d["dynamic"][key] > 0
    assert 0 <= d["dynamic"]["overhead_fraction"] < 1
    assert main(["adapt", "--model", "digits_cnn", "--budget", "0.1", "--quiet", "--no-track"]) == 2
