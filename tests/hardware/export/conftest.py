"""Tiny models and plans shared by the ONNX export tests."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from workbench.quant import QuantPlan, QuantSpec


class SmallNet(nn.Module):
    """Conv (W8A8) -> Conv (W4A8) -> depthwise Conv (W8A4, clamped grid) with a residual add -> float Linear ->
    weight-only Linear (W4 group 32) -> Linear W8A8 per-tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.fc0 = nn.Linear(64, 64)
        self.fc1 = nn.Linear(64, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        x = F.relu(self.bn(self.c1(x)))
        x = F.relu(self.c2(x))
        x = x + F.relu6(self.dw(x))
        x = F.adaptive_avg_pool2d(x, 2).flatten(1)
        return self.fc2(F.relu(self.fc1(F.relu(self.fc0(x)))))


MIXED = {
    "c1": QuantSpec(w_bits=8, a_bits=8),
    "c2": QuantSpec(w_bits=4, a_bits=8),
    "dw": QuantSpec(w_bits=8, a_bits=4),
    "fc1": QuantSpec(w_bits=4, a_bits=32, granularity="per_group", group_size=32),
    "fc2": QuantSpec(w_bits=8, a_bits=8, granularity="per_tensor"),
}


@pytest.fixture
def small_net():
    torch.manual_seed(0)
    model = SmallNet().eval()
    with torch.no_grad():  # a BatchNorm with statistics of its own, folded by the simulation
        model.bn.running_mean.uniform_(-0.2, 0.2)
        model.bn.running_var.uniform_(0.5, 2.0)
    gen = torch.Generator().manual_seed(1)
    calib = [torch.randn(8, 3, 8, 8, generator=gen) for _ in range(2)]
    return model, QuantPlan(MIXED), calib, torch.randn(6, 3, 8, 8, generator=gen)
