"""Plotly figures of served batches (:meth:`workbench.runtime.AdaptiveRuntime.serve`): the rung each input ended
on, and the inputs themselves titled with their rung and prediction. Figure functions return figures; nothing is
shown."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

if TYPE_CHECKING:
    from workbench.runtime import AdaptiveRuntime, ServeResult


def _map_str(m: dict[str, int]) -> str:
    return " ".join(f"{g}:{b}" for g, b in m.items())


def _rung_counts(result: ServeResult, n_rungs: int) -> np.ndarray:
    rung = np.asarray(result.rung, dtype=int)
    return np.bincount(rung[rung >= 0], minlength=n_rungs)[:n_rungs]


def _rung_bits(runtime: AdaptiveRuntime) -> np.ndarray:
    return np.array([runtime.coster(m).avg_bits for m in runtime.ladder], dtype=float)


def rung_histogram_figure(
    result: ServeResult, runtime: AdaptiveRuntime, *, title: str | None = None
) -> go.Figure:
    """How many inputs of ``result`` ended on each rung of ``runtime.ladder`` (rung 0: the cheapest map). Hover
    shows the rung's precision map, its MAC-weighted average weight bits and its cost; rejected inputs (rung -1)
    are counted in the title. The probe and escalation rungs are marked when the policy runs them."""
    k = len(runtime.ladder)
    counts = _rung_counts(result, k)
    maps = [_map_str(m) for m in runtime.ladder]
    bits = _rung_bits(runtime)
    costs = np.asarray(runtime.rung_costs, dtype=float)
    rejected = int(np.sum(np.asarray(result.rung) < 0))
    fig = go.Figure()
    fig.add_trace(
        go.Bar(
            x=list(range(k)),
            y=counts,
            name="inputs",
            marker_color="#1f77b4",
            customdata=list(zip(maps, bits.tolist(), costs.tolist(), strict=True)),
            hovertemplate=(
                "rung %{x}: %{y} inputs<br>%{customdata[0]}<br>avg weight bits %{customdata[1]:.2f}"
                "<br>cost %{customdata[2]:.4g}<extra></extra>"
            ),
        )
    )
    if getattr(runtime.policy, "uses_probe_rung", False):
        fig.add_vline(x=runtime.probe_rung, line_dash="dot", line_color="#2ca02c", annotation_text="probe")
        if runtime.escalation_rung != runtime.probe_rung:
            fig.add_vline(
                x=runtime.escalation_rung, line_dash="dot", line_color="#d62728", annotation_text="escalation"
            )
    name = getattr(runtime.policy, "name", type(runtime.policy).__name__)
    extra = f", {rejected} rejected" if rejected else ""
    fig.update_layout(
        title=title or f"Rung each input ended on ({name} policy, {int(counts.sum())} served{extra})",
        xaxis_title="rung of the ladder (0 = cheapest map)",
        yaxis_title="inputs (count)",
        xaxis={"range": [-0.5, k - 0.5], "dtick": 1},
        height=380,
        bargap=0.15,
    )
    return fig


def per_input_figure(
    x: torch.Tensor,
    result: ServeResult,
    runtime: AdaptiveRuntime,
    *,
    n: int = 24,
    labels: Sequence[int] | torch.Tensor | np.ndarray | None = None,
    cols: int = 8,
    title: str | None = None,
) -> go.Figure:
    """The first ``n`` inputs (channel 0 of ``x[i]``) in a grid, each titled with the rung it ended on, that
    rung's MAC-weighted average weight bits and the predicted (and, with ``labels``, the true) class; rejected
    inputs (rung -1) are titled "rejected"."""
    n = int(min(n, x.shape[0], len(result.rung)))
    if n < 1:
        raise ValueError("per_input_figure needs at least one input")
    cols = max(1, min(cols, n))
    rows = math.ceil(n / cols)
    bits = _rung_bits(runtime)
    pred = result.logits.argmax(1).tolist() if result.logits.numel() else [None] * len(result.rung)
    true = (
        None
        if labels is None
        else [int(v) for v in (labels.tolist() if hasattr(labels, "tolist") else labels)]
    )
    titles = []
    for i in range(n):
        r = int(result.rung[i])
        if r < 0:
            titles.append("rejected")
            continue
        t = f"rung {r} · {bits[r]:.2f} b<br>pred {pred[i]}"
        if true is not None:
            t += f" / true {true[i]}" + ("" if pred[i] == true[i] else " ✗")
        titles.append(t)
    fig = make_subplots(
        rows=rows, cols=cols, subplot_titles=titles, horizontal_spacing=0.01, vertical_spacing=0.1
    )
    for i in range(n):
        img = x[i]
        while img.dim() > 2:  # channel 0
            img = img[0]
        z = img.detach().float().cpu().numpy()
        fig.add_trace(
            go.Heatmap(
                z=z,
                colorscale="gray",
                showscale=False,
                hovertemplate=f"input {i}<br>row %{{y}}, col %{{x}}: %{{z:.3f}}<extra></extra>",
            ),
            row=i // cols + 1,
            col=i % cols + 1,
        )
    fig.update_xaxes(showticklabels=False, constrain="domain")
    fig.update_yaxes(showticklabels=False, autorange="reversed", constrain="domain")
    for j in range(1, n + 1):  # each image keeps its own aspect ratio
        fig.update_yaxes(
            scaleanchor=f"x{'' if j == 1 else j}", row=(j - 1) // cols + 1, col=(j - 1) % cols + 1
        )
    fig.update_annotations(font_size=10)
    fig.update_layout(
        title=title or "Per-input precision: rung, avg weight bits (b) and prediction",
        height=150 * rows + 80,
        margin={"t": 90, "l": 20, "r": 20, "b": 20},
    )
    return fig
