"""Objectives of a search: hardware cost of a plan (size, BOPs, latency), its accuracy (measured, predicted),
a cache of measured evaluations shared by every trial and worker, Pareto fronts and hypervolume.

Latency (and energy) come from a hardware precision profile when one is given (:mod:`workbench.hardware`: the
measured profile of this CPU, or a reference profile); without one, latency is a BOPs proxy: the FP32 model's
measured latency per sample on this machine, scaled by the plan's BOPs over FP32 BOPs. ``CostModel.latency_source``
says which.

Here: the objective names (:data:`OBJECTIVES`), what one trial reports (:class:`Objectives`) and the reward
shaping terms (:func:`complexity`, :func:`similarity`). The parts live in :mod:`workbench.search.costs` (cost
model), :mod:`workbench.search.evaluator` (measured / predicted accuracy, evaluation cache) and
:mod:`workbench.search.pareto` (fronts, hypervolume), and are re-exported from here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from workbench.quant.spec import QuantPlan
from workbench.search.costs import CostModel, PlanCost, measure_fp32_latency_ms
from workbench.search.evaluator import (
    EvalCache,
    PlanEvaluator,
    PredictedAccuracy,
    evaluation_prefix,
)
from workbench.search.pareto import HypervolumeRef, front_hypervolume, hypervolume_2d, pareto_mask

OBJECTIVES: dict[str, str] = {
    "accuracy": "maximize",
    "size": "minimize",
    "weight_size": "minimize",
    "bops": "minimize",
    "latency": "minimize",
    "energy": "minimize",
}
ACCURACY_MODES: tuple[str, ...] = ("measured", "predicted", "multifidelity")


def _signs(objectives: Sequence[str]) -> np.ndarray:
    bad = [o for o in objectives if o not in OBJECTIVES]
    if bad:
        raise ValueError(f"unknown objective(s) {bad}; choose from {list(OBJECTIVES)}")
    return np.array([-1.0 if OBJECTIVES[o] == "maximize" else 1.0 for o in objectives])


@dataclass
class Objectives:
    """What one trial reports: raw values and the (possibly shaped) values given to the sampler."""

    accuracy: float
    cost: PlanCost
    source: str
    cache_hit: bool = False
    shaped_accuracy: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def value(self, name: str) -> float:
        if name == "accuracy":
            return self.accuracy if self.shaped_accuracy is None else self.shaped_accuracy
        return float(
            {
                "size": self.cost.size_bytes,
                "weight_size": self.cost.weight_bytes,
                "bops": self.cost.bops,
                "latency": self.cost.latency_ms,
            }[name]
        )


def complexity(plan: QuantPlan, layers: Sequence[str]) -> float:
    """Implementation complexity of a plan in [0, 1): distinct specs over layers (one spec everywhere ~ 0)."""
    if not layers:
        return 0.0
    from workbench.quant.spec import FP32

    distinct = {json.dumps(plan.get(n, FP32).to_dict(), sort_keys=True) for n in layers}
    return (len(distinct) - 1) / len(layers)


def similarity(vector: np.ndarray, history: Sequence[np.ndarray]) -> float:
    """1 - the smallest normalised Hamming distance of a plan's choice vector to earlier ones (0 when new)."""
    if not history:
        return 0.0
    h = np.stack(history)
    d = (h != vector[None, :]).mean(axis=1)
    return float(1.0 - d.min())


__all__ = [
    "ACCURACY_MODES",
    "OBJECTIVES",
    "CostModel",
    "EvalCache",
    "HypervolumeRef",
    "Objectives",
    "PlanCost",
    "PlanEvaluator",
    "PredictedAccuracy",
    "complexity",
    "evaluation_prefix",
    "front_hypervolume",
    "hypervolume_2d",
    "measure_fp32_latency_ms",
    "pareto_mask",
    "similarity",
]
