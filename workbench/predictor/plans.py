"""Plan generation: random plans and sensitivity-stratified plans along a greedy path (see
:func:`generate_plans`), and :func:`plan_id`."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from workbench.predictor.config import STRATIFY_METRICS, PlanDatasetConfig
from workbench.predictor.sensitivity_tables import _metric_matrix
from workbench.quant import QuantPlan, QuantSpec

if TYPE_CHECKING:
    from workbench.sensitivity import SensitivityResult


def plan_id(plan: QuantPlan) -> str:
    """A short stable hash of a plan's JSON (layer order does not matter)."""
    text = json.dumps(plan.to_dict(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _plan_from_bits(
    names: Sequence[str], w_bits: Sequence[int], a_bits: Sequence[int], granularity: str
) -> QuantPlan:
    return QuantPlan(
        {
            n: QuantSpec(w_bits=int(w), a_bits=int(a), granularity=granularity)
            for n, w, a in zip(names, w_bits, a_bits, strict=True)
        }
    )


def _stratify_matrix(
    sensitivity: SensitivityResult, config: PlanDatasetConfig, names: Sequence[str], bits: Sequence[int]
) -> np.ndarray | None:
    """``[n_layers, len(bits)]`` of the stratification metric: ``config.stratify_metric``, or with "auto" the
    first of :data:`STRATIFY_METRICS` with per-bit weight rows in the result; None when there is none."""
    available = set(sensitivity.table["metric"])
    if config.stratify_metric != "auto":
        if config.stratify_metric not in available:
            raise ValueError(
                f"stratify_metric {config.stratify_metric!r} is not in the sensitivity result; available: "
                f"{sorted(available)}"
            )
        table = _metric_matrix(
            sensitivity, config.stratify_metric, names, bits, granularity=config.granularity
        )
        if table is None:
            raise ValueError(f"stratify_metric {config.stratify_metric!r} has no per-bit weight rows")
        return table
    for metric in STRATIFY_METRICS:
        table = _metric_matrix(sensitivity, metric, names, bits, granularity=config.granularity)
        if table is not None:
            return table
    return None


def _random_bits(
    rng: np.random.Generator, n_layers: int, w_bits: np.ndarray, a_bits: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    w = w_bits[rng.integers(0, len(w_bits), size=n_layers)]
    a = a_bits[rng.integers(0, len(a_bits), size=n_layers)]
    return w, a


def _monotone(sens: np.ndarray) -> np.ndarray:
    """Clip at 0 and make every row non-increasing in bits (more bits are never more sensitive)."""
    s = np.maximum(np.nan_to_num(sens, nan=0.0), 0.0)
    return np.maximum.accumulate(s[:, ::-1], axis=1)[:, ::-1]


def _greedy_indices(s: np.ndarray, weight_params: np.ndarray, w_bits: np.ndarray, frac: float) -> np.ndarray:
    """Bit indices after walking the greedy path to the budget at ``frac`` of the log range of summed
    sensitivity (0: all-widest plan, 1: all-narrowest plan).

    Each step lowers one layer by one bit choice: the step with the least sensitivity increase per byte saved.
    """
    n_layers, n_bits = s.shape
    floor = max(float(s[s > 0].min()) if (s > 0).any() else 1.0, 1e-300) * 1e-3
    lo, hi = float(s[:, -1].sum()) + floor, float(s[:, 0].sum()) + floor
    budget = math.exp(math.log(lo) + frac * (math.log(hi) - math.log(lo))) * (1 + 1e-12)
    idx = np.full(n_layers, n_bits - 1)
    total = lo
    while (idx > 0).any():
        rows = np.flatnonzero(idx > 0)
        delta = s[rows, idx[rows] - 1] - s[rows, idx[rows]]
        saved = weight_params[rows] * (w_bits[idx[rows]] - w_bits[idx[rows] - 1]) / 8.0
        best = int(np.argmin(delta / np.maximum(saved, 1e-12)))
        if total + delta[best] > budget:
            break
        total += float(delta[best])
        idx[rows[best]] -= 1
    return idx


def _stratified_bits(
    rng: np.random.Generator,
    sens: np.ndarray,
    weight_params: np.ndarray,
    w_bits: np.ndarray,
    a_bits: np.ndarray,
    *,
    noise: float,
    drop_map: tuple[np.ndarray, np.ndarray] | None,
) -> tuple[np.ndarray, np.ndarray]:
    """One stratified plan: per-layer log-normal jitter of the sensitivities, a budget, the greedy walk to it.

    The budget (a fraction of the path's log range of summed sensitivity) is uniform without ``drop_map``;
    with it a target ``log1p(metric loss)`` is drawn uniformly and mapped to a fraction through the anchors
    (see :func:`_drop_map`), so the plans spread evenly over log metric loss (FP32 metric minus metric;
    accuracy drop for labelled accuracy). Activation bits: each layer
    drops to a random narrower choice with probability equal to the budget's fraction."""
    n_layers = sens.shape[0]
    jitter = np.exp(rng.normal(0.0, noise, size=(n_layers, 1))) if noise > 0 else np.ones((n_layers, 1))
    u = float(rng.random())
    frac = u if drop_map is None else float(np.interp(u * drop_map[0][-1], *drop_map))
    idx = _greedy_indices(_monotone(sens * jitter), weight_params, w_bits, frac)
    a = np.full(n_layers, a_bits.max())
    if len(a_bits) > 1:
        narrower = np.sort(a_bits)[:-1]
        drop = rng.random(n_layers) < frac
        a[drop] = narrower[rng.integers(0, len(narrower), size=int(drop.sum()))]
    return w_bits[idx], a


def _drop_map(fracs: Sequence[float], drops: Sequence[float]) -> tuple[np.ndarray, np.ndarray] | None:
    """(xp, fp) for ``np.interp``: ``log1p`` of the anchors' metric loss (running maximum along the path,
    clipped at 0; of a run of equal values only the last anchor kept, of the final run the first) -> the
    anchors' budget fractions.
    None when there are fewer than 3 anchors, a drop is not finite or no anchor loses more than 0.5 pp."""
    d = np.asarray(drops, dtype=np.float64)
    if len(d) < 3 or not np.isfinite(d).all() or d.max() <= 0.5:
        return None
    xp = np.log1p(np.maximum.accumulate(np.maximum(d, 0.0)))
    keep = np.append(xp[1:] > xp[:-1], True)
    top = int(np.argmax(xp == xp[-1]))  # the saturated end: keep the first anchor that reaches it
    keep[top:] = False
    keep[top] = True
    if keep.sum() < 2:
        return None
    return xp[keep], np.asarray(fracs, dtype=np.float64)[keep]


def generate_plans(
    layer_names: Sequence[str],
    config: PlanDatasetConfig,
    *,
    sensitivity: SensitivityResult | None = None,
    weight_params: Sequence[int] | None = None,
    measure: Callable[[list[QuantPlan]], Sequence[float]] | None = None,
) -> list[tuple[str, QuantPlan]]:
    """The (source, plan) list of a config, deterministic in ``config.seed``, all plans distinct.

    First ``n_random`` random plans (a larger ``n_random`` extends the list of a smaller one). Then
    ``n_stratified`` sensitivity-stratified plans (random ones when ``sensitivity`` is None or has no usable
    metric): ``stratify_anchors`` "anchor" plans evenly spaced (in log summed sensitivity) along the greedy
    path from the all-widest to the all-narrowest plan, then "stratified" plans with jittered sensitivities
    and random budgets along that path. ``measure`` (plans -> metric losses, FP32 metric minus metric x 100;
    accuracy drops in pp for labelled accuracy) measures the anchors so that the budgets spread the plans evenly
    over log metric loss (see :func:`_drop_map`); without it
    budgets are uniform along the path. ``weight_params`` (per layer) turns bits into bytes for the greedy
    walk (default: all layers equal). With a deterministic measure (as a quantized model's accuracy is) so is
    the list.
    """
    names = list(layer_names)
    n_layers = len(names)
    w_bits = np.array(sorted(config.w_bits), dtype=np.int64)
    a_bits = np.array(sorted(config.a_bits), dtype=np.int64)
    seen: set[tuple] = set()
    out: list[tuple[str, QuantPlan]] = []
    space = len(w_bits) ** n_layers * len(a_bits) ** n_layers

    def add_one(source: str, w: np.ndarray, a: np.ndarray) -> bool:
        key = (tuple(int(x) for x in w), tuple(int(x) for x in a))
        if key in seen:
            return False
        seen.add(key)
        out.append((source, _plan_from_bits(names, w, a, config.granularity)))
        return True

    def add(source: str, draw: Callable[[], tuple[np.ndarray, np.ndarray]], count: int) -> None:
        made = tries = 0
        while made < count and tries < 50 * count + 100 and len(seen) < space:
            tries += 1
            made += add_one(source, *draw())

    rng_random = np.random.default_rng([config.seed, 0])
    add("random", lambda: _random_bits(rng_random, n_layers, w_bits, a_bits), config.n_random)
    sens = None
    if sensitivity is not None and config.n_stratified:
        sens = _stratify_matrix(sensitivity, config, names, [int(b) for b in w_bits])
    rng_strat = np.random.default_rng([config.seed, 1])
    if sens is None:
        add("random", lambda: _random_bits(rng_strat, n_layers, w_bits, a_bits), config.n_stratified)
        return out
    params = np.asarray(weight_params if weight_params is not None else np.ones(n_layers), dtype=np.float64)
    start = len(out)
    fracs: list[float] = []
    for f in np.linspace(0.0, 1.0, min(config.stratify_anchors, config.n_stratified)):
        idx = _greedy_indices(_monotone(sens), params, w_bits, float(f))
        if add_one("anchor", w_bits[idx], np.full(n_layers, a_bits.max())):
            fracs.append(float(f))
    drop_map = None
    if measure is not None and fracs:
        drop_map = _drop_map(fracs, list(measure([p for _, p in out[start:]])))

    def draw() -> tuple[np.ndarray, np.ndarray]:
        return _stratified_bits(
            rng_strat, sens, params, w_bits, a_bits, noise=config.stratify_noise, drop_map=drop_map
        )

    add("stratified", draw, config.n_stratified - len(fracs))
    return out
