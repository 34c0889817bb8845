"""HAWQ-V3's integer linear program as a baseline: :func:`ilp_solve` is the exact array core (one choice per
row minimising the summed sensitivity under a cost budget, ``scipy.optimize.milp``), :func:`ilp_candidates` runs
it per budget on a :class:`~workbench.search.space.SearchSpace`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from workbench.search.candidates import (
    COST_UNITS,
    Candidate,
    _cost_info,
    _cost_of,
    _fmt,
    _plan,
    unit_tables,
)
from workbench.search.space import SearchSpace


def _ilp(
    sensitivity: np.ndarray, cost: np.ndarray, budget: float, allowed: np.ndarray | None
) -> tuple[np.ndarray | None, str, float]:
    """(chosen column per row or None, solver status, objective) of the one-choice-per-row knapsack."""
    return _milp(sensitivity, [cost], [budget], allowed)


def _check_arrays(
    s: np.ndarray, costs: Sequence[np.ndarray], budgets: Sequence[float], allowed: np.ndarray | None
) -> np.ndarray:
    """The mask of allowed, finite choices; raises on shapes, budgets or rows without a choice."""
    if s.ndim != 2 or s.size == 0 or not costs or any(c.shape != s.shape for c in costs):
        raise ValueError(
            f"sensitivity and cost must be non-empty 2-D arrays of one shape, got {s.shape} and "
            f"{[c.shape for c in costs]}"
        )
    if len(budgets) != len(costs) or not all(math.isfinite(float(b)) for b in budgets):
        raise ValueError(f"budgets must be finite numbers, one per cost array, got {list(budgets)!r}")
    mask = np.isfinite(s)
    for c in costs:
        mask &= np.isfinite(c)
    if allowed is not None:
        allowed = np.asarray(allowed, dtype=bool)
        if allowed.shape != s.shape:
            raise ValueError(f"allowed must have the shape {s.shape} of sensitivity, got {allowed.shape}")
        mask &= allowed
    empty = np.flatnonzero(~mask.any(axis=1))
    if empty.size:
        raise ValueError(f"row(s) {empty.tolist()} have no allowed, finite choice")
    return mask


def _milp(
    sensitivity: np.ndarray, costs: Sequence[np.ndarray], budgets: Sequence[float], allowed: np.ndarray | None
) -> tuple[np.ndarray | None, str, float]:
    """One choice per row minimising the summed sensitivity with every summed cost <= its budget."""
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import coo_array

    s = np.asarray(sensitivity, dtype=np.float64)
    cs = [np.asarray(c, dtype=np.float64) for c in costs]
    mask = _check_arrays(s, cs, budgets, allowed)
    n = s.shape[0]
    limits_exact = [float(b) for b in budgets]
    if any(np.where(mask, c, np.inf).min(axis=1).sum() > b for c, b in zip(cs, limits_exact)):
        return None, "infeasible", math.nan
    rows, cols = np.nonzero(mask)
    nv = rows.size
    s_scale = float(np.abs(s[mask]).max()) or 1.0
    c_scales = [float(np.abs(c[mask]).max()) or 1.0 for c in cs]
    obj = s[rows, cols] / s_scale
    one_hot = coo_array((np.ones(nv), (rows, np.arange(nv))), shape=(n, nv)).tocsr()
    cost_rows = np.stack([c[rows, cols] / sc for c, sc in zip(cs, c_scales)])
    limits = np.array([b / sc for b, sc in zip(limits_exact, c_scales)])
    for _ in range(8):  # tighten if the solver's feasibility tolerance let a choice exceed an exact budget
        res = milp(
            obj,
            constraints=[LinearConstraint(one_hot, 1.0, 1.0), LinearConstraint(cost_rows, -np.inf, limits)],
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
        totals = [float(c[np.arange(n), choice].sum()) for c in cs]
        over = [t - b for t, b in zip(totals, limits_exact)]
        if all(o <= 0 for o in over):
            return choice, status, float(s[np.arange(n), choice].sum())
        for i, o in enumerate(over):
            if o > 0:
                limits[i] -= o / c_scales[i] + 1e-9 * max(1.0, abs(limits[i]))
    return None, "infeasible (after tightening)", math.nan


def ilp_solve_multi(
    sensitivity: np.ndarray,
    costs: Sequence[np.ndarray],
    budgets: Sequence[float],
    *,
    allowed: np.ndarray | None = None,
) -> np.ndarray | None:
    """:func:`ilp_solve` under several budgets at once (one per cost array: bytes, bits, BOPs ... together):
    the chosen column per row, or None when no choice meets every budget."""
    choice, _, _ = _milp(sensitivity, list(costs), list(budgets), allowed)
    return choice


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


def _spread(space: SearchSpace, cost_model: Any, sens: pd.DataFrame, cost_df: pd.DataFrame, cost: str,
            span: int) -> tuple[float, ...]:  # fmt: skip
    """``span`` budgets from the real cost of the plan of each unit's cheapest choice to that of its dearest. The
    plans are priced whole: a latency made of per-layer costs measured in context is not additive (conversions
    between neighbours), so the sum of the units' shares can even fall below zero where the plan cannot."""
    c = cost_df.to_numpy(dtype=np.float64)
    c = np.where(np.isfinite(sens.to_numpy(dtype=np.float64)), c, np.nan)
    units, columns = [u.name for u in space.units], list(cost_df.columns)

    def real(pick: np.ndarray) -> float:
        return _cost_of(
            cost_model(_plan(space, {units[i]: int(columns[j]) for i, j in enumerate(pick)})), cost
        )

    lo, hi = sorted((real(np.nanargmin(c, axis=1)), real(np.nanargmax(c, axis=1))))
    if not hi > 0:
        raise ValueError(f"the cost model prices every plan at {hi} {cost}: no budgets to spread")
    # an estimate clipped at zero (noisy per-layer timings on a tiny model) still gets a budget > 0
    lo = max(lo, 1e-6 * hi)
    return tuple(np.linspace(lo * (1 + 1e-9), hi, max(span, 2)))


def ilp_candidates(
    space: SearchSpace,
    cost_model: Any,
    sensitivity: Any,
    *,
    budgets: Sequence[float] = (0.10, 0.125, 0.15, 0.2, 0.25),
    budget_values: Sequence[float] | None = None,
    cost: str = "weight_size",
    metric: str = "omega",
    span: int | None = None,
) -> list[Candidate]:
    """HAWQ-V3's ILP per budget: binary ``x[u, b]``, one bit width per unit, minimise ``sum sens[u,b] x[u,b]``
    subject to the whole plan's cost (fixed and float layers included) <= the budget. ``budgets``: fractions of
    the FP32 model's total cost (``cost_model.fp32_cost``); ``budget_values``: absolute budgets in the cost's units
    (bytes, bit operations, ms), used instead of ``budgets`` when given; ``span``: that many budgets spread evenly
    from the cheapest plan the choices allow to the dearest, used instead of both (latency and energy, whose
    cheapest plan may cost most of FP32's). The chosen plan's real cost (from the
    cost model) is checked against the budget and the ILP re-solved tighter when byte rounding pushed it over.
    Infeasible budgets are left out (largest budget first); if none is feasible, ValueError names the smallest
    achievable cost. info: budget, budget_fraction, objective, status, bits, cost."""
    sens, cost_df = unit_tables(space, cost_model, sensitivity, metric=metric, cost=cost)
    fp32_total = float(cost_df.attrs["fp32_total"])
    rest = float(cost_df.attrs["rest"])
    if span is not None:
        budget_values = _spread(space, cost_model, sens, cost_df, cost, int(span))
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


__all__ = ["ilp_candidates", "ilp_solve", "ilp_solve_multi"]
