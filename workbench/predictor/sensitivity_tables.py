"""Per-layer x per-bit tables read from a :class:`~workbench.sensitivity.SensitivityResult`: the metric
matrices that stratify plan generation and the sensitivity lookup tables of the featurizer."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from workbench.quant.spec import GRANULARITIES

if TYPE_CHECKING:
    from workbench.sensitivity import SensitivityResult


def _metric_matrix(
    sensitivity: SensitivityResult,
    metric: str,
    layer_names: Sequence[str],
    bits: Sequence[int],
    *,
    kind: str = "weight",
    granularity: str = "per_channel",
) -> np.ndarray | None:
    """``[n_layers, len(bits)]`` of one sensitivity metric, completed to every bit of ``bits`` (see
    :func:`_complete_bits`); None when the result lacks the metric for this kind."""
    if metric not in set(sensitivity.table["metric"]):
        return None
    wide = None
    grans = (
        [granularity, *[g for g in GRANULARITIES if g != granularity]] if kind == "weight" else [granularity]
    )
    for gran in grans:
        try:
            wide = sensitivity.matrix(metric, kind=kind, granularity=gran)
        except ValueError:
            continue
        if not wide.empty:
            break
    if wide is None or wide.empty:
        return None
    missing = [n for n in layer_names if n not in wide.index]
    if missing:
        raise ValueError(
            f"sensitivity result has no {metric!r} rows for layer(s) {missing}; it covers {list(wide.index)}"
        )
    wide = wide.loc[list(layer_names)]
    probed = {
        int(b): wide[b].to_numpy(dtype=np.float64)
        for b in wide.columns
        if int(b) < 32 and np.isfinite(wide[b].to_numpy(dtype=np.float64)).all()
    }
    if not probed:
        return None
    return _complete_bits(probed, bits)


def _complete_bits(probed: Mapping[int, np.ndarray], bits: Sequence[int]) -> np.ndarray:
    """Values at every bit width of ``bits`` from values probed at some of them.

    Between probed widths: geometric interpolation (linear where a value is not positive); above the widest:
    the noise-power law ``value * 4**-(b - b_max)`` (0 at 32 bits); below the narrowest:
    ``value * 4**(b_min - b)`` for positive values, the narrowest value otherwise.
    """
    have = sorted(probed)
    n = len(next(iter(probed.values())))
    out = np.empty((n, len(bits)), dtype=np.float64)
    for j, b in enumerate(bits):
        if b in probed:
            out[:, j] = probed[b]
        elif b >= 32:
            out[:, j] = 0.0
        elif b > have[-1]:
            out[:, j] = probed[have[-1]] * 4.0 ** -(b - have[-1])
        elif b < have[0]:
            v = probed[have[0]]
            out[:, j] = np.where(v > 0, v * 4.0 ** (have[0] - b), v)
        else:
            lo = max(h for h in have if h < b)
            hi = min(h for h in have if h > b)
            t = (b - lo) / (hi - lo)
            vlo, vhi = probed[lo], probed[hi]
            pos = (vlo > 0) & (vhi > 0)
            geo = np.exp((1 - t) * np.log(np.where(pos, vlo, 1.0)) + t * np.log(np.where(pos, vhi, 1.0)))
            out[:, j] = np.where(pos, geo, (1 - t) * vlo + t * vhi)
    return out


def _sensitivity_tables(
    sensitivity: SensitivityResult,
    names: Sequence[str],
    vocab: Sequence[int],
    granularity: str,
    w_noise: np.ndarray,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], list[str]]:
    """(weight tables, activation tables, metric names used) from a sensitivity result: every per-bit metric
    (``sens_<metric>`` / ``sens_act_<metric>``), and the per-layer Hessian trace (unless omega is there, which
    already is trace x noise power) and Fisher times the weight noise power."""
    _check_sensitivity_layers(sensitivity, names)
    w_tables: dict[str, np.ndarray] = {}
    a_tables: dict[str, np.ndarray] = {}
    used: list[str] = []
    for metric in sorted(set(sensitivity.table["metric"])):
        t = _metric_matrix(sensitivity, metric, names, vocab, kind="weight", granularity=granularity)
        if t is not None:
            w_tables[f"sens_{metric}"] = t
            used.append(metric)
        t = _metric_matrix(sensitivity, metric, names, vocab, kind="activation", granularity="per_tensor")
        if t is not None:
            a_tables[f"sens_act_{metric}"] = t
            used.append(f"activation:{metric}")
    if "layer" not in sensitivity.layers.columns:
        return w_tables, a_tables, used
    layers = sensitivity.layers.set_index("layer").reindex(list(names))
    if "hessian_trace_per_param" not in layers.columns and "hessian_trace" in layers.columns:
        numel = layers["weight_params"] if "weight_params" in layers.columns else 1.0  # total trace otherwise
        layers["hessian_trace_per_param"] = layers["hessian_trace"] / np.asarray(numel, dtype=np.float64)
    for col, tname in (("hessian_trace_per_param", "trace_noise"), ("fisher", "fisher_noise")):
        if col == "hessian_trace_per_param" and "sens_omega" in w_tables:
            continue
        if col in layers.columns:
            v = layers[col].to_numpy(dtype=np.float64)
            if np.isfinite(v).all():
                w_tables[tname] = np.abs(v)[:, None] * w_noise
                used.append(col)
    return w_tables, a_tables, used


def _check_sensitivity_layers(sensitivity: SensitivityResult, names: Sequence[str]) -> None:
    layers = set(sensitivity.layers["layer"]) if "layer" in sensitivity.layers.columns else set()
    unknown = sorted(layers - set(names))
    if unknown:
        raise ValueError(
            f"sensitivity result names layer(s) {unknown} that the model lacks; model layers: {list(names)}"
        )
