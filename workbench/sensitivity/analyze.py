"""The entry point :func:`analyze_sensitivity`: check the task and data, load the cached result or compute it
(probes, then the other metrics, then the tables), save it, and log it to MLflow on request."""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, replace
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from workbench._common.threads import torch_threads
from workbench.devices import on_device
from workbench.sensitivity.batches import _inputs_batches, _n_samples, _take
from workbench.sensitivity.cache import _cache_key, _cache_path, _load_cache
from workbench.sensitivity.config import SensitivityConfig
from workbench.sensitivity.probes import SensitivityContext
from workbench.sensitivity.registry import METRICS, MetricOutput, OutputMetric, get_metric
from workbench.sensitivity.result import SensitivityResult
from workbench.sensitivity.schema import COST_BENEFIT_COLUMNS
from workbench.sensitivity.tables import _assemble, cost_benefit_table, rank_agreement
from workbench.tasks.task import TaskLike, check_task


def _compute(
    task: TaskLike, config: SensitivityConfig, calib: list[tuple[Any, Tensor | None]]
) -> SensitivityResult:
    t0 = time.perf_counter()
    ctx = SensitivityContext(task, config, calib=calib)
    metrics = [get_metric(name) for name in config.metrics]
    output_metrics = [m for m in metrics if isinstance(m, OutputMetric)]
    others = [m for m in metrics if not isinstance(m, OutputMetric)]
    out = MetricOutput()
    timings: dict[str, float] = {"setup": time.perf_counter() - t0}
    if output_metrics:
        t = time.perf_counter()
        out.extend(ctx.run_probes(output_metrics))
        timings["probes"] = time.perf_counter() - t
    for m in others:
        t = time.perf_counter()
        out.extend(m.compute(ctx))
        timings[m.name] = time.perf_counter() - t
    table, layers, channels = _assemble(ctx, out)
    result = SensitivityResult(table=table, layers=layers, channels=channels)
    cost = pd.DataFrame(columns=COST_BENEFIT_COLUMNS)
    if config.cost_metric is not None:
        gran = "per_channel" if "per_channel" in config.granularities else config.granularities[0]
        cost = cost_benefit_table(
            result,
            metric=config.cost_metric,
            reference_bits=config.reference_bits,
            granularity=gran,
            base_spec=config.base_spec,
        )
    timings["total"] = time.perf_counter() - t0
    info: dict[str, Any] = {
        "task": task.name,
        "device": str(ctx.device),
        "config": asdict(config),
        "calib_samples": _n_samples(calib),
        "calib_batches": len(calib),
        "n_probes": len(ctx.probes()) if output_metrics else 0,
        "folded_bn": [list(p) for p in ctx.folded_bn],
        "timings_s": timings,
        **_task_metric_info(task),
    }
    if "val" in ctx._batches:
        info["val_samples"] = _n_samples(ctx.batches("val"))
        val_targets = ctx.targets("val")
        if val_targets is not None:
            info["fp32_val_accuracy"] = float(
                (ctx.reference("val").argmax(dim=1) == val_targets).double().mean()
            )
    if ctx._hutchinson is not None:
        info["hutchinson_converged"] = dict(ctx._hutchinson.converged)
    return replace(result, cost_benefit=cost, info=info)


def _task_metric_info(task: TaskLike) -> dict[str, Any]:
    """What the task scores: ``metric_name`` (its :attr:`~workbench.tasks.Task.metric_name`: "accuracy",
    "cosine", an eval_fn's name, ...) and ``output_key`` (the chosen output tensor; None: the primary one)."""
    return {"metric_name": task.metric_name, "output_key": task.output_key}


def _track(result: SensitivityResult, task: TaskLike, config: SensitivityConfig) -> str | None:
    from workbench import tracking

    nested = isinstance(tracking.active_run(), tracking.Run)
    name = result.info.get("task", "model")
    with tracking.start_run(
        "sensitivity",
        run_name=f"sensitivity-{name}",
        params={"task": name, **asdict(config)},
        tags={"workbench.source": result.info.get("source", "computed")},
        nested=nested,
    ) as run:
        run.log_dataframe(result.table, "sensitivity")
        run.log_dataframe(result.layers, "sensitivity_layers")
        if not result.channels.empty:
            run.log_dataframe(result.channels, "sensitivity_channels")
        if not result.cost_benefit.empty:
            run.log_dataframe(result.cost_benefit, "cost_benefit")
        metrics = {f"time_{k}_s": v for k, v in result.info.get("timings_s", {}).items()}
        for a, b in ((("omega", 4), ("acc_drop", 4)), (("omega", 4), ("output_mse", 4))):
            try:
                agree = rank_agreement(result, a, b)
            except ValueError:
                continue
            key = f"{a[0]}{a[1]}_vs_{b[0]}{b[1]}"
            metrics[f"spearman_{key}"] = agree["spearman"]
            metrics[f"kendall_{key}"] = agree["kendall"]
        run.log_metrics({k: v for k, v in metrics.items() if not (isinstance(v, float) and math.isnan(v))})
        return getattr(run, "run_id", None)


def analyze_sensitivity(
    task: TaskLike,
    config: SensitivityConfig | None = None,
    *,
    cache: bool = True,
    track: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = None,
) -> SensitivityResult:
    """Sensitivity tables of ``task.model`` (a :class:`workbench.tasks.Task`) under ``config``.

    Deterministic for a given seed. With ``cache`` the result is stored under
    ``data/cache/sensitivity/<key>.json`` (or ``cache_dir``), the key hashing the model's state_dict, the config,
    the metric classes and the calibration data; a second call loads it (``info["source"] == "cache"``). The
    file is plain JSON with its key and the sha256 of its content: a truncated, edited or foreign file (or an old
    ``<key>.pkl`` pickle, never unpickled) is named in a :class:`SensitivityCacheWarning`, recomputed and replaced.
    ``track`` logs the tables (and timings, rank agreement) to an MLflow run of stage "sensitivity".
    The task's model is never modified. Every output-based measurement uses ``task.output_key``'s output (None:
    the primary output); ``info["metric_name"]`` and ``info["output_key"]`` record the task's metric and output.

    ``device``: where the analysis runs (``cpu``, ``cuda``, ``cuda:N``; None: where ``task.model`` is); the
    model is copied there, batches follow it. The Hutchinson probe vectors are drawn on the CPU from the seed
    and moved, so every device estimates with the same vectors. The cache key does not depend on the device
    (on purpose: it names the measurement, and devices differ only by float rounding); ``info["device"]``
    says where a result was computed. A device this machine lacks raises
    :class:`workbench.devices.DeviceError` before any work.
    """
    config = config if config is not None else SensitivityConfig()
    if not isinstance(config, SensitivityConfig):
        raise ValueError(f"config must be a SensitivityConfig, got {type(config).__name__}")
    for name in config.metrics:  # a metric may have been unregistered since the config was built
        get_metric(name)
    task = on_device(check_task(task), device)
    calib = _inputs_batches(
        _take(task.calib_loader, config.calib_batches), "sensitivity analysis (calibration data)"
    )
    if any(y is None for _, y in calib):
        needy = [name for name in config.metrics if METRICS[name].needs_labels]
        if needy:
            free = tuple(n for n in config.metrics if not METRICS[n].needs_labels) or (
                "output_mse",
                "output_kl",
            )
            raise ValueError(
                f"the calibration batches come without targets, but metric(s) {needy} need labels (a loss or an "
                f"accuracy); use label-free metrics only, e.g. SensitivityConfig(metrics={free!r}) (CLI: "
                f"--metrics {' '.join(free)}), or give (inputs, targets) batches"
            )
    key = _cache_key(task, config, calib)
    path = _cache_path(key, cache_dir)
    result: SensitivityResult | None = None
    if cache:
        result = _load_cache(path, key)  # a damaged, edited or foreign file is named in a warning, never used
        if result is not None:
            info = {**result.info, **_task_metric_info(task), "source": "cache", "cache_path": str(path)}
            result = replace(result, info=info)
    if result is None:
        with torch_threads(config.num_threads):
            result = _compute(task, config, calib)
        result = replace(result, info={**result.info, "source": "computed", "cache_key": key})
        if cache:
            result.save(path, overwrite=True)
            result = replace(result, info={**result.info, "cache_path": str(path)})
    if track:
        run_id = _track(result, task, config)
        result = replace(result, info={**result.info, "mlflow_run_id": run_id})
    return result
