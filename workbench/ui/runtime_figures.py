"""Plotly figures and a widget panel for runtime adaptation (:mod:`workbench.runtime`): dynamic precision against
static maps, the rungs inputs ended on, the per-input choices, and a live budget explorer.

Figure functions return figures; nothing is shown. Accuracy is drawn in percent, cost in BOPs (bit operations:
MACs x weight bits x activation bits) per input, weight bits MAC-weighted.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import ipywidgets as W
import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from IPython.display import display
from plotly.subplots import make_subplots

from workbench.ui.explorer import _in_kernel, figure_widget_available
from workbench.ui.figures import _need

if TYPE_CHECKING:
    from workbench.runtime import AdaptiveRuntime, ServeResult

POLICY_COLORS: dict[str, str] = {
    "static": "#7f7f7f",
    "rule": "#1f77b4",
    "learned": "#2ca02c",
    "cascade": "#d62728",
    "oracle": "#000000",
}
ORACLE = "oracle"  # evaluate_runtime's upper-bound row (knows per input which rung keeps the FP32 answer)
STATIC_COLOR, FP32_COLOR = "#ff7f0e", "#7f7f7f"
OTHER_COLORS = ("#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
BOPS_AXIS = "average BOPs per input (bit operations)"
ACC_AXIS = "accuracy (%)"


def _color(policy: str, i: int) -> str:
    return POLICY_COLORS.get(policy, OTHER_COLORS[i % len(OTHER_COLORS)])


def _map_str(m: dict[str, int]) -> str:
    return " ".join(f"{g}:{b}" for g, b in m.items())


def _rows(table: pd.DataFrame, data: str) -> pd.DataFrame:
    """The feasible rows (finite accuracy) of ``data``; a clear error when ``data`` is not in the table."""
    _need(table, ["data", "policy", "accuracy"])
    if data not in set(table["data"]):
        raise ValueError(f"data={data!r} not in the table; it has {sorted(set(table['data']))}")
    rows = table[table["data"] == data]
    return rows[np.isfinite(rows["accuracy"].to_numpy(dtype=float))]


def _policies(rows: pd.DataFrame) -> list[str]:
    """The policies of ``rows`` in table order, the oracle (an upper bound, not a policy) last."""
    pols = list(dict.fromkeys(rows["policy"]))
    return [p for p in pols if p != ORACLE] + [p for p in pols if p == ORACLE]


def _marker(pol: str, i: int, size: int, symbol: str = "circle") -> dict[str, Any]:
    if pol == ORACLE:
        return {"size": size + 4, "symbol": "star", "color": _color(pol, i)}
    return {"size": size, "symbol": symbol, "color": _color(pol, i)}


def _trace_name(pol: str, prefix: str = "") -> str:
    return "oracle (upper bound)" if pol == ORACLE else f"{prefix}{pol}"


def _cost_is_bops(rows: pd.DataFrame) -> bool:
    """Whether the budget kind of ``rows`` is BOPs (then avg_cost == avg_bops for every row)."""
    if rows.empty:
        return True
    return bool(np.allclose(rows["avg_cost"].to_numpy(float), rows["avg_bops"].to_numpy(float), rtol=1e-6))


def runtime_tradeoff_figure(
    table: pd.DataFrame, *, data: str = "clean", title: str | None = None
) -> go.Figure:
    """Accuracy against average BOPs per input of each dynamic policy (one marker trace per policy, points joined
    in budget order), and the best static map within each dynamic run's cost (one more trace).

    ``table``: :attr:`workbench.runtime.RuntimeEvaluation.table`; rows of ``data`` with NaN accuracy (budgets
    below what the policy can run) are left out. The static point of a row is ``(static_cost, static_accuracy)``:
    the static map with the best accuracy on the same data among those costing at most the dynamic run's average
    (chosen on the evaluated data, so optimistic for static). When the budget kind is not BOPs, both axes use the
    budget kind's cost (``avg_cost``) instead. FP32 accuracy is a dashed line.
    """
    _need(
        table,
        [
            "data",
            "budget_fraction",
            "policy",
            "accuracy",
            "avg_cost",
            "avg_bops",
            "static_cost",
            "static_accuracy",
        ],
    )
    rows = _rows(table, data)
    bops = _cost_is_bops(rows)
    xcol = "avg_bops" if bops else "avg_cost"
    fig = go.Figure()
    for i, pol in enumerate(_policies(rows)):
        r = rows[rows["policy"] == pol].sort_values("budget_fraction")
        custom = np.stack(
            [
                r["budget_fraction"].to_numpy(float),
                r.get("avg_weight_bits", pd.Series(np.nan, index=r.index)).to_numpy(float),
                r.get("overhead_fraction", pd.Series(np.nan, index=r.index)).to_numpy(float),
                r.get("overrides", pd.Series(np.nan, index=r.index)).to_numpy(float),
            ],
            1,
        )
        fig.add_trace(
            go.Scatter(
                x=r[xcol].to_numpy(float),
                y=100 * r["accuracy"].to_numpy(float),
                mode="markers" if pol == ORACLE else "lines+markers",
                name=_trace_name(str(pol)),
                marker=_marker(str(pol), i, 10),
                line={"width": 1, "dash": "dot"},
                customdata=custom,
                hovertemplate=(
                    (
                        "<b>oracle</b>: each input on the cheapest rung keeping the FP32 answer (upper bound)"
                        if pol == ORACLE
                        else f"<b>{pol}</b> (budget %{{customdata[0]:.2f}} of 8-bit)"
                    )
                    + "<br>accuracy %{y:.2f} %<br>cost %{x:.4g}<br>avg weight bits %{customdata[1]:.2f}"
                    + (
                        ""
                        if pol == ORACLE
                        else "<br>overhead %{customdata[2]:.1%} of inference"
                        "<br>manager overrides %{customdata[3]:.0f}"
                    )
                    + "<extra></extra>"
                ),
            )
        )
    st = rows[np.isfinite(rows["static_accuracy"].to_numpy(float))]
    fig.add_trace(
        go.Scatter(
            x=st["static_cost"].to_numpy(float),
            y=100 * st["static_accuracy"].to_numpy(float),
            mode="markers",
            name="best static map within the same cost",
            marker={"size": 12, "color": "rgba(0,0,0,0)", "line": {"color": STATIC_COLOR, "width": 2}},
            customdata=list(
                zip(
                    st["policy"].astype(str),
                    st["budget_fraction"].astype(float),
                    st.get("static_map", pd.Series("", index=st.index)).astype(str),
                    strict=True,
                )
            ),
            hovertemplate=(
                "<b>static</b> vs %{customdata[0]} at budget %{customdata[1]:.2f}<br>%{customdata[2]}"
                "<br>accuracy %{y:.2f} %<br>cost %{x:.4g}<extra></extra>"
            ),
        )
    )
    if "fp32_accuracy" in rows.columns and len(rows):
        fp32 = 100 * float(rows["fp32_accuracy"].iloc[0])
        fig.add_hline(y=fp32, line_dash="dash", line_color=FP32_COLOR, annotation_text=f"FP32 {fp32:.2f} %")
    fig.update_layout(
        title=title or f"Dynamic precision against the best static map of equal cost ({data} data)",
        xaxis_title=BOPS_AXIS if bops else "average cost per input (budget units)",
        yaxis_title=ACC_AXIS,
        height=460,
        legend={"title": "policy"},
    )
    return fig


def static_front_figure(
    static_maps: pd.DataFrame, table: pd.DataFrame, *, data: str = "clean", title: str | None = None
) -> go.Figure:
    """Every static map considered (:attr:`RuntimeEvaluation.static_maps`: accuracy against BOPs per input) with
    their Pareto front, and the dynamic runs of ``table`` on top (one trace per policy).

    Traces: static maps, static Pareto front, then one per policy of the feasible rows of ``data``.
    """
    _need(static_maps, ["data", "map", "bops", "avg_bits", "accuracy"])
    _need(table, ["data", "budget_fraction", "policy", "accuracy", "avg_bops"])
    if data not in set(static_maps["data"]):
        raise ValueError(
            f"data={data!r} not in the static maps; they have {sorted(set(static_maps['data']))}"
        )
    sm = static_maps[static_maps["data"] == data].sort_values(["bops", "accuracy"], ascending=[True, False])
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=sm["bops"].to_numpy(float),
            y=100 * sm["accuracy"].to_numpy(float),
            mode="markers",
            name="static maps",
            marker={"size": 7, "color": "rgba(127,127,127,0.55)"},
            customdata=list(zip(sm["map"].astype(str), sm["avg_bits"].astype(float), strict=True)),
            hovertemplate=(
                "<b>static</b> %{customdata[0]}<br>accuracy %{y:.2f} %<br>BOPs %{x:.4g}"
                "<br>avg weight bits %{customdata[1]:.2f}<extra></extra>"
            ),
        )
    )
    best, fx, fy = -math.inf, [], []
    for b, a in zip(sm["bops"].to_numpy(float), sm["accuracy"].to_numpy(float), strict=True):
        if a > best:
            best = a
            fx.append(b)
            fy.append(100 * a)
    fig.add_trace(
        go.Scatter(
            x=fx,
            y=fy,
            mode="lines",
            name="static Pareto front",
            line={"color": STATIC_COLOR, "width": 2, "shape": "hv"},
            hoverinfo="skip",
        )
    )
    rows = _rows(table, data)
    for i, pol in enumerate(_policies(rows)):
        r = rows[rows["policy"] == pol].sort_values("budget_fraction")
        fig.add_trace(
            go.Scatter(
                x=r["avg_bops"].to_numpy(float),
                y=100 * r["accuracy"].to_numpy(float),
                mode="markers",
                name=_trace_name(str(pol), "dynamic: "),
                marker=_marker(str(pol), i, 12, "diamond"),
                customdata=r["budget_fraction"].to_numpy(float),
                hovertemplate=(
                    (
                        "<b>oracle</b> (upper bound)"
                        if pol == ORACLE
                        else f"<b>{pol}</b> (budget %{{customdata:.2f}} of 8-bit)"
                    )
                    + "<br>accuracy %{y:.2f} %<br>BOPs %{x:.4g}<extra></extra>"
                ),
            )
        )
    fig.update_layout(
        title=title or f"Static precision maps and dynamic precision ({data} data)",
        xaxis_title="BOPs per input (bit operations)",
        yaxis_title=ACC_AXIS,
        height=460,
    )
    return fig


def _rung_counts(result: ServeResult, n_rungs: int) -> np.ndarray:
    rung = np.asarray(result.rung, dtype=int)
    return np.bincount(rung[rung >= 0], minlength=n_rungs)[:n_rungs]


def _rung_bits(runtime: AdaptiveRuntime) -> np.ndarray:
    return np.array([runtime.coster(m).avg_bits for m in runtime.ladder], dtype=float)


def rung_histogram_figure(
    result: ServeResult, runtime: AdaptiveRuntime, *, title: str | None = None
) -> go.Figure:
    """How many inputs of ``result`` ended on each rung of ``runtime.ladder`` (rung 0: the cheapest map). Hover
    shows the rung's precision map, its MAC-weighted average weight bits and its cost; rejected inputs (rung -1)
    are counted in the title. The probe and escalation rungs are marked when the policy runs them."""
    k = len(runtime.ladder)
    counts = _rung_counts(result, k)
    maps = [_map_str(m) for m in runtime.ladder]
    bits = _rung_bits(runtime)
    costs = np.asarray(runtime.rung_costs, dtype=float)
    rejected = int(np.sum(np.asarray(result.rung) < 0))
    fig = go.Figure()
    fig.add_trace(
        go.Bar(
            x=list(range(k)),
            y=counts,
            name="inputs",
            marker_color="#1f77b4",
            customdata=list(zip(maps, bits.tolist(), costs.tolist(), strict=True)),
            hovertemplate=(
                "rung %{x}: %{y} inputs<br>%{customdata[0]}<br>avg weight bits %{customdata[1]:.2f}"
                "<br>cost %{customdata[2]:.4g}<extra></extra>"
            ),
        )
    )
    if getattr(runtime.policy, "uses_probe_rung", False):
        fig.add_vline(x=runtime.probe_rung, line_dash="dot", line_color="#2ca02c", annotation_text="probe")
        if runtime.escalation_rung != runtime.probe_rung:
            fig.add_vline(
                x=runtime.escalation_rung, line_dash="dot", line_color="#d62728", annotation_text="escalation"
            )
    name = getattr(runtime.policy, "name", type(runtime.policy).__name__)
    extra = f", {rejected} rejected" if rejected else ""
    fig.update_layout(
        title=title or f"Rung each input ended on ({name} policy, {int(counts.sum())} served{extra})",
        xaxis_title="rung of the ladder (0 = cheapest map)",
        yaxis_title="inputs (count)",
        xaxis={"range": [-0.5, k - 0.5], "dtick": 1},
        height=380,
        bargap=0.15,
    )
    return fig


def per_input_figure(
    x: torch.Tensor,
    result: ServeResult,
    runtime: AdaptiveRuntime,
    *,
    n: int = 24,
    labels: Sequence[int] | torch.Tensor | np.ndarray | None = None,
    cols: int = 8,
    title: str | None = None,
) -> go.Figure:
    """The first ``n`` inputs (channel 0 of ``x[i]``) in a grid, each titled with the rung it ended on, that
    rung's MAC-weighted average weight bits and the predicted (and, with ``labels``, the true) class; rejected
    inputs (rung -1) are titled "rejected"."""
    n = int(min(n, x.shape[0], len(result.rung)))
    if n < 1:
        raise ValueError("per_input_figure needs at least one input")
    cols = max(1, min(cols, n))
    rows = math.ceil(n / cols)
    bits = _rung_bits(runtime)
    pred = result.logits.argmax(1).tolist() if result.logits.numel() else [None] * len(result.rung)
    true = (
        None
        if labels is None
        else [int(v) for v in (labels.tolist() if hasattr(labels, "tolist") else labels)]
    )
    titles = []
    for i in range(n):
        r = int(result.rung[i])
        if r < 0:
            titles.append("rejected")
            continue
        t = f"rung {r} · {bits[r]:.2f} b<br>pred {pred[i]}"
        if true is not None:
            t += f" / true {true[i]}" + ("" if pred[i] == true[i] else " ✗")
        titles.append(t)
    fig = make_subplots(
        rows=rows, cols=cols, subplot_titles=titles, horizontal_spacing=0.01, vertical_spacing=0.1
    )
    for i in range(n):
        img = x[i]
        while img.dim() > 2:  # channel 0
            img = img[0]
        z = img.detach().float().cpu().numpy()
        fig.add_trace(
            go.Heatmap(
                z=z,
                colorscale="gray",
                showscale=False,
                hovertemplate=f"input {i}<br>row %{{y}}, col %{{x}}: %{{z:.3f}}<extra></extra>",
            ),
            row=i // cols + 1,
            col=i % cols + 1,
        )
    fig.update_xaxes(showticklabels=False, constrain="domain")
    fig.update_yaxes(showticklabels=False, autorange="reversed", constrain="domain")
    for j in range(1, n + 1):  # each image keeps its own aspect ratio
        fig.update_yaxes(
            scaleanchor=f"x{'' if j == 1 else j}", row=(j - 1) // cols + 1, col=(j - 1) % cols + 1
        )
    fig.update_annotations(font_size=10)
    fig.update_layout(
        title=title or "Per-input precision: rung, avg weight bits (b) and prediction",
        height=150 * rows + 80,
        margin={"t": 90, "l": 20, "r": 20, "b": 20},
    )
    return fig


# ============================================================================================ budget explorer


class BudgetExplorer:
    """A live budget panel: a slider (budget as a fraction of the all-8-bit map's cost, from the smallest
    feasible fraction to 1.0) and a policy dropdown; every change builds an :class:`AdaptiveRuntime` (sharing one
    switchable model, probe result and calibration logits, so a change takes about a second), serves the
    evaluation inputs and updates the summary label and the rung histogram.

    ``.widget`` is the box to display; ``.values`` the latest numbers (``accuracy``, ``avg_bops``,
    ``avg_weight_bits``, ``overhead_fraction``, ``overrides``, ``avg_cost``, ``budget``); ``.last_result`` the
    latest :class:`ServeResult` and ``.runtime`` its runtime (None after a budget the policy cannot meet: the
    label then shows the :class:`RuntimeBudgetError` message and ``.error`` holds it).
    """

    def __init__(
        self,
        task: Any,
        *,
        x_eval: torch.Tensor,
        y_eval: torch.Tensor | np.ndarray | Sequence[int],
        config: Any = None,
        policy: str = "rule",
        fraction: float = 0.45,
        profile: Any = None,
    ) -> None:
        from workbench.runtime import (
            POLICIES,
            MapCoster,
            ProbeEngine,
            RuntimeConfig,
            SwitchableModel,
            _inputs,
        )

        cfg = config or RuntimeConfig()
        if policy not in POLICIES:
            raise ValueError(f"policy={policy!r} not valid; choose one of {POLICIES}")
        self.task, self.config, self.profile = task, cfg, profile
        self.x_eval = _inputs(x_eval)
        self.y_eval = torch.as_tensor(np.asarray(y_eval)).long().flatten()
        if self.y_eval.shape[0] != self.x_eval.shape[0]:
            raise ValueError(f"{self.x_eval.shape[0]} evaluation inputs but {self.y_eval.shape[0]} labels")
        self.x_cal = x_cal = _inputs(task.calib_loader)
        self.smodel = SwitchableModel(task.model, w_bits=cfg.w_bits, a_bits=cfg.a_bits, groups=cfg.groups)
        self.coster = MapCoster(task.model, self.smodel, x_cal[:1], profile)
        gen = torch.Generator().manual_seed(cfg.seed)
        perm = torch.randperm(x_cal.shape[0], generator=gen)
        self.probe = ProbeEngine(self.smodel, self.coster).run(
            x_cal[perm[: cfg.probe_samples]], kind=cfg.budget_kind
        )
        groups = self.smodel.group_names
        self.calib_logits = (
            self.smodel.run(x_cal, {g: 32 for g in groups}),
            [self.smodel.run(x_cal, m) for m in self.probe.ladder],
        )
        self.top_cost = self.coster.value({g: max(cfg.w_bits) for g in groups}, cfg.budget_kind)
        rung_costs = [self.coster.value(m, cfg.budget_kind) for m in self.probe.ladder]
        self.min_fraction = float(min(rung_costs) / self.top_cost)
        self.runtime: AdaptiveRuntime | None = None
        self.last_result: ServeResult | None = None
        self.error: str | None = None
        self.values: dict[str, float] = {}

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
            options=list(POLICIES[1:]) + [POLICIES[0]], value=policy, description="policy"
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
        self.update()

    def _on_change(self, change: dict) -> None:
        self.update()

    @property
    def budget(self) -> float:
        return float(self.slider.value) * self.top_cost

    def update(self) -> dict[str, float]:
        """Rebuild the runtime for the current slider and policy, serve the evaluation inputs, refresh the
        label and the histogram; returns :attr:`values`."""
        from workbench.runtime import AdaptiveRuntime, RuntimeBudgetError

        pol, frac = self.policy.value, float(self.slider.value)
        try:
            rt = AdaptiveRuntime(
                self.task.model,
                pol,
                frac * self.top_cost,
                self.profile,
                calib=self.x_cal,
                config=self.config,
                smodel=self.smodel,
                probe=self.probe,
                calib_logits=self.calib_logits,
            )
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


__all__ = [
    "BudgetExplorer",
    "per_input_figure",
    "rung_histogram_figure",
    "runtime_tradeoff_figure",
    "static_front_figure",
]
