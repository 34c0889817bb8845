"""The deployed (metric, latency) front: plans deployed on this CPU's kernels, timed side by side and scored.

A latency-aware search prices its plans with an estimate; this part checks them on the machine. Each plan (a
search's front, see :func:`front_plans`) is deployed with :func:`~workbench.hardware.deploy.deploy` (the kernel
menu on), together with the uniform fp32 / bf16 / int8 deployments it should beat; all are timed round-robin on
one batch (:func:`~workbench.hardware.timing.time_side_by_side`, medians) and scored on a split with the task's
metric, each deployed model under its own quantized engine. :func:`front_verdicts` says for each uniform
deployment which searched plan dominates or matches it (metric at least as good, latency no more than ``tie``
times its own), or that none does.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd
import torch

from workbench.hardware.deploy.convert import deploy
from workbench.hardware.layer_links import deployed_kernels
from workbench.hardware.timing import cpu_name, time_side_by_side
from workbench.quant.spec import QuantPlan
from workbench.tasks.task import check_task

UNIFORM_PLANS: dict[str, str | None] = {
    "fp32": None,
    "bf16": "uniform:w16a16",
    "int8": "uniform:w8a8:per_channel",
}
SPLITS = ("calib", "val", "test")


@dataclass(frozen=True)
class DeployedFrontConfig:
    """Knobs of :func:`deploy_front`. ``uniform``: the uniform deployments to compare with (keys of
    :data:`UNIFORM_PLANS`); ``tie``: latencies within this factor count as equal (repeated medians of one
    deployment differ by about 3 % on a 2-core VM)."""

    batch_size: int = 32
    repeats: int = 11
    warmup: int = 2
    threads: int | None = None
    split: str = "test"
    uniform: tuple[str, ...] = ("fp32", "bf16", "int8")
    tie: float = 1.03

    def __post_init__(self) -> None:
        for name in ("batch_size", "repeats"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be an int >= 1, got {getattr(self, name)!r}")
        if not isinstance(self.warmup, int) or self.warmup < 0:
            raise ValueError(f"warmup must be an int >= 0, got {self.warmup!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ValueError(f"threads must be None or an int >= 1, got {self.threads!r}")
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {self.split!r}")
        unknown = [u for u in self.uniform if u not in UNIFORM_PLANS]
        if unknown:
            raise ValueError(f"unknown uniform deployments {unknown}; choose from {list(UNIFORM_PLANS)}")
        if not self.tie >= 1.0:
            raise ValueError(f"tie must be >= 1.0 (a latency factor), got {self.tie!r}")


@dataclass
class DeployedFront:
    """One row per deployed plan (``table``: plan, kind ``searched`` / ``uniform``, kernels, metric,
    measured_ms and estimated_ms per batch) and one per uniform deployment (``verdicts``)."""

    table: pd.DataFrame
    verdicts: pd.DataFrame
    metric_name: str
    config: DeployedFrontConfig
    cpu: str
    threads: int
    plans: dict[str, QuantPlan] = field(repr=False, default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric_name": self.metric_name,
            "config": asdict(self.config),
            "cpu": self.cpu,
            "threads": self.threads,
            "rows": self.table.to_dict("records"),
            "verdicts": self.verdicts.to_dict("records"),
            "plans": {k: p.to_dict() for k, p in self.plans.items()},
        }


def front_plans(result: Any, *, batch_size: int) -> tuple[dict[str, QuantPlan], dict[str, float]]:
    """A search result's front as ``searched 1..n`` (fastest estimate first) and each plan's estimated latency
    per batch of ``batch_size`` (ms; empty when the search had no latency objective)."""
    front = result.front
    if front is None or len(front) == 0:
        raise ValueError("the search result has an empty front: nothing to deploy")
    if "latency_ms" in front:
        front = front.sort_values("latency_ms", kind="stable")
    plans = {f"searched {i + 1}": QuantPlan.from_json(p) for i, p in enumerate(front["plan"])}
    estimated = {}
    if "latency_ms" in front:
        estimated = {k: float(ms) * batch_size for k, ms in zip(plans, front["latency_ms"], strict=True)}
    return plans, estimated


def deploy_front(
    task: Any,
    plans: Mapping[str, QuantPlan],
    *,
    estimated_ms: Mapping[str, float] | None = None,
    config: DeployedFrontConfig | None = None,
) -> DeployedFront:
    """Deploy ``plans`` and the uniform plans of ``config.uniform`` on ``task.model``, time them side by side on
    ``config.batch_size`` inputs and score them on ``config.split`` (see the module docstring). The task's model
    is not modified."""
    config = config or DeployedFrontConfig()
    task = check_task(task, need=("model", "calib_loader"))
    if not plans:
        raise ValueError("plans is empty: give the plans to deploy (e.g. front_plans(search_result))")
    clash = [k for k in plans if k.startswith("uniform ")]
    if clash:
        raise ValueError(f"plan names {clash} clash with the uniform deployments' names ('uniform ...')")
    model = task.model  # deploy() works on copies: the caller's model, its mode included, is left as it is
    for name, plan in plans.items():
        if not isinstance(plan, QuantPlan):
            raise TypeError(f"plan {name!r} must be a QuantPlan, got {type(plan).__name__}")
        plan.validate(model)
    uniform = {
        f"uniform {u}": QuantPlan({})
        if UNIFORM_PLANS[u] is None
        else QuantPlan.from_shorthand(UNIFORM_PLANS[u], model)
        for u in config.uniform
    }
    everything = {**uniform, **plans}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation, once per deployment
        deployed = {k: deploy(model, p, task.calib_loader) for k, p in everything.items()}
    stats = time_side_by_side(
        dict(deployed),  # each called under its own quantized engine
        task.example_input(config.batch_size),
        repeats=config.repeats,
        warmup=config.warmup,
        threads=config.threads,
    )
    estimated_ms = estimated_ms or {}
    rows = []
    for k, plan in everything.items():
        kernels = pd.Series(deployed_kernels(model, plan), dtype=object).value_counts().sort_index()
        rows.append({
            "plan": k,
            "kind": "uniform" if k in uniform else "searched",
            "kernels": ", ".join(f"{n} {c}" for n, c in kernels.items()),
            "metric": _score(task, deployed[k], config.split),
            "measured_ms": stats[k].median_ms,
            "estimated_ms": estimated_ms.get(k, float("nan")),
        })  # fmt: skip
    table = pd.DataFrame(rows)
    return DeployedFront(
        table=table,
        verdicts=front_verdicts(table, tie=config.tie),
        metric_name=str(task.metric_name),
        config=config,
        cpu=cpu_name(),
        threads=config.threads or torch.get_num_threads(),
        plans=dict(everything),
    )


def front_verdicts(table: pd.DataFrame, *, tie: float = 1.03) -> pd.DataFrame:
    """For each ``uniform`` row of ``table``: the fastest ``searched`` row with a metric at least as good and a
    latency no more than ``tie`` times the uniform one's (``by``; ``covered`` False and ``by`` None when none)."""
    searched = table[table["kind"] == "searched"]
    out = []
    for _, u in table[table["kind"] == "uniform"].iterrows():
        ok = searched[
            (searched["metric"] >= u["metric"]) & (searched["measured_ms"] <= u["measured_ms"] * tie)
        ]
        best = ok.sort_values("measured_ms").iloc[0] if len(ok) else None
        out.append({
            "uniform": u["plan"],
            "metric": u["metric"],
            "measured_ms": u["measured_ms"],
            "covered": best is not None,
            "by": None if best is None else best["plan"],
            "by_metric": None if best is None else best["metric"],
            "by_measured_ms": None if best is None else best["measured_ms"],
        })  # fmt: skip
    return pd.DataFrame(out)


def _score(task: Any, dep: Any, split: str) -> float:
    """The task's metric of a deployed model, under the quantized engine it was converted for."""
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = dep.engine
    try:
        return float(task.evaluate(dep.module, split))
    finally:
        torch.backends.quantized.engine = previous
