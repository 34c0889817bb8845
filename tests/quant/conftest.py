from __future__ import annotations

import pytest
import torch
from torch import nn


class TinyNet(nn.Module):
    """Conv + BatchNorm + residual-free tiny classifier on 1x8x8 inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1, groups=2),
        )
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(torch.relu(self.features(x))), 1))


@pytest.fixture
def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    m = TinyNet()
    with torch.no_grad():  # non-trivial BatchNorm statistics so folding matters
        bn = m.features[1]
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.2, 0.2)
    return m.eval()


@pytest.fixture
def calib_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 1, 8, 8, generator=g)
    return [(x[i : i + 16], torch.zeros(16, dtype=torch.long)) for i in range(0, 64, 16)]
