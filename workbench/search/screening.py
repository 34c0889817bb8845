"""Multi-fidelity phase 1: the strategy runs on the accuracy predictor for ``screen_trials`` trials of a study in
memory, and the plans worth measuring (the predicted front, then the next non-dominated layers) become the
candidates of the real study."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from workbench.quant.spec import QuantPlan
from workbench.search.config import SAMPLER_STRATEGIES, constraint_names
from workbench.search.context import SearchContext, objective_values, study_directions
from workbench.search.objectives import pareto_mask
from workbench.search.space import SearchSpace
from workbench.search.strategies import make_sampler


def screen(
    ctx: SearchContext, *, seed: int, warm: Sequence[tuple[str, dict[str, Any]]] = ()
) -> list[tuple[str, dict[str, Any]]]:
    """Multi-fidelity phase 1: the strategy on the predictor for ``screen_trials``; returns up to ``budget``
    parameter sets: the predicted front first, then the next non-dominated layers."""
    import optuna

    cfg = ctx.config
    assert ctx.predicted is not None
    strategy = cfg.strategy if cfg.strategy in SAMPLER_STRATEGIES else "nsga2"
    sampler = make_sampler(strategy, ctx, seed=seed)
    study = optuna.create_study(directions=study_directions(cfg.objectives), sampler=sampler)
    for label, params in warm:
        study.enqueue_trial(params, user_attrs={"label": label})
    rows: list[tuple[dict[str, Any], QuantPlan, list[float]]] = []

    def objective(trial: Any) -> tuple[float, ...]:
        plan = ctx.space.suggest(trial)
        cost = ctx.cost_model(plan)
        acc = ctx.predicted(plan)
        cons = ctx.constraints(plan, cost, acc)
        for cname, value in zip(constraint_names(cfg), cons, strict=True):
            trial.set_constraint(cname, value)
        vals = objective_values(cfg.objectives, acc, cost)
        if all(c <= 0 for c in cons):
            rows.append((dict(trial.params), plan, vals))
        return tuple(vals)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.optimize(objective, n_trials=cfg.screen_trials, show_progress_bar=False)
    return _by_front_layers(_distinct(rows), cfg.objectives, cfg.budget)


def _distinct(
    rows: Sequence[tuple[dict[str, Any], QuantPlan, list[float]]],
) -> list[tuple[dict[str, Any], list[float]]]:
    """(parameters, objective values) of the first trial of each distinct plan."""
    seen: set[str] = set()
    unique = []
    for params, plan, vals in rows:
        key = SearchSpace.plan_key(plan)
        if key not in seen:
            seen.add(key)
            unique.append((params, vals))
    return unique


def _by_front_layers(
    unique: Sequence[tuple[dict[str, Any], list[float]]], objectives: Sequence[str], budget: int
) -> list[tuple[str, dict[str, Any]]]:
    """Up to ``budget`` labelled parameter sets: the non-dominated ones first, then the next layers."""
    chosen: list[tuple[str, dict[str, Any]]] = []
    remaining = list(range(len(unique)))
    layer = 0
    while remaining and len(chosen) < budget:
        vals = np.array([unique[i][1] for i in remaining])
        mask = pareto_mask(vals, study_directions(objectives))
        level = [remaining[i] for i in np.flatnonzero(mask)]
        if not level:
            level = remaining[:1]
        for i in level[: budget - len(chosen)]:
            chosen.append((f"screened front {layer}", unique[i][0]))
        remaining = [i for i in remaining if i not in set(level)]
        layer += 1
    return chosen
