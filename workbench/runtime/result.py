"""The results of runtime adaptation: one served batch (:class:`ServeResult`) and an evaluation of dynamic against
static precision (:class:`RuntimeEvaluation`) with the flat tables and metrics read off it."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from workbench.runtime.probe import ProbeResult

ORACLE = "oracle"
"""The policy name of :func:`~workbench.runtime.evaluate_runtime`'s upper-bound row (not a runnable policy)."""
SUMMARY_COLUMNS: tuple[str, ...] = (
    "data",
    "budget_fraction",
    "policy",
    "accuracy",
    "avg_cost",
    "avg_weight_bits",
    "overhead_fraction",
    "overrides",
    "static_accuracy",
    "static_cost",
    "static_map",
    "cost_saving_at_equal_accuracy",
    "note",
)
"""The columns of :meth:`RuntimeEvaluation.summary_table`, in order."""


@dataclass
class ServeResult:
    """One served batch: logits (NaN rows for rejected inputs), chosen rung per input (-1: rejected), the
    rungs each input ran, its cost, rejection reasons, and timings."""

    logits: torch.Tensor
    rung: np.ndarray
    cost: np.ndarray
    runs: list[list[int]]
    errors: dict[int, str]
    inference_s: float
    overhead_s: float

    @property
    def overhead_fraction(self) -> float:
        return self.overhead_s / self.inference_s if self.inference_s > 0 else math.nan


@dataclass
class RuntimeEvaluation:
    """Static vs dynamic precision at several budgets on clean and shifted data (``table``: one row per data,
    budget, method), plus the static maps considered and the probe result."""

    table: pd.DataFrame
    static_maps: pd.DataFrame
    probe: ProbeResult
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def reference_data(self) -> str:
        """``clean`` when it was evaluated, else the first data variant evaluated."""
        data = list(dict.fromkeys(self.static_maps["data"]))
        return "clean" if "clean" in data else data[0]

    def ladder_table(self, data: str | None = None) -> pd.DataFrame:
        """The ladder, cheapest rung first (one row per rung): its ``map``, its KL divergence from FP32 on the
        probe subset (``probe_kl``), its cost as a fraction of the all-8-bit map (``cost_fraction``), its
        MAC-weighted average weight bits (``avg_bits``) and its ``accuracy`` on ``data`` (default
        :attr:`reference_data`)."""
        data = self.reference_data if data is None else data
        rung_maps = self.static_maps[self.static_maps["data"] == data].drop_duplicates("map")
        ladder = pd.DataFrame({"map": self.info["ladder"], "probe_kl": self.probe.ladder_kl}).merge(
            rung_maps[["map", "cost", "avg_bits", "accuracy"]], on="map", how="left"
        )
        ladder.insert(2, "cost_fraction", ladder.pop("cost") / self.info["top_cost"])
        return ladder

    def summary_table(self) -> pd.DataFrame:
        """The columns of :attr:`table` worth reading (:data:`SUMMARY_COLUMNS`, those present), one row per data
        variant, budget and policy."""
        return self.table[[c for c in SUMMARY_COLUMNS if c in self.table.columns]]

    def dynamic_vs_static(self, policies: Sequence[str] | None = None) -> pd.DataFrame:
        """Accuracy of each dynamic run minus the best static map of equal or lower cost, in percentage points
        (rounded to 0.01; positive: dynamic wins): one row per policy and budget fraction, one column per data
        variant. ``policies``: the rows to keep (default: every policy of the table but the oracle)."""
        if policies is None:
            policies = [p for p in dict.fromkeys(self.table["policy"]) if p != ORACLE]
        dynamic = self.table[self.table["policy"].isin(policies)].copy()
        dynamic["dynamic_minus_static_pp"] = 100 * (dynamic["accuracy"] - dynamic["static_accuracy"])
        return dynamic.pivot_table(
            index=["policy", "budget_fraction"], columns="data", values="dynamic_minus_static_pp"
        ).round(2)

    def tables(self) -> dict[str, pd.DataFrame]:
        """The tables a runtime run logs: ``runtime_table`` (:attr:`table`), ``static_maps``, ``probe_table`` (the
        probe engine's) and ``ladder`` (:meth:`ladder_table` on :attr:`reference_data`)."""
        return {
            "runtime_table": self.table,
            "static_maps": self.static_maps,
            "probe_table": self.probe.table,
            "ladder": self.ladder_table(),
        }

    def to_metrics(self) -> dict[str, float]:
        """Flat metrics of every feasible row of :attr:`table`, keyed ``<data>.<policy>.<budget_fraction>.<name>``
        (the oracle row without the budget): ``accuracy``, ``avg_cost_fraction`` (average cost over the
        all-8-bit map's) and, where a static map was compared, ``static_accuracy``."""
        metrics = {}
        for row in self.table.itertuples():
            if row.accuracy != row.accuracy:  # infeasible budget
                continue
            key = f"{row.data}.{row.policy}" + ("" if row.policy == ORACLE else f".{row.budget_fraction:g}")
            metrics[f"{key}.accuracy"] = row.accuracy
            metrics[f"{key}.avg_cost_fraction"] = row.avg_cost / self.info["top_cost"]
            if row.static_accuracy == row.static_accuracy:
                metrics[f"{key}.static_accuracy"] = row.static_accuracy
        return metrics
