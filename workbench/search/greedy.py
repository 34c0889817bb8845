"""Greedy baseline curves: seed 000's cost-benefit layer selection (:func:`greedy_candidates`) and AIMET AMP's
two phases (:func:`aimet_candidates`). Both lower one unit at a time from a start plan and record the plan after
every step."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from workbench.search.candidates import (
    Candidate,
    _check_choice,
    _cost_info,
    _plan,
    _unit_bits,
    select_evenly,
    unit_tables,
)
from workbench.search.space import SearchSpace
from workbench.search.space_config import Unit

AIMET_ORDERS: tuple[str, ...] = ("ratio", "aimet")


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


__all__ = ["AIMET_ORDERS", "aimet_candidates", "greedy_candidates"]
