"""A ladder of QuantPlans on real kernels: each plan deployed once, switched per input or micro-batch.

The deployment itself goes through one small adapter, a :class:`Deployer`: a callable ``(model, plan, calib) ->
Deployment`` (what runs the plan, which kernel precision each layer got, notes). :func:`torch_ao_deployer` wraps
:func:`workbench.hardware.deploy.deploy` (torch.ao int8 static, bf16, fp32 with baked weights); a kernel menu plugs
in as another deployer. A rung whose plan cannot deploy falls back with the reason named on the rung
(``on_fail="simulate"``: the plan's fake-quant simulation on float kernels, the same numerics; ``"drop"``: the
rung is left out, the reason kept in :attr:`DeployedLadder.dropped`; ``"raise"``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch
from torch import nn

from workbench.quant.introspect import layer_costs
from workbench.quant.spec import PlanError, QuantPlan, summarize
from workbench.quant.swap import quantize_model
from workbench.runtime.data import _inputs

ON_FAIL: tuple[str, ...] = ("simulate", "drop", "raise")


@dataclass
class Deployment:
    """One plan on kernels: ``run`` maps a float batch to outputs; ``kernels``: layer count per kernel precision
    (``{"int8": 14, "fp32": 2}``); ``notes``: what the deployer said (fallbacks, warnings)."""

    run: Callable[[torch.Tensor], torch.Tensor]
    kernels: dict[str, int]
    notes: list[str] = field(default_factory=list)


class Deployer(Protocol):
    """The adapter between the runtime and a kernel backend: deploys ``plan`` of ``model`` once."""

    def __call__(self, model: nn.Module, plan: QuantPlan, calib: Any) -> Deployment: ...


def torch_ao_deployer(*, engine: str = "auto", max_calib_batches: int | None = 8) -> Deployer:
    """A :class:`Deployer` over :func:`workbench.hardware.deploy.deploy` (this CPU's torch.ao int8 static, bf16
    and fp32 kernels); dispatch warnings (a kernel the profile lacks) become the deployment's notes."""

    def deploy_plan(model: nn.Module, plan: QuantPlan, calib: Any) -> Deployment:
        from workbench.hardware.deploy import deploy

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            dep = deploy(model, plan, calib, engine=engine, max_calib_batches=max_calib_batches)
        notes = [*dep.notes, *(str(w.message) for w in caught)]
        return Deployment(dep, dep.precision_counts(), notes)

    return deploy_plan


def simulated_deployer(model: nn.Module, plan: QuantPlan, calib: Any) -> Deployment:
    """The plan's fake-quant simulation (``quantize_model``) on float32 kernels: the fallback of a rung."""
    batches = [(calib,)] if isinstance(calib, torch.Tensor) else calib
    sim = quantize_model(model, plan, batches).eval()
    return Deployment(sim, {"fp32 (simulated)": len(plan)})


@dataclass(frozen=True)
class Rung:
    """One deployed plan of the ladder. ``fallback``: why it does not run on the deployer's kernels (None: it
    does); ``bops`` / ``avg_bits``: its cost per input (the budget kinds of :mod:`workbench.runtime`)."""

    name: str
    plan: QuantPlan
    deployment: Deployment
    bops: float
    avg_bits: float
    fallback: str | None = None


class DeployedLadder:
    """QuantPlans deployed once each, cheapest first (the caller's order), run per input or micro-batch.

    ``model``: the float model (never modified). ``plans``: the ladder, cheapest rung first; each is validated
    against ``model`` (a bad plan raises :class:`~workbench.quant.spec.PlanError`, it does not fall back).
    ``calib``: calibration data for activation ranges (a tensor or a loader). ``deployer``: the kernel adapter
    (default :func:`torch_ao_deployer`). ``on_fail``: one of :data:`ON_FAIL`. Switching rungs re-runs nothing:
    :meth:`run` calls the rung's prepared module.
    """

    def __init__(
        self,
        model: nn.Module,
        plans: Sequence[QuantPlan],
        calib: Any,
        *,
        names: Sequence[str] | None = None,
        deployer: Deployer | None = None,
        on_fail: str = "simulate",
    ) -> None:
        if on_fail not in ON_FAIL:
            raise ValueError(f"on_fail={on_fail!r} is not valid; choose one of {ON_FAIL}")
        plans = list(plans)
        if not plans:
            raise ValueError("plans is empty: a ladder needs at least one QuantPlan, cheapest first")
        names = [f"rung{i}" for i in range(len(plans))] if names is None else list(names)
        if len(names) != len(plans) or len(set(names)) != len(names):
            raise ValueError(f"names {names} must be {len(plans)} distinct names, one per plan")
        for i, p in enumerate(plans):
            if not isinstance(p, QuantPlan):
                raise PlanError(f"plans[{i}] must be a QuantPlan, got {type(p).__name__}")
            p.validate(model)
        x_cal = _inputs(calib)
        self.input_shape: tuple[int, ...] = tuple(x_cal.shape[1:])
        self.deployer = deployer or torch_ao_deployer()
        self.dropped: dict[str, str] = {}
        costs = layer_costs(model, x_cal[:1])
        self.rungs: list[Rung] = []
        for name, plan in zip(names, plans, strict=True):
            rung = self._deploy(model, plan, calib, name, costs, on_fail)
            if rung is not None:
                self.rungs.append(rung)
        if not self.rungs:
            raise RuntimeError(f"no rung of the ladder deployed: {self.dropped}")

    def _deploy(
        self, model: nn.Module, plan: QuantPlan, calib: Any, name: str, costs: dict, on_fail: str
    ) -> Rung | None:
        """The rung of ``plan``: deployed, else (``on_fail``) simulated or dropped, with the reason named."""
        s = summarize(plan, model, costs)
        try:
            dep, reason = self.deployer(model, plan, calib), None
        except Exception as e:  # any backend failure: named on the rung, never silent
            if on_fail == "raise":
                raise
            reason = f"{type(e).__name__}: {e}"
            if on_fail == "drop":
                self.dropped[name] = reason
                return None
            dep = simulated_deployer(model, plan, calib)
        return Rung(name, plan, dep, float(s.bops), float(s.avg_weight_bits), reason)

    def __len__(self) -> int:
        return len(self.rungs)

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.rungs]

    def costs(self, kind: str = "bops") -> np.ndarray:
        """Each rung's cost per input: ``"bops"`` or ``"avg_bits"`` (MAC-free weight-bit average)."""
        if kind not in ("bops", "avg_bits"):
            raise ValueError(f"kind={kind!r} is not valid; choose one of ('bops', 'avg_bits')")
        return np.array([getattr(r, kind) for r in self.rungs], dtype=float)

    def run(self, x: torch.Tensor, rung: int) -> torch.Tensor:
        """Outputs of the batch ``x`` on rung ``rung`` (no gradient; nothing is rebuilt)."""
        if not 0 <= rung < len(self.rungs):
            raise IndexError(f"rung={rung} is not valid; the ladder has rungs 0..{len(self.rungs) - 1}")
        with torch.inference_mode():
            return self.rungs[rung].deployment.run(x).float()

    def outputs(self, x: torch.Tensor, *, batch_size: int = 256) -> list[torch.Tensor]:
        """Every rung's outputs of ``x`` (calibration of controllers), in batches of ``batch_size``."""
        return [
            torch.cat([self.run(x[i : i + batch_size], r) for i in range(0, x.shape[0], batch_size)])
            for r in range(len(self.rungs))
        ]

    def table(self) -> pd.DataFrame:
        """One row per rung: name, kernels, cost (BOPs, average weight bits), fallback reason."""
        return pd.DataFrame(
            [
                {
                    "rung": i,
                    "name": r.name,
                    "kernels": ", ".join(f"{k}: {v}" for k, v in sorted(r.deployment.kernels.items())),
                    "bops": r.bops,
                    "avg_bits": r.avg_bits,
                    "fallback": r.fallback or "",
                    "notes": len(r.deployment.notes),
                }
                for i, r in enumerate(self.rungs)
            ]
        )
