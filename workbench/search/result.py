"""What a search found: :class:`SearchResult` (its trials, front and the ways to pick plans from it) and the front
computed from a study's trials."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from workbench.quant.spec import QuantPlan
from workbench.search.config import SearchConfig
from workbench.search.objectives import pareto_mask


@dataclass
class SearchResult:
    """What a search found. ``trials``: one row per completed trial; ``front``: its non-dominated feasible
    measured plans (accuracy on ``split``, ``test_accuracy`` on ``final_split``)."""

    study_name: str
    storage: str
    config: SearchConfig
    trials: pd.DataFrame
    front: pd.DataFrame
    hypervolume: float
    real_evaluations: int
    final_evaluations: int
    fp32_accuracy: float
    fp32_final_accuracy: float | None
    fp32_weight_bytes: int
    fp32_size_bytes: int
    seconds: float
    run_id: str | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def plans(self) -> list[QuantPlan]:
        return [QuantPlan.from_dict(json.loads(p)) for p in self.front["plan"]]

    def top_plans(
        self,
        k: int | None = None,
        *,
        max_weight_fraction: float | None = None,
        max_avg_weight_bits: float | None = None,
        column: str = "accuracy",
    ) -> pd.DataFrame:
        """The ``k`` best front rows (None: all), best first: highest ``column``, ties broken by fewer weight bytes,
        within a weight-size fraction (of the FP32 weight bytes) and an element-weighted average of weight bits.
        Each row holds its plan as JSON in ``plan`` (:meth:`QuantPlan.from_json`); empty when no plan fits."""
        return rank_front(
            self.front,
            self.fp32_weight_bytes,
            k,
            max_weight_fraction=max_weight_fraction,
            max_avg_weight_bits=max_avg_weight_bits,
            column=column,
        )

    def best(
        self,
        *,
        max_weight_fraction: float | None = None,
        max_avg_weight_bits: float | None = None,
        column: str = "accuracy",
    ) -> pd.Series:
        """The front plan with the highest ``column`` within a weight-size fraction and an element-weighted
        average of weight bits (the first of :meth:`top_plans`)."""
        top = self.top_plans(
            1, max_weight_fraction=max_weight_fraction, max_avg_weight_bits=max_avg_weight_bits, column=column
        )
        if top.empty:
            raise ValueError(
                f"no front plan within max_weight_fraction={max_weight_fraction}, "
                f"max_avg_weight_bits={max_avg_weight_bits}"
            )
        return top.iloc[0]

    def to_dict(self) -> dict[str, Any]:
        front = []
        for _, r in self.front.iterrows():
            front.append(
                {
                    "accuracy": float(r["accuracy"]),
                    "test_accuracy": None if pd.isna(r.get("test_accuracy")) else float(r["test_accuracy"]),
                    "size_bytes": int(r["size_bytes"]),
                    "weight_bytes": int(r["weight_bytes"]),
                    "bops": int(r["bops"]),
                    "latency_ms": float(r["latency_ms"]),
                    "avg_weight_bits": float(r["avg_weight_bits"]),
                    "space_avg_bits": _float_or_none(r.get("space_avg_bits")),
                    "secondary": _float_or_none(r.get("secondary")),
                    "label": r["label"],
                    "trial": int(r["trial"]),
                    "plan": json.loads(r["plan"]),
                }
            )
        return {
            "study": self.study_name,
            "storage": self.storage,
            "strategy": self.config.strategy,
            "accuracy_mode": self.config.accuracy,
            "objectives": list(self.config.objectives),
            "split": self.config.split,
            "final_split": self.config.final_split,
            "fp32_accuracy": self.fp32_accuracy,
            "fp32_final_accuracy": self.fp32_final_accuracy,
            "fp32_weight_bytes": self.fp32_weight_bytes,
            "fp32_size_bytes": self.fp32_size_bytes,
            "front": front,
            "hypervolume": {
                "value": self.hypervolume,
                "reference": {
                    **self.config.hv_ref.to_dict(),
                    "accuracy": self.fp32_accuracy - self.config.hv_ref.max_drop_pp / 100,
                    "weight_bytes": self.config.hv_ref.size_fraction * self.fp32_weight_bytes,
                },
                "axes": ["accuracy (maximise)", "weight_bytes / fp32_weight_bytes (minimise)"],
            },
            "real_evaluations": self.real_evaluations,
            "final_evaluations": self.final_evaluations,
            "trials": len(self.trials),
            "seconds": self.seconds,
            "run_id": self.run_id,
            "info": self.info,
        }


def _float_or_none(value: Any) -> float | None:
    return None if value is None or pd.isna(value) else float(value)


def rank_front(
    front: pd.DataFrame,
    fp32_weight_bytes: float,
    k: int | None = None,
    *,
    max_weight_fraction: float | None = None,
    max_avg_weight_bits: float | None = None,
    column: str = "accuracy",
) -> pd.DataFrame:
    """:meth:`SearchResult.top_plans` on a front table and its FP32 weight bytes (for objects that only carry
    a search's front): the ``k`` best rows (None: all), highest ``column`` first, ties broken by the secondary
    score (minus the output KL to FP32, when measured), then by fewer weight bytes, within
    ``max_weight_fraction`` of ``fp32_weight_bytes`` and ``max_avg_weight_bits`` (averaged over the searched
    layers, ``space_avg_bits``, where the front has it)."""
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        raise ValueError(f"k={k!r} must be None or an int >= 1")
    df = front
    if max_weight_fraction is not None:
        df = df[df["weight_bytes"] <= max_weight_fraction * fp32_weight_bytes]
    if max_avg_weight_bits is not None:
        bits_col = (
            "space_avg_bits"
            if "space_avg_bits" in df.columns and df["space_avg_bits"].notna().all()
            else "avg_weight_bits"
        )
        df = df[df[bits_col] <= max_avg_weight_bits + 1e-9]
    if df.empty:
        return df
    keys = [column, "secondary", "weight_bytes"] if "secondary" in df.columns else [column, "weight_bytes"]
    df = df.assign(secondary=df["secondary"].fillna(-np.inf)) if "secondary" in df.columns else df
    df = df.sort_values(keys, ascending=[False] * (len(keys) - 1) + [True])
    return df if k is None else df.head(k)


def study_frame(study: Any) -> pd.DataFrame:
    """One row per completed trial of ``study`` that carries a plan (the columns of :attr:`SearchResult.trials`)."""
    import optuna

    rows = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        a = t.user_attrs
        if "plan" not in a:
            continue
        rows.append(
            {
                "trial": t.number,
                "label": a.get("label") or f"trial {t.number}",
                "accuracy": a["accuracy"],
                "secondary": math.nan if a.get("secondary") is None else float(a["secondary"]),
                "shaped_accuracy": a.get("shaped_accuracy", a["accuracy"]),
                "accuracy_source": a["accuracy_source"],
                "cache_hit": bool(a.get("cache_hit", False)),
                "real_eval": int(a.get("real_eval", 0)),
                "feasible": bool(a.get("feasible", True)),
                "size_bytes": a["size_bytes"],
                "weight_bytes": a["weight_bytes"],
                "bops": a["bops"],
                "latency_ms": a["latency_ms"],
                "energy_mj": math.nan if a.get("energy_mj") is None else float(a["energy_mj"]),
                "avg_weight_bits": a["avg_weight_bits"],
                "space_avg_bits": float(a.get("space_avg_bits", math.nan)),
                "space_mac_bits": float(a.get("space_mac_bits", math.nan)),
                "avg_act_bits": a["avg_act_bits"],
                "plan_key": a["plan_key"],
                "plan": a["plan"],
                "worker": a.get("worker", 0),
                "duration_s": t.duration.total_seconds() if t.duration else math.nan,
            }
        )
    return pd.DataFrame(rows)


def compute_front(trials: pd.DataFrame, objectives: Sequence[str]) -> pd.DataFrame:
    """Non-dominated feasible trials whose accuracy was measured or predicted (never skipped ones), one row per
    distinct plan, sorted by weight bytes."""
    if trials.empty:
        return trials.copy()
    ok = trials[trials["feasible"] & (trials["accuracy_source"] != "skipped_over_budget")]
    ok = ok.drop_duplicates("plan_key")
    if ok.empty:
        return ok
    col = {"accuracy": "accuracy", "size": "size_bytes", "weight_size": "weight_bytes", "bops": "bops",
           "latency": "latency_ms", "energy": "energy_mj"}  # fmt: skip
    cols = [col[o] for o in objectives]
    if "weight_bytes" not in cols:
        cols.append("weight_bytes")  # the reported front is always (accuracy, weight bytes) plus objectives
    if "secondary" in ok.columns and ok["secondary"].notna().all():
        cols.append("secondary")  # breaks ties of the metric: a larger plan closer to FP32 stays on the front
    dirs = ["maximize" if c in ("accuracy", "secondary") else "minimize" for c in cols]
    mask = pareto_mask(ok[cols].to_numpy(dtype=np.float64), dirs)
    return ok[mask].sort_values(["weight_bytes", "accuracy"], ascending=[True, False]).reset_index(drop=True)
