"""What a worker needs to evaluate trials of one study (:class:`SearchContext`), built and checked by
:func:`prepare` before any study exists."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from workbench.quant.spec import QuantPlan
from workbench.search.config import MEMORY, SearchConfig, SearchError
from workbench.search.objectives import OBJECTIVES, CostModel, EvalCache, PlanEvaluator, PredictedAccuracy
from workbench.search.space import SearchSpace, mean_bits_of

if TYPE_CHECKING:
    from workbench.tasks.task import TaskLike


@dataclass
class SearchContext:
    """Everything a worker needs to evaluate trials of one study."""

    task: TaskLike
    config: SearchConfig
    space: SearchSpace
    cost_model: CostModel
    evaluator: PlanEvaluator
    predicted: PredictedAccuracy | None
    fp32_weight_bytes: int
    history: list[np.ndarray] = field(default_factory=list)
    worker: int = 0
    study_attrs: dict[str, Any] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=dict)  # sensitivity pass, allocation (this run)
    _weights: tuple[dict[str, int], dict[str, int]] | None = field(default=None, repr=False)

    def space_bits(self, plan: QuantPlan) -> dict[str, float]:
        """Weight bits averaged over the searched layers: element-weighted (``space_avg_bits``) and
        MACs-weighted (``space_mac_bits``); a layer left float counts 32."""
        elems, macs = self._space_weights()
        return {"space_avg_bits": mean_bits_of(plan, elems), "space_mac_bits": mean_bits_of(plan, macs)}

    def _space_weights(self) -> tuple[dict[str, int], dict[str, int]]:
        if self._weights is None:
            modules = dict(self.cost_model.model.named_modules())
            layers = [n for u in self.space.units for n in u.layers]
            elems = {n: int(modules[n].weight.numel()) for n in layers}
            macs = {n: int(self.cost_model.costs[n].macs) for n in layers}
            self._weights = (elems, macs)
        return self._weights

    def constraints(self, plan: QuantPlan, cost: Any, accuracy: float | None) -> list[float]:
        c = []
        cfg = self.config
        if cfg.max_weight_fraction is not None:
            c.append(cost.weight_bytes / self.fp32_weight_bytes - cfg.max_weight_fraction)
        if cfg.max_size_bytes is not None:
            c.append(float(cost.size_bytes - cfg.max_size_bytes))
        if cfg.max_avg_weight_bits is not None or cfg.max_avg_mac_bits is not None:
            bits = self.space_bits(plan)
            if cfg.max_avg_weight_bits is not None:
                c.append(bits["space_avg_bits"] - cfg.max_avg_weight_bits)
            if cfg.max_avg_mac_bits is not None:
                c.append(bits["space_mac_bits"] - cfg.max_avg_mac_bits)
        if cfg.max_accuracy_drop is not None:
            drop = math.inf if accuracy is None else 100.0 * (self.evaluator.fp32_accuracy - accuracy)
            c.append(drop - cfg.max_accuracy_drop)
        return c

    def choice_vector(self, params: dict[str, Any]) -> np.ndarray:
        return np.array(
            [str(params.get(SearchSpace.param_name(u, k))) for u, k, _ in self.space.knob_table()]
        )


def study_directions(objectives: Sequence[str]) -> list[str]:
    return [OBJECTIVES[o] for o in objectives]


def objective_values(objectives: Sequence[str], accuracy: float, cost: Any) -> list[float]:
    """The values a trial reports, one per objective: ``accuracy`` for accuracy, the plan's cost otherwise."""
    return [accuracy if o == "accuracy" else float({"size": cost.size_bytes, "weight_size": cost.weight_bytes,
            "bops": cost.bops, "latency": cost.latency_ms, "energy": cost.energy_mj}[o])
            for o in objectives]  # fmt: skip


def search_cost_model(
    task: TaskLike, config: SearchConfig, *, fp32_latency_ms: float | None = None
) -> CostModel:
    """The cost model of a search with ``config`` on ``task``: its latency profile and batch size, or (no
    profile) the BOPs proxy scaled by ``fp32_latency_ms`` (None: measured here)."""
    return CostModel(
        task.model,
        task.example_input(),
        fp32_latency_ms=fp32_latency_ms if config.profile is None else None,
        profile=config.profile,
        batch_size=config.latency_batch_size,
        calib=task.calib_loader,
    )


def search_evaluator(task: TaskLike, config: SearchConfig, storage_url: str) -> PlanEvaluator:
    """The evaluator of a search with ``config`` on ``task``: measures on ``config.split`` with the search's
    seed, its cache in the study's database ``storage_url`` (in this process only for ``":memory:"``)."""
    cache = EvalCache(None if storage_url == MEMORY else storage_url)
    return PlanEvaluator(task, split=config.split, cache=cache, seed=config.seed, ptq=config.ptq)


def prepare(
    task: TaskLike,
    config: SearchConfig,
    predictor: Any,
    storage_url: str,
    *,
    space: SearchSpace | None = None,
    fp32_latency_ms: float | None = None,
) -> SearchContext:
    """The context of one worker: the space, cost model, evaluator (its cache in the study's database) and
    predictor; refuses a space that cannot be built and size budgets no plan of it meets."""
    space = space if space is not None else SearchSpace(task.model, config.space)
    cost_model = search_cost_model(task, config, fp32_latency_ms=fp32_latency_ms)
    evaluator = search_evaluator(task, config, storage_url)
    evaluator.fp32_accuracy  # noqa: B018 - a bad split or loader fails here, before any study exists
    predicted = None
    if predictor is not None:
        predicted = PredictedAccuracy(predictor, evaluator.fp32_accuracy)
    ctx = SearchContext(
        task=task,
        config=config,
        space=space,
        cost_model=cost_model,
        evaluator=evaluator,
        predicted=predicted,
        fp32_weight_bytes=cost_model.fp32_cost.weight_bytes,
    )
    _check_feasible(ctx)
    return ctx


def _unit_specs(space: SearchSpace, unit: Any, *, all_a_bits: bool) -> list[Any]:
    """Every distinct spec a unit can take (built, hence validated)."""
    import itertools

    ch = unit.choices.knob_choices()
    knobs = [k for k in ch if all_a_bits or k != "a_bits"]
    specs = {}
    for combo in itertools.product(*(ch[k] for k in knobs)):
        values = dict(zip(knobs, combo, strict=True))
        if not all_a_bits:
            values["a_bits"] = min(ch["a_bits"])
        spec = space.unit_spec(unit, values)
        specs[json.dumps(spec.to_dict(), sort_keys=True)] = spec
    return list(specs.values())


def _check_feasible(ctx: SearchContext) -> None:
    """Build every spec of every unit (so a bad space fails before the study exists) and refuse size budgets
    that no plan of the space meets: costs add up over units, so the smallest plan takes each unit's
    smallest option."""
    from workbench.quant.spec import PlanError

    cfg = ctx.config
    space = ctx.space
    base = space.plan_from_params({})
    base_cost = ctx.cost_model(base)
    min_weight = base_cost.weight_bytes
    min_size = base_cost.size_bytes
    base_bits = ctx.space_bits(base)
    min_bits = dict(base_bits)  # weighted averages: a unit's choice moves them additively
    for unit in space.units:
        try:
            specs = _unit_specs(space, unit, all_a_bits=cfg.max_size_bytes is not None)
        except PlanError as e:
            raise SearchError(f"unit {unit.name!r} of the search space cannot be built: {e}") from e
        plans = [space.with_unit(base, unit.name, spec) for spec in specs]
        costs = [ctx.cost_model(p) for p in plans]
        min_weight += min(c.weight_bytes for c in costs) - base_cost.weight_bytes
        min_size += min(c.size_bytes for c in costs) - base_cost.size_bytes
        unit_bits = [ctx.space_bits(p) for p in plans]
        for k in min_bits:
            min_bits[k] += min(b[k] for b in unit_bits) - base_bits[k]
    if cfg.max_weight_fraction is not None:
        frac = min_weight / ctx.fp32_weight_bytes
        if frac > cfg.max_weight_fraction:
            raise SearchError(
                f"max_weight_fraction={cfg.max_weight_fraction} is below what any plan of this space reaches: "
                f"the smallest plan keeps {frac:.4f} of the FP32 weight bytes"
            )
    if cfg.max_size_bytes is not None and min_size > cfg.max_size_bytes:
        raise SearchError(
            f"max_size_bytes={cfg.max_size_bytes} is below what any plan of this space reaches: the smallest "
            f"plan takes {min_size} bytes"
        )
    for name, key in (("max_avg_weight_bits", "space_avg_bits"), ("max_avg_mac_bits", "space_mac_bits")):
        cap = getattr(cfg, name)
        if cap is not None and min_bits[key] > cap + 1e-9:
            raise SearchError(
                f"{name}={cap} is below what any plan of this space reaches: the smallest plan averages "
                f"{min_bits[key]:.3f} weight bits over the {sum(len(u.layers) for u in space.units)} searched layers"
            )
