"""The controls of :class:`~workbench.ui.explorer.BitWidthExplorer`, built without an explorer: the dropdown grid's
dropdowns, the map view (:class:`~workbench.ui.bitmap_widget.BitMapView`, the unit editor and the "all units"
dropdowns), the action buttons and front picker, and the box that holds them all."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import ipywidgets as W
import pandas as pd

from workbench.search.space import SearchSpace
from workbench.ui.bitmap import unit_info
from workbench.ui.bitmap_widget import BitMapView, UnitEditor
from workbench.ui.explorer_view import _label, _pct, all_units_controls, fixed_note, grid_knobs

VIEWS: tuple[str, ...] = ("auto", "map", "grid")
"""``map``: the compact bit-width map (a row per unit, a click sets its bits); ``grid``: a dropdown per unit and
knob; ``auto``: the map for spaces of more than :data:`MAP_MIN_UNITS` units, else the grid."""
MAP_MIN_UNITS = 16


def resolve_view(view: str, n_units: int) -> str:
    """``"map"`` or ``"grid"`` for ``view`` (one of :data:`VIEWS`) on a space of ``n_units`` units."""
    if view not in VIEWS:
        raise ValueError(f"view {view!r} is not valid; choose one of {list(VIEWS)}")
    if view != "auto":
        return view
    return "map" if n_units > MAP_MIN_UNITS else "grid"


def knob_dropdowns(
    choices: Mapping[tuple[str, str], tuple], on_change: Callable[[tuple[str, str], Any], None]
) -> dict[tuple[str, str], W.Dropdown]:
    """(unit, knob) -> its dropdown in the grid (disabled with one choice); a change calls ``on_change(key, ch)``."""
    out = {}
    for (unit, knob), values in choices.items():
        dd = W.Dropdown(
            options=[(_label(c, knob), c) for c in values],
            value=values[0],
            layout=W.Layout(width="auto"),
            disabled=len(values) == 1,
        )
        dd.observe(lambda ch, key=(unit, knob): on_change(key, ch), names="value")
        out[(unit, knob)] = dd
    return out


@dataclass
class MapControls:
    """The map view's parts: ``box`` to display, ``note`` on fixed knobs, the map, the unit editor, the "all
    units" dropdowns by knob and the knob columns."""

    box: W.VBox
    note: W.HTML
    bitmap: BitMapView
    editor: UnitEditor
    all_controls: dict[str, W.Dropdown]
    columns: list[str]


def map_controls(
    space: SearchSpace,
    cost_model: Any,
    sensitivity: pd.Series,
    sensitivity_label: str,
    *,
    on_choice: Callable[[str, Any], None],
    on_set: Callable[[str, str, Any], None],
    on_all: Callable[[str, Any], None],
) -> MapControls:
    """The map view of ``space``: a click on the map calls ``on_choice(unit, column)``, the unit editor
    ``on_set(unit, knob, value)``, an "all units" dropdown ``on_all(knob, change)``."""
    columns, fixed = grid_knobs(space.units)
    info = unit_info(space, cost_model, sensitivity)
    bitmap = BitMapView(info, space.units, on_choice, sensitivity_label=sensitivity_label)
    editor = UnitEditor(space.units, columns, on_set)
    all_controls = all_units_controls(space.units, columns, on_all, described=True)
    hint = W.HTML(
        "<small>click a bits button to set that unit; pick a unit below for its other knobs</small>"
    )
    box = W.VBox([W.HBox(list(all_controls.values())), bitmap.widget, hint, editor.widget])
    return MapControls(box, fixed_note(fixed), bitmap, editor, all_controls, columns)


def front_option(front: pd.DataFrame, i: int, fp32_weight_bytes: float) -> str:
    """The front picker's label of front plan ``i``."""
    row = front.iloc[i]
    frac = float(row["weight_bytes"]) / fp32_weight_bytes
    label = str(row.get("label", f"plan {i}"))
    return f"#{i} {label}: {_pct(float(row['accuracy']))} acc, {_pct(frac)} of FP32 weights"


@dataclass
class ActionControls:
    """The Evaluate and Log buttons, the front plan picker and its Load button."""

    evaluate_button: W.Button
    log_button: W.Button
    front_select: W.Dropdown
    load_button: W.Button


def action_controls(
    front: pd.DataFrame | None,
    n_front: int,
    fp32_weight_bytes: float,
    *,
    on_evaluate: Callable[[], Any] | None,
    on_log: Callable[[], Any] | None,
    on_load: Callable[[int], Any],
    guard: Callable[[Callable[[], Any]], Any],
) -> ActionControls:
    """The buttons and the picker of the ``n_front`` plans of ``front``: Evaluate calls ``on_evaluate`` and Log
    ``on_log`` (each disabled when None), Load ``on_load(picked index)``; every callback runs through ``guard``."""
    evaluate = W.Button(
        description="Evaluate",
        icon="play",
        tooltip="measure the real accuracy of the current plan (quantize, calibrate, evaluate)",
        disabled=on_evaluate is None,
    )
    log = W.Button(
        description="Log to MLflow",
        icon="save",
        tooltip="log the plan and its values",
        disabled=on_log is None,
    )
    options = [(front_option(front, i, fp32_weight_bytes), i) for i in range(n_front)]
    select = W.Dropdown(
        options=options or [("no front", -1)],
        description="front plan",
        layout=W.Layout(width="460px"),
        disabled=not n_front,
    )
    load = W.Button(description="Load", icon="upload", disabled=not n_front)
    if on_evaluate is not None:
        evaluate.on_click(lambda _b: guard(on_evaluate))
    if on_log is not None:
        log.on_click(lambda _b: guard(on_log))
    load.on_click(lambda _b: guard(lambda: on_load(select.value)))
    return ActionControls(evaluate, log, select, load)


def explorer_box(
    title: str,
    heading: str,
    controls: W.Widget,
    summary: W.HTML,
    actions: ActionControls,
    status: W.HTML,
    plot: W.Widget,
) -> W.VBox:
    """The box to display: title, the controls in an accordion (``heading``), summary, buttons, front picker,
    status, plot."""
    accordion = W.Accordion(children=[controls])
    accordion.set_title(0, heading)
    accordion.selected_index = 0
    return W.VBox(
        [
            W.HTML(f"<b>{title}</b>"),
            accordion,
            summary,
            W.HBox([actions.evaluate_button, actions.log_button]),
            W.HBox([actions.front_select, actions.load_button]),
            status,
            plot,
        ]
    )


__all__ = [
    "MAP_MIN_UNITS",
    "VIEWS",
    "ActionControls",
    "MapControls",
    "action_controls",
    "explorer_box",
    "front_option",
    "knob_dropdowns",
    "map_controls",
    "resolve_view",
]
