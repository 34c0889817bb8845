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
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from workbench.quant.spec import QuantPlan
from workbench.search.candidates import (
    COST_KINDS,
    COST_UNITS,
    ZERO_SENSITIVITY_BITS,
    Candidate,
    _check_space,
    _cost_info,
    _plan,
    _unit_a_bits,
    _unit_bits,
    _unit_granularity,
    select_evenly,
    unit_tables,
)
from workbench.search.greedy import AIMET_ORDERS, aimet_candidates, greedy_candidates
from workbench.search.ilp import ilp_candidates, ilp_solve
from workbench.search.space import SearchSpace

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


__all__ = [
    "AIMET_ORDERS",
    "COST_KINDS",
    "COST_UNITS",
    "ZERO_SENSITIVITY_BITS",
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
