"""Search over per-layer choices: the space, objectives, strategies (Optuna samplers, an RL controller,
baselines) and the study runner. Entry point: :func:`run_search`.

Parts: ``config`` (:class:`SearchConfig`), ``space``, ``objectives``, ``strategies`` (the registry),
``baselines``, ``rl``, ``storage``, ``context``, ``trial``, ``workers``, ``screening``, ``result``
(:class:`SearchResult`), ``report`` and ``study`` (:func:`run_search`). The HAWQ-V3 replication lives apart in
:mod:`workbench.search.hawq_replication`."""

from workbench.search.config import STRATEGIES, SearchConfig, SearchError
from workbench.search.objectives import (
    CostModel,
    EvalCache,
    HypervolumeRef,
    PlanCost,
    PlanEvaluator,
    PredictedAccuracy,
    hypervolume_2d,
    pareto_mask,
)
from workbench.search.result import SearchResult, compute_front
from workbench.search.space import SearchSpace, SpaceConfig, UnitChoices, residual_groups
from workbench.search.study import default_predictor, required_inputs, resolved_config, run_search

__all__ = [
    "STRATEGIES",
    "CostModel",
    "EvalCache",
    "HypervolumeRef",
    "PlanCost",
    "PlanEvaluator",
    "PredictedAccuracy",
    "SearchConfig",
    "SearchError",
    "SearchResult",
    "SearchSpace",
    "SpaceConfig",
    "UnitChoices",
    "compute_front",
    "default_predictor",
    "hypervolume_2d",
    "pareto_mask",
    "required_inputs",
    "residual_groups",
    "resolved_config",
    "run_search",
]
