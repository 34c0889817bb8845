"""The inputs of a QAT run: what it reads from the task, plan resolution and plans from a search."""

from __future__ import annotations

import math
import os
from typing import Any

import pandas as pd
from torch import nn

from workbench.qat.config import QATError, _is_int
from workbench.quant import PlanError, QuantPlan
from workbench.search.result import rank_front


def plans_from_search(
    result: Any, *, k: int = 1, max_weight_fraction: float | None = None, column: str = "accuracy"
) -> dict[str, QuantPlan]:
    """The ``k`` best front plans of a search result (:class:`workbench.search.SearchResult`), as
    :meth:`~workbench.search.SearchResult.top_plans` ranks them: highest ``column`` first (ties: fewer weight
    bytes), within ``max_weight_fraction`` of the FP32 weight bytes.

    Keys are labels such as ``"ilp weight_size<=9.5% #3 (2.93 bits)"``.
    """
    if not _is_int(k) or k < 1:
        raise QATError(f"k={k!r} must be an int >= 1")
    front = getattr(result, "front", None)
    if not isinstance(front, pd.DataFrame) or "plan" not in front.columns:
        raise QATError(f"result must be a search result with a front of plans, got {type(result).__name__}")
    if column not in front.columns:
        raise QATError(f"column={column!r} is not in the front; columns: {list(front.columns)}")
    # the ranking of SearchResult.top_plans, on any object carrying a search's front
    df = rank_front(
        front, result.fp32_weight_bytes, k, max_weight_fraction=max_weight_fraction, column=column
    )
    if df.empty:
        smallest = float(front["weight_bytes"].min() / result.fp32_weight_bytes) if len(front) else math.nan
        raise QATError(
            f"no front plan within max_weight_fraction={max_weight_fraction!r} (the smallest has {smallest:.4f}); "
            "raise the fraction or search with a tighter budget"
        )
    out = {}
    for _, row in df.iterrows():
        label = (
            f"{row.get('label', 'plan')} #{row.get('trial', len(out))} ({row['avg_weight_bits']:.2f} bits)"
        )
        out[label] = QuantPlan.from_json(row["plan"])
    return out


TASK_NEEDS: tuple[str, ...] = (
    "model",
    "calib_loader",
    "val_loader",
    "test_loader",
    "evaluate",
    "example_input",
)
"""What QAT reads from a task besides its ``train_loader`` (checked by :func:`~workbench.tasks.check_task`)."""


def _resolve_plan(plan: Any, model: nn.Module) -> QuantPlan:
    from workbench.pipeline import resolve_plan

    if not isinstance(plan, (QuantPlan, str, os.PathLike)):
        raise PlanError(
            f"plan must be a QuantPlan, a plan JSON path or a shorthand such as 'uniform:w4a8', "
            f"got {type(plan).__name__}"
        )
    plan = resolve_plan(plan, model)
    plan.validate(model)
    return plan
