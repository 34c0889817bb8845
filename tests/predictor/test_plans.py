"""Plan generation (workbench.predictor.plans) on digits_cnn with a hand-made sensitivity."""

from __future__ import annotations

import numpy as np
import pandas as pd

from tests.predictor.helpers import BITS, SMALL
from workbench import predictor as P
from workbench.predictor import PlanDatasetConfig, generate_plans, plan_id
from workbench.quant import QuantPlan, quantizable_layers
from workbench.sensitivity import SensitivityResult
from workbench.tasks import Task


def test_generated_plans_are_deterministic_distinct_and_extend(task: Task, sens: SensitivityResult) -> None:
    names = quantizable_layers(task.model)
    a = generate_plans(names, SMALL, sensitivity=sens)
    b = generate_plans(names, SMALL, sensitivity=sens)
    assert [plan_id(p) for _, p in a] == [plan_id(p) for _, p in b]
    assert len({plan_id(p) for _, p in a}) == len(a) == 36
    sources = [s for s, _ in a]
    n_anchor = sources.count("anchor")
    assert 6 <= n_anchor <= 8  # an anchor equal to an earlier plan is dropped
    assert sources == ["random"] * 20 + ["anchor"] * n_anchor + ["stratified"] * (16 - n_anchor)
    bigger = generate_plans(names, PlanDatasetConfig(n_random=30, n_stratified=0), sensitivity=sens)
    assert [plan_id(p) for _, p in bigger[:20]] == [plan_id(p) for _, p in a[:20]]
    other_seed = generate_plans(names, PlanDatasetConfig(n_random=20, n_stratified=0, seed=1))
    assert [plan_id(p) for _, p in other_seed] != [plan_id(p) for _, p in a[:20]]
    no_sens = generate_plans(names, SMALL)
    assert {s for s, _ in no_sens} == {"random"}
    for _, plan in a:
        assert set(plan) == set(names)
        assert all(spec.w_bits in BITS and spec.a_bits == 8 for spec in plan.layers.values())


def test_stratified_plans_span_widest_to_narrowest(task: Task, sens: SensitivityResult) -> None:
    names = quantizable_layers(task.model)
    cfg = PlanDatasetConfig(n_random=0, n_stratified=60, a_bits=(4, 8))
    plans = generate_plans(names, cfg, sensitivity=sens)
    mean_bits = np.array([np.mean([p[n].w_bits for n in names]) for _, p in plans])
    assert mean_bits.max() >= 7.0 and mean_bits.min() <= 3.0
    assert np.histogram(mean_bits, bins=[2, 4, 6, 8.1])[0].min() >= 5  # every third of the range is populated
    a_bits = {p[n].a_bits for _, p in plans for n in names}
    assert a_bits == {4, 8}


def test_anchor_drops_spread_budgets_over_log_drop(task: Task, sens: SensitivityResult) -> None:
    fracs = [i / 7 for i in range(8)]
    xp, fp = P._drop_map(fracs, [-0.4, 0, 0, 0.1, 5, 50, 90, 87])
    np.testing.assert_allclose(xp, np.log1p([0, 0.1, 5, 50, 90]))  # running max, flat runs cut to the last
    np.testing.assert_allclose(fp, [fracs[2], fracs[3], fracs[4], fracs[5], fracs[6]])
    assert P._drop_map(fracs, [0, 0, 0, 0, 0, 0, 0, 0.3]) is None  # nothing to stratify
    names = quantizable_layers(task.model)
    seen: list[list[QuantPlan]] = []

    def measure(plans: list[QuantPlan]) -> list[float]:
        seen.append(plans)
        return [0, 0, 0, 0, 0, 0, 80, 90][: len(plans)]

    cfg = PlanDatasetConfig(n_random=0, n_stratified=30)
    plans = generate_plans(names, cfg, sensitivity=sens, measure=measure)
    assert len(seen) == 1 and [plan_id(p) for p in seen[0]] == [plan_id(p) for s, p in plans if s == "anchor"]
    wide = generate_plans(names, cfg, sensitivity=sens)
    narrow_bits = [np.mean([p[n].w_bits for n in names]) for s, p in plans if s == "stratified"]
    wide_bits = [np.mean([p[n].w_bits for n in names]) for s, p in wide if s == "stratified"]
    assert np.mean(narrow_bits) < np.mean(wide_bits)  # budgets moved to the lossy end of the path


def test_stratified_greedy_lowers_least_sensitive_layers_first(task: Task) -> None:
    names = quantizable_layers(task.model)
    sens_values = {"conv1": 1e3, "conv2": 1.0, "fc1": 1e-3, "fc2": 1e6}
    rows = [
        {
            "layer": n,
            "op_type": "x",
            "depth": d,
            "metric": "output_mse",
            "kind": "weight",
            "granularity": "per_channel",
            "w_bits": b,
            "a_bits": 32,
            "value": sens_values[n] * 4.0**-b,
        }  # fmt: skip
        for d, n in enumerate(names)
        for b in BITS
    ]
    fake = SensitivityResult(
        table=pd.DataFrame(rows), layers=pd.DataFrame({"layer": names, "depth": range(4)})
    )
    cfg = PlanDatasetConfig(n_random=0, n_stratified=15, stratify_noise=0.0)
    for _, plan in generate_plans(names, cfg, sensitivity=fake, weight_params=[1, 1, 1, 1]):
        w = [plan[n].w_bits for n in names]
        # equal sizes, no jitter: a more sensitive layer never has fewer bits than a less sensitive one
        assert w[3] >= w[0] >= w[1] >= w[2]
