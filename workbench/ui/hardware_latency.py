"""Plotly figures of latency against accuracy: estimated latency of plans per hardware profile
(:func:`latency_accuracy_figure`) and the trials of a latency search (:func:`search_latency_figure`)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.ui.figures import _need
from workbench.ui.hardware_profiles import PALETTE


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


def _add_latency_subplot(
    fig: go.Figure,
    sub: pd.DataFrame,
    col: int,
    prof: str,
    colors: dict[str, str],
    cols: tuple[str, str, str],
    front: bool,
) -> None:
    """Subplot ``col`` of :func:`latency_accuracy_figure`: the plans of one profile (``cols``: latency,
    accuracy and label columns), and with ``front`` the line joining the plans no other beats on both."""
    latency_col, accuracy_col, label_col = cols
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
        _add_latency_subplot(fig, sub, col, prof, colors, (latency_col, accuracy_col, label_col), front)
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


def deployed_front_figure(front: Any, *, title: str | None = None) -> go.Figure:
    """Measured latency per batch (ms) against the metric of every deployed plan of a
    :class:`~workbench.hardware.deployed_front.DeployedFront` (or its ``table``): the searched plans as a line
    through their own front, the uniform deployments as labelled diamonds, and dotted lines from each estimate
    to its measurement where the search estimated one."""
    table = front.table if hasattr(front, "table") else front
    if not isinstance(table, pd.DataFrame):
        raise TypeError(
            f"deployed_front_figure takes a DeployedFront or its table, got {type(front).__name__}"
        )
    _need(table, ["plan", "kind", "metric", "measured_ms"])
    metric = getattr(front, "metric_name", "metric")
    fig = go.Figure()
    searched = table[table["kind"] == "searched"].sort_values("measured_ms")
    lat, val = searched["measured_ms"].to_numpy(np.float64), searched["metric"].to_numpy(np.float64)
    best = _latency_front(lat, val) if len(searched) else np.array([], dtype=int)
    hover = "<b>%{text}</b><br>measured %{x:.4g} ms<br>" + metric + " %{y:.4f}<extra></extra>"
    fig.add_trace(go.Scatter(x=lat, y=val, mode="markers", name=f"searched ({len(searched)})",
                             text=searched["plan"].tolist(), marker={"color": PALETTE[0], "size": 9},
                             hovertemplate=hover))  # fmt: skip
    fig.add_trace(go.Scatter(x=lat[best], y=val[best], mode="lines", line={"shape": "hv", "color": PALETTE[0]},
                             name="searched front, measured", hoverinfo="skip"))  # fmt: skip
    uniform = table[table["kind"] == "uniform"]
    fig.add_trace(go.Scatter(x=uniform["measured_ms"], y=uniform["metric"], mode="markers+text",
                             name="uniform deployments", text=uniform["plan"].tolist(), textposition="top center",
                             marker={"symbol": "diamond", "size": 12, "color": "#7f7f7f"},
                             hovertemplate=hover))  # fmt: skip
    if "estimated_ms" in searched and searched["estimated_ms"].notna().any():
        est = searched[searched["estimated_ms"].notna()]
        xs = [v for e, m in zip(est["estimated_ms"], est["measured_ms"], strict=True) for v in (e, m, None)]
        ys = [v for a in est["metric"] for v in (a, a, None)]
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line={"dash": "dot", "color": PALETTE[1]},
                                 name="estimate -> measured", hoverinfo="skip"))  # fmt: skip
    fig.update_layout(
        title=title or f"Deployed plans: {metric} against measured latency",
        xaxis_title="measured latency (ms per batch)",
        yaxis_title=metric,
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.0, "x": 0},
        height=460,
        margin={"t": 90},
    )
    return fig


__all__ = ["deployed_front_figure", "latency_accuracy_figure", "search_latency_figure"]
