"""The pieces of :class:`~workbench.ui.explorer.BitWidthExplorer`'s view that need no explorer: labels, the front
table, the grid's columns and cells, the Pareto figure with the current-plan marker and the summary table."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ipywidgets as W
import numpy as np
import pandas as pd
import plotly.graph_objects as go
from IPython.display import display

from workbench.quant.spec import QuantPlan
from workbench.search.space import KNOBS, SearchSpace, Unit
from workbench.ui.search import current_trace, pareto_figure, size_axis

KNOB_LABELS = {
    "method": "method",
    "w_bits": "w bits",
    "a_bits": "a bits",
    "granularity": "granularity",
    "sparsity": "sparsity",
    "structure": "structure",
    "rank_ratio": "rank ratio",
}
# knobs a method uses (the others are ignored when the plan is built, and greyed out in the grid)
METHOD_KNOBS = {
    "none": (),
    "quantize": ("w_bits", "a_bits", "granularity"),
    "prune": ("w_bits", "a_bits", "granularity", "sparsity", "structure"),
    "lowrank": ("w_bits", "a_bits", "granularity", "rank_ratio"),
}
CURRENT = "current plan"
CURRENT_SIZE = "current plan size"


def _label(value: Any, knob: str | None = None) -> str:
    if knob in ("w_bits", "a_bits") and value in (16, 32):
        return f"{value} (float)"  # 32: left in float32 (a_bits 32: weight-only), 16: a 16-bit float format
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _pct(x: float) -> str:
    return f"{100.0 * x:.2f} %" if x is not None and math.isfinite(x) else "n/a"


def figure_widget_available() -> bool:
    """plotly's ``go.FigureWidget`` needs the ``anywidget`` package; without it the plot is redrawn instead."""
    return importlib.util.find_spec("anywidget") is not None


def _in_kernel() -> bool:
    """True inside a Jupyter kernel (outside one, display() into an Output widget would print the figure)."""
    from IPython import get_ipython

    return getattr(get_ipython(), "kernel", None) is not None


def _compressed(plan: QuantPlan) -> list[str]:
    """Layers of ``plan`` that prune or factorise (the predictor cannot score them)."""
    return [n for n, s in plan.items() if s.method in ("prune", "lowrank")]


# ============================================================================================ front


def front_table(
    front: Any, cost_model: Any, predicted: Callable[[QuantPlan], float] | None
) -> tuple[pd.DataFrame | None, list[QuantPlan]]:
    """(front table, its plans) of a front DataFrame with a ``plan`` JSON column or a list of QuantPlans (priced
    with ``cost_model``, scored with ``predicted`` where it can); ``(None, [])`` for None."""
    if front is None:
        return None, []
    if isinstance(front, pd.DataFrame):
        if front.empty:
            return front, []
        if "plan" not in front.columns:
            raise ValueError(
                f"front DataFrame needs a 'plan' column (plan JSON); it has {list(front.columns)}"
            )
        plans = [p if isinstance(p, QuantPlan) else QuantPlan.from_dict(json.loads(p)) for p in front["plan"]]
        return front.reset_index(drop=True), plans
    if isinstance(front, Sequence) and all(isinstance(p, QuantPlan) for p in front):
        plans = list(front)
        rows = []
        for i, p in enumerate(plans):
            cost = cost_model(p)
            acc = math.nan
            if predicted is not None and not _compressed(p):
                with contextlib.suppress(Exception):
                    acc = float(predicted(p))
            rows.append(
                {"label": f"plan {i}", "accuracy": acc, "plan": p.to_json(indent=None), **cost.to_dict()}
            )
        return pd.DataFrame(rows), plans
    raise TypeError(
        f"front must be a SearchResult, a front DataFrame or a list of QuantPlans, got {type(front).__name__}"
    )


# ============================================================================================ grid


def grid_knobs(units: Sequence[Unit]) -> tuple[list[str], dict[str, set[Any]]]:
    """(the grid's knob columns, knob -> its one value for knobs with one choice everywhere: listed once
    instead of taking a column)."""
    knobs = [k for k in KNOBS if any(k in u.choices.knob_choices() for u in units)]
    fixed = {
        k: {u.choices.knob_choices()[k][0] for u in units if k in u.choices.knob_choices()}
        for k in knobs
        if all(len(u.choices.knob_choices().get(k, ())) <= 1 for u in units)
    }
    fixed = {k: v for k, v in fixed.items() if len(v) == 1}
    return [k for k in knobs if k not in fixed], fixed


def layer_kinds(cost_model: Any, space: SearchSpace) -> dict[str, str]:
    """Layer -> type (``Linear``, ``Conv2d``, ``Embedding, weight-only``, ...) when the cost model holds the
    model (a :class:`~workbench.search.objectives.CostModel` does); empty otherwise."""
    from workbench.quant.introspect import is_weight_only, layer_type

    model = getattr(cost_model, "model", None)
    if model is None or not hasattr(model, "named_modules"):
        return {}
    wanted = {n for u in space.units for n in u.layers}
    return {
        n: layer_type(m) + (", weight-only" if is_weight_only(m) else "")
        for n, m in model.named_modules()
        if n in wanted
    }


def unit_cell(unit: Unit, kinds: Mapping[str, str]) -> W.HTML:
    """The grid's name cell of a unit: its layers (and their types) as a tooltip, unusual layer types noted."""
    tip = ", ".join(f"{n} ({kinds[n]})" if n in kinds else n for n in unit.layers)
    tag = {kinds.get(n) for n in unit.layers} - {None, "Conv2d", "Linear"}
    extra = f" <small>({', '.join(sorted(tag))})</small>" if tag else ""
    return W.HTML(f'<span title="{tip}">{unit.name}</span>{extra}')


def grid_box(cells: list[W.Widget], n_columns: int) -> W.GridBox:
    """The cells laid out as a grid: the unit names, then ``n_columns`` knob columns."""
    return W.GridBox(
        cells,
        layout=W.Layout(
            grid_template_columns=f"minmax(120px, max-content) repeat({n_columns}, minmax(80px, 125px))",
            grid_gap="2px 6px",
            align_items="center",
        ),
    )


def fixed_note(fixed: Mapping[str, set[Any]]) -> W.HTML:
    """The line under the grid listing the knobs with one value for every unit (empty when there are none)."""
    note = ", ".join(f"{KNOB_LABELS[k]} = {_label(next(iter(v)), k)}" for k, v in fixed.items())
    return W.HTML(f"<small>same for every unit: {note}</small>" if note else "")


def all_units_controls(
    units: Sequence[Unit],
    columns: Sequence[str],
    on_all: Callable[[str, Any], None],
    *,
    described: bool = False,
) -> dict[str, W.Dropdown]:
    """Knob -> an "all units" dropdown (``-`` and every value a unit offers): choosing a value calls
    ``on_all(knob, change)``, which sets it on every unit that offers it. ``described``: label each dropdown."""
    out = {}
    for k in columns:
        values = list(dict.fromkeys(v for u in units for v in u.choices.knob_choices().get(k, ())))
        dd = W.Dropdown(
            options=[("-", None)] + [(_label(v, k), v) for v in values],
            value=None,
            description=f"all {KNOB_LABELS[k]}" if described else "",
            layout=W.Layout(width="190px" if described else "auto"),
        )
        dd.observe(lambda ch, knob=k: on_all(knob, ch), names="value")
        out[k] = dd
    return out


def unit_grid(
    space: SearchSpace,
    cost_model: Any,
    controls: Mapping[tuple[str, str], W.Dropdown],
    on_all: Callable[[str, Any], None],
) -> tuple[W.GridBox, W.HTML, list[str], dict[str, W.Dropdown]]:
    """The explorer's grid: a header, an "all units" row (its dropdown of a knob calls ``on_all(knob, change)``)
    and one row of ``controls`` per unit; returns (grid, the note on fixed knobs, the knob columns, the "all
    units" dropdowns by knob)."""
    units = space.units
    columns, fixed = grid_knobs(units)
    cells: list[W.Widget] = [W.HTML("<b>unit</b>")] + [W.HTML(f"<b>{KNOB_LABELS[k]}</b>") for k in columns]
    all_controls = all_units_controls(units, columns, on_all)
    cells.append(W.HTML("<i>all units</i>"))
    cells.extend(all_controls.values())
    kinds = layer_kinds(cost_model, space)
    for u in units:
        cells.append(unit_cell(u, kinds))
        for k in columns:
            cells.append(controls.get((u.name, k)) or W.HTML(""))
    return grid_box(cells, len(columns)), fixed_note(fixed), columns, all_controls


def grey_out(controls: Mapping[tuple[str, str], W.Dropdown], units: Sequence[Unit]) -> None:
    """Disable the dropdowns of knobs the unit's method ignores (and those with one choice)."""
    for u in units:
        method_dd = controls.get((u.name, "method"))
        method = method_dd.value if method_dd is not None else u.choices.methods[0]
        used = METHOD_KNOBS.get(method, ())
        for k in KNOBS:
            dd = controls.get((u.name, k))
            if dd is None or k == "method":
                continue
            dd.disabled = len(dd.options) == 1 or k not in used


# ============================================================================================ figure


def explorer_figure(
    trials: pd.DataFrame | None,
    front: pd.DataFrame | None,
    fp32_weight_bytes: float,
    fp32_accuracy: float | None,
) -> tuple[go.Figure, float, tuple[float, float]]:
    """(the Pareto figure with the current plan's marker and size line, the x divisor, the y span of the line)."""
    if front is None and trials is None:
        base = pareto_figure(
            pd.DataFrame(columns=["accuracy", "weight_bytes"]),
            fp32_weight_bytes=fp32_weight_bytes,
            fp32_accuracy=fp32_accuracy,
            title="Current plan: accuracy against weight size",
        )
    else:
        base = pareto_figure(
            trials if trials is not None else pd.DataFrame(columns=["accuracy", "weight_bytes"]),
            front=front,
            fp32_weight_bytes=fp32_weight_bytes,
            fp32_accuracy=fp32_accuracy,
            title="Pareto front and the current plan",
        )
    _, div = size_axis(fp32_weight_bytes)
    accs = []
    for df in (front, trials):
        if df is not None and not df.empty:
            accs.extend(df["accuracy"].to_numpy(dtype=np.float64).tolist())
    if fp32_accuracy is not None:
        accs.append(fp32_accuracy)
    accs = [a for a in accs if math.isfinite(a)]
    y_span = (100 * min(accs) - 1, 100 * max(accs) + 1) if accs else (0.0, 100.0)
    base.add_trace(
        go.Scatter(
            x=[None, None],
            y=list(y_span),
            mode="lines",
            name=CURRENT_SIZE,
            line={"dash": "dash", "color": "rgba(255,127,14,0.8)", "width": 1},
            hoverinfo="skip",
        )
    )
    base.add_trace(current_trace({"accuracy": None, "weight_bytes": 0, "label": CURRENT}, div))
    return base, div, y_span


def move_current(fig: go.Figure, v: Mapping[str, Any], div: float, out: W.Output) -> None:
    """Move the current plan's marker and size line to the values ``v``; a plain figure is redrawn into ``out``
    inside a kernel."""
    acc = v["measured_accuracy"] if v["measured_accuracy"] is not None else v["predicted_accuracy"]
    x = v["weight_bytes"] / div
    names = [t.name for t in fig.data]
    cur = fig.data[names.index(CURRENT)]
    line = fig.data[names.index(CURRENT_SIZE)]
    what = "measured" if v["measured_accuracy"] is not None else "predicted"
    ctx = fig.batch_update() if isinstance(fig, go.FigureWidget) else contextlib.nullcontext()
    with ctx:
        cur.x = [x]
        cur.y = [100.0 * acc if acc is not None else None]
        cur.hovertemplate = (
            f"<b>{CURRENT}</b> ({what})<br>accuracy: %{{y:.2f}} %<br>weight: %{{x:.2f}}<extra></extra>"
        )
        line.x = [x, x]
    if not isinstance(fig, go.FigureWidget) and _in_kernel():
        out.clear_output(wait=True)
        with out:
            display(fig)


# ============================================================================================ summary


def summary_html(v: Mapping[str, Any]) -> str:
    """The summary table of the current plan's values."""
    if v["predicted_accuracy"] is not None:
        pred = f"<b>{_pct(v['predicted_accuracy'])}</b>"
        if v["predicted_drop_pp"] is not None:
            pred += f" ({v['predicted_drop_pp']:+.2f} pp drop vs FP32)"
    else:
        pred = f"n/a <small>({v['predicted_note']})</small>"
    meas = _pct(v["measured_accuracy"]) if v["measured_accuracy"] is not None else "not measured"
    acts = f"{v['avg_act_bits']:.2f}" if v["avg_act_bits"] < 32 else "float32 (none quantized)"
    rows = [
        ("predicted accuracy", pred),
        ("measured accuracy", meas),
        ("model size", f"{v['size_bytes']:,} bytes ({_pct(v['size_fraction'])} of FP32)"),
        ("weight size", f"{v['weight_bytes']:,} bytes ({_pct(v['weight_fraction'])} of FP32)"),
        ("BOPs / sample", f"{v['bops']:,} ({_pct(v['bops_fraction'])} of FP32)"),
        ("latency", f"{v['latency_ms']:.4f} ms / sample ({v['latency_source'].replace('_', ' ')})"),
        ("avg bits", f"weights {v['avg_weight_bits']:.2f}, activations {acts}"),
        ("plan", v["source"]),
    ]
    if v.get("covered_fraction") is not None:
        rows.insert(-1, ("covered", f"{_pct(v['covered_fraction'])} of the model's parameters quantized"))
    body = "".join(f"<tr><td style='padding-right:12px'>{k}</td><td>{x}</td></tr>" for k, x in rows)
    return f"<table>{body}</table>"


__all__ = [
    "CURRENT",
    "CURRENT_SIZE",
    "KNOB_LABELS",
    "METHOD_KNOBS",
    "all_units_controls",
    "explorer_figure",
    "figure_widget_available",
    "fixed_note",
    "front_table",
    "grey_out",
    "grid_box",
    "grid_knobs",
    "layer_kinds",
    "move_current",
    "summary_html",
    "unit_cell",
]
