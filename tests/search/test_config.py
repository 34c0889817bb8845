"""SearchConfig validation: the first bad value is named with the valid choices, objectives are put in order, the
constraint helpers follow the configured budgets."""

from __future__ import annotations

import pytest

from workbench.search.config import (
    STRATEGIES,
    SearchConfig,
    SearchError,
    constraint_names,
    n_size_constraints,
)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"strategy": "bayes"}, f"unknown strategy 'bayes'; choose one of {list(STRATEGIES)}"),
        ({"budget": True}, "budget must be an int >= 1 (evaluations), got True"),
        ({"objectives": ("size",)}, "objectives ['size'] must include 'accuracy'"),
        ({"max_avg_weight_bits": 40}, "max_avg_weight_bits=40 must be a number in [1, 32]"),
        ({"population_size": 1}, "population_size must be an int >= 2, got 1"),
        ({"budget": 5, "max_trials": 4}, "max_trials=4 must be an int >= budget (5) or None"),
        ({"warm_start": "uniform", "strategy": "greedy"}, "warm_start seeds a sampler strategy"),
        (
            {"strategy": "tpe", "warm_start": "greedy", "warm_start_plans": 9, "budget": 8},
            "must be an int in [1, budget=8]",
        ),
        ({"strategy": "ilp", "accuracy": "multifidelity"}, "needs a sampler strategy"),
        ({"split": "dev"}, "split='dev'; choose calib, val, test or train"),
        ({"objectives": ("accuracy", "energy")}, "the 'energy' objective needs a hardware profile"),
        ({"latency_batch_size": 0}, "latency_batch_size=0 must be None or an integer >= 1"),
        ({"workers": 2, "storage": ":memory:"}, "workers > 1 need a shared storage"),
        ({"probe_bits": (4, 7)}, "probe_bits=(4, 7); choose widths from [2, 3, 4, 5, 6, 8]"),
        ({"max_avg_mac_bits": 0.5}, "max_avg_mac_bits=0.5 must be a number in [1, 32]"),
    ],
)
def test_bad_values_are_named(kw, message):
    with pytest.raises(SearchError) as e:
        SearchConfig(**kw)
    assert message in str(e.value)


def test_checks_run_in_order_first_error_wins():
    with pytest.raises(SearchError, match="unknown strategy"):
        SearchConfig(strategy="bayes", budget=0, split="dev")
    with pytest.raises(SearchError, match="budget must be"):
        SearchConfig(budget=0, split="dev", workers=0)
    with pytest.raises(SearchError, match="workers must be"):
        SearchConfig(workers=0, split="dev")


def test_objectives_put_accuracy_first_and_round_trip():
    cfg = SearchConfig(objectives=("bops", "accuracy", "weight_size"), max_trials=90, worker_threads=2)
    assert cfg.objectives == ("accuracy", "bops", "weight_size")
    assert cfg.trial_cap() == 90 and SearchConfig(budget=4).trial_cap() == 80
    assert SearchConfig.from_dict(cfg.to_dict()) == cfg


def test_constraint_names_follow_the_budgets():
    cfg = SearchConfig(max_weight_fraction=0.5, max_avg_weight_bits=4.5, max_accuracy_drop=1.0)
    assert constraint_names(cfg) == ["weight_fraction", "avg_weight_bits", "accuracy_drop_pp"]
    assert n_size_constraints(cfg) == 2
    assert constraint_names(SearchConfig()) == [] and n_size_constraints(SearchConfig()) == 0
