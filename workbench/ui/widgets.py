"""Interactive widgets. Logic lives in the package; widgets wire controls to it and hold the latest results."""

from __future__ import annotations

from collections.abc import Sequence

import ipywidgets as W
from IPython.display import display
from torch import nn

from workbench.quant.error import layer_weight, weight_error
from workbench.quant.introspect import quantizable_layers
from workbench.quant.modules import quantize_weight
from workbench.quant.spec import GRANULARITIES, OBSERVERS, QuantSpec
from workbench.ui.figures import weight_histogram_figure


class LayerQuantExplorer:
    """Pick a layer, bit width, granularity and observer; see the weight histogram and error before and after.

    ``.widget`` is the ipywidgets box to display; ``.figure`` and ``.error`` hold the latest figure and
    :class:`WeightError`; ``.label.value`` a one-line summary. Changing any control recomputes them.
    """

    def __init__(
        self, model: nn.Module, *, bits: Sequence[int] = (2, 3, 4, 5, 6, 8, 16), group_size: int = 8
    ) -> None:
        self.model = model
        self.group_size = group_size
        layers = quantizable_layers(model)
        if not layers:
            raise ValueError(f"{type(model).__name__} has no quantizable layers (Conv2d, Linear)")
        self.layer = W.Dropdown(options=layers, value=layers[0], description="layer")
        self.bits = W.SelectionSlider(
            options=list(bits), value=4 if 4 in bits else bits[0], description="w bits"
        )
        self.granularity = W.ToggleButtons(
            options=list(GRANULARITIES), value="per_channel", description="granularity"
        )
        self.observer = W.Dropdown(options=list(OBSERVERS), value="minmax", description="observer")
        self.label = W.HTML()
        self.out = W.Output()
        self.figure = None
        self.error = None
        for control in (self.layer, self.bits, self.granularity, self.observer):
            control.observe(self._on_change, names="value")
        self.widget = W.VBox(
            [W.HBox([self.layer, self.observer]), self.bits, self.granularity, self.label, self.out]
        )
        self.update()

    def spec(self) -> QuantSpec:
        gran = self.granularity.value
        return QuantSpec(
            w_bits=self.bits.value,
            granularity=gran,
            group_size=self.group_size if gran == "per_group" else None,
            w_observer=self.observer.value,
        )

    def update(self) -> None:
        w = layer_weight(self.model, self.layer.value)
        spec = self.spec()
        q = quantize_weight(w, spec)
        self.error = weight_error(w, q)
        title = f"{self.layer.value}: {spec.w_bits}-bit {spec.granularity} ({spec.w_observer})"
        self.figure = weight_histogram_figure(w, q, title=title, error=self.error)
        e = self.error
        self.label.value = (
            f"<b>{self.layer.value}</b> w{spec.w_bits} {spec.granularity}: MSE {e.mse:.3g}, "
            f"relative MSE {e.rel_mse:.3g}, SQNR {e.sqnr_db:.1f} dB, max |error| {e.max_abs:.3g}, {e.levels} levels"
        )
        self.out.clear_output(wait=True)
        with self.out:
            display(self.figure)

    def _on_change(self, _change) -> None:
        self.update()


def layer_quant_explorer(model: nn.Module, **kwargs) -> LayerQuantExplorer:
    """Build a :class:`LayerQuantExplorer` for ``model``."""
    return LayerQuantExplorer(model, **kwargs)


class SensitivityRankingExplorer:
    """Pick a sensitivity metric and a weight bit width; see the per-layer ranking as a bar chart and a table.

    ``.ranking`` holds the current ranking DataFrame, ``.figure`` the bar chart, ``.label.value`` a summary.
    """

    def __init__(self, result, *, granularity: str = "per_channel") -> None:
        self.result = result
        self.granularity = granularity
        t = result.table
        per_bit = t[(t["kind"] == "weight") & (t["w_bits"] < 32)]
        metrics = sorted(per_bit["metric"].unique())
        if not metrics:
            raise ValueError("this sensitivity result has no per-bit weight metrics to rank by")
        bits = sorted(int(b) for b in per_bit["w_bits"].unique())
        self.metric = W.Dropdown(options=metrics, value=metrics[0], description="metric")
        self.bits = W.SelectionSlider(options=bits, value=4 if 4 in bits else bits[0], description="w bits")
        self.label = W.HTML()
        self.table = W.HTML()
        self.out = W.Output()
        self.ranking = None
        self.figure = None
        for control in (self.metric, self.bits):
            control.observe(lambda _c: self.update(), names="value")
        self.widget = W.VBox([W.HBox([self.metric, self.bits]), self.label, self.out, self.table])
        self.update()

    def update(self) -> None:
        from workbench.ui.figures import ranking_figure

        self.ranking = self.result.ranking(
            self.metric.value, bits=self.bits.value, granularity=self.granularity
        )
        self.figure = ranking_figure(
            self.ranking, title=f"{self.metric.value} at {self.bits.value}-bit weights"
        )
        top = self.ranking.iloc[0]
        self.label.value = (
            f"most sensitive at {self.bits.value} bits by <b>{self.metric.value}</b>: "
            f"<b>{top['layer']}</b> ({top['value']:.3g}); least: {self.ranking.iloc[-1]['layer']}"
        )
        self.table.value = self.ranking.to_html(index=False, float_format=lambda v: f"{v:.4g}")
        self.out.clear_output(wait=True)
        with self.out:
            display(self.figure)


def sensitivity_ranking_explorer(result, **kwargs) -> SensitivityRankingExplorer:
    """Build a :class:`SensitivityRankingExplorer` for a :class:`workbench.sensitivity.SensitivityResult`."""
    return SensitivityRankingExplorer(result, **kwargs)
