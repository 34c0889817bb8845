"""Plotly figures of a runtime evaluation (:class:`workbench.runtime.RuntimeEvaluation`): dynamic precision against
the best static map of equal cost, and every static map considered with the dynamic runs on top; plus the colours
and table helpers the other runtime figures share.

Figure functions return figures; nothing is shown. Accuracy is drawn in percent, cost in BOPs (bit operations:
MACs x weight bits x activation bits) per input, weight bits MAC-weighted.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from workbench.ui.figures import _need

POLICY_COLORS: dict[str, str] = {
    "static": "#7f7f7f",
    "rule": "#1f77b4",
    "learned": "#2ca02c",
    "cascade": "#d62728",
    "oracle": "#000000",
}
ORACLE = "oracle"  # evaluate_runtime's upper-bound row (knows per input which rung keeps the FP32 answer)
STATIC_COLOR, FP32_COLOR = "#ff7f0e", "#7f7f7f"
OTHER_COLORS = ("#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
BOPS_AXIS = "average BOPs per input (bit operations)"
ACC_AXIS = "accuracy (%)"


def _color(policy: str, i: int) -> str:
    return POLICY_COLORS.get(policy, OTHER_COLORS[i % len(OTHER_COLORS)])


def _rows(table: pd.DataFrame, data: str) -> pd.DataFrame:
    """The feasible rows (finite accuracy) of ``data``; a clear error when ``data`` is not in the table."""
    _need(table, ["data", "policy", "accuracy"])
    if data not in set(table["data"]):
        raise ValueError(f"data={data!r} not in the table; it has {sorted(set(table['data']))}")
    rows = table[table["data"] == data]
    return rows[np.isfinite(rows["accuracy"].to_numpy(dtype=float))]


def _policies(rows: pd.DataFrame) -> list[str]:
    """The policies of ``rows`` in table order, the oracle (an upper bound, not a policy) last."""
    pols = list(dict.fromkeys(rows["policy"]))
    return [p for p in pols if p != ORACLE] + [p for p in pols if p == ORACLE]


def _marker(pol: str, i: int, size: int, symbol: str = "circle") -> dict[str, Any]:
    if pol == ORACLE:
        return {"size": size + 4, "symbol": "star", "color": _color(pol, i)}
    return {"size": size, "symbol": symbol, "color": _color(pol, i)}


def _trace_name(pol: str, prefix: str = "") -> str:
    return "oracle (upper bound)" if pol == ORACLE else f"{prefix}{pol}"


def _cost_is_bops(rows: pd.DataFrame) -> bool:
    """Whether the budget kind of ``rows`` is BOPs (then avg_cost == avg_bops for every row)."""
    if rows.empty:
        return True
    return bool(np.allclose(rows["avg_cost"].to_numpy(float), rows["avg_bops"].to_numpy(float), rtol=1e-6))


TRADEOFF_COLUMNS: tuple[str, ...] = (
    "data",
    "budget_fraction",
    "policy",
    "accuracy",
    "avg_cost",
    "avg_bops",
    "static_cost",
    "static_accuracy",
)
"""The columns :func:`runtime_tradeoff_figure` needs in its table."""


def runtime_tradeoff_figure(
    table: pd.DataFrame, *, data: str = "clean", title: str | None = None
) -> go.Figure:
    """Accuracy against average BOPs per input of each dynamic policy (one marker trace per policy, points joined
    in budget order), and the best static map within each dynamic run's cost (one more trace).

    ``table``: :attr:`workbench.runtime.RuntimeEvaluation.table`; rows of ``data`` with NaN accuracy (budgets
    below what the policy can run) are left out. The static point of a row is ``(static_cost, static_accuracy)``:
    the static map with the best accuracy on the same data among those costing at most the dynamic run's average
    (chosen on the evaluated data, so optimistic for static). When the budget kind is not BOPs, both axes use the
    budget kind's cost (``avg_cost``) instead. FP32 accuracy is a dashed line.
    """
    _need(table, list(TRADEOFF_COLUMNS))
    rows = _rows(table, data)
    bops = _cost_is_bops(rows)
    xcol = "avg_bops" if bops else "avg_cost"
    fig = go.Figure()
    for i, pol in enumerate(_policies(rows)):
        r = rows[rows["policy"] == pol].sort_values("budget_fraction")
        fig.add_trace(_tradeoff_trace(r, pol, i, xcol))
    fig.add_trace(_static_points_trace(rows))
    if "fp32_accuracy" in rows.columns and len(rows):
        fp32 = 100 * float(rows["fp32_accuracy"].iloc[0])
        fig.add_hline(y=fp32, line_dash="dash", line_color=FP32_COLOR, annotation_text=f"FP32 {fp32:.2f} %")
    fig.update_layout(
        title=title or f"Dynamic precision against the best static map of equal cost ({data} data)",
        xaxis_title=BOPS_AXIS if bops else "average cost per input (budget units)",
        yaxis_title=ACC_AXIS,
        height=460,
        legend={"title": "policy"},
    )
    return fig


def _optional(r: pd.DataFrame, col: str) -> np.ndarray:
    """Column ``col`` of ``r`` as floats, NaN when ``r`` lacks it."""
    return r.get(col, pd.Series(np.nan, index=r.index)).to_numpy(float)


def _tradeoff_trace(r: pd.DataFrame, pol: Any, i: int, xcol: str) -> go.Scatter:
    """The points of policy ``pol`` (rows ``r`` in budget order; joined, but for the oracle's)."""
    custom = np.stack(
        [
            r["budget_fraction"].to_numpy(float),
            _optional(r, "avg_weight_bits"),
            _optional(r, "overhead_fraction"),
            _optional(r, "overrides"),
        ],
        1,
    )
    return go.Scatter(
        x=r[xcol].to_numpy(float),
        y=100 * r["accuracy"].to_numpy(float),
        mode="markers" if pol == ORACLE else "lines+markers",
        name=_trace_name(str(pol)),
        marker=_marker(str(pol), i, 10),
        line={"width": 1, "dash": "dot"},
        customdata=custom,
        hovertemplate=_tradeoff_hover(pol),
    )


def _tradeoff_hover(pol: Any) -> str:
    """The hover template of policy ``pol``'s points (customdata: budget fraction, weight bits, overhead,
    overrides)."""
    return (
        (
            "<b>oracle</b>: each input on the cheapest rung keeping the FP32 answer (upper bound)"
            if pol == ORACLE
            else f"<b>{pol}</b> (budget %{{customdata[0]:.2f}} of 8-bit)"
        )
        + "<br>accuracy %{y:.2f} %<br>cost %{x:.4g}<br>avg weight bits %{customdata[1]:.2f}"
        + (
            ""
            if pol == ORACLE
            else "<br>overhead %{customdata[2]:.1%} of inference<br>manager overrides %{customdata[3]:.0f}"
        )
        + "<extra></extra>"
    )


def _static_points_trace(rows: pd.DataFrame) -> go.Scatter:
    """The best static map within each dynamic run's cost: ``(static_cost, static_accuracy)`` of ``rows``."""
    st = rows[np.isfinite(rows["static_accuracy"].to_numpy(float))]
    return go.Scatter(
        x=st["static_cost"].to_numpy(float),
        y=100 * st["static_accuracy"].to_numpy(float),
        mode="markers",
        name="best static map within the same cost",
        marker={"size": 12, "color": "rgba(0,0,0,0)", "line": {"color": STATIC_COLOR, "width": 2}},
        customdata=list(
            zip(
                st["policy"].astype(str),
                st["budget_fraction"].astype(float),
                st.get("static_map", pd.Series("", index=st.index)).astype(str),
                strict=True,
            )
        ),
        hovertemplate=(
            "<b>static</b> vs %{customdata[0]} at budget %{customdata[1]:.2f}<br>%{customdata[2]}"
            "<br>accuracy %{y:.2f} %<br>cost %{x:.4g}<extra></extra>"
        ),
    )


def static_front_figure(
    static_maps: pd.DataFrame, table: pd.DataFrame, *, data: str = "clean", title: str | None = None
) -> go.Figure:
    """Every static map considered (:attr:`RuntimeEvaluation.static_maps`: accuracy against BOPs per input) with
    their Pareto front, and the dynamic runs of ``table`` on top (one trace per policy).

    Traces: static maps, static Pareto front, then one per policy of the feasible rows of ``data``.
    """
    _need(static_maps, ["data", "map", "bops", "avg_bits", "accuracy"])
    _need(table, ["data", "budget_fraction", "policy", "accuracy", "avg_bops"])
    if data not in set(static_maps["data"]):
        raise ValueError(
            f"data={data!r} not in the static maps; they have {sorted(set(static_maps['data']))}"
        )
    sm = static_maps[static_maps["data"] == data].sort_values(["bops", "accuracy"], ascending=[True, False])
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=sm["bops"].to_numpy(float),
            y=100 * sm["accuracy"].to_numpy(float),
            mode="markers",
            name="static maps",
            marker={"size": 7, "color": "rgba(127,127,127,0.55)"},
            customdata=list(zip(sm["map"].astype(str), sm["avg_bits"].astype(float), strict=True)),
            hovertemplate=(
                "<b>static</b> %{customdata[0]}<br>accuracy %{y:.2f} %<br>BOPs %{x:.4g}"
                "<br>avg weight bits %{customdata[1]:.2f}<extra></extra>"
            ),
        )
    )
    best, fx, fy = -math.inf, [], []
    for b, a in zip(sm["bops"].to_numpy(float), sm["accuracy"].to_numpy(float), strict=True):
        if a > best:
            best = a
            fx.append(b)
            fy.append(100 * a)
    fig.add_trace(
        go.Scatter(
            x=fx,
            y=fy,
            mode="lines",
            name="static Pareto front",
            line={"color": STATIC_COLOR, "width": 2, "shape": "hv"},
            hoverinfo="skip",
        )
    )
    rows = _rows(table, data)
    for i, pol in enumerate(_policies(rows)):
        r = rows[rows["policy"] == pol].sort_values("budget_fraction")
        fig.add_trace(
            go.Scatter(
                x=r["avg_bops"].to_numpy(float),
                y=100 * r["accuracy"].to_numpy(float),
                mode="markers",
                name=_trace_name(str(pol), "dynamic: "),
                marker=_marker(str(pol), i, 12, "diamond"),
                customdata=r["budget_fraction"].to_numpy(float),
                hovertemplate=(
                    (
                        "<b>oracle</b> (upper bound)"
                        if pol == ORACLE
                        else f"<b>{pol}</b> (budget %{{customdata:.2f}} of 8-bit)"
                    )
                    + "<br>accuracy %{y:.2f} %<br>BOPs %{x:.4g}<extra></extra>"
                ),
            )
        )
    fig.update_layout(
        title=title or f"Static precision maps and dynamic precision ({data} data)",
        xaxis_title="BOPs per input (bit operations)",
        yaxis_title=ACC_AXIS,
        height=460,
    )
    return fig
