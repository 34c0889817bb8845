"""Objectives of a search: hardware cost of a plan (size, BOPs, latency), its accuracy (measured, predicted),
a cache of measured evaluations shared by every trial and worker, Pareto fronts and hypervolume.

Latency (and energy) come from a hardware precision profile when one is given (:mod:`workbench.hardware`: the
measured profile of this CPU, or a reference profile); without one, latency is a BOPs proxy: the FP32 model's
measured latency per sample on this machine, scaled by the plan's BOPs over FP32 BOPs. ``CostModel.latency_source``
says which.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import statistics
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from workbench.devices import model_device
from workbench.quant.inputs import call_model, expand_inputs, input_tensors, move_inputs
from workbench.quant.introspect import LayerCost, layer_costs, quantizable_layers
from workbench.quant.spec import QuantPlan, summarize
from workbench.quant.swap import conv_bn_pairs, quantize_model

OBJECTIVES: dict[str, str] = {
    "accuracy": "maximize",
    "size": "minimize",
    "weight_size": "minimize",
    "bops": "minimize",
    "latency": "minimize",
    "energy": "minimize",
}
ACCURACY_MODES: tuple[str, ...] = ("measured", "predicted", "multifidelity")


# ============================================================================================ cost model


@dataclass(frozen=True)
class PlanCost:
    """Hardware cost of one plan (per input sample where it matters)."""

    size_bytes: int
    weight_bytes: int
    bops: int
    latency_ms: float
    avg_weight_bits: float
    avg_act_bits: float
    energy_mj: float = math.nan

    def to_dict(self) -> dict[str, Any]:
        return {
            "energy_mj": None if math.isnan(self.energy_mj) else self.energy_mj,
            "size_bytes": self.size_bytes,
            "weight_bytes": self.weight_bytes,
            "bops": self.bops,
            "latency_ms": self.latency_ms,
            "avg_weight_bits": self.avg_weight_bits,
            "avg_act_bits": self.avg_act_bits,
        }


def measure_fp32_latency_ms(
    model: nn.Module, example_input: Any, *, batch: int = 32, repeats: int = 7
) -> float:
    """Median wall time per sample (ms) of the FP32 model on this machine, on the model's device (warm-up
    first; a CUDA device is synchronised around each timed run). ``example_input``: a tensor, a tuple or a dict
    of tensors; its first sample is repeated ``batch`` times."""
    device = model_device(model)
    x = move_inputs(expand_inputs(example_input, batch), device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    model = model.eval()
    times = []
    with torch.inference_mode():
        call_model(model, x)
        for _ in range(repeats):
            sync()
            t0 = time.perf_counter()
            call_model(model, x)
            sync()
            times.append(time.perf_counter() - t0)
    return 1000.0 * statistics.median(times) / batch


class CostModel:
    """Size, BOPs, latency and energy of plans for one model, from per-layer costs computed once.

    With ``profile`` (a :class:`~workbench.hardware.PrecisionProfile` or its name / path) a plan's latency and
    energy per sample come from the hardware cost estimator at ``batch_size`` (default: the profile's). Without
    one, latency is ``fp32_latency_ms * bops / fp32_bops`` with ``fp32_latency_ms`` the FP32 model's per-sample
    latency (measured on this machine when omitted) and energy is NaN.
    """

    def __init__(
        self,
        model: nn.Module,
        example_input: torch.Tensor,
        *,
        fp32_latency_ms: float | None = None,
        profile: Any = None,
        batch_size: int | None = None,
    ) -> None:
        self.model = model
        self.costs: dict[str, LayerCost] = layer_costs(model, example_input)
        self.layers = quantizable_layers(model)
        self._pairs = conv_bn_pairs(model)
        self.fp32 = summarize(QuantPlan({}), model, self.costs, bn_pairs=[])
        self.estimator = None
        if profile is not None:
            from workbench.hardware.estimate import CostEstimator

            self.estimator = CostEstimator(model, example_input, profile, batch_size=batch_size)
        if fp32_latency_ms is not None:
            self.fp32_latency_ms = float(fp32_latency_ms)
        elif self.estimator is not None:
            self.fp32_latency_ms = self.estimator(QuantPlan({})).latency_per_sample_ms
        else:
            self.fp32_latency_ms = measure_fp32_latency_ms(model, example_input)
        self.weight_params = {n: c.weight_params for n, c in self.costs.items()}

    @property
    def latency_source(self) -> str:
        """``profile:<name>`` when latency comes from a hardware profile, else ``bops_proxy``."""
        return f"profile:{self.estimator.profile.name}" if self.estimator is not None else "bops_proxy"

    def __call__(self, plan: QuantPlan) -> PlanCost:
        changed = {
            n
            for n, sp in plan.items()
            if sp.w_bits < 32 or sp.channel_bits is not None or sp.method in ("prune", "lowrank")
        }
        pairs = [p for p in self._pairs if p[0] in changed]
        s = summarize(plan, self.model, self.costs, bn_pairs=pairs)
        if self.estimator is not None:
            est = self.estimator(plan)
            latency = est.latency_per_sample_ms
            energy = est.energy_mj / est.batch_size
        else:
            latency = self.fp32_latency_ms * s.bops / s.fp32_bops if s.fp32_bops else math.nan
            energy = math.nan
        return PlanCost(
            size_bytes=s.size_bytes,
            weight_bytes=s.weight_bytes,
            bops=s.bops,
            latency_ms=latency,
            avg_weight_bits=s.avg_weight_bits,
            avg_act_bits=s.avg_act_bits,
            energy_mj=energy,
        )

    @property
    def fp32_cost(self) -> PlanCost:
        return self(QuantPlan({}))


# ============================================================================================ evaluation cache


def _model_digest(model: nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        buf = io.BytesIO()
        torch.save(v.detach().cpu(), buf)
        h.update(buf.getvalue())
    return h.hexdigest()[:16]


def _data_digest(loader: Any) -> str:
    h = hashlib.sha256()
    for batch in loader:
        for _, t in input_tensors(batch):  # (x, y) tuples, dicts of tensors, nested structures
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def evaluation_prefix(task: Any, split: str, seed: int) -> str:
    """What a measured accuracy depends on besides the plan: the quantization code, the model's weights, the
    task (name, metric, the output it scores), the calibration data and the evaluated split's data, and the observer seed."""
    import workbench.quant
    from workbench.fingerprint import code_fingerprint

    code = code_fingerprint("search-eval-v1", workbench.quant)[:12]
    metric = getattr(task.metric, "__qualname__", type(task.metric).__name__)
    parts = (code, _model_digest(task.model), task.name, metric, _data_digest(task.calib_loader),
             _data_digest(task.loader(split)), split, seed)  # fmt: skip
    output_key = getattr(task, "output_key", None)
    if output_key is not None:  # keys of tasks without one are unchanged (caches stay valid)
        parts = (*parts, f"output_key={output_key!r}")
    return hashlib.sha256("\0".join(map(str, parts)).encode()).hexdigest()[:24]


class EvalCache:
    """Measured accuracies keyed by (model, data split, plan): a table in a SQL database (sqlite file or the
    PostgreSQL server of the study), so every trial and every worker shares each measurement.

    ``url``: an SQLAlchemy URL, or None for an in-memory cache (this process only).
    """

    TABLE = "workbench_eval_cache"
    CLAIMS = "workbench_eval_claims"

    def __init__(self, url: str | None = None) -> None:
        self.url = url
        self._mem: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._engine = None
        if url is not None:
            import sqlalchemy as sa

            kwargs: dict[str, Any] = {}
            if url.startswith("sqlite"):
                kwargs["connect_args"] = {"timeout": 60}
            self._engine = sa.create_engine(url, **kwargs)
            self._meta = sa.MetaData()
            self._table = sa.Table(
                self.TABLE,
                self._meta,
                sa.Column("key", sa.String(96), primary_key=True),
                sa.Column("value", sa.Text, nullable=False),
                sa.Column("created", sa.Float, nullable=False),
            )
            self._claims = sa.Table(
                self.CLAIMS,
                self._meta,
                sa.Column("key", sa.String(200), primary_key=True),
                sa.Column("owner", sa.String(200), nullable=False),
                sa.Column("created", sa.Float, nullable=False),
            )
            self._meta.create_all(self._engine, checkfirst=True)

    def get(self, key: str) -> dict[str, Any] | None:
        if key in self._mem:
            return self._mem[key]
        if self._engine is None:
            return None
        import sqlalchemy as sa

        with self._engine.connect() as conn:
            row = conn.execute(sa.select(self._table.c.value).where(self._table.c.key == key)).first()
        if row is None:
            return None
        value = json.loads(row[0])
        self._mem[key] = value
        return value

    def put(self, key: str, value: Mapping[str, Any]) -> None:
        value = dict(value)
        with self._lock:
            self._mem[key] = value
        if self._engine is None:
            return
        import sqlalchemy as sa

        try:
            with self._engine.begin() as conn:
                conn.execute(
                    sa.insert(self._table).values(key=key, value=json.dumps(value), created=time.time())
                )
        except sa.exc.IntegrityError:  # another worker measured the same plan first: keep theirs
            pass

    def claim(self, key: str, owner: str) -> str:
        """Atomically claim ``key`` for ``owner`` (a unique row in the shared database) and return who holds it:
        ``owner`` when this call won, else the earlier claimant. Without a database every claim is won (one
        process). Search workers claim a plan before measuring it, so two workers never measure one plan."""
        if self._engine is None:
            return owner
        import sqlalchemy as sa

        try:
            with self._engine.begin() as conn:
                conn.execute(sa.insert(self._claims).values(key=key, owner=owner, created=time.time()))
            return owner
        except sa.exc.IntegrityError:
            with self._engine.connect() as conn:
                row = conn.execute(sa.select(self._claims.c.owner).where(self._claims.c.key == key)).first()
            return owner if row is None else str(row[0])

    def __len__(self) -> int:
        if self._engine is None:
            return len(self._mem)
        import sqlalchemy as sa

        with self._engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(self._table)).scalar_one())

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()


class PlanEvaluator:
    """Measures plans' accuracy on a task split (quantize with calibration, evaluate), through a cache.

    ``real_evaluations`` counts measurements this evaluator actually ran (cache hits excluded).
    """

    def __init__(
        self, task: Any, *, split: str = "val", cache: EvalCache | None = None, seed: int = 0
    ) -> None:
        self.task = task
        self.split = split
        self.cache = cache if cache is not None else EvalCache()
        self.seed = seed
        self.real_evaluations = 0
        self._prefix = evaluation_prefix(task, split, seed)
        self._fp32: float | None = None

    @property
    def fp32_accuracy(self) -> float:
        if self._fp32 is None:
            key = f"{self._prefix}:fp32"
            hit = self.cache.get(key)
            if hit is None:
                hit = {"accuracy": float(self.task.evaluate(self.task.model, self.split))}
                self.cache.put(key, hit)
            self._fp32 = float(hit["accuracy"])
        return self._fp32

    def key(self, plan: QuantPlan) -> str:
        text = json.dumps(plan.to_dict(), sort_keys=True, separators=(",", ":"))
        return f"{self._prefix}:{hashlib.sha256(text.encode()).hexdigest()[:40]}"

    def cached(self, plan: QuantPlan) -> float | None:
        hit = self.cache.get(self.key(plan))
        return None if hit is None else float(hit["accuracy"])

    def __call__(self, plan: QuantPlan) -> tuple[float, bool]:
        """(accuracy, cache_hit)."""
        key = self.key(plan)
        hit = self.cache.get(key)
        if hit is not None:
            return float(hit["accuracy"]), True
        qmodel = quantize_model(self.task.model, plan, self.task.calib_loader, seed=self.seed)
        acc = float(self.task.evaluate(qmodel, self.split))
        self.real_evaluations += 1
        self.cache.put(key, {"accuracy": acc})
        return acc, False


class PredictedAccuracy:
    """Accuracy from an :class:`~workbench.predictor.AccuracyPredictor`: ``fp32_accuracy - drop_pp / 100``.

    The predictor was trained on quantization-only plans; plans that prune or factorise are refused.
    """

    def __init__(self, predictor: Any, fp32_accuracy: float) -> None:
        self.predictor = predictor
        self.fp32_accuracy = float(fp32_accuracy)

    def __call__(self, plan: QuantPlan) -> float:
        return float(self.batch([plan])[0])

    def batch(self, plans: Sequence[QuantPlan]) -> np.ndarray:
        for plan in plans:
            bad = [n for n, s in plan.items() if s.method in ("prune", "lowrank")]
            if bad:
                raise ValueError(
                    f"the accuracy predictor only knows quantization; layer(s) {bad} prune or factorise. "
                    "Use accuracy='measured' for spaces with methods prune / lowrank"
                )
        drops = np.asarray(self.predictor.predict(list(plans)), dtype=np.float64)
        return self.fp32_accuracy - drops / 100.0


# ============================================================================================ fronts


def _signs(objectives: Sequence[str]) -> np.ndarray:
    bad = [o for o in objectives if o not in OBJECTIVES]
    if bad:
        raise ValueError(f"unknown objective(s) {bad}; choose from {list(OBJECTIVES)}")
    return np.array([-1.0 if OBJECTIVES[o] == "maximize" else 1.0 for o in objectives])


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


@dataclass
class Objectives:
    """What one trial reports: raw values and the (possibly shaped) values given to the sampler."""

    accuracy: float
    cost: PlanCost
    source: str
    cache_hit: bool = False
    shaped_accuracy: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def value(self, name: str) -> float:
        if name == "accuracy":
            return self.accuracy if self.shaped_accuracy is None else self.shaped_accuracy
        return float(
            {
                "size": self.cost.size_bytes,
                "weight_size": self.cost.weight_bytes,
                "bops": self.cost.bops,
                "latency": self.cost.latency_ms,
            }[name]
        )


def complexity(plan: QuantPlan, layers: Sequence[str]) -> float:
    """Implementation complexity of a plan in [0, 1): distinct specs over layers (one spec everywhere ~ 0)."""
    if not layers:
        return 0.0
    from workbench.quant.spec import FP32

    distinct = {json.dumps(plan.get(n, FP32).to_dict(), sort_keys=True) for n in layers}
    return (len(distinct) - 1) / len(layers)


def similarity(vector: np.ndarray, history: Sequence[np.ndarray]) -> float:
    """1 - the smallest normalised Hamming distance of a plan's choice vector to earlier ones (0 when new)."""
    if not history:
        return 0.0
    h = np.stack(history)
    d = (h != vector[None, :]).mean(axis=1)
    return float(1.0 - d.min())


__all__ = [
    "ACCURACY_MODES",
    "OBJECTIVES",
    "CostModel",
    "EvalCache",
    "HypervolumeRef",
    "Objectives",
    "PlanCost",
    "PlanEvaluator",
    "PredictedAccuracy",
    "complexity",
    "front_hypervolume",
    "hypervolume_2d",
    "measure_fp32_latency_ms",
    "pareto_mask",
    "similarity",
]
