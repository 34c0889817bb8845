"""Shared helpers of the sensitivity tests: quiet configs, a tiny BatchNorm + residual task and a tiny MLP."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from workbench.sensitivity import SensitivityConfig
from workbench.tasks import Task, task_from_model

QUIET = {"progress": False, "num_threads": 1}  # one thread: far faster on a shared, busy CPU


class ResidualBNNet(nn.Module):
    """Tiny conv net with BatchNorm (folded by the probes) and a residual add (a non-chain graph)."""

    def __init__(self, *, inplace: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=inplace)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(self.bn1(self.conv1(x)))
        h = self.relu(self.bn2(self.conv2(h)) + h)
        return self.fc(torch.flatten(self.pool(h), 1))


def _bn_task(*, inplace: bool = False, n_calib: int = 64, batch_size: int = 16) -> Task:
    torch.manual_seed(0)
    model = ResidualBNNet(inplace=inplace)
    with torch.no_grad():  # non-trivial BatchNorm statistics so that folding matters
        for bn in (model.bn1, model.bn2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
    model.eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n_calib + 48, 1, 8, 8, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)  # labels the model mostly gets right, so accuracy drops are meaningful
    calib = DataLoader(TensorDataset(x[:n_calib], y[:n_calib]), batch_size=batch_size)
    val = DataLoader(TensorDataset(x[n_calib:], y[n_calib:]), batch_size=batch_size)
    return task_from_model(model, calib_loader=calib, val_loader=val, test_loader=val, name="bn_net")


def _cheap(**kw) -> SensitivityConfig:
    base = {"w_bits": (2, 4, 8), "a_bits": (4,), "hutchinson_max_iter": 20, **QUIET}
    return SensitivityConfig(**{**base, **kw})


def _tiny_mlp() -> tuple[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 4))
    g = torch.Generator().manual_seed(2)
    x = torch.randn(48, 5, generator=g)
    y = torch.randint(0, 4, (48,), generator=g)
    return model, [(x[:24], y[:24]), (x[24:], y[24:])]
