"""What :class:`~workbench.ui.explorer.BitWidthExplorer` computes for a plan: its start plan, the predicted
accuracy (or why there is none), the share of the model it quantizes and the ``values`` dict it shows and logs."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from workbench.quant.spec import QuantPlan
from workbench.search.space import SearchSpace
from workbench.ui.explorer_view import _compressed


def default_plan(space: SearchSpace) -> QuantPlan:
    """Uniform 8-bit weights (8-bit activations, or float ones in weight-only spaces; per channel) when every
    unit offers that, else every unit's first choices."""
    if all(8 in u.choices.w_bits and "quantize" in u.choices.methods for u in space.units):
        # 8-bit activations, or activations left in float when every unit offers that (weight-only spaces)
        a = next((b for b in (8, 32) if all(b in u.choices.a_bits for u in space.units)), None)
        gran = "per_channel" if all("per_channel" in u.choices.granularities for u in space.units) else None
        if a is not None and gran is not None:
            return space.uniform_plan(8, a, gran)
    return space.plan_from_params({})


def prediction(predicted: Callable[[QuantPlan], float] | None, plan: QuantPlan) -> tuple[float | None, str]:
    """(predicted accuracy or None, why there is none): no predictor, a plan that prunes or factorises (the
    predictor only knows quantization), or the predictor's error."""
    pred, note = None, ""
    if predicted is None:
        note = "no predictor given"
    elif _compressed(plan):
        note = f"the predictor only knows quantization; {', '.join(_compressed(plan))} prune / factorise"
    else:
        try:
            pred = float(predicted(plan))
        except Exception as e:  # noqa: BLE001 - shown to the user instead of a traceback in a callback
            note = f"predictor failed: {e}"
    return pred, note


def covered_fraction(cost_model: Any, plan: QuantPlan) -> float | None:
    """Share of the model's parameters that ``plan`` quantizes (None when the cost model cannot tell)."""
    model, costs = getattr(cost_model, "model", None), getattr(cost_model, "costs", None)
    if model is None or costs is None:
        return None
    from workbench.quant.spec import summarize

    try:
        return float(summarize(plan, model, costs, bn_pairs=[]).covered_fraction)  # coverage: no folding
    except Exception:  # noqa: BLE001 - an optional figure of the summary
        return None


def plan_values(
    plan: QuantPlan,
    cost_model: Any,
    fp32: Any,
    predicted: Callable[[QuantPlan], float] | None,
    fp32_accuracy: float | None,
    measured: Mapping[str, float],
    source: str,
) -> dict[str, Any]:
    """The explorer's values of ``plan`` (``measured``: plan key -> accuracy measured): predicted and measured accuracy, size, weight bytes, BOPs (each also
    as a fraction of ``fp32``, the FP32 model's cost), latency, average bits, coverage, plan key and source."""
    cost = cost_model(plan)
    pred, note = prediction(predicted, plan)
    key = SearchSpace.plan_key(plan)
    return {
        "predicted_accuracy": pred,
        "predicted_note": note,
        "predicted_drop_pp": None
        if pred is None or fp32_accuracy is None
        else 100.0 * (fp32_accuracy - pred),
        "measured_accuracy": measured.get(key),
        "fp32_accuracy": fp32_accuracy,
        "size_bytes": int(cost.size_bytes),
        "size_fraction": cost.size_bytes / fp32.size_bytes if fp32.size_bytes else math.nan,
        "weight_bytes": int(cost.weight_bytes),
        "weight_fraction": cost.weight_bytes / fp32.weight_bytes if fp32.weight_bytes else math.nan,
        "bops": int(cost.bops),
        "bops_fraction": cost.bops / fp32.bops if fp32.bops else math.nan,
        "latency_ms": float(cost.latency_ms),
        "latency_source": getattr(cost_model, "latency_source", "unknown"),
        "avg_weight_bits": float(cost.avg_weight_bits),
        "avg_act_bits": float(cost.avg_act_bits),
        "covered_fraction": covered_fraction(cost_model, plan),
        "plan_key": key,
        "source": source,
    }


def log_values(
    plan: QuantPlan,
    values: Mapping[str, Any],
    params: Mapping[str, Any],
    *,
    run_name: str | None = None,
    enabled: bool | None = None,
) -> str | None:
    """Log ``plan``, its numeric ``values`` (metrics, and all of them as JSON) and ``params`` to MLflow (stage
    ``explorer``); the run id, or None when tracking is disabled (``enabled=False`` or ``WORKBENCH_TRACKING=0``)."""
    from workbench import tracking

    with tracking.start_run(
        "explorer", run_name=run_name or "explorer", params=dict(params), enabled=enabled
    ) as run:
        run.log_plan(plan, "plan")
        run.log_metrics(
            {k: x for k, x in values.items() if isinstance(x, (int, float)) and not isinstance(x, bool)}
        )
        run.log_json(dict(values), "explorer_values")
    return run.run_id


__all__ = ["covered_fraction", "default_plan", "log_values", "plan_values", "prediction"]
