"""Pareto fronts and hypervolume: :func:`pareto_mask`, :func:`hypervolume_2d` and the reported
:func:`front_hypervolume` against a :class:`HypervolumeRef`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd


def pareto_mask(values: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """Boolean mask of the non-dominated rows of ``values`` ``[n, k]`` (``directions``: maximize / minimize)."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 2 or len(v) == 0:
        return np.zeros(len(v), dtype=bool)
    s = v * np.array([-1.0 if d == "maximize" else 1.0 for d in directions])  # all minimised
    mask = np.ones(len(s), dtype=bool)
    for i in range(len(s)):
        if not mask[i]:
            continue
        dominated = np.all(s <= s[i], axis=1) & np.any(s < s[i], axis=1)
        if dominated.any():
            mask[i] = False
    # duplicates: keep the first
    _, first = np.unique(s, axis=0, return_index=True)
    keep = np.zeros(len(s), dtype=bool)
    keep[first] = True
    return mask & keep


def hypervolume_2d(
    accuracy: np.ndarray, size_fraction: np.ndarray, *, ref_accuracy: float, ref_size_fraction: float
) -> float:
    """Area dominated by (accuracy up, size fraction down) points inside the box to the reference point,
    normalised by the box ``(ref_size_fraction x (1 - ref_accuracy))`` so the best possible value is 1."""
    acc = np.asarray(accuracy, dtype=np.float64)
    size = np.asarray(size_fraction, dtype=np.float64)
    ok = np.isfinite(acc) & np.isfinite(size) & (acc > ref_accuracy) & (size < ref_size_fraction)
    acc, size = acc[ok], size[ok]
    if len(acc) == 0:
        return 0.0
    order = np.argsort(size, kind="stable")
    area, best = 0.0, ref_accuracy
    xs = np.append(size[order], ref_size_fraction)
    for i, idx in enumerate(order):
        best = max(best, acc[idx])
        area += (xs[i + 1] - xs[i]) * (best - ref_accuracy)
    return float(area / (ref_size_fraction * (1.0 - ref_accuracy)))


@dataclass(frozen=True)
class HypervolumeRef:
    """Reference point of the reported hypervolume: plans must be smaller than ``size_fraction`` of the FP32
    weight bytes and lose less than ``max_drop_pp`` accuracy points to count."""

    size_fraction: float = 0.25
    max_drop_pp: float = 10.0

    def to_dict(self) -> dict[str, float]:
        return {"size_fraction": self.size_fraction, "max_drop_pp": self.max_drop_pp}


def front_hypervolume(
    frame: pd.DataFrame,
    *,
    fp32_accuracy: float,
    fp32_weight_bytes: int,
    ref: HypervolumeRef = HypervolumeRef(),
) -> float:
    """Hypervolume of (accuracy, weight bytes) of a trials / front table against ``ref``."""
    if frame.empty:
        return 0.0
    return hypervolume_2d(
        frame["accuracy"].to_numpy(dtype=np.float64),
        frame["weight_bytes"].to_numpy(dtype=np.float64) / fp32_weight_bytes,
        ref_accuracy=fp32_accuracy - ref.max_drop_pp / 100.0,
        ref_size_fraction=ref.size_fraction,
    )


__all__ = ["HypervolumeRef", "front_hypervolume", "hypervolume_2d", "pareto_mask"]
