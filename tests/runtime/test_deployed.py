"""The deployed ladder: each plan deployed once on real kernels, rungs switched without rebuilding, fallbacks named."""

from __future__ import annotations

import pytest
import torch

from workbench.quant.spec import PlanError, QuantPlan, QuantSpec
from workbench.runtime import DeployedLadder, _inputs, torch_ao_deployer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def real_ladder(digits_cnn_task):
    task = digits_cnn_task
    before = {k: v.clone() for k, v in task.model.state_dict().items()}
    calls = []
    inner = torch_ao_deployer()

    def counting(model, plan, calib):
        calls.append(len(plan))
        return inner(model, plan, calib)

    plans = [QuantPlan.from_shorthand("uniform:w4a8:per_channel", task.model), QuantPlan({})]
    ladder = DeployedLadder(task.model, plans, task.calib_loader, names=["int8", "fp32"], deployer=counting)
    return task, ladder, calls, before


def test_each_plan_deploys_once_on_real_kernels_and_switching_rebuilds_nothing(real_ladder):
    task, ladder, calls, before = real_ladder
    assert len(calls) == 2 and ladder.names == ["int8", "fp32"]
    assert ladder.rungs[0].deployment.kernels == {"int8": 4} and ladder.rungs[0].fallback is None
    assert ladder.rungs[1].deployment.kernels == {"fp32": 4}
    x = task.example_input(32)
    with torch.no_grad():
        ref = task.model(x).argmax(1)
    for i in range(6):  # per input and per micro-batch, alternating rungs
        out = ladder.run(x[i : i + 1] if i % 2 else x, i % 2)
        assert out.shape[1] == 10
    assert len(calls) == 2
    agree = (ladder.run(x, 0).argmax(1) == ref).float().mean().item()
    assert agree >= 0.9, agree
    torch.testing.assert_close(ladder.run(x, 1), task.model(x).detach(), rtol=1e-4, atol=1e-4)
    after = task.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_rung_costs_follow_the_plans(real_ladder):
    _, ladder, _, _ = real_ladder
    bops, bits = ladder.costs("bops"), ladder.costs("avg_bits")
    assert bits.tolist() == [4.0, 32.0]
    assert bops[0] == pytest.approx(bops[1] * 4 * 8 / (32 * 32))
    assert list(ladder.table()["kernels"]) == ["int8: 4", "fp32: 4"]
    with pytest.raises(ValueError, match="kind='latency'.*'bops', 'avg_bits'"):
        ladder.costs("latency")
    with pytest.raises(IndexError, match="rungs 0..1"):
        ladder.run(torch.zeros(1, 1, 8, 8), 2)


def _failing_for_int4(model, plan, calib):
    if any(s.w_bits == 4 for _, s in plan.items()):
        raise RuntimeError("no int4 kernel in this menu")
    return torch_ao_deployer()(model, plan, calib)


def test_a_rung_that_cannot_deploy_falls_back_with_its_reason(digits_cnn_task):
    task = digits_cnn_task
    x_cal = _inputs(task.calib_loader)[:64]
    plans = [QuantPlan.from_shorthand("uniform:w4a32", task.model), QuantPlan({})]
    sim = DeployedLadder(task.model, plans, x_cal, deployer=_failing_for_int4)
    assert sim.rungs[0].fallback == "RuntimeError: no int4 kernel in this menu"
    assert sim.rungs[0].deployment.kernels == {"fp32 (simulated)": 4}
    assert sim.table()["fallback"].tolist() == ["RuntimeError: no int4 kernel in this menu", ""]
    agree = (sim.run(x_cal, 0).argmax(1) == sim.run(x_cal, 1).argmax(1)).float().mean().item()
    assert agree >= 0.9
    dropped = DeployedLadder(task.model, plans, x_cal, deployer=_failing_for_int4, on_fail="drop")
    assert dropped.names == ["rung1"] and dropped.dropped == {
        "rung0": "RuntimeError: no int4 kernel in this menu"
    }
    with pytest.raises(RuntimeError, match="no int4 kernel"):
        DeployedLadder(task.model, plans, x_cal, deployer=_failing_for_int4, on_fail="raise")


def test_bad_ladders_are_refused_with_named_errors(digits_cnn_task):
    task = digits_cnn_task
    x_cal = _inputs(task.calib_loader)[:16]
    with pytest.raises(PlanError):
        DeployedLadder(task.model, [QuantPlan({"nope": QuantSpec()})], x_cal)
    with pytest.raises(ValueError, match="on_fail='retry'.*simulate"):
        DeployedLadder(task.model, [QuantPlan({})], x_cal, on_fail="retry")
    with pytest.raises(ValueError, match="plans is empty"):
        DeployedLadder(task.model, [], x_cal)
    with pytest.raises(ValueError, match="2 distinct names"):
        DeployedLadder(task.model, [QuantPlan({}), QuantPlan({})], x_cal, names=["a", "a"])
