"""The ``auto`` strategy: exact allocation on lookup tables (checked against brute force), local moves within the
budgets, the proposal order, and the whole search on digits_cnn (beats or matches uniform at its budget, never
spends more than its budget, stops when no move is left, and a saturated split warns yet keeps a front)."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from workbench.search import SearchConfig, run_search
from workbench.search.auto import AllocationTables, Measured, allocate, allocation_front, incumbent, propose
from workbench.search.auto_sampler import MOVE_LABEL
from workbench.search.baselines import uniform_candidates
from workbench.search.space import SearchSpace, SpaceConfig
from workbench.search.study import SaturatedMetricWarning
from workbench.tasks import Task

BITS = (2, 3, 4, 8)


def _tables(
    seed: int = 0, n: int = 5, *, cap_bits: float | None = 4.0, bytes_cap: float | None = None
) -> AllocationTables:
    rng = np.random.default_rng(seed)
    elems = rng.integers(10, 100, size=n).astype(float)
    sens = np.sort(rng.random((n, len(BITS))) * elems[:, None], axis=1)[:, ::-1]  # fewer bits, more error
    bits = np.array(BITS, dtype=float)
    costs = {"avg_bits": elems[:, None] * bits[None, :]}
    limits: dict[str, float | None] = {"avg_bits": None if cap_bits is None else cap_bits * elems.sum()}
    if bytes_cap is not None:
        costs["weight_bytes"] = elems[:, None] * bits[None, :] / 8 + 4.0  # a scale per unit
        limits["weight_bytes"] = bytes_cap
    top = (cap_bits or 8.0) * elems.sum()
    levels = tuple(np.linspace(top / 2, top, 6)[::-1])
    return AllocationTables(
        tuple(f"u{i}" for i in range(n)),
        BITS,
        sens,
        costs,
        limits,
        "avg_bits",
        levels,
        float(elems.sum()),
        "lut",
    )


def _brute(t: AllocationTables, level: float) -> float:
    best = np.inf
    for combo in itertools.product(range(len(BITS)), repeat=len(t.units)):
        choice = np.array(combo)
        if t.fits(choice, level):
            best = min(best, t.error(choice))
    return best


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_allocation_is_exact_on_lookup_tables(seed):
    t = _tables(seed, bytes_cap=None)
    for level in t.levels:
        choice = allocate(t, level)
        assert choice is not None and t.fits(choice, level)
        assert t.error(choice) == pytest.approx(_brute(t, level), rel=1e-9, abs=1e-12)


def test_every_budget_binds_at_once():
    loose = _tables(3, cap_bits=6.0)
    free = allocate(loose, loose.levels[0])
    bytes_used = float((loose.costs["avg_bits"][np.arange(5), free]).sum() / 8 + 20)
    t = _tables(3, cap_bits=6.0, bytes_cap=0.8 * bytes_used)
    choice = allocate(t, t.levels[0])
    assert choice is not None and t.fits(choice, t.levels[0])
    assert t.totals(choice)["weight_bytes"] <= 0.8 * bytes_used + 1e-9
    assert t.error(choice) == pytest.approx(_brute(t, t.levels[0]), rel=1e-9)
    assert allocate(_tables(3, cap_bits=6.0, bytes_cap=1.0), t.levels[0]) is None  # nothing fits 1 byte


def test_front_is_monotone_and_tables_round_trip():
    t = _tables(4)
    front = allocation_front(t)
    errors = [t.error(c) for _, c in front]
    assert errors == sorted(errors)  # smaller budget, larger predicted error
    assert len({tuple(c) for _, c in front}) == len(front)
    back = AllocationTables.from_json(t.to_json())
    assert back.units == t.units and back.levels == t.levels and back.limits == t.limits
    np.testing.assert_array_equal(back.sens, t.sens)
    np.testing.assert_array_equal(back.costs["avg_bits"], t.costs["avg_bits"])


def test_local_moves_stay_within_the_budget_and_follow_the_model():
    t = _tables(5, n=6, cap_bits=5.0)
    level = t.levels[0]
    opt = allocate(t, level)
    measured = [Measured(tuple(int(j) for j in opt), (0.9, 0.0))]
    seen = {tuple(int(j) for j in opt)}
    proposals = []
    while (y := propose(t, measured, seen, 0)) is not None:  # step 0: the budget's own level
        assert t.fits(y, level) and tuple(y) not in seen
        assert t.error(y) >= t.error(opt) - 1e-12  # the ILP optimum: no move predicts better
        assert int((y != opt).sum()) in (1, 2)  # one unit up, maybe another down
        seen.add(tuple(int(j) for j in y))
        proposals.append(t.error(y))
    assert len(proposals) >= 2
    assert proposals == sorted(proposals)  # the most promising move first


def test_incumbent_prefers_score_then_the_smaller_plan():
    t = _tables(6)
    a, b = allocation_front(t)[0][1], allocation_front(t)[1][1]
    big, small = (a, b) if t.totals(a)["avg_bits"] > t.totals(b)["avg_bits"] else (b, a)
    same = [Measured(tuple(big), (0.9, -0.1)), Measured(tuple(small), (0.9, -0.1))]
    assert incumbent(t, same, t.levels[0]).choice == tuple(small)
    better = [Measured(tuple(big), (0.9, -0.01)), Measured(tuple(small), (0.9, -0.1))]
    assert incumbent(t, better, t.levels[0]).choice == tuple(big)  # the secondary score breaks the tie
    assert incumbent(t, better, 0.0) is None


def test_propose_returns_none_when_every_move_was_measured():
    t = _tables(7, n=2)
    everything = {tuple(c) for c in itertools.product(range(len(BITS)), repeat=2)}
    opt = allocate(t, t.levels[0])
    assert propose(t, [Measured(tuple(opt), (1.0, 0.0))], everything, 0) is None


def _cfg(**kw):
    base = dict(
        budget=8, storage=":memory:", track=False, progress=False, space=SpaceConfig(w_bits=(2, 3, 4, 8))
    )
    base.update(kw)
    return SearchConfig(**base)


def test_auto_is_the_default_and_beats_or_matches_uniform(digits_cnn_task, one_torch_thread):
    cfg = _cfg(max_avg_weight_bits=4.0)
    assert SearchConfig().strategy == "auto"
    r = run_search(digits_cnn_task, cfg)
    assert r.real_evaluations <= 8 and r.study_name.endswith("-bits4")
    assert (r.trials["space_avg_bits"] <= 4.0 + 1e-9).all()
    labels = list(r.trials["label"])
    assert labels[0].startswith("auto <= 4 bits") and any(lbl.startswith(MOVE_LABEL) for lbl in labels)
    best = r.best(max_avg_weight_bits=4.0)
    space = SearchSpace(digits_cnn_task.model, cfg.space)
    w4 = next(c for c in uniform_candidates(space) if c.info["w_bits"] == 4)
    uniform_row = r.trials[r.trials["plan_key"] == SearchSpace.plan_key(w4.plan)]
    assert not uniform_row.empty  # uniform at the budget is measured ...
    assert best["accuracy"] >= float(uniform_row["accuracy"].iloc[0])  # ... and never beats the best plan


def test_auto_stops_when_no_move_is_left(digits_cnn_task, one_torch_thread):
    cfg = _cfg(budget=40, space=SpaceConfig(w_bits=(4, 8), include=("fc*",)), max_avg_weight_bits=8.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # conv1 / conv2 stay float on purpose (CoverageWarning)
        r = run_search(digits_cnn_task, cfg)
    # two units, two choices: at most the four plans are measured, then no move is left and the search stops
    # long before its budget (one more trial re-proposes a measured plan: a cache hit)
    assert 2 <= r.real_evaluations <= 4
    assert len(r.trials) <= r.real_evaluations + 1


def _saturated_task(task: Task) -> Task:
    """digits_cnn with a validation split of the images it classifies right (FP32 val accuracy 1.0)."""
    xs, ys = [], []
    with torch.no_grad():
        for x, y in task.val_loader:
            keep = task.model(x).argmax(1) == y
            xs.append(x[keep])
            ys.append(y[keep])
    val = DataLoader(TensorDataset(torch.cat(xs), torch.cat(ys)), batch_size=64)
    return Task(name="digits_cnn_saturated", model=task.model, calib_loader=task.calib_loader, val_loader=val,
                test_loader=task.test_loader, input_shape=task.input_shape, num_classes=10)  # fmt: skip


def test_a_saturated_split_warns_and_the_front_still_spans_the_budgets(digits_cnn_task, one_torch_thread):
    task = _saturated_task(digits_cnn_task)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = run_search(task, _cfg(max_avg_weight_bits=8.0, final_split=None))
    assert r.fp32_accuracy == 1.0
    assert any(issubclass(w.category, SaturatedMetricWarning) for w in caught)
    assert r.trials["secondary"].notna().all()
    perfect = r.front[r.front["accuracy"] == 1.0]
    assert len(perfect) >= 2  # plans scoring 1.0 are still ranked by their output KL to FP32
    assert perfect["space_avg_bits"].max() > perfect["space_avg_bits"].min()
    for cap in (4.0, 8.0):
        row = r.best(max_avg_weight_bits=cap)
        assert row["space_avg_bits"] <= cap + 1e-9
    assert r.best(max_avg_weight_bits=8.0)["secondary"] >= r.best(max_avg_weight_bits=4.0)["secondary"]
