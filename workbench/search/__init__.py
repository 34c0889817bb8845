"""Search over per-layer choices: the space, objectives, strategies (Optuna samplers, an RL controller,
baselines) and the study runner. Entry point: :func:`run_search`."""

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
from workbench.search.space import SearchSpace, SpaceConfig, UnitChoices, residual_groups
from workbench.search.study import (
    STRATEGIES,
    SearchConfig,
    SearchError,
    SearchResult,
    compute_front,
    default_predictor,
    run_search,
)

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
    "residual_groups",
    "run_search",
]
