"""Plotly figures of hardware precision profiles, cost estimates and deployments. Functions return figures (or
tables); nothing is shown. Accuracy is drawn in percent, throughput in MACs (elements for ``elementwise``) per
second, latency in milliseconds."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.hardware.profile import PRECISIONS, PrecisionProfile, load_profile
from workbench.ui.figures import _need

if TYPE_CHECKING:
    from workbench.hardware.deploy import DeployResult
    from workbench.hardware.estimate import PlanEstimate

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
FP32_COLOR, DEPLOYED_COLOR = "#7f7f7f", "#1f77b4"


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


def _latency_front(latency: np.ndarray, accuracy: np.ndarray) -> np.ndarray:
    """Indices of the points no other point beats on both lower latency and higher accuracy, by latency."""
    order = np.lexsort((-accuracy, latency))
    keep, best = [], -np.inf
    for i in order:
        if accuracy[i] > best:
            keep.append(i)
            best = accuracy[i]
    return np.asarray(keep, dtype=int)


def _point_labels(x: np.ndarray, y: np.ndarray, labels: list[str]) -> list[str]:
    """Text of each point: the labels of every point at the same place joined on the first, empty on the rest
    (plans that fall back to the same kernels land on one spot)."""
    first: dict[tuple[float, float], int] = {}
    text = [""] * len(labels)
    for i, key in enumerate(zip(x.tolist(), y.tolist())):
        j = first.setdefault(key, i)
        text[j] = labels[i] if j == i else f"{text[j]} = {labels[i]}"
    return text


def latency_accuracy_figure(
    df: pd.DataFrame,
    *,
    profile_col: str = "profile",
    latency_col: str = "latency_ms",
    accuracy_col: str = "accuracy",
    label_col: str = "plan",
    front: bool = True,
    log_x: bool = True,
    title: str | None = None,
) -> go.Figure:
    """Estimated latency (x, ms) against accuracy (y, %) of plans, one subplot per profile (in the order they
    first appear), with independent x axes and a shared accuracy axis.

    ``df``: one row per (plan, profile), e.g. :func:`workbench.hardware.estimate_plans` merged with each plan's
    accuracy (a fraction in [0, 1]). Each subplot has one scatter trace of every plan (hover: ``label_col``) and,
    with ``front``, a second trace joining the plans no other beats on both latency and accuracy. Rows with a
    missing latency or accuracy are left out.
    """
    _need(df, [profile_col, latency_col, accuracy_col, label_col])
    profiles = list(dict.fromkeys(df[profile_col].astype(str)))
    if not profiles:
        raise ValueError("latency_accuracy_figure needs at least one row")
    fig = make_subplots(
        rows=1,
        cols=len(profiles),
        shared_yaxes=True,
        subplot_titles=profiles,
        horizontal_spacing=min(0.06, 0.5 / max(1, len(profiles) - 1)) if len(profiles) > 1 else 0.0,
    )
    plans = list(dict.fromkeys(df[label_col].astype(str)))
    colors = {p: PALETTE[i % len(PALETTE)] for i, p in enumerate(plans)}
    batch = None
    if "batch_size" in df.columns and df["batch_size"].nunique() == 1:
        batch = int(df["batch_size"].iloc[0])
    for col, prof in enumerate(profiles, start=1):
        sub = df[df[profile_col].astype(str) == prof]
        sub = sub[sub[latency_col].notna() & sub[accuracy_col].notna()]
        lat = sub[latency_col].to_numpy(dtype=np.float64)
        acc = 100.0 * sub[accuracy_col].to_numpy(dtype=np.float64)
        labels = sub[label_col].astype(str).tolist()
        fig.add_trace(
            go.Scatter(
                x=lat,
                y=acc,
                mode="markers+text",
                text=_point_labels(lat, acc, labels),
                customdata=labels,
                textposition="top center",
                textfont={"size": 9},
                marker={"size": 10, "color": [colors[p] for p in labels]},
                name=prof,
                showlegend=False,
                hovertemplate=(
                    f"<b>%{{customdata}}</b> on {prof}<br>latency %{{x:.4g}} ms<br>accuracy %{{y:.2f}} %"
                    "<extra></extra>"
                ),
            ),
            row=1,
            col=col,
        )
        if front:
            idx = _latency_front(lat, acc) if len(lat) else np.array([], dtype=int)
            fig.add_trace(
                go.Scatter(
                    x=lat[idx],
                    y=acc[idx],
                    mode="lines",
                    line={"shape": "hv", "color": "rgba(0,0,0,0.35)", "dash": "dot"},
                    name=f"{prof} front",
                    showlegend=False,
                    hoverinfo="skip",
                ),
                row=1,
                col=col,
            )
        fig.update_xaxes(
            title_text="latency (ms" + (f" per batch of {batch}" if batch else "") + ")",
            type="log" if log_x else "linear",
            row=1,
            col=col,
        )
    fig.update_yaxes(title_text="accuracy (%)", row=1, col=1)
    fig.update_layout(
        title=title or "Estimated latency against accuracy per hardware profile",
        height=440,
        width=max(520, 330 * len(profiles)),
        margin={"t": 90},
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


def search_latency_figure(
    result_or_trials: Any,
    *,
    latency_col: str = "latency_ms",
    title: str | None = None,
) -> go.Figure:
    """Accuracy (%) against estimated latency per sample (ms) of every trial of a latency search, with the
    trials no other beats on both as a line.

    ``result_or_trials``: a :class:`~workbench.search.study.SearchResult` (its trials; the title names its
    latency source, e.g. ``profile:bitfusion``) or a trials DataFrame with ``accuracy`` and ``latency_ms``
    (``label``, ``feasible``, ``accuracy_source`` used when present; over-budget plans are never drawn).
    """
    source = None
    if hasattr(result_or_trials, "trials") and hasattr(result_or_trials, "front"):
        trials = result_or_trials.trials
        source = getattr(result_or_trials, "info", {}).get("latency_source")
    elif isinstance(result_or_trials, pd.DataFrame):
        trials = result_or_trials
    else:
        raise TypeError(
            f"search_latency_figure takes a SearchResult or a trials DataFrame, got {type(result_or_trials).__name__}"
        )
    _need(trials, ["accuracy", latency_col])
    shown = trials
    if "accuracy_source" in shown.columns:
        shown = shown[shown["accuracy_source"] != "skipped_over_budget"]
    shown = shown[shown["accuracy"].notna() & shown[latency_col].notna()]
    feasible = (
        shown["feasible"].astype(bool).to_numpy()
        if "feasible" in shown.columns
        else np.ones(len(shown), bool)
    )
    labels = (
        shown["label"].astype(str).tolist()
        if "label" in shown.columns
        else [f"trial {i}" for i in shown.index]
    )
    lat = shown[latency_col].to_numpy(dtype=np.float64)
    acc = 100.0 * shown["accuracy"].to_numpy(dtype=np.float64)
    fig = go.Figure(
        go.Scatter(
            x=lat,
            y=acc,
            mode="markers",
            name=f"trials ({len(shown)})",
            text=labels,
            marker={
                "color": "rgba(120,120,120,0.6)",
                "size": 8,
                "symbol": ["circle" if f else "x" for f in feasible],
            },
            hovertemplate="<b>%{text}</b><br>latency %{x:.4g} ms/sample<br>accuracy %{y:.2f} %<extra></extra>",
        )
    )
    idx = _latency_front(lat[feasible], acc[feasible]) if feasible.any() else np.array([], dtype=int)
    flat, facc = lat[feasible][idx], acc[feasible][idx]
    fig.add_trace(
        go.Scatter(
            x=flat,
            y=facc,
            mode="lines+markers",
            line={"shape": "hv", "color": PALETTE[0], "width": 2},
            marker={"size": 10, "color": PALETTE[0]},
            name=f"latency-accuracy front ({len(idx)})",
            text=[labels[i] for i in np.flatnonzero(feasible)[idx]],
            hovertemplate="<b>%{text}</b><br>latency %{x:.4g} ms/sample<br>accuracy %{y:.2f} %<extra></extra>",
        )
    )
    fig.update_layout(
        title=title
        or ("Search trials: accuracy against estimated latency" + (f" ({source})" if source else "")),
        xaxis_title="estimated latency (ms per sample)",
        yaxis_title="accuracy (%)",
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.0, "x": 0},
        height=460,
        margin={"t": 90},
    )
    return fig


__all__ = [
    "deploy_comparison_figure",
    "estimate_breakdown_figure",
    "latency_accuracy_figure",
    "ordered_precisions",
    "profile_comparison_figure",
    "search_latency_figure",
    "throughput_table",
]
