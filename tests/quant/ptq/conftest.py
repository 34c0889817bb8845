from __future__ import annotations

import pytest
import torch
from torch import nn


class InvertedResidual(nn.Module):
    """pointwise -> BN -> ReLU6 -> depthwise -> BN -> ReLU6 -> pointwise -> BN, pool, Linear (MobileNet-style)."""

    def __init__(self, bn: bool = True) -> None:
        super().__init__()

        def norm(c: int) -> nn.Module:
            return nn.BatchNorm2d(c) if bn else nn.Identity()

        self.expand = nn.Conv2d(3, 16, 1, bias=not bn)
        self.bn1 = norm(16)
        self.act1 = nn.ReLU6()
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=not bn)
        self.bn2 = norm(16)
        self.act2 = nn.ReLU6()
        self.project = nn.Conv2d(16, 8, 1, bias=not bn)
        self.bn3 = norm(8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = self.act1(self.bn1(self.expand(x)))
        x = self.act2(self.bn2(self.dw(x)))
        x = self.bn3(self.project(x))
        return self.fc(x.mean((2, 3)))


def _randomize(m: nn.Module) -> nn.Module:
    """Imbalanced per-channel weight scales (what CLE fixes) and non-trivial BN statistics."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.Conv2d):
                scale = torch.exp(torch.randn(mod.out_channels, generator=g) * 1.2)
                mod.weight.mul_(scale.reshape(-1, 1, 1, 1))
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.3, 0.3, generator=g)
                mod.running_var.uniform_(0.5, 2.0, generator=g)
                mod.weight.uniform_(0.3, 2.0, generator=g)
                mod.bias.uniform_(-0.2, 0.5, generator=g)
    return m.eval()


@pytest.fixture
def ir_model() -> nn.Module:
    torch.manual_seed(0)
    return _randomize(InvertedResidual())


@pytest.fixture
def ir_model_nobn() -> nn.Module:
    torch.manual_seed(0)
    return _randomize(InvertedResidual(bn=False))


@pytest.fixture
def ir_data() -> list[tuple[torch.Tensor, None]]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(48, 3, 12, 12, generator=g) * 2
    return [(x[i : i + 16], None) for i in range(0, 48, 16)]
