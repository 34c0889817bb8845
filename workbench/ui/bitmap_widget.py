"""The interactive bit-width map of :class:`~workbench.ui.explorer.BitWidthExplorer` for spaces with many units:
a row per unit, a small button per bit choice (the current one in its bits' colour; a click sets the unit to
those bits), the unit's sensitivity and weight share beside it, rows sorted by forward order, sensitivity, weight
size or MACs. One widget per cell and a few shared styles, so that 50 to 100 rows stay light in the browser.

The view holds no plan: the explorer calls ``on_choice(unit, column)`` on a click and :meth:`BitMapView.refresh`
with the current parameters after every change.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ipywidgets as W
import numpy as np
import pandas as pd
from ipywidgets.widgets.widget_string import HTMLStyle

from workbench.ui.bitmap import (
    EMPTY_COLOUR,
    FLOAT,
    SORTS,
    bits_colour,
    map_columns,
    sort_units,
    text_colour,
    unit_choice,
)
from workbench.ui.explorer_view import KNOB_LABELS, METHOD_KNOBS, _label

INFO_WIDTH = 230  # px of the sensitivity and weight bars cell


def _sens_bars(values: pd.Series) -> dict[str, float]:
    """Unit -> bar length in [0, 1] of its sensitivity: log scale over the positive values (0 / NaN -> 0)."""
    pos = values[values > 0]
    if pos.empty:
        return dict.fromkeys(values.index, 0.0)
    lo, hi = math.log10(float(pos.min())), math.log10(float(pos.max()))
    span = hi - lo
    out = {}
    for unit, v in values.items():
        if not (v > 0):
            out[unit] = 0.0
        else:
            out[unit] = 1.0 if span == 0 else 0.1 + 0.9 * (math.log10(float(v)) - lo) / span
    return out


def _bar(fraction: float, colour: str, width: int) -> str:
    px = int(round(max(0.0, min(1.0, fraction)) * width))
    return (
        f"<span style='display:inline-block;width:{width}px;height:8px;background:#f4f4f4;vertical-align:middle'>"
        f"<span style='display:block;width:{px}px;height:8px;background:{colour}'></span></span>"
    )


def info_cell(row: Mapping[str, Any], bar: float, max_share: float = 1.0) -> str:
    """A row's info cell: its sensitivity (``bar``: its length on a log scale, and the value) and its share of the
    weights (a bar relative to the largest share ``max_share``, and the percentage)."""
    sens = row["sensitivity"]
    text = f"{sens:.3g}" if isinstance(sens, float) and math.isfinite(sens) else "n/a"
    share = float(row["weight_share"]) if math.isfinite(float(row["weight_share"])) else 0.0
    return (
        f"<span style='font-size:11px;line-height:20px;white-space:nowrap'>{_bar(bar, '#555', 60)} "
        f"<span style='display:inline-block;width:52px'>{text}</span>"
        f"{_bar(share / max_share if max_share > 0 else 0.0, '#1f77b4', 60)} {100 * share:.2f} %</span>"
    )


def name_cell(row: Mapping[str, Any]) -> str:
    """A row's name cell: the unit (its layers and types as a tooltip)."""
    tip = html.escape(
        f"{row['unit']}: {row['layers']} layer(s) {row['kind']}, {row['weight_params']:,} weights"
    )
    style = "font-size:11px;line-height:20px;white-space:nowrap"
    return f"<span title='{tip}' style='{style}'>{html.escape(str(row['unit']))}</span>"


def legend_html(columns: Sequence[Any]) -> str:
    """The colour of each bit choice."""
    items = "".join(
        f"<span style='background:{bits_colour(c)};color:{text_colour(bits_colour(c))};padding:0 6px;"
        f"margin-right:3px;font-size:11px'>{c if c == FLOAT else f'{c} bits'}</span>"
        for c in columns
    )
    return f"<span style='font-size:11px;margin-right:6px'>colour = weight bits:</span>{items}"


class BitMapView:
    """The map: ``info`` (:func:`~workbench.ui.bitmap.unit_info`), ``units`` (the space's units: their choices
    decide which buttons a row has), ``on_choice(unit, column)`` called on a click (column: bits or ``"float"``).

    ``widget``: the box to display; ``buttons[(unit, column)]``: the buttons; ``order``: the rows' order;
    :meth:`sort` reorders, :meth:`refresh` recolours from parameters; :meth:`click` does what a click does.
    """

    def __init__(
        self,
        info: pd.DataFrame,
        units: Sequence[Any],
        on_choice: Callable[[str, Any], None],
        *,
        sort: str | None = None,
        sensitivity_label: str = "",
        max_height: str = "520px",
    ) -> None:
        self.info = info.set_index("unit", drop=False)
        self.on_choice = on_choice
        self.columns = map_columns(units)
        has_sens = bool(info["sensitivity"].notna().any())
        sort = sort or ("sensitivity" if has_sens else "forward")
        if sort not in SORTS:
            raise ValueError(f"sort {sort!r} is not valid; choose one of {list(SORTS)}")
        self._styles = {
            c: W.ButtonStyle(
                button_color=bits_colour(c), text_color=text_colour(bits_colour(c)), font_weight="bold"
            )
            for c in self.columns
        }
        self._off = W.ButtonStyle(button_color=EMPTY_COLOUR, text_color="#888")
        self._layout = W.Layout(width="34px", height="20px", padding="0px", margin="0px")
        # shared by every cell: fewer widget models, and rows as high as a button
        self._cell_layout, self._cell_style = W.Layout(height="20px", margin="0px"), HTMLStyle()
        self.chosen: dict[str, Any] = {}
        self.buttons: dict[tuple[str, Any], W.Button] = {}
        self.rows = {u.name: self._row(u) for u in units}
        bars = _sens_bars(self.info["sensitivity"].astype(np.float64))
        max_share = float(self.info["weight_share"].max())
        for u in units:
            cell = info_cell(self.info.loc[u.name], bars[u.name], max_share)
            self.rows[u.name].append(self._cell(cell))
        self.header = self._header(sensitivity_label)
        self.grid = W.GridBox(
            layout=W.Layout(
                grid_template_columns=f"max-content repeat({len(self.columns)}, 34px) {INFO_WIDTH}px",
                grid_gap="1px 2px",
                align_items="center",
            )
        )
        self.sort_select = W.ToggleButtons(
            options=[(label, key) for key, label in SORTS.items()],
            value=sort,
            description="sort by",
            style={"button_width": "110px"},
        )
        self.sort_select.observe(lambda ch: self.sort(ch["new"]), names="value")
        self.order: list[str] = []
        self.sort(sort)
        box = W.Box([self.grid], layout=W.Layout(max_height=max_height, overflow="auto", display="block"))
        self.widget = W.VBox([self.sort_select, W.HTML(legend_html(self.columns)), box])

    def _row(self, unit: Any) -> list[W.Widget]:
        cells: list[W.Widget] = [self._cell(name_cell(self.info.loc[unit.name]))]
        offered = set(map_columns([unit]))
        for c in self.columns:
            if c not in offered:
                cells.append(self._cell(""))
                continue
            b = W.Button(
                description="fl" if c == FLOAT else str(c),
                tooltip=f"{unit.name}: {'float32' if c == FLOAT else f'{c} bits'}",
                layout=self._layout,
                style=self._off,
            )
            b.on_click(lambda _b, u=unit.name, col=c: self.click(u, col))
            self.buttons[(unit.name, c)] = b
            cells.append(b)
        return cells

    def _cell(self, text: str) -> W.HTML:
        return W.HTML(text, layout=self._cell_layout, style=self._cell_style)

    def _header(self, sensitivity_label: str) -> list[W.Widget]:
        cells: list[W.Widget] = [W.HTML("<b style='font-size:11px'>unit</b>")]
        cells += [W.HTML(f"<b style='font-size:11px'>{'fl' if c == FLOAT else c}</b>") for c in self.columns]
        if not sensitivity_label:
            sens = "sensitivity: none given"
        elif sensitivity_label == "sensitivity":
            sens = "sensitivity"
        else:
            sens = f"sensitivity: {html.escape(sensitivity_label)}"
        cells.append(W.HTML(f"<b style='font-size:11px'>{sens} &middot; share of the weights</b>"))
        return cells

    # ------------------------------------------------------------------------------------------ actions
    def sort(self, by: str) -> list[str]:
        """Reorder the rows (``by``: a key of :data:`~workbench.ui.bitmap.SORTS`); returns the order."""
        self.order = sort_units(self.info.reset_index(drop=True), by)
        self.grid.children = tuple(self.header + [c for u in self.order for c in self.rows[u]])
        if self.sort_select.value != by:
            self.sort_select.value = by
        return self.order

    def click(self, unit: str, column: Any) -> None:
        """What clicking the button of ``unit`` and ``column`` (bits or ``"float"``) does."""
        self.on_choice(unit, column)

    def refresh(self, params: Mapping[str, Any]) -> None:
        """Colour each row's current choice (from the explorer's parameters); only changed rows are restyled."""
        for unit in self.rows:
            choice = unit_choice(params, unit)
            before = self.chosen.get(unit)
            if before == choice:
                continue
            if (unit, before) in self.buttons:
                self.buttons[(unit, before)].style = self._off
            if (unit, choice) in self.buttons:
                self.buttons[(unit, choice)].style = self._styles[choice]
            self.chosen[unit] = choice

    def colours(self) -> dict[str, str]:
        """Unit -> the colour its row shows now (of its current bits)."""
        return {u: bits_colour(c) for u, c in self.chosen.items()}


class UnitEditor:
    """Select a unit and set any of its knobs: a unit dropdown and one dropdown per knob of ``knobs`` (its
    choices follow the selected unit); a change calls ``on_set(unit, knob, value)``. :meth:`refresh` shows the
    selected unit's values from the explorer's state ``(unit, knob) -> value``."""

    def __init__(
        self, units: Sequence[Any], knobs: Sequence[str], on_set: Callable[[str, str, Any], None]
    ) -> None:
        self.units = {u.name: u for u in units}
        self.on_set = on_set
        self._holding = False
        self.unit_select = W.Dropdown(
            options=list(self.units), description="unit", layout=W.Layout(width="360px")
        )
        self.knobs: dict[str, W.Dropdown] = {}
        for k in knobs:
            dd = W.Dropdown(description=KNOB_LABELS[k], layout=W.Layout(width="190px"))
            dd.observe(lambda ch, knob=k: self._changed(knob, ch), names="value")
            self.knobs[k] = dd
        self.unit_select.observe(lambda _ch: self.refresh(self._state), names="value")
        self._state: Mapping[tuple[str, str], Any] = {}
        self.widget = W.HBox([self.unit_select, *self.knobs.values()], layout=W.Layout(flex_flow="row wrap"))

    @property
    def unit(self) -> str:
        return str(self.unit_select.value)

    def select(self, unit: str) -> None:
        """Show ``unit``'s knobs."""
        self.unit_select.value = unit

    def refresh(self, state: Mapping[tuple[str, str], Any]) -> None:
        self._state = state
        unit = self.units[self.unit]
        choices = unit.choices.knob_choices()
        method = state.get((unit.name, "method"), unit.choices.methods[0])
        self._holding = True
        try:
            for k, dd in self.knobs.items():
                options = [(_label(c, k), c) for c in choices.get(k, ())]
                if [v for _, v in dd.options] != [v for _, v in options]:
                    dd.options = options
                dd.value = state.get((unit.name, k)) if options else None
                dd.disabled = len(options) <= 1 or (k != "method" and k not in METHOD_KNOBS.get(method, ()))
        finally:
            self._holding = False

    def _changed(self, knob: str, change: Any) -> None:
        if not self._holding and change["new"] is not None:
            self.on_set(self.unit, knob, change["new"])


__all__ = ["BitMapView", "UnitEditor", "info_cell", "legend_html", "name_cell"]
