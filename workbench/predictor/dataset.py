"""The measured-plan dataset: :class:`PlanDataset` and :func:`build_plan_dataset`, which generates plans,
measures each on the task and appends it to the cache file at once, so an interrupted build resumes where it
stopped."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from workbench._common.threads import torch_threads
from workbench.devices import on_device
from workbench.paths import data_dir
from workbench.predictor.cache import (
    _CacheContents,
    _CacheWriter,
    _read_cache,
    _rewrite_cache,
    _signed,
    dataset_key,
)
from workbench.predictor.config import FRAME_METRICS, TARGETS, PlanDatasetConfig
from workbench.predictor.measure import _Reference, _reference, measure_plan
from workbench.predictor.plans import _plan_from_bits, generate_plans, plan_id
from workbench.quant import LayerCost, PlanError, QuantPlan, layer_costs, quantizable_layers
from workbench.tasks.task import TaskLike, check_task

if TYPE_CHECKING:
    from workbench.sensitivity import SensitivityResult

TASK_NEEDS: tuple[str, ...] = ("model", "calib_loader", "loader", "evaluate", "example_input")
"""What a plan dataset reads from a task (checked by :func:`~workbench.tasks.check_task`)."""


@dataclass(frozen=True, eq=False)
class PlanDataset:
    """Measured plans.

    ``frame`` has one row per plan: ``plan_id``, ``source`` (random / anchor / stratified), ``w:<layer>`` and
    ``a:<layer>`` bit columns, then ``accuracy`` (the task metric), ``acc_drop`` (the metric loss: FP32 metric
    minus metric, x 100; accuracy drop in pp for labelled accuracy), ``kl``, ``logit_mse``, ``size_bytes``,
    ``avg_weight_bits``, ``avg_act_bits``, ``bops``, ``eval_seconds``. ``plans``: the matching QuantPlans;
    ``info``: cache key and path, FP32 metric (``fp32_accuracy``), ``metric_name`` (what the metric is:
    "accuracy", "cosine", an eval_fn's name, ...), ``output_key``, counts and timings of the build."""

    frame: pd.DataFrame
    plans: list[QuantPlan]
    layer_names: list[str]
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.frame)

    def bits(self) -> tuple[np.ndarray, np.ndarray]:
        """(weight bits, activation bits), each an int array ``[n_plans, n_layers]``."""
        w = self.frame[[f"w:{n}" for n in self.layer_names]].to_numpy(dtype=np.int64)
        a = self.frame[[f"a:{n}" for n in self.layer_names]].to_numpy(dtype=np.int64)
        return w, a

    def bit_array(self) -> np.ndarray:
        """``[n_plans, n_layers, 2]`` of (weight bits, activation bits): the fast input of the featurizer."""
        w, a = self.bits()
        return np.stack([w, a], axis=-1)

    def target(self, name: str = "acc_drop") -> np.ndarray:
        if name not in TARGETS:
            raise ValueError(f"unknown target {name!r}; choose one of {list(TARGETS)}")
        return self.frame[name].to_numpy(dtype=np.float64)

    def subset(self, index: Sequence[int] | np.ndarray) -> PlanDataset:
        """The plans at positions ``index`` (a new dataset; frame re-indexed from 0)."""
        idx = np.asarray(index, dtype=np.int64)
        return PlanDataset(
            frame=self.frame.iloc[idx].reset_index(drop=True),
            plans=[self.plans[i] for i in idx],
            layer_names=list(self.layer_names),
            info=dict(self.info),
        )

    @classmethod
    def load(cls, path: str | Path) -> PlanDataset:
        """Every plan recorded in a cache file written by :func:`build_plan_dataset` (source "cached")."""
        contents = _read_cache(Path(path))
        header, records = contents.header, contents.records
        if header is None:
            why = f" ({contents.bad_header})" if contents.bad_header else ""
            raise ValueError(f"{path} has no valid header line{why}; not a plan dataset file")
        if contents.problems:
            warnings.warn(
                f"plan dataset {path}: left out {len(contents.problems)} bad line(s) "
                f"({contents.describe_problems()})",
                stacklevel=2,
            )
        names = list(header["layer_names"])
        rows = [{**r, "source": "cached"} for r in records.values()]
        plans = [_plan_from_bits(names, r["w_bits"], r["a_bits"], r["granularity"]) for r in rows]
        return cls(
            frame=_dataset_frame(names, rows),
            plans=plans,
            layer_names=names,
            info={"path": str(path), **{k: v for k, v in header.items() if k != "type"}},
        )


def _dataset_frame(names: Sequence[str], rows: list[dict[str, Any]]) -> pd.DataFrame:
    cols: dict[str, list] = {"plan_id": [r["plan_id"] for r in rows], "source": [r["source"] for r in rows]}
    for i, n in enumerate(names):
        cols[f"w:{n}"] = [int(r["w_bits"][i]) for r in rows]
    for i, n in enumerate(names):
        cols[f"a:{n}"] = [int(r["a_bits"][i]) for r in rows]
    for m in FRAME_METRICS:
        cols[m] = [r.get(m, math.nan) for r in rows]
    return pd.DataFrame(cols)


def _task_metric_info(task: TaskLike) -> dict[str, Any]:
    """``metric_name`` (see :attr:`workbench.tasks.Task.metric_name`) and ``output_key`` of ``task``."""
    return {"metric_name": task.metric_name, "output_key": task.output_key}


def build_plan_dataset(
    task: TaskLike,
    sensitivity: SensitivityResult | None = None,
    config: PlanDatasetConfig = PlanDatasetConfig(),  # noqa: B008 - frozen default
    *,
    path: str | Path | None = None,
    resume: bool = True,
    progress: bool = True,
    track: bool = False,
    num_threads: int | None = None,
    device: str | torch.device | None = None,
) -> PlanDataset:
    """Generate the plans of ``config`` (see :func:`generate_plans`) and measure each on ``task``.

    Each measured plan is appended as one JSON line to ``path`` (default ``data_dir()/predictor/<key>.jsonl``,
    key from :func:`dataset_key`) and flushed at once, so an interrupted build loses nothing it measured. With
    ``resume`` plans already in that file (matched by :func:`plan_id`) are read back instead of measured; with
    ``resume=False`` every plan is measured again and appended (the file is never truncated). Every line carries a
    checksum over its fields and the cache key (see :func:`_line_sha`): lines cut short by a kill or edited by
    hand are named in a warning, dropped from the file and their plans measured again; a file whose header is
    missing, edited or of another key (model, data, split, granularity, quantization code) is refused with a
    ValueError naming it, never read. ``num_threads``
    sets torch's intra-op threads during the build and restores them afterwards (1 is often fastest for small
    models on a busy machine). ``track`` logs the config, counts and the frame to MLflow.

    ``device``: where plans are quantized and measured (``cpu``, ``cuda``, ``cuda:N``; None: where
    ``task.model`` is); the model is copied there. The cache key does not depend on the device (a cache file
    filled on one device is reused on another; the numbers differ at most by float rounding). A device this
    machine lacks raises :class:`workbench.devices.DeviceError` before any work.
    """
    if not isinstance(config, PlanDatasetConfig):
        raise TypeError(f"config must be a PlanDatasetConfig, got {type(config).__name__}")
    task = on_device(check_task(task, need=TASK_NEEDS), device)
    t_start = time.perf_counter()
    names = quantizable_layers(task.model)
    if not names:
        raise PlanError(f"{type(task.model).__name__} has no quantizable layers (Conv2d / Linear)")
    costs = layer_costs(task.model, task.example_input())
    with torch_threads(num_threads):
        reference = _reference(task, config.split)
        key = dataset_key(task, config, fingerprint=reference.fingerprint)
        file = Path(path) if path is not None else data_dir() / "predictor" / f"{key}.jsonl"
        cached = _checked_cache(file, names, key)
        if not resume:
            cached = {}
        recorder = _open_recorder(task, config, names, costs, reference, key, file, cached, progress)
        generated, rows = _measure_plans(recorder, sensitivity, config, names, costs)
    frame = _dataset_frame(names, rows)
    info = _dataset_info(task, config, reference, key, file, len(frame), recorder.counts, t_start)
    dataset = PlanDataset(frame=frame, plans=[p for _, p in generated], layer_names=names, info=info)
    if track:
        _track_dataset(task, config, info, frame)
    return dataset


def _checked_cache(file: Path, names: list[str], key: str) -> dict[str, dict[str, Any]]:
    """plan_id -> record of the cache file ``file`` of ``key`` (empty when there is none).

    A file without a valid header, or of other layers or another key, is refused with a ValueError; a lone header
    cut short (a build killed before it measured anything) is deleted with a warning; lines cut short or edited
    are named in a warning and dropped from the file (their plans are measured again)."""
    contents = _read_cache(file)
    header, cached = contents.header, contents.records
    if header is None and (contents.bad_header or contents.problems):
        if contents.bad_header or contents.problems != [(1, "cut short or not JSON")]:
            why = contents.bad_header or contents.describe_problems()
            raise ValueError(
                f"cache file {file} has no valid header line ({why}), so its measurements cannot be tied to "
                "a model and config; delete the file or pass another path"
            )
        # a lone first line cut short: the header of a build interrupted before it measured anything
        warnings.warn(
            f"cache file {file}: its only line, the header, was cut short; starting the file again",
            stacklevel=3,
        )
        file.unlink()
        contents = _CacheContents()
    if header is not None and list(header.get("layer_names", [])) != names:
        raise ValueError(
            f"cache file {file} belongs to a model with layers {header.get('layer_names')}, not {names}; "
            "pass another path"
        )
    if header is not None and header.get("key") != key:
        raise ValueError(
            f"cache file {file} holds measurements of another model, data or quantization code, or of "
            f"another split or granularity (key "
            f"{header.get('key')!r}, expected {key!r}); pass another path or delete the file"
        )
    if contents.problems:  # lines cut short or edited: named, dropped, their plans measured again
        warnings.warn(
            f"cache file {file}: dropped {len(contents.problems)} bad line(s) "
            f"({contents.describe_problems()}); their plans are measured again",
            stacklevel=3,
        )
        _rewrite_cache(file, contents.good_lines)
    return cached


@dataclass(eq=False)
class _PlanRecorder:
    """The record of each plan (by :func:`plan_id`): read back from ``cached`` when there, else measured with
    :func:`measure_plan` and appended to the cache file at once. ``counts``: plans measured and read back, and
    the seconds spent measuring."""

    task: TaskLike
    reference: _Reference
    costs: Mapping[str, LayerCost]
    names: list[str]
    granularity: str
    key: str
    cached: dict[str, dict[str, Any]]
    writer: _CacheWriter
    bar: Any
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    counts: dict[str, Any] = field(default_factory=lambda: {"measured": 0, "cached": 0, "seconds": 0.0})

    def __call__(self, plan: QuantPlan) -> dict[str, Any]:
        pid = plan_id(plan)
        if pid in self.records:
            return self.records[pid]
        if pid in self.cached:
            self.counts["cached"] += 1
            self.records[pid] = self.cached[pid]
        else:
            t0 = time.perf_counter()
            result = measure_plan(self.task, plan, self.reference, costs=self.costs)
            self.counts["seconds"] += time.perf_counter() - t0
            self.counts["measured"] += 1
            names = self.names
            self.records[pid] = _signed(
                {
                    "type": "plan", "plan_id": pid, "w_bits": [plan[n].w_bits for n in names],
                    "a_bits": [plan[n].a_bits for n in names], "granularity": self.granularity, **result,
                },
                self.key,
            )  # fmt: skip
            self.writer.write(self.records[pid])
        self.bar.update(1)
        return self.records[pid]


def _open_recorder(
    task: TaskLike,
    config: PlanDatasetConfig,
    names: list[str],
    costs: Mapping[str, LayerCost],
    reference: _Reference,
    key: str,
    file: Path,
    cached: dict[str, dict[str, Any]],
    progress: bool,
) -> _PlanRecorder:
    """A recorder appending to ``file`` (its signed header written first when the file is new or empty) and
    showing a progress bar."""
    from tqdm.auto import tqdm

    header = _signed(
        {
            "type": "header", "key": key, "task": task.name, "layer_names": names, "split": config.split,
            "granularity": config.granularity, "fp32_accuracy": reference.accuracy,
            **_task_metric_info(task), "checksums": 1,
        },
        key,
    )  # fmt: skip
    writer = _CacheWriter(file, header)
    bar = tqdm(total=config.n_plans, desc="plan dataset", disable=not progress)
    return _PlanRecorder(task, reference, costs, names, config.granularity, key, cached, writer, bar)


def _measure_plans(
    recorder: _PlanRecorder,
    sensitivity: SensitivityResult | None,
    config: PlanDatasetConfig,
    names: list[str],
    costs: Mapping[str, LayerCost],
) -> tuple[list[tuple[str, QuantPlan]], list[dict[str, Any]]]:
    """The (source, plan) list of ``config`` (its anchors measured on the way) and each plan's record with its
    source; the progress bar and the cache file are closed afterwards, also on an error or an interruption."""
    try:
        generated = generate_plans(
            names,
            config,
            sensitivity=sensitivity,
            weight_params=[costs[n].weight_params for n in names],
            measure=lambda plans: [recorder(p)["acc_drop"] for p in plans],
        )
        recorder.bar.total = len(generated)
        rows = [{**recorder(plan), "source": source} for source, plan in generated]
    finally:
        recorder.bar.close()
        recorder.writer.close()
    return generated, rows


def _dataset_info(
    task: TaskLike,
    config: PlanDatasetConfig,
    reference: _Reference,
    key: str,
    file: Path,
    n_plans: int,
    counts: Mapping[str, Any],
    t_start: float,
) -> dict[str, Any]:
    """The ``info`` of a built dataset: cache key and path, config, FP32 metric, counts and timings."""
    return {
        "key": key,
        "path": str(file),
        "task": task.name,
        "config": asdict(config),
        "fp32_accuracy": reference.accuracy,
        **_task_metric_info(task),
        "n_plans": n_plans,
        "n_measured": counts["measured"],
        "n_cached": counts["cached"],
        "build_seconds": time.perf_counter() - t_start,
        "measure_seconds": counts["seconds"],
        "plans_per_second": counts["measured"] / counts["seconds"] if counts["measured"] else math.nan,
    }


def _track_dataset(
    task: TaskLike, config: PlanDatasetConfig, info: Mapping[str, Any], frame: pd.DataFrame
) -> None:
    """Log the config, the numbers of ``info`` and the frame to an MLflow run of stage "predictor_dataset"."""
    from workbench import tracking

    with tracking.start_run("predictor_dataset", run_name=f"plan-dataset-{task.name}", params=config) as run:
        run.log_metrics({k: v for k, v in info.items() if isinstance(v, (int, float))})
        run.log_dataframe(frame, "plan_dataset")
