"""Fronts: exact (brute force or integer DP), the ILP swept over budgets, and a seeded NSGA-II search on the lookup
tables; :func:`_front_for` sets them side by side for one model and constraint."""

from __future__ import annotations

import math
import time
from functools import partial
from typing import Any

import numpy as np
import pandas as pd

from workbench.search.hawq_replication.config import ReplicationConfig
from workbench.search.hawq_replication.exact import _verify_row, bruteforce, integer_dp
from workbench.search.hawq_replication.ilp import (
    _with_tolerance,
    bits_string,
    evaluate_bits,
    merge_rows,
    solve_allocation,
)
from workbench.search.hawq_replication.inputs import HawqModel
from workbench.search.objectives import hypervolume_2d


def pareto_front_2d(objective: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """Indices of the non-dominated points of (objective, cost), both minimised, ordered by cost (duplicates
    kept once)."""
    o, c = np.asarray(objective, dtype=np.float64), np.asarray(cost, dtype=np.float64)
    if o.size == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.lexsort((o, c))
    so = o[order]
    prev_min = np.concatenate([[np.inf], np.minimum.accumulate(so)[:-1]])
    return order[so < prev_min]


def normalised_hypervolume(
    objective: np.ndarray,
    cost: np.ndarray,
    *,
    objective_range: tuple[float, float],
    cost_range: tuple[float, float],
) -> float:
    """Area dominated by (objective, cost) points, both minimised and scaled to [0, 1] by ``objective_range``
    (all-8-bit, all-4-bit objective) and ``cost_range`` (all-4-bit, all-8-bit cost), up to the reference point
    (1, 1): the two uniform plans add nothing; 1 would be a free, lossless plan."""
    o = (np.asarray(objective, dtype=np.float64) - objective_range[0]) / (
        objective_range[1] - objective_range[0]
    )
    c = (np.asarray(cost, dtype=np.float64) - cost_range[0]) / (cost_range[1] - cost_range[0])
    return hypervolume_2d(
        1.0 - np.clip(o, 0.0, 1.0), np.clip(c, 0.0, 1.0), ref_accuracy=0.0, ref_size_fraction=1.0
    )


# ============================================================================================ search


def search_front(
    sens: np.ndarray, cost: np.ndarray, *, trials: int, seed: int, population: int = 50
) -> pd.DataFrame:
    """A seeded multi-objective Optuna study (NSGA-II) over two-choice rows, evaluated from the lookup tables:
    minimise (objective, cost). The two uniform plans are enqueued first. Returns every trial: objective, cost,
    choice (column per row), on_front."""
    import optuna

    n = sens.shape[0]
    names = [f"g{i}" for i in range(n)]
    dist = {k: optuna.distributions.CategoricalDistribution([0, 1]) for k in names}
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(
            directions=["minimize", "minimize"],
            sampler=optuna.samplers.NSGAIISampler(seed=seed, population_size=population),
        )
        for col in (0, 1):
            study.enqueue_trial(dict.fromkeys(names, col))
        rows = np.arange(n)
        records = []
        for _ in range(trials):
            trial = study.ask(dist)
            choice = np.array([trial.params[k] for k in names], dtype=np.int64)
            obj, tot = float(sens[rows, choice].sum()), float(cost[rows, choice].sum())
            study.tell(trial, [obj, tot])
            records.append({"objective": obj, "cost": tot, "choice": choice.tolist()})
    finally:
        optuna.logging.set_verbosity(verbosity)
    df = pd.DataFrame(records, columns=["objective", "cost", "choice"])
    df["on_front"] = False
    if len(df):
        df.loc[df.index[pareto_front_2d(df["objective"].to_numpy(), df["cost"].to_numpy())], "on_front"] = (
            True
        )
    return df


def _dominates(
    obj: np.ndarray, cost: np.ndarray, ref_obj: float, ref_cost: float, rtol: float = 1e-9
) -> np.ndarray:
    """Which (obj, cost) points dominate (ref_obj, ref_cost), both minimised, beyond float noise (``rtol``)."""
    o_tol, c_tol = rtol * abs(ref_obj), rtol * abs(ref_cost)
    no_worse = (obj <= ref_obj + o_tol) & (cost <= ref_cost + c_tol)
    return no_worse & ((obj < ref_obj - o_tol) | (cost < ref_cost - c_tol))


def _points(obj: np.ndarray, cost: np.ndarray, idx: np.ndarray) -> list[dict[str, float]]:
    return [{"objective": float(obj[i]), "cost": float(cost[i])} for i in idx]


def _front_for(
    model: HawqModel, constraint: str, config: ReplicationConfig, rows: list[dict[str, Any]]
) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, list[dict[str, Any]]], list[dict[str, Any]]]:
    """(front summary, verification rows, front points, search-vs-ILP rows) of one model and constraint."""
    t0 = time.perf_counter()
    groups = model.groups()
    sens, cost = merge_rows(model.sensitivity(), groups), merge_rows(model.cost(constraint), groups)
    n = sens.shape[0]
    brute = (
        bruteforce(sens, cost, max_rows=config.max_bruteforce_rows)
        if n <= config.max_bruteforce_rows
        else None
    )
    dp = integer_dp(sens, cost, max_cells=config.max_dp_cells)
    verification = [_verify_row(r, sens, cost, brute, dp, config.budget_rtol) for r in rows]
    hv = partial(
        normalised_hypervolume,
        objective_range=(float(sens[:, 1].sum()), float(sens[:, 0].sum())),
        cost_range=(float(cost[:, 0].sum()), float(cost[:, 1].sum())),
    )
    sweep, s_obj, s_cost = _ilp_sweep(model, constraint, config)
    points: dict[str, list[dict[str, Any]]] = {"ilp_sweep": sweep}
    exact = brute if brute is not None else dp
    method = "bruteforce" if brute is not None else ("integer_dp" if dp is not None else None)
    e_obj = e_cost = None
    if exact is not None:
        e_idx = pareto_front_2d(exact[0], exact[1])
        e_obj, e_cost = exact[0][e_idx], exact[1][e_idx]
        points["exact"] = _points(e_obj, e_cost, np.arange(len(e_idx)))
    summary: dict[str, Any] = {
        "model": model.name,
        "constraint": constraint,
        "merged_rows": n,
        "exact_method": method,
        "exact_points": None if e_obj is None else len(e_obj),
        "hv_exact": math.nan if e_obj is None else hv(e_obj, e_cost),
        "ilp_sweep_points": len(sweep),
        "hv_ilp_sweep": hv(s_obj, s_cost),
    }
    search_rows: list[dict[str, Any]] = []
    if config.search_trials:
        trials = search_front(sens, cost, trials=config.search_trials, seed=config.seed,
                              population=config.search_population)  # fmt: skip
        front = trials[trials["on_front"]]
        f_obj, f_cost = front["objective"].to_numpy(), front["cost"].to_numpy()
        points["search"] = _points(f_obj, f_cost, np.arange(len(front)))
        summary.update(
            search_trials=len(trials),
            search_front_points=len(front),
            hv_search=hv(f_obj, f_cost),
            search_front_share_exact=_share_on_exact(f_obj, f_cost, e_obj, e_cost),
        )
        search_rows = _search_vs_ilp(model.name, constraint, trials, rows, config.budget_rtol)
    else:
        summary.update(
            search_trials=0, search_front_points=0, hv_search=math.nan, search_front_share_exact=math.nan
        )
    summary["seconds"] = time.perf_counter() - t0
    return summary, verification, points, search_rows


def _ilp_sweep(
    model: HawqModel, constraint: str, config: ReplicationConfig
) -> tuple[list[dict[str, Any]], np.ndarray, np.ndarray]:
    """The ILP solved at ``config.front_alphas`` evenly spaced budgets: its non-dominated points (ordered by cost)
    and their objectives and costs."""
    sweep = []
    for a in np.linspace(0.0, 1.0, config.front_alphas):
        bits, limit, _ = solve_allocation(model, constraint, float(a), budget_rtol=config.budget_rtol)
        if bits is not None:
            m = evaluate_bits(model, bits)
            sweep.append({"alpha": float(a), "limit": limit, "objective": m["objective"],
                          "cost": m["latency_ms" if constraint == "latency" else constraint],
                          "bits_str": bits_string(bits)})  # fmt: skip
    s_obj = np.array([p["objective"] for p in sweep])
    s_cost = np.array([p["cost"] for p in sweep])
    s_idx = pareto_front_2d(s_obj, s_cost)
    return [sweep[i] for i in s_idx], s_obj[s_idx], s_cost[s_idx]


def _share_on_exact(
    f_obj: np.ndarray, f_cost: np.ndarray, e_obj: np.ndarray | None, e_cost: np.ndarray | None
) -> float:
    """Share of the search front's points that lie on the exact front (NaN without an exact front or points)."""
    if e_obj is None or e_cost is None or not len(f_obj):
        return math.nan
    hit = [bool(np.any(np.isclose(e_obj, o, rtol=1e-12, atol=0) & np.isclose(e_cost, c, rtol=1e-12, atol=0)))
           for o, c in zip(f_obj, f_cost)]  # fmt: skip
    return float(np.mean(hit))


def _search_vs_ilp(
    model: str, constraint: str, trials: pd.DataFrame, rows: list[dict[str, Any]], rtol: float
) -> list[dict[str, Any]]:
    """Per allocation row: the search's best objective within its limit against the ILP's."""
    out = []
    all_obj, all_cost = trials["objective"].to_numpy(), trials["cost"].to_numpy()
    for r in rows:
        ok = all_cost <= _with_tolerance(r["limit"], rtol)
        best = float(all_obj[ok].min()) if ok.any() else math.nan
        dominating = int(_dominates(all_obj, all_cost, r["objective"], r["cost"]).sum())
        gap = best - r["objective"]
        out.append({
            "model": model, "constraint": constraint, "alpha": r["alpha"], "limit": r["limit"],
            "ilp_objective": r["objective"], "search_objective": best, "gap": gap,
            "gap_pct": 100.0 * gap / r["objective"] if r["objective"] else math.nan,
            "search_matches_ilp": bool(math.isfinite(gap) and abs(gap) <= 1e-9 * max(r["objective"], 1e-12)),
            "search_points_dominating_ilp": dominating,
        })  # fmt: skip
    return out
