"""The outcome of a QAT run (:class:`QATResult`), its history columns and the comparison table."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from torch import nn

from workbench.qat.config import QATConfig
from workbench.quant import QuantPlan


@dataclass(frozen=True)
class QATResult:
    """Outcome of :func:`train_qat`. Accuracies are the task metric (``metric_name``: "accuracy" for labelled
    top-1, a fidelity kind, an eval_fn's name) on the test split (``val_*`` on validation); ``drop_*_pp`` are the
    metric loss x 100 (FP32 metric minus metric; accuracy drop in pp for labelled accuracy). ``output_key``: the
    output tensor the losses and the default metric used (None: the primary output).

    ``history``: one row per epoch (``epoch``, ``phase``, ``steps``, ``loss``, ``ce_loss``, ``distill_loss``,
    ``quant_loss``, ``expected_bits``, ``val_accuracy``, ``lr``, ``seconds``); an epoch cut short by
    ``max_steps`` has ``partial=True``. ``final_plan`` is the plan of ``model`` (the learned one with a bit
    penalty). ``step_ms``: median wall time of this run's optimizer steps (None when it took none).
    """

    task: str
    plan: QuantPlan = field(repr=False)
    final_plan: QuantPlan = field(repr=False)
    config: QATConfig = field(repr=False)
    fp32_accuracy: float
    accuracy_before: float
    accuracy_after: float
    val_accuracy_before: float
    val_accuracy_after: float
    avg_weight_bits: float
    input_avg_weight_bits: float
    avg_act_bits: float
    size_bytes: int
    fp32_size_bytes: int
    packed_bytes: int
    packed_path: str | None
    steps: int
    epochs_run: int
    best_epoch: int | None
    stopped_early: bool
    interrupted: bool
    resumed_at_step: int | None
    step_ms: float | None
    seconds: float
    history: pd.DataFrame = field(repr=False)
    run_id: str | None = None
    world_size: int = 1
    metric_name: str = "accuracy"
    output_key: str | int | None = None
    model: nn.Module | None = field(default=None, repr=False, compare=False)

    @property
    def drop_before_pp(self) -> float:
        return 100.0 * (self.fp32_accuracy - self.accuracy_before)

    @property
    def drop_after_pp(self) -> float:
        return 100.0 * (self.fp32_accuracy - self.accuracy_after)

    def to_dict(self) -> dict[str, Any]:
        skip = {"plan", "final_plan", "config", "history", "model"}
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k not in skip}
        d["drop_before_pp"] = self.drop_before_pp
        d["drop_after_pp"] = self.drop_after_pp
        d["config"] = self.config.to_dict()
        d["plan"] = self.plan.to_dict()
        d["final_plan"] = self.final_plan.to_dict()
        d["history"] = json.loads(self.history.to_json(orient="records"))
        return d


HISTORY_COLUMNS = [
    "epoch", "phase", "steps", "loss", "ce_loss", "distill_loss", "quant_loss", "expected_bits",
    "val_accuracy", "lr", "seconds", "partial",
]  # fmt: skip


def qat_table(results: Mapping[str, QATResult]) -> pd.DataFrame:
    """One row per named result: bits, accuracies (FP32, before, after, drops in pp), sizes, steps, time."""
    rows = []
    for name, r in results.items():
        rows.append(
            {
                "name": name,
                "avg_weight_bits": r.avg_weight_bits,
                "fp32_accuracy": r.fp32_accuracy,
                "accuracy_before": r.accuracy_before,
                "accuracy_after": r.accuracy_after,
                "drop_before_pp": r.drop_before_pp,
                "drop_after_pp": r.drop_after_pp,
                "packed_bytes": r.packed_bytes,
                "epochs_run": r.epochs_run,
                "step_ms": r.step_ms,
                "seconds": r.seconds,
            }
        )
    return pd.DataFrame(rows)
