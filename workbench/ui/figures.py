"""Plotly figures of profiles, quantization errors and result tables. Functions return figures; nothing is shown."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots
from torch import Tensor

from workbench.quant.error import WeightError

# the categorical colours every figure cycles through
PALETTE = (
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#9467bd",
    "#ff7f0e",
    "#8c564b",
    "#e377c2",
    "#17becf",
    "#7f7f7f",
    "#bcbd22",
)


def _need(df: pd.DataFrame, cols: list[str]) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ValueError(f"DataFrame lacks column(s) {missing}; it has {list(df.columns)}")


def _layers(df: pd.DataFrame) -> list[str]:
    return list(df["layer"]) if "layer" in df.columns else [str(i) for i in df.index]


def layer_cost_figure(profile: pd.DataFrame) -> go.Figure:
    """Per-layer parameters, MACs, measured latency and memory (one bar panel each)."""
    _need(profile, ["params", "macs", "latency_ms", "activation_bytes"])
    layers = _layers(profile)
    fig = make_subplots(
        rows=4,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.04,
        subplot_titles=(
            "parameters",
            "MACs per sample",
            "latency (ms, median)",
            "activation memory (bytes/sample)",
        ),
    )
    for i, col in enumerate(["params", "macs", "latency_ms", "activation_bytes"], start=1):
        fig.add_trace(go.Bar(x=layers, y=profile[col], name=col, showlegend=False), row=i, col=1)
    for i, unit in enumerate(["count", "MACs", "ms", "bytes"], start=1):
        fig.update_yaxes(title_text=unit, row=i, col=1)
    fig.update_xaxes(title_text="layer (module path)", row=4, col=1)
    fig.update_layout(height=850, title="Per-layer cost", margin={"t": 60, "b": 120})
    return fig


def layer_stats_figure(profile: pd.DataFrame) -> go.Figure:
    """Activation range, sparsity and entropy, and weight kurtosis per layer."""
    _need(profile, ["act_min", "act_max", "act_sparsity", "act_entropy", "w_kurtosis"])
    layers = _layers(profile)
    fig = make_subplots(
        rows=2,
        cols=2,
        subplot_titles=(
            "activation range",
            "activation sparsity",
            "activation entropy (bits)",
            "weight excess kurtosis",
        ),
    )
    fig.add_trace(go.Bar(x=layers, y=profile["act_max"], name="max"), row=1, col=1)
    fig.add_trace(go.Bar(x=layers, y=profile["act_min"], name="min"), row=1, col=1)
    fig.add_trace(go.Bar(x=layers, y=profile["act_sparsity"], showlegend=False), row=1, col=2)
    fig.add_trace(go.Bar(x=layers, y=profile["act_entropy"], showlegend=False), row=2, col=1)
    fig.add_trace(go.Bar(x=layers, y=profile["w_kurtosis"], showlegend=False), row=2, col=2)
    for (row, col), unit in zip(
        [(1, 1), (1, 2), (2, 1), (2, 2)], ["value", "fraction of zeros", "bits", "excess kurtosis"]
    ):
        fig.update_yaxes(title_text=unit, row=row, col=col)
        fig.update_xaxes(title_text="layer", row=row, col=col)
    fig.update_layout(height=700, title="Per-layer statistics", barmode="overlay")
    return fig


def weight_histogram_figure(
    weight: Tensor, quantized: Tensor, *, title: str = "", error: WeightError | None = None
) -> go.Figure:
    """Histogram of a weight before and after quantization (quantized values are spikes at the levels)."""
    w = weight.detach().float().flatten().numpy()
    q = quantized.detach().float().flatten().numpy()
    edges = np.linspace(float(min(w.min(), q.min())), float(max(w.max(), q.max())), 121)
    hw, _ = np.histogram(w, edges)
    hq, _ = np.histogram(q, edges)
    centers = (edges[:-1] + edges[1:]) / 2
    fig = go.Figure()
    fig.add_trace(go.Bar(x=centers, y=hw, name="float32", opacity=0.6))
    fig.add_trace(go.Bar(x=centers, y=hq, name="quantized", opacity=0.6))
    if error is not None:
        title = f"{title}  MSE={error.mse:.3g}  SQNR={error.sqnr_db:.1f} dB  levels={error.levels}"
    fig.update_layout(
        barmode="overlay", title=title, xaxis_title="weight value", yaxis_title="count", height=380
    )
    return fig


def error_by_bits_figure(errors: pd.DataFrame, *, metric: str = "sqnr_db") -> go.Figure:
    """Lines of a weight error metric against bits, one per layer and granularity (from weight_error_table)."""
    _need(errors, ["layer", "granularity", "w_bits", metric])
    fig = go.Figure()
    for (layer, gran), g in errors.groupby(["layer", "granularity"], sort=False):
        fig.add_trace(go.Scatter(x=g["w_bits"], y=g[metric], mode="lines+markers", name=f"{layer} ({gran})"))
    fig.update_layout(
        title=f"Weight quantization {metric} by bit width",
        xaxis_title="weight bits",
        yaxis_title=metric,
        height=450,
    )
    return fig


def comparison_figure(table: pd.DataFrame) -> go.Figure:
    """Accuracy against model size for the rows of a result table (columns: name, accuracy, size_bytes)."""
    _need(table, ["name", "accuracy", "size_bytes"])
    fig = go.Figure(
        go.Scatter(
            x=table["size_bytes"],
            y=table["accuracy"],
            mode="markers+text",
            text=table["name"],
            textposition="top center",
        )
    )
    fig.update_layout(
        title="Accuracy vs model size",
        xaxis_title="size (bytes)",
        yaxis_title="accuracy",
        xaxis_type="log",
        height=420,
    )
    return fig


def ranking_figure(ranking: pd.DataFrame, *, title: str = "") -> go.Figure:
    """Horizontal bars of a per-layer ranking (columns layer, value), most sensitive on top, log scale."""
    _need(ranking, ["layer", "value"])
    r = ranking.iloc[::-1]
    fig = go.Figure(go.Bar(x=r["value"], y=r["layer"], orientation="h"))
    positive = bool((ranking["value"] > 0).all())
    fig.update_layout(
        title=title,
        xaxis_title="sensitivity",
        yaxis_title="layer",
        xaxis_type="log" if positive else "linear",
        height=max(300, 22 * len(r)),
    )
    return fig


def predicted_vs_measured_figure(predictions: pd.DataFrame, *, target: str = "metric loss (pp)") -> go.Figure:
    """Out-of-fold predictions against measurements, one colour per model (columns model, y_true, y_pred)."""
    _need(predictions, ["model", "y_true", "y_pred"])
    fig = go.Figure()
    for model, g in predictions.groupby("model", sort=False):
        fig.add_trace(go.Scatter(x=g["y_true"], y=g["y_pred"], mode="markers", name=str(model), opacity=0.6))
    lo = float(min(predictions["y_true"].min(), predictions["y_pred"].min()))
    hi = float(max(predictions["y_true"].max(), predictions["y_pred"].max()))
    fig.add_trace(
        go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="y = x", line={"dash": "dash", "color": "grey"})
    )
    fig.update_layout(
        title="Predictor quality on held-out plans",
        xaxis_title=f"measured {target}",
        yaxis_title=f"predicted {target}",
        height=480,
    )
    return fig


def linear_deployments_figure(table: pd.DataFrame, *, title: str | None = None) -> go.Figure:
    """FP32, dynamic int8 and bf16 side by side (the table of
    :func:`workbench.hardware.dynamic.compare_linear_deployments`): median latency of one batch with its min-max
    range, and the distance of each variant's outputs from FP32 (1 - mean cosine), FP32 itself at 0."""
    _need(table, ["variant", "median_ms", "min_ms", "max_ms", "cosine_to_fp32", "top1_agreement"])
    variants = [str(v) for v in table["variant"]]
    med = table["median_ms"].to_numpy(dtype=np.float64)
    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=("latency of one batch (median, min-max)", "distance from FP32 outputs"),
    )
    fig.add_trace(
        go.Bar(
            x=variants,
            y=med,
            error_y={
                "type": "data",
                "symmetric": False,
                "array": table["max_ms"].to_numpy(dtype=np.float64) - med,
                "arrayminus": med - table["min_ms"].to_numpy(dtype=np.float64),
            },
            text=[f"{s:.2f}x" for s in table.get("speedup_vs_fp32", pd.Series([1.0] * len(table)))],
            textposition="outside",
            name="latency",
            showlegend=False,
            hovertemplate="%{x}<br>median %{y:.3g} ms<extra></extra>",
        ),
        row=1,
        col=1,
    )
    cos = table["cosine_to_fp32"].to_numpy(dtype=np.float64)
    fig.add_trace(
        go.Bar(
            x=variants,
            y=1.0 - cos,
            text=[f"cos {c:.5f}<br>top-1 {100 * a:.1f} %" for c, a in zip(cos, table["top1_agreement"])],
            textposition="outside",
            name="fidelity",
            showlegend=False,
            hovertemplate="%{x}<br>1 - cosine %{y:.3g}<extra></extra>",
        ),
        row=1,
        col=2,
    )
    fig.update_xaxes(title_text="variant", row=1, col=1)
    fig.update_xaxes(title_text="variant", row=1, col=2)
    fig.update_yaxes(title_text="latency per batch (ms)", row=1, col=1)
    fig.update_yaxes(title_text="1 - cosine to FP32 outputs", row=1, col=2)
    attrs = table.attrs
    if title is None:
        title = "Real kernels: FP32, dynamic int8 and bf16"
        if attrs:
            title += (
                f"<br><sup>batch of {attrs.get('batch_size')}, {attrs.get('repeats')} interleaved runs, "
                f"{attrs.get('threads')} thread(s); fidelity on the {attrs.get('split')} split</sup>"
            )
    fig.update_layout(title=title, height=440, margin={"t": 90})
    return fig
