"""What every baseline shares: the :class:`Candidate` it returns, per-unit plan helpers, the per-unit
sensitivity / cost tables (:func:`unit_tables`) and :func:`select_evenly`.

Per-unit tables: a unit's sensitivity at ``b`` bits is the sum over its layers of the sensitivity result's
per-layer value (missing values at 16 and 32 bits count as 0); its cost at ``b`` bits is its own share of the
plan cost, computed once with the :class:`~workbench.search.objectives.CostModel`: costs are additive over
layers, so a plan's cost is ``cost.attrs["rest"] + sum of its units' costs``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from workbench.quant.spec import QuantPlan, QuantSpec
from workbench.search.space import SearchSpace
from workbench.search.space_config import GRANULARITIES, Unit

COST_KINDS: dict[str, str] = {
    "weight_size": "weight_bytes",
    "size": "size_bytes",
    "bops": "bops",
    "latency": "latency_ms",
    "energy": "energy_mj",
}
"""Cost kind -> :class:`~workbench.search.objectives.PlanCost` attribute."""

COST_UNITS: dict[str, str] = {
    "weight_size": "bytes",
    "size": "bytes",
    "bops": "bit operations",
    "latency": "ms",
    "energy": "mJ",
}
ZERO_SENSITIVITY_BITS: tuple[int, ...] = (
    16,
    32,
)  # treated as lossless when the sensitivity result lacks them


@dataclass(frozen=True)
class Candidate:
    """One plan proposed by a baseline: a short label, the plan, and what the baseline knows about it."""

    label: str
    plan: QuantPlan
    info: dict[str, Any] = field(default_factory=dict, compare=False)


# ============================================================================================ helpers


def _check_choice(value: Any, valid: Sequence[Any], name: str) -> None:
    if not isinstance(value, str) or value not in valid:
        raise ValueError(f"{name}={value!r} is not valid; choose one of {list(valid)}")


def _check_space(space: Any) -> None:
    if not isinstance(space, SearchSpace):
        raise ValueError(f"space must be a SearchSpace, got {type(space).__name__}")


def _unit_a_bits(unit: Unit) -> int:
    a = unit.choices.a_bits
    return 8 if 8 in a else max(a)


def _unit_granularity(unit: Unit, preferred: str = "per_channel") -> str:
    g = unit.choices.granularities
    return preferred if preferred in g else g[0]


def _unit_bits(unit: Unit) -> tuple[int, ...]:
    return tuple(sorted(int(b) for b in unit.choices.w_bits))


def _unit_spec(space: SearchSpace, unit: Unit, w_bits: int, granularity: str = "per_channel") -> QuantSpec:
    return space.unit_spec(
        unit,
        {
            "method": "quantize",
            "w_bits": int(w_bits),
            "a_bits": _unit_a_bits(unit),
            "granularity": _unit_granularity(unit, granularity),
        },
    )


def _plan(space: SearchSpace, bits: Mapping[str, int], granularity: str = "per_channel") -> QuantPlan:
    """The plan giving every unit ``bits[unit]`` (method quantize); fixed layers as the space fixes them."""
    layers: dict[str, QuantSpec] = dict(space.fixed)
    for u in space.units:
        spec = _unit_spec(space, u, bits[u.name], granularity)
        if not spec.is_identity:
            for layer in u.layers:
                layers[layer] = spec
    return QuantPlan(layers)


def _cost_of(plan_cost: Any, kind: str) -> float:
    return float(getattr(plan_cost, COST_KINDS[kind]))


def _fp32_share(cost_model: Any, layer: str, kind: str) -> float:
    """A layer's part of the FP32 model's cost (what the plan cost loses when the layer leaves float32)."""
    weight = dict(cost_model.model.named_modules())[layer].weight
    if kind == "weight_size":
        return 4.0 * weight.numel()
    if kind == "size":
        return float(weight.numel() * weight.element_size())
    macs = float(cost_model.costs[layer].macs)
    if kind == "bops":
        return 32.0 * 32.0 * macs
    fp32_bops = float(cost_model.fp32.fp32_bops)
    return cost_model.fp32_latency_ms * 32.0 * 32.0 * macs / fp32_bops if fp32_bops else 0.0


def _cost_info(cost_model: Any, plan: QuantPlan) -> dict[str, Any]:
    if cost_model is None:
        return {}
    pc = cost_model(plan)
    fp32 = cost_model.fp32_cost
    out: dict[str, Any] = {"cost": pc.to_dict()}
    if fp32.weight_bytes:
        out["weight_fraction"] = pc.weight_bytes / fp32.weight_bytes
    return out


def _fmt(x: float) -> str:
    return f"{x:.6g}"


def _sens_matrices(sensitivity: Any, metric: str, granularities: set[str]) -> dict[str, pd.DataFrame]:
    table = getattr(sensitivity, "table", None)
    available = list(sensitivity.metrics()) if hasattr(sensitivity, "metrics") else []
    if metric not in available:
        raise ValueError(
            f"metric {metric!r} is not in the sensitivity result; available metrics: {available}"
        )
    weight_metrics = (
        sorted(table.loc[table["kind"] == "weight", "metric"].unique()) if table is not None else available
    )
    out: dict[str, pd.DataFrame] = {}
    for g in sorted(granularities):
        try:
            out[g] = sensitivity.matrix(metric, kind="weight", granularity=g)
        except ValueError as e:
            raise ValueError(
                f"metric {metric!r} has no per-bit weight values at granularity {g!r} ({e}); metrics with "
                f"per-bit weight values: {weight_metrics}"
            ) from e
    return out


# ============================================================================================ tables


def unit_tables(
    space: SearchSpace,
    cost_model: Any,
    sensitivity: Any,
    *,
    metric: str = "omega",
    cost: str = "weight_size",
    granularity: str = "per_channel",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(sensitivity, cost): units (rows, forward order) x weight bits (columns, ascending; the union of the units'
    choices, NaN where a unit lacks that choice).

    Sensitivity: sum over the unit's layers of ``sensitivity.matrix(metric, kind="weight")`` at the unit's
    granularity (``granularity`` when the unit allows it, else its first choice); missing values at 16 / 32 bits
    are 0, missing values at other bits raise. Cost (``cost``: one of :data:`COST_KINDS`): the unit's own share
    of the plan cost, so ``plan cost = cost.attrs["rest"] + sum over units``. ``cost.attrs`` also holds
    ``fp32_total`` (the float model's cost), ``base_total`` (every unit float32, fixed layers as fixed), ``kind``
    and ``unit`` (e.g. "bytes").
    """
    _check_space(space)
    _check_choice(cost, tuple(COST_KINDS), "cost")
    _check_choice(granularity, GRANULARITIES, "granularity")
    if not isinstance(metric, str):
        raise ValueError(f"metric must be a string, got {metric!r}")
    unit_gran = {u.name: _unit_granularity(u, granularity) for u in space.units}
    mats = _sens_matrices(sensitivity, metric, set(unit_gran.values()))
    columns = sorted({b for u in space.units for b in _unit_bits(u)})
    index = [u.name for u in space.units]
    sens = pd.DataFrame(np.nan, index=index, columns=columns, dtype=np.float64)
    for u in space.units:
        mat = mats[unit_gran[u.name]]
        missing_layers = [layer for layer in u.layers if layer not in mat.index]
        if missing_layers:
            raise ValueError(
                f"the sensitivity result has no {metric!r} values for layer(s) {missing_layers} of unit "
                f"{u.name!r}; its layers: {list(mat.index)}"
            )
        for b in _unit_bits(u):
            if b in mat.columns and mat.loc[list(u.layers), b].notna().all():
                sens.loc[u.name, b] = float(mat.loc[list(u.layers), b].sum())
            elif b in ZERO_SENSITIVITY_BITS:
                sens.loc[u.name, b] = 0.0
            else:
                probed = [int(c) for c in mat.columns if mat.loc[list(u.layers), c].notna().all()]
                raise ValueError(
                    f"the sensitivity result has no {metric!r} value at {b} bits for unit {u.name!r} "
                    f"(layers {list(u.layers)}); probed bits: {probed}. Narrow the space's w_bits to probed bits "
                    f"(16 and 32 count as lossless)"
                )
    base = QuantPlan(dict(space.fixed))
    base_total = _cost_of(cost_model(base), cost)
    cost_df = pd.DataFrame(np.nan, index=index, columns=columns, dtype=np.float64)
    shares = 0.0
    for u in space.units:
        share = sum(_fp32_share(cost_model, layer, cost) for layer in u.layers)
        shares += share
        for b in _unit_bits(u):
            plan = space.with_unit(base, u.name, _unit_spec(space, u, b, granularity))
            cost_df.loc[u.name, b] = share + _cost_of(cost_model(plan), cost) - base_total
    sens.index.name = cost_df.index.name = "unit"
    sens.columns.name = cost_df.columns.name = "w_bits"
    sens.attrs.update(metric=metric, granularity=granularity)
    cost_df.attrs.update(
        kind=cost,
        unit=COST_UNITS[cost],
        rest=base_total - shares,
        base_total=base_total,
        fp32_total=_cost_of(cost_model.fp32_cost, cost),
        granularity=granularity,
    )
    return sens, cost_df


# ============================================================================================ selection


def select_evenly(candidates: Sequence[Candidate], n: int) -> list[Candidate]:
    """At most ``n`` candidates spread evenly along ``candidates`` (identical plans, by
    :meth:`SearchSpace.plan_key`, kept once, the first time), always with the first and the last (``n=1``: the
    first only)."""
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    seen: set[str] = set()
    unique: list[Candidate] = []
    for c in candidates:
        if not isinstance(c, Candidate):
            raise ValueError(f"select_evenly expects Candidates, got {type(c).__name__}")
        key = SearchSpace.plan_key(c.plan)
        if key not in seen:
            seen.add(key)
            unique.append(c)
    if len(unique) <= n:
        return unique
    if n == 1:
        return unique[:1]
    idx = sorted({int(round(i)) for i in np.linspace(0, len(unique) - 1, int(n))})
    return [unique[i] for i in idx]


__all__ = [
    "COST_KINDS",
    "COST_UNITS",
    "Candidate",
    "ZERO_SENSITIVITY_BITS",
    "select_evenly",
    "unit_tables",
]
