"""What the runtimes over one model, config and calibration set share, built once (:class:`RuntimeFactory`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from workbench.runtime.config import RuntimeConfig
from workbench.runtime.costs import MapCoster
from workbench.runtime.data import _inputs
from workbench.runtime.engine import AdaptiveRuntime
from workbench.runtime.policies import Policy
from workbench.runtime.probe import ProbeEngine, ProbeResult
from workbench.runtime.switchable import SwitchableModel


@dataclass
class RuntimeFactory:
    """The switchable model, its coster, the probe result (the ladder) and the calibration logits of every rung,
    built once for ``model``, ``config`` and the calibration inputs ``x_cal``: :meth:`runtime` then builds an
    :class:`AdaptiveRuntime` for any policy and budget in about a second. Build it with :meth:`build`."""

    model: nn.Module
    config: RuntimeConfig
    profile: Any
    x_cal: torch.Tensor
    smodel: SwitchableModel
    coster: MapCoster
    probe: ProbeResult
    calib_logits: tuple[torch.Tensor, list[torch.Tensor]]

    @classmethod
    def build(
        cls, model: nn.Module, calib: Any, *, config: RuntimeConfig | None = None, profile: Any = None
    ) -> RuntimeFactory:
        """Fold and pre-quantize ``model``, run the probe engine on ``config.probe_samples`` calibration inputs
        (drawn with ``config.seed``) and compute the FP32 and every rung's logits of ``calib`` (a tensor or a
        loader of ``(x, y)`` batches). ``profile``: a hardware profile (needed for a latency budget)."""
        cfg = config or RuntimeConfig()
        x_cal = _inputs(calib)
        smodel = SwitchableModel(model, w_bits=cfg.w_bits, a_bits=cfg.a_bits, groups=cfg.groups)
        coster = MapCoster(model, smodel, x_cal[:1], profile)
        gen = torch.Generator().manual_seed(cfg.seed)
        perm = torch.randperm(x_cal.shape[0], generator=gen)
        probe = ProbeEngine(smodel, coster).run(x_cal[perm[: cfg.probe_samples]], kind=cfg.budget_kind)
        calib_logits = (
            smodel.run(x_cal, {g: 32 for g in smodel.group_names}),
            [smodel.run(x_cal, m) for m in probe.ladder],
        )
        return cls(model, cfg, profile, x_cal, smodel, coster, probe, calib_logits)

    @property
    def top_cost(self) -> float:
        """The all-``max(w_bits)`` map's cost in ``config.budget_kind`` units (budget fractions are of it)."""
        top = {g: max(self.config.w_bits) for g in self.smodel.group_names}
        return self.coster.value(top, self.config.budget_kind)

    @property
    def rung_costs(self) -> list[float]:
        """Each rung's cost in ``config.budget_kind`` units, cheapest rung first."""
        return [self.coster.value(m, self.config.budget_kind) for m in self.probe.ladder]

    def runtime(self, policy: str | Policy, budget: float) -> AdaptiveRuntime:
        """An :class:`AdaptiveRuntime` for ``policy`` at ``budget`` (average cost per input in
        ``config.budget_kind`` units) sharing this factory's model, probe and calibration logits; raises
        :class:`RuntimeBudgetError` when ``policy`` cannot meet ``budget``."""
        return AdaptiveRuntime(
            self.model,
            policy,
            budget,
            self.profile,
            calib=self.x_cal,
            config=self.config,
            smodel=self.smodel,
            probe=self.probe,
            calib_logits=self.calib_logits,
        )
