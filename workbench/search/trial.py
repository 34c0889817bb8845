"""One trial of a study: the sampler's plan priced, its accuracy measured (once per plan and study, within the
budget), predicted or skipped when it breaks a size budget, shaped, reported to Optuna and tracked."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from workbench.quant.spec import QuantPlan
from workbench.search.config import constraint_names, n_size_constraints
from workbench.search.context import SearchContext, objective_values
from workbench.search.objectives import complexity, similarity
from workbench.search.space import SearchSpace
from workbench.search.storage import measured_in_study, reserve_evaluation, wait_for_twin


def evaluate_trial(
    ctx: SearchContext, trial: Any, *, parent_run_id: str | None, budget: int | None = None
) -> tuple[float, ...]:
    """The objective values of ``trial`` (accuracy shaped by the penalties); its plan, costs, accuracy source and
    constraints are stored as user attributes. ``budget``: real evaluations the study may spend (None: trials
    count instead)."""
    cfg = ctx.config
    plan = ctx.space.suggest(trial)
    params = dict(trial.params)
    cost = ctx.cost_model(plan)
    over_size = any(v > 0 for v in ctx.constraints(plan, cost, None)[: n_size_constraints(cfg)])
    key = SearchSpace.plan_key(plan)
    accuracy, secondary, source, hit, real = _accuracy(
        ctx, trial, plan, key, over_size=over_size, budget=budget
    )
    vec = ctx.choice_vector(params)
    shaped = _shaped(ctx, plan, vec, accuracy)
    ctx.history.append(vec)
    constraints = ctx.constraints(plan, cost, None if over_size else accuracy)
    attrs = {
        "plan": plan.to_json(indent=None),
        "plan_key": key,
        "accuracy": accuracy,
        "secondary": secondary,
        **ctx.space_bits(plan),
        "shaped_accuracy": shaped,
        "accuracy_source": source,
        "cache_hit": hit,
        "real_eval": real,
        "constraints": constraints,
        "feasible": all(v <= 0 for v in constraints),
        "constraint_violation": float(sum(max(0.0, v) for v in constraints)),
        "worker": ctx.worker,
        **cost.to_dict(),
    }
    for k, v in attrs.items():
        trial.set_user_attr(k, v)
    for cname, value in zip(constraint_names(cfg), constraints, strict=True):
        trial.set_constraint(cname, value if math.isfinite(value) else 1e9)
    values = objective_values(cfg.objectives, shaped, cost)
    if cfg.track and cfg.log_trials:
        _log_trial(ctx, trial, params, plan, attrs, cost, parent_run_id=parent_run_id)
    return tuple(values)


def _accuracy(
    ctx: SearchContext, trial: Any, plan: QuantPlan, key: str, *, over_size: bool, budget: int | None
) -> tuple[float, float | None, str, bool, int]:
    """(accuracy, the secondary score breaking its ties or None, its source, cache hit, real evaluations spent)
    of the trial's plan."""
    cfg = ctx.config
    source = cfg.accuracy if cfg.accuracy != "multifidelity" else "measured"
    hit = False
    real = 0
    secondary = None
    if over_size:
        accuracy = 0.0  # not measured: the plan breaks a size budget; the sampler sees it as infeasible
        source = "skipped_over_budget"
    elif source == "predicted":
        assert ctx.predicted is not None
        accuracy = ctx.predicted(plan)
    else:
        if not measured_in_study(trial.study, key):
            wait_for_twin(ctx.evaluator.cache, trial, key)
        if budget is not None and not measured_in_study(trial.study, key):
            reserve_evaluation(trial, budget)
        accuracy, hit = ctx.evaluator(plan)
        secondary = ctx.evaluator.secondary(plan)
        # the budget counts distinct plans measured by this study; a plan another study (or worker) already
        # measured is read from the shared cache (cache_hit) but still costs this study one evaluation
        real = 0 if measured_in_study(trial.study, key) else 1
    return accuracy, secondary, source, hit, real


def _shaped(ctx: SearchContext, plan: QuantPlan, vec: np.ndarray, accuracy: float) -> float:
    """The accuracy the sampler sees: less the complexity and diversity penalties (reward shaping, seed 001)."""
    cfg = ctx.config
    shaped = accuracy
    if cfg.complexity_penalty:
        shaped -= cfg.complexity_penalty * complexity(plan, ctx.space.layers)
    if cfg.diversity_penalty:
        shaped -= cfg.diversity_penalty * similarity(vec, ctx.history)
    return shaped


def _log_trial(
    ctx: SearchContext,
    trial: Any,
    params: dict[str, Any],
    plan: QuantPlan,
    attrs: dict[str, Any],
    cost: Any,
    *,
    parent_run_id: str | None,
) -> None:
    """The trial as a child MLflow run of the study's run."""
    from workbench import tracking

    label = trial.user_attrs.get("label") or f"trial {trial.number}"
    with tracking.start_run(
        "search-trial", run_name=f"trial-{trial.number}", parent_run_id=parent_run_id
    ) as run:
        run.log_params({"trial": trial.number, "label": label, "strategy": ctx.config.strategy, **params})
        run.log_metrics(
            {
                "accuracy": attrs["accuracy"],
                "shaped_accuracy": attrs["shaped_accuracy"],
                "cache_hit": float(attrs["cache_hit"]),
                "real_eval": attrs["real_eval"],
                "feasible": float(attrs["feasible"]),
                **cost.to_dict(),
            }  # fmt: skip
        )
        run.log_plan(plan)
