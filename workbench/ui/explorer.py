"""``BitWidthExplorer``: tweak a per-layer bit-width map (a compact clickable map, or dropdowns on small spaces) and
see its cost, predicted accuracy and place against a search's Pareto front at once; measure it, log it, or load
any front plan into the controls.

Logic stays in the package (:class:`~workbench.search.space.SearchSpace` builds plans,
:class:`~workbench.search.objectives.CostModel` prices them, the predictor / evaluator score them); the widget
only wires controls to those and holds the latest values (``explorer.values``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import ipywidgets as W
import numpy as np
import pandas as pd
import plotly.graph_objects as go
from IPython.display import display

from workbench.quant.spec import QuantPlan
from workbench.search.context import search_cost_model, search_evaluator
from workbench.search.objectives import PredictedAccuracy
from workbench.search.space import SearchSpace
from workbench.ui import explorer_controls as ctl
from workbench.ui.bitmap import bitmap_figure, map_columns, unit_info, unit_sensitivity, with_params
from workbench.ui.explorer_state import KnobState
from workbench.ui.explorer_values import default_plan, log_values, plan_values
from workbench.ui.explorer_view import (
    CURRENT,
    CURRENT_SIZE,
    METHOD_KNOBS,
    _in_kernel,  # noqa: F401 - used by workbench.ui.runtime
    _label,
    _pct,
    explorer_figure,
    figure_widget_available,
    front_table,
    grey_out,
    move_current,
    summary_html,
    unit_grid,
)
from workbench.ui.search import _is_result

VIEWS, MAP_MIN_UNITS = ctl.VIEWS, ctl.MAP_MIN_UNITS

if TYPE_CHECKING:
    from workbench.search.result import SearchResult
    from workbench.tasks.task import TaskLike
    from workbench.ui.bitmap_widget import BitMapView, UnitEditor


class BitWidthExplorer:
    """The bit-width map of ``space``'s units; every change recomputes the plan's cost and predicted accuracy
    and moves its marker on the Pareto plot.

    ``view`` (one of :data:`VIEWS`): ``"map"`` a compact row per unit, a button per weight bits coloured when
    chosen (a click sets it), its sensitivity and weight share beside it, sorted by forward order, sensitivity,
    weight size or MACs, and a unit picker for its other knobs; ``"grid"`` a row of dropdowns per unit (method,
    weight / activation bits, granularity, sparsity / structure / rank ratio where its methods use them);
    ``"auto"`` (default) the map above :data:`MAP_MIN_UNITS` units. ``sensitivity``: a SensitivityResult or a
    mapping layer (or unit) -> value, shown in the map (``sensitivity_metric`` / ``sensitivity_bits``: see
    :func:`~workbench.ui.bitmap.unit_sensitivity`).

    ``predicted``: any callable ``plan -> accuracy`` (e.g. :class:`~workbench.search.objectives.PredictedAccuracy`;
    it is not asked for plans that prune or factorise: a predictor trained on quantization cannot score them).
    ``evaluator``: callable ``plan -> accuracy`` or ``-> (accuracy, cache_hit)`` (a
    :class:`~workbench.search.objectives.PlanEvaluator`), run by the Evaluate button / :meth:`evaluate`.
    ``front``: a SearchResult (its front, trials and FP32 accuracy), a front DataFrame with a ``plan`` JSON column,
    or a list of QuantPlans; ``trials``: all trials to draw behind the front. ``plan``: the start (default
    uniform 8-bit weights when 8 is a choice, else every unit's first choices). ``track``: the Log button logs
    to MLflow (False: never; True: unless ``WORKBENCH_TRACKING=0``).

    ``explorer.widget`` is the box to display; ``explorer.values`` the latest numbers; ``explorer.plan`` the
    current QuantPlan; ``explorer.figure`` the Pareto plot (a ``go.FigureWidget`` when anywidget is installed);
    ``explorer.bitmap`` the map (map view) and ``explorer.controls`` the dropdowns (grid view).
    """

    def __init__(
        self,
        space: SearchSpace,
        cost_model: Any,
        *,
        predicted: Callable[[QuantPlan], float] | None = None,
        evaluator: Callable[[QuantPlan], Any] | None = None,
        front: Any = None,
        trials: pd.DataFrame | None = None,
        fp32_accuracy: float | None = None,
        plan: QuantPlan | None = None,
        track: bool = True,
        title: str = "Bit-width map explorer",
        view: str = "auto",
        sensitivity: Any = None,
        sensitivity_metric: str | None = None,
        sensitivity_bits: int | None = None,
    ) -> None:
        if not isinstance(space, SearchSpace):
            raise TypeError(f"space must be a SearchSpace, got {type(space).__name__}")
        self.view = ctl.resolve_view(view, len(space.units))
        self.unit_sensitivity, self.sensitivity_label = unit_sensitivity(
            space, sensitivity, metric=sensitivity_metric, bits=sensitivity_bits
        )
        self.space = space
        self.cost_model = cost_model
        self.predicted = predicted
        self.evaluator = evaluator
        self.track = track
        self.title = title
        fp32 = cost_model.fp32_cost
        self.fp32_cost = fp32
        if _is_result(front):
            result = front
            front = result.front
            trials = result.trials if trials is None else trials
            fp32_accuracy = result.fp32_accuracy if fp32_accuracy is None else fp32_accuracy
        if fp32_accuracy is None:
            fp32_accuracy = getattr(predicted, "fp32_accuracy", None)
        self.fp32_accuracy = None if fp32_accuracy is None else float(fp32_accuracy)
        self.front, self.front_plans = front_table(front, self.cost_model, self.predicted)
        self.trials = trials
        self.values: dict[str, Any] = {}
        self.measured: dict[str, float] = {}  # plan key -> accuracy measured here
        self.source = "start"
        self.last_run_id: str | None = None
        self._holding = False
        self._build_controls()
        self.figure = self._build_figure()
        self.out = W.Output()
        self.widget = self._build_widget()
        start = plan if plan is not None else default_plan(self.space)
        self.set_plan(start, source="start")

    @classmethod
    def from_result(
        cls, result: SearchResult, task: TaskLike, *, predictor: Any = None, **kwargs: Any
    ) -> BitWidthExplorer:
        """An explorer on search ``result`` (run on ``task``): its space, cost model, front and trials; the
        Evaluate button measures on its split with its seed, cached in its study's database; ``predictor`` (an
        :class:`~workbench.predictor.AccuracyPredictor`, optional) predicts accuracy. ``kwargs``: ``plan``,
        ``track``, ``title``."""
        config = result.config
        cost_model = search_cost_model(task, config, fp32_latency_ms=result.info.get("fp32_latency_ms"))
        predicted = None if predictor is None else PredictedAccuracy(predictor, result.fp32_accuracy)
        evaluator = search_evaluator(task, config, result.storage)
        space = SearchSpace(task.model, config.space)
        return cls(space, cost_model, predicted=predicted, evaluator=evaluator, front=result, **kwargs)

    # ------------------------------------------------------------------------------------------ building
    def _build_controls(self) -> None:
        """The state (one value per parameter), its view (the map or the dropdown grid), the summary and status
        lines, the buttons and the front picker."""
        self.state = KnobState(self.space)
        self.controls: dict[tuple[str, str], W.Dropdown] = {}
        self.bitmap: BitMapView | None = None
        self.editor: UnitEditor | None = None
        if self.view == "grid":
            self.controls = ctl.knob_dropdowns(self.state.choices, self._on_change)
            self.grid, self.fixed_note, self.columns, self.all_controls = unit_grid(
                self.space, self.cost_model, self.controls, self._on_all
            )
        else:
            m = ctl.map_controls(
                self.space,
                self.cost_model,
                self.unit_sensitivity,
                self.sensitivity_label,
                on_choice=lambda u, c: self._guard(lambda: self.set_choice(u, c)),
                on_set=lambda u, k, v: self._guard(lambda: self.set(u, k, v)),
                on_all=self._on_all,
            )
            self.bitmap, self.editor = m.bitmap, m.editor
            self.all_controls, self.columns = m.all_controls, m.columns
            self.grid, self.fixed_note = m.box, m.note
        self.summary = W.HTML()
        self.status = W.HTML()
        a = ctl.action_controls(
            self.front,
            len(self.front_plans),
            self.fp32_cost.weight_bytes,
            on_evaluate=self.evaluate if self.evaluator is not None else None,
            on_log=self.log if self.track else None,
            on_load=self.load_front,
            guard=self._guard,
        )
        self.evaluate_button, self.log_button = a.evaluate_button, a.log_button
        self.front_select, self.load_button = a.front_select, a.load_button
        self._actions = a

    def _build_widget(self) -> W.VBox:
        """The box to display: title, the map or grid in an accordion, summary, buttons, front picker, status,
        plot."""
        plot = self.figure if isinstance(self.figure, W.DOMWidget) else self.out
        layers = sum(len(u.layers) for u in self.space.units)
        heading = f"bit-width {self.view}: {len(self.space.units)} units ({layers} layers)"
        return ctl.explorer_box(
            self.title,
            heading,
            W.VBox([self.grid, self.fixed_note]),
            self.summary,
            self._actions,
            self.status,
            plot,
        )

    def _build_figure(self) -> go.Figure:
        base, self._div, self._y_span = explorer_figure(
            self.trials, self.front, self.fp32_cost.weight_bytes, self.fp32_accuracy
        )
        if figure_widget_available():
            fig = go.FigureWidget(base)
            for trace in fig.data:
                if trace.name and trace.name.startswith("Pareto front"):
                    trace.on_click(self._on_front_click)
            return fig
        return base

    # ------------------------------------------------------------------------------------------ state
    def params(self) -> dict[str, Any]:
        """The current parameters, ``"<unit>/<knob>" -> value``."""
        return self.state.params()

    @property
    def plan(self) -> QuantPlan:
        """The QuantPlan the controls describe."""
        return self.state.plan()

    def set(self, unit: str, knob: str, value: Any) -> None:
        """Set one control (and recompute)."""
        self.state.assign(unit, knob, value)
        self.source = "edited"
        self.update()

    def set_choice(self, unit: str, column: Any) -> None:
        """What a click on the map does: ``unit`` to ``column`` weight bits (a float32 unit is quantized), or to
        float32 for ``"float"`` (method ``none``); the unit editor shows the unit."""
        self.state.assign_choice(unit, column)
        if self.editor is not None:
            self.editor.select(unit)
        self.source = "edited"
        self.update()

    def set_all(self, knob: str, value: Any) -> None:
        """Set ``knob`` to ``value`` on every unit that offers it (one recomputation)."""
        self.state.assign_all(knob, value)
        self.source = f"all units {knob}={_label(value)}"
        self.update()

    def set_plan(self, plan: QuantPlan, *, source: str = "plan") -> None:
        """Set every control from ``plan`` (raises when the plan leaves the space)."""
        self.state.assign_plan(plan)
        self.source = source
        self.update()

    def load_front(self, i: int) -> QuantPlan:
        """Load front plan ``i`` (0 = smallest) into the controls; returns it."""
        if not self.front_plans:
            raise ValueError("this explorer has no front; pass front=SearchResult or a front DataFrame")
        if not isinstance(i, (int, np.integer)) or not (-len(self.front_plans) <= i < len(self.front_plans)):
            raise IndexError(f"front plan {i!r} out of range; the front has {len(self.front_plans)} plans")
        i = int(i) % len(self.front_plans)
        plan = self.front_plans[i]
        label = str(self.front.iloc[i].get("label", f"plan {i}"))
        self.set_plan(plan, source=f"front #{i} ({label})")
        if self.front_select.value != i:
            with self._hold():
                self.front_select.value = i
        return plan

    def map_figure(self, *, sort: str = "forward") -> go.Figure:
        """The current plan as a bit-width map figure (:func:`~workbench.ui.bitmap.bitmap_figure`), rows in
        ``sort`` order, with this explorer's sensitivity."""
        table = with_params(unit_info(self.space, self.cost_model, self.unit_sensitivity), self.params())
        table.attrs["sensitivity"] = self.sensitivity_label
        return bitmap_figure(table, sort=sort, columns=map_columns(self.space.units))

    # ------------------------------------------------------------------------------------------ compute
    def update(self) -> dict[str, Any]:
        """Recompute ``values`` for the current plan, refresh the summary, the greyed-out knobs and the plot."""
        plan = self.plan
        self._sync_views()
        v = plan_values(
            plan,
            self.cost_model,
            self.fp32_cost,
            self.predicted,
            self.fp32_accuracy,
            self.measured,
            self.source,
        )
        self.values = v
        self.summary.value = summary_html(v)
        move_current(self.figure, v, self._div, self.out)
        return v

    def _sync_views(self) -> None:
        """Show the state: the grid's dropdowns (and their greyed-out knobs), or the map and the unit editor."""
        if self.bitmap is not None:
            self.bitmap.refresh(self.params())
        if self.editor is not None:
            self.editor.refresh(self.state.values)
        with self._hold():
            for key, dd in self.controls.items():
                if dd.value != self.state.values[key]:
                    dd.value = self.state.values[key]
        grey_out(self.controls, self.space.units)

    def evaluate(self) -> float:
        """Measure the current plan's accuracy with ``evaluator`` (shown, and kept for this plan)."""
        if self.evaluator is None:
            raise ValueError("no evaluator given; pass evaluator=PlanEvaluator(task) to measure plans")
        self.status.value = "<i>evaluating...</i>"
        plan = self.plan
        out = self.evaluator(plan)
        acc = float(out[0] if isinstance(out, tuple) else out)
        cached = bool(out[1]) if isinstance(out, tuple) and len(out) > 1 else False
        self.measured[SearchSpace.plan_key(plan)] = acc
        self.update()
        self.status.value = f"measured accuracy {_pct(acc)}" + (
            " (from the evaluation cache)" if cached else ""
        )
        return acc

    def log(self, run_name: str | None = None) -> str | None:
        """Log the current plan and its values to MLflow (stage ``explorer``); the run id, or None when tracking
        is disabled (``track=False`` or ``WORKBENCH_TRACKING=0``)."""
        run_id = log_values(
            self.plan,
            self.values,
            {"source": self.source, "units": len(self.space.units), **self.params()},
            run_name=run_name,
            enabled=None if self.track else False,
        )
        self.last_run_id = run_id
        self.status.value = f"logged to MLflow run {run_id}" if run_id else "tracking is disabled"
        return run_id

    # ------------------------------------------------------------------------------------------ callbacks
    def _on_change(self, key: tuple[str, str], change: Any) -> None:
        if self._holding:
            return
        self.state.values[key] = change["new"]
        self.source = "edited"
        self._guard(self.update)

    def _on_all(self, knob: str, change: Any) -> None:
        value = change["new"]
        if value is None or self._holding:
            return
        self._guard(lambda: self.set_all(knob, value))
        with self._hold():
            self.all_controls[knob].value = None

    def _on_front_click(self, _trace: Any, points: Any, _state: Any) -> None:
        if points.point_inds:
            self._guard(lambda: self.load_front(int(points.point_inds[0])))

    def _guard(self, fn: Callable[[], Any]) -> Any:
        """Run a callback; show its error in the status line (button callbacks have no traceback display)."""
        try:
            return fn()
        except Exception as e:  # noqa: BLE001
            self.status.value = f"<span style='color:#b00'>{type(e).__name__}: {e}</span>"
            return None

    @contextlib.contextmanager
    def _hold(self) -> Iterator[None]:
        before = self._holding
        self._holding = True
        try:
            yield
        finally:
            self._holding = before

    def _ipython_display_(self) -> None:
        display(self.widget)


def bit_width_explorer(space: SearchSpace, cost_model: Any, **kwargs: Any) -> BitWidthExplorer:
    """Build a :class:`BitWidthExplorer` (see there for the arguments)."""
    return BitWidthExplorer(space, cost_model, **kwargs)


__all__ = [
    "CURRENT",
    "CURRENT_SIZE",
    "MAP_MIN_UNITS",
    "METHOD_KNOBS",
    "VIEWS",
    "BitWidthExplorer",
    "bit_width_explorer",
    "figure_widget_available",
]
