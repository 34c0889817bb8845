"""Baseline searches: exact ILP, greedy / AIMET curves, uniform plans, the control loop, even selection."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from workbench.quant.spec import FP32, QuantPlan
from workbench.search.baselines import (
    Candidate,
    aimet_candidates,
    control_loop_candidates,
    greedy_candidates,
    ilp_candidates,
    ilp_solve,
    select_evenly,
    uniform_candidates,
    unit_tables,
)
from workbench.search.objectives import CostModel
from workbench.search.space import SearchSpace, SpaceConfig
from workbench.sensitivity import TABLE_COLUMNS, SensitivityResult

LAYERS = ("0", "2", "4", "7")
METRICS = ("omega", "output_mse", "acc_drop")


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 8 * 8, 10),
    )


def fake_sensitivity(
    values: dict[str, dict[int, float]] | None = None, *, seed: int = 0
) -> SensitivityResult:
    """A SensitivityResult from a lookup table (every metric gets the same values, per_tensor 1.5x larger)."""
    rng = np.random.default_rng(seed)
    if values is None:
        values = {}
        for layer in LAYERS:
            scale = rng.uniform(0.5, 2.0)
            values[layer] = {b: scale * 4.0 ** (-b) for b in (2, 3, 4, 6, 8)}
    rows = [
        {
            "layer": layer, "op_type": "Conv2d", "depth": depth, "metric": metric, "kind": "weight",
            "granularity": g, "w_bits": b, "a_bits": 32, "value": v * (1.5 if g == "per_tensor" else 1.0),
        }
        for depth, layer in enumerate(LAYERS)
        for metric in METRICS
        for g in ("per_tensor", "per_channel")
        for b, v in values[layer].items()
    ]  # fmt: skip
    rows += [
        {
            "layer": layer, "op_type": "Conv2d", "depth": depth, "metric": "hessian_trace", "kind": "layer",
            "granularity": "per_tensor", "w_bits": 32, "a_bits": 32, "value": 1.0,
        }
        for depth, layer in enumerate(LAYERS)
    ]  # fmt: skip
    return SensitivityResult(
        table=pd.DataFrame(rows, columns=TABLE_COLUMNS),
        layers=pd.DataFrame({"layer": list(LAYERS), "depth": range(len(LAYERS))}),
    )


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return tiny_model()


@pytest.fixture(scope="module")
def cost_model(model: nn.Module) -> CostModel:
    return CostModel(model, torch.zeros(1, 1, 8, 8), fp32_latency_ms=1.0)


@pytest.fixture(scope="module")
def space(model: nn.Module) -> SearchSpace:
    return SearchSpace(model, SpaceConfig(w_bits=(2, 4, 8)))


@pytest.fixture(scope="module")
def sens() -> SensitivityResult:
    return fake_sensitivity()


def unit_bits(space: SearchSpace, plan: QuantPlan) -> dict[str, int]:
    out = {}
    for u in space.units:
        bits = {plan.get(layer, FP32).w_bits for layer in u.layers}
        assert len(bits) == 1, f"group {u.name} members differ: {bits}"
        out[u.name] = bits.pop()
    return out


# ============================================================================================ ILP core


def brute_force(
    s: np.ndarray, c: np.ndarray, budget: float, allowed: np.ndarray | None = None
) -> float | None:
    best = None
    for combo in itertools.product(range(s.shape[1]), repeat=s.shape[0]):
        rows = np.arange(s.shape[0])
        if allowed is not None and not allowed[rows, combo].all():
            continue
        if c[rows, combo].sum() <= budget:
            val = float(s[rows, combo].sum())
            best = val if best is None else min(best, val)
    return best


@pytest.mark.parametrize("seed", range(8))
def test_ilp_solve_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    s = rng.uniform(0, 10, size=(4, 3))
    c = rng.uniform(1, 10, size=(4, 3))
    allowed = rng.uniform(size=(4, 3)) > 0.2 if seed % 2 else None
    if allowed is not None:
        allowed[np.arange(4), rng.integers(0, 3, size=4)] = True
    lo = np.where(allowed if allowed is not None else True, c, np.inf).min(axis=1).sum()
    hi = np.where(allowed if allowed is not None else True, c, -np.inf).max(axis=1).sum()
    for budget in np.linspace(lo, hi, 7):
        choice = ilp_solve(s, c, budget, allowed=allowed)
        expected = brute_force(s, c, budget, allowed)
        assert choice is not None and expected is not None
        rows = np.arange(4)
        assert c[rows, choice].sum() <= budget
        if allowed is not None:
            assert allowed[rows, choice].all()
        assert s[rows, choice].sum() == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_ilp_solve_integer_instances_and_infeasible() -> None:
    rng = np.random.default_rng(42)
    for _ in range(5):
        s = rng.integers(0, 100, size=(4, 3)).astype(float)
        c = rng.integers(1, 20, size=(4, 3)).astype(float)
        budget = float(rng.integers(c.min(axis=1).sum(), c.max(axis=1).sum() + 1))
        choice = ilp_solve(s, c, budget)
        assert s[np.arange(4), choice].sum() == brute_force(s, c, budget)
    assert ilp_solve(np.ones((2, 2)), np.ones((2, 2)), 1.5) is None
    with pytest.raises(ValueError, match="shape"):
        ilp_solve(np.ones((2, 2)), np.ones((2, 3)), 1.0)
    with pytest.raises(ValueError, match="no allowed"):
        ilp_solve(np.ones((2, 2)), np.ones((2, 2)), 5.0, allowed=np.array([[True, True], [False, False]]))


# ============================================================================================ tables


def test_unit_tables(space: SearchSpace, cost_model: CostModel, sens: SensitivityResult) -> None:
    s, c = unit_tables(space, cost_model, sens, metric="omega", cost="weight_size")
    assert list(s.index) == list(LAYERS) and list(s.columns) == [2, 4, 8]
    expected = sens.matrix("omega")[[2, 4, 8]]
    np.testing.assert_allclose(s.to_numpy(), expected.to_numpy())
    # the plan cost is rest + the sum of the units' costs, for every uniform and a mixed plan
    for bits in ({"0": 2, "2": 4, "4": 8, "7": 2}, *({u: b for u in LAYERS} for b in (2, 4, 8))):
        plan = space.uniform_plan(2)
        for u, b in bits.items():
            plan = space.with_unit(plan, u, space.unit_spec(space.unit(u), {"w_bits": b}))
        table_total = c.attrs["rest"] + sum(c.loc[u, b] for u, b in bits.items())
        assert cost_model(plan).weight_bytes == pytest.approx(table_total)
    assert c.attrs["fp32_total"] == cost_model.fp32_cost.weight_bytes
    for kind, attr in (("bops", "bops"), ("size", "size_bytes"), ("latency", "latency_ms")):
        _, ck = unit_tables(space, cost_model, sens, cost=kind)
        total = ck.attrs["rest"] + ck[4].sum()
        assert getattr(cost_model(space.uniform_plan(4)), attr) == pytest.approx(total)


def test_unit_tables_sixteen_bits_and_errors(model: nn.Module, cost_model: CostModel, sens) -> None:
    sp16 = SearchSpace(model, SpaceConfig(w_bits=(4, 8, 16)))
    s, c = unit_tables(sp16, cost_model, sens)
    assert (s[16] == 0).all() and (c[16] > c[8]).all()
    with pytest.raises(ValueError, match=r"metric 'nope' is not in the sensitivity result; available"):
        unit_tables(sp16, cost_model, sens, metric="nope")
    with pytest.raises(ValueError, match="per-bit weight values"):
        unit_tables(sp16, cost_model, sens, metric="hessian_trace")
    with pytest.raises(ValueError, match=r"cost='flops' is not valid; choose one of \['weight_size'"):
        unit_tables(sp16, cost_model, sens, cost="flops")
    sp6 = SearchSpace(model, SpaceConfig(w_bits=(3, 8)))
    sparse = fake_sensitivity({layer: {2: 1.0, 8: 0.1} for layer in LAYERS})
    with pytest.raises(ValueError, match=r"no 'omega' value at 3 bits .* probed bits: \[2, 8\]"):
        unit_tables(sp6, cost_model, sparse)


# ============================================================================================ uniform


def test_uniform_candidates(model: nn.Module, space: SearchSpace) -> None:
    cands = uniform_candidates(space)
    assert [c.label for c in cands] == [
        "uniform w8a8 per_channel",
        "uniform w4a8 per_channel",
        "uniform w2a8 per_channel",
    ]
    for c in cands:
        specs = {c.plan[layer] for layer in LAYERS}
        assert len(specs) == 1 and specs.pop().granularity == "per_channel"
    both = SearchSpace(model, SpaceConfig(w_bits=(4, 8), granularities=("per_tensor", "per_channel")))
    labels = [c.label for c in uniform_candidates(both)]
    assert labels == [
        "uniform w8a8 per_channel", "uniform w8a8 per_tensor", "uniform w4a8 per_channel", "uniform w4a8 per_tensor",
    ]  # fmt: skip
    # units with different choices: only the common bits; a16-only activations: a = max choice
    mixed = SearchSpace(
        model, SpaceConfig(w_bits=(2, 4, 8), a_bits=(16,), overrides={"7": {"w_bits": (4, 8, 16)}})
    )
    assert [c.label for c in uniform_candidates(mixed)] == [
        "uniform w8a16 per_channel",
        "uniform w4a16 per_channel",
    ]


# ============================================================================================ greedy / AIMET


def test_greedy_curve(space: SearchSpace, cost_model: CostModel, sens: SensitivityResult) -> None:
    curve = greedy_candidates(space, cost_model, sens, metric="output_mse", cost="weight_size")
    assert curve[0].label == "greedy step 0" and unit_bits(space, curve[0].plan) == dict.fromkeys(LAYERS, 8)
    assert unit_bits(space, curve[-1].plan) == dict.fromkeys(LAYERS, 2)
    assert len(curve) == 1 + 2 * len(LAYERS)
    costs = [cost_model(c.plan).weight_bytes for c in curve]
    assert all(a > b for a, b in zip(costs, costs[1:]))
    for prev, cur in zip(curve, curve[1:]):
        a, b = unit_bits(space, prev.plan), unit_bits(space, cur.plan)
        changed = [u for u in a if a[u] != b[u]]
        assert changed == [cur.info["unit"]]
        assert {4: 8, 2: 4}[b[changed[0]]] == a[changed[0]]  # one step of the choices
    assert len(greedy_candidates(space, cost_model, sens, max_steps=3)) == 4
    with pytest.raises(ValueError, match="max_steps"):
        greedy_candidates(space, cost_model, sens, max_steps=0)


def test_greedy_picks_best_ratio(space: SearchSpace, cost_model: CostModel) -> None:
    # the linear layer saves most bytes per unit of sensitivity: it goes first
    values = {layer: {2: 1.0, 4: 0.1, 8: 0.0} for layer in LAYERS}
    curve = greedy_candidates(space, cost_model, fake_sensitivity(values))
    assert curve[1].info["unit"] == "7" and curve[1].info["to_bits"] == 4


def test_aimet_curve(space: SearchSpace, cost_model: CostModel, sens: SensitivityResult) -> None:
    for order in ("ratio", "aimet"):
        curve = aimet_candidates(space, cost_model, sens, order=order)
        assert curve[0].label == "aimet step 0"
        assert unit_bits(space, curve[0].plan) == dict.fromkeys(LAYERS, 8)
        assert unit_bits(space, curve[-1].plan) == dict.fromkeys(LAYERS, 2)
        bops = [cost_model(c.plan).bops for c in curve]
        assert all(a > b for a, b in zip(bops, bops[1:]))
    # ratio order: smallest drop increase per BOP saved first
    values = {"0": {2: 5.0, 4: 0.1, 8: 0.0}, "2": {2: 5.0, 4: 0.1, 8: 0.0},
              "4": {2: 5.0, 4: 1.0, 8: 0.0}, "7": {2: 5.0, 4: 0.01, 8: 0.0}}  # fmt: skip
    curve = aimet_candidates(space, cost_model, fake_sensitivity(values), order="ratio")
    # drop added / BOPs saved at 8 -> 4 bits: fc 0.01 / 5120 MACs, conv2 0.1 / 18432, conv4 1 / 36864, conv0 0.1 / 2304
    assert [c.info["unit"] for c in curve[1:5]] == ["7", "2", "4", "0"]
    assert [
        c.info["unit"]
        for c in aimet_candidates(space, cost_model, fake_sensitivity(values), order="aimet")[1:5]
    ] == ["7", "0", "2", "4"]  # AIMET's list: smallest phase-1 drop first (ties: the earlier unit)
    short = aimet_candidates(space, cost_model, sens, max_points=3)
    assert len(short) == 3 and short[0].label == "aimet step 0" and short[-1].label == "aimet step 8"
    with pytest.raises(ValueError, match="order='best' is not valid"):
        aimet_candidates(space, cost_model, sens, order="best")


# ============================================================================================ ILP candidates


def test_ilp_candidates_respect_budgets(
    space: SearchSpace, cost_model: CostModel, sens: SensitivityResult
) -> None:
    budgets = (0.1, 0.125, 0.15, 0.2, 0.25)
    cands = ilp_candidates(space, cost_model, sens, budgets=budgets)
    fp32 = cost_model.fp32_cost.weight_bytes
    assert [c.label for c in cands] == [
        f"ilp weight_size<={100 * b:g}%" for b in sorted(budgets, reverse=True)
    ]
    costs = [cost_model(c.plan).weight_bytes for c in cands]
    assert all(a >= b for a, b in zip(costs, costs[1:]))
    s, _ = unit_tables(space, cost_model, sens)
    all_plans = []
    for combo in itertools.product((2, 4, 8), repeat=len(LAYERS)):
        bits = dict(zip(LAYERS, combo))
        plan = space.uniform_plan(8)
        for u, b in bits.items():
            plan = space.with_unit(plan, u, space.unit_spec(space.unit(u), {"w_bits": b}))
        all_plans.append((cost_model(plan).weight_bytes, sum(s.loc[u, b] for u, b in bits.items())))
    for c, cost in zip(cands, costs):
        assert c.info["status"] == "optimal"
        assert cost <= c.info["budget"] == pytest.approx(c.info["budget_fraction"] * fp32)
        best = min(v for k, v in all_plans if k <= c.info["budget"])
        assert c.info["objective"] == pytest.approx(best, rel=1e-9)
    # absolute budgets, in bytes
    absolute = ilp_candidates(space, cost_model, sens, budget_values=[3000, 2000])
    assert [c.label for c in absolute] == ["ilp weight_size<=3000", "ilp weight_size<=2000"]
    assert all(cost_model(c.plan).weight_bytes <= c.info["budget"] for c in absolute)
    # other cost kinds
    for kind, attr in (("bops", "bops"), ("latency", "latency_ms"), ("size", "size_bytes")):
        for c in ilp_candidates(space, cost_model, sens, cost=kind, budgets=(0.1, 0.05)):
            assert getattr(cost_model(c.plan), attr) <= c.info["budget"]


def test_ilp_span_covers_cheapest_to_dearest(
    space: SearchSpace, cost_model: CostModel, sens: SensitivityResult
) -> None:
    # latency: the cheapest plan costs a large share of FP32's, so fractions <= 25 % would all be infeasible
    cands = ilp_candidates(space, cost_model, sens, cost="latency", span=4)
    budgets = [c.info["budget"] for c in cands]
    assert len(cands) == 4 and budgets == sorted(budgets, reverse=True)
    # from the real cost of the cheapest plan (uniform 2-bit) to the dearest (uniform 8-bit), priced whole
    assert budgets[0] == pytest.approx(cost_model(space.uniform_plan(8)).latency_ms)
    assert budgets[-1] == pytest.approx(cost_model(space.uniform_plan(2)).latency_ms, rel=1e-6)
    assert all(cost_model(c.plan).latency_ms <= c.info["budget"] * (1 + 1e-9) for c in cands)


class _Overlap:
    """A latency that is not additive over units: a layer at <= 4 (8) bits saves 0.3 (0.2) ms when quantized
    alone, but together the savings overlap, down to a floor of 0.1 ms (as per-layer costs measured in context
    can)."""

    def __init__(self, base: CostModel, floor: float = 0.1) -> None:
        self.base, self.model, self.costs, self.fp32, self.floor = (
            base,
            base.model,
            base.costs,
            base.fp32,
            floor,
        )
        self.fp32_latency_ms, self.fp32_cost = 1.0, self(QuantPlan({}))

    def __call__(self, plan: QuantPlan):
        saved = sum(0.3 if s.w_bits <= 4 else 0.2 for s in plan.layers.values() if s.w_bits <= 8)
        return dataclasses.replace(self.base(plan), latency_ms=max(self.floor, 1.0 - saved))


def test_ilp_span_budgets_stay_positive_when_unit_shares_are_not_additive(
    space: SearchSpace, cost_model: CostModel, sens: SensitivityResult
) -> None:
    odd = _Overlap(cost_model)
    _, costs = unit_tables(space, odd, sens, cost="latency")
    assert costs.attrs["rest"] + costs.min(axis=1).sum() < 0  # the units' shares sum below zero
    cands = ilp_candidates(space, odd, sens, cost="latency", span=3)
    assert cands and all(c.info["budget"] > 0 for c in cands)
    assert min(c.info["budget"] for c in cands) == pytest.approx(
        odd(space.uniform_plan(2)).latency_ms, rel=1e-6
    )
    # an estimate clipped at zero for the cheapest plan: the budgets still start above zero
    cands = ilp_candidates(space, _Overlap(cost_model, floor=0.0), sens, cost="latency", span=3)
    assert cands and all(c.info["budget"] > 0 for c in cands)


def test_ilp_candidates_infeasible(
    space: SearchSpace, cost_model: CostModel, sens: SensitivityResult
) -> None:
    # 1 % of FP32 is out of reach: uniform 2-bit is about 6.7 %; infeasible budgets are left out
    cands = ilp_candidates(space, cost_model, sens, budgets=(0.01, 0.2))
    assert [c.label for c in cands] == ["ilp weight_size<=20%"]
    smallest = cost_model(space.uniform_plan(2)).weight_bytes
    with pytest.raises(ValueError, match=rf"smallest achievable weight_size is {smallest} bytes"):
        ilp_candidates(space, cost_model, sens, budgets=(0.01, 0.02))
    with pytest.raises(ValueError, match="budgets must be numbers > 0"):
        ilp_candidates(space, cost_model, sens, budgets=(0.1, -1))
    with pytest.raises(ValueError, match="metric 'fisher' is not in the sensitivity result"):
        ilp_candidates(space, cost_model, sens, metric="fisher")


# ============================================================================================ groups


def test_groups_share_bits(model: nn.Module, cost_model: CostModel, sens: SensitivityResult) -> None:
    gspace = SearchSpace(model, SpaceConfig(w_bits=(2, 4, 8), groups={"mid": ("2", "4")}))
    assert [u.name for u in gspace.units] == ["0", "mid", "7"]
    s, _ = unit_tables(gspace, cost_model, sens)
    full = sens.matrix("omega")
    assert s.loc["mid", 4] == pytest.approx(full.loc["2", 4] + full.loc["4", 4])
    cands = (
        uniform_candidates(gspace)
        + greedy_candidates(gspace, cost_model, sens)
        + ilp_candidates(gspace, cost_model, sens)
        + aimet_candidates(gspace, cost_model, sens)
        + control_loop_candidates(gspace, cost_model, lambda plans: np.zeros(len(plans)))
    )
    for c in cands:
        unit_bits(gspace, c.plan)  # asserts the members agree
        gspace.params_from_plan(c.plan)  # inside the space


def test_fixed_layers_stay(model: nn.Module, cost_model: CostModel, sens: SensitivityResult) -> None:
    fixed = {"0": {"w_bits": 8, "a_bits": 8, "granularity": "per_tensor"}}
    fspace = SearchSpace(model, SpaceConfig(w_bits=(2, 4, 8), fixed=fixed))
    cands = greedy_candidates(fspace, cost_model, sens) + ilp_candidates(
        fspace, cost_model, sens, budgets=(0.12,)
    )
    for c in cands:
        assert c.plan["0"] == fspace.fixed["0"]
    for c in cands[-1:]:
        assert cost_model(c.plan).weight_bytes <= 0.12 * cost_model.fp32_cost.weight_bytes


# ============================================================================================ control loop


LOOKUP = {
    "0": {8: 0.0, 4: 0.05, 2: 0.15},
    "2": {8: 0.0, 4: 0.1, 2: 0.6},
    "4": {8: 0.0, 4: 0.05, 2: 0.3},
    "7": {8: 0.0, 4: 0.05, 2: 1.0},
}


def test_control_loop_lookup(space: SearchSpace, cost_model: CostModel) -> None:
    calls: list[int] = []

    def predict(plans: list[QuantPlan]) -> np.ndarray:
        calls.append(len(plans))
        return np.array([sum(LOOKUP[u][p[u].w_bits] for u in LAYERS) for p in plans])

    cands = control_loop_candidates(space, cost_model, predict, thresholds=(1.0, 0.25, 2.0, 0.5))
    assert [c.label for c in cands] == [
        "control <=0.25pp",
        "control <=0.5pp",
        "control <=1pp",
        "control <=2pp",
    ]
    expected = [
        {"0": 2, "2": 4, "4": 8, "7": 8},
        {"0": 2, "2": 4, "4": 4, "7": 4},
        {"0": 2, "2": 2, "4": 4, "7": 4},
        {"0": 2, "2": 2, "4": 2, "7": 4},
    ]
    assert [unit_bits(space, c.plan) for c in cands] == expected
    assert calls == [3] * 16  # one batch per unit and threshold, every bit choice in it
    for c, bits in zip(cands, expected):
        assert c.info["predicted_drop_pp"] == pytest.approx(sum(LOOKUP[u][b] for u, b in bits.items()))
        assert c.info["predicted_drop_pp"] <= c.info["threshold_pp"]
    costs = [cost_model(c.plan).weight_bytes for c in cands]
    assert all(a >= b for a, b in zip(costs, costs[1:]))
    # nothing fits: every unit keeps its highest precision
    worst = control_loop_candidates(
        space, cost_model, lambda plans: np.full(len(plans), 9.0), thresholds=(0.1,)
    )
    assert unit_bits(space, worst[0].plan) == dict.fromkeys(LAYERS, 8)
    with pytest.raises(ValueError, match="thresholds"):
        control_loop_candidates(space, cost_model, predict, thresholds=(-1.0,))
    with pytest.raises(ValueError, match="predict returned 1 values for 3 plans"):
        control_loop_candidates(space, cost_model, lambda plans: np.zeros(1))


# ============================================================================================ selection


def test_select_evenly(space: SearchSpace, cost_model: CostModel, sens: SensitivityResult) -> None:
    curve = greedy_candidates(space, cost_model, sens)  # 9 distinct plans
    for n in (2, 3, 5, 9, 20):
        picked = select_evenly(curve, n)
        assert len(picked) == min(n, len(curve))
        assert picked[0] is curve[0] and picked[-1] is curve[-1]
        assert len({SearchSpace.plan_key(c.plan) for c in picked}) == len(picked)
    assert select_evenly(curve, 1) == [curve[0]]
    dup = [curve[0], Candidate("copy", curve[0].plan), curve[1]]
    assert [c.label for c in select_evenly(dup, 5)] == ["greedy step 0", "greedy step 1"]
    with pytest.raises(ValueError, match="n must be an int >= 1"):
        select_evenly(curve, 0)


# ============================================================================================ real sensitivity


def test_baselines_on_digits_cnn(digits_cnn_task, one_torch_thread) -> None:
    from workbench.sensitivity import SensitivityConfig, analyze_sensitivity

    task = digits_cnn_task
    cfg = SensitivityConfig(
        w_bits=(2, 4, 8), a_bits=(), granularities=("per_channel",), metrics=("output_mse", "acc_drop", "hessian"),
        hutchinson_max_iter=16, per_channel=False, progress=False, num_threads=1,
    )  # fmt: skip
    result = analyze_sensitivity(task, cfg, cache=False)
    sp = SearchSpace(task.model, SpaceConfig(w_bits=(2, 4, 8, 16)))
    cm = CostModel(task.model, task.example_input(), fp32_latency_ms=1.0)
    fp32 = cm.fp32_cost.weight_bytes
    ilp = ilp_candidates(sp, cm, result)
    assert ilp and all(cm(c.plan).weight_bytes <= c.info["budget"] <= 0.25 * fp32 for c in ilp)
    greedy = greedy_candidates(sp, cm, result)
    aimet = aimet_candidates(sp, cm, result, max_points=5)
    assert len(aimet) == 5
    for c in ilp + greedy + aimet + uniform_candidates(sp):
        sp.params_from_plan(c.plan)
