"""Stages as functions with result objects, shared by the CLI and the notebooks.

``evaluate_plan`` quantizes a task's model with a plan and measures it (accuracy, size, packed file size, bits);
``run_pipeline`` runs the end-to-end pipeline on a task: profile, then FP32 vs the configured uniform plans;
``prepare_search`` builds what a search needs (its sensitivity result, its accuracy predictor) and
``search_with_defaults`` runs one with them.
"""

from __future__ import annotations

import re
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
from torch import nn

from workbench import tracking
from workbench.devices import DeviceError, on_device, resolve_device
from workbench.profiling import ProfileConfig, profile_model, profile_summary
from workbench.quant import PlanError, QuantPlan, quantize_model, save_packed
from workbench.search import (
    SearchConfig,
    SearchResult,
    default_predictor,
    required_inputs,
    resolved_config,
    run_search,
)
from workbench.sensitivity import SensitivityResult
from workbench.tasks import Task, TaskLike, check_task, load_task, torchvision_task

if TYPE_CHECKING:
    from workbench.predictor import AccuracyPredictor

DEFAULT_PLANS: tuple[tuple[str, str], ...] = (
    ("INT8 per-channel", "uniform:w8a8:per_channel"),
    ("INT4 per-channel", "uniform:w4a8:per_channel"),
)


def make_task(
    model: str = "digits_resnet",
    *,
    dataset: str | None = None,
    data_root: str | Path | None = None,
    weights: str | Path | None = None,
    retrain: bool = False,
    progress: bool = True,
) -> Task:
    """The embedded digits task for zoo models, or a torchvision model on a local dataset folder."""
    if dataset is None:
        return load_task(model, retrain=retrain, progress=progress)
    if data_root is None:
        raise ValueError(
            f"dataset {dataset!r} needs data_root: the folder that holds it (nothing is downloaded)"
        )
    return torchvision_task(model, dataset=dataset, root=data_root, weights_path=weights)


def resolve_plan(plan: str | Path | QuantPlan, model: nn.Module) -> QuantPlan:
    """A QuantPlan from a plan object, a JSON file path, or a shorthand such as ``uniform:w4a8:per_channel``.

    Text that is neither a shorthand nor a file, a file that is no plan, and a plan file that does not fit
    ``model`` (unknown or unquantizable layer names, ``channel_bits`` of the wrong length) raise
    :class:`PlanError` naming the text or the file.
    """
    if isinstance(plan, QuantPlan):
        return plan
    text = str(plan)
    if text.startswith("uniform:"):
        return QuantPlan.from_shorthand(text, model)
    path = Path(text)
    try:
        is_file, is_dir = path.is_file(), path.is_dir()
    except (OSError, ValueError):  # e.g. a shorthand typo longer than the file system's name limit
        is_file = is_dir = False
    shorthands = "'uniform:w8a8', 'uniform:w4a8:per_channel', 'uniform:w4a8:per_group:g32'"
    if is_dir:
        raise PlanError(
            f"plan {text!r} is a directory; give a plan JSON file in it or a shorthand, e.g. {shorthands}"
        )
    if not is_file and (path.suffix.lower() == ".json" or "/" in text or "\\" in text):
        raise PlanError(
            f"plan file {text!r} does not exist (a shorthand starts with 'uniform:', e.g. {shorthands})"
        )
    if not is_file:
        raise PlanError(
            f"plan {text!r} is neither a JSON file nor a shorthand (no such file exists); use a path to a plan "
            f"JSON or e.g. {shorthands}"
        )
    loaded = QuantPlan.load(path)
    if len(loaded):  # layers the model lacks would otherwise be skipped without a word by some stages
        try:
            loaded.validate(model)
        except PlanError as e:
            raise PlanError(f"plan file {path} does not fit the model: {e}") from e
    return loaded


@dataclass(frozen=True)
class PlanResult:
    """One quantized model measured on a task."""

    name: str
    plan: QuantPlan = field(repr=False)
    fp32_accuracy: float
    accuracy: float
    fp32_size_bytes: int
    size_bytes: int
    packed_bytes: int
    avg_weight_bits: float
    avg_act_bits: float
    bops: int
    model: nn.Module | None = field(default=None, repr=False, compare=False)
    weight_coverage: float | None = None  # share of weight parameters the plan quantizes (PlanSummary)

    @property
    def accuracy_drop_pp(self) -> float:
        return 100.0 * (self.fp32_accuracy - self.accuracy)

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k not in ("plan", "model")}
        d["accuracy_drop_pp"] = self.accuracy_drop_pp
        d["compression"] = self.fp32_size_bytes / self.size_bytes
        return d

    def to_metrics(self) -> dict[str, float]:
        """The numeric items of :meth:`to_dict` (accuracies, sizes, bits, BOPs, drop, compression): the metrics
        of a quantize run."""
        return {k: v for k, v in self.to_dict().items() if isinstance(v, int | float)}


def evaluate_plan(
    task: TaskLike,
    plan: QuantPlan,
    *,
    name: str = "plan",
    split: str = "test",
    fp32_accuracy: float | None = None,
    packed_path: str | Path | None = None,
    overwrite: bool = False,
    keep_model: bool = False,
    device: str | torch.device | None = None,
    ptq: Sequence[Any] = (),
) -> PlanResult:
    """Quantize ``task.model`` with ``plan`` (calibrated on the task's calibration data; ``ptq``: post-training
    quantization steps, see :mod:`workbench.quant.ptq`) and measure it.

    The packed file goes to ``packed_path`` if given (refusing to overwrite unless ``overwrite``), else to a
    temporary file that is removed after its size is read. ``device``: where the model is quantized and
    evaluated (``cpu``, ``cuda``, ``cuda:N``; None: where ``task.model`` is); the model is copied there, and
    ``PlanResult.model`` (``keep_model``) stays on it. A device this machine lacks raises
    :class:`workbench.devices.DeviceError` before any work.
    """
    task = on_device(check_task(task, need=("model", "calib_loader", "evaluate", "example_input")), device)
    qmodel = quantize_model(task.model, plan, task.calib_loader, ptq=ptq)
    fp32 = task.evaluate(task.model, split) if fp32_accuracy is None else fp32_accuracy
    acc = task.evaluate(qmodel, split)
    summary = plan.summary(task.model, task.example_input())
    if packed_path is not None:
        packed = save_packed(qmodel, packed_path, overwrite=overwrite).file_bytes
    else:
        with tempfile.TemporaryDirectory() as tmp:
            packed = save_packed(qmodel, Path(tmp) / "model.wbq").file_bytes
    return PlanResult(
        name=name,
        plan=plan,
        fp32_accuracy=fp32,
        accuracy=acc,
        fp32_size_bytes=summary.fp32_size_bytes,
        size_bytes=summary.size_bytes,
        packed_bytes=packed,
        avg_weight_bits=summary.avg_weight_bits,
        avg_act_bits=summary.avg_act_bits,
        bops=summary.bops,
        model=qmodel if keep_model else None,
        weight_coverage=summary.weight_covered_fraction,
    )


@dataclass(frozen=True)
class PipelineConfig:
    """End-to-end pipeline on the embedded digits task (defaults) or a torchvision task.

    After FP32 and the uniform ``plans``: for each budget of ``search_bits`` (average weight bits over the
    searched layers), the default search (``auto``, ``search_evaluations`` real evaluations on the validation
    split) and its best plan within the budget, beside uniform per-channel at the same bits (a row is added
    when ``plans`` lacks it); ``search_bits=()`` skips the searches.

    ``device``: where every stage runs (``cpu``, ``cuda``, ``cuda:N``; None: the CPU, where tasks are loaded);
    checked when the config is built: a malformed name or a device this machine lacks raises
    :class:`workbench.devices.DeviceError` naming the devices it has.
    """

    model: str = "digits_resnet"
    plans: tuple[tuple[str, str], ...] = DEFAULT_PLANS
    search_bits: tuple[float, ...] = (4.0, 3.0)
    search_evaluations: int = 12
    profile_batches: int = 4
    split: str = "test"
    dataset: str | None = None
    data_root: str | None = None
    weights: str | None = None
    progress: bool = True
    track: bool = True
    device: str | None = None

    def __post_init__(self) -> None:
        if self.device is not None:
            if isinstance(self.device, torch.device):
                object.__setattr__(self, "device", str(self.device))
            if not isinstance(self.device, str):
                raise DeviceError(
                    f"device must be a string such as 'cpu', 'cuda' or 'cuda:0', got {type(self.device).__name__}"
                )
            resolve_device(self.device)


@dataclass(frozen=True)
class PipelineResult:
    table: pd.DataFrame
    profile: pd.DataFrame
    profile_summary: dict[str, Any]
    task_info: dict[str, Any]
    run_id: str | None
    seconds: dict[str, float] = field(default_factory=dict)  # wall time per stage, in run order

    def to_dict(self) -> dict[str, Any]:
        return {
            "table": self.table.to_dict(orient="records"),
            "profile_summary": self.profile_summary,
            "run_id": self.run_id,
            "seconds": dict(self.seconds),
        }


def results_table(results: list[PlanResult]) -> pd.DataFrame:
    """One row per result: name, accuracy, drop, size, packed size, compression, average bits, BOPs and the share
    of weight parameters the plan quantizes (``weight_coverage``)."""
    cols = [
        "name", "accuracy", "accuracy_drop_pp", "size_bytes", "packed_bytes", "compression",
        "avg_weight_bits", "avg_act_bits", "bops", "weight_coverage",
    ]  # fmt: skip
    return pd.DataFrame([r.to_dict() for r in results])[cols]


def run_pipeline(config: PipelineConfig = PipelineConfig()) -> PipelineResult:  # noqa: B008 - frozen default
    """Train or load the model, profile it, and compare FP32 with each configured uniform plan, every stage
    on ``config.device`` (checked before the model is trained or loaded)."""
    if config.device is not None:
        resolve_device(config.device)  # the config may have been built on another machine
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    task = make_task(
        config.model,
        dataset=config.dataset,
        data_root=config.data_root,
        weights=config.weights,
        progress=config.progress,
    )
    task = on_device(task, config.device)
    seconds["train_or_load"] = time.perf_counter() - t0
    profile = profile_model(
        task.model,
        task.calib_loader,
        config=ProfileConfig(max_batches=config.profile_batches, progress=config.progress),
    )
    seconds["profile"] = time.perf_counter() - t0 - sum(seconds.values())
    fp32_acc = task.evaluate(task.model, config.split)
    results = [evaluate_plan(task, QuantPlan({}), name="FP32", split=config.split, fp32_accuracy=fp32_acc)]
    plans = {}
    for name, shorthand in config.plans:
        plan = resolve_plan(shorthand, task.model)
        results.append(evaluate_plan(task, plan, name=name, split=config.split, fp32_accuracy=fp32_acc))
        plans[name.replace(" ", "_")] = plan
    seconds["quantize_and_evaluate"] = time.perf_counter() - t0 - sum(seconds.values())
    for bits in config.search_bits:
        results.extend(_search_rows(task, config, bits, fp32_acc, plans))
    if config.search_bits:
        seconds["search"] = time.perf_counter() - t0 - sum(seconds.values())
    table = results_table(results)
    run_id = tracking.log_stage(
        "pipeline",
        params=config,
        metrics=_pipeline_metrics(results, fp32_acc, seconds),
        plans=plans,
        tables={"profile": profile, "summary": table},
        run_name=f"pipeline-{config.model}",
        enabled=None if config.track else False,
    )
    return PipelineResult(
        table=table,
        profile=profile,
        profile_summary=profile_summary(profile),
        task_info=dict(task.info),
        run_id=run_id,
        seconds=seconds,
    )


def _search_rows(
    task: Task, config: PipelineConfig, bits: float, fp32_acc: float, plans: dict[str, QuantPlan]
) -> list[PlanResult]:
    """Uniform per-channel at ``bits`` (unless a configured plan is) and the default search's best plan within
    ``bits`` average weight bits, both measured on ``config.split``; their plans go into ``plans``."""
    from workbench.search import SearchConfig, run_search

    rows = []
    if float(bits).is_integer() and not any(
        s == f"uniform:w{int(bits)}a8:per_channel" for _, s in config.plans
    ):
        plan = resolve_plan(f"uniform:w{int(bits)}a8:per_channel", task.model)
        name = f"INT{int(bits)} per-channel"
        rows.append(evaluate_plan(task, plan, name=name, split=config.split, fp32_accuracy=fp32_acc))
        plans[name.replace(" ", "_")] = plan
    search = SearchConfig(budget=config.search_evaluations, max_avg_weight_bits=float(bits), storage=":memory:",
                          track=False, progress=config.progress, final_split=None)  # fmt: skip
    best = run_search(task, search).best(max_avg_weight_bits=float(bits))
    plan = QuantPlan.from_json(best["plan"])
    name = f"mixed <= {bits:g} bits (search)"
    rows.append(evaluate_plan(task, plan, name=name, split=config.split, fp32_accuracy=fp32_acc))
    plans[name.replace(" ", "_").replace("<=", "le")] = plan
    return rows


def _pipeline_metrics(
    results: list[PlanResult], fp32_acc: float, seconds: dict[str, float]
) -> dict[str, float]:
    """The pipeline run's metrics: ``<plan>.accuracy`` and ``<plan>.size_bytes`` per plan (FP32 first),
    ``fp32_accuracy`` and ``seconds.<stage>``."""
    metrics: dict[str, float] = {}
    for r in results:
        key = re.sub(r"[^0-9a-z.]+", "_", r.name.lower().replace("<=", "le")).strip("_")
        metrics.update({f"{key}.accuracy": r.accuracy, f"{key}.size_bytes": r.size_bytes})
    metrics["fp32_accuracy"] = fp32_acc
    metrics.update({f"seconds.{k}": v for k, v in seconds.items()})
    return metrics


def prepare_search(
    task: Task,
    config: SearchConfig | None = None,
    *,
    sensitivity: SensitivityResult | None = None,
    predictor: AccuracyPredictor | None = None,
    join: bool = False,
) -> tuple[SensitivityResult | None, AccuracyPredictor | None]:
    """(sensitivity, predictor) that :func:`~workbench.search.run_search` ``(task, config, join=join)`` needs,
    the given ones kept and the missing ones built with the defaults: the sensitivity pass the strategy needs
    (:func:`workbench.search.inputs.search_sensitivity`, cached; label-free metrics on a task without labels) for
    ``auto``, the greedy / ILP / AIMET baselines and warm starts of a new study, :func:`~workbench.search.default_predictor`
    (plan dataset cached under data/; a weight-only space learns from weight-only plans) for predicted or
    multi-fidelity accuracy and the ``control`` baseline. What is not needed stays as given (None when not given).
    When resuming or joining, what the study's stored configuration needs is built."""
    config = resolved_config(task, config, join=join)
    needs_pred, needs_sens = required_inputs(config, join=join)
    if needs_sens and sensitivity is None:
        from workbench.search.inputs import search_sensitivity

        sensitivity = search_sensitivity(task, config)
    if needs_pred and predictor is None:
        bits: dict[str, Any] = {}
        if tuple(config.space.a_bits) == (32,):  # a weight-only space: learn from weight-only plans
            bits = {"a_bits": (32,), "w_bits": tuple(b for b in config.space.w_bits if b <= 8) or (8,)}
        predictor = default_predictor(task, sensitivity, seed=0, **bits)
    return sensitivity, predictor


def search_with_defaults(
    task: Task,
    config: SearchConfig | None = None,
    *,
    sensitivity: SensitivityResult | None = None,
    predictor: AccuracyPredictor | None = None,
    join: bool = False,
    **kwargs: Any,
) -> SearchResult:
    """:func:`~workbench.search.run_search` with the sensitivity result and predictor it needs built by
    :func:`prepare_search` when not given; ``kwargs`` (``figures``, ``device``) go to ``run_search``."""
    sensitivity, predictor = prepare_search(
        task, config, sensitivity=sensitivity, predictor=predictor, join=join
    )
    return run_search(task, config, sensitivity=sensitivity, predictor=predictor, join=join, **kwargs)
