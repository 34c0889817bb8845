"""Sensitivity of each layer (and output channel) to each precision.

:func:`analyze_sensitivity` measures, for every quantizable layer of a task's model and every candidate
precision, how much quantizing *only that layer* hurts, with a set of registered metrics:

* ``output_mse`` / ``output_kl``: MSE and KL(FP32 softmax || quantized softmax) of the final logits against
  the FP32 logits on the calibration batches (a *probe*: one forward pass per layer and precision);
* ``acc_drop``: top-1 accuracy drop in percentage points on the validation split (also a probe): the metric
  loss (FP32 metric minus metric) of labelled accuracy, whatever the task's own metric;
* ``hessian``: the Hessian trace of each layer's weight by Hutchinson's estimator and the HAWQ-V2
  sensitivity ``omega = (trace / numel) * ||W - Q(W)||^2`` per weight bit width and granularity;
* ``fisher``: the mean over calibration samples of ``||dL/dy||^2`` of each layer's output ``y``.

Weight probes quantize one layer's weights (activations float, ``a_bits=32``); activation probes quantize one
layer's input activations (weights float, ``w_bits=32``, range calibrated on the calibration batches). Probes
run on a private copy of the model with BatchNorm folded into the convolutions exactly as
:func:`workbench.quant.quantize_model` folds it, so a probe's logits are those of
``quantize_model(model, QuantPlan({layer: spec}), calib)`` (up to float rounding of the fold). The Hessian and
the Fisher scores use the unfolded float model (the weights as the user sees them). The task's model is never
modified.

Metrics are small classes registered by name (:func:`register_metric`); a user metric that compares logits is a
subclass of :class:`OutputMetric` with a ``score`` method, any other one a :class:`SensitivityMetric` with a
``compute`` method.

Batches pass to the model as they come: ``(inputs, targets)`` tuples or inputs alone, the inputs a tensor, a
tuple or a dict of tensors (see :mod:`workbench.quant.inputs`); "logits" are the model output's
:func:`~workbench.quant.inputs.primary_output`, or the output the task's ``output_key`` chooses (a dict key,
an attribute or a tuple index; probes, losses and references all use it). ``acc_drop``, ``hessian`` and
``fisher`` need targets (``needs_labels``); on data without labels use ``output_mse`` / ``output_kl``.
``SensitivityResult.info`` records the task's ``metric_name`` and ``output_key``.

Tidy schema of ``SensitivityResult.table`` (one row per measurement)::

    layer        module path ("layer1.0.conv1")
    op_type      "Conv2d" / "Linear"
    depth        index of the layer in forward order (0 = first)
    metric       registered metric name ("output_mse", "output_kl", "acc_drop", "omega", "fisher", ...)
    kind         "weight" (only the layer's weights quantized, activations float) or "activation"
                 (only the layer's input activations quantized, weights float) or "layer" (precision-free,
                 e.g. hessian_trace, fisher; w_bits / a_bits are 32 there)
    granularity  weight granularity of the probe ("per_tensor", "per_channel"; "per_tensor" for activations)
    w_bits       weight bits of the probe (32 when weights stay float)
    a_bits       activation bits of the probe (32 when activations stay float)
    value        the measurement (higher = more sensitive)
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import inspect
import json
import math
import operator
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from workbench.devices import on_device
from workbench.quant.inputs import (
    batch_size,
    call_model,
    input_tensors,
    map_inputs,
    move_inputs,
    primary_output,
    split_batch,
    take_inputs,
)
from workbench.quant.introspect import layer_costs
from workbench.quant.modules import ActQuantizer, quantize_weight
from workbench.quant.spec import INT_BITS, QuantSpec, layer_weight_storage_bits
from workbench.quant.swap import conv_bn_pairs, fold_batchnorm, set_module

__all__ = [
    "CHANNEL_COLUMNS",
    "COST_BENEFIT_COLUMNS",
    "LAYER_COLUMNS",
    "METRICS",
    "TABLE_COLUMNS",
    "HutchinsonResult",
    "LayerInfo",
    "MetricOutput",
    "OutputMetric",
    "Probe",
    "SensitivityConfig",
    "SensitivityCacheWarning",
    "SensitivityContext",
    "SensitivityMetric",
    "SensitivityResult",
    "analyze_sensitivity",
    "available_metrics",
    "cost_benefit_table",
    "fisher_scores",
    "get_metric",
    "hutchinson_trace",
    "rank_agreement",
    "register_metric",
    "unregister_metric",
]

TABLE_COLUMNS = ["layer", "op_type", "depth", "metric", "kind", "granularity", "w_bits", "a_bits", "value"]
CHANNEL_COLUMNS = ["layer", "channel", "metric", "w_bits", "value"]
LAYER_COLUMNS = [
    "layer", "op_type", "depth", "params", "weight_params", "out_channels", "macs",
    "hessian_trace", "hessian_trace_per_param", "hutchinson_iters", "fisher",
]  # fmt: skip
COST_BENEFIT_COLUMNS = [
    "layer", "op_type", "depth", "granularity", "w_bits", "metric", "sensitivity",
    "bytes_saved", "bops_saved", "ratio", "bops_ratio", "rank",
]  # fmt: skip

ROW_KINDS: tuple[str, ...] = ("weight", "activation", "layer")
METRIC_KINDS: tuple[str, ...] = ("probe", *ROW_KINDS)
PROBE_GRANULARITIES: tuple[str, ...] = ("per_tensor", "per_channel")
SPLITS: tuple[str, ...] = ("calib", "val")
FLOAT_BITS = 32
CACHE_VERSION = 2  # bump whenever a built-in metric or the probe engine changes its numbers
_RESULT_FORMAT = "workbench.sensitivity/2"  # /1 was a pickle: never read


# --------------------------------------------------------------------------------------------- result


@dataclass(frozen=True, eq=False)
class SensitivityResult:
    """Sensitivity tables of one model.

    ``table``: tidy per-layer measurements (schema in the module docstring).
    ``layers``: one row per quantizable layer: layer, op_type, depth, params, macs, hessian_trace,
    hessian_trace_per_param, hutchinson_iters, fisher (and any other per-layer statistics).
    ``channels``: per-output-channel sensitivity (``CHANNEL_COLUMNS``).
    ``cost_benefit``: per (layer, w_bits): sensitivity, bytes and BOPs saved against the reference precision, ratio.
    """

    table: pd.DataFrame
    layers: pd.DataFrame
    channels: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=CHANNEL_COLUMNS))
    cost_benefit: pd.DataFrame = field(default_factory=pd.DataFrame)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def layer_names(self) -> list[str]:
        return list(self.layers.sort_values("depth")["layer"])

    def metrics(self) -> list[str]:
        return sorted(self.table["metric"].unique())

    def matrix(
        self,
        metric: str,
        *,
        bits: Sequence[int] | None = None,
        kind: str = "weight",
        granularity: str = "per_channel",
    ) -> pd.DataFrame:
        """Layers (rows, forward order) x bits (columns) of one metric: w_bits for kind="weight", a_bits for
        kind="activation". Raises ValueError naming the valid metrics / bits when absent."""
        t = self.table
        if metric not in set(t["metric"]):
            raise ValueError(f"metric {metric!r} not in this result; available: {self.metrics()}")
        sel = t[(t["metric"] == metric) & (t["kind"] == kind)]
        if kind == "weight":
            sel = sel[sel["granularity"] == granularity]
        col = "w_bits" if kind == "weight" else "a_bits"
        if sel.empty:
            raise ValueError(f"no {kind} rows for metric {metric!r} with granularity {granularity!r}")
        wide = sel.pivot_table(index="layer", columns=col, values="value", aggfunc="mean")
        wide = wide.reindex(self.layer_names)
        if bits is not None:
            missing = [b for b in bits if b not in wide.columns]
            if missing:
                raise ValueError(
                    f"bits {missing} were not probed for {metric!r}; probed: {list(wide.columns)}"
                )
            wide = wide[list(bits)]
        return wide

    # -- per-layer views --------------------------------------------------------------------------------
    def metric_kinds(self, metric: str) -> list[str]:
        """Row kinds present for ``metric`` ("weight", "activation", "layer")."""
        if metric not in set(self.table["metric"]):
            raise ValueError(f"metric {metric!r} not in this result; available: {self.metrics()}")
        return sorted(self.table.loc[self.table["metric"] == metric, "kind"].unique())

    def layer_values(
        self,
        metric: str,
        *,
        bits: int | None = None,
        kind: str | None = None,
        granularity: str = "per_channel",
    ) -> pd.Series:
        """One value per layer (forward order) of ``metric`` at ``bits``.

        ``kind`` defaults to the metric's only row kind, else "weight". Precision-free metrics (kind "layer",
        e.g. ``fisher``, ``hessian_trace``) ignore ``bits``; the others need it.
        """
        kinds = self.metric_kinds(metric)
        if kind is None:
            kind = kinds[0] if len(kinds) == 1 else "weight"
        if kind not in kinds:
            raise ValueError(f"metric {metric!r} has no {kind!r} rows; its kinds: {kinds}")
        if kind == "layer":
            wide = self.matrix(metric, kind="layer")
            return wide.iloc[:, 0].rename(metric)
        wide = self.matrix(metric, kind=kind, granularity=granularity)
        if bits is None:
            raise ValueError(f"metric {metric!r} ({kind}) needs bits; probed: {list(wide.columns)}")
        return self.matrix(metric, bits=[bits], kind=kind, granularity=granularity)[bits].rename(metric)

    def ranking(
        self,
        metric: str,
        *,
        bits: int | None = None,
        kind: str | None = None,
        granularity: str = "per_channel",
    ) -> pd.DataFrame:
        """Layers sorted from most to least sensitive by ``metric`` at ``bits``: layer, op_type, depth, value,
        rank (1 = most sensitive; ties share the lower rank). ``kind`` as in :meth:`layer_values`."""
        values = self.layer_values(metric, bits=bits, kind=kind, granularity=granularity)
        df = self.layers.set_index("layer")[["op_type", "depth"]].reindex(values.index)
        df["value"] = values.to_numpy()
        df = df.reset_index().rename(columns={"index": "layer"})
        df = df.sort_values(["value", "depth"], ascending=[False, True], kind="stable").reset_index(drop=True)
        df["rank"] = df["value"].rank(method="min", ascending=False).astype("Int64")
        return df

    # -- persistence ------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write the result to ``path``: one JSON file (the tables column by column with their dtypes, ``info``,
        the cache key, and the sha256 of that payload, checked by :meth:`load`); never a pickle. Refuses to
        replace an existing file unless ``overwrite``. Raises TypeError naming the entry when ``info`` holds a
        value JSON cannot represent."""
        path = Path(path)
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
        payload = {
            "key": self.info.get("cache_key"),
            "tables": {name: _encode_frame(getattr(self, name), name) for name in _RESULT_TABLES},
            "info": _to_json_value(self.info, "info"),
        }
        body = _canonical_json(payload)
        head = json.dumps({"format": _RESULT_FORMAT, "sha256": hashlib.sha256(body.encode()).hexdigest()})
        text = head[:-1] + ', "payload": ' + body + "}\n"
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            os.chmod(tmp, 0o644)  # mkstemp creates 0600
            os.replace(tmp, path)  # readers see the old file or the whole new one, never a half-written one
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, key: str | None = None) -> SensitivityResult:
        """Read a result written by :meth:`save`. Plain JSON is parsed; nothing in the file is executed.

        Raises ValueError naming ``path`` and the reason when the file is not such a result (a pickle of the old
        format is refused unread: unpickling can run code), is truncated or damaged, was edited (its sha256 does
        not match), or, with ``key``, holds another cache key (another model, config or calibration data).
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"sensitivity result file {path} does not exist")
        raw = path.read_bytes()
        if raw[:1] == b"\x80" or (path.suffix == ".pkl" and not raw.lstrip().startswith(b"{")):
            raise ValueError(
                f"{path} is not a sensitivity result written by SensitivityResult.save: it looks like a pickle "
                "(the format before workbench.sensitivity/2), and pickles are never loaded because unpickling "
                "can run code; recompute the result (analyze_sensitivity) and save it again"
            )
        try:
            doc = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise ValueError(
                f"{path} is not a sensitivity result written by SensitivityResult.save (truncated or damaged: "
                f"not valid JSON, {e})"
            ) from None
        if not isinstance(doc, dict) or doc.get("format") != _RESULT_FORMAT:
            found = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
            raise ValueError(
                f"{path} is not a sensitivity result written by SensitivityResult.save (format {found!r}, "
                f"expected {_RESULT_FORMAT!r})"
            )
        payload = doc.get("payload")
        try:
            digest = hashlib.sha256(_canonical_json(payload).encode()).hexdigest()
        except (ValueError, RecursionError) as e:
            raise ValueError(f"{path} is a damaged sensitivity result ({type(e).__name__}: {e})") from None
        if digest != doc.get("sha256"):
            raise ValueError(
                f"sensitivity result {path} failed its content check: the sha256 of its tables and info is "
                f"{digest[:16]}..., the file records {str(doc.get('sha256'))[:16]}... (edited or damaged); it is "
                "not used"
            )
        if not isinstance(payload, dict):
            raise ValueError(f"{path} is a damaged sensitivity result (its payload is not a JSON object)")
        if key is not None and payload.get("key") != key:
            raise ValueError(
                f"sensitivity result {path} holds the sensitivity of another model, config or calibration data "
                f"(cache key {payload.get('key')!r}, expected {key!r}); it is not used"
            )
        try:
            tables = {name: _decode_frame(payload["tables"][name]) for name in _RESULT_TABLES}
            info = _from_json_value(payload["info"])
            if not isinstance(info, dict):
                raise TypeError(f"info is a {type(info).__name__}, not a dict")
        except (KeyError, TypeError, ValueError, IndexError, RecursionError) as e:
            raise ValueError(f"{path} is a damaged sensitivity result ({type(e).__name__}: {e})") from None
        return cls(info=info, **tables)


_RESULT_TABLES = ("table", "layers", "channels", "cost_benefit")
_TAGS = ("__tuple__", "__items__", "__ndarray__")
_JSON_SCALARS = (bool, int, float, str)


class SensitivityCacheWarning(UserWarning):
    """A sensitivity cache file was not used (damaged, edited, from another key, or an old pickle); it is
    recomputed and replaced."""


def _canonical_json(obj: Any) -> str:
    """The one JSON text of ``obj`` that the content hash covers (sorted keys, no spaces; floats round-trip)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=True, ensure_ascii=True)


def _to_json_value(value: Any, where: str) -> Any:
    """``value`` as JSON data, tuples / non-string-keyed dicts / arrays tagged so that they come back as they
    were. Raises TypeError naming ``where`` for anything else (it could only be stored as a pickle)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if value is pd.NA or value is pd.NaT:  # a missing value of a nullable column: null, its dtype restores it
        return None
    if isinstance(value, np.generic):
        return _to_json_value(value.item(), where)
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biuf":
            raise TypeError(f"{where} is an array of dtype {value.dtype}, which cannot be stored")
        return {"__ndarray__": value.tolist(), "dtype": str(value.dtype)}
    if isinstance(value, tuple):
        return {"__tuple__": [_to_json_value(v, f"{where}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, list):
        if all(v is None or type(v) in _JSON_SCALARS for v in value):  # a table column: nothing to convert
            return value
        return [_to_json_value(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value) and not any(t in value for t in _TAGS):
            return {k: _to_json_value(v, f"{where}[{k!r}]") for k, v in value.items()}
        return {
            "__items__": [
                [_to_json_value(k, f"{where} key"), _to_json_value(v, f"{where}[{k!r}]")]
                for k, v in value.items()
            ]
        }
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(
        f"{where} is a {type(value).__name__}, which a sensitivity result cannot store (JSON only, never pickle)"
    )


def _from_json_value(value: Any) -> Any:
    if isinstance(value, list):
        if all(v is None or type(v) in _JSON_SCALARS for v in value):
            return value
        return [_from_json_value(v) for v in value]
    if not isinstance(value, dict):
        return value
    if "__tuple__" in value:
        return tuple(_from_json_value(v) for v in value["__tuple__"])
    if "__items__" in value:
        return {_hashable(_from_json_value(k)): _from_json_value(v) for k, v in value["__items__"]}
    if "__ndarray__" in value:
        return np.asarray(value["__ndarray__"], dtype=np.dtype(value["dtype"]))
    return {k: _from_json_value(v) for k, v in value.items()}


def _hashable(key: Any) -> Any:
    if isinstance(key, list):
        return tuple(_hashable(k) for k in key)
    return key


def _encode_index(index: pd.Index, where: str) -> dict[str, Any]:
    if isinstance(index, pd.MultiIndex):
        raise TypeError(f"{where} is a MultiIndex, which a sensitivity result cannot store")
    name = _to_json_value(index.name, f"{where}.name")
    if isinstance(index, pd.RangeIndex):
        return {"range": [index.start, index.stop, index.step], "name": name}
    return {"values": _to_json_value(index.tolist(), where), "dtype": str(index.dtype), "name": name}


def _decode_index(obj: dict[str, Any]) -> pd.Index:
    name = _from_json_value(obj["name"])
    if "range" in obj:
        start, stop, step = (int(v) for v in obj["range"])
        return pd.RangeIndex(start, stop, step, name=name)
    return pd.Index(_from_json_value(obj["values"]), dtype=obj["dtype"], name=name)


def _encode_frame(df: pd.DataFrame, where: str) -> dict[str, Any]:
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"SensitivityResult.{where} is a {type(df).__name__}, not a DataFrame")
    return {
        "index": _encode_index(df.index, f"{where}.index"),
        "columns": _encode_index(df.columns, f"{where}.columns"),
        "dtypes": [str(t) for t in df.dtypes],
        "data": [
            _to_json_value(df.iloc[:, i].tolist(), f"{where}[{df.columns[i]!r}]") for i in range(df.shape[1])
        ],
    }


def _decode_frame(obj: dict[str, Any]) -> pd.DataFrame:
    index = _decode_index(obj["index"])
    columns = _decode_index(obj["columns"])
    data, dtypes = obj["data"], obj["dtypes"]
    if not (len(data) == len(dtypes) == len(columns)):
        raise ValueError(f"{len(columns)} columns, {len(dtypes)} dtypes and {len(data)} data columns")
    series = {}
    for i, (values, dtype) in enumerate(zip(data, dtypes, strict=True)):
        values = _from_json_value(values)
        if len(values) != len(index):
            raise ValueError(f"column {columns[i]!r} has {len(values)} values for {len(index)} rows")
        series[i] = pd.Series(values, dtype=dtype, index=index)
    df = pd.DataFrame(series, index=index)
    df.columns = columns
    return df


# --------------------------------------------------------------------------------------------- config


def _as_tuple(value: Any, name: str) -> tuple:
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise ValueError(f"SensitivityConfig.{name} must be a sequence, got {value!r}")
    return tuple(value)


def _check_bits(values: tuple, name: str, *, allow_empty: bool) -> tuple[int, ...]:
    if not values and not allow_empty:
        raise ValueError(f"SensitivityConfig.{name} must not be empty; valid bits: {list(INT_BITS)}")
    bad = [
        b for b in values if isinstance(b, bool) or not isinstance(b, int | np.integer) or b not in INT_BITS
    ]
    if bad:
        raise ValueError(f"SensitivityConfig.{name} has unsupported bits {bad}; valid bits: {list(INT_BITS)}")
    return tuple(sorted({int(b) for b in values}))


@dataclass(frozen=True)
class SensitivityConfig:
    """Knobs of :func:`analyze_sensitivity` (defaults work on the digits task).

    ``w_bits`` / ``a_bits``: candidate integer bits of the weight / activation probes (valid: 2, 3, 4, 5, 6, 8;
    ``a_bits=()`` skips activation probes). ``granularities``: weight granularities probed ("per_tensor",
    "per_channel"); activation probes are per tensor. ``metrics``: registered metric names
    (:func:`available_metrics`). ``calib_batches``: calibration batches used by the probes, the Hessian and
    the Fisher scores; ``val_batches``: validation batches of ``acc_drop`` (None: all).
    ``hutchinson_*``: the trace estimator stops for a layer when the relative change of its running mean stayed
    below ``hutchinson_tol`` for ``hutchinson_window`` consecutive iterations (after at least ``min_iter``), or
    at ``max_iter``. ``per_channel``: also fill the per-output-channel table. ``cost_metric``: the per-bit
    weight metric the cost-benefit table divides by (None: no cost-benefit table); ``reference_bits``: the
    precision savings are counted from. ``base_spec``: observer / symmetry / ... of the probes (its bits and
    granularity are replaced by each probe's). ``probe_cache_mb``: memory for the FP32 activations that probes
    reuse upstream of the probed layer (models traceable by torch.fx without in-place ops; 0 disables it, then
    every probe runs the whole model; the results are the same). ``num_threads``: torch intra-op threads during
    the analysis (restored afterwards; None leaves torch's setting; 1 is much faster on a CPU shared with other
    busy processes). ``seed``: Hutchinson vectors and observers.
    """

    w_bits: tuple[int, ...] = (2, 3, 4, 6, 8)
    a_bits: tuple[int, ...] = (4, 6, 8)
    granularities: tuple[str, ...] = ("per_tensor", "per_channel")
    metrics: tuple[str, ...] = ("output_mse", "output_kl", "acc_drop", "hessian", "fisher")
    calib_batches: int = 2
    val_batches: int | None = None
    hutchinson_tol: float = 1e-2
    hutchinson_max_iter: int = 100
    hutchinson_min_iter: int = 8
    hutchinson_window: int = 3
    seed: int = 0
    per_channel: bool = True
    cost_metric: str | None = "output_mse"
    reference_bits: int = 8
    base_spec: QuantSpec = field(default_factory=QuantSpec)
    probe_cache_mb: float = 512.0
    num_threads: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "w_bits", _check_bits(_as_tuple(self.w_bits, "w_bits"), "w_bits", allow_empty=False))
        set_(self, "a_bits", _check_bits(_as_tuple(self.a_bits, "a_bits"), "a_bits", allow_empty=True))
        grans = tuple(dict.fromkeys(_as_tuple(self.granularities, "granularities")))
        bad = [g for g in grans if g not in PROBE_GRANULARITIES]
        if not grans or bad:
            raise ValueError(
                f"SensitivityConfig.granularities={list(grans)} is not valid; choose from {list(PROBE_GRANULARITIES)}"
            )
        set_(self, "granularities", grans)
        metrics = tuple(dict.fromkeys(_as_tuple(self.metrics, "metrics")))
        if not metrics:
            raise ValueError(f"SensitivityConfig.metrics must not be empty; available: {available_metrics()}")
        for name in metrics:
            get_metric(name)  # raises naming the available metrics
        set_(self, "metrics", metrics)
        for name in ("calib_batches", "hutchinson_max_iter", "hutchinson_min_iter", "hutchinson_window"):
            _check_positive_int(getattr(self, name), name)
        if self.val_batches is not None:
            _check_positive_int(self.val_batches, "val_batches")
        if self.hutchinson_min_iter > self.hutchinson_max_iter:
            raise ValueError(
                f"SensitivityConfig.hutchinson_min_iter={self.hutchinson_min_iter} exceeds "
                f"hutchinson_max_iter={self.hutchinson_max_iter}"
            )
        if not (isinstance(self.hutchinson_tol, int | float) and self.hutchinson_tol >= 0):
            raise ValueError(
                f"SensitivityConfig.hutchinson_tol must be a number >= 0, got {self.hutchinson_tol!r}"
            )
        if self.reference_bits not in INT_BITS:
            raise ValueError(
                f"SensitivityConfig.reference_bits={self.reference_bits!r} is not supported; valid bits: "
                f"{list(INT_BITS)}"
            )
        if not isinstance(self.base_spec, QuantSpec):
            raise ValueError(
                f"SensitivityConfig.base_spec must be a QuantSpec, got {type(self.base_spec).__name__}"
            )
        if not (isinstance(self.probe_cache_mb, int | float) and self.probe_cache_mb >= 0):
            raise ValueError(
                f"SensitivityConfig.probe_cache_mb must be a number >= 0, got {self.probe_cache_mb!r}"
            )
        if self.num_threads is not None:
            _check_positive_int(self.num_threads, "num_threads")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"SensitivityConfig.seed must be an int, got {self.seed!r}")
        if self.cost_metric is not None:
            per_bit = self.per_bit_weight_metrics()
            if self.cost_metric not in per_bit:
                raise ValueError(
                    f"SensitivityConfig.cost_metric={self.cost_metric!r} is not a per-bit weight metric produced "
                    f"by metrics={list(self.metrics)}; choose one of {per_bit} or None"
                )

    def per_bit_weight_metrics(self) -> list[str]:
        """Table metric names with per-w_bits weight rows that the selected metrics produce."""
        out: list[str] = []
        for name in self.metrics:
            cls = METRICS[name]
            if cls.kind in ("probe", "weight"):
                out.extend(n for n in cls.outputs() if n not in cls.layer_outputs)
        return out

    def weight_spec(self, bits: int, granularity: str) -> QuantSpec:
        """The spec of a weight probe: ``base_spec`` with these weight bits and granularity, float activations."""
        return self.base_spec.with_(
            w_bits=bits, a_bits=FLOAT_BITS, granularity=granularity, group_size=None, channel_bits=None
        )

    def activation_spec(self, bits: int) -> QuantSpec:
        """The spec of an activation probe: ``base_spec`` with these activation bits, float weights."""
        return self.base_spec.with_(
            w_bits=FLOAT_BITS, a_bits=bits, granularity="per_tensor", group_size=None, channel_bits=None
        )


def _check_positive_int(value: Any, name: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"SensitivityConfig.{name} must be an int >= 1, got {value!r}")


# --------------------------------------------------------------------------------------------- metrics


@dataclass
class MetricOutput:
    """What a metric returns: table rows, per-layer statistics and per-channel rows."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    layer_stats: dict[str, dict[str, float]] = field(default_factory=dict)
    channel_rows: list[dict[str, Any]] = field(default_factory=list)

    def add(
        self,
        layer: str,
        value: float,
        *,
        metric: str,
        kind: str = "layer",
        granularity: str = "per_tensor",
        w_bits: int = FLOAT_BITS,
        a_bits: int = FLOAT_BITS,
    ) -> None:
        """Append one table row (op_type and depth are filled in by :func:`analyze_sensitivity`)."""
        if kind not in ROW_KINDS:
            raise ValueError(f"row kind {kind!r} is not valid; choose one of {list(ROW_KINDS)}")
        self.rows.append(
            {
                "layer": layer,
                "metric": metric,
                "kind": kind,
                "granularity": granularity,
                "w_bits": int(w_bits),
                "a_bits": int(a_bits),
                "value": float(value),
            }
        )

    def add_layer_stat(self, layer: str, column: str, value: float) -> None:
        """Set a column of the per-layer table."""
        self.layer_stats.setdefault(layer, {})[column] = value

    def add_channels(
        self, layer: str, values: Sequence[float], *, metric: str, w_bits: int = FLOAT_BITS
    ) -> None:
        """Append one per-channel row per entry of ``values`` (channel index = position)."""
        for c, v in enumerate(values):
            self.channel_rows.append(
                {"layer": layer, "channel": c, "metric": metric, "w_bits": int(w_bits), "value": float(v)}
            )

    def extend(self, other: MetricOutput) -> None:
        self.rows.extend(other.rows)
        for layer, stats in other.layer_stats.items():
            self.layer_stats.setdefault(layer, {}).update(stats)
        self.channel_rows.extend(other.channel_rows)


class SensitivityMetric:
    """Base class of a sensitivity metric, selected by ``name`` in :class:`SensitivityConfig`.

    ``kind``: "probe" (one value per single-layer weight and activation probe; see :class:`OutputMetric`),
    "weight" (per weight bits and granularity), "activation" or "layer" (precision-free). ``produces``: the
    table metric names it writes (default ``(name,)``); ``layer_outputs``: those among them that are
    precision-free. ``needs_labels``: the metric uses the targets of the batches (a loss or an accuracy);
    analyses of data without labels refuse it. Subclasses implement :meth:`compute` and are registered with
    :func:`register_metric`.
    """

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "layer"
    produces: ClassVar[tuple[str, ...]] = ()
    layer_outputs: ClassVar[tuple[str, ...]] = ()
    description: ClassVar[str] = ""
    needs_labels: ClassVar[bool] = False

    @classmethod
    def outputs(cls) -> tuple[str, ...]:
        """Table metric names this metric writes."""
        return cls.produces or (cls.name,)

    def compute(self, ctx: SensitivityContext) -> MetricOutput:
        """Measure every layer of ``ctx`` (private model copies, data, shared estimators)."""
        raise NotImplementedError


class OutputMetric(SensitivityMetric):
    """A probe metric: compares the logits of the model with one layer quantized against the FP32 logits.

    ``split``: the data the logits come from ("calib" or "val"). Subclasses implement :meth:`score`; all output
    metrics of one analysis share the same forward passes.
    """

    kind: ClassVar[str] = "probe"
    split: ClassVar[str] = "calib"

    def score(self, reference: Tensor, quantized: Tensor, targets: Tensor | None) -> float:
        """Sensitivity of one probe from FP32 ``reference`` and ``quantized`` logits ``[N, classes]`` (the
        model's :func:`~workbench.quant.inputs.primary_output`, concatenated over the batches) and the
        ``targets`` ``[N]`` of the split (None for data without labels; higher = more sensitive)."""
        raise NotImplementedError

    def compute(self, ctx: SensitivityContext) -> MetricOutput:
        return ctx.run_probes([self])


METRICS: dict[str, type[SensitivityMetric]] = {}
"""Registered metrics by name (see :func:`register_metric`)."""


def register_metric(cls: type[SensitivityMetric]) -> type[SensitivityMetric]:
    """Class decorator: make a :class:`SensitivityMetric` subclass selectable by its ``name``.

    Re-registering the same class (same module and qualified name, e.g. a re-run notebook cell) replaces it;
    another class with a taken name raises (free it with :func:`unregister_metric`).
    """
    if not (isinstance(cls, type) and issubclass(cls, SensitivityMetric)):
        raise TypeError(f"register_metric expects a SensitivityMetric subclass, got {cls!r}")
    name = cls.name
    if not isinstance(name, str) or not name:
        raise ValueError(f"{cls.__qualname__}.name must be a non-empty string, got {name!r}")
    if cls.kind not in METRIC_KINDS:
        raise ValueError(
            f"{cls.__qualname__}.kind={cls.kind!r} is not valid; choose one of {list(METRIC_KINDS)}"
        )
    if issubclass(cls, OutputMetric) and cls.split not in SPLITS:
        raise ValueError(f"{cls.__qualname__}.split={cls.split!r} is not valid; choose one of {list(SPLITS)}")
    old = METRICS.get(name)
    if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ValueError(
            f"metric name {name!r} is taken by {old.__module__}.{old.__qualname__}; "
            "pick another name or unregister_metric it first"
        )
    METRICS[name] = cls
    return cls


def unregister_metric(name: str) -> None:
    """Remove a registered metric (ValueError naming the available ones if absent)."""
    get_metric(name)
    del METRICS[name]


def available_metrics() -> list[str]:
    """Names of the registered metrics."""
    return sorted(METRICS)


def get_metric(name: str) -> SensitivityMetric:
    """A fresh instance of the metric registered as ``name``."""
    if name not in METRICS:
        raise ValueError(f"unknown sensitivity metric {name!r}; available: {available_metrics()}")
    return METRICS[name]()


@register_metric
class OutputMSE(OutputMetric):
    """Mean squared error of the logits against FP32 on the calibration batches."""

    name = "output_mse"
    description = "MSE of the final logits against FP32 (calibration data)"

    def score(self, reference: Tensor, quantized: Tensor, targets: Tensor) -> float:
        return float((quantized.double() - reference.double()).pow(2).mean())


@register_metric
class OutputKL(OutputMetric):
    """KL(FP32 softmax || quantized softmax) of the logits, averaged over calibration samples."""

    name = "output_kl"
    description = "KL(FP32 softmax || quantized softmax), mean over samples (calibration data)"

    def score(self, reference: Tensor, quantized: Tensor, targets: Tensor) -> float:
        log_p = F.log_softmax(reference.double(), dim=1)
        log_q = F.log_softmax(quantized.double(), dim=1)
        return float(F.kl_div(log_q, log_p, log_target=True, reduction="batchmean"))


@register_metric
class AccuracyDrop(OutputMetric):
    """Top-1 accuracy drop (percentage points) on the validation split against the FP32 model: the metric loss
    (FP32 metric minus metric) of labelled top-1 accuracy on the chosen output."""

    name = "acc_drop"
    split = "val"
    description = "top-1 accuracy drop in percentage points (validation data)"
    needs_labels = True

    def score(self, reference: Tensor, quantized: Tensor, targets: Tensor) -> float:
        ref = (reference.argmax(dim=1) == targets).double().mean()
        q = (quantized.argmax(dim=1) == targets).double().mean()
        return float(100.0 * (ref - q))


@register_metric
class HessianMetric(SensitivityMetric):
    """Hutchinson Hessian trace per layer weight and the HAWQ-V2 sensitivity
    ``omega = (trace / numel) * ||W - Q(W)||^2`` (the average trace, as in HAWQ-V2 eq. 5: the expected
    second-order loss change of a perturbation of that norm spread evenly over the weights).

    Table rows: ``hessian_trace`` (kind "layer") and ``omega`` (kind "weight", per bits and granularity).
    Per-layer columns: hessian_trace, hessian_trace_per_param, hutchinson_iters. Per-channel rows:
    ``hessian_trace`` (w_bits 32) and ``omega`` per weight bits with per-channel quantization
    (``(channel trace / params per channel) * ||W_c - Q(W_c)||^2``).
    """

    name = "hessian"
    kind = "weight"
    needs_labels = True
    produces = ("omega", "hessian_trace")
    layer_outputs = ("hessian_trace",)
    description = "Hutchinson Hessian trace and HAWQ-V2 omega = trace / numel * ||W - Q(W)||^2"

    def compute(self, ctx: SensitivityContext) -> MetricOutput:
        hutch = ctx.hutchinson()
        cfg = ctx.config
        out = MetricOutput()
        for info in ctx.layers:
            name = info.name
            w = ctx.weight(name)
            trace = hutch.trace[name]
            mean_trace = trace / w.numel()
            out.add(name, trace, metric="hessian_trace")
            out.add_layer_stat(name, "hessian_trace", trace)
            out.add_layer_stat(name, "hessian_trace_per_param", mean_trace)
            out.add_layer_stat(name, "hutchinson_iters", hutch.iterations[name])
            for gran in cfg.granularities:
                for b in cfg.w_bits:
                    err = float((quantize_weight(w, cfg.weight_spec(b, gran)) - w).double().pow(2).sum())
                    out.add(name, mean_trace * err, metric="omega", kind="weight", granularity=gran, w_bits=b)
            if cfg.per_channel:
                ch_trace = hutch.channel_trace[name]
                ch_mean = ch_trace / (w.numel() // w.shape[0])
                out.add_channels(name, ch_trace, metric="hessian_trace")
                for b in cfg.w_bits:
                    diff = quantize_weight(w, cfg.weight_spec(b, "per_channel")) - w
                    err_c = diff.double().pow(2).reshape(w.shape[0], -1).sum(dim=1).cpu().numpy()
                    out.add_channels(name, ch_mean * err_c, metric="omega", w_bits=b)
        return out


@register_metric
class FisherMetric(SensitivityMetric):
    """Mean over calibration samples of ``||dL/dy||^2`` of each layer's output ``y`` (cross-entropy loss).

    Table rows: ``fisher`` (kind "layer"); per-layer column ``fisher``; per-channel rows ``fisher`` (the same
    sum restricted to one output channel; the channels add up to the layer's value).
    """

    name = "fisher"
    kind = "layer"
    description = "mean over samples of the squared gradient norm of the layer output"
    needs_labels = True

    def compute(self, ctx: SensitivityContext) -> MetricOutput:
        layer_names = [info.name for info in ctx.layers]
        total, per_channel = fisher_scores(
            ctx.float_model, layer_names, ctx.batches("calib"), output_key=ctx.output_key
        )
        out = MetricOutput()
        for name in layer_names:
            out.add(name, total[name], metric="fisher")
            out.add_layer_stat(name, "fisher", total[name])
            if ctx.config.per_channel:
                out.add_channels(name, per_channel[name], metric="fisher")
        return out


# --------------------------------------------------------------------------------------------- estimators


@dataclass(frozen=True)
class HutchinsonResult:
    """Hutchinson estimates per layer: weight Hessian trace, per-output-channel traces (they sum to the
    trace), iterations used and whether the stopping rule was met before ``max_iter``."""

    trace: dict[str, float]
    channel_trace: dict[str, np.ndarray]
    iterations: dict[str, int]
    converged: dict[str, bool]


def _split_batch(batch: Any) -> tuple[Any, Tensor | None]:
    """``(inputs, targets)``: inputs as they come (a tensor, a tuple or a dict of tensors), targets a tensor or
    None."""
    x, y = split_batch(batch)
    return x, (y if isinstance(y, Tensor) else None)


def _device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _labelled(batches: Sequence[Any], what: str) -> list[tuple[Any, Tensor]]:
    out = []
    for batch in batches:
        x, y = _split_batch(batch)
        if y is None:
            raise ValueError(f"{what} needs (inputs, targets) batches; got batches without targets")
        out.append((x, y))
    if sum(int(y.shape[0]) for _, y in out) < 2:
        raise ValueError(
            f"{what} needs at least 2 labelled samples, got {sum(int(y.shape[0]) for _, y in out)}"
        )
    return out


def _inputs_batches(batches: Sequence[Any], what: str) -> list[tuple[Any, Tensor | None]]:
    """``(inputs, targets)`` per batch, targets None where the batches have none (label-free metrics)."""
    out = [_split_batch(batch) for batch in batches]
    n = sum(batch_size(x) for x, _ in out)
    if n < 2:
        labelled = "labelled " if all(y is not None for _, y in out) else ""
        raise ValueError(f"{what} needs at least 2 {labelled}samples, got {n}")
    return out


def _n_samples(batches: Sequence[tuple[Any, Tensor | None]]) -> int:
    return int(sum(batch_size(x) for x, _ in batches))


def _grad_inputs(x: Any, device: torch.device) -> Any:
    """``x`` on ``device``; float tensors detached and requiring grad (token ids and masks stay as they are)."""
    return map_inputs(
        move_inputs(x, device), lambda t: t.detach().requires_grad_(True) if t.is_floating_point() else t
    )


def _weights(model: nn.Module, layers: Sequence[str]) -> list[Tensor]:
    names = {n for n, _ in model.named_modules()}
    missing = [n for n in layers if n not in names]
    if missing:
        raise ValueError(f"layers {missing} are not modules of the model")
    return [model.get_submodule(n).weight for n in layers]


def hutchinson_trace(
    model: nn.Module,
    layers: Sequence[str],
    batches: Sequence[Any],
    *,
    tol: float = 1e-2,
    max_iter: int = 100,
    min_iter: int = 8,
    window: int = 3,
    seed: int = 0,
    loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
    progress: bool = False,
    output_key: str | int | None = None,
) -> HutchinsonResult:
    """Trace of the Hessian of the mean loss over ``batches`` w.r.t. each layer's weight (Hutchinson, HAWQ-V2).

    Each iteration draws one Rademacher vector ``v`` over all the layers' weights (seeded) and computes ``Hv``
    by double backward; ``v_l . (Hv)_l`` is an unbiased sample of layer ``l``'s block trace (the cross-layer
    terms have zero mean; converged layers get ``v_l = 0`` so they stop adding to the others' variance). A layer
    stops once ``min_iter`` samples are in and the relative change of its running mean stayed below ``tol`` for
    ``window`` consecutive iterations; all stop at ``max_iter``. The loss is taken on the output ``output_key``
    chooses (see :func:`~workbench.quant.inputs.primary_output`). The model runs in eval mode; its parameters,
    gradients and training flags are left as they were.
    """
    if not layers:
        raise ValueError("hutchinson_trace needs at least one layer")
    if max_iter < 1 or min_iter < 1 or window < 1:
        raise ValueError(f"max_iter, min_iter and window must be >= 1, got {max_iter}, {min_iter}, {window}")
    data = _labelled(batches, "the Hessian trace estimator")
    params = _weights(model, layers)
    device = _device(model)
    n_total = sum(int(y.shape[0]) for _, y in data)
    modes = {m: m.training for m in model.modules()}
    flags = [p.requires_grad for p in params]
    model.eval()
    try:
        for p in params:
            p.requires_grad_(True)
        grads = []
        for x, y in data:
            out = primary_output(call_model(model, move_inputs(x, device)), key=output_key)
            loss = loss_fn(out, y.to(device)) * (y.shape[0] / n_total)
            grads.append(torch.autograd.grad(loss, params, create_graph=True))
        return _hutchinson_loop(
            list(layers), params, grads, tol=tol, max_iter=max_iter, min_iter=min_iter, window=window,
            seed=seed, progress=progress,
        )  # fmt: skip
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
        for m, mode in modes.items():
            m.training = mode


def _hessian_vector(
    params: list[Tensor], grads: list[tuple[Tensor, ...]], v: list[Tensor | None]
) -> list[Tensor]:
    """``H v`` summed over the batches' gradient graphs; entries of ``v`` that are None count as zero."""
    hv = [torch.zeros_like(p) for p in params]
    for g in grads:
        idx = [i for i, gi in enumerate(g) if gi.requires_grad and v[i] is not None]
        if not idx:
            continue
        parts = torch.autograd.grad(
            [g[i] for i in idx],
            params,
            grad_outputs=[v[i] for i in idx],
            retain_graph=True,
            allow_unused=True,
        )
        for i, part in enumerate(parts):
            if part is not None:
                hv[i] += part
    return hv


def _hutchinson_loop(
    layers: list[str],
    params: list[Tensor],
    grads: list[tuple[Tensor, ...]],
    *,
    tol: float,
    max_iter: int,
    min_iter: int,
    window: int,
    seed: int,
    progress: bool,
) -> HutchinsonResult:
    from tqdm.auto import tqdm

    gen = torch.Generator().manual_seed(seed)
    n_layers = len(layers)
    sums = np.zeros(n_layers)
    chan_sums = [np.zeros(p.shape[0]) for p in params]
    counts = np.zeros(n_layers, dtype=int)
    calm = np.zeros(n_layers, dtype=int)  # consecutive iterations with a small relative change
    active = np.ones(n_layers, dtype=bool)
    bar = tqdm(total=max_iter, desc="hutchinson", leave=False, disable=not progress)
    try:
        for _ in range(max_iter):
            signs = [torch.randint(0, 2, p.shape, generator=gen, dtype=torch.int8) * 2 - 1 for p in params]
            # converged layers get v = 0: their cross terms stop adding variance to the others' estimates
            v = [
                sg.to(p.dtype).to(p.device) if active[i] else None
                for i, (sg, p) in enumerate(zip(signs, params))
            ]
            hv = _hessian_vector(params, grads, v)
            for i in np.flatnonzero(active):
                prod = (v[i] * hv[i]).detach().double().cpu()  # type: ignore[operator]
                prev = sums[i] / counts[i] if counts[i] else None
                sums[i] += float(prod.sum())
                chan_sums[i] += prod.reshape(prod.shape[0], -1).sum(dim=1).numpy()
                counts[i] += 1
                mean = sums[i] / counts[i]
                if prev is not None:
                    change = abs(mean - prev) / max(abs(mean), 1e-30)
                    calm[i] = calm[i] + 1 if change < tol else 0
                if counts[i] >= min_iter and calm[i] >= window:
                    active[i] = False
            bar.update(1)
            bar.set_postfix(active=int(active.sum()))
            if not active.any():
                break
    finally:
        bar.close()
    return HutchinsonResult(
        trace={name: float(sums[i] / counts[i]) for i, name in enumerate(layers)},
        channel_trace={name: chan_sums[i] / counts[i] for i, name in enumerate(layers)},
        iterations={name: int(counts[i]) for i, name in enumerate(layers)},
        converged={name: bool(not active[i]) for i, name in enumerate(layers)},
    )


def fisher_scores(
    model: nn.Module,
    layers: Sequence[str],
    batches: Sequence[Any],
    *,
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    output_key: str | int | None = None,
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Mean over samples of ``||dL_i/dy_i||^2`` for each layer output ``y`` (per-sample cross-entropy ``L_i``),
    and the same per output channel (dim 1 of ``y``; the channels sum to the layer's value).

    ``loss_fn(logits, targets)`` must return the *sum* of per-sample losses (default cross-entropy with
    ``reduction="sum"``) so that each sample's output gradient is its own loss's gradient; it gets the output
    ``output_key`` chooses (see :func:`~workbench.quant.inputs.primary_output`). The model runs in eval mode;
    nothing of it is changed.
    """
    loss_fn = loss_fn or (lambda logits, y: F.cross_entropy(logits, y, reduction="sum"))
    data = _labelled(batches, "the Fisher score")
    modules = [(name, model.get_submodule(name)) for name in layers]
    device = _device(model)
    totals = {name: 0.0 for name in layers}
    channels: dict[str, np.ndarray | None] = {name: None for name in layers}
    n = 0
    outputs: list[tuple[str, Tensor]] = []

    def hook(name: str):
        def record(_m: nn.Module, _inputs: Any, out: Tensor) -> Tensor:
            outputs.append((name, out))
            return out.clone()  # downstream in-place ops (ReLU(inplace=True)) change the copy, not out

        return record

    modes = {m: m.training for m in model.modules()}
    model.eval()
    handles = [mod.register_forward_hook(hook(name)) for name, mod in modules]
    try:
        for x, y in data:
            outputs.clear()
            with torch.enable_grad():
                x = _grad_inputs(x, device)
                loss = loss_fn(primary_output(call_model(model, x), key=output_key), y.to(device))
                grads = torch.autograd.grad(loss, [o for _, o in outputs], allow_unused=True)
            for (name, out), g in zip(outputs, grads):
                sq = (torch.zeros_like(out) if g is None else g).detach().double().pow(2).cpu()
                sq = sq if sq.dim() > 1 else sq.unsqueeze(1)
                per_ch = sq.sum(dim=0).reshape(sq.shape[1], -1).sum(dim=1).numpy()
                totals[name] += float(sq.sum())
                channels[name] = per_ch if channels[name] is None else channels[name] + per_ch
            n += int(y.shape[0])
    finally:
        for h in handles:
            h.remove()
        outputs.clear()
        for m, mode in modes.items():
            m.training = mode
    unused = [name for name in layers if channels[name] is None]
    if unused:
        raise ValueError(f"layers {unused} were not called in the forward pass")
    return (
        {name: totals[name] / n for name in layers},
        {name: channels[name] / n for name in layers},  # type: ignore[operator]
    )


# --------------------------------------------------------------------------------------------- context


@dataclass(frozen=True)
class LayerInfo:
    """A quantizable layer: module path, type, forward-order index and static cost."""

    name: str
    op_type: str
    depth: int
    params: int
    weight_params: int
    out_channels: int
    macs: int


@dataclass(frozen=True)
class Probe:
    """One single-layer probe: ``spec`` applied to ``layer`` only."""

    layer: str
    kind: str
    granularity: str
    w_bits: int
    a_bits: int
    spec: QuantSpec


def _tensor_bytes(t: Tensor) -> bytes:
    t = t.detach().cpu().contiguous().reshape(-1)
    return t.view(torch.uint8).numpy().tobytes() if t.numel() else b""


def _take(loader: Iterable, n: int | None) -> list[Any]:
    out = []
    for batch in loader:
        if n is not None and len(out) >= n:
            break
        out.append(batch)
    return out


_INPLACE_FUNCTIONS = {
    operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.ifloordiv, operator.imod,
    operator.ipow, operator.iand, operator.ior, operator.ixor, operator.ilshift, operator.irshift,
    operator.imatmul, operator.setitem,
}  # fmt: skip


class _GraphRunner:
    """Runs a torch.fx-traced model, or only the part of it downstream of one layer with the FP32 values
    upstream taken from a cache (a probe changes one layer, so everything before it is unchanged).

    Built only for single-input graphs without in-place operations (see :meth:`build`); executing the same
    nodes in the same order on the same values gives the same logits as the full forward pass.
    """

    def __init__(self, gm: torch.fx.GraphModule, layers: Sequence[str]) -> None:
        self.gm = gm
        nodes = list(gm.graph.nodes)
        order = {n: i for i, n in enumerate(nodes)}
        self.nodes = nodes
        self.cones: dict[str, list[torch.fx.Node]] = {}
        needed: set[torch.fx.Node] = set()
        for layer in layers:
            cone: set[torch.fx.Node] = set()
            stack = [n for n in nodes if n.op == "call_module" and n.target == layer]
            while stack:
                n = stack.pop()
                if n not in cone:
                    cone.add(n)
                    stack.extend(n.users)
            self.cones[layer] = sorted(cone, key=order.__getitem__)
            needed.update(i for n in cone for i in n.all_input_nodes if i not in cone)
        self.needed = needed

    @staticmethod
    def build(model: nn.Module, layers: Sequence[str]) -> _GraphRunner | None:
        """A runner for ``model``, or None when it cannot be traced, has several inputs or in-place ops."""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                gm = torch.fx.symbolic_trace(model)
        except Exception:  # noqa: BLE001 - untraceable models run whole
            return None
        nodes = list(gm.graph.nodes)
        if sum(n.op == "placeholder" for n in nodes) != 1 or any(_is_inplace(gm, n) for n in nodes):
            return None
        return _GraphRunner(gm, layers)

    def _execute(
        self, nodes: Iterable[torch.fx.Node], env: dict[torch.fx.Node, Any], x: Tensor | None
    ) -> Any:
        for node in nodes:
            args = torch.fx.node.map_arg(node.args, env.__getitem__)
            kwargs = torch.fx.node.map_arg(node.kwargs, env.__getitem__)
            if node.op == "placeholder":
                env[node] = x
            elif node.op == "get_attr":
                obj: Any = self.gm
                for part in str(node.target).split("."):
                    obj = getattr(obj, part)
                env[node] = obj
            elif node.op == "call_module":
                env[node] = self.gm.get_submodule(str(node.target))(*args, **kwargs)
            elif node.op == "call_function":
                env[node] = node.target(*args, **kwargs)  # type: ignore[operator]
            elif node.op == "call_method":
                env[node] = getattr(args[0], str(node.target))(*args[1:], **kwargs)
            elif node.op == "output":
                return args[0]
        raise RuntimeError("the traced graph has no output node")

    @torch.no_grad()
    def record(self, x: Any) -> tuple[Any, dict[torch.fx.Node, Any]]:
        """Full forward pass: the output and the values that some probe reuses. ``x``: the one input, as a
        tensor, a 1-tuple or a 1-key dict naming the forward's argument."""
        if isinstance(x, dict):
            bound = inspect.signature(self.gm.forward).bind(**x)
            bound.apply_defaults()
            (x,) = bound.args
        elif isinstance(x, (tuple, list)):
            (x,) = x
        env: dict[torch.fx.Node, Any] = {}
        out = self._execute(self.nodes, env, x)
        return out, {n: env[n] for n in self.needed}

    @torch.no_grad()
    def run(self, layer: str, cache: dict[torch.fx.Node, Any], reference: Tensor) -> Any:
        """The logits with only ``layer``'s downstream cone re-executed (``reference`` if the cone misses the
        output)."""
        cone = self.cones[layer]
        if not cone or cone[-1].op != "output":
            return reference
        return self._execute(cone, dict(cache), None)


def _is_inplace(gm: torch.fx.GraphModule, node: torch.fx.Node) -> bool:
    if node.kwargs.get("inplace", False):
        return True
    if node.op == "call_module":
        return bool(getattr(gm.get_submodule(str(node.target)), "inplace", False))
    if node.op == "call_function":
        return node.target in _INPLACE_FUNCTIONS
    if node.op == "call_method":
        return str(node.target).endswith("_") and not str(node.target).startswith("__")
    return False


def _nbytes(value: Any) -> int:
    if isinstance(value, Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, list | tuple):
        return sum(_nbytes(v) for v in value)
    return 0


class SensitivityContext:
    """What metrics see during one analysis: private model copies, layers, data, FP32 references, shared
    estimators (the Hutchinson estimate is computed once and shared). Built by :func:`analyze_sensitivity`.

    ``float_model``: unfolded float copy (Hessian, Fisher, weights); ``probe_model``: copy with BatchNorm folded
    (probes). Both are in eval mode; the task's model is never touched. ``output_key``: the task's choice of
    output tensor (None: :func:`~workbench.quant.inputs.primary_output`'s default); every logits, reference and
    loss of the analysis uses it.
    """

    def __init__(
        self, task: Any, config: SensitivityConfig, *, calib: list[tuple[Any, Tensor | None]]
    ) -> None:
        self.task = task
        self.config = config
        self.output_key: str | int | None = getattr(task, "output_key", None)
        self.float_model = copy.deepcopy(task.model).eval()
        self.device = _device(self.float_model)
        self._batches: dict[str, list[tuple[Any, Tensor | None]]] = {"calib": calib}
        self._references: dict[str, Tensor] = {}
        self._probe_model: nn.Module | None = None
        self._runner: _GraphRunner | None = None
        self._caches: dict[str, list[dict[torch.fx.Node, Any]] | None] = {}
        self._batch_refs: dict[str, list[Tensor]] = {}
        self._hutchinson: HutchinsonResult | None = None
        self.folded_bn: list[tuple[str, str]] = []
        example = move_inputs(take_inputs(calib[0][0], 1), self.device)
        costs = layer_costs(self.float_model, example)  # insertion order = forward order
        if not costs:
            raise ValueError(
                f"{type(task.model).__name__} has no quantizable layers (Conv1d / Conv2d / Linear / Embedding) reached by the forward pass"
            )
        self.layers: list[LayerInfo] = [
            LayerInfo(
                name=c.name,
                op_type=c.op_type,
                depth=i,
                params=c.params,
                weight_params=c.weight_params,
                out_channels=c.out_channels,
                macs=c.macs,
            )
            for i, c in enumerate(costs.values())
        ]

    # -- data -------------------------------------------------------------------------------------------
    def batches(self, split: str) -> list[tuple[Any, Tensor | None]]:
        """``(inputs, targets)`` batches of ``split`` ("calib": the first ``calib_batches``; "val":
        ``val_batches``, which must have targets); targets are None for calibration data without labels."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {list(SPLITS)}")
        if split not in self._batches:
            loader = getattr(self.task, "val_loader", None)
            if loader is None:
                raise ValueError("the task has no val_loader (needed by the acc_drop metric)")
            self._batches[split] = _labelled(_take(loader, self.config.val_batches), "the validation split")
        return self._batches[split]

    def targets(self, split: str) -> Tensor | None:
        """Concatenated targets of ``split`` (None when its batches have none)."""
        ys = [y for _, y in self.batches(split)]
        return None if any(y is None for y in ys) else torch.cat(ys).cpu()  # type: ignore[arg-type]

    def weight(self, layer: str) -> Tensor:
        """The float (unfolded) weight of ``layer``, detached."""
        return self.float_model.get_submodule(layer).weight.detach()

    # -- models -----------------------------------------------------------------------------------------
    @property
    def probe_model(self) -> nn.Module:
        """A second private copy with every foldable Conv2d + BatchNorm2d pair folded (as quantize_model does);
        a torch.fx GraphModule when the model can be traced (so probes can reuse upstream activations)."""
        if self._probe_model is None:
            model = copy.deepcopy(self.float_model).eval()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # untraceable models keep their BatchNorm
                self.folded_bn = conv_bn_pairs(model)
            fold_batchnorm(model, self.folded_bn)
            self._runner = (
                _GraphRunner.build(model, [info.name for info in self.layers])
                if self.config.probe_cache_mb > 0
                else None
            )
            self._probe_model = self._runner.gm.eval() if self._runner is not None else model
        return self._probe_model

    @torch.no_grad()
    def logits(self, model: nn.Module, split: str) -> Tensor:
        """Concatenated logits (the :func:`~workbench.quant.inputs.primary_output`) of ``model`` over the batches
        of ``split`` (CPU float32)."""
        return torch.cat(
            [
                self.output(call_model(model, move_inputs(x, self.device))).float().cpu()
                for x, _ in self.batches(split)
            ]
        )

    def output(self, out: Any) -> Tensor:
        """The tensor of a model output that the analysis scores (``output_key``'s, else the primary one)."""
        return primary_output(out, key=self.output_key)

    def reference(self, split: str) -> Tensor:
        """FP32 logits of the (folded) probe model on ``split``."""
        if split not in self._references:
            self._record(split)
        return self._references[split]

    @torch.no_grad()
    def _record(self, split: str) -> None:
        model = self.probe_model
        runner = self._runner
        batches = self.batches(split)
        if runner is None:
            self._references[split] = self.logits(model, split)
            return
        budget = self.config.probe_cache_mb * 2**20
        outs: list[Tensor] = []
        caches: list[dict[torch.fx.Node, Any]] | None = []
        for x, _ in batches:
            out, cache = runner.record(move_inputs(x, self.device))
            out = self.output(out)
            outs.append(out)
            if caches is not None:
                caches.append(cache)
                if sum(_nbytes(v) for v in cache.values()) * len(batches) > budget:
                    caches = None  # too big to keep: probes of this split run the whole model
        self._batch_refs[split] = outs
        self._caches[split] = caches
        self._references[split] = torch.cat([o.float().cpu() for o in outs])

    @torch.no_grad()
    def probe_logits(self, layer: str, split: str) -> Tensor:
        """Logits of the probe model (with whatever is swapped in at ``layer``) on ``split``; only the part
        downstream of ``layer`` runs when upstream activations are cached."""
        self.reference(split)
        caches = self._caches.get(split)
        if self._runner is None or caches is None:
            return self.logits(self.probe_model, split)
        refs = self._batch_refs[split]
        return torch.cat(
            [self.output(self._runner.run(layer, c, r)).float().cpu() for c, r in zip(caches, refs)]
        )

    # -- probes -----------------------------------------------------------------------------------------
    def probes(self) -> list[Probe]:
        """Every single-layer probe: weight bits x granularities, then activation bits, per layer."""
        cfg = self.config
        out = []
        for info in self.layers:
            for gran in cfg.granularities:
                for b in cfg.w_bits:
                    out.append(Probe(info.name, "weight", gran, b, FLOAT_BITS, cfg.weight_spec(b, gran)))
            if info.op_type == "Embedding":  # weight-only: its input is token ids, never quantized
                continue
            for b in cfg.a_bits:
                out.append(
                    Probe(info.name, "activation", "per_tensor", FLOAT_BITS, b, cfg.activation_spec(b))
                )
        return out

    @torch.no_grad()
    def _act_quantizers(self, probes: Sequence[Probe]) -> dict[tuple[str, int], ActQuantizer]:
        """Activation quantizers of the activation probes, calibrated in one pass over the calibration batches
        on the layers' FP32 inputs (what :func:`workbench.quant.calibrate` would see for a one-layer plan)."""
        model = self.probe_model
        quantizers: dict[tuple[str, int], ActQuantizer] = {}
        for p in probes:
            if p.kind == "activation":
                q = ActQuantizer(p.spec, seed=self.config.seed).to(self.device)
                if q.needs_calibration:
                    q.start_observing()
                quantizers[(p.layer, p.a_bits)] = q
        observing = [(layer, q) for (layer, _), q in quantizers.items() if q.observing]
        if not observing:
            return quantizers
        by_layer: dict[str, list[ActQuantizer]] = {}
        for layer, q in observing:
            by_layer.setdefault(layer, []).append(q)

        def hook(qs: list[ActQuantizer]):
            def pre_hook(_m: nn.Module, inputs: tuple) -> None:
                for q in qs:
                    q(inputs[0])

            return pre_hook

        handles = [
            model.get_submodule(layer).register_forward_pre_hook(hook(qs)) for layer, qs in by_layer.items()
        ]
        try:
            for x, _ in self.batches("calib"):
                call_model(model, move_inputs(x, self.device))
        finally:
            for h in handles:
                h.remove()
        for _, q in observing:
            q.finish_observing()
        return quantizers

    def run_probes(self, metrics: Sequence[OutputMetric]) -> MetricOutput:
        """Run every probe once and score it with each output metric (forward passes shared)."""
        from tqdm.auto import tqdm

        out = MetricOutput()
        if not metrics:
            return out
        splits = sorted({m.split for m in metrics})
        refs = {s: self.reference(s) for s in splits}
        targets = {s: self.targets(s) for s in splits}
        probes = self.probes()
        act_q = self._act_quantizers(probes)
        model = self.probe_model
        names = "+".join(m.name for m in metrics)
        for p in tqdm(probes, desc=f"probes ({names})", leave=False, disable=not self.config.progress):
            original = model.get_submodule(p.layer)
            twin = _twin(original, p.spec, seed=self.config.seed)
            if p.kind == "activation":
                twin.a_quant = act_q[(p.layer, p.a_bits)]
            set_module(model, p.layer, twin)
            try:
                quantized = {s: self.probe_logits(p.layer, s) for s in splits}
            finally:
                set_module(model, p.layer, original)
            for m in metrics:
                value = m.score(refs[m.split], quantized[m.split], targets[m.split])
                out.add(
                    p.layer, value, metric=m.name, kind=p.kind, granularity=p.granularity,
                    w_bits=p.w_bits, a_bits=p.a_bits,
                )  # fmt: skip
        return out

    # -- shared estimators --------------------------------------------------------------------------------
    def hutchinson(self) -> HutchinsonResult:
        """The Hutchinson estimate over all layers (computed once per analysis)."""
        if self._hutchinson is None:
            cfg = self.config
            self._hutchinson = hutchinson_trace(
                self.float_model,
                [info.name for info in self.layers],
                self.batches("calib"),
                tol=cfg.hutchinson_tol,
                max_iter=cfg.hutchinson_max_iter,
                min_iter=cfg.hutchinson_min_iter,
                window=cfg.hutchinson_window,
                seed=cfg.seed,
                progress=cfg.progress,
                output_key=self.output_key,
            )
        return self._hutchinson


def _twin(module: nn.Module, spec: QuantSpec, *, seed: int) -> nn.Module:
    from workbench.quant.modules import quant_twin

    return quant_twin(module, spec, seed=seed).eval()


# --------------------------------------------------------------------------------------------- cost-benefit


def cost_benefit_table(
    result: SensitivityResult,
    *,
    metric: str = "output_mse",
    reference_bits: int = 8,
    granularity: str = "per_channel",
    base_spec: QuantSpec | None = None,
    eps: float = 1e-12,
) -> pd.DataFrame:
    """Per (layer, w_bits < reference_bits): what lowering the layer's weights from ``reference_bits`` to
    ``w_bits`` saves against what it costs.

    ``sensitivity``: ``metric`` at (w_bits, granularity) (negative values count as 0); ``bytes_saved``: weight
    storage saved (packed codes + scales, :func:`workbench.quant.spec.layer_weight_storage_bits`);
    ``bops_saved``: MACs x (reference_bits - w_bits) x reference activation bits (``reference_bits``);
    ``ratio = bytes_saved / (sensitivity + eps)`` and ``bops_ratio`` likewise. Sorted by ratio (best first),
    with ``rank`` 1..n.
    """
    if reference_bits not in INT_BITS:
        raise ValueError(f"reference_bits={reference_bits!r} is not supported; valid bits: {list(INT_BITS)}")
    base = base_spec or QuantSpec()
    sens = result.matrix(metric, kind="weight", granularity=granularity)
    layers = result.layers.set_index("layer")
    rows = []
    for layer in sens.index:
        info = layers.loc[layer]
        out_ch = int(info["out_channels"])
        shape = (out_ch, int(info["weight_params"]) // out_ch)
        ref_spec = base.with_(
            w_bits=reference_bits, granularity=granularity, group_size=None, channel_bits=None
        )
        ref_storage = layer_weight_storage_bits(ref_spec, shape)
        for b in sens.columns:
            if b >= reference_bits or pd.isna(sens.loc[layer, b]):
                continue
            spec = ref_spec.with_(w_bits=int(b))
            bytes_saved = (ref_storage - layer_weight_storage_bits(spec, shape)) / 8
            bops_saved = int(info["macs"]) * (reference_bits - int(b)) * reference_bits
            s = max(float(sens.loc[layer, b]), 0.0)
            rows.append(
                {
                    "layer": layer,
                    "op_type": info["op_type"],
                    "depth": int(info["depth"]),
                    "granularity": granularity,
                    "w_bits": int(b),
                    "metric": metric,
                    "sensitivity": float(sens.loc[layer, b]),
                    "bytes_saved": float(bytes_saved),
                    "bops_saved": float(bops_saved),
                    "ratio": bytes_saved / (s + eps),
                    "bops_ratio": bops_saved / (s + eps),
                }
            )
    df = pd.DataFrame(rows, columns=COST_BENEFIT_COLUMNS[:-1])
    df = df.sort_values(["ratio", "depth", "w_bits"], ascending=[False, True, False], kind="stable")
    df = df.reset_index(drop=True)
    df["rank"] = np.arange(1, len(df) + 1)
    return df


# --------------------------------------------------------------------------------------------- rank agreement


def rank_agreement(
    result: SensitivityResult,
    a: tuple[str, int | None] = ("omega", 4),
    b: tuple[str, int | None] = ("acc_drop", 4),
    *,
    granularity: str = "per_channel",
) -> dict[str, Any]:
    """Spearman and Kendall tau between two metrics' per-layer values, each given as ``(metric, bits)``
    (``bits`` None for precision-free metrics such as ``fisher``). Layers missing in either are dropped;
    a constant side gives NaN correlations."""
    from scipy import stats

    va = result.layer_values(a[0], bits=a[1], granularity=granularity)
    vb = result.layer_values(b[0], bits=b[1], granularity=granularity)
    both = pd.concat([va.rename("a"), vb.rename("b")], axis=1).dropna()
    out: dict[str, Any] = {"a": f"{a[0]}@{a[1]}", "b": f"{b[0]}@{b[1]}", "n_layers": len(both)}
    if len(both) < 2 or both["a"].nunique() < 2 or both["b"].nunique() < 2:
        return {
            **out,
            "spearman": math.nan,
            "spearman_p": math.nan,
            "kendall": math.nan,
            "kendall_p": math.nan,
        }
    sp = stats.spearmanr(both["a"], both["b"])
    kt = stats.kendalltau(both["a"], both["b"])
    return {
        **out,
        "spearman": float(sp.statistic),
        "spearman_p": float(sp.pvalue),
        "kendall": float(kt.statistic),
        "kendall_p": float(kt.pvalue),
    }


# --------------------------------------------------------------------------------------------- analysis


@contextlib.contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads (None: unchanged), restoring the previous count."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _check_task(task: Any) -> None:
    for attr in ("model", "calib_loader"):
        if getattr(task, attr, None) is None:
            raise ValueError(f"task must have a {attr!r} (a workbench.tasks.Task); got {type(task).__name__}")
    if not isinstance(task.model, nn.Module):
        raise ValueError(f"task.model must be a torch.nn.Module, got {type(task.model).__name__}")


def _inputs_bytes(h: Any, x: Any) -> None:
    """Feed inputs to hash ``h``: a tensor's bytes as they always were; a structure's leaves with their paths."""
    if isinstance(x, Tensor):
        h.update(_tensor_bytes(x))
        return
    for path, t in input_tensors(x):
        h.update(path.encode())
        h.update(_tensor_bytes(t))


def _cache_key(task: Any, config: SensitivityConfig, calib: list[tuple[Any, Tensor | None]]) -> str:
    import sys

    import workbench.quant
    from workbench.fingerprint import code_fingerprint

    h = hashlib.sha256()
    h.update(f"sensitivity-cache-v{CACHE_VERSION}\n".encode())
    # the quantization core and this module measure the values: a change to either gets a fresh key
    h.update(code_fingerprint("code", workbench.quant, sys.modules[__name__]).encode())
    h.update(f"{getattr(task, 'name', '')}\n{type(task.model).__qualname__}\n".encode())
    output_key = getattr(task, "output_key", None)
    if output_key is not None:  # another output gives other values (None keeps the keys cached so far)
        h.update(f"output_key={output_key!r}\n".encode())
    for key, value in task.model.state_dict().items():
        h.update(key.encode())
        h.update(str((tuple(value.shape), str(value.dtype))).encode())
        h.update(_tensor_bytes(value))
    cfg = asdict(config)
    for name in ("progress", "probe_cache_mb", "num_threads"):  # change speed, not results
        cfg.pop(name)
    h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    for name in config.metrics:  # a user metric edited in a notebook gets a new key
        cls = METRICS[name]
        h.update(f"{name}={cls.__module__}.{cls.__qualname__}\n".encode())
        with contextlib.suppress(OSError, TypeError):  # no source (e.g. a class typed into a REPL)
            h.update(inspect.getsource(cls).encode())
    for x, y in calib:
        _inputs_bytes(h, x)
        if y is not None:
            h.update(_tensor_bytes(y))
    if any(getattr(METRICS[m], "split", None) == "val" for m in config.metrics):
        val = getattr(task, "val_loader", None)
        dataset = getattr(val, "dataset", None)
        h.update(
            f"val:{len(dataset) if dataset is not None and hasattr(dataset, '__len__') else '?'}".encode()
        )
        for batch in _take(val, config.val_batches) if val is not None else []:
            x, y = _split_batch(batch)
            _inputs_bytes(h, x)
            if y is not None:
                h.update(_tensor_bytes(y))
    return h.hexdigest()[:20]


def _cache_path(key: str, cache_dir: str | os.PathLike[str] | None) -> Path:
    from workbench.paths import data_dir

    root = Path(cache_dir) if cache_dir is not None else data_dir() / "cache" / "sensitivity"
    return root / f"{key}.json"


def _load_cache(path: Path, key: str) -> SensitivityResult | None:
    """The cached result at ``path`` if it is whole, unedited and holds ``key``; else None, with a
    :class:`SensitivityCacheWarning` naming the file and the reason (the caller recomputes and replaces it).
    An old pickle cache file of the same key (``<key>.pkl``) is never unpickled: it is named and ignored."""
    legacy = path.with_suffix(".pkl")
    if not path.is_file():
        if legacy.is_file():
            warnings.warn(
                f"ignoring the old pickle sensitivity cache file {legacy} (pickles are never loaded: unpickling can "
                f"run code); recomputing into {path.name}. Delete {legacy.name} once it is no longer needed.",
                SensitivityCacheWarning,
                stacklevel=3,
            )
        return None
    try:
        return SensitivityResult.load(path, key=key)
    except (ValueError, OSError) as e:
        warnings.warn(
            f"sensitivity cache file {path} is not used, recomputing and replacing it: {e}",
            SensitivityCacheWarning,
            stacklevel=3,
        )
        return None


def _assemble(ctx: SensitivityContext, out: MetricOutput) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    by_name = {info.name: info for info in ctx.layers}
    table = pd.DataFrame(out.rows, columns=[c for c in TABLE_COLUMNS if c not in ("op_type", "depth")])
    unknown = sorted(set(table["layer"]) - set(by_name))
    if unknown:
        raise ValueError(f"metrics produced rows for unknown layers {unknown}")
    table["op_type"] = table["layer"].map(lambda n: by_name[n].op_type)
    table["depth"] = table["layer"].map(lambda n: by_name[n].depth).astype("int64")
    table = table[TABLE_COLUMNS].astype({"w_bits": "int64", "a_bits": "int64", "value": "float64"})
    table = table.sort_values(
        ["depth", "metric", "kind", "granularity", "w_bits", "a_bits"], kind="stable"
    ).reset_index(drop=True)

    layers = pd.DataFrame([asdict(info) for info in ctx.layers]).rename(columns={"name": "layer"})
    extra = pd.DataFrame.from_dict(out.layer_stats, orient="index")
    for col in LAYER_COLUMNS:
        if col not in layers.columns and col not in extra.columns:
            layers[col] = np.nan
    if not extra.empty:
        layers = layers.drop(columns=[c for c in extra.columns if c in layers.columns])
        layers = layers.join(extra, on="layer")
    ordered = LAYER_COLUMNS + [c for c in layers.columns if c not in LAYER_COLUMNS]
    layers = layers[ordered].sort_values("depth").reset_index(drop=True)
    if "hutchinson_iters" in layers and layers["hutchinson_iters"].notna().all():
        layers["hutchinson_iters"] = layers["hutchinson_iters"].astype("int64")

    channels = pd.DataFrame(out.channel_rows, columns=CHANNEL_COLUMNS)
    if not channels.empty:
        depth = channels["layer"].map(lambda n: by_name[n].depth)
        channels = (
            channels.assign(_d=depth)
            .sort_values(["_d", "metric", "w_bits", "channel"], kind="stable")
            .drop(columns="_d")
            .reset_index(drop=True)
            .astype({"channel": "int64", "w_bits": "int64", "value": "float64"})
        )
    return table, layers, channels


def _compute(
    task: Any, config: SensitivityConfig, calib: list[tuple[Any, Tensor | None]]
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
        "task": getattr(task, "name", type(task.model).__name__),
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


def _task_metric_info(task: Any) -> dict[str, Any]:
    """What the task scores: ``metric_name`` (its :attr:`~workbench.tasks.Task.metric_name`: "accuracy",
    "cosine", an eval_fn's name, ...) and ``output_key`` (the chosen output tensor; None: the primary one)."""
    name = getattr(task, "metric_name", None)
    if not isinstance(name, str):
        from workbench.tasks import metric_name

        metric = getattr(task, "metric", None)
        name = metric_name(metric) if metric is not None else "accuracy"
    return {"metric_name": name, "output_key": getattr(task, "output_key", None)}


def _track(result: SensitivityResult, task: Any, config: SensitivityConfig) -> str | None:
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
    task: Any,
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
    _check_task(task)
    task = on_device(task, device)
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
        with _torch_threads(config.num_threads):
            result = _compute(task, config, calib)
        result = replace(result, info={**result.info, "source": "computed", "cache_key": key})
        if cache:
            result.save(path, overwrite=True)
            result = replace(result, info={**result.info, "cache_path": str(path)})
    if track:
        run_id = _track(result, task, config)
        result = replace(result, info={**result.info, "mlflow_run_id": run_id})
    return result
