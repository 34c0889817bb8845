"""The notebook's integer linear program, solved exactly on tie-merged rows, and the cost model that evaluates an
allocation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from workbench.search.baselines import ilp_solve
from workbench.search.hawq_replication.inputs import BITS, HawqModel


def merge_rows(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Sum the rows of ``values`` ``[n, k]`` that share a group: ``[n_groups, k]``."""
    out = np.zeros((int(groups.max()) + 1, values.shape[1]), dtype=np.float64)
    np.add.at(out, groups, values)
    return out


def budget_limit(cost: np.ndarray, alpha: float) -> float:
    """The notebook's limit: ``cost(all 4) + alpha * (cost(all 8) - cost(all 4))``."""
    low, high = float(cost[:, 0].sum()), float(cost[:, 1].sum())
    return low + alpha * (high - low)


def _with_tolerance(limit: float, rtol: float) -> float:
    return limit + rtol * abs(limit)


def bits_string(bits: Sequence[int]) -> str:
    """Compact form of a per-layer allocation: one character per layer (``'8848...'``)."""
    return "".join(str(int(b))[0] for b in bits)


def parse_bits(text: str) -> list[int]:
    """Inverse of :func:`bits_string` for 4 / 8-bit allocations."""
    bad = sorted(set(text) - {"4", "8"})
    if bad:
        raise ValueError(f"bit string characters must be one of ['4', '8'], got {bad} in {text!r}")
    return [int(c) for c in text]


def evaluate_bits(model: HawqModel, bits: Sequence[int]) -> dict[str, float]:
    """Objective, size (MB), BOPs (millions) and latency (ms) of a per-layer allocation, as the notebook prints
    them (its first and last layers excluded)."""
    b = np.asarray(bits)
    if b.shape != (model.n_layers,) or not np.all(np.isin(b, BITS)):
        raise ValueError(f"{model.name}: bits must be {model.n_layers} values in {list(BITS)}, got {list(b)}")
    col = (b == 8).astype(np.int64)
    rows = np.arange(model.n_layers)
    return {
        "objective": float(model.sensitivity()[rows, col].sum()),
        "size": float(model.cost("size")[rows, col].sum()),
        "bops": float(model.cost("bops")[rows, col].sum()),
        "latency_ms": float(model.cost("latency")[rows, col].sum()),
    }


def solve_allocation(
    model: HawqModel, constraint: str, alpha: float, *, budget_rtol: float = 1e-9
) -> tuple[list[int] | None, float, str]:
    """(bits per layer or None, limit, status) of the notebook's program for one model, constraint and alpha,
    solved exactly with :func:`ilp_solve` on tie-merged rows. ``budget_rtol`` widens the limit by that relative
    amount so that a plan costing exactly the limit is not lost to float summation order (alpha = 1)."""
    _check_alpha(alpha)
    groups = model.groups()
    cost = model.cost(constraint)
    limit = budget_limit(cost, alpha)
    choice = ilp_solve(
        merge_rows(model.sensitivity(), groups), merge_rows(cost, groups), _with_tolerance(limit, budget_rtol)
    )
    if choice is None:
        return None, limit, "infeasible"
    return [BITS[int(choice[g])] for g in groups], limit, "optimal"


def _check_alpha(alpha: Any) -> None:
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")


def solve_allocation_at(
    model: HawqModel, constraint: str, budget: float, *, budget_rtol: float = 1e-9
) -> tuple[list[int] | None, float, str]:
    """Like :func:`solve_allocation` with an absolute budget (in the constraint's units) instead of alpha."""
    groups = model.groups()
    choice = ilp_solve(
        merge_rows(model.sensitivity(), groups),
        merge_rows(model.cost(constraint), groups),
        _with_tolerance(float(budget), budget_rtol),
    )
    if choice is None:
        return None, float(budget), "infeasible"
    return [BITS[int(choice[g])] for g in groups], float(budget), "optimal"
