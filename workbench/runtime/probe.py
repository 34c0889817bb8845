"""The probe engine (seed 003): per-group sensitivities on a calibration subset and the ladder of precision maps."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from workbench.quant.spec import QuantPlan
from workbench.quant.swap import get_module
from workbench.runtime.costs import MapCoster
from workbench.runtime.switchable import SwitchableModel


def _kl(ref_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Per-input KL(softmax(ref) || softmax(logits))."""
    p = F.log_softmax(ref_logits, dim=1)
    q = F.log_softmax(logits, dim=1)
    return (p.exp() * (p - q)).sum(1)


TABLE_COLUMNS: tuple[str, ...] = ("group", "w_bits", "local_rel_mse", "downstream_kl")
"""The columns of :attr:`ProbeResult.table`."""


@dataclass
class ProbeResult:
    """Per-group sensitivity (local and downstream error at each bit width) and the ladder, cheapest rung first:
    its precision maps, each rung's KL divergence from the reference on the probe inputs, and ``ladder_plans``,
    the QuantPlan each rung runs (:meth:`SwitchableModel.plan`; empty when the result was built by hand)."""

    table: pd.DataFrame
    ladder: list[dict[str, int]]
    ladder_kl: list[float]
    ladder_plans: list[QuantPlan] = field(default_factory=list)


class ProbeEngine:
    """Seed 003's sensitivity analysis engine, run on a small calibration subset."""

    def __init__(self, smodel: SwitchableModel, coster: MapCoster) -> None:
        self.smodel = smodel
        self.coster = coster

    def _local_outputs(self, x: torch.Tensor, precision_map: Mapping[str, int]) -> dict[str, torch.Tensor]:
        outs: dict[str, torch.Tensor] = {}
        handles = []
        for n in self.smodel.layers:
            mod = get_module(self.smodel.net, n)
            handles.append(mod.register_forward_hook(lambda m, i, o, n=n: outs.__setitem__(n, o.detach())))
        try:
            self.smodel.run(x, precision_map)
        finally:
            for h in handles:
                h.remove()
        return outs

    def run(self, x: torch.Tensor, *, kind: str = "bops") -> ProbeResult:
        sm = self.smodel
        top = {g: max(sm.w_bits) for g in sm.group_names}
        ref = sm.run(x, {g: 32 for g in sm.group_names})
        ref_local = self._local_outputs(x, {g: 32 for g in sm.group_names})
        rows = []
        for g in sm.group_names:
            for b in sm.w_bits:
                m = {**top, g: b}
                loc = self._local_outputs(x, m)
                local = np.mean(
                    [
                        float(
                            ((loc[n] - ref_local[n]) ** 2).mean()
                            / (ref_local[n] ** 2).mean().clamp(min=1e-12)
                        )
                        for n in sm.groups[g]
                    ]
                )
                down = float(_kl(ref, sm.run(x, m)).mean())
                rows.append({"group": g, "w_bits": b, "local_rel_mse": local, "downstream_kl": down})
        table = pd.DataFrame(rows)
        # ladder: from all-high down to all-low, each step the move with the least downstream KL per cost saved,
        # measured on the whole model with the moves already taken (feedback, interactions included)
        current = dict(top)
        ladder = [dict(current)]
        ladder_kl = [float(_kl(ref, sm.run(x, current)).mean())]
        levels = list(sm.w_bits)
        while True:
            best = None
            for g in sm.group_names:
                i = levels.index(current[g])
                if i == 0:
                    continue
                cand = {**current, g: levels[i - 1]}
                saved = self.coster.value(current, kind) - self.coster.value(cand, kind)
                kl = float(_kl(ref, sm.run(x, cand)).mean())
                score = (kl - ladder_kl[-1]) / max(saved, 1e-12)
                if best is None or score < best[0]:
                    best = (score, cand, kl)
            if best is None:
                break
            current = best[1]
            ladder.append(dict(current))
            ladder_kl.append(best[2])
        # cheapest first
        ladder = ladder[::-1]
        return ProbeResult(table, ladder, ladder_kl[::-1], [sm.plan(m) for m in ladder])

    def given_ladder(
        self, x: torch.Tensor, ladder: Sequence[Mapping[str, int]], *, kind: str = "bops"
    ) -> ProbeResult:
        """The probe result of a ladder chosen elsewhere (e.g. from QuantPlans), cheapest rung first: each rung's
        KL divergence from the all-32 map on ``x``; no sensitivity table (its rows are left empty). Raises
        ``ValueError`` when a rung costs less (in ``kind`` units) than the one before it."""
        sm = self.smodel
        maps = [dict(m) for m in ladder]
        costs = [self.coster.value(m, kind) for m in maps]
        for i in range(1, len(costs)):
            if costs[i] < costs[i - 1]:
                raise ValueError(
                    f"the ladder must come cheapest rung first: rung {i} costs {costs[i]:.6g} {kind}, "
                    f"less than rung {i - 1} ({costs[i - 1]:.6g})"
                )
        ref = sm.run(x, {g: 32 for g in sm.group_names})
        ladder_kl = [float(_kl(ref, sm.run(x, m)).mean()) for m in maps]
        table = pd.DataFrame(columns=list(TABLE_COLUMNS))
        return ProbeResult(table, maps, ladder_kl, [sm.plan(m) for m in maps])
