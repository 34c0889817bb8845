"""Plotly figures of sensitivity results (:mod:`workbench.sensitivity`). Functions return figures; nothing is shown.

Log colour / axis scales show log10 of the value; values <= 0 (an accuracy drop of zero, a negative Hessian
trace estimate) have no logarithm and are left blank, their raw value stays in the hover text.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.sensitivity import SensitivityResult, rank_agreement

__all__ = [
    "channel_heatmap",
    "cost_benefit_figure",
    "layer_scores_figure",
    "metric_agreement_figure",
    "sensitivity_heatmap",
]


def _log10(values: np.ndarray) -> np.ndarray:
    """log10 of the positive entries, NaN elsewhere."""
    values = np.asarray(values, dtype=float)
    out = np.full(values.shape, np.nan)
    pos = values > 0
    out[pos] = np.log10(values[pos])
    return out


def _heatmap(
    z: np.ndarray, *, x: list[str], y: list[str], log: bool, label: str, xtitle: str, ytitle: str
) -> go.Heatmap:
    shown = _log10(z) if log else np.asarray(z, dtype=float)
    return go.Heatmap(
        z=shown,
        x=x,
        y=y,
        customdata=np.asarray(z, dtype=float),
        colorscale="Viridis",
        colorbar={"title": {"text": f"log10 {label}" if log else label}},
        hovertemplate=f"{ytitle} %{{y}}<br>{xtitle} %{{x}}<br>{label} = %{{customdata:.4g}}<extra></extra>",
        hoverongaps=False,
    )


def sensitivity_heatmap(
    result: SensitivityResult,
    metric: str,
    *,
    kind: str = "weight",
    granularity: str = "per_channel",
    log: bool = True,
) -> go.Figure:
    """Layers (rows, forward order top to bottom) x bits (columns) of one metric; colour = value (log10 when
    ``log``). ``kind``: "weight" (columns are weight bits) or "activation" (activation bits)."""
    wide = result.matrix(metric, kind=kind, granularity=granularity)
    prefix = "W" if kind == "weight" else "A"
    x = [f"{prefix}{b}" for b in wide.columns]
    y = list(wide.index)
    fig = go.Figure(
        _heatmap(wide.to_numpy(dtype=float), x=x, y=y, log=log, label=metric, xtitle="bits", ytitle="layer")
    )
    where = f"{kind}, {granularity}" if kind == "weight" else kind
    fig.update_layout(
        title=f"{metric} when only one layer is quantized ({where})",
        xaxis_title="weight bits" if kind == "weight" else "activation bits",
        yaxis={"autorange": "reversed", "type": "category", "title": "layer (module path)"},
        height=max(320, 24 * len(y) + 140),
        margin={"l": 160},
    )
    return fig


def channel_heatmap(
    result: SensitivityResult, layer: str, metric: str = "omega", *, log: bool = True
) -> go.Figure:
    """Per-output-channel sensitivity of one layer: weight bits (rows) x channels (columns).

    Precision-free channel metrics (``fisher``, ``hessian_trace``) have a single row.
    """
    ch = result.channels
    if ch.empty:
        raise ValueError(
            "this result has no per-channel table (run with SensitivityConfig(per_channel=True))"
        )
    layers = list(dict.fromkeys(ch["layer"]))
    if layer not in layers:
        raise ValueError(f"layer {layer!r} has no per-channel rows; layers: {layers}")
    sel = ch[ch["layer"] == layer]
    metrics = sorted(sel["metric"].unique())
    if metric not in metrics:
        raise ValueError(f"metric {metric!r} has no per-channel rows for {layer!r}; available: {metrics}")
    wide = sel[sel["metric"] == metric].pivot_table(index="w_bits", columns="channel", values="value")
    y = ["float" if b >= 32 else f"W{b}" for b in wide.index]
    fig = go.Figure(
        _heatmap(
            wide.to_numpy(dtype=float),
            x=[str(c) for c in wide.columns],
            y=y,
            log=log,
            label=metric,
            xtitle="channel",
            ytitle="bits",
        )
    )
    fig.update_layout(
        title=f"{layer}: {metric} per output channel",
        xaxis_title="output channel",
        yaxis_title="weight bits",
        xaxis={"type": "category"},
        yaxis={"type": "category"},
        height=max(260, 40 * len(y) + 160),
    )
    return fig


def _axis_type(values: pd.Series) -> str:
    return "log" if len(values) and bool((values > 0).all()) else "linear"


def metric_agreement_figure(
    result: SensitivityResult,
    a: tuple[str, int | None] = ("omega", 4),
    b: tuple[str, int | None] = ("acc_drop", 4),
    *,
    granularity: str = "per_channel",
) -> go.Figure:
    """Scatter of two metrics' per-layer values (one point per layer), annotated with Spearman and Kendall tau.

    ``a`` / ``b`` are ``(metric, bits)`` as in :func:`workbench.sensitivity.rank_agreement`; an axis is
    logarithmic when all its values are positive.
    """
    va = result.layer_values(a[0], bits=a[1], granularity=granularity)
    vb = result.layer_values(b[0], bits=b[1], granularity=granularity)
    both = pd.concat([va.rename("a"), vb.rename("b")], axis=1).dropna()
    agree = rank_agreement(result, a, b, granularity=granularity)
    la, lb = agree["a"], agree["b"]
    fig = go.Figure(
        go.Scatter(
            x=both["a"],
            y=both["b"],
            mode="markers+text",
            text=list(both.index),
            textposition="top center",
            textfont={"size": 9},
            marker={"size": 9},
            hovertemplate=f"%{{text}}<br>{la} = %{{x:.4g}}<br>{lb} = %{{y:.4g}}<extra></extra>",
        )
    )

    def fmt(v: float) -> str:
        return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"

    fig.add_annotation(
        text=f"Spearman {fmt(agree['spearman'])}, Kendall tau {fmt(agree['kendall'])} ({agree['n_layers']} layers)",
        xref="paper",
        yref="paper",
        x=0.01,
        y=0.99,
        showarrow=False,
        align="left",
        bgcolor="rgba(255,255,255,0.8)",
    )
    fig.update_layout(
        title=f"{la} vs {lb} per layer",
        xaxis={"title": la, "type": _axis_type(both["a"])},
        yaxis={"title": lb, "type": _axis_type(both["b"])},
        height=520,
    )
    return fig


def cost_benefit_figure(result: SensitivityResult, *, top: int = 15) -> go.Figure:
    """Left: bytes saved vs sensitivity for each (layer, weight bits) move down from the reference precision
    (one colour per bit width; up and to the left is best). Right: the ``top`` moves by ratio."""
    cb = result.cost_benefit
    if cb is None or cb.empty:
        raise ValueError("this result has no cost-benefit table (SensitivityConfig.cost_metric was None)")
    metric = str(cb["metric"].iloc[0])
    fig = make_subplots(
        rows=1,
        cols=2,
        column_widths=[0.6, 0.4],
        subplot_titles=(f"bytes saved vs {metric}", f"top {min(top, len(cb))} by bytes saved / {metric}"),
    )
    for bits, part in cb.groupby("w_bits", sort=True):
        fig.add_trace(
            go.Scatter(
                x=part["sensitivity"],
                y=part["bytes_saved"],
                mode="markers",
                name=f"W{bits}",
                text=part["layer"],
                customdata=np.stack([part["ratio"], part["bops_saved"]], axis=1),
                hovertemplate=(
                    "%{text}<br>sensitivity %{x:.4g}<br>bytes saved %{y:.0f}<br>BOPs saved %{customdata[1]:.3g}"
                    "<br>ratio %{customdata[0]:.3g}<extra></extra>"
                ),
            ),
            row=1,
            col=1,
        )
    best = cb.sort_values("ratio", ascending=False).head(top)
    fig.add_trace(
        go.Bar(
            x=best["ratio"],
            y=[f"{layer} W{b}" for layer, b in zip(best["layer"], best["w_bits"])],
            orientation="h",
            showlegend=False,
            hovertemplate="%{y}<br>ratio %{x:.4g}<extra></extra>",
        ),
        row=1,
        col=2,
    )
    fig.update_xaxes(title_text=metric, type=_axis_type(cb["sensitivity"]), row=1, col=1)
    fig.update_yaxes(title_text="bytes saved", row=1, col=1)
    fig.update_xaxes(title_text="ratio (log)", type="log", row=1, col=2)
    fig.update_yaxes(autorange="reversed", title_text="layer, weight bits", row=1, col=2)
    fig.update_layout(
        title="Cost-benefit of lowering each layer's weight bits", height=520, legend_title="bits"
    )
    return fig


def layer_scores_figure(result: SensitivityResult) -> go.Figure:
    """Precision-free per-layer scores (log y): Hessian trace per parameter and Fisher score, when present."""
    layers = result.layers.sort_values("depth")
    cols = [c for c in ("hessian_trace_per_param", "fisher") if c in layers and layers[c].notna().any()]
    if not cols:
        raise ValueError(
            "this result has no hessian or fisher scores (add them to SensitivityConfig.metrics)"
        )
    fig = make_subplots(rows=len(cols), cols=1, shared_xaxes=True, subplot_titles=cols, vertical_spacing=0.08)
    for i, col in enumerate(cols, start=1):
        fig.add_trace(go.Bar(x=layers["layer"], y=layers[col], name=col, showlegend=False), row=i, col=1)
        fig.update_yaxes(type=_axis_type(layers[col].dropna()), row=i, col=1)
    fig.update_layout(title="Per-layer curvature and gradient scores", height=260 * len(cols) + 160)
    return fig
