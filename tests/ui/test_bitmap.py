"""The compact bit-width map: its table (rows, bits, colours, sensitivity, shares), sort orders, the figure, and the
explorer's map view (a click on a bits button changes the plan and the summary), on a tiny 18-layer model."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from workbench.quant.spec import PlanError
from workbench.search.objectives import CostModel
from workbench.search.space import SearchSpace, SpaceConfig
from workbench.sensitivity import TABLE_COLUMNS, SensitivityResult
from workbench.ui.bitmap import (
    FLOAT,
    FLOAT_COLOUR,
    bitmap_figure,
    bitmap_table,
    bits_colour,
    map_columns,
    sort_units,
    text_colour,
    unit_sensitivity,
)
from workbench.ui.explorer import MAP_MIN_UNITS, BitWidthExplorer

WIDTHS = (4, 8, 16, 8, 4, 12, 6, 10, 8, 16, 4, 8, 20, 6, 8, 12, 4, 10, 3)  # 18 Linear layers
LAYERS = tuple(str(2 * i) for i in range(len(WIDTHS) - 1))  # Sequential names (a ReLU between layers)
W_BITS = (2, 4, 8)


def stack_model() -> nn.Module:
    torch.manual_seed(0)
    mods: list[nn.Module] = []
    for a, b in zip(WIDTHS[:-1], WIDTHS[1:], strict=True):
        mods += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*mods[:-1]).eval()


def omega(layer: str, bits: int) -> float:
    """A per-layer sensitivity that is not in forward order: layer i at b bits."""
    i = LAYERS.index(layer)
    return (1 + (7 * i) % len(LAYERS)) * 4.0 ** (-bits)


def fake_result() -> SensitivityResult:
    rows = [
        {"layer": layer, "op_type": "Linear", "depth": d, "metric": "omega", "kind": "weight",
         "granularity": "per_channel", "w_bits": b, "a_bits": 32, "value": omega(layer, b)}
        for d, layer in enumerate(LAYERS)
        for b in W_BITS
    ]  # fmt: skip
    rows += [
        {"layer": layer, "op_type": "Linear", "depth": d, "metric": "fisher", "kind": "layer",
         "granularity": "per_tensor", "w_bits": 32, "a_bits": 32, "value": float(d)}
        for d, layer in enumerate(LAYERS)
    ]  # fmt: skip
    return SensitivityResult(
        table=pd.DataFrame(rows, columns=TABLE_COLUMNS),
        layers=pd.DataFrame({"layer": list(LAYERS), "depth": range(len(LAYERS))}),
    )


@pytest.fixture(scope="module")
def stack():
    model = stack_model()
    space = SearchSpace(model, SpaceConfig(w_bits=W_BITS))
    cost_model = CostModel(model, torch.randn(1, WIDTHS[0]), fp32_latency_ms=1.0)
    return model, space, cost_model


def test_colours_per_bits():
    colours = [bits_colour(b) for b in (2, 3, 4, 6, 8, 16)]
    assert len(set(colours)) == 6 and all(c.startswith("#") and len(c) == 7 for c in colours)
    assert bits_colour(FLOAT) == bits_colour(32) == bits_colour(None) == FLOAT_COLOUR
    assert bits_colour(2) == bits_colour(1.5) and bits_colour(16) == bits_colour(24)  # clipped to [2, 16]
    red, _, blue = (int(bits_colour(2)[i : i + 2], 16) for i in (1, 3, 5))
    assert red > blue  # few bits: red; many bits: blue
    red, _, blue = (int(bits_colour(16)[i : i + 2], 16) for i in (1, 3, 5))
    assert blue > red
    with pytest.raises(ValueError, match="bits must be"):
        bits_colour("eight")
    assert text_colour("#ffffff") == "#000000" and text_colour("#000000") == "#ffffff"


def test_unit_sensitivity_from_a_result_or_a_mapping(stack):
    _, space, _ = stack
    result = fake_result()
    sens, label = unit_sensitivity(space, result)
    assert label == "omega @ 2 bits"  # the lowest bits of the space the result probed
    assert list(sens.index) == list(LAYERS)
    assert sens.to_numpy() == pytest.approx([omega(layer, 2) for layer in LAYERS])
    sens8, label8 = unit_sensitivity(space, result, bits=8)
    assert label8 == "omega @ 8 bits" and sens8["0"] == pytest.approx(omega("0", 8))
    fisher, flabel = unit_sensitivity(space, result, metric="fisher")
    assert flabel == "fisher" and list(fisher) == [float(d) for d in range(len(LAYERS))]
    with pytest.raises(ValueError, match="available"):
        unit_sensitivity(space, result, metric="nope")

    partial = {layer: 1.0 + i for i, layer in enumerate(LAYERS[:-1])}
    sens, label = unit_sensitivity(space, partial)
    assert label == "sensitivity" and math.isnan(sens[LAYERS[-1]]) and sens[LAYERS[0]] == 1.0
    empty, label = unit_sensitivity(space, None)
    assert label == "" and empty.isna().all() and len(empty) == len(LAYERS)
    with pytest.raises(ValueError, match="mapping has one value"):
        unit_sensitivity(space, partial, metric="omega")
    with pytest.raises(TypeError, match="sensitivity must be"):
        unit_sensitivity(space, [1.0, 2.0])

    grouped = SearchSpace(stack_model(), SpaceConfig(w_bits=W_BITS, groups={"head": ["30", "32"]}))
    sens, _ = unit_sensitivity(grouped, result)
    assert sens["head"] == pytest.approx(omega("30", 2) + omega("32", 2))  # a group sums its layers


def test_table_rows_bits_and_shares(stack):
    model, space, cost_model = stack
    plan = space.uniform_plan(8)
    plan = space.plan_from_params({**space.params_from_plan(plan), "0/w_bits": 2, "2/w_bits": 4})
    table = bitmap_table(space, cost_model, plan, sensitivity=fake_result())
    assert list(table["unit"]) == list(LAYERS) and list(table["order"]) == list(range(len(LAYERS)))
    assert list(table["bits"][:3]) == [2, 4, 8] and (table["bits"][2:] == 8).all()
    assert list(table["colour"]) == [bits_colour(b) for b in table["bits"]]
    params = [WIDTHS[i] * WIDTHS[i + 1] for i in range(len(LAYERS))]
    assert list(table["weight_params"]) == params and list(table["macs"]) == params  # Linear, batch 1
    assert table["weight_share"].sum() == pytest.approx(1.0)
    assert table.loc[0, "weight_share"] == pytest.approx(params[0] / sum(params))
    assert (table["kind"] == "Linear").all() and (table["layers"] == 1).all()
    assert table.attrs["sensitivity"] == "omega @ 2 bits"
    assert table["sensitivity"].to_numpy() == pytest.approx([omega(layer, 2) for layer in LAYERS])


def test_sort_orders(stack):
    _, space, cost_model = stack
    table = bitmap_table(space, cost_model, space.uniform_plan(4), sensitivity=fake_result())
    assert sort_units(table) == list(LAYERS)
    by_sens = sort_units(table, "sensitivity")
    values = [omega(layer, 2) for layer in by_sens]
    assert values == sorted(values, reverse=True) and by_sens != list(LAYERS)
    by_weights = sort_units(table, "weights")
    w = table.set_index("unit").loc[by_weights, "weight_params"].tolist()
    assert w == sorted(w, reverse=True)
    ties = [u for u in by_weights if table.set_index("unit").loc[u, "weight_params"] == w[0]]
    assert ties == sorted(ties, key=LAYERS.index)  # ties in forward order
    assert sort_units(table, "macs")[0] == table.loc[table["macs"].idxmax(), "unit"]
    no_sens = table.assign(sensitivity=np.nan)
    assert sort_units(no_sens, "sensitivity") == list(LAYERS)
    with pytest.raises(ValueError, match="choose one of"):
        sort_units(table, "size")


def test_figure_data(stack):
    _, space, cost_model = stack
    plan = space.plan_from_params({**space.params_from_plan(space.uniform_plan(8)), "4/w_bits": 2})
    table = bitmap_table(space, cost_model, plan, sensitivity=fake_result())
    fig = bitmap_figure(table, sort="sensitivity")
    order = sort_units(table, "sensitivity")
    current = next(t for t in fig.data if t.name == "current bits")
    assert list(current.y) == order
    bits = table.set_index("unit").loc[order, "bits"]
    assert list(current.x) == [str(b) for b in bits]
    assert list(current.marker.color) == [bits_colour(b) for b in bits]
    assert current.x[order.index("4")] == "2" and current.marker.color[order.index("4")] == bits_colour(2)
    grid = next(t for t in fig.data if t.name == "choices")
    assert len(grid.x) == len(LAYERS) * 3 and set(grid.x) == {"2", "4", "8"}
    assert list(fig.layout.yaxis.categoryarray) == order[::-1]  # the first row at the top
    sens = next(t for t in fig.data if t.name == "sensitivity")
    assert list(sens.x) == pytest.approx([omega(u, 2) for u in order])
    assert "sensitivity" in fig.layout.title.text and "18 units" in fig.layout.title.text


def test_explorer_map_view_click_changes_the_plan_and_summary(stack):
    _, space, cost_model = stack
    assert len(space.units) > MAP_MIN_UNITS
    ex = BitWidthExplorer(space, cost_model, sensitivity=fake_result(), track=False)
    assert ex.view == "map" and ex.controls == {} and ex.bitmap is not None
    assert ex.plan == space.uniform_plan(8)
    assert ex.bitmap.order == sort_units(bitmap_table(space, cost_model, ex.plan, sensitivity=fake_result()),
                                         "sensitivity")  # fmt: skip
    assert ex.bitmap.colours() == dict.fromkeys(LAYERS, bits_colour(8))
    before = dict(ex.values)
    summary = ex.summary.value
    ex.bitmap.buttons[("12", 2)].click()  # what a click in the browser does
    assert ex.plan["12"].w_bits == 2 and all(ex.plan[n].w_bits == 8 for n in LAYERS if n != "12")
    saved = cost_model.weight_params["12"] * (8 - 2) // 8
    assert before["weight_bytes"] - ex.values["weight_bytes"] == saved > 0
    assert ex.values["source"] == "edited" and ex.summary.value != summary
    assert f"{ex.values['weight_bytes']:,} bytes" in ex.summary.value
    assert ex.bitmap.colours()["12"] == bits_colour(2)
    assert ex.bitmap.buttons[("12", 2)].style.button_color == bits_colour(2)
    assert ex.bitmap.buttons[("12", 8)].style.button_color != bits_colour(8)
    assert ex.editor.unit == "12"  # the clicked unit is selected in the editor

    ex.bitmap.sort_select.value = "weights"
    assert ex.bitmap.order == sort_units(bitmap_table(space, cost_model, ex.plan), "weights")
    names = [c for c in ex.bitmap.grid.children if c in [r[0] for r in ex.bitmap.rows.values()]]
    assert [next(u for u, r in ex.bitmap.rows.items() if r[0] is c) for c in names] == ex.bitmap.order

    ex.editor.knobs["w_bits"].value = 4  # select a unit, then set its bits
    assert ex.plan["12"].w_bits == 4 and ex.bitmap.colours()["12"] == bits_colour(4)
    ex.all_controls["w_bits"].value = 2
    assert ex.plan == space.uniform_plan(2) and ex.all_controls["w_bits"].value is None
    assert set(ex.bitmap.colours().values()) == {bits_colour(2)}
    ex.set_plan(space.uniform_plan(8))
    assert set(ex.bitmap.colours().values()) == {bits_colour(8)}
    with pytest.raises(PlanError, match="not a choice"):
        ex.set_choice("12", 5)


def test_float_column_and_views(stack, digits_cnn_task):
    model, _, cost_model = stack
    space = SearchSpace(model, SpaceConfig(w_bits=W_BITS, methods=("quantize", "none")))
    ex = BitWidthExplorer(space, cost_model, view="map", track=False)
    assert map_columns(space.units) == [2, 4, 8, FLOAT] and ex.bitmap.columns == [2, 4, 8, FLOAT]
    assert ex.bitmap.order == list(LAYERS)  # no sensitivity: forward order
    assert "sensitivity: none given" in ex.bitmap.header[-1].value
    ex.bitmap.buttons[("6", FLOAT)].click()
    assert "6" not in ex.plan and ex.bitmap.colours()["6"] == FLOAT_COLOUR
    assert ex.editor.knobs["method"].value == "none" and ex.editor.knobs["w_bits"].disabled
    fig = ex.map_figure()
    current = next(t for t in fig.data if t.name == "current bits")
    assert list(current.y) == list(LAYERS) and current.x[LAYERS.index("6")] == FLOAT
    assert current.marker.color[LAYERS.index("6")] == FLOAT_COLOUR
    assert set(next(t for t in fig.data if t.name == "choices").x) == {"2", "4", "8", FLOAT}
    ex.bitmap.buttons[("6", 4)].click()
    assert ex.plan["6"].w_bits == 4 and ex.plan["6"].method == "quantize"

    grid = BitWidthExplorer(space, cost_model, view="grid", track=False)
    assert grid.view == "grid" and grid.bitmap is None and ("6", "w_bits") in grid.controls
    first_row = grid.grid.children[2 * (1 + len(grid.columns))]  # after the header and "all units" rows
    assert "<span" in first_row.value and ">0<" in first_row.value  # the grid is still the GridBox of cells
    with pytest.raises(ValueError, match="view 'table' is not valid"):
        BitWidthExplorer(space, cost_model, view="table", track=False)

    task = digits_cnn_task  # a small space stays on the grid, and the map still works when asked for
    small = SearchSpace(task.model)
    cm = CostModel(task.model, task.example_input(), fp32_latency_ms=1.0)
    assert BitWidthExplorer(small, cm, track=False).view == "grid"
    forced = BitWidthExplorer(small, cm, view="map", front=[small.uniform_plan(4)], track=False)
    forced.load_front(0)
    assert set(forced.bitmap.colours().values()) == {bits_colour(4)}
    assert "bit-width map: 4 units" in forced.widget.children[1].get_title(0)
