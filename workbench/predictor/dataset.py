"""Accuracy predictor: a dataset of measured plans, cheap plan features, small regressors, rank correlation.

Three parts, each usable alone:

1. **Plan dataset** (:func:`build_plan_dataset`): random plans (each layer's bits drawn uniformly) and
   sensitivity-stratified plans (a greedy walk that lowers the least sensitive layers first, stopped at a
   random sensitivity budget, so the set spans near-lossless to heavily degraded plans) are quantized and
   measured on a split: the task metric (column ``accuracy``), the metric loss (column ``acc_drop``: FP32
   metric minus metric, x 100; accuracy drop in percentage points for labelled accuracy), KL divergence and
   logit MSE vs FP32 (of the output ``task.output_key`` chooses), size, average bits, BOPs. Every measured plan is appended to ``data_dir()/predictor/<key>.jsonl`` at
   once, so an interrupted build resumes where it stopped.
2. **Features** (:class:`PlanFeaturizer`): plans are encoded as ``[n_plans, n_layers]`` arrays of bit indices
   and features are gathered from per-layer lookup tables (bits, sensitivity x quantization noise such as
   omega and output MSE at each bit width, weight and activation noise power, sums over layers, cost shares)
   with numpy.
3. **Models** (``"ridge"``, ``"mlp"``, ``"gbt"``, ``"ensemble"``) behind :class:`AccuracyPredictor`, and
   :func:`evaluate_predictors` (k-fold Spearman / Kendall / MAE on held-out plans, throughput).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import os
import statistics
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from workbench.devices import model_device, on_device
from workbench.models import evaluate_accuracy
from workbench.paths import data_dir
from workbench.quant import (
    VALID_BITS,
    LayerCost,
    PlanError,
    QuantPlan,
    QuantSpec,
    layer_costs,
    quantizable_layers,
    quantize_model,
    quantize_weight,
)
from workbench.quant.inputs import call_model, input_tensors, move_inputs, primary_output, split_batch
from workbench.quant.spec import GRANULARITIES, summarize
from workbench.quant.swap import conv_bn_pairs, fold_batchnorm

if TYPE_CHECKING:
    from workbench.sensitivity import SensitivityResult
    from workbench.tasks import Task

__all__ = [
    "MIN_FIT_PLANS",
    "MODEL_NAMES",
    "TARGETS",
    "TRANSFORMS",
    "AccuracyPredictor",
    "EnsembleModel",
    "GBTModel",
    "MLPModel",
    "PlanDataset",
    "PlanDatasetConfig",
    "PlanFeaturizer",
    "RidgeModel",
    "build_plan_dataset",
    "dataset_key",
    "evaluate_predictors",
    "generate_plans",
    "make_model",
    "measure_plan",
    "plan_id",
]

MIN_FIT_PLANS = 10
TARGETS: tuple[str, ...] = ("acc_drop", "kl", "logit_mse")
TRANSFORMS: tuple[str, ...] = ("signed_log1p", "none")
STRATIFY_METRICS: tuple[str, ...] = ("omega", "output_mse", "output_kl", "acc_drop")
FRAME_METRICS: tuple[str, ...] = (
    "accuracy", "acc_drop", "kl", "logit_mse", "size_bytes", "avg_weight_bits", "avg_act_bits", "bops",
    "eval_seconds",
)  # fmt: skip
_FORMAT = "workbench.predictor"
_FORMAT_VERSION = 2
_SIGNED_MAGIC = b"WBPRED2\n"  # then 32 bytes of HMAC-SHA256, then the pickle
CACHE_VERSION = 1  # bump when measure_plan changes what it records


# ============================================================================================ plan dataset


@dataclass(frozen=True)
class PlanDatasetConfig:
    """Which plans :func:`build_plan_dataset` measures (defaults suit the digits task).

    ``n_random`` plans draw every layer's weight bits uniformly from ``w_bits`` (activation bits from
    ``a_bits``). ``n_stratified`` plans follow a sensitivity-guided greedy path (lower the layer with the
    least sensitivity increase per byte saved) to a random budget, random plans when no sensitivity result
    is given; the first ``stratify_anchors`` of them are anchors evenly spaced along the path, whose measured
    metric losses (FP32 metric minus metric; accuracy drop for labelled accuracy) set the budgets of the rest so
    that they spread evenly over log metric loss (see
    :func:`generate_plans`). ``stratify_metric`` picks the sensitivity metric ("auto": the first of omega,
    output_mse, output_kl, acc_drop that the result has per weight bit width); ``stratify_noise`` is the
    standard deviation of the per-layer log-normal jitter of sensitivities that makes stratified plans
    differ. Plans are measured on ``split``;
    every plan is distinct and generated deterministically from ``seed``.
    """

    n_random: int = 150
    n_stratified: int = 150
    w_bits: tuple[int, ...] = (2, 3, 4, 6, 8)
    a_bits: tuple[int, ...] = (8,)
    granularity: str = "per_channel"
    split: str = "val"
    seed: int = 0
    stratify_metric: str = "auto"
    stratify_noise: float = 0.75
    stratify_anchors: int = 8

    def __post_init__(self) -> None:
        for name in ("n_random", "n_stratified", "seed"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"PlanDatasetConfig.{name} must be an int >= 0, got {value!r}")
        if self.n_random + self.n_stratified < 1:
            raise ValueError("PlanDatasetConfig needs n_random + n_stratified >= 1")
        for name in ("w_bits", "a_bits"):
            value = tuple(getattr(self, name))
            object.__setattr__(self, name, value)
            bad = [b for b in value if b not in VALID_BITS]
            if not value or bad:
                raise ValueError(
                    f"PlanDatasetConfig.{name}={value!r}: needs at least one bit width from {VALID_BITS}"
                )
            if len(set(value)) != len(value):
                raise ValueError(f"PlanDatasetConfig.{name}={value!r} repeats a bit width")
        if self.granularity not in ("per_tensor", "per_channel"):
            raise ValueError(
                f"PlanDatasetConfig.granularity={self.granularity!r}; choose 'per_tensor' or 'per_channel'"
            )
        if self.stratify_metric != "auto" and self.stratify_metric not in STRATIFY_METRICS:
            raise ValueError(
                f"PlanDatasetConfig.stratify_metric={self.stratify_metric!r}; choose 'auto' or one of "
                f"{list(STRATIFY_METRICS)}"
            )
        if not self.stratify_noise >= 0:
            raise ValueError(f"PlanDatasetConfig.stratify_noise must be >= 0, got {self.stratify_noise!r}")
        if not isinstance(self.stratify_anchors, int) or self.stratify_anchors < 2:
            raise ValueError(
                f"PlanDatasetConfig.stratify_anchors must be an int >= 2, got {self.stratify_anchors!r}"
            )

    @property
    def n_plans(self) -> int:
        return self.n_random + self.n_stratified


@dataclass(frozen=True, eq=False)
class PlanDataset:
    """Measured plans.

    ``frame`` has one row per plan: ``plan_id``, ``source`` (random / anchor / stratified), ``w:<layer>`` and
    ``a:<layer>`` bit columns, then ``accuracy`` (the task metric), ``acc_drop`` (the metric loss: FP32 metric
    minus metric, x 100; accuracy drop in pp for labelled accuracy), ``kl``, ``logit_mse``, ``size_bytes``,
    ``avg_weight_bits``, ``avg_act_bits``, ``bops``, ``eval_seconds``. ``plans``: the matching QuantPlans;
    ``info``: cache key and path, FP32 metric (``fp32_accuracy``), ``metric_name`` (what the metric is:
    "accuracy", "cosine", an eval_fn's name, ...), ``output_key``, counts and timings of the build."""

    frame: pd.DataFrame
    plans: list[QuantPlan]
    layer_names: list[str]
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.frame)

    def bits(self) -> tuple[np.ndarray, np.ndarray]:
        """(weight bits, activation bits), each an int array ``[n_plans, n_layers]``."""
        w = self.frame[[f"w:{n}" for n in self.layer_names]].to_numpy(dtype=np.int64)
        a = self.frame[[f"a:{n}" for n in self.layer_names]].to_numpy(dtype=np.int64)
        return w, a

    def bit_array(self) -> np.ndarray:
        """``[n_plans, n_layers, 2]`` of (weight bits, activation bits): the fast input of the featurizer."""
        w, a = self.bits()
        return np.stack([w, a], axis=-1)

    def target(self, name: str = "acc_drop") -> np.ndarray:
        if name not in TARGETS:
            raise ValueError(f"unknown target {name!r}; choose one of {list(TARGETS)}")
        return self.frame[name].to_numpy(dtype=np.float64)

    def subset(self, index: Sequence[int] | np.ndarray) -> PlanDataset:
        """The plans at positions ``index`` (a new dataset; frame re-indexed from 0)."""
        idx = np.asarray(index, dtype=np.int64)
        return PlanDataset(
            frame=self.frame.iloc[idx].reset_index(drop=True),
            plans=[self.plans[i] for i in idx],
            layer_names=list(self.layer_names),
            info=dict(self.info),
        )

    @classmethod
    def load(cls, path: str | Path) -> PlanDataset:
        """Every plan recorded in a cache file written by :func:`build_plan_dataset` (source "cached")."""
        contents = _read_cache(Path(path))
        header, records = contents.header, contents.records
        if header is None:
            why = f" ({contents.bad_header})" if contents.bad_header else ""
            raise ValueError(f"{path} has no valid header line{why}; not a plan dataset file")
        if contents.problems:
            warnings.warn(
                f"plan dataset {path}: left out {len(contents.problems)} bad line(s) "
                f"({contents.describe_problems()})",
                stacklevel=2,
            )
        names = list(header["layer_names"])
        rows = [{**r, "source": "cached"} for r in records.values()]
        plans = [_plan_from_bits(names, r["w_bits"], r["a_bits"], r["granularity"]) for r in rows]
        return cls(
            frame=_dataset_frame(names, rows),
            plans=plans,
            layer_names=names,
            info={"path": str(path), **{k: v for k, v in header.items() if k != "type"}},
        )


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


# -------------------------------------------------------------------------------------- plan generation


def _metric_matrix(
    sensitivity: SensitivityResult,
    metric: str,
    layer_names: Sequence[str],
    bits: Sequence[int],
    *,
    kind: str = "weight",
    granularity: str = "per_channel",
) -> np.ndarray | None:
    """``[n_layers, len(bits)]`` of one sensitivity metric, completed to every bit of ``bits`` (see
    :func:`_complete_bits`); None when the result lacks the metric for this kind."""
    if metric not in set(sensitivity.table["metric"]):
        return None
    wide = None
    grans = (
        [granularity, *[g for g in GRANULARITIES if g != granularity]] if kind == "weight" else [granularity]
    )
    for gran in grans:
        try:
            wide = sensitivity.matrix(metric, kind=kind, granularity=gran)
        except ValueError:
            continue
        if not wide.empty:
            break
    if wide is None or wide.empty:
        return None
    missing = [n for n in layer_names if n not in wide.index]
    if missing:
        raise ValueError(
            f"sensitivity result has no {metric!r} rows for layer(s) {missing}; it covers {list(wide.index)}"
        )
    wide = wide.loc[list(layer_names)]
    probed = {
        int(b): wide[b].to_numpy(dtype=np.float64)
        for b in wide.columns
        if int(b) < 32 and np.isfinite(wide[b].to_numpy(dtype=np.float64)).all()
    }
    if not probed:
        return None
    return _complete_bits(probed, bits)


def _complete_bits(probed: Mapping[int, np.ndarray], bits: Sequence[int]) -> np.ndarray:
    """Values at every bit width of ``bits`` from values probed at some of them.

    Between probed widths: geometric interpolation (linear where a value is not positive); above the widest:
    the noise-power law ``value * 4**-(b - b_max)`` (0 at 32 bits); below the narrowest:
    ``value * 4**(b_min - b)`` for positive values, the narrowest value otherwise.
    """
    have = sorted(probed)
    n = len(next(iter(probed.values())))
    out = np.empty((n, len(bits)), dtype=np.float64)
    for j, b in enumerate(bits):
        if b in probed:
            out[:, j] = probed[b]
        elif b >= 32:
            out[:, j] = 0.0
        elif b > have[-1]:
            out[:, j] = probed[have[-1]] * 4.0 ** -(b - have[-1])
        elif b < have[0]:
            v = probed[have[0]]
            out[:, j] = np.where(v > 0, v * 4.0 ** (have[0] - b), v)
        else:
            lo = max(h for h in have if h < b)
            hi = min(h for h in have if h > b)
            t = (b - lo) / (hi - lo)
            vlo, vhi = probed[lo], probed[hi]
            pos = (vlo > 0) & (vhi > 0)
            geo = np.exp((1 - t) * np.log(np.where(pos, vlo, 1.0)) + t * np.log(np.where(pos, vhi, 1.0)))
            out[:, j] = np.where(pos, geo, (1 - t) * vlo + t * vhi)
    return out


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


# ------------------------------------------------------------------------------------------ measurement


@dataclass(frozen=True, eq=False)
class _Reference:
    """FP32 outputs of one split: logits, targets, the task metric's value, and the data fingerprint."""

    split: str
    logits: torch.Tensor
    targets: torch.Tensor | None
    accuracy: float
    default_metric: bool
    fingerprint: str


@torch.no_grad()
def _logits(
    model: nn.Module, loader: Iterable, output_key: str | int | None = None
) -> tuple[torch.Tensor, torch.Tensor | None, str]:
    """Concatenated outputs of ``model`` over ``loader`` (eval mode; the output ``output_key`` chooses, else the
    primary one), targets if batches have them, and a hash of the inputs and targets."""
    h = hashlib.sha256()
    device = model_device(model)
    modes = {m: m.training for m in model.modules()}
    model.eval()
    outs, ys = [], []
    try:
        for batch in loader:
            x, y = split_batch(batch)  # x: a tensor, a tuple or a dict of tensors, passed as it comes
            y = y if isinstance(y, torch.Tensor) else None
            if isinstance(x, torch.Tensor):
                h.update(x.detach().cpu().contiguous().numpy().tobytes())
            else:
                for path, t in input_tensors(x):
                    h.update(path.encode())
                    h.update(t.detach().cpu().contiguous().numpy().tobytes())
            out = primary_output(call_model(model, move_inputs(x, device)), key=output_key)
            outs.append(out.detach().float().cpu())
            if y is not None:
                h.update(y.detach().cpu().contiguous().numpy().tobytes())
                ys.append(y.detach().cpu())
    finally:
        for m, mode in modes.items():
            m.training = mode
    if not outs:
        raise ValueError("the evaluation loader is empty")
    return torch.cat(outs), (torch.cat(ys) if ys else None), h.hexdigest()


def _reference(task: Task, split: str) -> _Reference:
    loader = task.loader(split)
    logits, targets, fingerprint = _logits(task.model, loader, getattr(task, "output_key", None))
    default = task.metric is evaluate_accuracy and targets is not None and logits.dim() == 2
    acc = _top1(logits, targets) if default else task.evaluate(task.model, split)
    return _Reference(split, logits, targets, acc, default, fingerprint)


def _top1(logits: torch.Tensor, targets: torch.Tensor) -> float:
    return int((logits.argmax(dim=1) == targets).sum()) / int(targets.numel())


def measure_plan(
    task: Task, plan: QuantPlan, reference: _Reference, *, costs: Mapping[str, LayerCost]
) -> dict[str, float]:
    """Quantize ``task.model`` with ``plan`` (calibrated on ``task.calib_loader``) and measure it on the
    reference split: accuracy (the task metric), acc_drop (the metric loss: FP32 metric minus metric, x 100;
    accuracy drop in pp for labelled accuracy), kl (mean KL(FP32 || quantized) of the softmax outputs),
    logit_mse, size_bytes, avg_weight_bits, avg_act_bits, bops, eval_seconds. Outputs are those
    ``task.output_key`` chooses (None: the primary output)."""
    t0 = time.perf_counter()
    qmodel = quantize_model(task.model, plan, task.calib_loader)
    logits, _, _ = _logits(qmodel, task.loader(reference.split), getattr(task, "output_key", None))
    if reference.default_metric:
        acc = _top1(logits, reference.targets)
    else:
        acc = task.evaluate(qmodel, reference.split)
    ref = reference.logits
    if ref.dim() == 2 and ref.shape[1] > 1:
        logp_ref = torch.log_softmax(ref.double(), dim=1)
        logp_q = torch.log_softmax(logits.double(), dim=1)
        kl = float((logp_ref.exp() * (logp_ref - logp_q)).sum(dim=1).mean())
    else:
        kl = math.nan
    summary = summarize(plan, task.model, costs)
    return {
        "accuracy": float(acc),
        "acc_drop": 100.0 * (reference.accuracy - float(acc)),
        "kl": max(kl, 0.0) if math.isfinite(kl) else kl,
        "logit_mse": float((logits.double() - ref.double()).pow(2).mean()),
        "size_bytes": int(summary.size_bytes),
        "avg_weight_bits": float(summary.avg_weight_bits),
        "avg_act_bits": float(summary.avg_act_bits),
        "bops": int(summary.bops),
        "eval_seconds": time.perf_counter() - t0,
    }


# ------------------------------------------------------------------------------------------ cache file


def _model_hash(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _code_fingerprint() -> str:
    """Hash of the quantization core's source (``workbench/quant/*.py``) and :data:`CACHE_VERSION`: a change
    to how plans are quantized or summarized gets a fresh cache instead of stale measurements."""
    import workbench.quant
    from workbench.fingerprint import code_fingerprint

    return code_fingerprint(f"predictor-cache-v{CACHE_VERSION}", workbench.quant)


def dataset_key(task: Task, config: PlanDatasetConfig, *, fingerprint: str | None = None) -> str:
    """Cache key of a plan dataset: a hash of the model state, the task name, the calibration data, the
    split's data, the measurement settings (split, granularity, the task's ``output_key`` when set) and the
    quantization code (see :func:`_code_fingerprint`). Plan counts and the seed are left out on purpose: a cache
    file holds measured plans by plan id, so a bigger or differently seeded build reuses them."""
    if fingerprint is None:
        fingerprint = _logits_free_fingerprint(task.loader(config.split))
    calib = _logits_free_fingerprint(task.calib_loader)
    h = hashlib.sha256()
    parts = (_code_fingerprint(), _model_hash(task.model), task.name, calib, fingerprint, config.split)
    output_key = getattr(task, "output_key", None)
    extra = () if output_key is None else (f"output_key={output_key!r}",)  # None keeps earlier keys
    for part in (*parts, config.granularity, *extra):
        h.update(str(part).encode())
        h.update(b"\0")
    return f"{task.name}-{h.hexdigest()[:16]}"


def _logits_free_fingerprint(loader: Iterable) -> str:
    """Hash of every tensor of every batch (dicts and nested tuples included; a tensor or an ``(x, y)`` batch of
    tensors hashes as it always did)."""
    h = hashlib.sha256()
    for batch in loader:
        for _, t in input_tensors(batch):
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _line_sha(record: Mapping[str, Any], key: Any) -> str:
    """Checksum of one cache line: its fields (``sha`` left out) and the cache key of the file it belongs to, so
    an edited line, or one copied from another model's or config's file, no longer matches."""
    body = {k: v for k, v in record.items() if k != "sha"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(f"{key}\0{text}".encode()).hexdigest()[:16]


def _signed(record: Mapping[str, Any], key: Any) -> dict[str, Any]:
    return {**record, "sha": _line_sha(record, key)}


@dataclass
class _CacheContents:
    """What :func:`_read_cache` found: the header, plan_id -> record (a later record of a plan wins), the raw
    lines worth keeping, and ``problems``: (line number, why) of every line left out."""

    header: dict[str, Any] | None = None
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    good_lines: list[str] = field(default_factory=list)
    problems: list[tuple[int, str]] = field(default_factory=list)
    bad_header: str | None = None

    def describe_problems(self, limit: int = 5) -> str:
        shown = "; ".join(f"line {n}: {why}" for n, why in self.problems[:limit])
        more = len(self.problems) - limit
        return shown + (f"; and {more} more" if more > 0 else "")


def _read_cache(path: Path) -> _CacheContents:
    """Every line of a cache file, checked. A line that is not JSON (a write cut short), not a record, or whose
    checksum (``sha``, see :func:`_line_sha`) does not match is left out and named in ``problems``. Files written
    before checksums (a header without ``checksums``) keep their unsigned records; a signed record is always
    checked."""
    out = _CacheContents()
    if not path.is_file():
        return out
    with path.open(encoding="utf-8", errors="replace") as f:
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            out.problems.append((number, "cut short or not JSON"))
            continue
        if not isinstance(rec, dict) or rec.get("type") not in ("header", "plan"):
            out.problems.append((number, "not a header or plan record"))
            continue
        if rec["type"] == "header":
            if out.header is not None or out.bad_header is not None:
                out.problems.append((number, "a second header"))
            elif "sha" in rec and rec["sha"] != _line_sha(rec, rec.get("key")):
                out.bad_header = f"line {number} fails its checksum (edited)"
            elif rec.get("checksums") and "sha" not in rec:
                out.bad_header = f"line {number} has lost its checksum (edited)"
            else:
                out.header = rec
                out.good_lines.append(line)
            continue
        if out.header is None:
            out.problems.append((number, "a plan record before the header"))
            continue
        if (
            "plan_id" not in rec
            or not isinstance(rec.get("w_bits"), list)
            or not isinstance(rec.get("a_bits"), list)
        ):
            out.problems.append((number, "a plan record without plan_id / w_bits / a_bits"))
            continue
        if "sha" in rec:
            if rec["sha"] != _line_sha(rec, out.header.get("key")):
                out.problems.append(
                    (number, f"plan {rec['plan_id']} fails its checksum (edited, or from another file)")
                )
                continue
        elif out.header.get("checksums"):
            out.problems.append((number, f"plan {rec['plan_id']} has no checksum (edited)"))
            continue
        out.records[rec["plan_id"]] = rec
        out.good_lines.append(line)
    return out


def _rewrite_cache(path: Path, lines: Sequence[str]) -> None:
    """Replace ``path`` with ``lines`` atomically (a temporary file renamed over it)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write("".join(f"{line}\n" for line in lines))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class _CacheWriter:
    """Appends JSON lines to the cache file, flushed and fsynced one by one."""

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not path.is_file() or path.stat().st_size == 0
        self._f = path.open("a", encoding="utf-8")
        if not fresh:
            with path.open("rb") as r:
                r.seek(-1, 2)
                if r.read(1) != b"\n":  # a line cut short by an interruption: start a new one
                    self._f.write("\n")
        if fresh:
            self.write(header)

    def write(self, record: Mapping[str, Any]) -> None:
        self._f.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()


def _dataset_frame(names: Sequence[str], rows: list[dict[str, Any]]) -> pd.DataFrame:
    cols: dict[str, list] = {"plan_id": [r["plan_id"] for r in rows], "source": [r["source"] for r in rows]}
    for i, n in enumerate(names):
        cols[f"w:{n}"] = [int(r["w_bits"][i]) for r in rows]
    for i, n in enumerate(names):
        cols[f"a:{n}"] = [int(r["a_bits"][i]) for r in rows]
    for m in FRAME_METRICS:
        cols[m] = [r.get(m, math.nan) for r in rows]
    return pd.DataFrame(cols)


def _task_metric_info(task: Task) -> dict[str, Any]:
    """``metric_name`` (see :attr:`workbench.tasks.Task.metric_name`) and ``output_key`` of ``task``."""
    name = getattr(task, "metric_name", None)
    if not isinstance(name, str):
        from workbench.tasks import metric_name

        name = metric_name(task.metric)
    return {"metric_name": name, "output_key": getattr(task, "output_key", None)}


def build_plan_dataset(
    task: Task,
    sensitivity: SensitivityResult | None = None,
    config: PlanDatasetConfig = PlanDatasetConfig(),  # noqa: B008 - frozen default
    *,
    path: str | Path | None = None,
    resume: bool = True,
    progress: bool = True,
    track: bool = False,
    num_threads: int | None = None,
    device: str | torch.device | None = None,
) -> PlanDataset:
    """Generate the plans of ``config`` (see :func:`generate_plans`) and measure each on ``task``.

    Each measured plan is appended as one JSON line to ``path`` (default ``data_dir()/predictor/<key>.jsonl``,
    key from :func:`dataset_key`) and flushed at once, so an interrupted build loses nothing it measured. With
    ``resume`` plans already in that file (matched by :func:`plan_id`) are read back instead of measured; with
    ``resume=False`` every plan is measured again and appended (the file is never truncated). Every line carries a
    checksum over its fields and the cache key (see :func:`_line_sha`): lines cut short by a kill or edited by
    hand are named in a warning, dropped from the file and their plans measured again; a file whose header is
    missing, edited or of another key (model, data, split, granularity, quantization code) is refused with a
    ValueError naming it, never read. ``num_threads``
    sets torch's intra-op threads during the build and restores them afterwards (1 is often fastest for small
    models on a busy machine). ``track`` logs the config, counts and the frame to MLflow.

    ``device``: where plans are quantized and measured (``cpu``, ``cuda``, ``cuda:N``; None: where
    ``task.model`` is); the model is copied there. The cache key does not depend on the device (a cache file
    filled on one device is reused on another; the numbers differ at most by float rounding). A device this
    machine lacks raises :class:`workbench.devices.DeviceError` before any work.
    """
    from tqdm.auto import tqdm

    from workbench import tracking

    if not isinstance(config, PlanDatasetConfig):
        raise TypeError(f"config must be a PlanDatasetConfig, got {type(config).__name__}")
    task = on_device(task, device)
    t_start = time.perf_counter()
    names = quantizable_layers(task.model)
    if not names:
        raise PlanError(f"{type(task.model).__name__} has no quantizable layers (Conv2d / Linear)")
    costs = layer_costs(task.model, task.example_input())
    with _torch_threads(num_threads):
        reference = _reference(task, config.split)
        key = dataset_key(task, config, fingerprint=reference.fingerprint)
        file = Path(path) if path is not None else data_dir() / "predictor" / f"{key}.jsonl"
        contents = _read_cache(file)
        header, cached = contents.header, contents.records
        if header is None and (contents.bad_header or contents.problems):
            if contents.bad_header or contents.problems != [(1, "cut short or not JSON")]:
                why = contents.bad_header or contents.describe_problems()
                raise ValueError(
                    f"cache file {file} has no valid header line ({why}), so its measurements cannot be tied to "
                    "a model and config; delete the file or pass another path"
                )
            # a lone first line cut short: the header of a build interrupted before it measured anything
            warnings.warn(
                f"cache file {file}: its only line, the header, was cut short; starting the file again",
                stacklevel=2,
            )
            file.unlink()
            contents = _CacheContents()
        if header is not None and list(header.get("layer_names", [])) != names:
            raise ValueError(
                f"cache file {file} belongs to a model with layers {header.get('layer_names')}, not {names}; "
                "pass another path"
            )
        if header is not None and header.get("key") != key:
            raise ValueError(
                f"cache file {file} holds measurements of another model, data or quantization code, or of "
                f"another split or granularity (key "
                f"{header.get('key')!r}, expected {key!r}); pass another path or delete the file"
            )
        if contents.problems:  # lines cut short or edited: named, dropped, their plans measured again
            warnings.warn(
                f"cache file {file}: dropped {len(contents.problems)} bad line(s) "
                f"({contents.describe_problems()}); their plans are measured again",
                stacklevel=2,
            )
            _rewrite_cache(file, contents.good_lines)
        if not resume:
            cached = {}
        header_now = _signed(
            {
                "type": "header", "key": key, "task": task.name, "layer_names": names, "split": config.split,
                "granularity": config.granularity, "fp32_accuracy": reference.accuracy,
                **_task_metric_info(task), "checksums": 1,
            },
            key,
        )  # fmt: skip
        writer = _CacheWriter(file, header_now)
        counts = {"measured": 0, "cached": 0, "seconds": 0.0}
        records: dict[str, dict[str, Any]] = {}
        bar = tqdm(total=config.n_plans, desc="plan dataset", disable=not progress)

        def record_of(plan: QuantPlan) -> dict[str, Any]:
            pid = plan_id(plan)
            if pid in records:
                return records[pid]
            if pid in cached:
                counts["cached"] += 1
                records[pid] = cached[pid]
            else:
                t0 = time.perf_counter()
                result = measure_plan(task, plan, reference, costs=costs)
                counts["seconds"] += time.perf_counter() - t0
                counts["measured"] += 1
                records[pid] = _signed(
                    {
                        "type": "plan", "plan_id": pid, "w_bits": [plan[n].w_bits for n in names],
                        "a_bits": [plan[n].a_bits for n in names], "granularity": config.granularity, **result,
                    },
                    key,
                )  # fmt: skip
                writer.write(records[pid])
            bar.update(1)
            return records[pid]

        try:
            generated = generate_plans(
                names,
                config,
                sensitivity=sensitivity,
                weight_params=[costs[n].weight_params for n in names],
                measure=lambda plans: [record_of(p)["acc_drop"] for p in plans],
            )
            bar.total = len(generated)
            rows = [{**record_of(plan), "source": source} for source, plan in generated]
        finally:
            bar.close()
            writer.close()
    frame = _dataset_frame(names, rows)
    info = {
        "key": key,
        "path": str(file),
        "task": task.name,
        "config": asdict(config),
        "fp32_accuracy": reference.accuracy,
        **_task_metric_info(task),
        "n_plans": len(frame),
        "n_measured": counts["measured"],
        "n_cached": counts["cached"],
        "build_seconds": time.perf_counter() - t_start,
        "measure_seconds": counts["seconds"],
        "plans_per_second": counts["measured"] / counts["seconds"] if counts["measured"] else math.nan,
    }
    dataset = PlanDataset(frame=frame, plans=[p for _, p in generated], layer_names=names, info=info)
    if track:
        with tracking.start_run(
            "predictor_dataset", run_name=f"plan-dataset-{task.name}", params=config
        ) as run:
            run.log_metrics({k: v for k, v in info.items() if isinstance(v, (int, float))})
            run.log_dataframe(frame, "plan_dataset")
    return dataset


# ============================================================================================ features


def _weight_noise(
    model: nn.Module, names: Sequence[str], bits: Sequence[int], granularity: str
) -> tuple[np.ndarray, np.ndarray]:
    """(absolute ||W - Q(W)||^2, relative ||W - Q(W)||^2 / ||W||^2), each ``[n_layers, len(bits)]``, of the
    BatchNorm-folded weights as :func:`quantize_model` quantizes them."""
    folded = copy.deepcopy(model).eval()
    fold_batchnorm(folded, conv_bn_pairs(folded))
    absolute = np.zeros((len(names), len(bits)))
    relative = np.zeros((len(names), len(bits)))
    with torch.no_grad():
        for i, name in enumerate(names):
            w = folded.get_submodule(name).weight.detach().float()
            power = float(w.pow(2).sum())
            for j, b in enumerate(bits):
                if b >= 32:
                    continue
                gran = granularity if b < 16 else "per_tensor"
                err = float((quantize_weight(w, QuantSpec(w_bits=b, granularity=gran)) - w).pow(2).sum())
                absolute[i, j] = err
                relative[i, j] = err / power if power > 0 else 0.0
    return absolute, relative


@torch.no_grad()
def _input_variance(model: nn.Module, names: Sequence[str], x: Any) -> np.ndarray:
    """Variance of each layer's input over one batch."""
    out: dict[str, float] = {}
    handles = []
    modules = dict(model.named_modules())

    def hook(name: str):
        def fn(mod: nn.Module, args: tuple) -> None:
            out[name] = float(args[0].detach().float().var())

        return fn

    for n in names:
        handles.append(modules[n].register_forward_pre_hook(hook(n)))
    was_training = model.training
    try:
        model.eval()
        call_model(model, move_inputs(x, model_device(model)))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return np.array([out.get(n, 0.0) for n in names])


def _act_noise_table(input_var: np.ndarray, bits: Sequence[int]) -> np.ndarray:
    """Activation noise power proxy ``input_var * 2**(-2 * a_bits)`` (16 bits: 8 mantissa bits; 32: 0)."""
    eff = np.array([b if b < 16 else (8 if b == 16 else np.inf) for b in bits], dtype=np.float64)
    return input_var[:, None] * np.power(2.0, -2.0 * eff)[None, :]


def _sensitivity_tables(
    sensitivity: SensitivityResult,
    names: Sequence[str],
    vocab: Sequence[int],
    granularity: str,
    w_noise: np.ndarray,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], list[str]]:
    """(weight tables, activation tables, metric names used) from a sensitivity result: every per-bit metric
    (``sens_<metric>`` / ``sens_act_<metric>``), and the per-layer Hessian trace (unless omega is there, which
    already is trace x noise power) and Fisher times the weight noise power."""
    _check_sensitivity_layers(sensitivity, names)
    w_tables: dict[str, np.ndarray] = {}
    a_tables: dict[str, np.ndarray] = {}
    used: list[str] = []
    for metric in sorted(set(sensitivity.table["metric"])):
        t = _metric_matrix(sensitivity, metric, names, vocab, kind="weight", granularity=granularity)
        if t is not None:
            w_tables[f"sens_{metric}"] = t
            used.append(metric)
        t = _metric_matrix(sensitivity, metric, names, vocab, kind="activation", granularity="per_tensor")
        if t is not None:
            a_tables[f"sens_act_{metric}"] = t
            used.append(f"activation:{metric}")
    if "layer" not in sensitivity.layers.columns:
        return w_tables, a_tables, used
    layers = sensitivity.layers.set_index("layer").reindex(list(names))
    if "hessian_trace_per_param" not in layers.columns and "hessian_trace" in layers.columns:
        numel = layers["weight_params"] if "weight_params" in layers.columns else 1.0  # total trace otherwise
        layers["hessian_trace_per_param"] = layers["hessian_trace"] / np.asarray(numel, dtype=np.float64)
    for col, tname in (("hessian_trace_per_param", "trace_noise"), ("fisher", "fisher_noise")):
        if col == "hessian_trace_per_param" and "sens_omega" in w_tables:
            continue
        if col in layers.columns:
            v = layers[col].to_numpy(dtype=np.float64)
            if np.isfinite(v).all():
                w_tables[tname] = np.abs(v)[:, None] * w_noise
                used.append(col)
    return w_tables, a_tables, used


def _profile_input_var(profile: pd.DataFrame, names: Sequence[str]) -> np.ndarray:
    """Per-layer ``input_var`` of a :func:`workbench.profiling.profile_model` frame."""
    if "input_var" not in profile.columns:
        raise ValueError("profile must be a profile_model frame with an 'input_var' column")
    prof = profile.set_index("layer") if "layer" in profile.columns else profile
    missing = [n for n in names if n not in prof.index]
    if missing:
        raise ValueError(f"profile has no rows for layer(s) {missing}")
    return prof.loc[list(names), "input_var"].to_numpy(dtype=np.float64)


@dataclass(frozen=True, eq=False)
class PlanFeaturizer:
    """Turns plans into feature rows with numpy gathers from per-layer lookup tables.

    Build it with :meth:`fit`. ``bits`` is the vocabulary of bit widths a plan may use (every valid width, so
    any plan can be scored); ``w_tables`` / ``a_tables`` map a name to ``[n_layers, len(bits)]`` lookup tables
    indexed by weight / activation bits; ``positive`` names the tables that also give log features.
    """

    layer_names: tuple[str, ...]
    bits: tuple[int, ...]
    default_a_bits: int
    w_tables: dict[str, np.ndarray]
    a_tables: dict[str, np.ndarray]
    positive: frozenset[str]
    weight_params: np.ndarray
    macs: np.ndarray
    count_bits: tuple[int, ...]
    granularity: str = "per_channel"
    info: dict[str, Any] = field(default_factory=dict)

    # -- construction --------------------------------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        task_or_model: Task | nn.Module,
        sensitivity: SensitivityResult | None = None,
        *,
        profile: pd.DataFrame | None = None,
        example_input: torch.Tensor | None = None,
        w_bits: Sequence[int] = (2, 3, 4, 6, 8),
        a_bits: Sequence[int] = (8,),
        granularity: str = "per_channel",
    ) -> PlanFeaturizer:
        """Lookup tables for a model: weight noise power of every layer at every bit width, the sensitivity
        metrics the result has (weight rows: omega, output_mse, output_kl, acc_drop, ...; activation rows; the
        Hessian trace and Fisher of ``sensitivity.layers`` times the weight noise), and activation noise
        power from the profile's ``input_var`` (measured on one batch when no profile is given).

        ``w_bits`` / ``a_bits`` are the widths plans usually use (count features; default activation bits is
        ``max(a_bits)`` for weight-only bit arrays). ``example_input``: a batch, needed for a bare model.
        """
        if isinstance(task_or_model, nn.Module):
            model = task_or_model
            if example_input is None:
                raise ValueError("PlanFeaturizer.fit(model) needs example_input=<a batch of inputs>")
            x = example_input
        else:
            model = task_or_model.model
            x = example_input if example_input is not None else _example_batch(task_or_model)
        names = quantizable_layers(model)
        if not names:
            raise PlanError(f"{type(model).__name__} has no quantizable layers (Conv2d / Linear)")
        if granularity not in ("per_tensor", "per_channel"):
            raise ValueError(f"granularity={granularity!r}; choose 'per_tensor' or 'per_channel'")
        bad = [b for b in (*w_bits, *a_bits) if b not in VALID_BITS]
        if bad or not w_bits or not a_bits:
            raise ValueError(f"w_bits / a_bits must be non-empty and use bits from {VALID_BITS}; bad: {bad}")
        vocab = tuple(VALID_BITS)
        costs = layer_costs(model, x)
        w_noise, w_rel = _weight_noise(model, names, vocab, granularity)
        w_tables: dict[str, np.ndarray] = {"w_noise": w_noise, "w_rel_noise": w_rel}
        used: list[str] = []
        a_tables: dict[str, np.ndarray] = {}
        if sensitivity is not None:
            sw, sa, used = _sensitivity_tables(sensitivity, names, vocab, granularity, w_noise)
            w_tables.update(sw)
            a_tables.update(sa)
        input_var = _profile_input_var(profile, names) if profile is not None else None
        if input_var is None:
            input_var = _input_variance(model, names, x)
        a_tables["act_noise"] = _act_noise_table(np.nan_to_num(input_var), vocab)
        positive = frozenset(
            k for k, t in {**w_tables, **a_tables}.items() if np.all(t >= 0) and np.any(t > 0)
        )
        return cls(
            layer_names=tuple(names),
            bits=vocab,
            default_a_bits=int(max(a_bits)),
            w_tables=w_tables,
            a_tables=a_tables,
            positive=positive,
            weight_params=np.array([costs[n].weight_params for n in names], dtype=np.float64),
            macs=np.array([costs[n].macs for n in names], dtype=np.float64),
            count_bits=tuple(sorted(set(w_bits))),
            granularity=granularity,
            info={"sensitivity_metrics": used, "profile": profile is not None},
        )

    # -- encoding ------------------------------------------------------------------------------------------
    def encode(self, plans: Any) -> tuple[np.ndarray, np.ndarray]:
        """(weight bit indices, activation bit indices), each int ``[n_plans, n_layers]`` into ``self.bits``.

        ``plans``: a :class:`PlanDataset`, a QuantPlan (or mapping), a list of them, an int array
        ``[n_plans, n_layers]`` of weight bits (activations at ``default_a_bits``), or
        ``[n_plans, n_layers, 2]`` of (weight, activation) bits. Layers missing from a QuantPlan are float32
        (32 bits); a spec with ``channel_bits`` counts as its mean bits rounded to the nearest valid width.
        """
        if isinstance(plans, PlanDataset):
            if list(plans.layer_names) != list(self.layer_names):
                raise ValueError(
                    f"dataset layers {plans.layer_names} differ from the featurizer's "
                    f"{list(self.layer_names)}"
                )
            w, a = plans.bits()
        elif isinstance(plans, (QuantPlan, Mapping)):
            w, a = self._plans_to_bits([plans])
        elif isinstance(plans, np.ndarray) or (
            isinstance(plans, (list, tuple)) and plans and not isinstance(plans[0], (QuantPlan, Mapping))
        ):
            w, a = self._array_to_bits(np.asarray(plans))
        else:
            w, a = self._plans_to_bits(list(plans))
        lut = np.full(max(VALID_BITS) + 1, -1, dtype=np.int64)
        lut[list(self.bits)] = np.arange(len(self.bits))
        out = []
        for kind, arr in (("weight", w), ("activation", a)):
            if arr.size and (arr.min() < 0 or arr.max() >= len(lut)):
                bad = sorted({int(b) for b in np.unique(arr) if b < 0 or b >= len(lut)})
                raise ValueError(f"{kind} bits {bad} are not valid; valid bits: {list(self.bits)}")
            idx = lut[arr]
            if (idx < 0).any():
                bad = sorted({int(b) for b in np.unique(arr[idx < 0])})
                raise ValueError(f"{kind} bits {bad} are not valid; valid bits: {list(self.bits)}")
            out.append(idx)
        return out[0], out[1]

    def _array_to_bits(self, arr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n_layers = len(self.layer_names)
        if arr.ndim == 1 and arr.shape[0] == n_layers:
            arr = arr[None, :]
        if not np.issubdtype(arr.dtype, np.number):
            raise ValueError(f"bit arrays must be numeric, got dtype {arr.dtype}")
        if arr.ndim == 2 and arr.shape[1] == n_layers:
            w = arr.astype(np.int64)
            return w, np.full_like(w, self.default_a_bits)
        if arr.ndim == 3 and arr.shape[1:] == (n_layers, 2):
            arr = arr.astype(np.int64)
            return arr[..., 0], arr[..., 1]
        raise ValueError(
            f"bit array of shape {arr.shape}: expected [n_plans, {n_layers}] (weight bits) or "
            f"[n_plans, {n_layers}, 2] (weight, activation bits) for layers {list(self.layer_names)}"
        )

    def _plans_to_bits(self, plans: list[Any]) -> tuple[np.ndarray, np.ndarray]:
        pos = {n: i for i, n in enumerate(self.layer_names)}
        w = np.full((len(plans), len(pos)), 32, dtype=np.int64)
        a = np.full((len(plans), len(pos)), 32, dtype=np.int64)
        for k, plan in enumerate(plans):
            if isinstance(plan, Mapping) and not isinstance(plan, QuantPlan):
                plan = QuantPlan.from_dict(plan)
            if not isinstance(plan, QuantPlan):
                raise ValueError(f"plans must be QuantPlans or bit arrays, got {type(plan).__name__}")
            unknown = [n for n in plan.layers if n not in pos]
            if unknown:
                raise PlanError(
                    f"plan names unknown layer(s) {unknown}; valid layers: {list(self.layer_names)}"
                )
            for name, spec in plan.items():
                w[k, pos[name]] = _nearest_bits(spec.mean_weight_bits(), self.bits)
                a[k, pos[name]] = spec.a_bits
        return w, a

    # -- features ------------------------------------------------------------------------------------------
    @property
    def feature_names(self) -> list[str]:
        return self._build(
            np.zeros((1, len(self.layer_names)), dtype=np.int64),
            np.zeros((1, len(self.layer_names)), dtype=np.int64),
            names_only=True,
        )[1]

    def transform(self, plans: Any) -> np.ndarray:
        """Feature matrix ``[n_plans, n_features]`` (float64) of ``plans`` (anything :meth:`encode` takes)."""
        w_idx, a_idx = self.encode(plans)
        return self._build(w_idx, a_idx)[0]

    def transform_indices(self, w_idx: np.ndarray, a_idx: np.ndarray) -> np.ndarray:
        """Features from already encoded index arrays (the fastest path)."""
        return self._build(w_idx, a_idx)[0]

    def _build(
        self, w_idx: np.ndarray, a_idx: np.ndarray, *, names_only: bool = False
    ) -> tuple[np.ndarray, list[str]]:
        n_layers = len(self.layer_names)
        rows = np.arange(n_layers)[None, :]
        bits = np.asarray(self.bits, dtype=np.float64)
        wb = bits[w_idx]
        ab = bits[a_idx]
        blocks: list[np.ndarray] = []
        names: list[str] = []

        def per_layer(prefix: str, values: np.ndarray) -> None:
            blocks.append(values)
            names.extend(f"{prefix}:{n}" for n in self.layer_names)

        def scalar(name: str, values: np.ndarray) -> None:
            blocks.append(values[:, None])
            names.append(name)

        per_layer("w_bits", wb)
        per_layer("a_bits", ab)
        for tables, idx in ((self.w_tables, w_idx), (self.a_tables, a_idx)):
            for tname, table in tables.items():
                vals = table[rows, idx]
                total = vals.sum(axis=1)
                if tname in self.positive:
                    eps = _log_floor(table)
                    per_layer(f"log_{tname}", np.log(vals + eps))
                    scalar(f"sum_{tname}", total)
                    scalar(f"log_sum_{tname}", np.log(total + eps))
                    scalar(f"max_log_{tname}", np.log(vals.max(axis=1) + eps))
                else:
                    per_layer(tname, vals)
                    scalar(f"sum_{tname}", total)
        params = self.weight_params
        macs = self.macs
        scalar("avg_weight_bits", wb @ params / max(params.sum(), 1.0))
        scalar("bops_share", (wb * ab) @ macs / max(32.0 * 32.0 * macs.sum(), 1.0))
        scalar("min_w_bits", wb.min(axis=1))
        scalar("min_a_bits", ab.min(axis=1))
        for b in self.count_bits:
            scalar(f"n_w{b}", (wb == b).sum(axis=1).astype(np.float64))
        if names_only:
            return np.empty((0, 0)), names
        return np.concatenate(blocks, axis=1), names


def _log_floor(table: np.ndarray) -> float:
    pos = table[table > 0]
    return float(pos.min()) * 1e-3 if pos.size else 1e-30


def _nearest_bits(value: float, vocab: Sequence[int]) -> int:
    return int(min(vocab, key=lambda b: (abs(b - value), b)))


def _example_batch(task: Task, n: int = 64) -> torch.Tensor:
    try:
        return task.example_input(n)
    except ValueError:
        return task.example_input(1)


def _check_sensitivity_layers(sensitivity: SensitivityResult, names: Sequence[str]) -> None:
    layers = set(sensitivity.layers["layer"]) if "layer" in sensitivity.layers.columns else set()
    unknown = sorted(layers - set(names))
    if unknown:
        raise ValueError(
            f"sensitivity result names layer(s) {unknown} that the model lacks; model layers: {list(names)}"
        )


# ============================================================================================ models


class RidgeModel:
    """Additive linear baseline: standardized features -> ridge regression (alpha by leave-one-out CV)."""

    name = "ridge"

    def __init__(self, *, alphas: Sequence[float] = tuple(np.logspace(-3, 3, 13)), seed: int = 0) -> None:
        self.alphas = tuple(float(a) for a in alphas)
        self.seed = seed
        self._pipe: Any = None

    def fit(self, X: np.ndarray, y: np.ndarray) -> RidgeModel:
        from sklearn.linear_model import RidgeCV
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        self._pipe = make_pipeline(StandardScaler(), RidgeCV(alphas=self.alphas)).fit(X, y)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(self._pipe.predict(X), dtype=np.float64)


class _MLP(nn.Module):
    def __init__(self, n_in: int, hidden: Sequence[int], dropout: float) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = n_in
        for h in hidden:
            layers += [nn.Linear(width, h), nn.GELU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


@contextlib.contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads (None: unchanged), restoring the setting afterwards."""
    old = torch.get_num_threads()
    if n is not None and n != old:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        if torch.get_num_threads() != old:
            torch.set_num_threads(old)


class MLPModel:
    """Shallow torch MLP on standardized features and target, trained full-batch with Adam (seeded; dropout
    and weight decay against the small datasets). ``threads``: torch intra-op threads while fitting /
    predicting (restored afterwards; None leaves torch's setting); one is fastest for nets this small."""

    name = "mlp"

    def __init__(
        self,
        *,
        hidden: Sequence[int] = (64, 32),
        steps: int = 500,
        lr: float = 3e-3,
        weight_decay: float = 1e-2,
        dropout: float = 0.1,
        batch_size: int = 65536,
        threads: int | None = 1,
        seed: int = 0,
    ) -> None:
        self.hidden = tuple(int(h) for h in hidden)
        self.steps = int(steps)
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.dropout = float(dropout)
        self.batch_size = int(batch_size)
        self.threads = threads
        self.seed = int(seed)
        self._net: _MLP | None = None
        self._x_mean = self._x_std = None
        self._y_mean = 0.0
        self._y_std = 1.0

    def fit(self, X: np.ndarray, y: np.ndarray) -> MLPModel:
        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        self._x_mean = X.mean(axis=0)
        std = X.std(axis=0)
        self._x_std = np.where(std > 1e-12, std, 1.0)
        self._y_mean = float(y.mean())
        self._y_std = float(y.std()) or 1.0
        xt = torch.as_tensor((X - self._x_mean) / self._x_std, dtype=torch.float32)
        yt = torch.as_tensor((y - self._y_mean) / self._y_std, dtype=torch.float32)
        with _torch_threads(self.threads), torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            net = _MLP(X.shape[1], self.hidden, self.dropout)
            opt = torch.optim.Adam(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
            net.train()
            for _ in range(self.steps):
                opt.zero_grad()
                loss = torch.nn.functional.mse_loss(net(xt), yt)
                loss.backward()
                opt.step()
        self._net = net.eval()
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        if self._net is None:
            raise RuntimeError("MLPModel.predict before fit")
        xs = (np.asarray(X, dtype=np.float64) - self._x_mean) / self._x_std
        out = np.empty(len(xs), dtype=np.float64)
        with _torch_threads(self.threads), torch.no_grad():
            for i in range(0, len(xs), self.batch_size):
                chunk = torch.as_tensor(xs[i : i + self.batch_size], dtype=torch.float32)
                out[i : i + self.batch_size] = self._net(chunk).double().numpy()
        return out * self._y_std + self._y_mean


class GBTModel:
    """Gradient-boosted trees: scikit-learn ``GradientBoostingRegressor`` (stochastic: each tree sees a
    ``subsample`` of the plans and a ``max_features`` share of the features). Single-threaded, so it predicts
    fast and steadily on a busy machine (``HistGradientBoostingRegressor``'s OpenMP threads do not)."""

    name = "gbt"

    def __init__(
        self,
        *,
        n_estimators: int = 300,
        learning_rate: float = 0.05,
        max_depth: int = 4,
        min_samples_leaf: int = 3,
        subsample: float = 0.8,
        max_features: float = 0.5,
        seed: int = 0,
    ) -> None:
        self.params = {
            "n_estimators": int(n_estimators),
            "learning_rate": float(learning_rate),
            "max_depth": int(max_depth),
            "min_samples_leaf": int(min_samples_leaf),
            "subsample": float(subsample),
            "max_features": float(max_features),
        }
        self.seed = int(seed)
        self._est: Any = None

    def fit(self, X: np.ndarray, y: np.ndarray) -> GBTModel:
        from sklearn.ensemble import GradientBoostingRegressor

        self._est = GradientBoostingRegressor(**self.params, random_state=self.seed).fit(X, y)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(self._est.predict(X), dtype=np.float64)


class EnsembleModel:
    """Bootstrap ensemble: ``n_members`` models of the kinds in ``members`` (cycled), each fitted on a
    bootstrap resample with its own seed. ``predict`` is the members' mean; ``return_std=True`` adds their
    standard deviation (the uncertainty for active learning)."""

    name = "ensemble"

    def __init__(
        self,
        *,
        members: Sequence[str] = ("gbt", "mlp"),
        n_members: int = 6,
        bootstrap: bool = True,
        seed: int = 0,
        member_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        bad = [m for m in members if m not in _BASE_MODELS]
        if not members or bad:
            raise ValueError(
                f"ensemble members {bad or list(members)} invalid; choose from {list(_BASE_MODELS)}"
            )
        if n_members < 2:
            raise ValueError(f"an ensemble needs n_members >= 2, got {n_members}")
        self.members = tuple(members)
        self.n_members = int(n_members)
        self.bootstrap = bool(bootstrap)
        self.seed = int(seed)
        self.member_kwargs = {k: dict(v) for k, v in (member_kwargs or {}).items()}
        self._fitted: list[Any] = []

    def fit(self, X: np.ndarray, y: np.ndarray) -> EnsembleModel:
        rng = np.random.default_rng([self.seed, 7])
        self._fitted = []
        for i in range(self.n_members):
            kind = self.members[i % len(self.members)]
            idx = rng.integers(0, len(X), size=len(X)) if self.bootstrap else np.arange(len(X))
            model = _BASE_MODELS[kind](seed=self.seed * 1000 + i, **self.member_kwargs.get(kind, {}))
            self._fitted.append(model.fit(X[idx], y[idx]))
        return self

    def predict_members(self, X: np.ndarray) -> np.ndarray:
        """``[n_members, n_plans]`` predictions."""
        return np.stack([m.predict(X) for m in self._fitted])

    def predict(self, X: np.ndarray, *, return_std: bool = False):
        p = self.predict_members(X)
        return (p.mean(axis=0), p.std(axis=0)) if return_std else p.mean(axis=0)


_BASE_MODELS: dict[str, type] = {"ridge": RidgeModel, "mlp": MLPModel, "gbt": GBTModel}
_MODELS: dict[str, type] = {**_BASE_MODELS, "ensemble": EnsembleModel}
MODEL_NAMES: tuple[str, ...] = tuple(_MODELS)


def make_model(name: str, *, seed: int = 0, **kwargs: Any):
    """A fresh, unfitted model by name (``ridge``, ``mlp``, ``gbt``, ``ensemble``)."""
    if name not in _MODELS:
        raise ValueError(f"unknown predictor model {name!r}; choose one of {list(MODEL_NAMES)}")
    return _MODELS[name](seed=seed, **kwargs)


# ============================================================================================ facade


def _forward(y: np.ndarray, transform: str) -> np.ndarray:
    if transform == "signed_log1p":
        return np.sign(y) * np.log1p(np.abs(y))
    return y


def _inverse(z: np.ndarray, transform: str) -> np.ndarray:
    if transform == "signed_log1p":
        return np.sign(z) * np.expm1(np.abs(z))
    return z


def _check_transform(transform: str) -> None:
    if transform not in TRANSFORMS:
        raise ValueError(f"unknown target transform {transform!r}; choose one of {list(TRANSFORMS)}")


@dataclass(eq=False)
class AccuracyPredictor:
    """A featurizer and a fitted model: predicts ``target`` of plans (default ``acc_drop``, the metric loss:
    FP32 metric minus metric x 100; accuracy drop in pp for labelled accuracy). ``info`` holds the training
    count, fit time and seed, and (from the dataset) ``metric_name`` and ``output_key`` of the measured task."""

    featurizer: PlanFeaturizer
    model: Any
    model_name: str
    target: str = "acc_drop"
    transform: str = "signed_log1p"
    columns: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def fit(
        cls,
        dataset: PlanDataset,
        featurizer: PlanFeaturizer,
        *,
        model: str = "gbt",
        target: str = "acc_drop",
        transform: str = "signed_log1p",
        seed: int = 0,
        **model_kwargs: Any,
    ) -> AccuracyPredictor:
        """Fit ``model`` (by name) on every plan of ``dataset``; ``transform`` is applied to the target before
        fitting and inverted at prediction."""
        _check_transform(transform)
        est = make_model(model, seed=seed, **model_kwargs)
        n = len(dataset)
        if n < MIN_FIT_PLANS:
            raise ValueError(f"a predictor needs at least {MIN_FIT_PLANS} measured plans to fit, got {n}")
        y = dataset.target(target)
        keep = np.isfinite(y)
        if keep.sum() < MIN_FIT_PLANS:
            raise ValueError(
                f"a predictor needs at least {MIN_FIT_PLANS} plans with a finite {target!r}, "
                f"got {int(keep.sum())}"
            )
        X = featurizer.transform(dataset)[keep]
        columns = np.flatnonzero(X.std(axis=0) > 0)  # features constant over the training plans carry nothing
        t0 = time.perf_counter()
        est.fit(X[:, columns], _forward(y[keep], transform))
        info = {"n_train": int(keep.sum()), "fit_seconds": time.perf_counter() - t0, "seed": seed}
        for key in ("metric_name", "output_key"):
            if key in dataset.info:
                info[key] = dataset.info[key]
        return cls(featurizer, est, model, target, transform, columns, info)

    def features(self, plans: Any) -> np.ndarray:
        """The model's input: featurizer output restricted to the features that varied in training."""
        X = self.featurizer.transform(plans)
        return X if self.columns is None else X[:, self.columns]

    def predict(self, plans: Any) -> np.ndarray:
        """Predicted ``target`` of each plan (QuantPlans, a PlanDataset or bit arrays; see
        :meth:`PlanFeaturizer.encode`)."""
        X = self.features(plans)
        if hasattr(self.model, "predict_members"):
            return _inverse(self.model.predict_members(X), self.transform).mean(axis=0)
        return _inverse(self.model.predict(X), self.transform)

    def predict_with_uncertainty(self, plans: Any) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std) over the ensemble members, in target units. Needs ``model="ensemble"``."""
        if not hasattr(self.model, "predict_members"):
            raise ValueError(
                f"model {self.model_name!r} gives no uncertainty; fit with model='ensemble' "
                f"(choices: {list(MODEL_NAMES)})"
            )
        members = _inverse(self.model.predict_members(self.features(plans)), self.transform)
        return members.mean(axis=0), members.std(axis=0)

    def plans_per_second(self, n: int = 10000, *, repeats: int = 5, seed: int = 0) -> float:
        """Featurize + predict throughput on ``n`` random bit arrays (median of ``repeats`` timed runs)."""
        rng = np.random.default_rng(seed)
        choices = np.asarray(self.featurizer.count_bits)
        arr = choices[rng.integers(0, len(choices), size=(n, len(self.featurizer.layer_names)))]
        self.predict(arr[: min(n, 64)])  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            self.predict(arr)
            times.append(time.perf_counter() - t0)
        return n / statistics.median(times)

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the predictor (a pickle, signed with this installation's key: see :meth:`load`); refuses to
        replace an existing file unless ``overwrite``."""
        import hashlib
        import hmac
        import pickle

        from workbench.paths import signing_key

        path = Path(path)
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = pickle.dumps({"format": _FORMAT, "version": _FORMAT_VERSION, "predictor": self})
        digest = hmac.new(signing_key(), payload, hashlib.sha256).digest()
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(_SIGNED_MAGIC + digest + payload)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> AccuracyPredictor:
        """Read a predictor written by :meth:`save` on this installation. A fitted predictor (scikit-learn
        trees, a torch MLP) is stored as a pickle, which could run code; so the file carries an HMAC-SHA256 of
        its content under this installation's secret key (:func:`workbench.paths.signing_key`) and is
        unpickled only when it matches. A file written elsewhere, edited, truncated, or in the old unsigned
        joblib format is refused before any of it is unpickled: rebuild it here (``python -m workbench
        predictor --save``)."""
        import hashlib
        import hmac
        import pickle

        from workbench.paths import data_dir, signing_key

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"predictor file {path} does not exist")
        blob = path.read_bytes()
        head = len(_SIGNED_MAGIC)
        if not blob.startswith(_SIGNED_MAGIC) or len(blob) < head + 32:
            raise ValueError(
                f"{path} is not a signed workbench predictor file (unsigned or old joblib files are pickles and "
                "are never loaded); rebuild it with `python -m workbench predictor --save ...`"
            )
        digest, payload = blob[head : head + 32], blob[head + 32 :]
        if not hmac.compare_digest(digest, hmac.new(signing_key(), payload, hashlib.sha256).digest()):
            raise ValueError(
                f"predictor file {path} fails its signature check: it was edited, truncated, or written by "
                f"another installation (key {data_dir() / '.signing-key'}); it is not unpickled. Rebuild it here"
            )
        data = pickle.loads(payload)  # signed by this installation's key just above  # noqa: S301
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise ValueError(f"{path} is not a workbench predictor file")
        return data["predictor"]


# ============================================================================================ evaluation


def _min_plans_for_folds(k: int) -> int:
    return max(2 * k, math.ceil(MIN_FIT_PLANS * k / (k - 1)))


def evaluate_predictors(
    dataset: PlanDataset,
    featurizer: PlanFeaturizer,
    models: Sequence[str] = ("ridge", "mlp", "gbt", "ensemble"),
    *,
    k: int = 5,
    seed: int = 0,
    target: str = "acc_drop",
    transform: str = "signed_log1p",
    throughput_n: int = 10000,
    model_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
    track: bool = False,
) -> pd.DataFrame:
    """K-fold cross-validation over held-out plans, one row per model: mean (and std over folds) of Spearman,
    Kendall and MAE, the Spearman of all out-of-fold predictions pooled, per-fold n_train / n_test, fit
    seconds and plans_per_second (of the last fold's predictor). ``df.attrs["folds"]`` holds the per-fold
    rows and ``df.attrs["predictions"]`` the out-of-fold predictions (plan_id, model, fold, y_true, y_pred).
    ``track`` logs the table, the folds and ``<model>.spearman`` / ``kendall`` / ``mae`` /
    ``plans_per_second`` to an MLflow run of stage "predictor"."""
    from scipy import stats
    from sklearn.model_selection import KFold

    from workbench import tracking

    unknown = [m for m in models if m not in _MODELS]
    if unknown or not models:
        raise ValueError(f"unknown predictor model(s) {unknown}; choose from {list(MODEL_NAMES)}")
    if not isinstance(k, int) or k < 2:
        raise ValueError(f"k must be an int >= 2 folds, got {k!r}")
    _check_transform(transform)
    n = len(dataset)
    need = _min_plans_for_folds(k)
    if n < need:
        raise ValueError(
            f"{k}-fold evaluation needs at least {need} plans ({MIN_FIT_PLANS} to fit per fold), got {n}"
        )
    y = dataset.target(target)
    folds = list(KFold(n_splits=k, shuffle=True, random_state=seed).split(np.arange(n)))
    fold_rows: list[dict[str, Any]] = []
    pred_rows: list[pd.DataFrame] = []
    summary: list[dict[str, Any]] = []
    for name in models:
        kwargs = dict((model_kwargs or {}).get(name, {}))
        oof = np.full(n, np.nan)
        last: AccuracyPredictor | None = None
        for f, (tr, te) in enumerate(folds):
            t0 = time.perf_counter()
            pred = AccuracyPredictor.fit(
                dataset.subset(tr),
                featurizer,
                model=name,
                target=target,
                transform=transform,
                seed=seed,
                **kwargs,
            )
            fit_s = time.perf_counter() - t0
            p = pred.predict(dataset.subset(te))
            oof[te] = p
            last = pred
            ok = np.isfinite(y[te])  # plans without a finite target are not scored (fit drops them too)
            fold_rows.append(
                {
                    "model": name,
                    "fold": f,
                    "spearman": float(stats.spearmanr(y[te][ok], p[ok]).statistic),
                    "kendall": float(stats.kendalltau(y[te][ok], p[ok]).statistic),
                    "mae": float(np.mean(np.abs(y[te][ok] - p[ok]))),
                    "n_train": int(np.isfinite(y[tr]).sum()),
                    "n_test": int(ok.sum()),
                    "fit_seconds": fit_s,
                }
            )
            pred_rows.append(
                pd.DataFrame(
                    {
                        "plan_id": dataset.frame["plan_id"].to_numpy()[te],
                        "model": name,
                        "fold": f,
                        "y_true": y[te],
                        "y_pred": p,
                    }  # fmt: skip
                )
            )
        per = pd.DataFrame([r for r in fold_rows if r["model"] == name])
        summary.append(
            {
                "model": name,
                "spearman": per["spearman"].mean(),
                "spearman_std": per["spearman"].std(ddof=0),
                "kendall": per["kendall"].mean(),
                "kendall_std": per["kendall"].std(ddof=0),
                "mae": per["mae"].mean(),
                "mae_std": per["mae"].std(ddof=0),
                "spearman_pooled": float(stats.spearmanr(y[np.isfinite(y)], oof[np.isfinite(y)]).statistic),
                "n_train": int(np.isfinite(y).sum()) - round(per["n_test"].mean()),  # mean fold sizes
                "n_test": round(per["n_test"].mean()),
                "k": k,
                "fit_seconds": per["fit_seconds"].mean(),
                "plans_per_second": last.plans_per_second(throughput_n) if last is not None else math.nan,
            }
        )
    table = pd.DataFrame(summary)
    table.attrs["folds"] = pd.DataFrame(fold_rows)
    table.attrs["predictions"] = pd.concat(pred_rows, ignore_index=True)
    if track:
        params = {"k": k, "seed": seed, "target": target, "transform": transform, "models": list(models),
                  "n_plans": n, "dataset": dataset.info.get("key")}  # fmt: skip
        with tracking.start_run("predictor", run_name="predictor-eval", params=params) as run:
            for row in summary:
                run.log_metrics(
                    {
                        f"{row['model']}.{m}": row[m]
                        for m in ("spearman", "kendall", "mae", "plans_per_second")
                    }
                )
            run.log_dataframe(table, "predictor_eval")
            run.log_dataframe(table.attrs["folds"], "predictor_folds")
    return table
