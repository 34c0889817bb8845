"""The strategies :func:`~workbench.search.study.run_search` knows, in one registry: each name maps to the Optuna
sampler that proposes its trials and, for a baseline, the plans it enqueues as trials (spread along its curve).

``auto`` (the default): sensitivity-first allocation (:mod:`workbench.search.auto`): its allocated front is
enqueued, then its sampler proposes local moves. Samplers: ``tpe`` and ``nsga2`` (multi-objective), ``rl`` (the LSTM controller of :mod:`workbench.search.rl`),
``random``. Baselines: ``uniform``, ``greedy`` (seed-000 cost-benefit), ``ilp`` (HAWQ-V3), ``aimet`` (AIMET AMP's
greedy Pareto curve) and ``control`` (the seed-000 control loop on the predictor); their trials are fixed by the
enqueued plans, anything else is sampled at random.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from workbench.quant.spec import QuantPlan
from workbench.search.baselines import (
    Candidate,
    aimet_candidates,
    control_loop_candidates,
    greedy_candidates,
    ilp_candidates,
    select_evenly,
    uniform_candidates,
)
from workbench.search.config import SearchConfig, SearchError, n_size_constraints
from workbench.search.context import SearchContext

if TYPE_CHECKING:
    from workbench.tasks.task import TaskLike

SamplerFactory = Callable[[SearchContext, int], Any]
"""``(context, seed) -> optuna sampler``."""
CandidateSource = Callable[[SearchContext, Any, int], list[Candidate]]
"""``(context, sensitivity result, n) -> candidates`` of a baseline (before :func:`select_evenly`)."""


@dataclass(frozen=True)
class Strategy:
    """One registered strategy: its sampler, and for a baseline the source of its candidate plans.
    ``needs_sensitivity`` / ``needs_predictor``: what its candidates are computed from."""

    name: str
    sampler: SamplerFactory
    candidates: CandidateSource | None = None
    needs_sensitivity: bool = False
    needs_predictor: bool = False
    adaptive: bool = False  # its sampler goes on after the candidates (``auto``)

    @property
    def is_baseline(self) -> bool:
        return self.candidates is not None and not self.adaptive


# ============================================================================================ samplers


def _tpe(ctx: SearchContext, seed: int) -> Any:
    import optuna

    cfg = ctx.config
    return optuna.samplers.TPESampler(
        seed=seed,
        n_startup_trials=max(1, min(cfg.n_startup_trials, cfg.budget // 3 or 1)),
        multivariate=True,
    )


def _nsga2(ctx: SearchContext, seed: int) -> Any:
    import optuna

    cfg = ctx.config
    return optuna.samplers.NSGAIISampler(
        population_size=max(4, min(cfg.population_size, cfg.budget)), seed=seed
    )


def _random(ctx: SearchContext, seed: int) -> Any:
    import optuna

    return optuna.samplers.RandomSampler(seed=seed)


def _rl(ctx: SearchContext, seed: int) -> Any:
    from workbench.search.rl import RLControllerSampler, feature_map_stats

    x = ctx.task.example_input(min(64, _calib_size(ctx.task)))
    stats = feature_map_stats(ctx.task.model, x, list(ctx.space.layers))
    per_layer = stats.set_index("layer")
    unit_stats = np.stack(
        [
            per_layer.loc[list(u.layers), ["mean", "var", "entropy"]].to_numpy().mean(axis=0)
            for u in ctx.space.units
        ]
    )
    return RLControllerSampler(ctx.space, unit_stats, seed=seed)


def _auto_sampler(ctx: SearchContext, seed: int) -> Any:
    from workbench.search.auto_sampler import AutoSampler

    return AutoSampler(ctx.space, seed=seed)


def _calib_size(task: TaskLike) -> int:
    try:
        return len(task.calib_loader.dataset)
    except (TypeError, AttributeError):  # an iterable without a sized dataset (e.g. a list of batches)
        return 64


# ============================================================================================ baselines


def _auto(ctx: SearchContext, sensitivity: Any, n: int) -> list[Candidate]:
    """The allocated front of :mod:`workbench.search.auto` in its order of measurement; its tables are kept
    for the study (``ctx.study_attrs``) so that the sampler and a resumed study read them."""
    from workbench.search.auto import TABLES_ATTR, allocation_tables, initial_candidates

    tables = allocation_tables(ctx, sensitivity, metric=ctx.config.sensitivity_metric)
    ctx.study_attrs[TABLES_ATTR] = tables.to_json()
    return initial_candidates(ctx, tables)


def _uniform(ctx: SearchContext, sensitivity: Any, n: int) -> list[Candidate]:
    return uniform_candidates(ctx.space)


def _greedy(ctx: SearchContext, sensitivity: Any, n: int) -> list[Candidate]:
    return greedy_candidates(ctx.space, ctx.cost_model, sensitivity, cost=ctx.config.ilp_cost)


def _ilp(ctx: SearchContext, sensitivity: Any, n: int) -> list[Candidate]:
    cfg = ctx.config
    # budgets spread up to the size constraint (HAWQ-V3 solves one ILP per budget)
    top = (
        cfg.max_weight_fraction
        if cfg.max_weight_fraction is not None and cfg.ilp_cost == "weight_size"
        else 0.25
    )
    fracs = np.linspace(min(0.05, top), top, max(n, 2))
    metric = cfg.sensitivity_metric
    if metric == "auto":  # HAWQ-V3's omega when the result has it, else an output error
        from workbench.search.auto import resolve_metric

        has_omega = "omega" in sensitivity.metrics()
        metric = "omega" if has_omega else resolve_metric(sensitivity, "auto", str(ctx.task.metric_name))
    span = (
        max(n, 2) if cfg.ilp_cost in ("latency", "energy") else None
    )  # fractions <= 25 % are infeasible there
    return ilp_candidates(
        ctx.space, ctx.cost_model, sensitivity, budgets=tuple(float(f) for f in fracs), cost=cfg.ilp_cost,
        metric=metric, span=span,
    )  # fmt: skip


def _aimet(ctx: SearchContext, sensitivity: Any, n: int) -> list[Candidate]:
    return aimet_candidates(ctx.space, ctx.cost_model, sensitivity)


def _control(ctx: SearchContext, sensitivity: Any, n: int) -> list[Candidate]:
    assert ctx.predicted is not None
    fp32 = ctx.predicted.fp32_accuracy

    def predict(plans: list[QuantPlan]) -> np.ndarray:
        return 100.0 * (fp32 - ctx.predicted.batch(plans))

    return control_loop_candidates(
        ctx.space, ctx.cost_model, predict, thresholds=tuple(np.round(np.geomspace(0.1, 5.0, 8), 3))
    )


# ============================================================================================ registry

STRATEGY_REGISTRY: dict[str, Strategy] = {
    s.name: s
    for s in (
        Strategy("auto", _auto_sampler, _auto, needs_sensitivity=True, adaptive=True),
        Strategy("tpe", _tpe),
        Strategy("nsga2", _nsga2),
        Strategy("rl", _rl),
        Strategy("random", _random),
        Strategy("uniform", _random, _uniform),
        Strategy("greedy", _random, _greedy, needs_sensitivity=True),
        Strategy("ilp", _random, _ilp, needs_sensitivity=True),
        Strategy("aimet", _random, _aimet, needs_sensitivity=True),
        Strategy("control", _random, _control, needs_predictor=True),
    )
}
"""Every strategy by name, in the order of :data:`~workbench.search.config.STRATEGIES` (the samplers
:data:`~workbench.search.config.SAMPLER_STRATEGIES`, then the baselines
:data:`~workbench.search.config.BASELINE_STRATEGIES`)."""


def make_sampler(strategy: str, ctx: SearchContext, *, seed: int) -> Any:
    """The Optuna sampler of ``strategy`` (samplers read the constraints each trial sets with
    ``trial.set_constraint``)."""
    return STRATEGY_REGISTRY[strategy].sampler(ctx, seed)


def baseline_candidates(
    ctx: SearchContext, sensitivity: Any, *, strategy: str | None = None, n: int | None = None
) -> list[Candidate]:
    """Up to ``n`` (default: the budget) plans of a baseline (default: the configured strategy), spread evenly
    along its curve."""
    name = strategy or ctx.config.strategy
    s = STRATEGY_REGISTRY.get(name)
    if s is None or s.candidates is None:  # pragma: no cover - validated in SearchConfig
        raise SearchError(f"{name!r} is not a baseline strategy")
    n = n or ctx.config.budget
    if s.adaptive:  # already in its order of measurement
        return s.candidates(ctx, sensitivity, n)[:n]
    return select_evenly(s.candidates(ctx, sensitivity, n), n)


def warm_candidates(ctx: SearchContext, sensitivity: Any) -> list[tuple[str, dict[str, Any]]]:
    """The warm-start plans of a sampler strategy: the baseline's curve, within the size constraint."""
    cfg = ctx.config
    if cfg.warm_start is None:
        return []
    cands = baseline_candidates(ctx, sensitivity, strategy=cfg.warm_start, n=10 * cfg.warm_start_plans)
    n_size = n_size_constraints(cfg)
    fits = [
        c
        for c in cands
        if not any(v > 0 for v in ctx.constraints(c.plan, ctx.cost_model(c.plan), None)[:n_size])
    ]
    if STRATEGY_REGISTRY[cfg.warm_start].adaptive:  # its first plans are the ones that pay most
        chosen = fits[: cfg.warm_start_plans]
    else:
        chosen = select_evenly(fits, cfg.warm_start_plans)
    return [(f"warm start: {c.label}", ctx.space.params_from_plan(c.plan)) for c in chosen]


def needs(config: SearchConfig) -> tuple[bool, bool]:
    """(needs a predictor, needs a sensitivity result)."""
    strategy = STRATEGY_REGISTRY[config.strategy]
    warm = STRATEGY_REGISTRY[config.warm_start] if config.warm_start is not None else None
    needs_pred = config.accuracy in ("predicted", "multifidelity") or strategy.needs_predictor
    needs_sens = strategy.needs_sensitivity or (warm is not None and warm.needs_sensitivity)
    return needs_pred, needs_sens
