"""Figures and widgets, without a kernel: widgets recompute when their controls change."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from torch import nn

from workbench.quant import weight_error_table
from workbench.ui.figures import comparison_figure, error_by_bits_figure, layer_cost_figure
from workbench.ui.widgets import layer_quant_explorer


@pytest.fixture
def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 10))


def test_explorer_recomputes_on_change(model):
    ex = layer_quant_explorer(model)
    assert ex.layer.options == ("0", "3")
    err4 = ex.error
    assert "w4 per_channel" in ex.label.value and f"{err4.levels} levels" in ex.label.value
    ex.bits.value = 8
    assert ex.error.mse < err4.mse / 50  # ~16x finer grid: error falls by far more than 50x
    ex.bits.value = 2
    assert ex.error.levels <= 3 * 8  # ternary grid in each output channel
    ex.granularity.value = "per_tensor"
    assert ex.error.levels == 3
    ex.layer.value = "3"
    assert ex.figure.layout.title.text.startswith("3: 2-bit per_tensor")
    ex.granularity.value = "per_group"
    assert ex.spec().group_size == 8


def test_figures_from_tables(model):
    errors = weight_error_table(model, bits=(2, 4, 8))
    assert len(errors) == 2 * 2 * 3
    fig = error_by_bits_figure(errors)
    assert len(fig.data) == 4
    with pytest.raises(ValueError, match="lacks column"):
        layer_cost_figure(pd.DataFrame({"params": [1]}))
    table = pd.DataFrame({"name": ["fp32", "int8"], "accuracy": [0.98, 0.979], "size_bytes": [4000, 1000]})
    assert list(comparison_figure(table).data[0].x) == [4000, 1000]
