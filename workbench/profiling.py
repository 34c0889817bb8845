"""Per-layer monitoring of a model: static cost, measured latency, activation and weight statistics.

:func:`profile_model` returns one DataFrame row per layer, in forward execution order; the module path is
both the (unnamed) index, so ``df.loc["layer1.0.conv1"]`` works, and the ``layer`` column, so ``to_csv(index=False)``
and ``to_dict("records")`` keep it. It runs the model three times over the data, never storing activations:

1. **moments** over up to ``max_batches`` batches: for each layer's output (and input) a streaming count, mean
   and sum of squared deviations combined across batches with Chan's parallel update (float64), plus running
   min / max and a count of (near-)zeros;
2. **histograms** over the same batches: a fixed-range ``hist_bins`` histogram per layer on ``[act_min, act_max]``
   from pass 1, from which ``act_entropy`` (bits) is computed; the batch *inputs* (not activations) are kept
   between the two passes so both see the same data, even from a shuffling loader;
3. **latency** on the first batch: ``warmup`` untimed forwards, then ``latency_repeats`` timed ones; each layer's
   time is taken between its forward pre-hook and forward hook with :func:`time.perf_counter` and the median is
   reported.

``act_var`` and ``input_var`` are unbiased (``torch.var``'s default) over every element of every batch;
``w_kurtosis`` is the excess kurtosis from population moments (``scipy.stats.kurtosis``'s default).
``macs`` come from :func:`workbench.quant.introspect.layer_costs` and are 0 for layers other than Conv2d / Linear.
The model is run in eval mode under ``torch.no_grad``; hooks are removed and the training flag restored.
"""

from __future__ import annotations

import itertools
import math
import statistics
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from torch import nn

from workbench.profiling_stats import _entropy_bits, _histogram, _LayerRecord, weight_stats
from workbench.quant.inputs import batch_size, call_model, first_tensor, move_inputs, split_batch
from workbench.quant.introspect import is_quantizable, layer_costs

__all__ = ["LAYER_CHOICES", "ProfileConfig", "profile_model", "profile_summary", "select_layers"]

LAYER_CHOICES: tuple[str, ...] = ("quantizable", "leaf")
# Leaf modules that do no compute in eval mode: left out of ``layers="leaf"``.
_NO_COMPUTE: tuple[type[nn.Module], ...] = (
    nn.Identity,
    nn.Flatten,
    nn.Unflatten,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)


@dataclass(frozen=True)
class ProfileConfig:
    """Knobs of :func:`profile_model`.

    ``max_batches``: batches of the data used for activation statistics (None: all of them).
    ``layers``: ``"quantizable"`` (Conv2d / Linear and their quantized twins) or ``"leaf"`` (every leaf module
    with parameters or compute; Identity, Flatten and Dropout are skipped).
    """

    latency_repeats: int = 7
    warmup: int = 2
    max_batches: int | None = 4
    layers: str = "quantizable"
    hist_bins: int = 256
    progress: bool = True

    def __post_init__(self) -> None:
        if self.layers not in LAYER_CHOICES:
            raise ValueError(f"layers must be one of {LAYER_CHOICES}, got {self.layers!r}")
        if self.latency_repeats < 1:
            raise ValueError(f"latency_repeats must be >= 1, got {self.latency_repeats}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")
        if self.max_batches is not None and self.max_batches < 1:
            raise ValueError(f"max_batches must be None or >= 1, got {self.max_batches}")
        if self.hist_bins < 2:
            raise ValueError(f"hist_bins must be >= 2, got {self.hist_bins}")


# ---------------------------------------------------------------------------------------------- layers


def select_layers(model: nn.Module, layers: str = "quantizable") -> dict[str, nn.Module]:
    """Modules to profile, by module path, in definition order (see :class:`ProfileConfig` ``layers``).

    Quantizable modules count as leaves in ``"leaf"`` mode: their quantizer sub-modules are not listed.
    """
    if layers not in LAYER_CHOICES:
        raise ValueError(f"layers must be one of {LAYER_CHOICES}, got {layers!r}")
    chosen: dict[str, nn.Module] = {}
    for name, mod in model.named_modules():
        if not name or any(name.startswith(f"{c}.") for c in chosen):
            continue
        is_leaf = not any(True for _ in mod.children()) and not isinstance(mod, _NO_COMPUTE)
        if is_quantizable(mod) or (layers == "leaf" and is_leaf):
            chosen[name] = mod
    if not chosen:
        kinds = "Conv2d / Linear" if layers == "quantizable" else "leaf modules with parameters or compute"
        raise ValueError(
            f"model {type(model).__name__} has no {layers!r} layers ({kinds}); valid layers choices: {LAYER_CHOICES}"
        )
    return chosen


# ------------------------------------------------------------------------------------------------ data


def _batch_input(batch: Any) -> Any:
    """The model input of one batch: the batch itself (a tensor or a dict of tensors), or the first element of
    an ``(x, y)`` tuple / list (whatever its structure)."""
    try:
        x = split_batch(batch)[0]
    except ValueError:
        raise TypeError(
            f"batches must be tensors, dicts of tensors or (x, y) tuples, got {type(batch).__name__}"
        ) from None
    if first_tensor(x) is None:
        raise TypeError(f"batches must hold a tensor input, got {type(x).__name__}")
    return x


def _nonempty(x: Any) -> bool:
    try:
        return batch_size(x) > 0
    except ValueError:
        return False


def _collect_inputs(data: Any, max_batches: int | None) -> list[Any]:
    """Inputs of the first ``max_batches`` batches (a plain tensor or a dict of tensors is one batch)."""
    if isinstance(data, (torch.Tensor, dict)):
        inputs = [data]
    elif isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        inputs = [data[0]]  # a single (x, y) pair; a *list* of tensors is a list of batches
    else:
        inputs = [_batch_input(b) for b in itertools.islice(iter(data), max_batches)]
    if not inputs or not all(_nonempty(x) for x in inputs):
        raise ValueError("profile_model needs at least one non-empty batch; the loader / input is empty")
    return inputs


def _first_tensor(value: Any) -> torch.Tensor | None:
    """The tensor itself, or the first tensor of a tuple / list output; None if there is none."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)):
        return next((v for v in value if isinstance(v, torch.Tensor)), None)
    return None


def _device_of(model: nn.Module) -> torch.device:
    p = next(itertools.chain(model.parameters(), model.buffers()), None)
    return p.device if p is not None else torch.device("cpu")


# ----------------------------------------------------------------------------------------------- passes


def _moments_pass(
    model: nn.Module, layers: dict[str, nn.Module], inputs: list[torch.Tensor], records: dict, bar: Any
) -> None:
    order = itertools.count()

    def make_hook(name: str):
        def hook(mod: nn.Module, args: tuple, out: Any) -> None:
            rec = records[name]
            y = _first_tensor(out)
            x = _first_tensor(args)
            if rec.depth is None:
                rec.depth = next(order)
                rec.input_shape = tuple(x.shape[1:]) if x is not None else None
                rec.output_shape = tuple(y.shape[1:]) if y is not None else None
            if y is not None and y.is_floating_point():
                rec.act.update(y)
            if x is not None and x.is_floating_point():
                rec.inp.update(x)

        return hook

    _run_with_hooks(model, layers, make_hook, inputs, bar)


def _run_with_hooks(
    model: nn.Module, layers: dict[str, nn.Module], make_hook: Any, inputs: list, bar: Any
) -> None:
    """Forward every input with ``make_hook(name)`` attached to each layer; hooks are always removed."""
    handles = [m.register_forward_hook(make_hook(n)) for n, m in layers.items()]
    try:
        for x in inputs:
            call_model(model, x)
            bar.update(1)
    finally:
        for h in handles:
            h.remove()


def _histogram_pass(
    model: nn.Module,
    layers: dict[str, nn.Module],
    inputs: list[torch.Tensor],
    records: dict,
    bins: int,
    bar: Any,
) -> None:
    def make_hook(name: str):
        def hook(mod: nn.Module, args: tuple, out: Any) -> None:
            rec = records[name]
            y = _first_tensor(out)
            if y is None or not y.is_floating_point() or rec.act.n == 0:
                return
            counts = _histogram(y, bins, rec.act.lo, rec.act.hi)
            rec.hist = counts if rec.hist is None else rec.hist + counts

        return hook

    _run_with_hooks(model, layers, make_hook, inputs, bar)


def _latency_pass(
    model: nn.Module, layers: dict[str, nn.Module], x: Any, records: dict, config: ProfileConfig
) -> list[float]:
    """Per-layer times (into ``records``) and whole-model forward times in ms."""
    # the input's own CUDA device (torch.cuda.synchronize() alone waits for the current device only)
    dev = first_tensor(x).device  # type: ignore[union-attr]
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    starts: dict[str, float] = {}
    timing = {"on": False}
    per_call: dict[str, float] = {}

    def pre(name: str):
        def hook(mod: nn.Module, args: tuple) -> None:
            if timing["on"]:
                sync()
                starts[name] = time.perf_counter()

        return hook

    def post(name: str):
        def hook(mod: nn.Module, args: tuple, out: Any) -> None:
            if timing["on"] and name in starts:
                sync()
                per_call[name] = per_call.get(name, 0.0) + (time.perf_counter() - starts.pop(name)) * 1e3

        return hook

    handles = []
    for n, m in layers.items():
        handles.append(m.register_forward_pre_hook(pre(n)))
        handles.append(m.register_forward_hook(post(n)))
    totals: list[float] = []
    try:
        for _ in range(config.warmup):
            call_model(model, x)
        timing["on"] = True
        for _ in range(config.latency_repeats):
            per_call.clear()
            sync()
            t0 = time.perf_counter()
            call_model(model, x)
            sync()
            totals.append((time.perf_counter() - t0) * 1e3)
            for n in layers:
                records[n].times_ms.append(per_call.get(n, math.nan))
    finally:
        for h in handles:
            h.remove()
    return totals


# ------------------------------------------------------------------------------------------------ API

COLUMNS: tuple[str, ...] = (
    "layer",
    "type",
    "depth",
    "params",
    "macs",
    "input_shape",
    "output_shape",
    "latency_ms",
    "latency_share",
    "param_bytes",
    "activation_bytes",
    "act_min",
    "act_max",
    "act_mean",
    "act_var",
    "act_sparsity",
    "act_entropy",
    "input_var",
    "w_std",
    "w_kurtosis",
    "w_entropy",
    "w_absmax",
)


def _row(name: str, mod: nn.Module, rec: _LayerRecord, macs: int, bins: int) -> dict[str, Any]:
    own = list(mod.parameters(recurse=is_quantizable(mod)))
    weight = getattr(mod, "weight", None)
    out_numel = math.prod(rec.output_shape) if rec.output_shape is not None else 0
    times = [t for t in rec.times_ms if not math.isnan(t)]
    return {
        "layer": name,
        "type": getattr(mod, "op_type", type(mod).__name__),
        "depth": rec.depth,
        "params": sum(p.numel() for p in own),
        "macs": macs,
        "input_shape": rec.input_shape,
        "output_shape": rec.output_shape,
        "latency_ms": statistics.median(times) if times else math.nan,
        "param_bytes": sum(p.numel() * p.element_size() for p in own),
        "activation_bytes": out_numel * 4,
        "act_min": rec.act.lo if rec.act.n else math.nan,
        "act_max": rec.act.hi if rec.act.n else math.nan,
        "act_mean": rec.act.mean if rec.act.n else math.nan,
        "act_var": rec.act.var,
        "act_sparsity": rec.act.sparsity,
        "act_entropy": _entropy_bits(rec.hist) if rec.hist is not None else math.nan,
        "input_var": rec.inp.var,
        **weight_stats(weight if isinstance(weight, torch.Tensor) else None, bins=bins),
    }


def profile_model(
    model: nn.Module,
    loader_or_input: torch.Tensor | Iterable[Any],
    *,
    config: ProfileConfig = ProfileConfig(),
) -> pd.DataFrame:
    """Profile every selected layer of ``model`` on the data; one row per layer (see the module docstring).

    ``loader_or_input``: a tensor batch, a dict of tensors (one batch of keyword inputs), or an iterable of
    batches that are tensors, dicts of tensors or ``(x, y)`` tuples (``x`` a tensor, a tuple or a dict).
    Layers that never run in the forward pass are dropped. ``df.attrs["model_latency_ms"]`` holds the median
    whole-model forward time on the latency batch.
    """
    from tqdm.auto import tqdm

    layers = select_layers(model, config.layers)
    device = _device_of(model)
    inputs = [move_inputs(x, device) for x in _collect_inputs(loader_or_input, config.max_batches)]
    records = {n: _LayerRecord() for n in layers}
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad(), tqdm(total=2 * len(inputs), desc="profile", disable=not config.progress) as bar:
            _moments_pass(model, layers, inputs, records, bar)
            _histogram_pass(model, layers, inputs, records, config.hist_bins, bar)
            totals = _latency_pass(model, layers, inputs[0], records, config)
        costs = layer_costs(model, inputs[0])
    finally:
        model.train(was_training)
    rows = [
        _row(n, m, records[n], costs[n].macs if n in costs else 0, config.hist_bins)
        for n, m in layers.items()
        if records[n].depth is not None
    ]
    if not rows:
        raise ValueError(f"none of the {config.layers!r} layers ran in the forward pass")
    df = pd.DataFrame(rows).sort_values("depth")
    df.index = pd.Index(df["layer"].tolist())
    total = df["latency_ms"].sum()
    df["latency_share"] = df["latency_ms"] / total if total > 0 else math.nan
    df = df[list(COLUMNS)]
    df.attrs["model_latency_ms"] = statistics.median(totals)
    return df


def profile_summary(df: pd.DataFrame) -> dict[str, Any]:
    """Totals of a :func:`profile_model` frame: layers, params, MACs, latency (sum of layers and whole model),
    parameter bytes, and the peak / total output activation bytes per sample."""
    missing = {"params", "macs", "latency_ms", "param_bytes", "activation_bytes"} - set(df.columns)
    if missing:
        raise ValueError(f"not a profile frame: missing columns {sorted(missing)}")
    return {
        "layers": len(df),
        "params": int(df["params"].sum()),
        "macs": int(df["macs"].sum()),
        "latency_ms": float(df["latency_ms"].sum()),
        "model_latency_ms": float(df.attrs.get("model_latency_ms", math.nan)),
        "param_bytes": int(df["param_bytes"].sum()),
        "peak_activation_bytes": int(df["activation_bytes"].max()) if len(df) else 0,
        "activation_bytes": int(df["activation_bytes"].sum()),
    }
