"""RuntimeFactory: the shared parts give the same runtime as one built alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from workbench.runtime import AdaptiveRuntime, RuntimeBudgetError, RuntimeConfig, RuntimeFactory, stack_inputs

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CFG = RuntimeConfig(probe_samples=32)


@pytest.mark.parametrize("policy", ["learned", "cascade"])
def test_factory_runtime_equals_a_runtime_built_alone(digits_cnn_task, policy):
    task = digits_cnn_task
    factory = RuntimeFactory.build(task.model, task.calib_loader, config=CFG)
    # all-2-bit costs a quarter of all-8-bit (8-bit activations either way)
    assert min(factory.rung_costs) == pytest.approx(0.25 * factory.top_cost)
    assert factory.rung_costs == sorted(factory.rung_costs)
    budget = 0.5 * factory.top_cost
    shared = factory.runtime(policy, budget)
    alone = AdaptiveRuntime(task.model, policy, budget, calib=task.calib_loader, config=CFG)
    assert shared.smodel is factory.smodel and shared.probe is factory.probe
    assert shared.ladder == alone.ladder and np.allclose(shared.rung_costs, alone.rung_costs)
    assert (shared.probe_rung, shared.escalation_rung) == (alone.probe_rung, alone.escalation_rung)
    assert shared.knob == pytest.approx(alone.knob)
    x = stack_inputs(task.test_loader)[:96]
    a, s = alone.serve(x), shared.serve(x)
    assert np.array_equal(a.rung, s.rung) and np.allclose(a.cost, s.cost) and a.runs == s.runs
    assert torch.allclose(a.logits, s.logits)
    assert s.cost.mean() <= budget * 1.001
    with pytest.raises(RuntimeBudgetError, match="feasible budgets are >="):
        factory.runtime(policy, 0.1 * factory.top_cost)
