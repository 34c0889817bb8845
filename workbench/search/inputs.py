"""The sensitivity result a search needs, built with knobs that fit its space and its task:
:func:`search_sensitivity_config` (what to probe) and :func:`search_sensitivity` (probe, or read the cache).

For ``auto`` (strategy or warm start) the pass is fast: weight probes only, at the space's integer weight bits,
at the granularity the plans use (per channel unless the space has none), one output error (``output_mse`` and
``output_kl``; no labels needed), no per-channel table. For the other baselines: the sensitivity defaults, or
on a task whose calibration batches carry no labels, the label-free metrics only."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from workbench.quant.spec.layer import INT_BITS
from workbench.search.candidates import _unit_granularity
from workbench.search.config import SearchConfig
from workbench.search.space import SearchSpace
from workbench.sensitivity.batches import LABEL_FREE_METRICS, has_labels

if TYPE_CHECKING:
    from workbench.sensitivity import SensitivityConfig
    from workbench.tasks.task import TaskLike


def search_sensitivity_config(task: TaskLike, config: SearchConfig) -> SensitivityConfig:
    """The sensitivity knobs a search with ``config`` on ``task`` needs (see the module docstring)."""
    from workbench.sensitivity import SensitivityConfig

    uses_auto = config.strategy == "auto" or config.warm_start == "auto"
    if not uses_auto:
        base = SensitivityConfig()
        if has_labels(task):
            return base
        return replace(base, metrics=LABEL_FREE_METRICS, cost_metric="output_mse")
    space = SearchSpace(task.model, config.space)
    bits = sorted({b for u in space.units for b in u.choices.w_bits if b in INT_BITS}) or [8]
    grans = sorted({_unit_granularity(u) for u in space.units} & {"per_tensor", "per_channel"}) or [
        "per_channel"
    ]
    return SensitivityConfig(
        w_bits=tuple(bits),
        a_bits=(),
        granularities=tuple(grans),
        metrics=LABEL_FREE_METRICS,
        per_channel=False,
        cost_metric=None,
        base_spec=config.space.base_spec,
        num_threads=config.worker_threads,
        seed=config.seed,
        progress=config.progress,
    )


def search_sensitivity(task: TaskLike, config: SearchConfig, *, device: Any = None) -> Any:
    """The sensitivity result of :func:`search_sensitivity_config` (cached on disk like every analysis)."""
    from workbench.sensitivity import analyze_sensitivity

    return analyze_sensitivity(task, search_sensitivity_config(task, config), track=False, device=device)


def auto_sensitivity(task: TaskLike, config: SearchConfig, sensitivity: Any, *, join: bool = False) -> Any:
    """``sensitivity``, or for a new study of ``auto`` (strategy or warm start) without one, the fast pass of
    :func:`search_sensitivity` (a resumed or joined study reads its tables from its storage)."""
    uses_auto = config.strategy == "auto" or config.warm_start == "auto"
    if sensitivity is not None or not uses_auto or join or config.resume:
        return sensitivity
    return search_sensitivity(task, config)


def default_predictor(task: TaskLike, sensitivity: Any = None, *, n_plans: int = 300, seed: int = 0,
                      model: str = "gbt", progress: bool = False, w_bits: Sequence[int] = (2, 3, 4, 6, 8),
                      a_bits: Sequence[int] = (8,)) -> Any:  # fmt: skip
    """The accuracy predictor of :mod:`workbench.predictor` on ``task`` (plan dataset cached under data/), trained
    on plans drawing each layer's bits from ``w_bits`` / ``a_bits`` (``a_bits=(32,)``: weight-only plans, as a
    weight-only search space needs)."""
    from workbench.predictor import AccuracyPredictor, PlanDatasetConfig, PlanFeaturizer, build_plan_dataset
    from workbench.sensitivity import analyze_sensitivity

    sens = sensitivity if sensitivity is not None else analyze_sensitivity(task, track=False)
    n_random = n_plans // 2
    ds_config = PlanDatasetConfig(
        n_random=n_random,
        n_stratified=n_plans - n_random,
        seed=seed,
        w_bits=tuple(w_bits),
        a_bits=tuple(a_bits),
    )
    dataset = build_plan_dataset(task, sens, ds_config, track=False)
    featurizer = PlanFeaturizer.fit(task, sens, w_bits=tuple(w_bits), a_bits=tuple(a_bits))
    predictor = AccuracyPredictor.fit(dataset, featurizer, model=model, seed=seed)
    predictor.info["dataset_plans"] = len(dataset)
    return predictor


__all__ = ["auto_sensitivity", "default_predictor", "search_sensitivity", "search_sensitivity_config"]
