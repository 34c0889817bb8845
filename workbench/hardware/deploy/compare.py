"""Deployed plans measured against FP32 side by side: latency, accuracy, fidelity (static and dynamic paths)."""

from __future__ import annotations

import copy
import dataclasses
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from torch import nn

from workbench import tracking
from workbench.devices import model_device, resolve_device
from workbench.hardware.deploy.convert import DEFAULT_PROFILE, ENGINES, deploy, resolve_engine
from workbench.hardware.deploy.fidelity import deployment_fidelity, fidelity_notes
from workbench.hardware.dynamic import TASK_NEEDS, compare_linear_deployments
from workbench.hardware.estimate import CostEstimator
from workbench.hardware.profile import PrecisionProfile, load_profile
from workbench.hardware.timing import LatencyStats, cpu_name, time_side_by_side
from workbench.quant.inputs import (
    concat_inputs,
    first_tensor,
    move_inputs,
    take_inputs,
)
from workbench.quant.spec import QuantPlan
from workbench.tasks.task import TaskLike, check_task


@dataclass(frozen=True)
class DeployConfig:
    """Knobs of :func:`measure_deployment` (defaults work on digits)."""

    batch_size: int = 32
    threads: int | None = None
    repeats: int = 7
    warmup: int = 2
    engine: str = "auto"
    strict: bool = False
    max_calib_batches: int | None = 8

    def __post_init__(self) -> None:
        for name in ("batch_size", "repeats"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ValueError(f"threads must be None or an integer >= 1, got {self.threads!r}")
        if self.engine not in ENGINES:
            raise ValueError(f"engine={self.engine!r} is not valid; choose one of {ENGINES}")


@dataclass(frozen=True)
class DeployResult:
    """FP32 and deployed model side by side: latency of one batch and accuracy."""

    fp32_latency_ms: float
    deployed_latency_ms: float
    speedup: float
    fp32_accuracy: float
    accuracy: float
    batch_size: int
    threads: int
    engine: str
    profile: str
    fp32: LatencyStats
    deployed: LatencyStats
    precision_counts: dict[str, int]
    layers: pd.DataFrame
    notes: tuple[str, ...]
    cpu: str
    top1_agreement: float
    estimated_latency_ms: float | None = None
    device: str = "cpu"
    cosine_to_fp32: float = math.nan
    sim_cosine_to_fp32: float = math.nan
    sim_top1_agreement: float = math.nan
    sim_vs_deployed_cosine: float = math.nan
    sim_vs_deployed_top1: float = math.nan
    fidelity_samples: int = 0

    def fidelity(self) -> pd.DataFrame:
        """Simulated and deployed side by side: logit cosine and top-1 agreement with FP32 over
        :attr:`fidelity_samples` inputs, and each one's agreement with the other."""
        return pd.DataFrame(
            [
                {"model": "simulated", "cosine_to_fp32": self.sim_cosine_to_fp32,
                 "top1_agreement": self.sim_top1_agreement, "cosine_to_other": self.sim_vs_deployed_cosine,
                 "top1_to_other": self.sim_vs_deployed_top1},
                {"model": "deployed", "cosine_to_fp32": self.cosine_to_fp32,
                 "top1_agreement": self.top1_agreement, "cosine_to_other": self.sim_vs_deployed_cosine,
                 "top1_to_other": self.sim_vs_deployed_top1},
            ]
        )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return {
            "fp32_latency_ms": self.fp32_latency_ms,
            "deployed_latency_ms": self.deployed_latency_ms,
            "speedup": self.speedup,
            "fp32_accuracy": self.fp32_accuracy,
            "accuracy": self.accuracy,
            "batch_size": self.batch_size,
            "threads": self.threads,
            "engine": self.engine,
            "profile": self.profile,
            "cpu": self.cpu,
            "device": self.device,
            "top1_agreement": self.top1_agreement,
            "cosine_to_fp32": self.cosine_to_fp32,
            "sim_cosine_to_fp32": self.sim_cosine_to_fp32,
            "sim_top1_agreement": self.sim_top1_agreement,
            "sim_vs_deployed_cosine": self.sim_vs_deployed_cosine,
            "sim_vs_deployed_top1": self.sim_vs_deployed_top1,
            "fidelity_samples": self.fidelity_samples,
            "estimated_latency_ms": self.estimated_latency_ms,
            "precision_counts": self.precision_counts,
            "fp32_times": self.fp32.to_dict(),
            "deployed_times": self.deployed.to_dict(),
            "layers": self.layers.to_dict(orient="records"),
            "notes": list(self.notes),
        }

    def to_metrics(self) -> dict[str, float]:
        """The numeric items of :meth:`to_dict` (latencies, speedup, accuracies, batch size, threads, top-1
        agreement, the estimate when there is one): the metrics of a deploy run."""
        return {
            k: v for k, v in self.to_dict().items() if isinstance(v, int | float) and not isinstance(v, bool)
        }

    def tables(self) -> dict[str, pd.DataFrame]:
        """The per-layer table of the deployment, as a deploy run logs it (``deployed_layers``)."""
        return {"deployed_layers": self.layers, "deploy_fidelity": self.fidelity()}


def measure_deployment(
    model: nn.Module,
    plan: QuantPlan,
    calib: Any,
    *,
    example_input: Any,
    evaluate: Callable[[nn.Module], float] | None = None,
    profile: PrecisionProfile | str = DEFAULT_PROFILE,
    config: DeployConfig | None = None,
    device: str | torch.device | None = None,
    track: bool | None = None,
    name: str | None = None,
    plan_name: str | None = None,
    data: Any | None = None,
) -> DeployResult:
    """Deploy ``plan`` and measure it against the FP32 model (eager, eval mode) in one run, interleaved:
    median latency of a batch of ``config.batch_size`` samples (from ``example_input``), ``evaluate(model)``
    (accuracy; NaN without ``evaluate``) of both, and the fidelity to FP32 of the deployed model and of the
    plan's simulation side by side (logit cosine, top-1 agreement, and simulated vs deployed) on ``data``: a
    loader of ``(inputs, targets)`` batches or a tensor, the whole split ``evaluate`` scores (None: the timed
    batch only, with a note). A simulated-vs-deployed cosine below :data:`SIM_COSINE_MIN` adds a note and warns
    (:class:`SimulationMismatchWarning`).

    ``device``: where both models run and are timed (None: where ``model`` is). int8 deployment is CPU-only:
    on another device a plan with integer layers raises :class:`workbench.devices.DeviceError` before anything
    is converted or timed (see :func:`deploy`); a bf16 / fp32 plan runs there, timed with CUDA synchronised.

    ``track``: log an MLflow run of stage ``"deploy"`` (None: unless ``WORKBENCH_TRACKING=0``; the run
    ``workbench deploy`` logs on static kernels), named ``deploy-<name>`` (``name``: the model's, default its
    class name), with ``plan_name`` (e.g. the plan's file or shorthand) as the ``plan`` param, the plan, the
    result's metrics (:meth:`DeployResult.to_metrics`) and its ``deployed_layers`` table.
    """
    cfg = config or DeployConfig()
    dev = model_device(model) if device is None else resolve_device(device)
    deployed = deploy(
        model,
        plan,
        calib,
        profile=profile,
        strict=cfg.strict,
        engine=cfg.engine,
        max_calib_batches=cfg.max_calib_batches,
        device=dev,
    )
    fp32 = copy.deepcopy(model).to(dev).eval()
    x = move_inputs(_batch(example_input, cfg.batch_size), dev)
    cfg = dataclasses.replace(cfg, engine=deployed.engine)  # "auto" resolved: time and score under it
    stats, fp32_acc, acc = _side_by_side(fp32, deployed.module, x, cfg, evaluate)
    fid = deployment_fidelity(
        fp32, deployed.simulated, deployed.module, x if data is None else data, cfg.engine
    )
    notes = list(deployed.notes) + fidelity_notes(fid, one_batch=data is None)
    threads = cfg.threads or torch.get_num_threads()
    prof = load_profile(profile)
    est = _estimated_latency_ms(model, example_input, prof, plan, deployed, cfg.batch_size)
    result = DeployResult(
        fp32_latency_ms=stats["fp32"].median_ms,
        deployed_latency_ms=stats["deployed"].median_ms,
        speedup=stats["fp32"].median_ms / stats["deployed"].median_ms,
        fp32_accuracy=fp32_acc,
        accuracy=acc,
        batch_size=cfg.batch_size,
        threads=threads,
        engine=cfg.engine,
        profile=prof.name,
        fp32=stats["fp32"],
        deployed=stats["deployed"],
        precision_counts=deployed.precision_counts(),
        layers=deployed.table(),
        notes=tuple(notes),
        cpu=cpu_name(),
        estimated_latency_ms=est,
        device=str(dev),
        **fid,
    )
    labels = {"model": name or type(model).__name__, "plan": plan_name}
    _log_deployment(result, plan, labels, profile if isinstance(profile, str) else prof.name, cfg, track)
    return result


def _side_by_side(
    fp32: nn.Module,
    deployed: nn.Module,
    x: Any,
    cfg: DeployConfig,
    evaluate: Callable[[nn.Module], float] | None,
) -> tuple[dict[str, LatencyStats], float, float]:
    """Both models timed interleaved on ``x`` (engine ``cfg.engine``, given back afterwards) and ``evaluate``
    of each (NaN without it)."""
    previous_engine = torch.backends.quantized.engine
    torch.backends.quantized.engine = cfg.engine
    try:
        stats = time_side_by_side(
            {"fp32": fp32, "deployed": deployed},
            x,
            repeats=cfg.repeats,
            warmup=cfg.warmup,
            threads=cfg.threads,
        )
        fp32_acc = float(evaluate(fp32)) if evaluate is not None else math.nan
        acc = float(evaluate(deployed)) if evaluate is not None else math.nan
    finally:
        torch.backends.quantized.engine = previous_engine
    return stats, fp32_acc, acc


def _log_deployment(
    result: DeployResult,
    plan: QuantPlan,
    labels: dict[str, Any],
    profile: str,
    cfg: DeployConfig,
    track: bool | None,
) -> str | None:
    """The deploy run of :func:`measure_deployment` (the one ``workbench deploy`` logs on static kernels):
    params ``model``, ``plan`` (when named), ``profile``, ``kernels`` and the config's fields; the plan; the
    result's metrics and ``deployed_layers`` table."""
    params = {k: v for k, v in labels.items() if v is not None}
    params.update({"profile": profile, "kernels": "static", **dataclasses.asdict(cfg)})
    return tracking.log_stage(
        "deploy", result, params=params, plan=plan, run_name=f"deploy-{labels['model']}", enabled=track
    )


def _estimated_latency_ms(
    model: nn.Module, example_input: Any, prof: PrecisionProfile, plan: QuantPlan, deployed, batch_size: int
) -> float:
    """The cost estimator's latency of ``plan`` under the dispatch the deployment chose (warnings silenced)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return (
            CostEstimator(model, example_input, prof, batch_size=batch_size)
            .estimate(plan, deployed.dispatch)
            .latency_ms
        )


def _batch(example_input: Any, batch_size: int) -> Any:
    """A batch of ``batch_size`` real samples (the example repeated when it holds fewer); a tuple or a dict of
    tensors keeps its structure."""
    if not isinstance(example_input, torch.Tensor):
        n = int(first_tensor(example_input).shape[0])  # type: ignore[union-attr]
        parts = [example_input] * math.ceil(batch_size / n)
        return take_inputs(concat_inputs(parts), batch_size)
    n = example_input.shape[0]
    if n >= batch_size:
        return example_input[:batch_size].contiguous()
    reps = math.ceil(batch_size / n)
    return example_input.repeat(reps, *([1] * (example_input.dim() - 1)))[:batch_size].contiguous()


# ============================================================================================ dynamic path


def _dynamic_linear_layers(model: nn.Module, plan: QuantPlan | None) -> tuple[list[str], list[str]]:
    """The nn.Linear layers dynamic int8 converts (every one without a plan; with one, those at <= 8 weight
    bits), and those of them whose plan asks for fewer than 8 bits."""
    converted, lower = [], []
    for name, m in model.named_modules():
        if type(m) is not nn.Linear:
            continue
        spec = plan.get(name) if plan is not None else None
        if plan is None or (spec is not None and spec.w_bits is not None and spec.w_bits <= 8):
            converted.append(name)
            if spec is not None and spec.w_bits < 8:
                lower.append(name)
    return converted, lower


def _dynamic_notes(converted: list[str], lower: list[str]) -> list[str]:
    notes = [
        f"dynamic int8: {len(converted)} nn.Linear layer(s) run torch.ao dynamic int8 kernels (int8 "
        "weights per output channel, activations quantized per batch at run time); every other layer "
        "(embeddings, norms, attention matmuls) runs in float32"
    ]
    if lower:
        notes.append(
            f"dynamic int8: {len(lower)} layer(s) planned below 8 bits run at int8 (no lower-bit "
            "dynamic kernels); quantize / qat measure the planned bits"
        )
    return notes


def compare_kernels(
    task: TaskLike,
    plan: QuantPlan | None = None,
    *,
    kernels: str = "dynamic",
    config: DeployConfig | None = None,
    split: str = "test",
    track: bool | None = None,
    name: str | None = None,
    plan_name: str | None = None,
) -> pd.DataFrame:
    """The dynamic deployment path, for models that static int8 cannot take (token ids, several inputs, dict
    inputs, output objects): one row per variant, side by side with FP32 on the same batch.

    ``kernels="dynamic"``: FP32, torch.ao dynamic int8 (with ``plan``, its Linear layers at <= 8 weight bits;
    every Linear without one) and bf16, by :func:`workbench.hardware.dynamic.compare_linear_deployments`.
    ``kernels="bf16"``: FP32 and the whole model in bfloat16 (the plan's bits do not apply). Columns:
    ``variant``, ``median_ms`` / ``min_ms`` / ``max_ms`` (one batch of ``config.batch_size`` inputs, runs
    interleaved), ``speedup_vs_fp32``, ``metric`` (the task's metric on ``split``), ``cosine_to_fp32`` and
    ``top1_agreement`` (fidelity of the primary outputs to FP32 on ``split``). ``attrs`` hold the batch size,
    repeats, threads, split, engine, kernels and notes.

    ``track``: log an MLflow run of stage ``"deploy"`` (None: unless ``WORKBENCH_TRACKING=0``) named
    ``deploy-<name>`` (default the task's name), with ``plan_name`` as the ``plan`` param, the plan, the
    metrics of :func:`kernel_metrics` and the frame as ``deployed_variants``."""
    if kernels not in ("dynamic", "bf16"):
        raise ValueError(
            f"kernels={kernels!r}: compare_kernels runs 'dynamic' or 'bf16' (static: measure_deployment)"
        )
    task = check_task(task, need=TASK_NEEDS)
    cfg = config or DeployConfig()
    if plan is not None:
        plan.validate(task.model)
    threads = cfg.threads or torch.get_num_threads()
    cfg = dataclasses.replace(cfg, engine=resolve_engine(cfg.engine))
    if cfg.engine not in torch.backends.quantized.supported_engines:
        raise RuntimeError(
            f"quantized engine {cfg.engine!r} is not in this torch build ({torch.backends.quantized.supported_engines})"
        )
    df, notes = _run_variants(task, plan, kernels, cfg, threads, split)
    df.attrs.update(
        {
            "batch_size": cfg.batch_size,
            "repeats": cfg.repeats,
            "threads": threads,
            "split": split,
            "engine": cfg.engine,
            "kernels": kernels,
            "cpu": cpu_name(),
            "device": str(model_device(task.model)),
            "notes": notes,
        }
    )
    params = {"model": name or task.name, "plan": plan_name, "kernels": kernels, **dataclasses.asdict(cfg)}
    if plan_name is None:
        del params["plan"]
    tracking.log_stage(
        "deploy",
        kernel_metrics(df),
        params=params,
        plan=plan,
        tables={"deployed_variants": df},
        run_name=f"deploy-{params['model']}",
        enabled=track,
    )
    return df


def _run_variants(
    task: Any, plan: QuantPlan | None, kernels: str, cfg: DeployConfig, threads: int, split: str
) -> tuple[pd.DataFrame, list[str]]:
    """The variants of :func:`compare_kernels` measured (engine ``cfg.engine``, eval mode; both given back
    afterwards) and the notes on what ran."""
    notes: list[str] = []
    previous_engine = torch.backends.quantized.engine
    flags = {m: m.training for m in task.model.modules()}  # run in eval mode, flags given back afterwards
    torch.backends.quantized.engine = cfg.engine
    try:
        if kernels == "dynamic":
            converted, lower = _dynamic_linear_layers(task.model, plan)
            df = compare_linear_deployments(
                task, plan, batch_size=cfg.batch_size, repeats=cfg.repeats, warmup=cfg.warmup, threads=threads,
                split=split,
            )  # fmt: skip
            notes += _dynamic_notes(converted, lower)
            notes.append("bf16: the whole model in bfloat16 (integer inputs stay integers)")
        else:
            df = compare_linear_deployments(
                task, plan, batch_size=cfg.batch_size, repeats=cfg.repeats, warmup=cfg.warmup, threads=threads,
                split=split, variants=("bf16",),
            )  # fmt: skip
            notes.append(
                "bf16: the whole model in bfloat16 (integer inputs stay integers); the plan's bits do not apply"
            )
    finally:
        torch.backends.quantized.engine = previous_engine
        for m, flag in flags.items():
            m.training = flag
    return df, notes


def kernel_metrics(df: pd.DataFrame) -> dict[str, Any]:
    """The metrics of a :func:`compare_kernels` frame: every column of every row but ``variant``, keyed
    ``<variant>_<column>`` (``dynamic_int8_median_ms``, ``bf16_cosine_to_fp32``, ...)."""
    return {
        f"{row['variant']}_{k}": x
        for row in df.to_dict(orient="records")
        for k, x in row.items()
        if k != "variant"
    }
