"""The RL controller's inputs: per-layer statistics of the output feature maps (:func:`feature_map_stats`) and
the per-unit features built from them (:func:`unit_features`: mean, log variance, entropy, z-scored)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from workbench.quant.inputs import call_model, move_inputs
from workbench.search.space import SearchSpace

STAT_COLUMNS: tuple[str, ...] = ("mean", "var", "entropy")


def _histogram_entropy_bits(values: torch.Tensor, bins: int) -> float:
    lo, hi = float(values.min()), float(values.max())
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return 0.0
    counts = torch.histc(values, bins=bins, min=lo, max=hi)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * torch.log2(p)).sum())


def feature_map_stats(
    model: nn.Module, inputs: Any, layers: Sequence[str], *, bins: int = 64
) -> pd.DataFrame:
    """Mean, variance and entropy of each named module's output on ``inputs`` (one forward pass, no grad;
    ``inputs`` a tensor, a tuple or a dict of tensors).

    ``var`` is the population variance (``correction=0``) over every element of the output (all samples,
    channels and positions); ``entropy`` is the Shannon entropy in bits of a ``bins``-bin histogram over the
    output's value range (0 for a constant map). A module called several times contributes all its outputs; a
    module the forward pass never reaches gets NaN. The model is not modified: hooks are removed and every
    module's training flag restored. Columns: ``layer, mean, var, entropy`` (in the order of ``layers``).
    """
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    layers = list(dict.fromkeys(layers))
    modules = dict(model.named_modules())
    unknown = [n for n in layers if n not in modules]
    if unknown:
        raise KeyError(f"unknown layer(s) {unknown}; valid: {[n for n in modules if n]}")
    outputs: dict[str, list[torch.Tensor]] = {n: [] for n in layers}

    def make_hook(name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, _inp: Any, out: Any) -> None:
            while isinstance(out, (tuple, list)) and out:
                out = out[0]
            if isinstance(out, torch.Tensor):
                outputs[name].append(out.detach().reshape(-1).to("cpu", torch.float64))

        return hook

    flags = {m: m.training for m in model.modules()}
    handles = [modules[n].register_forward_hook(make_hook(n)) for n in layers]
    try:
        model.eval()
        param = next(model.parameters(), None)
        x = move_inputs(inputs, param.device) if param is not None else inputs
        with torch.no_grad():
            call_model(model, x)
    finally:
        for h in handles:
            h.remove()
        for m, flag in flags.items():
            m.training = flag
    rows = []
    for n in layers:
        if not outputs[n]:
            rows.append({"layer": n, "mean": math.nan, "var": math.nan, "entropy": math.nan})
            continue
        v = torch.cat(outputs[n])
        rows.append(
            {
                "layer": n,
                "mean": float(v.mean()),
                "var": float(v.var(correction=0)) if v.numel() > 0 else math.nan,
                "entropy": _histogram_entropy_bits(v, bins),
            }
        )
    return pd.DataFrame(rows, columns=["layer", *STAT_COLUMNS])


def unit_features(space: SearchSpace, unit_stats: np.ndarray | pd.DataFrame | None) -> np.ndarray:
    """Per-unit controller features ``(n_units, 3)``: mean, log variance, entropy, each z-scored across units
    (centred only where all units agree; missing values 0).

    ``unit_stats``: a :func:`feature_map_stats` frame (rows per layer, a group averages its layers), or an
    array of raw (mean, var, entropy) with one row per unit or one row per ``space.layers`` entry, or None
    (all zeros)."""
    n_units = len(space.units)
    if unit_stats is None:
        return np.zeros((n_units, 3), dtype=np.float64)
    if isinstance(unit_stats, pd.DataFrame):
        missing = [c for c in ("layer", *STAT_COLUMNS) if c not in unit_stats.columns]
        if missing:
            raise ValueError(
                f"unit_stats frame lacks column(s) {missing}; expected layer, mean, var, entropy"
            )
        by_layer = {
            str(r.layer): (float(r.mean), float(r.var), float(r.entropy))
            for r in unit_stats.itertuples(index=False)
        }
    else:
        arr = np.asarray(unit_stats, dtype=np.float64)
        if arr.ndim != 2 or arr.shape[1] != 3:
            raise ValueError(f"unit_stats array must have shape (n, 3) (mean, var, entropy), got {arr.shape}")
        if arr.shape[0] == n_units:
            by_layer = None
            raw = arr
        elif arr.shape[0] == len(space.layers):
            by_layer = {n: tuple(arr[i]) for i, n in enumerate(space.layers)}
        else:
            raise ValueError(
                f"unit_stats has {arr.shape[0]} rows; expected one per unit ({n_units}) "
                f"or one per layer ({len(space.layers)})"
            )
    if by_layer is not None:
        raw = np.full((n_units, 3), np.nan)
        for i, u in enumerate(space.units):
            rows = [by_layer[n] for n in u.layers if n in by_layer]
            if rows:
                feats = np.array(rows, dtype=np.float64)
                with warnings.catch_warnings():  # a column that is all NaN stays NaN (then 0)
                    warnings.simplefilter("ignore", RuntimeWarning)
                    feats[:, 1] = np.log(np.maximum(feats[:, 1], 0.0) + 1e-12)
                    raw[i] = np.nanmean(feats, axis=0)
    else:
        raw = raw.copy()
        raw[:, 1] = np.log(np.maximum(raw[:, 1], 0.0) + 1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mu = np.nanmean(raw, axis=0)
        sd = np.nanstd(raw, axis=0)
    mu = np.nan_to_num(mu)
    sd = np.where(np.isfinite(sd) & (sd > 1e-12), sd, 1.0)
    return np.nan_to_num((raw - mu) / sd, nan=0.0, posinf=0.0, neginf=0.0)


__all__ = ["STAT_COLUMNS", "feature_map_stats", "unit_features"]
