"""Plotly figures of searches: Pareto fronts, strategies compared, hypervolumes. Functions return figures; nothing
is shown. Accuracy is drawn in percent; weight size in percent of the FP32 weight bytes when that is known, else
in KiB."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from workbench.search.result import rank_front
from workbench.ui.figures import PALETTE, _need

TRIAL_COLUMNS = ["accuracy", "weight_bytes"]
SKIPPED = "skipped_over_budget"


def _is_result(obj: Any) -> bool:
    return hasattr(obj, "trials") and hasattr(obj, "front") and hasattr(obj, "fp32_weight_bytes")


def size_axis(fp32_weight_bytes: float | None) -> tuple[str, float]:
    """(x-axis title, divisor) for weight bytes: percent of FP32 when known, else KiB."""
    if fp32_weight_bytes:
        return "weight size (% of FP32 weight bytes)", float(fp32_weight_bytes) / 100.0
    return "weight size (KiB)", 1024.0


def front_of(trials: pd.DataFrame) -> pd.DataFrame:
    """Non-dominated (accuracy up, weight bytes down) rows of a trials table: feasible, measured or predicted
    ones (plans skipped for breaking a size budget never count), sorted by weight bytes."""
    from workbench.search.objectives import pareto_mask

    _need(trials, TRIAL_COLUMNS)
    ok = trials
    if "feasible" in ok.columns:
        ok = ok[ok["feasible"].astype(bool)]
    if "accuracy_source" in ok.columns:
        ok = ok[ok["accuracy_source"] != SKIPPED]
    if ok.empty:
        return ok.copy()
    mask = pareto_mask(ok[["accuracy", "weight_bytes"]].to_numpy(dtype=np.float64), ["maximize", "minimize"])
    return ok[mask].sort_values(["weight_bytes", "accuracy"], ascending=[True, False]).reset_index(drop=True)


def _hover(df: pd.DataFrame, acc_col: str = "accuracy") -> tuple[list[list[Any]], str]:
    """customdata and hovertemplate: label, accuracy, weight bytes, average weight bits, accuracy source."""
    n = len(df)
    label = df["label"].astype(str).to_numpy() if "label" in df.columns else np.array([""] * n)
    bits = (
        df["avg_weight_bits"].to_numpy(dtype=np.float64)
        if "avg_weight_bits" in df.columns
        else np.full(n, np.nan)
    )
    source = (
        df["accuracy_source"].astype(str).to_numpy()
        if "accuracy_source" in df.columns
        else np.array([""] * n)
    )
    weight = df["weight_bytes"].to_numpy(dtype=np.int64)
    custom = [[str(a), int(b), float(c), str(d)] for a, b, c, d in zip(label, weight, bits, source)]
    template = (
        "<b>%{customdata[0]}</b><br>" + f"{acc_col}: " + "%{y:.2f} %<br>weight bytes: %{customdata[1]:,}<br>"
        "avg weight bits: %{customdata[2]:.2f}<br>source: %{customdata[3]}<extra></extra>"
    )
    return custom, template


def _pareto_inputs(
    result_or_trials: Any,
    front: pd.DataFrame | None,
    fp32_weight_bytes: float | None,
    fp32_accuracy: float | None,
) -> tuple[pd.DataFrame, pd.DataFrame, float | None, float | None, str | None]:
    """(trials, front, FP32 weight bytes, FP32 accuracy, strategy name) of :func:`pareto_figure`'s input."""
    name = None
    if _is_result(result_or_trials):
        r = result_or_trials
        trials = r.trials
        front = r.front if front is None else front
        fp32_weight_bytes = fp32_weight_bytes or r.fp32_weight_bytes
        fp32_accuracy = r.fp32_accuracy if fp32_accuracy is None else fp32_accuracy
        name = f"{r.config.strategy} ({r.config.accuracy})" if hasattr(r, "config") else None
    elif isinstance(result_or_trials, pd.DataFrame) or result_or_trials is None:
        trials = result_or_trials if result_or_trials is not None else pd.DataFrame(columns=TRIAL_COLUMNS)
    else:
        raise TypeError(
            f"pareto_figure takes a SearchResult or a trials DataFrame, got {type(result_or_trials).__name__}"
        )
    if not trials.empty:
        _need(trials, TRIAL_COLUMNS)
    if front is None:
        front = front_of(trials) if not trials.empty else pd.DataFrame(columns=TRIAL_COLUMNS)
    elif not front.empty:
        _need(front, TRIAL_COLUMNS)
    return trials, front, fp32_weight_bytes, fp32_accuracy, name


def _add_trial_traces(fig: go.Figure, trials: pd.DataFrame, div: float) -> int:
    """One grey marker trace per accuracy source (over-budget plans left out); returns how many were left out."""
    shown = trials
    skipped = 0
    if "accuracy_source" in trials.columns:
        skipped = int((trials["accuracy_source"] == SKIPPED).sum())
        shown = trials[trials["accuracy_source"] != SKIPPED]
    groups = (
        list(shown.groupby("accuracy_source", sort=True))
        if "accuracy_source" in shown.columns and len(shown)
        else [("", shown)]
    )
    for source, df in groups:
        if df.empty:
            continue
        custom, template = _hover(df)
        feasible = (
            df["feasible"].astype(bool).to_numpy() if "feasible" in df.columns else np.ones(len(df), bool)
        )
        fig.add_trace(
            go.Scatter(
                x=df["weight_bytes"].to_numpy(dtype=np.float64) / div,
                y=100.0 * df["accuracy"].to_numpy(dtype=np.float64),
                mode="markers",
                name=f"trials ({source})" if source else "trials",
                marker={
                    "color": "rgba(120,120,120,0.55)",
                    "size": 7,
                    "symbol": [
                        "diamond-open" if source == "predicted" else "circle" if f else "x" for f in feasible
                    ],
                },
                customdata=custom,
                hovertemplate=template,
            )
        )
    return skipped


def _add_front_trace(fig: go.Figure, front: pd.DataFrame, div: float) -> None:
    """The Pareto front as a step line with markers (nothing when it is empty)."""
    if front.empty:
        return
    f = front.sort_values("weight_bytes")
    custom, template = _hover(f)
    fig.add_trace(
        go.Scatter(
            x=f["weight_bytes"].to_numpy(dtype=np.float64) / div,
            y=100.0 * f["accuracy"].to_numpy(dtype=np.float64),
            mode="lines+markers",
            line={"shape": "hv", "color": PALETTE[0], "width": 2},
            marker={"size": 9, "color": PALETTE[0]},
            name=f"Pareto front ({len(f)})",
            customdata=custom,
            hovertemplate=template,
        )
    )


def _add_fp32_line(fig: go.Figure, fp32_accuracy: float | None) -> None:
    """The FP32 accuracy as a dotted horizontal line (nothing when it is unknown)."""
    if fp32_accuracy is not None:
        fig.add_hline(
            y=100.0 * fp32_accuracy,
            line={"dash": "dot", "color": "black", "width": 1},
            annotation_text=f"FP32 {100.0 * fp32_accuracy:.2f} %",
            annotation_position="bottom right",
        )


def pareto_figure(
    result_or_trials: Any,
    *,
    front: pd.DataFrame | None = None,
    fp32_weight_bytes: float | None = None,
    fp32_accuracy: float | None = None,
    current: Mapping[str, Any] | None = None,
    title: str | None = None,
    metric: str | None = None,
) -> go.Figure:
    """Accuracy (%) against weight size of every trial, the Pareto front as a line, FP32 accuracy as a dashed
    line, and an optional ``current`` plan (a dict with ``accuracy`` and ``weight_bytes``) highlighted.

    ``result_or_trials``: a :class:`~workbench.search.study.SearchResult` (its trials, front and FP32 reference
    are used) or a trials DataFrame with columns ``accuracy`` and ``weight_bytes`` (``label``,
    ``avg_weight_bits``, ``accuracy_source``, ``feasible`` are used when present). ``front`` defaults to the
    result's front, or the non-dominated rows of the trials. Trial accuracies are on the search split
    (validation); the front's ``test_accuracy`` is not drawn here. ``metric``: what the accuracy column holds
    (axis label and title; default the result's ``info["metric_name"]``, else "accuracy").
    """
    if metric is None:
        info = getattr(result_or_trials, "info", None)  # a SearchResult's dict (a DataFrame's is a method)
        metric = str(info.get("metric_name", "accuracy")) if isinstance(info, dict) else "accuracy"
    trials, front, fp32_weight_bytes, fp32_accuracy, name = _pareto_inputs(
        result_or_trials, front, fp32_weight_bytes, fp32_accuracy
    )
    x_title, div = size_axis(fp32_weight_bytes)
    fig = go.Figure()
    skipped = _add_trial_traces(fig, trials, div)
    _add_front_trace(fig, front, div)
    _add_fp32_line(fig, fp32_accuracy)
    if current is not None:
        fig.add_trace(current_trace(current, div))
    if title is None:
        title = f"Pareto front: {metric} against weight size" + (f", {name}" if name else "")
        if skipped:
            title += f" ({skipped} over-budget plans not drawn)"
    fig.update_layout(
        title=title,
        xaxis_title=x_title,
        yaxis_title=f"{metric} (%)",
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.0, "x": 0},
        margin={"t": 90},
        height=480,
    )
    return fig


def current_trace(current: Mapping[str, Any], div: float) -> go.Scatter:
    """The highlighted marker of one plan (``accuracy`` may be None: drawn at the bottom, hollow)."""
    acc = current.get("accuracy")
    known = acc is not None and np.isfinite(acc)
    label = str(current.get("label", "current plan"))
    return go.Scatter(
        x=[float(current["weight_bytes"]) / div],
        y=[100.0 * float(acc) if known else None],
        mode="markers",
        name=label,
        marker={
            "size": 16,
            "color": "rgba(255,127,14,0.9)",
            "symbol": "star",
            "line": {"color": "black", "width": 1},
        },
        hovertemplate=f"<b>{label}</b><br>accuracy: %{{y:.2f}} %<br>weight: %{{x:.2f}}<extra></extra>",
    )


def strategy_comparison_figure(
    fronts: Mapping[str, pd.DataFrame],
    *,
    fp32_weight_bytes: float | None,
    fp32_accuracy: float | None = None,
    column: str = "accuracy",
    title: str | None = None,
) -> go.Figure:
    """One Pareto front per strategy (accuracy % against weight size). ``column``: ``accuracy`` (search split)
    or ``test_accuracy`` (the fronts re-measured on the final split)."""
    if not isinstance(fronts, Mapping):
        raise TypeError(f"fronts must be a mapping strategy -> front DataFrame, got {type(fronts).__name__}")
    x_title, div = size_axis(fp32_weight_bytes)
    fig = go.Figure()
    for i, (strategy, front) in enumerate(fronts.items()):
        if _is_result(front):
            front = front.front
        if front.empty:
            continue
        _need(front, [column, "weight_bytes"])
        f = front.sort_values("weight_bytes")
        custom, template = _hover(f.assign(accuracy=f[column]), column)
        color = PALETTE[i % len(PALETTE)]
        fig.add_trace(
            go.Scatter(
                x=f["weight_bytes"].to_numpy(dtype=np.float64) / div,
                y=100.0 * f[column].to_numpy(dtype=np.float64),
                mode="lines+markers",
                line={"shape": "hv", "color": color},
                marker={"size": 8, "color": color},
                name=f"{strategy} ({len(f)})",
                customdata=custom,
                hovertemplate=f"{strategy}<br>" + template,
            )
        )
    _add_fp32_line(fig, fp32_accuracy)
    split = "test" if column == "test_accuracy" else "validation"
    fig.update_layout(
        title=title or f"Pareto fronts by search strategy ({split} accuracy)",
        xaxis_title=x_title,
        yaxis_title=f"{split} accuracy (%)",
        height=480,
        legend_title_text="strategy (front size)",
    )
    return fig


def hypervolume_figure(table: pd.DataFrame, *, title: str | None = None) -> go.Figure:
    """Bars of the hypervolume per strategy. Several rows per strategy (seeds): median bar, min/max error bars;
    one row per strategy: its value, with error bars from ``hypervolume_min`` / ``hypervolume_max`` when given."""
    _need(table, ["strategy", "hypervolume"])
    if table["strategy"].duplicated().any():
        g = table.groupby("strategy", sort=False)["hypervolume"]
        agg = pd.DataFrame(
            {"median": g.median(), "min": g.min(), "max": g.max(), "n": g.size()}
        ).reset_index()
    else:
        agg = pd.DataFrame(
            {
                "strategy": table["strategy"],
                "median": table["hypervolume"],
                "min": table.get("hypervolume_min", table["hypervolume"]),
                "max": table.get("hypervolume_max", table["hypervolume"]),
                "n": table.get("runs", pd.Series(1, index=table.index)),
            }
        )
    med = agg["median"].to_numpy(dtype=np.float64)
    errors = (agg["max"].to_numpy(dtype=np.float64) - med, med - agg["min"].to_numpy(dtype=np.float64))
    has_err = bool(np.any(errors[0] > 0) or np.any(errors[1] > 0))
    fig = go.Figure(
        go.Bar(
            x=agg["strategy"].astype(str),
            y=med,
            marker_color=[PALETTE[i % len(PALETTE)] for i in range(len(agg))],
            error_y={"type": "data", "symmetric": False, "array": errors[0], "arrayminus": errors[1]}
            if has_err
            else None,
            customdata=agg["n"].to_numpy(),
            hovertemplate="%{x}<br>hypervolume: %{y:.4f}<br>runs: %{customdata}<extra></extra>",
        )
    )
    fig.update_layout(
        title=title
        or (
            "Hypervolume per strategy (median, min-max over runs)" if has_err else "Hypervolume per strategy"
        ),
        xaxis_title="strategy",
        yaxis_title="hypervolume (normalised, 1 = best possible)",
        height=420,
    )
    return fig


def strategy_table(results: Mapping[str, Any], *, max_weight_fraction: float = 1 / 8) -> pd.DataFrame:
    """One row per strategy of ``results`` (strategy -> SearchResult): hypervolume, real evaluations, trials,
    front size, seconds, and the best front plan within ``max_weight_fraction`` of the FP32 weight bytes, chosen
    by validation accuracy (its validation and test accuracy, weight fraction, average weight bits; NaN when no
    front plan is that small)."""
    rows = []
    for strategy, r in results.items():
        row: dict[str, Any] = {
            "strategy": strategy,
            "hypervolume": float(r.hypervolume),
            "real_evaluations": int(r.real_evaluations),
            "trials": len(r.trials),
            "front_size": len(r.front),
            "seconds": float(r.seconds),
        }
        best = None
        if not r.front.empty:
            # chosen on the search (validation) split; its test accuracy is reported, never selected on
            top = rank_front(r.front, r.fp32_weight_bytes, 1, max_weight_fraction=max_weight_fraction)
            if not top.empty:
                best = top.iloc[0]
        row["best_val_accuracy"] = float(best["accuracy"]) if best is not None else np.nan
        row["best_test_accuracy"] = (
            float(best["test_accuracy"]) if best is not None and "test_accuracy" in best.index else np.nan
        )
        row["best_weight_fraction"] = (
            float(best["weight_bytes"]) / r.fp32_weight_bytes if best is not None else np.nan
        )
        row["best_avg_weight_bits"] = float(best["avg_weight_bits"]) if best is not None else np.nan
        rows.append(row)
    table = pd.DataFrame(rows)
    table.attrs["max_weight_fraction"] = max_weight_fraction
    return table


__all__ = [
    "front_of",
    "hypervolume_figure",
    "pareto_figure",
    "size_axis",
    "strategy_comparison_figure",
    "strategy_table",
]


def search_figures(result: Any) -> dict[str, go.Figure]:
    """The figures a search logs with its MLflow run (pass as ``run_search(..., figures=search_figures)``)."""
    return {"pareto_front": pareto_figure(result)}
