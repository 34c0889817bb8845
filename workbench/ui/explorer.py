"""``BitWidthExplorer``: tweak a per-layer bit-width map with dropdowns and see its cost, predicted accuracy and
place against a search's Pareto front at once; measure it, log it, or load any front plan into the controls.

Logic stays in the package (:class:`~workbench.search.space.SearchSpace` builds plans,
:class:`~workbench.search.objectives.CostModel` prices them, the predictor / evaluator score them); the widget
only wires controls to those and holds the latest values (``explorer.values``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import ipywidgets as W
import numpy as np
import pandas as pd
import plotly.graph_objects as go
from IPython.display import display

from workbench.quant.spec import PlanError, QuantPlan
from workbench.search.space import KNOBS, SearchSpace
from workbench.ui.search import _is_result, current_trace, pareto_figure, size_axis

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


class BitWidthExplorer:
    """One row of dropdowns per unit of ``space`` (method, weight / activation bits, granularity and, where the
    unit's methods use them, sparsity / structure / rank ratio); every change recomputes the plan's cost and
    predicted accuracy and moves its marker on the Pareto plot.

    ``predicted``: any callable ``plan -> accuracy`` (e.g. :class:`~workbench.search.objectives.PredictedAccuracy`;
    it is not asked for plans that prune or factorise: a predictor trained on quantization cannot score them).
    ``evaluator``: callable ``plan -> accuracy`` or ``-> (accuracy, cache_hit)`` (a
    :class:`~workbench.search.objectives.PlanEvaluator`), run by the Evaluate button / :meth:`evaluate`.
    ``front``: a SearchResult (its front, trials and FP32 accuracy), a front DataFrame with a ``plan`` JSON column,
    or a list of QuantPlans; ``trials``: all trials to draw behind the front. ``plan``: the start (default
    uniform 8-bit weights when 8 is a choice, else every unit's first choices). ``track``: the Log button logs
    to MLflow (False: never; True: unless ``WORKBENCH_TRACKING=0``).

    ``explorer.widget`` is the box to display; ``explorer.values`` the latest numbers; ``explorer.plan`` the
    current QuantPlan; ``explorer.figure`` the Pareto plot (a ``go.FigureWidget`` when anywidget is installed).
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
    ) -> None:
        if not isinstance(space, SearchSpace):
            raise TypeError(f"space must be a SearchSpace, got {type(space).__name__}")
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
        self.front, self.front_plans = self._front_table(front)
        self.trials = trials
        self.values: dict[str, Any] = {}
        self.measured: dict[str, float] = {}  # plan key -> accuracy measured here
        self.source = "start"
        self.last_run_id: str | None = None
        self._holding = False

        # -- controls -------------------------------------------------------------------------------------
        self.controls: dict[tuple[str, str], W.Dropdown] = {}
        for unit, knob, choices in space.knob_table():
            dd = W.Dropdown(
                options=[(_label(c, knob), c) for c in choices],
                value=choices[0],
                layout=W.Layout(width="auto"),
                disabled=len(choices) == 1,
            )
            dd.observe(self._on_change, names="value")
            self.controls[(unit, knob)] = dd
        self.grid, self.fixed_note = self._build_grid()
        self.all_controls: dict[str, W.Dropdown] = {}
        self.summary = W.HTML()
        self.status = W.HTML()
        self.evaluate_button = W.Button(
            description="Evaluate",
            icon="play",
            tooltip="measure the real accuracy of the current plan (quantize, calibrate, evaluate)",
            disabled=evaluator is None,
        )
        self.log_button = W.Button(
            description="Log to MLflow",
            icon="save",
            tooltip="log the plan and its values",
            disabled=not track,
        )
        self.evaluate_button.on_click(lambda _b: self._guard(self.evaluate))
        self.log_button.on_click(lambda _b: self._guard(self.log))
        self.front_select = W.Dropdown(
            options=[(self._front_option(i), i) for i in range(len(self.front_plans))] or [("no front", -1)],
            description="front plan",
            layout=W.Layout(width="460px"),
            disabled=not self.front_plans,
        )
        self.load_button = W.Button(description="Load", icon="upload", disabled=not self.front_plans)
        self.load_button.on_click(lambda _b: self._guard(lambda: self.load_front(self.front_select.value)))

        # -- plot --------------------------------------------------------------------------------------------
        self.figure = self._build_figure()
        self.out = W.Output()
        plot = self.figure if isinstance(self.figure, W.DOMWidget) else self.out

        n = len(space.units)
        layers = sum(len(u.layers) for u in space.units)
        accordion = W.Accordion(children=[W.VBox([self.grid, self.fixed_note])])
        accordion.set_title(0, f"bit-width map: {n} units ({layers} layers)")
        accordion.selected_index = 0
        self.widget = W.VBox(
            [
                W.HTML(f"<b>{self.title}</b>"),
                accordion,
                self.summary,
                W.HBox([self.evaluate_button, self.log_button]),
                W.HBox([self.front_select, self.load_button]),
                self.status,
                plot,
            ]
        )
        start = plan if plan is not None else self._default_plan()
        self.set_plan(start, source="start")

    # ------------------------------------------------------------------------------------------ building
    def _default_plan(self) -> QuantPlan:
        if all(8 in u.choices.w_bits and "quantize" in u.choices.methods for u in self.space.units):
            # 8-bit activations, or activations left in float when every unit offers that (weight-only spaces)
            a = next((b for b in (8, 32) if all(b in u.choices.a_bits for u in self.space.units)), None)
            gran = (
                "per_channel"
                if all("per_channel" in u.choices.granularities for u in self.space.units)
                else None
            )
            if a is not None and gran is not None:
                return self.space.uniform_plan(8, a, gran)
        return self.space.plan_from_params({})

    def _front_table(self, front: Any) -> tuple[pd.DataFrame | None, list[QuantPlan]]:
        if front is None:
            return None, []
        if isinstance(front, pd.DataFrame):
            if front.empty:
                return front, []
            if "plan" not in front.columns:
                raise ValueError(
                    f"front DataFrame needs a 'plan' column (plan JSON); it has {list(front.columns)}"
                )
            plans = [
                p if isinstance(p, QuantPlan) else QuantPlan.from_dict(json.loads(p)) for p in front["plan"]
            ]
            return front.reset_index(drop=True), plans
        if isinstance(front, Sequence) and all(isinstance(p, QuantPlan) for p in front):
            plans = list(front)
            rows = []
            for i, p in enumerate(plans):
                cost = self.cost_model(p)
                acc = math.nan
                if self.predicted is not None and not _compressed(p):
                    with contextlib.suppress(Exception):
                        acc = float(self.predicted(p))
                rows.append(
                    {"label": f"plan {i}", "accuracy": acc, "plan": p.to_json(indent=None), **cost.to_dict()}
                )
            return pd.DataFrame(rows), plans
        raise TypeError(
            f"front must be a SearchResult, a front DataFrame or a list of QuantPlans, got {type(front).__name__}"
        )

    def _front_option(self, i: int) -> str:
        row = self.front.iloc[i]
        frac = float(row["weight_bytes"]) / self.fp32_cost.weight_bytes
        acc = float(row["accuracy"])
        label = str(row.get("label", f"plan {i}"))
        return f"#{i} {label}: {_pct(acc)} acc, {_pct(frac)} of FP32 weights"

    def _build_grid(self) -> tuple[W.GridBox, W.HTML]:
        units = self.space.units
        knobs = [k for k in KNOBS if any(k in u.choices.knob_choices() for u in units)]
        # knobs with one choice everywhere are listed once instead of taking a column
        fixed = {
            k: {u.choices.knob_choices()[k][0] for u in units if k in u.choices.knob_choices()}
            for k in knobs
            if all(len(u.choices.knob_choices().get(k, ())) <= 1 for u in units)
        }
        fixed = {k: v for k, v in fixed.items() if len(v) == 1}
        columns = [k for k in knobs if k not in fixed]
        self.columns = columns
        cells: list[W.Widget] = [W.HTML("<b>unit</b>")] + [
            W.HTML(f"<b>{KNOB_LABELS[k]}</b>") for k in columns
        ]
        # an "all units" row: sets that knob on every unit that offers the value
        self.all_controls = {}
        cells.append(W.HTML("<i>all units</i>"))
        for k in columns:
            values = list(dict.fromkeys(v for u in units for v in u.choices.knob_choices().get(k, ())))
            dd = W.Dropdown(
                options=[("-", None)] + [(_label(v, k), v) for v in values],
                value=None,
                layout=W.Layout(width="auto"),
            )
            dd.observe(lambda ch, knob=k: self._on_all(knob, ch), names="value")
            self.all_controls[k] = dd
            cells.append(dd)
        kinds = self._layer_kinds()
        for u in units:
            tip = ", ".join(f"{n} ({kinds[n]})" if n in kinds else n for n in u.layers)
            tag = {kinds.get(n) for n in u.layers} - {None, "Conv2d", "Linear"}
            extra = f" <small>({', '.join(sorted(tag))})</small>" if tag else ""
            cells.append(W.HTML(f'<span title="{tip}">{u.name}</span>{extra}'))
            for k in columns:
                cells.append(self.controls.get((u.name, k)) or W.HTML(""))
        grid = W.GridBox(
            cells,
            layout=W.Layout(
                grid_template_columns=f"minmax(120px, max-content) repeat({len(columns)}, minmax(80px, 125px))",
                grid_gap="2px 6px",
                align_items="center",
            ),
        )
        note = ", ".join(f"{KNOB_LABELS[k]} = {_label(next(iter(v)), k)}" for k, v in fixed.items())
        return grid, W.HTML(f"<small>same for every unit: {note}</small>" if note else "")

    def _layer_kinds(self) -> dict[str, str]:
        """Layer -> type (``Linear``, ``Conv2d``, ``Embedding, weight-only``, ...) when the cost model holds the
        model (a :class:`~workbench.search.objectives.CostModel` does); empty otherwise."""
        from workbench.quant.introspect import is_weight_only, layer_type

        model = getattr(self.cost_model, "model", None)
        if model is None or not hasattr(model, "named_modules"):
            return {}
        wanted = {n for u in self.space.units for n in u.layers}
        return {
            n: layer_type(m) + (", weight-only" if is_weight_only(m) else "")
            for n, m in model.named_modules()
            if n in wanted
        }

    def _build_figure(self) -> go.Figure:
        trials = self.trials
        front = self.front if self.front is not None else None
        if front is None and trials is None:
            base = pareto_figure(
                pd.DataFrame(columns=["accuracy", "weight_bytes"]),
                fp32_weight_bytes=self.fp32_cost.weight_bytes,
                fp32_accuracy=self.fp32_accuracy,
                title="Current plan: accuracy against weight size",
            )
        else:
            base = pareto_figure(
                trials if trials is not None else pd.DataFrame(columns=["accuracy", "weight_bytes"]),
                front=front,
                fp32_weight_bytes=self.fp32_cost.weight_bytes,
                fp32_accuracy=self.fp32_accuracy,
                title="Pareto front and the current plan",
            )
        _, self._div = size_axis(self.fp32_cost.weight_bytes)
        accs = []
        for df in (front, trials):
            if df is not None and not df.empty:
                accs.extend(df["accuracy"].to_numpy(dtype=np.float64).tolist())
        if self.fp32_accuracy is not None:
            accs.append(self.fp32_accuracy)
        accs = [a for a in accs if math.isfinite(a)]
        self._y_span = (100 * min(accs) - 1, 100 * max(accs) + 1) if accs else (0.0, 100.0)
        base.add_trace(
            go.Scatter(
                x=[None, None],
                y=list(self._y_span),
                mode="lines",
                name=CURRENT_SIZE,
                line={"dash": "dash", "color": "rgba(255,127,14,0.8)", "width": 1},
                hoverinfo="skip",
            )
        )
        base.add_trace(current_trace({"accuracy": None, "weight_bytes": 0, "label": CURRENT}, self._div))
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
        return {SearchSpace.param_name(u, k): dd.value for (u, k), dd in self.controls.items()}

    @property
    def plan(self) -> QuantPlan:
        """The QuantPlan the controls describe."""
        return self.space.plan_from_params(self.params())

    def set(self, unit: str, knob: str, value: Any) -> None:
        """Set one control (and recompute)."""
        key = (unit, knob)
        if key not in self.controls:
            self.space.unit(unit)  # raises with the list of units
            knobs = [k for (u, k) in self.controls if u == unit]
            raise PlanError(f"unit {unit!r} has no knob {knob!r}; its knobs: {knobs}")
        dd = self.controls[key]
        choices = [v for _, v in dd.options]
        if value not in choices:
            raise PlanError(f"{unit}/{knob}={value!r} is not a choice; valid: {choices}")
        with self._hold():
            dd.value = choices[choices.index(value)]
        self.source = "edited"
        self.update()

    def set_all(self, knob: str, value: Any) -> None:
        """Set ``knob`` to ``value`` on every unit that offers it (one recomputation)."""
        hits = [
            (u, k)
            for (u, k), dd in self.controls.items()
            if k == knob and value in [v for _, v in dd.options]
        ]
        if not hits:
            raise PlanError(f"no unit offers {knob}={value!r}")
        with self._hold():
            for key in hits:
                self.controls[key].value = value
        self.source = f"all units {knob}={_label(value)}"
        self.update()

    def set_plan(self, plan: QuantPlan, *, source: str = "plan") -> None:
        """Set every control from ``plan`` (raises when the plan leaves the space)."""
        params = self.space.params_from_plan(plan)
        with self._hold():
            for name, value in params.items():
                unit, _, knob = name.rpartition("/")
                self.controls[(unit, knob)].value = value
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

    # ------------------------------------------------------------------------------------------ compute
    def update(self) -> dict[str, Any]:
        """Recompute ``values`` for the current plan, refresh the summary, the greyed-out knobs and the plot."""
        plan = self.plan
        self._grey_out()
        cost = self.cost_model(plan)
        fp32 = self.fp32_cost
        pred, note = None, ""
        if self.predicted is None:
            note = "no predictor given"
        elif _compressed(plan):
            note = f"the predictor only knows quantization; {', '.join(_compressed(plan))} prune / factorise"
        else:
            try:
                pred = float(self.predicted(plan))
            except Exception as e:  # noqa: BLE001 - shown to the user instead of a traceback in a callback
                note = f"predictor failed: {e}"
        key = SearchSpace.plan_key(plan)
        measured = self.measured.get(key)
        v: dict[str, Any] = {
            "predicted_accuracy": pred,
            "predicted_note": note,
            "predicted_drop_pp": None
            if pred is None or self.fp32_accuracy is None
            else 100.0 * (self.fp32_accuracy - pred),
            "measured_accuracy": measured,
            "fp32_accuracy": self.fp32_accuracy,
            "size_bytes": int(cost.size_bytes),
            "size_fraction": cost.size_bytes / fp32.size_bytes if fp32.size_bytes else math.nan,
            "weight_bytes": int(cost.weight_bytes),
            "weight_fraction": cost.weight_bytes / fp32.weight_bytes if fp32.weight_bytes else math.nan,
            "bops": int(cost.bops),
            "bops_fraction": cost.bops / fp32.bops if fp32.bops else math.nan,
            "latency_ms": float(cost.latency_ms),
            "latency_source": getattr(self.cost_model, "latency_source", "unknown"),
            "avg_weight_bits": float(cost.avg_weight_bits),
            "avg_act_bits": float(cost.avg_act_bits),
            "covered_fraction": self._covered_fraction(plan),
            "plan_key": key,
            "source": self.source,
        }
        self.values = v
        self.summary.value = self._summary_html(v)
        self._update_figure(v)
        return v

    def _covered_fraction(self, plan: QuantPlan) -> float | None:
        """Share of the model's parameters that ``plan`` quantizes (None when the cost model cannot tell)."""
        model, costs = getattr(self.cost_model, "model", None), getattr(self.cost_model, "costs", None)
        if model is None or costs is None:
            return None
        from workbench.quant.spec import summarize

        try:
            return float(summarize(plan, model, costs, bn_pairs=[]).covered_fraction)  # coverage: no folding
        except Exception:  # noqa: BLE001 - an optional figure of the summary
            return None

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
        from workbench import tracking

        v = self.values
        with tracking.start_run(
            "explorer",
            run_name=run_name or "explorer",
            params={"source": self.source, "units": len(self.space.units), **self.params()},
            enabled=None if self.track else False,
        ) as run:
            run.log_plan(self.plan, "plan")
            run.log_metrics(
                {k: x for k, x in v.items() if isinstance(x, (int, float)) and not isinstance(x, bool)}
            )
            run.log_json(v, "explorer_values")
        self.last_run_id = run.run_id
        self.status.value = f"logged to MLflow run {run.run_id}" if run.run_id else "tracking is disabled"
        return run.run_id

    # ------------------------------------------------------------------------------------------ display
    def _summary_html(self, v: dict[str, Any]) -> str:
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
            ("plan", self.source),
        ]
        if v.get("covered_fraction") is not None:
            rows.insert(-1, ("covered", f"{_pct(v['covered_fraction'])} of the model's parameters quantized"))
        body = "".join(f"<tr><td style='padding-right:12px'>{k}</td><td>{x}</td></tr>" for k, x in rows)
        return f"<table>{body}</table>"

    def _update_figure(self, v: dict[str, Any]) -> None:
        acc = v["measured_accuracy"] if v["measured_accuracy"] is not None else v["predicted_accuracy"]
        x = v["weight_bytes"] / self._div
        fig = self.figure
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
            self.out.clear_output(wait=True)
            with self.out:
                display(fig)

    def _grey_out(self) -> None:
        for u in self.space.units:
            method_dd = self.controls.get((u.name, "method"))
            method = method_dd.value if method_dd is not None else u.choices.methods[0]
            used = METHOD_KNOBS.get(method, ())
            for k in KNOBS:
                dd = self.controls.get((u.name, k))
                if dd is None or k == "method":
                    continue
                dd.disabled = len(dd.options) == 1 or k not in used

    def _on_change(self, _change: Any) -> None:
        if self._holding:
            return
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


def _in_kernel() -> bool:
    """True inside a Jupyter kernel (outside one, display() into an Output widget would print the figure)."""
    from IPython import get_ipython

    return getattr(get_ipython(), "kernel", None) is not None


def _compressed(plan: QuantPlan) -> list[str]:
    """Layers of ``plan`` that prune or factorise (the predictor cannot score them)."""
    return [n for n, s in plan.items() if s.method in ("prune", "lowrank")]


def bit_width_explorer(space: SearchSpace, cost_model: Any, **kwargs: Any) -> BitWidthExplorer:
    """Build a :class:`BitWidthExplorer` (see there for the arguments)."""
    return BitWidthExplorer(space, cost_model, **kwargs)


__all__ = ["BitWidthExplorer", "bit_width_explorer", "figure_widget_available"]
