"""Exact checks independent of the ILP solver: brute force, a branch and bound on the equivalent 0/1 knapsack and a
dynamic program over integer costs; :func:`_verify_row` compares them with the ILP's optimum."""

from __future__ import annotations

import math
from fractions import Fraction
from functools import reduce
from typing import Any

import numpy as np

from workbench.search.hawq_replication.ilp import _with_tolerance


def bruteforce(sens: np.ndarray, cost: np.ndarray, *, max_rows: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """(objective, cost) of every one of the ``2**n`` choices of ``[n, 2]`` rows (row ``i`` of the choice index
    picks column ``(index >> i) & 1``). ``n`` must not exceed ``max_rows``."""
    n = sens.shape[0]
    if n > max_rows:
        raise ValueError(f"brute force needs at most max_rows={max_rows} rows, got {n}")
    objective = np.empty(2**n)
    total = np.empty(2**n)
    chunk = 1 << 16
    shifts = np.arange(n)
    for start in range(0, 2**n, chunk):
        idx = np.arange(start, min(start + chunk, 2**n))
        x = ((idx[:, None] >> shifts[None, :]) & 1).astype(np.float64)
        objective[idx] = sens[:, 0].sum() + x @ (sens[:, 1] - sens[:, 0])
        total[idx] = cost[:, 0].sum() + x @ (cost[:, 1] - cost[:, 0])
    return objective, total


def _knapsack_items(
    sens: np.ndarray, cost: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Two-choice rows as a 0/1 knapsack: (base column, gain, weight, forced) per row. The base is the cheaper
    column (the lower-sensitivity one on a cost tie); gain = sensitivity saved and weight = cost added by the
    other column; ``forced``: +1 take it for free (no cost, positive gain), -1 never take it (no gain)."""
    base = np.where(cost[:, 0] < cost[:, 1], 0, np.where(cost[:, 0] > cost[:, 1], 1, np.argmin(sens, axis=1)))
    rows = np.arange(sens.shape[0])
    gain = sens[rows, base] - sens[rows, 1 - base]
    weight = cost[rows, 1 - base] - cost[rows, base]
    forced = np.where(gain <= 0, -1, np.where(weight <= 0, 1, 0))
    return base, gain, weight, forced


def knapsack_bnb(sens: np.ndarray, cost: np.ndarray, budget: float) -> tuple[np.ndarray, float] | None:
    """Exact minimum of ``sum sens[i, x_i]`` with ``sum cost[i, x_i] <= budget`` over two-choice rows, by a
    depth-first branch and bound on the equivalent 0/1 knapsack (items by gain / weight, fractional bound).
    Independent of the ILP solver. Returns (chosen column per row, objective) or None when infeasible."""
    if sens.ndim != 2 or sens.shape[1] != 2 or cost.shape != sens.shape:
        raise ValueError(f"sens and cost must both be [n, 2], got {sens.shape} and {cost.shape}")
    base, gain, weight, forced = _knapsack_items(sens, cost)
    rows = np.arange(sens.shape[0])
    cap = budget - float(cost[rows, base].sum()) - float(weight[forced == 1].sum())
    if cap < 0:
        return None
    free = np.flatnonzero(forced == 0)
    order = free[np.argsort(-gain[free] / weight[free], kind="stable")]
    g = [float(gain[i]) for i in order]
    w = [float(weight[i]) for i in order]
    m = len(order)
    best_gain, best_set = 0.0, []
    taken: list[int] = []

    def bound(i: int, room: float) -> float:
        total = 0.0
        for j in range(i, m):
            if w[j] <= room:
                room -= w[j]
                total += g[j]
            else:
                return total + g[j] * room / w[j]
        return total

    def dfs(i: int, room: float, acc: float) -> None:
        nonlocal best_gain, best_set
        if acc > best_gain:
            best_gain, best_set = acc, list(taken)
        if i == m or acc + bound(i, room) <= best_gain:
            return
        if w[i] <= room:
            taken.append(i)
            dfs(i + 1, room - w[i], acc + g[i])
            taken.pop()
        dfs(i + 1, room, acc)

    dfs(0, cap, 0.0)
    choice = base.copy()
    alt = np.zeros(sens.shape[0], dtype=bool)
    alt[forced == 1] = True
    alt[order[best_set]] = True
    choice[alt] = 1 - base[alt]
    return choice, float(sens[rows, choice].sum())


def _integer_grid(weights: np.ndarray, *, max_cells: int) -> tuple[np.ndarray, float] | None:
    """(integer weights, unit) with ``weights == ints * unit`` to 1e-12 relative, when the weights lie on a grid
    of at most ``max_cells`` cells in total; None otherwise."""
    fracs = [Fraction(float(x)).limit_denominator(10**9) for x in weights]
    if any(abs(float(f) - float(x)) > 1e-12 * abs(float(x)) for f, x in zip(fracs, weights)):
        return None
    den = reduce(math.lcm, (f.denominator for f in fracs), 1)
    ints = [f.numerator * (den // f.denominator) for f in fracs]
    step = reduce(math.gcd, ints, 0)
    if step == 0 or sum(ints) // step > max_cells:
        return None
    return np.array([i // step for i in ints], dtype=np.int64), step / den


def integer_dp(
    sens: np.ndarray, cost: np.ndarray, *, max_cells: int = 2_000_000
) -> tuple[np.ndarray, np.ndarray] | None:
    """Exact (objective, cost) of the best choice at every reachable total cost, by a knapsack dynamic program
    over integer costs: available when the knapsack weights lie on an integer grid of at most ``max_cells``
    cells (size and BOPs here; not the measured latencies). None otherwise."""
    base, gain, weight, forced = _knapsack_items(sens, cost)
    rows = np.arange(sens.shape[0])
    free = np.flatnonzero(forced == 0)
    grid = _integer_grid(weight[free], max_cells=max_cells) if free.size else (np.zeros(0, np.int64), 1.0)
    if grid is None:
        return None
    ints, unit = grid
    best = np.full(int(ints.sum()) + 1, -np.inf)
    best[0] = 0.0
    for wi, gi in zip(ints, gain[free]):
        best[wi:] = np.maximum(best[wi:], best[:-wi] + gi)
    reach = np.flatnonzero(np.isfinite(best))
    base_obj = float(sens[rows, base].sum()) - float(gain[forced == 1].sum())
    base_cost = float(cost[rows, base].sum()) + float(weight[forced == 1].sum())
    return base_obj - best[reach], base_cost + reach * unit


def _verify_row(
    row: dict[str, Any],
    sens: np.ndarray,
    cost: np.ndarray,
    brute: tuple | None,
    dp: tuple | None,
    rtol: float,
) -> dict[str, Any]:
    budget = _with_tolerance(row["limit"], rtol)
    out: dict[str, Any] = {k: row[k] for k in ("model", "constraint", "alpha", "limit")}
    out["ilp_objective"] = row["objective"]
    checks: dict[str, float] = {}
    if brute is not None:
        ok = brute[1] <= budget
        checks["bruteforce"] = float(brute[0][ok].min()) if ok.any() else math.nan
    bnb = knapsack_bnb(sens, cost, budget)
    checks["branch_and_bound"] = bnb[1] if bnb is not None else math.nan
    if dp is not None:
        ok = dp[1] <= budget
        checks["integer_dp"] = float(dp[0][ok].min()) if ok.any() else math.nan
    for name in ("bruteforce", "branch_and_bound", "integer_dp"):
        out[f"{name}_objective"] = checks.get(name, math.nan)
    scale = max(abs(row["objective"]), 1e-12) if math.isfinite(row["objective"]) else 1.0
    out["methods"] = sorted(checks)
    out["max_abs_diff"] = max(
        (abs(v - row["objective"]) for v in checks.values() if math.isfinite(v)), default=math.nan
    )
    out["optimal_verified"] = all(
        math.isfinite(v) and abs(v - row["objective"]) <= 1e-9 * scale for v in checks.values()
    )
    return out
