"""Plotly figures of quantization-aware training: accuracy before / after per plan, validation curves, learned
bits. Functions return figures; nothing is shown. Accuracies are drawn in percent."""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd
import plotly.graph_objects as go

from workbench.ui.figures import _need

BEFORE, AFTER, FP32 = "#d62728", "#2ca02c", "#7f7f7f"


def qat_comparison_figure(table: pd.DataFrame, *, title: str | None = None) -> go.Figure:
    """Test accuracy of each plan before (post-training quantization) and after QAT, FP32 as a dashed line.

    ``table``: one row per plan with ``name``, ``accuracy_before``, ``accuracy_after``, ``fp32_accuracy``
    (:func:`workbench.qat.qat_table`); ``avg_weight_bits`` is added to the labels when present.
    """
    _need(table, ["name", "accuracy_before", "accuracy_after", "fp32_accuracy"])
    if table.empty:
        raise ValueError("qat_comparison_figure needs at least one row")
    labels = [
        f"{n}<br>{b:.2f} bits" if "avg_weight_bits" in table.columns else str(n)
        for n, b in zip(table["name"], table.get("avg_weight_bits", table["name"]))
    ]
    fig = go.Figure()
    for col, name, color in (
        ("accuracy_before", "before QAT", BEFORE),
        ("accuracy_after", "after QAT", AFTER),
    ):
        fig.add_trace(
            go.Bar(
                x=labels,
                y=100 * table[col].astype(float),
                name=name,
                marker_color=color,
                text=[f"{100 * v:.2f}" for v in table[col]],
                textposition="outside",
                hovertemplate=f"%{{x}}<br>{name}: %{{y:.2f}} %<extra></extra>",
            )
        )
    fp32 = 100 * float(table["fp32_accuracy"].iloc[0])
    fig.add_hline(y=fp32, line_dash="dash", line_color=FP32, annotation_text=f"FP32 {fp32:.2f} %")
    low = 100 * float(min(table["accuracy_before"].min(), table["accuracy_after"].min()))
    fig.update_layout(
        title=title or "Test accuracy before and after quantization-aware training",
        barmode="group",
        xaxis_title="plan (average weight bits)",
        yaxis_title="test accuracy (%)",
        yaxis_range=[max(0.0, low - 5), min(100.0, fp32 + 3)],
        height=440,
    )
    return fig


def qat_history_figure(histories: Mapping[str, pd.DataFrame], *, title: str | None = None) -> go.Figure:
    """Validation accuracy per epoch of each run (``history`` of :class:`workbench.qat.QATResult`); epochs cut
    short by ``max_steps`` are left out, the relaxed-bit epochs of a bit-penalty run have open markers."""
    fig = go.Figure()
    for i, (name, hist) in enumerate(histories.items()):
        _need(hist, ["epoch", "val_accuracy"])
        h = hist[~hist["partial"].astype(bool)] if "partial" in hist.columns else hist
        phases = list(h["phase"]) if "phase" in h.columns else ["discrete"] * len(h)
        fig.add_trace(
            go.Scatter(
                x=h["epoch"],
                y=100 * h["val_accuracy"].astype(float),
                mode="lines+markers",
                name=str(name),
                marker={"symbol": ["circle-open" if p == "relaxed" else "circle" for p in phases], "size": 8},
                hovertemplate=f"{name}<br>epoch %{{x}}<br>val accuracy %{{y:.2f}} %<extra></extra>",
                legendrank=i,
            )
        )
    fig.update_layout(
        title=title or "Validation accuracy during QAT (open markers: relaxed bit widths)",
        xaxis_title="epoch",
        yaxis_title="validation accuracy (%)",
        height=420,
    )
    return fig


def learned_bits_figure(plans: Mapping[str, Mapping[str, int]], *, title: str | None = None) -> go.Figure:
    """Weight bits per layer of several plans (e.g. the input plan and the plan a bit penalty learned).

    ``plans``: name -> {layer: w_bits} (``{n: s.w_bits for n, s in plan.items()}``).
    """
    fig = go.Figure()
    for name, bits in plans.items():
        fig.add_trace(go.Bar(x=list(bits), y=list(bits.values()), name=str(name)))
    fig.update_layout(
        title=title or "Weight bits per layer",
        barmode="group",
        xaxis_title="layer",
        yaxis_title="weight bits",
        height=400,
    )
    return fig


__all__ = ["learned_bits_figure", "qat_comparison_figure", "qat_history_figure"]
