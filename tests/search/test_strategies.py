"""The strategy registry: every configured name is registered in order, baselines are the ones with candidates,
samplers are built with the configured knobs, and each strategy asks for the predictor / sensitivity it needs."""

from __future__ import annotations

from types import SimpleNamespace

import optuna

from workbench.search.config import BASELINE_STRATEGIES, SAMPLER_STRATEGIES, STRATEGIES, SearchConfig
from workbench.search.strategies import STRATEGY_REGISTRY, make_sampler, needs


def test_registry_covers_every_strategy_in_order():
    assert tuple(STRATEGY_REGISTRY) == STRATEGIES
    assert STRATEGIES[0] == "auto" and STRATEGY_REGISTRY["auto"].adaptive
    samplers = tuple(n for n, s in STRATEGY_REGISTRY.items() if not s.is_baseline and not s.adaptive)
    assert samplers == SAMPLER_STRATEGIES
    assert tuple(n for n, s in STRATEGY_REGISTRY.items() if s.is_baseline) == BASELINE_STRATEGIES


def test_samplers_take_the_configured_knobs():
    ctx = SimpleNamespace(config=SearchConfig(budget=6, n_startup_trials=10, population_size=16))
    tpe = make_sampler("tpe", ctx, seed=0)
    assert isinstance(tpe, optuna.samplers.TPESampler) and tpe._n_startup_trials == 2  # budget // 3
    nsga = make_sampler("nsga2", ctx, seed=0)
    assert isinstance(nsga, optuna.samplers.NSGAIISampler) and nsga._population_size == 6  # min(16, budget)
    for name in ("random", *BASELINE_STRATEGIES):
        assert isinstance(make_sampler(name, ctx, seed=0), optuna.samplers.RandomSampler)


def test_needs_follow_strategy_warm_start_and_accuracy():
    assert needs(SearchConfig()) == (False, True)  # auto allocates from a sensitivity pass
    assert needs(SearchConfig(strategy="tpe")) == (False, True)  # warm-started from auto's front
    assert needs(SearchConfig(strategy="tpe", warm_start=None)) == (False, False)
    assert needs(SearchConfig(strategy="control")) == (True, False)
    assert needs(SearchConfig(strategy="greedy")) == (False, True)
    assert needs(SearchConfig(strategy="uniform")) == (False, False)
    assert needs(SearchConfig(strategy="tpe", warm_start="ilp")) == (False, True)
    assert needs(SearchConfig(strategy="tpe", warm_start="uniform")) == (False, False)
    assert needs(SearchConfig(strategy="aimet", accuracy="predicted")) == (True, True)
