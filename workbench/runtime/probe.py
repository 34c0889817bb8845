"""The probe engine (seed 003): per-group sensitivities on a calibration subset and the ladder of precision maps."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from workbench.quant.swap import get_module
from workbench.runtime.costs import MapCoster
from workbench.runtime.switchable import SwitchableModel


def _kl(ref_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Per-input KL(softmax(ref) || softmax(logits))."""
    p = F.log_softmax(ref_logits, dim=1)
    q = F.log_softmax(logits, dim=1)
    return (p.exp() * (p - q)).sum(1)


@dataclass
class ProbeResult:
    """Per-group sensitivity (local and downstream error at each bit width) and the ladder of maps."""

    table: pd.DataFrame
    ladder: list[dict[str, int]]
    ladder_kl: list[float]


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
        return ProbeResult(table=table, ladder=ladder[::-1], ladder_kl=ladder_kl[::-1])
