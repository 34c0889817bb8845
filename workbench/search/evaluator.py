"""Accuracy of a plan: measured (:class:`PlanEvaluator`, through the :class:`EvalCache` shared by every trial and
worker, keyed by :func:`evaluation_prefix` and the plan) or predicted (:class:`PredictedAccuracy`)."""

from __future__ import annotations

import hashlib
import io
import json
import threading
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from workbench.quant.inputs import input_tensors
from workbench.quant.spec import QuantPlan
from workbench.quant.swap import quantize_model

if TYPE_CHECKING:
    from workbench.tasks.task import TaskLike


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


def evaluation_prefix(task: TaskLike, split: str, seed: int) -> str:
    """What a measured accuracy depends on besides the plan: the quantization code, the model's weights, the
    task (name, metric, the output it scores), the calibration data and the evaluated split's data, and the observer seed."""
    import workbench.quant
    from workbench._common.hashing import code_fingerprint

    code = code_fingerprint("search-eval-v1", workbench.quant)[:12]
    metric = getattr(task.metric, "__qualname__", type(task.metric).__name__)
    parts = (code, _model_digest(task.model), task.name, metric, _data_digest(task.calib_loader),
             _data_digest(task.loader(split)), split, seed)  # fmt: skip
    output_key = task.output_key
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

    ``real_evaluations`` counts measurements this evaluator actually ran (cache hits excluded). ``ptq``: the
    post-training quantization steps every plan gets (:mod:`workbench.quant.ptq`; part of the cache key).
    ``tie_break``: also measure a continuous secondary score, minus the mean KL divergence of the plan's outputs
    from FP32's on the split (:meth:`secondary`), that ranks plans of equal metric; ``"auto"``: for metrics that
    count (:data:`~workbench.tasks.metrics.DISCRETE_METRICS`: accuracy, top-k agreement), where ties are common.
    """

    def __init__(
        self,
        task: TaskLike,
        *,
        split: str = "val",
        cache: EvalCache | None = None,
        seed: int = 0,
        ptq: Sequence[str] = (),
        tie_break: bool | str = "auto",
    ) -> None:
        from workbench.tasks.metrics import DISCRETE_METRICS

        self.task = task
        if tie_break == "auto":
            tie_break = str(getattr(task, "metric_name", "")) in DISCRETE_METRICS
        if not isinstance(tie_break, bool):
            raise ValueError(f"tie_break={tie_break!r}; choose True, False or 'auto'")
        self.tie_break = tie_break
        self._tie_metric: Any = None
        self.split = split
        self.cache = cache if cache is not None else EvalCache()
        self.seed = seed
        self.real_evaluations = 0
        self.ptq = tuple(ptq)
        self._prefix = evaluation_prefix(task, split, seed)
        if self.ptq:  # keys without PTQ are unchanged (caches stay valid)
            self._prefix = hashlib.sha256(f"{self._prefix}\0ptq={','.join(self.ptq)}".encode()).hexdigest()[
                :24
            ]
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
        qmodel = quantize_model(self.task.model, plan, self.task.calib_loader, seed=self.seed, ptq=self.ptq)
        acc = float(self.task.evaluate(qmodel, self.split))
        self.real_evaluations += 1
        value = {"accuracy": acc}
        if self.tie_break:
            value["secondary"] = self._secondary_of(qmodel)
        self.cache.put(key, value)
        return acc, False

    def secondary(self, plan: QuantPlan) -> float | None:
        """The plan's secondary score (higher is better: minus the mean KL of its outputs from FP32's), measured
        with its metric; None without ``tie_break`` or when the cached measurement predates it."""
        if not self.tie_break:
            return None
        hit = self.cache.get(self.key(plan))
        value = None if hit is None else hit.get("secondary")
        return None if value is None else float(value)

    def _secondary_of(self, qmodel: nn.Module) -> float:
        from workbench.tasks.metrics import fidelity_metric

        if self._tie_metric is None:
            self._tie_metric = fidelity_metric(self.task.model, "neg_kl", output_key=self.task.output_key)
        return float(self._tie_metric(qmodel, self.task.loader(self.split)))


class SaturatedMetricWarning(UserWarning):
    """The FP32 model scores (almost) perfectly on the search's split: plans cannot be ranked by the metric."""


def warn_if_saturated(evaluator: PlanEvaluator, *, split: str) -> None:
    """Warn when the FP32 model's counting metric (accuracy, top-k agreement) is >= 0.999 on ``split``."""
    import warnings

    from workbench.tasks.metrics import DISCRETE_METRICS

    fp32 = evaluator.fp32_accuracy
    name = str(getattr(evaluator.task, "metric_name", ""))
    if name in DISCRETE_METRICS and fp32 >= 0.999:
        warnings.warn(
            f"the FP32 model scores {name} {fp32:.4f} on split {split!r}: no headroom to rank plans by it; ties "
            "are broken by the plans' output KL to FP32, but a fidelity metric (the task metric "
            "fidelity_metric(model, 'cosine') or 'neg_kl') or a larger split ranks them better",
            SaturatedMetricWarning,
            stacklevel=3,
        )


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


__all__ = [
    "EvalCache",
    "PlanEvaluator",
    "PredictedAccuracy",
    "SaturatedMetricWarning",
    "evaluation_prefix",
    "warn_if_saturated",
]
