"""Fixtures of the QAT tests: a tiny conv-bn task whose labels the float model gets right."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from workbench.tasks import task_from_model


class Tiny(nn.Module):
    """conv-bn-relu, pool, linear on 1x6x6 inputs (8 + 8 channels, 4 classes)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(32, 4)

    def forward(self, x):
        x = self.relu(self.bn(self.conv(x)))
        return self.fc(self.flatten(self.pool(self.relu2(self.conv2(x)))))


def _loader(x, y, bs, shuffle=False):
    g = torch.Generator().manual_seed(0) if shuffle else None
    return DataLoader(TensorDataset(x, y), batch_size=bs, shuffle=shuffle, generator=g)


@pytest.fixture(scope="module")
def tiny_task():
    torch.manual_seed(0)
    model = Tiny()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.3, 0.3)
        model.bn.running_var.uniform_(0.5, 2.0)
        model.bn.weight.uniform_(0.5, 1.5)
    model.eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(128, 1, 6, 6, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)  # labels the float model gets right: QAT has something to recover
    return task_from_model(
        model,
        train_loader=_loader(x[:64], y[:64], 16, shuffle=True),
        calib_loader=_loader(x[64:96], y[64:96], 16),
        val_loader=_loader(x[64:96], y[64:96], 32),
        test_loader=_loader(x[96:], y[96:], 32),
        name="tiny",
    )
