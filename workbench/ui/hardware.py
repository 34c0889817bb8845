"""Plotly figures of hardware precision profiles, cost estimates and deployments. Functions return figures (or
tables); nothing is shown. Accuracy is drawn in percent, throughput in MACs (elements for ``elementwise``) per
second, latency in milliseconds.

Here: deployments (:func:`deploy_comparison_figure`); the profile and estimate figures live in
:mod:`workbench.ui.hardware_profiles`, the latency-accuracy ones in :mod:`workbench.ui.hardware_latency`, and all
are re-exported from here."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import plotly.graph_objects as go

from workbench.ui.hardware_latency import (
    deployed_front_figure,
    latency_accuracy_figure,
    search_latency_figure,
)
from workbench.ui.hardware_profiles import (
    KIND_PATTERNS,
    PALETTE,
    PRECISION_COLORS,
    estimate_breakdown_figure,
    ordered_precisions,
    profile_comparison_figure,
    throughput_table,
)

if TYPE_CHECKING:
    from workbench.hardware.deploy import DeployResult

FP32_COLOR, DEPLOYED_COLOR = "#7f7f7f", "#1f77b4"


def _pct(value: float) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{100.0 * value:.2f} %"


def deploy_comparison_figure(
    result: DeployResult, *, show_estimate: bool = True, title: str | None = None
) -> go.Figure:
    """Per-run latency of the FP32 model and the deployed plan (a :class:`~workbench.hardware.deploy.DeployResult`)
    side by side: one box per model with every timed run drawn as a point; the title gives the speedup (FP32
    median over deployed median) and both accuracies. With ``show_estimate`` the profile's estimated latency of
    the deployed plan is a dashed line."""
    fig = go.Figure()
    for name, stats, acc, color in (
        ("FP32", result.fp32, result.fp32_accuracy, FP32_COLOR),
        ("deployed", result.deployed, result.accuracy, DEPLOYED_COLOR),
    ):
        fig.add_trace(
            go.Box(
                y=list(stats.times_ms),
                name=name,
                boxpoints="all",
                jitter=0.4,
                pointpos=0,
                marker={"color": color, "size": 7},
                line={"color": color},
                hovertemplate=(
                    f"{name}<br>%{{y:.4g}} ms<br>median {stats.median_ms:.4g} ms<br>accuracy {_pct(acc)}"
                    "<extra></extra>"
                ),
            )
        )
    if (
        show_estimate
        and result.estimated_latency_ms is not None
        and math.isfinite(result.estimated_latency_ms)
    ):
        fig.add_hline(
            y=result.estimated_latency_ms,
            line={"dash": "dash", "color": "black", "width": 1},
            annotation_text=f"estimated on {result.profile}: {result.estimated_latency_ms:.3g} ms",
            annotation_position="top left",
        )
    if title is None:
        title = (
            f"Deployed vs FP32 on {result.cpu or 'this CPU'}: speedup {result.speedup:.2f}x "
            f"({result.fp32_latency_ms:.3g} -> {result.deployed_latency_ms:.3g} ms median)<br>"
            f"<sup>accuracy FP32 {_pct(result.fp32_accuracy)}, deployed {_pct(result.accuracy)}; "
            f"{result.engine} engine, {result.threads} thread(s), {len(result.fp32.times_ms)} runs each</sup>"
        )
    fig.update_layout(
        title=title,
        xaxis_title="model",
        yaxis_title=f"latency per batch of {result.batch_size} (ms)",
        showlegend=False,
        height=440,
        margin={"t": 90},
    )
    return fig


__all__ = [
    "KIND_PATTERNS",
    "PALETTE",
    "PRECISION_COLORS",
    "deploy_comparison_figure",
    "deployed_front_figure",
    "estimate_breakdown_figure",
    "latency_accuracy_figure",
    "ordered_precisions",
    "profile_comparison_figure",
    "search_latency_figure",
    "throughput_table",
]
