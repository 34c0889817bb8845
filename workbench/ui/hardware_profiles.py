"""Plotly figures of hardware precision profiles and cost estimates: throughput per precision
(:func:`throughput_table`, :func:`profile_comparison_figure`) and one plan's estimated latency per node
(:func:`estimate_breakdown_figure`). Also the colours every hardware figure shares."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from workbench.hardware.profile import PRECISIONS, PrecisionProfile, load_profile
from workbench.ui.figures import PALETTE, _need

if TYPE_CHECKING:
    from workbench.hardware.estimate import PlanEstimate

PRECISION_COLORS: dict[str, str] = {
    "fp32": "#7f7f7f",
    "tf32": "#8c564b",
    "bf16": "#9467bd",
    "fp16": "#e377c2",
    "fp8": "#17becf",
    "int8": "#1f77b4",
    "int4": "#2ca02c",
    "int2": "#d62728",
}
KIND_PATTERNS: dict[str, str] = {"layer": "", "elementwise": "/", "conversion": "x"}


def _profiles(profiles: Sequence[PrecisionProfile | str]) -> list[PrecisionProfile]:
    if isinstance(profiles, (str, PrecisionProfile)):
        profiles = [profiles]
    return [load_profile(p) for p in profiles]


def ordered_precisions(profile: PrecisionProfile, op: str = "conv") -> list[str]:
    """The precisions ``profile`` runs ``op`` at, in the canonical order fp32, tf32, bf16, fp16, fp8, int8, int4,
    int2 (a bit-serial target lists every integer width its brick rate gives)."""
    have = set(profile.precisions(op))
    return [p for p in PRECISIONS if p in have]


def _unit(op: str) -> str:
    return "elements/s" if op == "elementwise" else "MACs/s"


def throughput_table(profiles: Sequence[PrecisionProfile | str], *, op: str = "conv") -> pd.DataFrame:
    """One row per profile (index: its name): ``kind``, ``cost_model``, then the throughput of ``op`` in MACs/s
    (elements/s for ``elementwise``) at each precision, in canonical order; NaN where the profile has no kernel.
    Bit-serial int widths come from :meth:`PrecisionProfile.op_cost` (brick rate / bricks per MAC)."""
    profs = _profiles(profiles)
    cols = [p for p in PRECISIONS if any(p in ordered_precisions(prof, op) for prof in profs)]
    rows = []
    for prof in profs:
        row: dict[str, Any] = {"profile": prof.name, "kind": prof.kind, "cost_model": prof.cost_model}
        have = set(ordered_precisions(prof, op))
        for p in cols:
            row[p] = prof.op_cost(op, p).macs_per_s if p in have else math.nan
        rows.append(row)
    table = pd.DataFrame(rows, columns=["profile", "kind", "cost_model", *cols]).set_index("profile")
    table.attrs["unit"] = _unit(op)
    table.attrs["op"] = op
    return table


def profile_comparison_figure(
    profiles: Sequence[PrecisionProfile | str], *, op: str = "conv", title: str | None = None
) -> go.Figure:
    """Grouped bars of the throughput of ``op`` per precision (log y axis), one trace per profile.

    ``profiles``: :class:`~workbench.hardware.PrecisionProfile` objects (or names / paths). The x axis lists
    the precisions in the order fp32, tf32, bf16, fp16, fp8, int8, int4, int2; each profile has bars only at the
    precisions it runs ``op`` at (a bit-serial target's int4 / int8 derived from its int2 brick rate). A profile
    without any ``op`` kernel gets no trace; the title names it.
    """
    profs = _profiles(profiles)
    fig = go.Figure()
    order: list[str] = []
    missing: list[str] = []
    for i, prof in enumerate(profs):
        precs = ordered_precisions(prof, op)
        if not precs:
            missing.append(prof.name)
            continue
        order.extend(p for p in precs if p not in order)
        costs = [prof.op_cost(op, p) for p in precs]
        custom = [[prof.kind, c.source, c.note, c.overhead_us] for c in costs]
        fig.add_trace(
            go.Bar(
                x=precs,
                y=[c.macs_per_s for c in costs],
                name=f"{prof.name} ({prof.kind})",
                marker_color=PALETTE[i % len(PALETTE)],
                customdata=custom,
                hovertemplate=(
                    f"<b>{prof.name}</b> %{{x}}<br>%{{y:.3s}} {_unit(op)}<br>%{{customdata[0]}}, "
                    "source: %{customdata[1]}<br>overhead %{customdata[3]} us<br>%{customdata[2]}<extra></extra>"
                ),
            )
        )
    order = [p for p in PRECISIONS if p in order]
    if title is None:
        title = f"{op} throughput by precision per hardware profile"
        if missing:
            title += f" (no {op} kernel: {', '.join(missing)})"
    fig.update_layout(
        title=title,
        barmode="group",
        xaxis={"title": {"text": "precision"}, "categoryorder": "array", "categoryarray": order},
        yaxis={"title": {"text": f"throughput ({_unit(op)}, log scale)"}, "type": "log"},
        legend_title_text="profile",
        height=460,
    )
    return fig


def estimate_breakdown_figure(estimate: PlanEstimate, *, title: str | None = None) -> go.Figure:
    """Estimated latency of each costed node of one plan on one profile (a
    :class:`~workbench.hardware.PlanEstimate`): bars in graph order, one trace per precision (coloured by it),
    elementwise ops hatched ``/`` and conversions ``x``; hover gives the op, bound, work, bytes, compute and
    memory time."""
    layers = estimate.layers
    _need(
        layers, ["node", "kind", "op", "precision", "work", "bytes", "compute_ms", "memory_ms", "latency_ms"]
    )
    fig = go.Figure()
    nodes = list(dict.fromkeys(layers["node"].astype(str)))
    precisions = list(dict.fromkeys(layers["precision"].astype(str)))
    precisions = [p for p in PRECISIONS if p in precisions] + [p for p in precisions if p not in PRECISIONS]
    for i, prec in enumerate(precisions):
        sub = layers[layers["precision"].astype(str) == prec]
        bound = sub["bound"].astype(str) if "bound" in sub.columns else pd.Series("", index=sub.index)
        custom = [
            [str(k), str(o), str(b), float(w), float(n), float(c), float(m)]
            for k, o, b, w, n, c, m in zip(
                sub["kind"], sub["op"], bound, sub["work"], sub["bytes"], sub["compute_ms"], sub["memory_ms"]
            )
        ]
        fig.add_trace(
            go.Bar(
                x=sub["node"].astype(str).tolist(),
                y=sub["latency_ms"].to_numpy(dtype=np.float64),
                name=prec,
                marker={
                    "color": PRECISION_COLORS.get(prec, PALETTE[i % len(PALETTE)]),
                    "pattern": {"shape": [KIND_PATTERNS.get(k, ".") for k in sub["kind"].astype(str)]},
                },
                customdata=custom,
                hovertemplate=(
                    "<b>%{x}</b> (%{customdata[0]}, %{customdata[1]}, " + prec + ")<br>"
                    "latency %{y:.4g} ms, %{customdata[2]}-bound<br>compute %{customdata[5]:.4g} ms, "
                    "memory %{customdata[6]:.4g} ms<br>work %{customdata[3]:.4s}, bytes %{customdata[4]:.4s}"
                    "<extra></extra>"
                ),
            )
        )
    if title is None:
        title = (
            f"Estimated latency per node on {estimate.profile}: {estimate.latency_ms:.4g} ms per batch of "
            f"{estimate.batch_size} (layers {estimate.layer_ms:.3g}, elementwise {estimate.elementwise_ms:.3g}, "
            f"conversions {estimate.conversion_ms:.3g} ms)"
        )
        if estimate.fallback_layers:
            title += f"<br><sup>{len(estimate.fallback_layers)} layer(s) fell back to another precision</sup>"
    fig.update_layout(
        title=title,
        barmode="stack",
        xaxis={"title": {"text": "node (graph order)"}, "categoryorder": "array", "categoryarray": nodes},
        yaxis={"title": {"text": f"estimated latency (ms per batch of {estimate.batch_size})"}},
        legend_title_text="precision",
        height=460,
        margin={"t": 90},
    )
    return fig


__all__ = [
    "KIND_PATTERNS",
    "PALETTE",
    "PRECISION_COLORS",
    "estimate_breakdown_figure",
    "ordered_precisions",
    "profile_comparison_figure",
    "throughput_table",
]
