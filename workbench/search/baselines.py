"""Reference mixed-precision searches to compare the workbench's searches against.

Every baseline decides one weight bit width per *unit* of a :class:`~workbench.search.space.SearchSpace` (a layer
or a group of layers sharing a choice) with method ``quantize``; activations stay at 8 bits (or the unit's
highest choice when 8 is not one) and granularity per channel (or the unit's first choice). Fixed layers keep
the space's specs, skipped layers stay float32. Each returns a list of :class:`Candidate` ordered from the
largest / most accurate plan to the smallest.

* :func:`uniform_candidates`: every unit at the same bits;
* :func:`greedy_candidates`: the cost-benefit layer selection of seed 000 (lower the unit with the best
  cost saved / sensitivity added, one bits step at a time), the whole curve;
* :func:`ilp_candidates`: HAWQ-V3's integer linear program (minimise the summed sensitivity under a budget on
  size, BOPs or latency), solved exactly with ``scipy.optimize.milp``; :func:`ilp_solve` is its array core;
* :func:`aimet_candidates`: AIMET AMP's two phases (per-layer accuracy probes, then a greedy Pareto curve);
* :func:`control_loop_candidates`: the control loop of seed 000 (walk the layers in forward order, give each the
  lowest bits whose predicted accuracy drop of the whole plan stays within a threshold);
* :func:`select_evenly`: a few candidates spread along a curve.

Per-unit tables (:func:`unit_tables`): a unit's sensitivity at ``b`` bits is the sum over its layers of the
sensitivity result's per-layer value (missing values at 16 and 32 bits count as 0); its cost at ``b`` bits is
its own share of the plan cost, computed once with the :class:`~workbench.search.objectives.CostModel`: costs
are additive over layers, so a plan's cost is ``cost.attrs["rest"] + sum of its units' costs`` (up to the
rounding of byte counts, which the ILP checks on the real plan).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from workbench.quant.spec import QuantPlan, QuantSpec
from workbench.search.space import GRANULARITIES, SearchSpace, Unit

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
AIMET_ORDERS: tuple[str, ...] = ("ratio", "aimet")
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


# ============================================================================================ uniform


def uniform_candidates(space: SearchSpace) -> list[Candidate]:
    """One plan per weight bit width common to every unit, per channel (or each unit's first granularity), and
    also per tensor when every unit allows per tensor; largest first. No common bits: an empty list."""
    _check_space(space)
    common = set(_unit_bits(space.units[0]))
    for u in space.units[1:]:
        common &= set(_unit_bits(u))
    grans = ["per_channel"]
    if all("per_tensor" in u.choices.granularities for u in space.units):
        grans.append("per_tensor")
    a_set = {_unit_a_bits(u) for u in space.units}
    a_text = str(a_set.pop()) if len(a_set) == 1 else "mixed"
    out: list[Candidate] = []
    for b in sorted(common, reverse=True):
        for g in grans:
            applied = {_unit_granularity(u, g) for u in space.units}
            g_text = applied.pop() if len(applied) == 1 else "mixed"
            plan = _plan(space, {u.name: b for u in space.units}, g)
            out.append(
                Candidate(
                    f"uniform w{b}a{a_text} {g_text}",
                    plan,
                    {
                        "method": "uniform",
                        "w_bits": b,
                        "granularity": g_text,
                        "bits": {u.name: b for u in space.units},
                    },
                )
            )
    seen: set[str] = set()
    unique = []
    for c in out:
        key = SearchSpace.plan_key(c.plan)
        if key not in seen:
            seen.add(key)
            unique.append(c)
    return unique


# ============================================================================================ greedy curves


def _start_bits(unit: Unit) -> int:
    bits = _unit_bits(unit)
    low = [b for b in bits if b <= 8]
    return max(low) if low else max(bits)


def _lower(unit: Unit, b: int) -> int | None:
    below = [x for x in _unit_bits(unit) if x < b]
    return max(below) if below else None


def _greedy_curve(
    space: SearchSpace,
    cost_model: Any,
    sens: pd.DataFrame,
    cost: pd.DataFrame,
    start: Mapping[str, int],
    pick: Callable[[list[dict[str, Any]]], dict[str, Any]],
    method: str,
    max_steps: int | None,
) -> list[Candidate]:
    current = dict(start)
    rest = float(cost.attrs["rest"])

    def record(step: int, move: dict[str, Any] | None) -> Candidate:
        plan = _plan(space, current)
        info: dict[str, Any] = {
            "method": method,
            "step": step,
            "bits": dict(current),
            "sensitivity": float(sum(sens.loc[u, b] for u, b in current.items())),
            "predicted_cost": rest + float(sum(cost.loc[u, b] for u, b in current.items())),
            "cost_kind": cost.attrs["kind"],
        }
        if move is not None:
            info.update(
                unit=move["unit"], from_bits=move["from"], to_bits=move["to"], score=move["score"],
                sensitivity_added=move["dsens"], cost_saved=move["saved"],
            )  # fmt: skip
        info.update(_cost_info(cost_model, plan))
        return Candidate(f"{method} step {step}", plan, info)

    curve = [record(0, None)]
    step = 0
    while max_steps is None or step < max_steps:
        moves = []
        for i, u in enumerate(space.units):
            b = current[u.name]
            lo = _lower(u, b)
            if lo is None:
                continue
            moves.append(
                {
                    "index": i,
                    "unit": u.name,
                    "from": b,
                    "to": lo,
                    "dsens": float(sens.loc[u.name, lo] - sens.loc[u.name, b]),
                    "saved": float(cost.loc[u.name, b] - cost.loc[u.name, lo]),
                }
            )
        if not moves:
            break
        move = pick(moves)
        current[move["unit"]] = move["to"]
        step += 1
        curve.append(record(step, move))
    return curve


def _check_max(value: Any, name: str) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} must be None or an int >= 1, got {value!r}")


def greedy_candidates(
    space: SearchSpace,
    cost_model: Any,
    sensitivity: Any,
    *,
    metric: str = "output_mse",
    cost: str = "weight_size",
    max_steps: int | None = None,
) -> list[Candidate]:
    """Seed 000's cost-benefit layer selection as a curve: every unit starts at its highest integer precision
    <= 8 bits (its highest choice when none is); each step lowers the one unit, by one step of its bit choices,
    with the best ``cost saved / (sensitivity added + eps)`` (moves saving nothing come last, least sensitive
    first); the plan after each step is recorded ("greedy step 0" is the start) until every unit is at its
    lowest choice or ``max_steps`` steps were taken."""
    _check_max(max_steps, "max_steps")
    sens, cost_df = unit_tables(space, cost_model, sensitivity, metric=metric, cost=cost)
    finite = np.abs(sens.to_numpy()[np.isfinite(sens.to_numpy())])
    eps = 1e-9 * float(finite.max()) if finite.size and finite.max() > 0 else 1e-12

    def pick(moves: list[dict[str, Any]]) -> dict[str, Any]:
        for m in moves:
            m["score"] = m["saved"] / (max(m["dsens"], 0.0) + eps)
        saving = [m for m in moves if m["saved"] > 0]
        if saving:
            return min(saving, key=lambda m: (-m["score"], m["index"]))
        return min(moves, key=lambda m: (m["dsens"], m["index"]))

    start = {u.name: _start_bits(u) for u in space.units}
    return _greedy_curve(space, cost_model, sens, cost_df, start, pick, "greedy", max_steps)


def aimet_candidates(
    space: SearchSpace,
    cost_model: Any,
    sensitivity: Any,
    *,
    metric: str = "acc_drop",
    cost: str = "bops",
    max_points: int | None = None,
    order: str = "ratio",
) -> list[Candidate]:
    """AIMET AMP's curve. Phase 1 is the sensitivity result's per-layer probes (``acc_drop``: the accuracy with
    only that layer at ``b`` bits, the rest float, what AIMET's phase-1 eval callback measures). Phase 2 starts
    with every unit at its highest choice and lowers one unit per step, recording each point ("aimet step 0" is
    the start) until every unit is at its lowest choice:

    * ``order="ratio"`` (default): the move of one unit to its next lower choice with the smallest accuracy-drop
      increase per unit of cost saved (moves saving nothing come last);
    * ``order="aimet"``: AIMET's own order: the phase-1 (unit, bits) entries sorted by drop (smallest first;
      ties: higher bits, then the earlier unit), applied cumulatively (a unit may skip choices); an entry that
      would not lower its unit is skipped (AIMET would raise the unit back).

    ``max_points``: keep at most that many points, spread evenly (:func:`select_evenly`)."""
    _check_max(max_points, "max_points")
    _check_choice(order, AIMET_ORDERS, "order")
    sens, cost_df = unit_tables(space, cost_model, sensitivity, metric=metric, cost=cost)
    start = {u.name: max(_unit_bits(u)) for u in space.units}
    if order == "ratio":

        def pick(moves: list[dict[str, Any]]) -> dict[str, Any]:
            for m in moves:
                m["score"] = m["dsens"] / m["saved"] if m["saved"] > 0 else math.inf
            saving = [m for m in moves if m["saved"] > 0]
            if saving:
                return min(saving, key=lambda m: (m["score"], m["index"]))
            return min(moves, key=lambda m: (m["dsens"], m["index"]))

        curve = _greedy_curve(space, cost_model, sens, cost_df, start, pick, "aimet", None)
    else:
        # AIMET's accuracy list: (drop, higher bits first, earlier unit first), applied cumulatively
        entries = sorted(
            (float(sens.loc[u.name, b]), -b, i, u.name, b)
            for i, u in enumerate(space.units)
            for b in _unit_bits(u)
            if b < start[u.name]
        )
        current = dict(start)
        accepted: list[dict[str, Any]] = []
        for drop, _, i, unit, b in entries:
            frm = current[unit]
            if b >= frm:
                continue  # would not lower the unit: skipped
            accepted.append(
                {
                    "index": i,
                    "unit": unit,
                    "from": frm,
                    "to": b,
                    "score": drop,
                    "dsens": float(sens.loc[unit, b] - sens.loc[unit, frm]),
                    "saved": float(cost_df.loc[unit, frm] - cost_df.loc[unit, b]),
                }
            )
            current[unit] = b
        replay = iter(accepted)
        curve = _greedy_curve(
            space, cost_model, sens, cost_df, start, lambda _moves: next(replay), "aimet", len(accepted)
        )
    return select_evenly(curve, max_points) if max_points is not None else curve


# ============================================================================================ ILP


def _ilp(
    sensitivity: np.ndarray, cost: np.ndarray, budget: float, allowed: np.ndarray | None
) -> tuple[np.ndarray | None, str, float]:
    """(chosen column per row or None, solver status, objective) of the one-choice-per-row knapsack."""
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import coo_array

    s = np.asarray(sensitivity, dtype=np.float64)
    c = np.asarray(cost, dtype=np.float64)
    if s.ndim != 2 or c.shape != s.shape or s.size == 0:
        raise ValueError(
            f"sensitivity and cost must be non-empty 2-D arrays of one shape, got {s.shape} and {c.shape}"
        )
    mask = np.isfinite(s) & np.isfinite(c)
    if allowed is not None:
        allowed = np.asarray(allowed, dtype=bool)
        if allowed.shape != s.shape:
            raise ValueError(f"allowed must have the shape {s.shape} of sensitivity, got {allowed.shape}")
        mask &= allowed
    empty = np.flatnonzero(~mask.any(axis=1))
    if empty.size:
        raise ValueError(f"row(s) {empty.tolist()} have no allowed, finite choice")
    budget = float(budget)
    if not math.isfinite(budget):
        raise ValueError(f"budget must be a finite number, got {budget!r}")
    n, _ = s.shape
    c_min = np.where(mask, c, np.inf).min(axis=1)
    if c_min.sum() > budget:
        return None, "infeasible", math.nan
    rows, cols = np.nonzero(mask)
    nv = rows.size
    s_scale = float(np.abs(s[mask]).max()) or 1.0
    c_scale = float(np.abs(c[mask]).max()) or 1.0
    obj = s[rows, cols] / s_scale
    one_hot = coo_array((np.ones(nv), (rows, np.arange(nv))), shape=(n, nv)).tocsr()
    cost_row = (c[rows, cols] / c_scale)[None, :]
    limit = budget / c_scale
    best = None
    for _ in range(8):  # tighten if the solver's feasibility tolerance let a choice exceed the exact budget
        res = milp(
            obj,
            constraints=[LinearConstraint(one_hot, 1.0, 1.0), LinearConstraint(cost_row, -np.inf, limit)],
            integrality=np.ones(nv),
            bounds=Bounds(0.0, 1.0),
            options={"mip_rel_gap": 0.0, "presolve": True},
        )
        if res.status == 2:
            return None, "infeasible", math.nan
        if res.x is None:
            raise RuntimeError(f"the ILP solver failed (status {res.status}): {res.message}")
        status = "optimal" if res.status == 0 else f"stopped early: {res.message}"
        x = np.asarray(res.x).reshape(-1)
        choice = np.full(n, -1, dtype=np.int64)
        val = np.full(n, -np.inf)
        for v, r, col in zip(x, rows, cols):
            if v > val[r]:
                val[r], choice[r] = v, col
        total = float(c[np.arange(n), choice].sum())
        if total <= budget:
            best = choice
            break
        limit -= (total - budget) / c_scale + 1e-9 * max(1.0, abs(limit))
    if best is None:
        return None, "infeasible (after tightening)", math.nan
    return best, status, float(s[np.arange(n), best].sum())


def ilp_solve(
    sensitivity: np.ndarray, cost: np.ndarray, budget: float, *, allowed: np.ndarray | None = None
) -> np.ndarray | None:
    """HAWQ-V3's integer linear program on arrays: pick one column per row of ``sensitivity`` / ``cost``
    ``[n, k]`` minimising the summed sensitivity with the summed cost <= ``budget``. ``allowed`` ``[n, k]`` bool
    masks choices out (non-finite entries are masked too). Returns the chosen column index per row, or None when
    no choice fits the budget. Solved exactly (``scipy.optimize.milp``, HiGHS, zero relative gap); the returned
    choice's summed cost is checked against ``budget`` in exact float arithmetic."""
    choice, _, _ = _ilp(sensitivity, cost, budget, allowed)
    return choice


def _check_budgets(values: Any, name: str) -> list[float]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence | np.ndarray) or len(values) == 0:
        raise ValueError(f"{name} must be a non-empty sequence of numbers > 0, got {values!r}")
    bad = [
        v for v in values
        if isinstance(v, bool) or not isinstance(v, int | float | np.number) or not (math.isfinite(v) and v > 0)
    ]  # fmt: skip
    if bad:
        raise ValueError(f"{name} must be numbers > 0; bad value(s): {bad}")
    return [float(v) for v in values]


def ilp_candidates(
    space: SearchSpace,
    cost_model: Any,
    sensitivity: Any,
    *,
    budgets: Sequence[float] = (0.10, 0.125, 0.15, 0.2, 0.25),
    budget_values: Sequence[float] | None = None,
    cost: str = "weight_size",
    metric: str = "omega",
) -> list[Candidate]:
    """HAWQ-V3's ILP per budget: binary ``x[u, b]``, one bit width per unit, minimise ``sum sens[u,b] x[u,b]``
    subject to the whole plan's cost (fixed and float layers included) <= the budget. ``budgets``: fractions of
    the FP32 model's total cost (``cost_model.fp32_cost``); ``budget_values``: absolute budgets in the cost's units
    (bytes, bit operations, ms), used instead of ``budgets`` when given. The chosen plan's real cost (from the
    cost model) is checked against the budget and the ILP re-solved tighter when byte rounding pushed it over.
    Infeasible budgets are left out (largest budget first); if none is feasible, ValueError names the smallest
    achievable cost. info: budget, budget_fraction, objective, status, bits, cost."""
    sens, cost_df = unit_tables(space, cost_model, sensitivity, metric=metric, cost=cost)
    fp32_total = float(cost_df.attrs["fp32_total"])
    rest = float(cost_df.attrs["rest"])
    if budget_values is not None:
        targets = [(v, v / fp32_total if fp32_total else math.nan, f"{_fmt(v)}") for v in
                   _check_budgets(budget_values, "budget_values")]  # fmt: skip
    else:
        targets = [(f * fp32_total, f, f"{100 * f:g}%") for f in _check_budgets(budgets, "budgets")]
    targets.sort(key=lambda t: -t[0])
    s_arr = sens.to_numpy(dtype=np.float64)
    c_arr = cost_df.to_numpy(dtype=np.float64)
    allowed = np.isfinite(s_arr) & np.isfinite(c_arr)
    columns = list(sens.columns)
    units = [u.name for u in space.units]
    out: list[Candidate] = []
    for budget, fraction, text in targets:
        limit = budget - rest
        for _ in range(25):
            choice, status, objective = _ilp(s_arr, c_arr, limit, allowed)
            if choice is None:
                break
            bits = {units[i]: int(columns[j]) for i, j in enumerate(choice)}
            plan = _plan(space, bits)
            actual = _cost_of(cost_model(plan), cost)
            if actual <= budget:
                info = {
                    "method": "ilp",
                    "budget": budget,
                    "budget_fraction": fraction,
                    "cost_kind": cost,
                    "metric": metric,
                    "objective": objective,
                    "status": status,
                    "bits": bits,
                    "predicted_cost": rest + float(c_arr[np.arange(len(units)), choice].sum()),
                    "actual_cost": actual,
                    **_cost_info(cost_model, plan),
                }
                out.append(Candidate(f"ilp {cost}<={text}", plan, info))
                break
            limit -= actual - budget  # byte rounding: the real plan is a little larger than the table sum
    if not out:
        cheapest = {units[i]: int(columns[int(np.nanargmin(np.where(allowed[i], c_arr[i], np.nan)))])
                    for i in range(len(units))}  # fmt: skip
        smallest = _cost_of(cost_model(_plan(space, cheapest)), cost)
        asked = [_fmt(t[0]) for t in targets]
        raise ValueError(
            f"no budget is feasible: the smallest achievable {cost} is {_fmt(smallest)} {COST_UNITS[cost]} "
            f"({100 * smallest / fp32_total:.3g}% of FP32 {_fmt(fp32_total)}); budgets asked: {asked}"
        )
    return out


# ============================================================================================ control loop


def control_loop_candidates(
    space: SearchSpace,
    cost_model: Any,
    predict: Callable[[list[QuantPlan]], np.ndarray],
    *,
    thresholds: Sequence[float] = (0.25, 0.5, 1.0, 2.0),
) -> list[Candidate]:
    """Seed 000's control loop, once per threshold (percentage points of accuracy drop): every unit starts at
    its highest choice; walking the units in forward order, each gets the lowest bits whose predicted drop of the
    whole plan (units already decided at their decisions, later units at their highest choice) is <= the
    threshold (its highest choice when none is). ``predict(plans) -> drops in pp`` is called once per unit with
    every bit choice of that unit. Smallest threshold (largest plan) first."""
    _check_space(space)
    if not callable(predict):
        raise ValueError(f"predict must be callable (list of QuantPlan -> drops in pp), got {predict!r}")
    if (
        isinstance(thresholds, (str, bytes))
        or not isinstance(thresholds, Sequence | np.ndarray)
        or not len(thresholds)
    ):
        raise ValueError(f"thresholds must be a non-empty sequence of numbers >= 0, got {thresholds!r}")
    bad = [
        t for t in thresholds
        if isinstance(t, bool) or not isinstance(t, int | float | np.number) or not (math.isfinite(t) and t >= 0)
    ]  # fmt: skip
    if bad:
        raise ValueError(f"thresholds must be finite numbers >= 0 (pp); bad value(s): {bad}")
    out: list[Candidate] = []
    for thr in sorted(float(t) for t in dict.fromkeys(thresholds)):
        current = {u.name: max(_unit_bits(u)) for u in space.units}
        calls = 0
        final_drop = math.nan
        for u in space.units:
            options = _unit_bits(u)
            plans = [_plan(space, {**current, u.name: b}) for b in options]
            drops = np.asarray(predict(plans), dtype=np.float64).reshape(-1)
            calls += 1
            if drops.shape[0] != len(plans):
                raise ValueError(f"predict returned {drops.shape[0]} values for {len(plans)} plans")
            ok = [i for i, d in enumerate(drops) if d <= thr]
            i = min(ok, key=lambda k: options[k]) if ok else len(options) - 1
            current[u.name] = options[i]
            final_drop = float(drops[i])
        plan = _plan(space, current)
        info = {
            "method": "control",
            "threshold_pp": thr,
            "predicted_drop_pp": final_drop,
            "predict_calls": calls,
            "bits": dict(current),
            **_cost_info(cost_model, plan),
        }
        out.append(Candidate(f"control <={thr:g}pp", plan, info))
    return out


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
    "AIMET_ORDERS",
    "COST_KINDS",
    "Candidate",
    "aimet_candidates",
    "control_loop_candidates",
    "greedy_candidates",
    "ilp_candidates",
    "ilp_solve",
    "select_evenly",
    "uniform_candidates",
    "unit_tables",
]
