"""The live budget panel of runtime adaptation (:class:`BudgetExplorer`): a budget slider and a policy dropdown
serving the evaluation inputs through :class:`workbench.runtime.AdaptiveRuntime` on every change."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import ipywidgets as W
import numpy as np
import plotly.graph_objects as go
import torch
from IPython.display import display

from workbench.tasks.task import TaskLike
from workbench.ui.explorer import _in_kernel, figure_widget_available
from workbench.ui.runtime_serving import _rung_bits, rung_histogram_figure

if TYPE_CHECKING:
    from workbench.runtime import AdaptiveRuntime, Policy, ServeResult


class BudgetExplorer:
    """A live budget panel: a slider (budget as a fraction of the all-8-bit map's cost, from the smallest
    feasible fraction to 1.0) and a policy dropdown; every change builds an :class:`AdaptiveRuntime` (sharing one
    switchable model, probe result and calibration logits, so a change takes about a second), serves the
    evaluation inputs and updates the summary label and the rung histogram.

    ``.widget`` is the box to display; ``.values`` the latest numbers (``accuracy``, ``avg_bops``,
    ``avg_weight_bits``, ``overhead_fraction``, ``overrides``, ``avg_cost``, ``budget``; :meth:`to_metrics` has
    them flat for logging); ``.last_result`` the latest :class:`ServeResult` and ``.runtime`` its runtime (None
    after a budget the policy cannot meet: the label then shows the :class:`RuntimeBudgetError` message and
    ``.error`` holds it). :meth:`make_runtime` builds another runtime sharing the explorer's model and probe.
    """

    def __init__(
        self,
        task: TaskLike,
        *,
        x_eval: torch.Tensor,
        y_eval: torch.Tensor | np.ndarray | Sequence[int],
        config: Any = None,
        policy: str = "rule",
        fraction: float = 0.45,
        profile: Any = None,
    ) -> None:
        from workbench.runtime import POLICIES, RuntimeConfig, RuntimeFactory, _inputs

        cfg = config or RuntimeConfig()
        if policy not in POLICIES:
            raise ValueError(f"policy={policy!r} not valid; choose one of {POLICIES}")
        self.task, self.config, self.profile = task, cfg, profile
        self.x_eval = _inputs(x_eval)
        self.y_eval = torch.as_tensor(np.asarray(y_eval)).long().flatten()
        if self.y_eval.shape[0] != self.x_eval.shape[0]:
            raise ValueError(f"{self.x_eval.shape[0]} evaluation inputs but {self.y_eval.shape[0]} labels")
        self.factory = RuntimeFactory.build(task.model, task.calib_loader, config=cfg, profile=profile)
        self.x_cal, self.smodel, self.coster = self.factory.x_cal, self.factory.smodel, self.factory.coster
        self.probe, self.calib_logits = self.factory.probe, self.factory.calib_logits
        self.top_cost = self.factory.top_cost
        self.min_fraction = float(min(self.factory.rung_costs) / self.top_cost)
        self.runtime: AdaptiveRuntime | None = None
        self.last_result: ServeResult | None = None
        self.error: str | None = None
        self.values: dict[str, float] = {}
        self._build_widgets(policy, fraction, POLICIES)
        self.update()

    def _build_widgets(self, policy: str, fraction: float, policies: Sequence[str]) -> None:
        """The slider, the policy dropdown, the label and the output area, boxed in :attr:`widget`."""
        cfg = self.config
        self.slider = W.FloatSlider(
            value=float(min(max(fraction, self.min_fraction), 1.0)),
            min=self.min_fraction,
            max=1.0,
            step=0.005,
            readout_format=".3f",
            continuous_update=False,
            description="budget",
            layout=W.Layout(width="480px"),
        )
        self.policy = W.Dropdown(
            options=list(policies[1:]) + [policies[0]], value=policy, description="policy"
        )
        self.label = W.HTML()
        self.out = W.Output()
        self.figure: go.Figure | None = None
        self.slider.observe(self._on_change, names="value")
        self.policy.observe(self._on_change, names="value")
        note = W.HTML(
            f"<small>budget: average {html.escape(cfg.budget_kind)} per input as a fraction of the "
            f"all-{max(cfg.w_bits)}-bit map ({self.top_cost:.4g}); evaluated on {self.x_eval.shape[0]} inputs"
            "</small>"
        )
        self.widget = W.VBox([W.HBox([self.policy, self.slider]), note, self.label, self.out])

    def _on_change(self, change: dict) -> None:
        self.update()

    @property
    def budget(self) -> float:
        return float(self.slider.value) * self.top_cost

    def make_runtime(self, policy: str | Policy, fraction: float) -> AdaptiveRuntime:
        """An :class:`AdaptiveRuntime` for ``policy`` at ``fraction`` of the all-8-bit map's cost, sharing the
        explorer's switchable model, probe result and calibration logits (the widgets are left alone); raises
        :class:`RuntimeBudgetError` when ``policy`` cannot meet that budget."""
        return self.factory.runtime(policy, fraction * self.top_cost)

    def to_metrics(self, prefix: str = "explorer") -> dict[str, float]:
        """The finite numbers of :attr:`values`, keyed ``<prefix>.<name>`` (for MLflow)."""
        return {f"{prefix}.{k}": v for k, v in self.values.items() if v == v}

    def update(self) -> dict[str, float]:
        """Rebuild the runtime for the current slider and policy, serve the evaluation inputs, refresh the
        label and the histogram; returns :attr:`values`."""
        from workbench.runtime import RuntimeBudgetError

        pol, frac = self.policy.value, float(self.slider.value)
        try:
            rt = self.make_runtime(pol, frac)
        except RuntimeBudgetError as e:
            self.runtime, self.last_result, self.error = None, None, str(e)
            self.values = {
                k: math.nan
                for k in ("accuracy", "avg_bops", "avg_weight_bits", "overhead_fraction", "avg_cost")
            }
            self.values.update({"overrides": math.nan, "budget": frac * self.top_cost})
            self.label.value = (
                f"<b style='color:#d62728'>{html.escape(pol)} at {frac:.3f}: infeasible budget</b><br>"
                f"{html.escape(str(e))}"
            )
            return self.values
        res = rt.serve(self.x_eval)
        self.runtime, self.last_result, self.error = rt, res, None
        self.values = self._summarise(rt, res, frac)
        self._draw(rt, res)
        return self.values

    def _summarise(self, rt: AdaptiveRuntime, res: ServeResult, frac: float) -> dict[str, float]:
        served = [i for i, rs in enumerate(res.runs) if rs]
        rung_bops = np.array([rt.coster(m).bops for m in rt.ladder])
        bits = _rung_bits(rt)
        pred = res.logits.argmax(1) if res.logits.numel() else torch.full((len(res.rung),), -1)
        ok = (pred == self.y_eval) & torch.from_numpy(np.asarray(res.rung) >= 0)
        v = {
            "accuracy": float(ok.float().mean()),
            "avg_bops": float(np.mean([rung_bops[res.runs[i]].sum() for i in served]))
            if served
            else math.nan,
            "avg_weight_bits": float(np.mean([bits[res.runs[i][-1]] for i in served]))
            if served
            else math.nan,
            "overhead_fraction": float(res.overhead_fraction),
            "overrides": float(rt.manager.overrides),
            "avg_cost": float(np.mean(res.cost[served])) if served else math.nan,
            "budget": frac * self.top_cost,
        }
        rejected = len(res.rung) - len(served)
        self.label.value = (
            f"<b>{html.escape(rt.policy.name)}</b> at {frac:.3f} of the 8-bit cost: "
            f"accuracy <b>{100 * v['accuracy']:.2f} %</b> · "
            f"avg BOPs {v['avg_bops']:.4g} ({v['avg_bops'] / self._top_bops():.3f} of 8-bit) · "
            f"avg weight bits {v['avg_weight_bits']:.2f} · "
            f"overhead {100 * v['overhead_fraction']:.1f} % of inference time · "
            f"manager overrides {int(v['overrides'])}" + (f" · {rejected} rejected" if rejected else "")
        )
        return v

    def _top_bops(self) -> float:
        return self.coster({g: max(self.config.w_bits) for g in self.smodel.group_names}).bops

    def _draw(self, rt: AdaptiveRuntime, res: ServeResult) -> None:
        fig = rung_histogram_figure(res, rt)
        if self.figure is not None and isinstance(self.figure, go.FigureWidget):
            with self.figure.batch_update():
                self.figure.data[0].y = fig.data[0].y
                self.figure.data[0].customdata = fig.data[0].customdata
                self.figure.layout.shapes = fig.layout.shapes
                self.figure.layout.annotations = fig.layout.annotations
                self.figure.layout.title = fig.layout.title
            return
        if self.figure is None and figure_widget_available():
            self.figure = go.FigureWidget(fig)
            if _in_kernel():
                with self.out:
                    display(self.figure)
            return
        self.figure = fig
        if _in_kernel():
            self.out.clear_output(wait=True)
            with self.out:
                display(fig)
