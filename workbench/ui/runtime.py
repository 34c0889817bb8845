"""Plotly figures and a widget panel for runtime adaptation (:mod:`workbench.runtime`): dynamic precision against
static maps, the rungs inputs ended on, the per-input choices, and a live budget explorer.

Figure functions return figures; nothing is shown. Accuracy is drawn in percent, cost in BOPs (bit operations:
MACs x weight bits x activation bits) per input, weight bits MAC-weighted.

Parts: :mod:`workbench.ui.runtime_figures` (figures of an evaluation table, shared colours),
:mod:`workbench.ui.runtime_serving` (figures of served batches), :mod:`workbench.ui.runtime_widgets` (the
budget explorer).
"""

from __future__ import annotations

from workbench.ui.runtime_figures import (
    ACC_AXIS,
    BOPS_AXIS,
    FP32_COLOR,
    ORACLE,
    OTHER_COLORS,
    POLICY_COLORS,
    STATIC_COLOR,
    runtime_tradeoff_figure,
    static_front_figure,
)
from workbench.ui.runtime_serving import per_input_figure, rung_histogram_figure
from workbench.ui.runtime_widgets import BudgetExplorer

__all__ = [
    "ACC_AXIS",
    "BOPS_AXIS",
    "FP32_COLOR",
    "ORACLE",
    "OTHER_COLORS",
    "POLICY_COLORS",
    "STATIC_COLOR",
    "BudgetExplorer",
    "per_input_figure",
    "rung_histogram_figure",
    "runtime_tradeoff_figure",
    "static_front_figure",
]
