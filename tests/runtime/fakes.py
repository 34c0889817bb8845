"""A fake-kernel ladder for the stream tests: tiny float modules as rungs, a clock that advances by each rung's
scripted latency (times a load factor), so that no test depends on timing or on this machine's load."""

from __future__ import annotations

import torch
from torch import nn

from workbench.quant.spec import QuantPlan
from workbench.runtime import DeployedLadder, Deployment


class FakeClock:
    """Seconds that pass only when a rung runs (``spend``) or a test says so."""

    def __init__(self) -> None:
        self.t = 0.0
        self.load = 1.0

    def __call__(self) -> float:
        return self.t

    def spend(self, seconds: float) -> None:
        self.t += seconds * self.load


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()


def fake_ladder(clock: FakeClock, latencies=(0.002, 0.004, 0.008), noise=(1.5, 0.5, 0.0)):
    """Rungs w4a8 / w8a8 / fp32 of :func:`tiny_model`, each running the float model plus a fixed input-dependent
    perturbation of scale ``noise[i]`` (cheap rungs disagree more), costing ``latencies[i]`` fake seconds."""
    model = tiny_model()
    plans = [
        QuantPlan.from_shorthand("uniform:w4a8", model),
        QuantPlan.from_shorthand("uniform:w8a8", model),
        QuantPlan({}),
    ]
    gen = torch.Generator().manual_seed(1)
    mix = torch.randn(8, 4, generator=gen)
    deployed = []

    def deployer(m, plan, calib):
        i = len(deployed)
        deployed.append(i)

        def run(x, i=i):
            clock.spend(latencies[i])
            return m(x) + noise[i] * torch.sin(3 * x @ mix)

        return Deployment(run, {"fake": len(plan)})

    calib = torch.randn(64, 8, generator=gen)
    ladder = DeployedLadder(model, plans, calib, names=["w4a8", "w8a8", "fp32"], deployer=deployer)
    return ladder, deployed
