"""Sensitivity-first allocation: the default search strategy ``auto``.

1. **Tables** (:func:`allocation_tables`): per searched unit and weight-bit choice, the unit's sensitivity (the
   single-layer output-error probes of a sensitivity result, summed over the unit's layers) and its share of every
   budget of the search: average weight bits over the searched layers (element-weighted), MACs-weighted bits,
   weight bytes, model bytes. Every budget is additive over units, so a plan's budget use is a sum of table cells.
2. **Allocation** (:func:`allocation_front`): the error model is additive (a plan's predicted error is the sum of
   its units' sensitivities); an exact ILP (:func:`~workbench.search.ilp.ilp_solve_multi`, HiGHS, zero gap)
   minimises it under every budget at once, at ``levels`` values of the primary budget spread from the smallest
   plan to the budget: the model's whole front.
3. **Real evaluations where they pay** (:func:`initial_candidates`, :class:`AutoSampler`): the front's plans
   (the budget's own plan first, then spread along the front) and the uniform plans within the range are
   measured; then local moves (one unit a bit step up and another one down, or one up into the slack) around the
   best measured plan of each level, the move with the smallest predicted error increase first, until the
   evaluation budget is spent or no move is left (the study is then marked exhausted and the search stops).

``auto`` decides weight bits per unit (method ``quantize``; activations and granularity as the baselines set
them, :mod:`workbench.search.candidates`). The tables travel with the study (a user attribute), so a resumed or
joined study goes on without recomputing them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from workbench.search.candidates import Candidate, _plan, _unit_bits, unit_tables
from workbench.search.ilp import ilp_solve_multi
from workbench.tasks.metrics import DISCRETE_METRICS

if TYPE_CHECKING:
    from workbench.search.context import SearchContext
    from workbench.search.space import SearchSpace

TABLES_ATTR = "workbench_auto_tables"
EXHAUSTED_ATTR = "workbench_search_exhausted"


@dataclass(frozen=True)
class AllocationTables:
    """Units x weight-bit columns: ``sens`` (NaN where a unit lacks the choice), one cost matrix per budget in
    ``costs`` with its ``limits`` (on the sum over units; None: no limit), the ``primary`` budget the front is
    spread along, its ``levels`` (largest first) and ``scale`` (the divisor that turns a primary sum into the
    figure a user reads: elements for average bits, 1 for bytes)."""

    units: tuple[str, ...]
    bits: tuple[int, ...]
    sens: np.ndarray
    costs: dict[str, np.ndarray]
    limits: dict[str, float | None]
    primary: str
    levels: tuple[float, ...]
    scale: float
    metric: str

    def to_json(self) -> str:
        def arr(a: np.ndarray) -> list[list[float | None]]:
            return [[None if not np.isfinite(v) else float(v) for v in row] for row in a]

        return json.dumps({"units": list(self.units), "bits": list(self.bits), "sens": arr(self.sens),
                           "costs": {k: arr(v) for k, v in self.costs.items()}, "limits": self.limits,
                           "primary": self.primary, "levels": list(self.levels), "scale": self.scale,
                           "metric": self.metric})  # fmt: skip

    @classmethod
    def from_json(cls, text: str) -> AllocationTables:
        d = json.loads(text)

        def arr(rows: list[list[float | None]]) -> np.ndarray:
            return np.array([[np.nan if v is None else v for v in r] for r in rows], dtype=np.float64)

        return cls(tuple(d["units"]), tuple(int(b) for b in d["bits"]), arr(d["sens"]),
                   {k: arr(v) for k, v in d["costs"].items()}, dict(d["limits"]), d["primary"],
                   tuple(float(x) for x in d["levels"]), float(d["scale"]), d["metric"])  # fmt: skip

    @property
    def allowed(self) -> np.ndarray:
        return np.isfinite(self.sens)

    def totals(self, choice: np.ndarray) -> dict[str, float]:
        """Each budget's use (the sum over units) of a choice (column index per unit)."""
        rows = np.arange(len(self.units))
        return {k: float(c[rows, choice].sum()) for k, c in self.costs.items()}

    def fits(self, choice: np.ndarray, level: float) -> bool:
        t = self.totals(choice)
        ok = all(lim is None or t[k] <= lim * (1 + 1e-12) for k, lim in self.limits.items())
        return ok and t[self.primary] <= level * (1 + 1e-12)

    def error(self, choice: np.ndarray) -> float:
        return float(self.sens[np.arange(len(self.units)), choice].sum())

    def bits_of(self, choice: np.ndarray) -> dict[str, int]:
        return {u: int(self.bits[j]) for u, j in zip(self.units, choice)}

    def choice_of(self, bits: Mapping[str, int]) -> np.ndarray:
        return np.array([self.bits.index(int(bits[u])) for u in self.units], dtype=np.int64)

    def level_text(self, level: float) -> str:
        value = level / self.scale
        return f"{value:.3g} bits" if self.primary in ("avg_bits", "mac_bits") else f"{value:,.0f} bytes"


# ============================================================================================ tables


def resolve_metric(sensitivity: Any, metric: str, metric_name: str) -> str:
    """The sensitivity metric the allocation minimises: ``metric`` unless ``"auto"``; ``"auto"``: ``output_kl``
    for a discrete metric of a classifier (accuracy, top-k agreement), ``output_mse`` otherwise (embeddings,
    cosine fidelity), whichever the result holds; else HAWQ's ``omega`` when present."""
    available = list(sensitivity.metrics())
    if metric != "auto":
        return metric
    order = ("output_kl", "output_mse") if metric_name in DISCRETE_METRICS else ("output_mse", "output_kl")
    for name in (*order, "omega"):
        if name in available:
            return name
    raise ValueError(f"the sensitivity result has no output-error metric; available metrics: {available}")


def _unit_weights(ctx: SearchContext, kind: str) -> np.ndarray:
    modules = dict(ctx.cost_model.model.named_modules())
    if kind == "avg_bits":
        per = {n: float(modules[n].weight.numel()) for u in ctx.space.units for n in u.layers}
    else:
        per = {n: float(ctx.cost_model.costs[n].macs) for u in ctx.space.units for n in u.layers}
    return np.array([sum(per[n] for n in u.layers) for u in ctx.space.units], dtype=np.float64)


def allocation_tables(
    ctx: SearchContext, sensitivity: Any, *, metric: str = "auto", n_levels: int = 16
) -> AllocationTables:
    """The tables of ``ctx``'s space and budgets from ``sensitivity`` (see the module docstring)."""
    cfg = ctx.config
    name = resolve_metric(sensitivity, metric, str(ctx.task.metric_name))
    sens, wcost = unit_tables(ctx.space, ctx.cost_model, sensitivity, metric=name, cost="weight_size")
    bits = tuple(int(b) for b in sens.columns)
    s = sens.to_numpy(dtype=np.float64)
    allowed = np.isfinite(s)
    costs: dict[str, np.ndarray] = {}
    limits: dict[str, float | None] = {}
    scales: dict[str, float] = {}
    for kind, cap in (("avg_bits", cfg.max_avg_weight_bits), ("mac_bits", cfg.max_avg_mac_bits)):
        w = _unit_weights(ctx, kind)
        if kind == "mac_bits" and (cap is None or w.sum() <= 0):
            continue
        costs[kind] = np.where(allowed, w[:, None] * np.array(bits, dtype=np.float64)[None, :], np.nan)
        scales[kind] = float(w.sum())
        limits[kind] = None if cap is None else float(cap) * scales[kind]
    if cfg.max_weight_fraction is not None:
        costs["weight_bytes"] = wcost.to_numpy(dtype=np.float64)
        limits["weight_bytes"] = cfg.max_weight_fraction * ctx.fp32_weight_bytes - float(wcost.attrs["rest"])
        scales["weight_bytes"] = 1.0
    if cfg.max_size_bytes is not None:
        _, scost = unit_tables(ctx.space, ctx.cost_model, sensitivity, metric=name, cost="size")
        costs["size_bytes"] = scost.to_numpy(dtype=np.float64)
        limits["size_bytes"] = float(cfg.max_size_bytes) - float(scost.attrs["rest"])
        scales["size_bytes"] = 1.0
    primary = next(
        (k for k in ("avg_bits", "mac_bits", "weight_bytes", "size_bytes") if limits.get(k)), "avg_bits"
    )
    tables = AllocationTables(tuple(sens.index), bits, np.where(allowed, np.maximum(s, 0.0), np.nan), costs,
                              limits, primary, (), scales[primary], name)  # fmt: skip
    return _with_levels(tables, ctx.space, n_levels)


def _with_levels(tables: AllocationTables, space: SearchSpace, n_levels: int) -> AllocationTables:
    """The primary budget's levels: from half the budget (or the smallest plan, when larger) to the budget (no
    budget: every unit at its highest choice of at most 8 bits), largest first."""
    c = tables.costs[tables.primary]
    low = float(np.nanmin(c, axis=1).sum())
    cap = tables.limits[tables.primary]
    if cap is None:
        start = [max([b for b in _unit_bits(u) if b <= 8] or _unit_bits(u)) for u in space.units]
        cap = float(sum(c[i, tables.bits.index(b)] for i, b in enumerate(start)))
    cap = max(cap, low)
    bottom = max(low, 0.5 * cap)  # below half the budget's bits plans collapse: no evaluation is spent there
    levels = np.linspace(bottom, cap, max(2, int(n_levels)))[::-1]
    return replace(tables, levels=tuple(float(x) for x in levels))


# ============================================================================================ allocation


def allocate(tables: AllocationTables, level: float) -> np.ndarray | None:
    """The choice (column per unit) with the smallest summed sensitivity with the primary budget <= ``level``
    and every other budget within its limit; None when no plan fits."""
    names = list(tables.costs)
    caps = [level if k == tables.primary else tables.limits[k] for k in names]
    kept = [(tables.costs[k], cap) for k, cap in zip(names, caps) if cap is not None]
    return ilp_solve_multi(
        tables.sens, [c for c, _ in kept], [cap for _, cap in kept], allowed=tables.allowed
    )


def allocation_front(tables: AllocationTables) -> list[tuple[float, np.ndarray]]:
    """(level, choice) per distinct allocated plan, largest level first."""
    out: list[tuple[float, np.ndarray]] = []
    seen: set[tuple[int, ...]] = set()
    for level in tables.levels:
        choice = allocate(tables, level)
        if choice is not None and tuple(choice) not in seen:
            seen.add(tuple(choice))
            out.append((level, choice))
    return out


def _spread_order(n: int) -> list[int]:
    """0, n-1, then the midpoints of the largest gaps (bisection order)."""
    if n <= 2:
        return list(range(n))
    order, gaps = [0, n - 1], [(0, n - 1)]
    while gaps:
        a, b = gaps.pop(0)
        if b - a < 2:
            continue
        m = (a + b) // 2
        order.append(m)
        gaps += [(a, m), (m, b)]
    return order


def initial_candidates(ctx: SearchContext, tables: AllocationTables) -> list[Candidate]:
    """The plans measured first: the allocated front (the budget's plan first, then spread along the front)
    with the uniform plans within the budget range after the first two, at most half the evaluation budget
    (at least two)."""
    front = allocation_front(tables)
    if not front:
        raise ValueError(f"no plan of the space meets the budgets {tables.limits}")
    quota = max(2, ctx.config.budget // 2)
    chosen = [front[i] for i in _spread_order(len(front))]
    cands = [_candidate(ctx, tables, level, choice, "auto") for level, choice in chosen]
    uniform = []
    top = tables.levels[0]
    for b in sorted(set(tables.bits), reverse=True):
        col = tables.bits.index(b)
        if not tables.allowed[:, col].all():
            continue
        choice = np.full(len(tables.units), col, dtype=np.int64)
        if tables.fits(choice, top) and tables.totals(choice)[tables.primary] >= tables.levels[-1] - 1e-9:
            uniform.append(_candidate(ctx, tables, top, choice, f"uniform w{b}"))
    uniform = uniform[: max(1, quota // 4)]
    merged = cands[:2] + uniform + cands[2:]
    keys: set[tuple[int, ...]] = set()
    out = []
    for c in merged:
        key = tuple(c.info["choice"])
        if key not in keys:
            keys.add(key)
            out.append(c)
    return out[:quota]


def _candidate(
    ctx: SearchContext, tables: AllocationTables, level: float, choice: np.ndarray, kind: str
) -> Candidate:
    use = tables.totals(choice)[tables.primary]
    label = f"{kind} {tables.level_text(use)}" if kind != "auto" else f"auto <= {tables.level_text(level)}"
    plan = _plan(ctx.space, tables.bits_of(choice))
    info = {"method": "auto", "level": level, "predicted_error": tables.error(choice),
            "bits": tables.bits_of(choice), "choice": [int(j) for j in choice]}  # fmt: skip
    return Candidate(label, plan, info)


# ============================================================================================ local moves


def _neighbours(tables: AllocationTables, x: np.ndarray, level: float) -> list[tuple[float, np.ndarray]]:
    """(predicted error change, choice) of every move of ``x`` within the budgets: one unit one allowed step
    up and another one step down, or one unit one step up alone; smallest change first."""
    n = len(tables.units)
    allowed = tables.allowed
    up = [next((j for j in range(x[i] + 1, len(tables.bits)) if allowed[i, j]), None) for i in range(n)]
    down = [next((j for j in range(x[i] - 1, -1, -1) if allowed[i, j]), None) for i in range(n)]
    moves: list[tuple[float, np.ndarray]] = []
    s = tables.sens
    for i in range(n):
        if up[i] is None:
            continue
        gain = s[i, up[i]] - s[i, x[i]]
        for j in [None, *range(n)]:
            if j == i or (j is not None and down[j] is None):
                continue
            y = x.copy()
            y[i] = up[i]
            delta = gain
            if j is not None:
                y[j] = down[j]
                delta += s[j, down[j]] - s[j, x[j]]
            if tables.fits(y, level):
                moves.append((float(delta), y))
    moves.sort(key=lambda m: (m[0], tables.totals(m[1])[tables.primary]))
    return moves


@dataclass(frozen=True)
class Measured:
    """One measured, feasible plan of the study: its choice and its score (accuracy, then the secondary)."""

    choice: tuple[int, ...]
    score: tuple[float, float]


def incumbent(tables: AllocationTables, measured: Sequence[Measured], level: float) -> Measured | None:
    """The best measured plan within ``level`` (highest score, then the smaller plan)."""
    fits = [m for m in measured if tables.fits(np.array(m.choice), level)]
    if not fits:
        return None
    return max(fits, key=lambda m: (m.score, -tables.totals(np.array(m.choice))[tables.primary]))


def propose(
    tables: AllocationTables, measured: Sequence[Measured], seen: set[tuple[int, ...]], step: int
) -> np.ndarray | None:
    """The next plan to measure: the best unseen move around the incumbent of one level; levels are visited with
    the largest (the budget) every other step and the others in turn. None when no level has a move left."""
    levels = list(tables.levels)
    order = [0] if step % 2 == 0 or len(levels) == 1 else [1 + (step // 2) % (len(levels) - 1)]
    order += [i for i in range(len(levels)) if i not in order]
    for i in order:
        inc = incumbent(tables, measured, levels[i])
        if inc is None:
            continue
        for _, y in _neighbours(tables, np.array(inc.choice), levels[i]):
            if tuple(y) not in seen:
                return y
    return None


__all__ = [
    "EXHAUSTED_ATTR",
    "TABLES_ATTR",
    "AllocationTables",
    "Measured",
    "allocate",
    "allocation_front",
    "allocation_tables",
    "incumbent",
    "initial_candidates",
    "propose",
    "resolve_metric",
]
