"""The compact bit-width map of a plan: one row per unit of a search space (a layer, or a group of layers sharing
one choice), colour = its weight bits, its sensitivity and its share of the weights and MACs beside it.

Pure data and figures (no widgets): :func:`unit_info` (the static columns, computed once), :func:`bitmap_table`
(with a plan's bits and colours), :func:`sort_units` (forward order, sensitivity, weight size, MACs) and
:func:`bitmap_figure` (a plotly figure of the map). The interactive map of
:class:`~workbench.ui.explorer.BitWidthExplorer` (:mod:`workbench.ui.bitmap_widget`) draws the same table.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import sample_colorscale
from plotly.subplots import make_subplots

from workbench.quant.spec import QuantPlan
from workbench.search.space import SearchSpace
from workbench.ui.explorer_view import layer_kinds

FLOAT = "float"
"""The map's column of units left in float32 (method ``none``)."""
FLOAT_COLOUR = "#9e9e9e"
EMPTY_COLOUR = "#f0f0f0"
SORTS: dict[str, str] = {
    "forward": "forward order",
    "sensitivity": "sensitivity",
    "weights": "weight size",
    "macs": "MACs",
}
"""Sort key -> its label: rows in forward order, or by sensitivity / weight count / MACs, largest first."""
SENSITIVITY_METRICS: tuple[str, ...] = (
    "omega",
    "output_mse",
    "output_kl",
    "acc_drop",
    "hessian_trace",
    "fisher",
)
"""The metric a sensitivity result shows by default: the first of these it holds (else its first metric)."""


def bits_colour(bits: Any) -> str:
    """The colour of ``bits`` weight bits: red (2 bits) through yellow (6) to blue (16 and more); grey for
    float32 (``"float"``, 32 or None)."""
    if bits is None or bits == FLOAT or (isinstance(bits, (int, float)) and bits >= 32):
        return FLOAT_COLOUR
    if isinstance(bits, bool) or not isinstance(bits, (int, float, np.integer)) or bits < 1:
        raise ValueError(f"bits must be a number >= 1, {FLOAT!r} or None, got {bits!r}")
    t = (math.log2(min(max(float(bits), 2.0), 16.0)) - 1.0) / 3.0
    return _hex(sample_colorscale("RdYlBu", [t])[0])


def _hex(rgb: str) -> str:
    """``rgb(r, g, b)`` -> ``#rrggbb``."""
    if rgb.startswith("#"):
        return rgb
    parts = [round(float(x)) for x in rgb[rgb.index("(") + 1 : rgb.index(")")].split(",")[:3]]
    return "#" + "".join(f"{p:02x}" for p in parts)


def text_colour(background: str) -> str:
    """Black or white, whichever reads better on ``background`` (``#rrggbb``)."""
    r, g, b = (int(background[i : i + 2], 16) for i in (1, 3, 5))
    return "#000000" if 0.299 * r + 0.587 * g + 0.114 * b > 150 else "#ffffff"


# ============================================================================================ sensitivity


def _default_metric(result: Any) -> str:
    metrics = list(result.metrics())
    if not metrics:
        raise ValueError("the sensitivity result holds no metric")
    return next((m for m in SENSITIVITY_METRICS if m in metrics), metrics[0])


def _default_bits(result: Any, metric: str, space: SearchSpace) -> int:
    """The lowest weight bits of the space (below 16) the result probed for ``metric``: the most telling."""
    probed = [int(b) for b in result.matrix(metric, kind="weight").columns]
    wanted = sorted({int(b) for u in space.units for b in u.choices.w_bits if b < 16})
    common = [b for b in wanted if b in probed]
    return common[0] if common else min(probed)


def _layer_values(
    sensitivity: Any, space: SearchSpace, metric: str | None, bits: int | None
) -> tuple[dict, str]:
    """(layer or unit -> value, the label of the values) of a sensitivity result or a mapping."""
    if hasattr(sensitivity, "layer_values") and hasattr(sensitivity, "metrics"):
        metric = metric or _default_metric(sensitivity)
        kinds = sensitivity.metric_kinds(metric)  # raises naming the metrics
        if "weight" not in kinds and kinds != ["layer"]:
            raise ValueError(f"metric {metric!r} has no per-layer weight values (its kinds: {kinds})")
        if kinds == ["layer"]:
            bits = None
        elif bits is None:
            bits = _default_bits(sensitivity, metric, space)
        values = sensitivity.layer_values(metric, bits=bits, kind="layer" if bits is None else "weight")
        label = metric if bits is None else f"{metric} @ {bits} bits"
        return {str(k): float(v) for k, v in values.items()}, label
    if isinstance(sensitivity, (Mapping, pd.Series)):
        if metric is not None or bits is not None:
            raise ValueError(
                "metric and bits choose a column of a sensitivity result; a mapping has one value"
            )
        return {str(k): float(v) for k, v in dict(sensitivity).items()}, "sensitivity"
    raise TypeError(
        "sensitivity must be a SensitivityResult, a mapping or a pandas Series (layer or unit -> value), "
        f"got {type(sensitivity).__name__}"
    )


def unit_sensitivity(
    space: SearchSpace, sensitivity: Any = None, *, metric: str | None = None, bits: int | None = None
) -> tuple[pd.Series, str]:
    """(one value per unit, forward order; its label): a unit's value is the sum over its layers (or the value
    given for the unit's name); NaN where a layer has no value. ``sensitivity``: a
    :class:`~workbench.sensitivity.SensitivityResult` (``metric``: default the first of
    :data:`SENSITIVITY_METRICS` it holds; ``bits``: default the lowest weight bits of the space it probed), a
    mapping or Series (layer or unit -> value), or None (all NaN, label "")."""
    names = [u.name for u in space.units]
    if sensitivity is None:
        return pd.Series(np.nan, index=names, dtype=np.float64, name="sensitivity"), ""
    values, label = _layer_values(sensitivity, space, metric, bits)
    out = []
    for u in space.units:
        if u.name in values:
            out.append(values[u.name])
        elif all(layer in values for layer in u.layers):
            out.append(float(sum(values[layer] for layer in u.layers)))
        else:
            out.append(math.nan)
    return pd.Series(out, index=names, dtype=np.float64, name="sensitivity"), label


# ============================================================================================ table


def unit_info(space: SearchSpace, cost_model: Any, sensitivity: pd.Series | None = None) -> pd.DataFrame:
    """The map's static columns, one row per unit in forward order: unit, order, layers (their count), kind
    (layer types), weight_params and macs (summed over the unit's layers; 0 when the cost model has no per-layer
    costs), their shares of the space's total, and sensitivity (``sensitivity``: a Series over unit names)."""
    costs = getattr(cost_model, "costs", {}) or {}
    kinds = layer_kinds(cost_model, space)
    rows = []
    for i, u in enumerate(space.units):
        types = sorted({kinds[n] for n in u.layers if n in kinds})
        rows.append(
            {
                "unit": u.name,
                "order": i,
                "layers": len(u.layers),
                "kind": ", ".join(types),
                "weight_params": int(sum(getattr(costs.get(n), "weight_params", 0) for n in u.layers)),
                "macs": int(sum(getattr(costs.get(n), "macs", 0) for n in u.layers)),
            }
        )
    df = pd.DataFrame(rows)
    for col, share in (("weight_params", "weight_share"), ("macs", "macs_share")):
        total = float(df[col].sum())
        df[share] = df[col] / total if total else np.nan
    sens = np.nan if sensitivity is None else sensitivity.reindex(df["unit"]).to_numpy(dtype=np.float64)
    df["sensitivity"] = sens
    return df


def unit_choice(params: Mapping[str, Any], unit: str) -> Any:
    """The map's column of ``unit`` in the parameters ``params``: its weight bits, or :data:`FLOAT`."""
    method = params.get(SearchSpace.param_name(unit, "method"), "quantize")
    return FLOAT if method == "none" else int(params[SearchSpace.param_name(unit, "w_bits")])


def with_params(info: pd.DataFrame, params: Mapping[str, Any]) -> pd.DataFrame:
    """``info`` with the plan's columns: method, w_bits (NaN for float), bits (the map's column) and colour."""
    df = info.copy()
    df["method"] = [params.get(SearchSpace.param_name(u, "method"), "quantize") for u in df["unit"]]
    df["bits"] = [unit_choice(params, u) for u in df["unit"]]
    df["w_bits"] = [np.nan if b == FLOAT else float(b) for b in df["bits"]]
    df["colour"] = [bits_colour(b) for b in df["bits"]]
    return df


def bitmap_table(
    space: SearchSpace,
    cost_model: Any,
    plan: QuantPlan,
    *,
    sensitivity: Any = None,
    metric: str | None = None,
    bits: int | None = None,
) -> pd.DataFrame:
    """The bit-width map of ``plan`` as a table: :func:`unit_info` with the plan's method, bits and colour per
    unit (``sensitivity``, ``metric``, ``bits`` as in :func:`unit_sensitivity`; the label in
    ``table.attrs["sensitivity"]``). Raises when the plan leaves the space."""
    sens, label = unit_sensitivity(space, sensitivity, metric=metric, bits=bits)
    df = with_params(unit_info(space, cost_model, sens), space.params_from_plan(plan))
    df.attrs["sensitivity"] = label
    return df


def sort_units(table: pd.DataFrame, by: str = "forward") -> list[str]:
    """Unit names in the order ``by`` (a key of :data:`SORTS`): forward order, or largest sensitivity / weight
    count / MACs first (ties and missing values in forward order, missing values last)."""
    if by not in SORTS:
        raise ValueError(f"sort {by!r} is not valid; choose one of {list(SORTS)}")
    if by == "forward":
        return list(table.sort_values("order", kind="stable")["unit"])
    col = {"sensitivity": "sensitivity", "weights": "weight_params", "macs": "macs"}[by]
    key = table[col].astype(np.float64).fillna(-np.inf)
    order = table.assign(_key=-key).sort_values(["_key", "order"], kind="stable")
    return list(order["unit"])


def map_columns(units: Sequence[Any]) -> list[Any]:
    """The map's columns: every weight bits a unit offers (ascending), then :data:`FLOAT` when a unit may stay
    in float32 (method ``none``)."""
    bits = sorted({int(b) for u in units if _quantizes(u) for b in u.choices.w_bits})
    return bits + ([FLOAT] if any("none" in u.choices.methods for u in units) else [])


def _quantizes(unit: Any) -> bool:
    return any(m != "none" for m in unit.choices.methods)


# ============================================================================================ figure


def _bits_traces(df: pd.DataFrame, order: list[str], xs: list[str]) -> list[go.Scatter]:
    """The map's left panel: a pale square per (unit, bit choice), the current one coloured by its bits."""
    choices = go.Scatter(
        x=[x for _ in order for x in xs],
        y=[u for u in order for _ in xs],
        mode="markers",
        name="choices",
        hoverinfo="skip",
        marker={"symbol": "square", "size": 11, "color": EMPTY_COLOUR},
    )
    bits = [str(b) for b in df["bits"]]
    current = go.Scatter(
        x=bits,
        y=order,
        mode="markers+text",
        name="current bits",
        text=bits,
        textfont={"size": 8, "color": [text_colour(c) for c in df["colour"]]},
        marker={"symbol": "square", "size": 13, "color": list(df["colour"])},
        customdata=df[["layers", "kind"]].to_numpy(),
        hovertemplate="<b>%{y}</b>: %{x} bits<br>%{customdata[0]} layer(s) %{customdata[1]}<extra></extra>",
    )
    return [choices, current]


def bitmap_figure(
    table: pd.DataFrame, *, sort: str = "forward", columns: Sequence[Any] | None = None
) -> go.Figure:
    """The map as a figure: one row per unit (first at the top, in ``sort`` order), a square per bit choice
    (the current one coloured by its bits), the unit's sensitivity and its share of the weights beside it.
    ``columns``: the bit choices drawn (default: the bits in ``table`` and the usual 2 / 4 / 8)."""
    order = sort_units(table, sort)
    df = table.set_index("unit").loc[order]
    if columns is None:
        columns = sorted({int(b) for b in df["bits"] if b != FLOAT} | {2, 4, 8})
        columns = list(columns) + ([FLOAT] if (df["bits"] == FLOAT).any() else [])
    xs = [str(c) for c in columns]
    titles = ("weight bits", table.attrs.get("sensitivity") or "sensitivity", "share of the weights (%)")
    fig = make_subplots(
        rows=1, cols=3, shared_yaxes=True, column_widths=[0.4, 0.3, 0.3], horizontal_spacing=0.03,
        subplot_titles=titles,
    )  # fmt: skip
    for trace in _bits_traces(df, order, xs):
        fig.add_trace(trace, row=1, col=1)
    sens = df["sensitivity"].astype(np.float64)
    share = 100 * df["weight_share"].astype(np.float64)
    fig.add_trace(
        go.Bar(x=sens, y=order, orientation="h", name="sensitivity", marker_color="#555"), row=1, col=2
    )
    fig.add_trace(
        go.Bar(x=share, y=order, orientation="h", name="weights", marker_color="#1f77b4"), row=1, col=3
    )
    positive = sens[sens > 0]
    if len(positive) > 1 and positive.max() / positive.min() > 100:
        fig.update_xaxes(type="log", row=1, col=2)
    fig.update_xaxes(type="category", categoryorder="array", categoryarray=xs, row=1, col=1)
    fig.update_yaxes(type="category", categoryorder="array", categoryarray=order[::-1], tickfont={"size": 9})
    fig.update_layout(
        title=f"Bit-width map: {len(order)} units, sorted by {SORTS[sort]}",
        showlegend=False,
        height=140 + 16 * len(order),
        margin={"l": 10, "r": 10, "t": 70, "b": 30},
        plot_bgcolor="white",
    )
    return fig


__all__ = [
    "FLOAT",
    "SENSITIVITY_METRICS",
    "SORTS",
    "bitmap_figure",
    "bitmap_table",
    "bits_colour",
    "map_columns",
    "sort_units",
    "text_colour",
    "unit_choice",
    "unit_info",
    "unit_sensitivity",
    "with_params",
]
