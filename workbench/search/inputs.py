"""The sensitivity result a search needs, built with knobs that fit its space and its task:
:func:`search_sensitivity_config` (what to probe) and :func:`search_sensitivity` (probe, or read the cache).

For ``auto`` (strategy or warm start) the pass is fast: weight probes only, at the space's narrowest integer
width and the ones nearest ``SearchConfig.probe_bits`` (default 2 and 4; the other widths are scaled from them by
the weight quantization noise, :class:`~workbench.sensitivity.scaled.ScaledSensitivity`), at the granularity the
plans use (per channel unless the space has none), output errors only (``output_mse`` and ``output_kl``; no
labels needed), no per-channel table. For the other baselines: the sensitivity defaults, or
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
    bits = _probed_bits(task, config)
    space = SearchSpace(task.model, config.space)
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


def _space_bits(task: TaskLike, config: SearchConfig) -> list[int]:
    space = SearchSpace(task.model, config.space)
    return sorted({b for u in space.units for b in u.choices.w_bits if b in INT_BITS}) or [8]


def _probed_bits(task: TaskLike, config: SearchConfig) -> list[int]:
    """The widths ``auto``'s pass probes: every integer width of the space, or its narrowest and the ones nearest
    ``probe_bits``."""
    bits = _space_bits(task, config)
    if config.probe_bits is None:
        return bits
    near = {min(bits, key=lambda b: (abs(b - p), -b)) for p in config.probe_bits}
    return sorted(near | {bits[0]})


def search_sensitivity(task: TaskLike, config: SearchConfig, *, device: Any = None) -> Any:
    """The sensitivity result of :func:`search_sensitivity_config` (cached on disk like every analysis); for
    ``auto`` probed at fewer widths than the space has, extended to them by
    :class:`~workbench.sensitivity.scaled.ScaledSensitivity`."""
    from workbench.sensitivity import analyze_sensitivity
    from workbench.sensitivity.scaled import ScaledSensitivity

    sconfig = search_sensitivity_config(task, config)
    result = analyze_sensitivity(task, sconfig, track=False, device=device)
    bits = _space_bits(task, config)
    if set(bits) <= set(sconfig.w_bits):
        return result
    return ScaledSensitivity(result, task.model, bits, base_spec=sconfig.base_spec)


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
