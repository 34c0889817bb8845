"""Dynamic against static precision: :func:`evaluate_runtime` serves clean and shifted data with each policy at each
budget and compares every run with the best static precision map of equal average cost."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from workbench import tracking
from workbench.devices import on_device
from workbench.runtime.analysis import _needed_rung
from workbench.runtime.config import SHIFTS, RuntimeBudgetError, RuntimeConfig, RuntimeInputError
from workbench.runtime.costs import MapCoster
from workbench.runtime.data import _inputs, _labels, shift_inputs
from workbench.runtime.engine import AdaptiveRuntime
from workbench.runtime.factory import RuntimeFactory
from workbench.runtime.probe import ProbeResult
from workbench.runtime.result import RuntimeEvaluation, ServeResult
from workbench.runtime.switchable import SwitchableModel
from workbench.tasks.task import TaskLike, check_task

StaticScore = tuple[float, float, dict[str, int]]
"""A static map's ``(cost, accuracy, map)`` on one data variant."""


def static_candidates(
    smodel: SwitchableModel, coster: MapCoster, probe: ProbeResult, kind: str, *, max_allocations: int = 40
) -> list[dict[str, int]]:
    """Static maps: the ladder, the uniform maps, and HAWQ-style allocations (least summed per-group downstream
    KL at a cost) - enumerated exactly over the groups' bit choices, Pareto-pruned, ``max_allocations`` of them
    spread evenly along the cost axis."""
    kl = {(r.group, r.w_bits): r.downstream_kl for r in probe.table.itertuples()}
    groups = smodel.group_names
    maps = [dict(m) for m in probe.ladder]
    maps += [{g: b for g in groups} for b in smodel.w_bits]
    combos = list(itertools.product(smodel.w_bits, repeat=len(groups)))
    if len(combos) <= 20000:
        pts = []
        for combo in combos:
            m = dict(zip(groups, combo, strict=True))
            pts.append((coster.value(m, kind), sum(kl[(g, b)] for g, b in m.items()), m))
        pts.sort(key=lambda t: (t[0], t[1]))
        best = math.inf
        front = []
        for _cost, err, m in pts:
            if err < best - 1e-12:
                best = err
                front.append(m)
        if len(front) > max_allocations:
            pick = np.unique(np.linspace(0, len(front) - 1, max_allocations).round().astype(int))
            front = [front[i] for i in pick]
        maps += front
    seen, out = set(), []
    for m in maps:
        key = tuple(m[g] for g in groups)
        if key not in seen:
            seen.add(key)
            out.append(m)
    return out


def evaluate_runtime(
    task: TaskLike,
    *,
    budgets: Sequence[float] = (0.4, 0.5, 0.6),
    policies: Sequence[str] = ("rule", "learned", "cascade"),
    shifts: Sequence[str] = SHIFTS,
    config: RuntimeConfig | None = None,
    profile: Any = None,
    split: str = "test",
    oracle: bool = True,
    serve_batch: int = 64,
    progress: bool = False,
    device: str | torch.device | None = None,
    track: bool | None = None,
) -> RuntimeEvaluation:
    """Accuracy and average cost per input of dynamic precision (each policy) against the best static precision
    map of equal or lower average cost, for each budget and data variant.

    ``budgets`` are fractions of the all-``max(w_bits)`` map's cost. The static comparison is optimistic for
    static: among all static candidates (:func:`static_candidates`) the one with the best accuracy **on the
    evaluated data** within the dynamic run's average cost. Also reported: the cheapest static map reaching the
    dynamic accuracy, and the BOPs saving of dynamic against it. The data is served as a stream of batches of
    ``serve_batch`` inputs. With ``oracle`` a row per data variant gives the headroom: every input on the cheapest
    rung from which all dearer rungs keep the FP32 answer (it knows each answer, so no runnable policy matches
    its cost; its accuracy is that of keeping the FP32 answers).

    ``device``: where the switchable model runs (``cpu``, ``cuda``, ``cuda:N``; None: where ``task.model``
    is); the model is copied there, the data stays on the CPU and is moved batch by batch, logits come back to
    the CPU. Sampling (probe subset, noise shift) uses CPU generators, so every device sees the same inputs. A
    device this machine lacks raises :class:`workbench.devices.DeviceError` before any work.

    ``track``: log an MLflow run of stage ``"runtime"`` (:func:`_log_evaluation`; None: unless
    ``WORKBENCH_TRACKING=0``).
    """
    from tqdm.auto import tqdm

    task = on_device(check_task(task, need=("model", "calib_loader"), error=RuntimeInputError), device)
    cfg = config or RuntimeConfig()
    parts = RuntimeFactory.build(task.model, task.calib_loader, config=cfg, profile=profile)
    top = parts.top_cost
    statics = static_candidates(parts.smodel, parts.coster, parts.probe, cfg.budget_kind)
    loader = task.loader(split)
    x_test, y_test = _inputs(loader), _labels(loader)
    rows, static_rows = [], []
    runtimes: dict[tuple[str, float], Any] = {}
    bar = tqdm(
        total=len(shifts) * len(budgets) * len(policies), desc="runtime evaluation", disable=not progress
    )
    for shift in shifts:
        v = _variant(parts, statics, shift, x_test, y_test, static_rows)
        if oracle:
            rows.append(_oracle_row(parts, v))
        for frac in budgets:
            budget = frac * top
            for pol in policies:
                rows.append(_policy_row(parts, runtimes, v, pol, frac, budget, serve_batch))
                bar.update(1)
    bar.close()
    ev = RuntimeEvaluation(
        table=pd.DataFrame(rows),
        static_maps=pd.DataFrame(static_rows),
        probe=parts.probe,
        info={
            "budget_kind": cfg.budget_kind,
            "top_cost": top,
            "ladder": [_map_str(m) for m in parts.probe.ladder],
        },
    )
    params = {"budgets": list(budgets), "policies": list(policies), "shifts": list(shifts), "split": split}
    _log_evaluation(ev, task.name, {**params, **asdict(cfg)}, track)
    return ev


def _log_evaluation(
    ev: RuntimeEvaluation, name: str, params: dict[str, Any], track: bool | None
) -> str | None:
    """The run of :func:`evaluate_runtime`: stage ``"runtime"``, named ``runtime-<task name>``, with the
    budgets, policies, data variants, split and config as params, the metrics and tables of ``ev``
    (:meth:`RuntimeEvaluation.to_metrics`, :meth:`RuntimeEvaluation.tables`) and ``runtime_info.json``."""
    return tracking.log_stage(
        "runtime",
        ev,
        params={"model": name, **params},
        json={"runtime_info": ev.info},
        run_name=f"runtime-{name}",
        enabled=track,
    )


@dataclass
class _Variant:
    """One data variant under evaluation: its inputs and labels, their FP32 logits and accuracy, and each static
    map's ``(cost, accuracy, map)`` on it."""

    shift: str
    xs: torch.Tensor
    y: torch.Tensor
    ref_logits: torch.Tensor
    fp32_acc: float
    static_acc: list[StaticScore]


def _variant(
    parts: RuntimeFactory,
    statics: list[dict[str, int]],
    shift: str,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    static_rows: list[dict[str, Any]],
) -> _Variant:
    """The ``shift`` variant of the test data with every static map scored on it (a row each appended to
    ``static_rows``)."""
    cfg, smodel, coster = parts.config, parts.smodel, parts.coster
    xs = shift_inputs(x_test, shift, seed=cfg.seed)
    static_acc = []
    for m in statics:
        pred = smodel.run(xs, m).argmax(1)
        acc = float((pred == y_test).float().mean())
        c = coster(m)
        static_acc.append((coster.value(m, cfg.budget_kind), acc, m))
        static_rows.append(
            {
                "data": shift,
                "map": _map_str(m),
                "cost": static_acc[-1][0],
                "bops": c.bops,
                "avg_bits": c.avg_bits,
                "accuracy": acc,
            }  # fmt: skip
        )
    ref_logits = smodel.run(xs, {g: 32 for g in smodel.group_names})
    fp32_acc = float((ref_logits.argmax(1) == y_test).float().mean())
    return _Variant(shift, xs, y_test, ref_logits, fp32_acc, static_acc)


def _cheapest_reaching(static_acc: list[StaticScore], acc: float) -> StaticScore | None:
    """The cheapest static map whose accuracy reaches ``acc`` (None when none does)."""
    reach = [t for t in static_acc if t[1] >= acc - 1e-12]
    return min(reach, key=lambda t: t[0]) if reach else None


def _oracle_row(parts: RuntimeFactory, v: _Variant) -> dict[str, Any]:
    """The headroom: each input on the cheapest rung from which every dearer rung keeps the FP32 answer."""
    probe, coster = parts.probe, parts.coster
    rung_logits = [parts.smodel.run(v.xs, m) for m in probe.ladder]
    need = _needed_rung(rung_logits, v.ref_logits)
    pred = torch.stack([rung_logits[r][i].argmax() for i, r in enumerate(need)])
    costs = np.array([coster.value(m, parts.config.budget_kind) for m in probe.ladder])[need]
    acc_o = float((pred == v.y).float().mean())
    cheapest = _cheapest_reaching(v.static_acc, acc_o)
    return {
        "data": v.shift,
        "budget_fraction": math.nan,
        "budget": math.nan,
        "policy": "oracle",
        "accuracy": acc_o,
        "avg_cost": float(costs.mean()),
        "avg_bops": float(np.mean([coster(probe.ladder[r]).bops for r in need])),
        "avg_weight_bits": float(np.mean([coster(probe.ladder[r]).avg_bits for r in need])),
        "overhead_fraction": math.nan,
        "overrides": 0,
        "static_accuracy": math.nan,
        "static_cost": math.nan,
        "static_map": "",
        "static_cost_at_equal_accuracy": cheapest[0] if cheapest else math.nan,
        "cost_saving_at_equal_accuracy": 1 - float(costs.mean()) / cheapest[0] if cheapest else math.nan,
        "fp32_accuracy": v.fp32_acc,
        "note": "upper bound: knows per input which rung keeps the FP32 answer (not a runnable policy)",
    }


def _policy_row(
    parts: RuntimeFactory,
    runtimes: dict[tuple[str, float], Any],
    v: _Variant,
    pol: str,
    frac: float,
    budget: float,
    serve_batch: int,
) -> dict[str, Any]:
    """The row of ``pol`` at ``budget`` on ``v``: the runtime (built once per policy and budget and kept in
    ``runtimes``, or the :class:`RuntimeBudgetError` it raised) serves the variant as a stream."""
    key = (pol, budget)
    if key not in runtimes:
        try:
            runtimes[key] = parts.runtime(pol, budget)
        except RuntimeBudgetError as e:
            runtimes[key] = e
    if isinstance(runtimes[key], RuntimeBudgetError):
        return {"data": v.shift, "budget_fraction": frac, "budget": budget, "policy": pol,
                "accuracy": math.nan, "note": str(runtimes[key])}  # fmt: skip
    rt = runtimes[key]
    rt.manager.reset()
    res = _serve_stream(rt, v.xs, serve_batch)
    return _dynamic_row(parts.coster, rt, res, v, pol, frac, budget)


def _dynamic_row(
    coster: MapCoster,
    rt: AdaptiveRuntime,
    res: ServeResult,
    v: _Variant,
    pol: str,
    frac: float,
    budget: float,
) -> dict[str, Any]:
    """A served run's accuracy and average cost against the best static map within that cost and the cheapest
    static map reaching its accuracy."""
    acc = float((res.logits.argmax(1) == v.y).float().mean())
    rung_bops = np.array([coster(m).bops for m in rt.ladder])
    rung_bits = np.array([coster(m).avg_bits for m in rt.ladder])
    served = [rs for rs in res.runs if rs]  # rejected inputs (none here) ran nothing
    bops = float(np.mean([sum(rung_bops[r] for r in rs) for rs in served]))
    bits = float(np.mean([rung_bits[rs[-1]] for rs in served]))
    avg_cost = float(res.cost[res.rung >= 0].mean())
    within = [t for t in v.static_acc if t[0] <= avg_cost * (1 + 1e-9)]
    best_static = max(within, key=lambda t: (t[1], -t[0])) if within else None
    cheapest_equal = _cheapest_reaching(v.static_acc, acc)
    return {
        "data": v.shift,
        "budget_fraction": frac,
        "budget": budget,
        "policy": pol,
        "accuracy": acc,
        "avg_cost": avg_cost,
        "avg_bops": bops,
        "avg_weight_bits": bits,
        "overhead_fraction": res.overhead_fraction,
        "overrides": rt.manager.overrides,
        "static_accuracy": best_static[1] if best_static else math.nan,
        "static_cost": best_static[0] if best_static else math.nan,
        "static_map": _map_str(best_static[2]) if best_static else "",
        "static_cost_at_equal_accuracy": cheapest_equal[0] if cheapest_equal else math.nan,
        "cost_saving_at_equal_accuracy": (1 - avg_cost / cheapest_equal[0] if cheapest_equal else math.nan),
        "fp32_accuracy": v.fp32_acc,
        "note": "",
    }


def _serve_stream(rt: AdaptiveRuntime, x: torch.Tensor, batch: int) -> ServeResult:
    """Serve ``x`` as a stream of batches of ``batch`` inputs (the manager sees them in order) and join the
    results."""
    parts = [rt.serve(x[i : i + batch]) for i in range(0, x.shape[0], batch)]
    errors = {}
    for k, part in enumerate(parts):
        errors.update({k * batch + i: e for i, e in part.errors.items()})
    return ServeResult(
        logits=torch.cat([p.logits for p in parts]),
        rung=np.concatenate([p.rung for p in parts]),
        cost=np.concatenate([p.cost for p in parts]),
        runs=[r for p in parts for r in p.runs],
        errors=errors,
        inference_s=sum(p.inference_s for p in parts),
        overhead_s=sum(p.overhead_s for p in parts),
    )


def _map_str(m: Mapping[str, int]) -> str:
    return " ".join(f"{g}:{b}" for g, b in m.items())
