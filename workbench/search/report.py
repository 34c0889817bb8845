"""A finished study as a :class:`~workbench.search.result.SearchResult`, and how it is logged with the study's
MLflow run."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any

from workbench.quant.spec import QuantPlan
from workbench.search.config import SearchConfig
from workbench.search.context import SearchContext
from workbench.search.objectives import PlanEvaluator, front_hypervolume
from workbench.search.result import SearchResult, compute_front, study_frame


def finish(
    ctx: SearchContext, study: Any, name: str, storage_url: str, t0: float, *, run_id: str | None
) -> SearchResult:
    """The result of a finished study: its trials and front (measured again on ``final_split``), the front's
    hypervolume, real evaluations and what the numbers mean (``info``)."""
    cfg = ctx.config
    trials = study_frame(study)
    front = compute_front(trials, cfg.objectives)
    if cfg.accuracy == "multifidelity" and not front.empty:
        front = front[front["accuracy_source"] == "measured"].reset_index(drop=True)
    final_evals = 0
    fp32_final = None
    if cfg.final_split and not front.empty:
        final = PlanEvaluator(
            ctx.task, split=cfg.final_split, cache=ctx.evaluator.cache, seed=cfg.seed, ptq=cfg.ptq
        )
        fp32_final = final.fp32_accuracy
        accs = []
        for p in front["plan"]:
            acc, _ = final(QuantPlan.from_json(p))
            accs.append(acc)
        final_evals = final.real_evaluations
        front = front.assign(test_accuracy=accs)
    hv = front_hypervolume(front, fp32_accuracy=ctx.evaluator.fp32_accuracy,
                           fp32_weight_bytes=ctx.fp32_weight_bytes, ref=cfg.hv_ref)  # fmt: skip
    real = int(trials["real_eval"].sum()) if not trials.empty else 0
    info = _info(ctx)
    total = time.perf_counter() - t0
    rest = total - sum(ctx.stage_seconds.values())
    info["stage_seconds"] = {**ctx.stage_seconds, "trials_and_final_split": rest}
    return SearchResult(
        study_name=name,
        storage=storage_url,
        config=cfg,
        trials=trials,
        front=front,
        hypervolume=hv,
        real_evaluations=real,
        final_evaluations=final_evals,
        fp32_accuracy=ctx.evaluator.fp32_accuracy,
        fp32_final_accuracy=fp32_final,
        fp32_weight_bytes=ctx.fp32_weight_bytes,
        fp32_size_bytes=ctx.cost_model.fp32_cost.size_bytes,
        seconds=time.perf_counter() - t0,
        run_id=run_id,
        info=info,
    )


def _info(ctx: SearchContext) -> dict[str, Any]:
    """What the result's numbers mean: latency source, the space's size, the metric, the predictor."""
    info = {
        "latency_source": ctx.cost_model.latency_source,
        "fp32_latency_ms": ctx.cost_model.fp32_latency_ms,
        "space_units": len(ctx.space.units),
        # what the "accuracy" columns hold: the task's metric (accuracy, cosine, an eval_fn's name, ...)
        "metric_name": str(ctx.task.metric_name),
        "space_log10_plans": round(math.log10(ctx.space.cardinality()), 3)
        if math.isfinite(ctx.space.cardinality())
        else None,
    }
    if ctx.predicted is not None:
        info["predictor"] = getattr(ctx.predicted.predictor, "model_name", None)
        info["predictor_dataset_plans"] = ctx.predicted.predictor.info.get("dataset_plans")
    return info


def track_result(
    run: Any, result: SearchResult, figures: Callable[[SearchResult], Mapping[str, Any]] | None
) -> None:
    """Log the result with the study's MLflow run: metrics, trials and front tables, the result as JSON, the
    first ten front plans and the figures ``figures`` makes of it."""
    if not getattr(run, "enabled", False):
        return
    run.log_metrics({"hypervolume": result.hypervolume, "real_evaluations": result.real_evaluations,
                     "final_evaluations": result.final_evaluations, "trials": len(result.trials),
                     "front_size": len(result.front), "seconds": result.seconds})  # fmt: skip
    run.log_dataframe(result.trials.drop(columns=["plan"]), "trials")
    run.log_dataframe(result.front.drop(columns=["plan"]), "front")
    run.log_json(result.to_dict(), "search_result")
    for i, plan in enumerate(result.plans()[:10]):
        run.log_plan(plan, f"front_{i:02d}")
    for fig_name, fig in (figures(result) if figures is not None else {}).items():
        run.log_figure(fig, fig_name)


def flat_params(config: SearchConfig) -> dict[str, Any]:
    """The config as flat MLflow parameters (the space's main fields as ``space.*``)."""
    d = config.to_dict()
    d.pop("space")
    d["space.w_bits"] = list(config.space.w_bits)
    d["space.a_bits"] = list(config.space.a_bits)
    d["space.granularities"] = list(config.space.granularities)
    d["space.methods"] = list(config.space.methods)
    return d
